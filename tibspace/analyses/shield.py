"""NET / collagen-I shields around tumour cells (pixel masks + cell outlines).

Neutrophil extracellular traps (NETs: citrullinated histone H3, CitH3, on
MPO-decorated DNA) and collagen-I (COL1) deposits can wrap tumour cells and
keep cytotoxic T cells from touching them. This module measures that, in µm:

1. :func:`shield_masks` turns the NET and COL1 channels into boolean pixel
   masks (gate per channel, optional co-requirement such as MPO, small objects
   removed), tile by tile so whole slides stay within memory; the gate values
   are returned (audit trail).
2. :func:`shield_analysis` measures, per tumour cell, the fraction of a thin
   ring just outside the cell outline covered by NET ∪ COL1 (and each mask
   alone), calls cells *shielded*, measures per nest the fraction of boundary
   length with a shielded outer strip, compares T-cell contact rates of
   shielded vs unshielded tumour cells (Fisher's exact test), and tests
   neutrophil/NET vs T-cell antagonism (tile Spearman correlation and
   cross-pair-correlation under random labelling).

Definitions follow ``docs/metrics.md`` ("NET / collagen-I shields"); every
choice that metrics.md leaves open is stated in the docstrings below.
Requirements: this analysis needs tumour and effector T phenotypes; use
:func:`can_run_shield` before calling it (``shield_analysis`` raises
:class:`~tibspace.errors.InputError` for missing roles or inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.jsonable import to_jsonable as _json
from tibspace.cells import phenotype_names as _phenotype_names

__all__ = ["ShieldResult", "shield_masks", "shield_ring_coverage", "shield_analysis",
           "nest_shield_fraction", "contact_pairs_from_labels", "can_run_shield"]


# ---------------------------------------------------------------------------
# JSON helpers
# ---------------------------------------------------------------------------
# Masks
def _spec_get(spec: Any, name: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(name, default)
    return getattr(spec, name, default)


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    return list(v)


def _channel_of(image: Any, channel_index: Mapping[str, int] | None, name: str, mask_name: str) -> int:
    if channel_index is not None:
        if name in channel_index:
            return int(channel_index[name])
        low = {str(k).lower(): v for k, v in channel_index.items()}
        if name.lower() in low:
            return int(low[name.lower()])
    if hasattr(image, "channel_index"):
        return int(image.channel_index(name))
    have = ", ".join(map(str, channel_index)) if channel_index else "none"
    raise InputError(f"mask {mask_name!r}: channel {name!r} is not in the image (channels: {have}); "
                     "fix the panel's [masks] entry or its [channels.aliases]")


def _read(image: Any, c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return np.asarray(image[c, y0:y1, x0:x1])
    return np.asarray(image.read_region([c], y0, y1, x0, x1))[0]


def _image_yx(image: Any) -> tuple[int, int]:
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 3:
        raise InputError(f"image has shape {shape}; expected (C, Y, X)")
    return shape[1], shape[2]


def _strided_sample(image: Any, c: int, max_pixels: int) -> np.ndarray:
    """Every s-th pixel in y and x of channel ``c`` (s chosen so ≤ max_pixels)."""
    ny, nx = _image_yx(image)
    s = max(1, int(math.ceil(math.sqrt(ny * nx / float(max_pixels)))))
    if isinstance(image, np.ndarray):
        return np.asarray(image[c, ::s, ::s])
    data = getattr(image, "data", None)
    if data is not None:  # dask: reads chunk by chunk, keeps only the strided pixels
        return np.asarray(data[c, ::s, ::s])
    rows = [np.asarray(image.read_region([c], y, min(y + 1, ny), 0, nx))[0, 0, ::s]
            for y in range(0, ny, s)]
    return np.stack(rows)


def otsu_gate_log1p(values: np.ndarray, *, floor_sd: float = 5.0, method: str = "otsu", seed: int = 0) -> float:
    """Automatic gate: Otsu threshold of ``log1p(values)``, floored above the background.

    Otsu always splits a sample in two, even when the channel has no positive
    structures (it then splits noise, or tissue from glass). The gate is
    therefore ``max(otsu, median + floor_sd · σ)``, where σ is the background
    noise in raw units (noise is additive) estimated from the left half of the
    distribution (``median − 16th percentile``, or the RMS deviation below the
    median if larger), which positive pixels do not reach as long as they are
    fewer than half the sample. Returned in raw intensity units.
    ``floor_sd=0`` gives plain Otsu. ``method="background"`` returns the
    floor alone ("signal above tissue background"). ``method="gmm"`` replaces Otsu by
    :func:`tibspace.phenotype.auto_gate`'s two-component mixture (fitted on
    ≤ 200,000 of the values, chosen with ``seed``), floored the same way.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> bg = rng.normal(10, 2, 20000).clip(0)
    >>> v = np.r_[bg, rng.normal(200, 20, 1000)]
    >>> 20 < otsu_gate_log1p(v) < 150
    True
    >>> bool(otsu_gate_log1p(bg) > bg.max() * 0.8)   # no positives: the floor keeps the gate above noise
    True
    """
    from skimage.filters import threshold_otsu

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or np.ptp(v) == 0:
        raise InputError("cannot compute an Otsu gate: the channel is empty or constant; "
                         "give a numeric gate in the panel's [masks] entry")
    lv = np.log1p(np.clip(v, 0, None))
    if method == "background":
        t = -np.inf                                     # the floor alone: "above tissue background"
    elif method == "otsu":
        t = float(threshold_otsu(lv))
    elif method == "gmm":
        from tibspace.cells import auto_gate

        sub = v if v.size <= 200_000 else np.random.default_rng(seed).choice(v, 200_000, replace=False)
        t = float(np.log1p(auto_gate(sub, "gmm", marker="mask channel", seed=seed)))
    else:
        raise InputError(f"automatic gate method {method!r}: expected \"otsu\", \"gmm\" or \"background\"")
    gate = float(np.expm1(t)) if np.isfinite(t) else -np.inf
    if floor_sd > 0:
        # background noise is additive: estimate it in raw units from the left half
        p16, med = np.percentile(v, [15.865, 50.0])
        left = v[v <= med]
        sd = max(med - p16, float(np.sqrt(np.mean((left - med) ** 2))) if left.size else 0.0, 1e-12)
        gate = max(gate, med + floor_sd * sd)
    return float(gate)


def _tissue_sample_mask(image: Any, channels: Sequence[int], max_pixels: int) -> np.ndarray:
    """Tissue pixels of the strided grid: Otsu on log1p of the summed channels.

    Tissue autofluoresces in every channel while glass does not, so the sum
    separates them; used only to choose which pixels feed automatic gates.
    """
    from skimage.filters import threshold_otsu

    tot = None
    for c in channels:
        a = _strided_sample(image, c, max_pixels).astype(np.float64)
        tot = a if tot is None else tot + a
    lt = np.log1p(np.clip(tot, 0, None))
    if np.ptp(lt) == 0:
        return np.ones(lt.shape, bool)
    m = lt > threshold_otsu(lt)
    # a slide that is all tissue: Otsu then splits tissue textures; keep everything
    return m if m.mean() < 0.97 and m.mean() > 0.05 else np.ones(lt.shape, bool)


def _resolve_gate(gate: Any, channel: str, is_required: bool) -> Any:
    """The gate of one channel from a mask spec's ``gate`` (number | 'otsu' | dict)."""
    if isinstance(gate, Mapping):
        return gate.get(channel, "otsu")
    if is_required:
        # A numeric gate is in the units of the mask's own channel. A
        # co-required channel only has to show signal: MPO on NETs is far
        # dimmer than in intact neutrophils, and an Otsu gate would split
        # neutrophils from everything else and drop the traps.
        return "background"
    return "otsu" if gate is None else gate


def shield_masks(image: Any, panel_masks: Mapping[str, Any], channel_index: Mapping[str, int] | None,
                 pixel_size_um: float, *, tile_size_px: int = 2048, require_dilation_um: float = 1.0,
                 tissue_mask: np.ndarray | None = None, max_gate_pixels: int = 4_000_000,
                 progress=None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Boolean NET / collagen-I pixel masks from the image channels.

    For each mask spec (``MaskSpec(name, channels, require, gate,
    min_object_um2)`` or an equivalent mapping):

    - a pixel is *positive* when it is above the gate of ANY of ``channels``
      (e.g. CitH3) AND, for every channel in ``require`` (e.g. MPO), within
      ``require_dilation_um`` (default 1 µm) of a pixel above that channel's
      gate. The small dilation is a choice: NETs are CitH3+ chromatin
      decorated with MPO, and the two stains rarely coincide pixel-exactly;
      requiring exact co-localisation would erode the mask at every edge.
    - connected objects (8-connectivity) smaller than ``min_object_um2`` are
      removed.

    Gates: a number (raw intensity units of that channel), ``"otsu"``,
    ``"gmm"``, ``"background"``, or a dict ``{channel: number | str}``. ``"otsu"`` = :func:`otsu_gate_log1p`
    (Otsu on log1p intensities with a robust floor above the background) of a
    strided subsample of ≤ ``max_gate_pixels`` pixels (whole slides stay
    bounded), restricted to tissue pixels: ``tissue_mask`` when given, else
    pixels whose summed channels are above an Otsu split (tissue
    autofluoresces, glass does not) — without this, Otsu on a sparse channel
    separates tissue from glass instead of positive from negative. A numeric ``gate`` applies to the
    mask's own ``channels``; ``require`` channels get ``"background"`` (the
    robust floor alone: signal above tissue background — MPO decorating NETs
    is much dimmer than MPO in intact neutrophils, which an Otsu gate would
    pick out instead) unless the dict names them.

    The image is processed in tiles of ``tile_size_px`` with a halo, so peak
    memory is set by the tile size plus the output masks. Small-object removal
    is exact across tile seams: an object cut by the halo edge is at least as
    long as the halo, which is chosen larger than ``min_object_um2`` in pixels.

    Parameters
    ----------
    image : numpy.ndarray (C, Y, X) or tibspace.io.MultiplexImage
        The multiplex image (a MultiplexImage is read lazily, tile by tile).
    panel_masks : dict
        Mask name (``"net"``, ``"col1"``) -> MaskSpec.
    channel_index : dict or None
        Channel name -> index into the image's channel axis; None: use
        ``image.channel_index(name)``.
    pixel_size_um : float
        Pixel size (µm).
    tile_size_px : int
        Tile side (pixels).
    require_dilation_um : float
        Tolerance for the co-required channel(s) (µm).
    tissue_mask : bool ndarray (Y, X), optional
        Restrict Otsu samples to tissue pixels.
    max_gate_pixels : int
        Size of the subsample for automatic gates.
    progress : callable, optional
        ``progress(step, done, total)``.

    Returns
    -------
    masks : dict of str -> bool ndarray (Y, X)
    gates : dict of str -> float
        ``"<mask>:<channel>"`` -> gate used (raw intensity units).

    Examples
    --------
    >>> img = np.zeros((2, 40, 40), np.uint16)
    >>> img[0, 10:20, 10:20] = 100; img[1, 5:25, 5:25] = 50
    >>> spec = {"channels": ["CitH3"], "require": ["MPO"], "gate": {"CitH3": 10, "MPO": 20},
    ...         "min_object_um2": 5}
    >>> masks, gates = shield_masks(img, {"net": spec}, {"CitH3": 0, "MPO": 1}, 0.5)
    >>> int(masks["net"].sum()), gates["net:CitH3"]
    (100, 10.0)
    """
    if not pixel_size_um or pixel_size_um <= 0:
        raise InputError(f"pixel_size_um={pixel_size_um}: expected a positive pixel size in µm")
    ny, nx = _image_yx(image)
    masks: dict[str, np.ndarray] = {}
    gates: dict[str, float] = {}
    plans = []
    auto_tissue = None
    for name, spec in panel_masks.items():
        chans = _as_list(_spec_get(spec, "channels"))
        req = _as_list(_spec_get(spec, "require"))
        if not chans:
            raise InputError(f"mask {name!r} lists no channels; expected e.g. channels = [\"CitH3\"]")
        gate = _spec_get(spec, "gate", "otsu")
        min_um2 = float(_spec_get(spec, "min_object_um2", 0.0) or 0.0)
        cidx, gvals = [], []
        for is_req, group in ((False, chans), (True, req)):
            gi = []
            for ch in group:
                c = _channel_of(image, channel_index, ch, name)
                g = _resolve_gate(gate, ch, is_req)
                if isinstance(g, str):
                    if g.lower() not in ("otsu", "gmm", "background"):
                        raise InputError(f"mask {name!r}: gate {g!r} for channel {ch!r}; expected a number, "
                                         "\"otsu\", \"gmm\" or \"background\"")
                    sample = _strided_sample(image, c, max_gate_pixels)
                    if tissue_mask is not None:
                        st_ = max(1, int(math.ceil(math.sqrt(ny * nx / float(max_gate_pixels)))))
                        tm = np.asarray(tissue_mask[::st_, ::st_], bool)[: sample.shape[0], : sample.shape[1]]
                    else:
                        if auto_tissue is None:
                            all_c = sorted(set(int(v) for v in channel_index.values())) if channel_index else \
                                list(range(int(image.shape[0])))
                            auto_tissue = _tissue_sample_mask(image, all_c, max_gate_pixels)
                        tm = auto_tissue
                    sample = sample[tm] if tm.shape == sample.shape and tm.any() else sample
                    g = otsu_gate_log1p(sample, method=g.lower())
                gates[f"{name}:{ch}"] = float(g)
                gi.append((c, float(g)))
            cidx.append(gi)
        plans.append((name, cidx[0], cidx[1], min_um2))

    dil_px = int(math.ceil(require_dilation_um / pixel_size_um))
    n_ty = int(math.ceil(ny / tile_size_px))
    n_tx = int(math.ceil(nx / tile_size_px))
    total = len(plans) * n_ty * n_tx
    done = 0
    for name, own, req, min_um2 in plans:
        min_px = int(math.ceil(min_um2 / pixel_size_um ** 2)) if min_um2 > 0 else 0
        halo = min_px + 2
        out = np.zeros((ny, nx), dtype=bool)
        disk = None
        if req and dil_px > 0:
            r = np.arange(-dil_px, dil_px + 1)
            disk = (r[:, None] ** 2 + r[None, :] ** 2) <= dil_px ** 2
        for ty in range(n_ty):
            for tx in range(n_tx):
                y0, x0 = ty * tile_size_px, tx * tile_size_px
                y1, x1 = min(y0 + tile_size_px, ny), min(x0 + tile_size_px, nx)
                # halo for exact object sizes, plus the dilation reach for `require`
                ey0, ex0 = max(0, y0 - halo - dil_px), max(0, x0 - halo - dil_px)
                ey1, ex1 = min(ny, y1 + halo + dil_px), min(nx, x1 + halo + dil_px)
                pos = np.zeros((ey1 - ey0, ex1 - ex0), dtype=bool)
                for c, g in own:
                    pos |= _read(image, c, ey0, ey1, ex0, ex1) > g
                for c, g in req:
                    r_ok = _read(image, c, ey0, ey1, ex0, ex1) > g
                    if disk is not None:
                        r_ok = ndi.binary_dilation(r_ok, structure=disk)
                    pos &= r_ok
                # crop the dilation margin: `pos` is exact on tile + halo
                hy0, hx0 = max(0, y0 - halo), max(0, x0 - halo)
                hy1, hx1 = min(ny, y1 + halo), min(nx, x1 + halo)
                pos = pos[hy0 - ey0: hy1 - ey0, hx0 - ex0: hx1 - ex0]
                if min_px > 1 and pos.any():
                    pos = _remove_small_keep_cut(pos, min_px,
                                                 cut=(hy0 > 0, hy1 < ny, hx0 > 0, hx1 < nx))
                out[y0:y1, x0:x1] = pos[y0 - hy0: y1 - hy0, x0 - hx0: x1 - hx0]
                done += 1
                report(progress, "shield masks", done, total)
        masks[name] = out
    return masks, gates


def _remove_small_keep_cut(pos: np.ndarray, min_px: int, cut: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Remove objects < min_px, keeping objects that touch a cut (non-image) edge."""
    lab, n = ndi.label(pos, structure=np.ones((3, 3), bool))
    if n == 0:
        return pos
    area = np.bincount(lab.ravel(), minlength=n + 1)
    keep = area >= min_px
    top, bottom, left, right = cut
    for flag, edge in ((top, lab[0, :]), (bottom, lab[-1, :]), (left, lab[:, 0]), (right, lab[:, -1])):
        if flag:
            keep[np.unique(edge)] = True
    keep[0] = False
    return keep[lab]


# ---------------------------------------------------------------------------
# Per-cell ring coverage
def _disk_offsets(r_px: float) -> tuple[np.ndarray, np.ndarray]:
    k = int(math.floor(r_px + 1e-9))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    keep = (dy ** 2 + dx ** 2 <= r_px ** 2 + 1e-9) & ~((dy == 0) & (dx == 0))
    return dy[keep].astype(np.int64), dx[keep].astype(np.int64)


_RING_KERNEL = None


def _ring_kernel():
    """numba kernel: ring pixel counts per cell, visiting only each cell's boundary pixels."""
    global _RING_KERNEL
    if _RING_KERNEL is not None:
        return _RING_KERNEL
    import numba

    @numba.njit(cache=True, nogil=True)
    def kernel(labels, ids, y0s, y1s, x0s, x1s, k, dy, dx, m1, m2, n_ring, n_m1, n_m2, n_any):
        ny, nx = labels.shape
        for j in range(ids.size):
            cid = ids[j]
            ya, yb, xa, xb = y0s[j], y1s[j], x0s[j], x1s[j]
            if yb <= ya:
                continue
            # ring pixels lie within k of the cell's bounding box
            ba, bb = max(ya - k, 0), min(yb + k, ny)
            bc, bd = max(xa - k, 0), min(xb + k, nx)
            seen = np.zeros((bb - ba, bd - bc), np.bool_)
            n = 0
            c1 = 0
            c2 = 0
            ca = 0
            for y in range(ya, yb):
                for x in range(xa, xb):
                    if labels[y, x] != cid:
                        continue
                    # the nearest cell pixel to any outside pixel is a boundary pixel
                    if not (y == 0 or labels[y - 1, x] != cid or y == ny - 1 or labels[y + 1, x] != cid
                            or x == 0 or labels[y, x - 1] != cid or x == nx - 1 or labels[y, x + 1] != cid):
                        continue
                    for o in range(dy.size):
                        qy = y + dy[o]
                        qx = x + dx[o]
                        if qy < 0 or qy >= ny or qx < 0 or qx >= nx:
                            continue
                        if labels[qy, qx] == cid or seen[qy - ba, qx - bc]:
                            continue
                        seen[qy - ba, qx - bc] = True
                        n += 1
                        a = m1[qy, qx]
                        b = m2[qy, qx]
                        if a:
                            c1 += 1
                        if b:
                            c2 += 1
                        if a or b:
                            ca += 1
            n_ring[j] = n
            n_m1[j] = c1
            n_m2[j] = c2
            n_any[j] = ca

    _RING_KERNEL = kernel
    return kernel


def shield_ring_coverage(cell_labels: np.ndarray, cell_ids: Sequence[int], net_mask: np.ndarray | None,
                         col1_mask: np.ndarray | None, pixel_size_um: float, *,
                         ring_um: float = 3.0) -> pd.DataFrame:
    """Fraction of each cell's outer ring covered by NET, COL1 and NET ∪ COL1.

    The ring of cell *c* is every pixel not belonging to *c* whose centre lies
    within ``ring_um`` of a pixel of *c* (Euclidean, pixel centres) — i.e. the
    cell mask dilated by a disk of radius ``ring_um`` minus the cell itself.
    Pixels of neighbouring cells count as ring pixels (a tumour cell packed
    among tumour cells has little room for a shield, which is what the number
    should say). Rings of neighbouring cells may overlap; each cell counts
    its own ring. Rings are clipped at the image border.

    Vectorised: one numba kernel over all cells visits only each cell's
    boundary pixels (the nearest cell pixel to any outside pixel is a
    boundary pixel) and their disk offsets, inside the cell's bounding box;
    cost ∝ Σ boundary pixels × disk size, no per-cell Python loop.

    Parameters
    ----------
    cell_labels : int ndarray (Y, X)
        Cell label image; values equal ``cell_id``.
    cell_ids : sequence of int
        The cells to measure (e.g. tumour cells).
    net_mask, col1_mask : bool ndarray (Y, X) or None
        Pixel masks (None: treated as empty).
    pixel_size_um : float
        Pixel size (µm).
    ring_um : float
        Ring width (µm).

    Returns
    -------
    pandas.DataFrame
        ``cell_id, ring_px, shield_coverage_net, shield_coverage_col1,
        shield_coverage`` (NaN for a cell with no ring pixels, e.g. absent
        from the label image).

    Examples
    --------
    >>> lab = np.zeros((20, 20), np.int32); lab[8:12, 8:12] = 7
    >>> net = np.zeros((20, 20), bool); net[:, :10] = True
    >>> df = shield_ring_coverage(lab, [7], net, None, 1.0, ring_um=1.0)
    >>> int(df.ring_px[0]), round(float(df.shield_coverage[0]), 2)
    (16, 0.5)
    """
    labels = np.asarray(cell_labels)
    if labels.ndim != 2:
        raise InputError(f"cell_labels has shape {labels.shape}; expected a (Y, X) label image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"cell_labels has dtype {labels.dtype}; expected integer labels (== cell_id)")
    for nm, m in (("net", net_mask), ("col1", col1_mask)):
        if m is not None and np.shape(m) != labels.shape:
            raise InputError(f"{nm} mask has shape {np.shape(m)}; expected the label image's shape "
                             f"{labels.shape}")
    ids = np.asarray(cell_ids, dtype=np.int64)
    r_px = ring_um / pixel_size_um
    if labels.dtype.itemsize < 4:
        labels = labels.astype(np.int32)
    objs = ndi.find_objects(labels)
    n = ids.size
    y0 = np.zeros(n, np.int64); y1 = np.zeros(n, np.int64)
    x0 = np.zeros(n, np.int64); x1 = np.zeros(n, np.int64)
    for j, cid in enumerate(ids.tolist()):   # bounding boxes only (C-level find_objects did the scan)
        sl = objs[cid - 1] if 0 < cid <= len(objs) else None
        if sl is not None:
            y0[j], y1[j], x0[j], x1[j] = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    dy, dx = _disk_offsets(r_px)
    k = int(math.floor(r_px + 1e-9))
    m1 = np.zeros(labels.shape, bool) if net_mask is None else np.asarray(net_mask, bool)
    m2 = np.zeros(labels.shape, bool) if col1_mask is None else np.asarray(col1_mask, bool)
    ring = np.zeros(n, np.int64)
    c1 = np.zeros(n, np.int64)
    c2 = np.zeros(n, np.int64)
    ca = np.zeros(n, np.int64)
    _ring_kernel()(labels, ids.astype(labels.dtype), y0, y1, x0, x1, k, dy, dx, m1, m2, ring, c1, c2, ca)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.where(ring > 0, ring, np.nan)
        return pd.DataFrame({
            "cell_id": ids,
            "ring_px": ring,
            "shield_coverage_net": c1 / den,
            "shield_coverage_col1": c2 / den,
            "shield_coverage": ca / den,
        })


# ---------------------------------------------------------------------------
# Nest boundary strips
def nest_shield_fraction(region, mask: np.ndarray, pixel_size_um: float, *, strip_um: float = 5.0,
                         min_coverage: float = 0.5, spacing_um: float = 1.0, tumour_mask: np.ndarray | None = None,
                         snap_um: float = 25.0) -> pd.DataFrame:
    """Fraction of each nest's boundary length whose outer strip is shielded.

    The boundary (every ring) is sampled at ≤ ``spacing_um`` (default 1 µm)
    arc-length steps; each sample is probed along its outward normal at
    depths 0.5, 1.5, … < ``strip_um`` µm (nearest-pixel lookups in
    ``mask``). A boundary point is shielded when ≥ ``min_coverage`` of its
    in-image probes hit the mask; the nest's fraction is the shielded
    length / sampled length (probes outside the image are ignored; points
    with none are left out).

    Snapping to the tumour-cell outline (with ``tumour_mask``): a region
    built from tumour-cell centroids (discs of 15 µm, metrics.md) lies
    5–15 µm outside the tumour cells' outlines, i.e. beyond a shield hugging
    them. With a tumour-cell pixel mask, each boundary point is first moved
    inwards along its normal to the first tumour-cell pixel (searched up to
    ``snap_um``; none found: no move), and the strip starts there. This is
    an improvement over metrics.md's literal "0…5 µm outside the boundary",
    which measures the wrong place for centroid-derived regions.

    Parameters
    ----------
    region : TumourRegion or list of shapely Polygons
    mask : bool ndarray (Y, X)
        NET ∪ COL1.
    pixel_size_um : float
    strip_um, min_coverage, spacing_um : float
    tumour_mask : bool ndarray (Y, X), optional
        Pixels of tumour cells (from the label image).
    snap_um : float
        Farthest inward move to the tumour-cell outline (µm).

    Returns
    -------
    pandas.DataFrame
        ``nest_id, perimeter_um, sampled_length_um, shielded_length_um,
        boundary_shield_fraction``.

    Examples
    --------
    >>> import shapely
    >>> m = np.zeros((200, 200), bool); m[:, :100] = True        # left half shielded
    >>> df = nest_shield_fraction([shapely.box(50, 50, 150, 150)], m, 1.0)
    >>> round(float(df.boundary_shield_fraction[0]), 1)
    0.5
    """
    import shapely

    nests = list(getattr(region, "nests", region))
    m = np.asarray(mask, bool)
    ny, nx = m.shape
    depths = np.arange(0.5, strip_um, 1.0)
    if depths.size == 0:
        depths = np.array([strip_um / 2])
    rows = []
    for k, poly in enumerate(nests, start=1):
        tot = samp = sh = 0.0
        for ring in [poly.exterior, *poly.interiors]:
            line = shapely.LineString(ring.coords)
            L = line.length
            tot += L
            n = max(4, int(math.ceil(L / spacing_um)))
            s = (np.arange(n) + 0.5) * (L / n)
            p = shapely.get_coordinates(shapely.line_interpolate_point(line, s))
            q = shapely.get_coordinates(shapely.line_interpolate_point(line, np.minimum(s + 0.25, L)))
            r = shapely.get_coordinates(shapely.line_interpolate_point(line, np.maximum(s - 0.25, 0)))
            t = q - r
            t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
            nrm = np.c_[t[:, 1], -t[:, 0]]
            probe = p + 0.2 * nrm
            flip = shapely.contains_xy(poly, probe[:, 0], probe[:, 1])
            nrm[flip] *= -1                            # outward = away from the nest
            if tumour_mask is not None:
                p = p - nrm * _snap_depth(p, nrm, tumour_mask, pixel_size_um, snap_um)[:, None]
            px_ = p[:, None, 0] + nrm[:, None, 0] * depths[None, :]
            py_ = p[:, None, 1] + nrm[:, None, 1] * depths[None, :]
            col = np.rint(px_ / pixel_size_um).astype(np.int64)
            row = np.rint(py_ / pixel_size_um).astype(np.int64)
            ok = (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
            hit = np.zeros(ok.shape, bool)
            hit[ok] = m[row[ok], col[ok]]
            n_ok = ok.sum(axis=1)
            has = n_ok > 0
            frac = np.where(has, hit.sum(axis=1) / np.maximum(n_ok, 1), 0.0)
            step = L / n
            samp += step * has.sum()
            sh += step * np.sum(has & (frac >= min_coverage))
        rows.append({"nest_id": k, "perimeter_um": tot, "sampled_length_um": samp, "shielded_length_um": sh,
                     "boundary_shield_fraction": sh / samp if samp > 0 else float("nan")})
    return pd.DataFrame(rows, columns=["nest_id", "perimeter_um", "sampled_length_um", "shielded_length_um",
                                       "boundary_shield_fraction"])


def _snap_depth(p: np.ndarray, nrm: np.ndarray, tumour_mask: np.ndarray, pixel_size_um: float,
                snap_um: float) -> np.ndarray:
    """Distance (µm) along −nrm from p to the first tumour-cell pixel; 0 when none within snap_um."""
    step = min(0.5, pixel_size_um)
    t = np.arange(0.0, snap_um + 1e-9, step)
    ny, nx = tumour_mask.shape
    col = np.rint((p[:, None, 0] - nrm[:, None, 0] * t[None, :]) / pixel_size_um).astype(np.int64)
    row = np.rint((p[:, None, 1] - nrm[:, None, 1] * t[None, :]) / pixel_size_um).astype(np.int64)
    ok = (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
    hit = np.zeros(ok.shape, bool)
    hit[ok] = tumour_mask[row[ok], col[ok]]
    first = np.argmax(hit, axis=1)
    # the strip starts just outside the outline: half a pixel before the first tumour pixel
    return np.where(hit.any(axis=1), np.maximum(t[first] - 0.5 * pixel_size_um, 0.0), 0.0)


# ---------------------------------------------------------------------------
# Contacts
def contact_pairs_from_labels(cell_labels: np.ndarray) -> np.ndarray:
    """Unique pairs of touching labels (8-connectivity), shape (n, 2), a < b.

    Examples
    --------
    >>> lab = np.array([[1, 1, 0, 3], [1, 2, 0, 3], [0, 0, 0, 0]])
    >>> contact_pairs_from_labels(lab).tolist()
    [[1, 2]]
    """
    lab = np.asarray(cell_labels)
    pairs = []
    for a, b in ((lab[:, :-1], lab[:, 1:]), (lab[:-1, :], lab[1:, :]),
                 (lab[:-1, :-1], lab[1:, 1:]), (lab[:-1, 1:], lab[1:, :-1])):
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            pa, pb = a[sel].astype(np.int64), b[sel].astype(np.int64)
            pairs.append(np.c_[np.minimum(pa, pb), np.maximum(pa, pb)])
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.vstack(pairs), axis=0)


def _contact_counts(cells: pd.DataFrame, tumour_ids: np.ndarray, t_mask: np.ndarray, labels, contact_um: float):
    """Number of T cells touching each tumour cell (labels) or within contact_um (centroids)."""
    if labels is not None:
        pairs = contact_pairs_from_labels(labels)
        ids = cells["cell_id"].to_numpy(np.int64)
        size = int(max(ids.max() if ids.size else 0, pairs.max() if pairs.size else 0)) + 1
        is_t = np.zeros(size, bool)
        is_t[ids[t_mask]] = True
        cnt = np.zeros(size, np.int64)
        if pairs.size:
            a, b = pairs[:, 0], pairs[:, 1]
            np.add.at(cnt, a[is_t[b]], 1)
            np.add.at(cnt, b[is_t[a]], 1)
        return cnt[np.clip(tumour_ids, 0, size - 1)], "labels adjacent (8-connectivity)"
    from scipy.spatial import cKDTree

    xy = cells[["x_um", "y_um"]].to_numpy(float)
    t_xy = xy[t_mask]
    pos = pd.Index(cells["cell_id"].to_numpy()).get_indexer(tumour_ids)
    if len(t_xy) == 0 or len(pos) == 0:
        return np.zeros(len(tumour_ids), np.int64), f"centroids within {contact_um:g} µm"
    tree = cKDTree(t_xy)
    cnt = tree.query_ball_point(xy[pos], r=contact_um, return_length=True)
    return np.asarray(cnt, np.int64), f"centroids within {contact_um:g} µm"


def _fisher(sh_c: int, sh_n: int, un_c: int, un_n: int) -> dict:
    from scipy.stats import fisher_exact

    n_sh, n_un = sh_c + sh_n, un_c + un_n
    r_sh = sh_c / n_sh if n_sh else float("nan")
    r_un = un_c / n_un if n_un else float("nan")
    if n_sh and n_un:
        odds, p = fisher_exact([[sh_c, sh_n], [un_c, un_n]], alternative="two-sided")
    else:
        odds, p = float("nan"), float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = r_sh / r_un if (n_sh and n_un and r_un > 0) else float("nan")
    return {"n_shielded": int(n_sh), "n_unshielded": int(n_un), "shielded_in_contact": int(sh_c),
            "unshielded_in_contact": int(un_c), "contact_rate_shielded": r_sh, "contact_rate_unshielded": r_un,
            "contact_rate_ratio": ratio, "odds_ratio": float(odds), "fisher_p_two_sided": float(p)}


# ---------------------------------------------------------------------------
# Antagonism
def _tile_sums(mask: np.ndarray, pixel_size_um: float, x0: float, y0: float, tile_um: float, ny_t: int, nx_t: int):
    """Area (µm²) of ``mask`` in each tile of a grid (tile index by pixel centre)."""
    ny, nx = mask.shape
    ty = np.floor((np.arange(ny) * pixel_size_um - y0) / tile_um).astype(np.int64)
    tx = np.floor((np.arange(nx) * pixel_size_um - x0) / tile_um).astype(np.int64)
    out = np.zeros((ny_t, nx_t))
    ry = (ty >= 0) & (ty < ny_t)
    rx = (tx >= 0) & (tx < nx_t)
    if not ry.any() or not rx.any():
        return out
    sub = mask[np.ix_(ry, rx)]
    ty, tx = ty[ry], tx[rx]
    # rows: reduce consecutive runs of equal tile index, then columns
    ystarts = np.flatnonzero(np.r_[True, np.diff(ty) != 0])
    xstarts = np.flatnonzero(np.r_[True, np.diff(tx) != 0])
    s = np.add.reduceat(np.add.reduceat(sub.astype(np.int64), ystarts, axis=0), xstarts, axis=1)
    out[np.ix_(ty[ystarts], tx[xstarts])] = s * pixel_size_um ** 2
    return out


def _relabel(cells: pd.DataFrame, a_types, b_types) -> pd.DataFrame:
    ph = cells["phenotype"].astype(str).to_numpy()
    lab = np.where(np.isin(ph, a_types), "__a__", np.where(np.isin(ph, b_types), "__b__", "__other__"))
    return pd.DataFrame({"x_um": cells["x_um"].to_numpy(float), "y_um": cells["y_um"].to_numpy(float),
                         "phenotype": lab})


# ---------------------------------------------------------------------------
@dataclass
class ShieldResult:
    """Result of :func:`shield_analysis`."""

    per_cell: pd.DataFrame          # tumour cells: cell_id, ring_px, shield_coverage_net/_col1, shield_coverage,
                                    # shielded, n_t_contacts, t_contact
    per_nest: pd.DataFrame          # nest_id, n_tumour, shielded_fraction, mean coverage, boundary_shield_fraction
    sample: dict                    # fractions, contact test, antagonism, notes
    tiles: pd.DataFrame = field(default_factory=pd.DataFrame)         # antagonism tiles
    cross_pcf: pd.DataFrame = field(default_factory=pd.DataFrame)     # neutrophil -> T cross-pcf envelope
    parameters: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe summary for metrics.json (per-cell values left to the cell table)."""
        return _json({"sample": self.sample, "per_nest": self.per_nest, "cross_pcf": self.cross_pcf,
                      "parameters": self.parameters})


def can_run_shield(panel_or_phenotypes: Any, *, tumour_types: Sequence[str] = ("tumour",),
                   t_types: Sequence[str] = ("CD8_T",), masks: Mapping[str, Any] | None = None
                   ) -> tuple[bool, str]:
    """Whether the shield analysis can run (tumour and T phenotypes; masks if given).

    ``masks``: the panel's mask specs (or computed masks); None skips that check.

    Examples
    --------
    >>> can_run_shield(["tumour", "CD8_T"])
    (True, '')
    >>> can_run_shield(["tumour", "CD8_T"], masks={})[0]
    False
    """
    have = _phenotype_names(panel_or_phenotypes)
    for role, types in (("tumour", tumour_types), ("effector_t", t_types)):
        if not set(map(str, types)) & have:
            return False, (f"no phenotype for role {role} ({', '.join(map(str, types)) or 'none given'}) "
                           "is defined in the panel")
    if masks is not None and not ({"net", "col1"} & set(masks)):
        return False, ("the panel has no [masks] net / col1 entry (e.g. net = { channels = [\"CitH3\"], "
                       "require = [\"MPO\"], gate = \"otsu\" })")
    return True, ""


def shield_analysis(cells: pd.DataFrame, cell_labels: np.ndarray | None, masks: Mapping[str, np.ndarray] | None,
                    pixel_size_um: float, region, *, tumour_types=("tumour",), t_types=("CD8_T",),
                    neutrophil_types=("neutrophil",), shield_ring_um: float = 3.0, shield_min_coverage: float = 0.5,
                    nest_strip_um: float = 5.0, contact_um: float = 12.0, antagonism_tile_um: float = 50.0,
                    antagonism_radii_um=(20.0, 30.0, 40.0, 50.0), n_sim: int = 199, seed: int = 0,
                    tissue=None, edge_um: float = 20.0, progress=None) -> ShieldResult:
    """NET / collagen-I shields around tumour cells, T-cell contact and NET–T antagonism.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``cell_id`` (== label value), ``x_um``, ``y_um``, ``phenotype``
        (``area_um2`` used for neutrophil area when there are no labels).
    cell_labels : int ndarray (Y, X) or None
        Whole-cell labels. None (table-only run): ring coverage and the
        shielded/unshielded contact comparison are unavailable (said so in
        ``sample["notes"]``); contact uses centroid distance.
    masks : dict or None
        ``"net"`` and/or ``"col1"`` boolean pixel masks (Y, X).
    pixel_size_um : float
    region : TumourRegion
        Tumour nests (µm); for per-nest numbers and boundary strips.
    tumour_types, t_types, neutrophil_types : tuple of str
    shield_ring_um : float
        Ring width outside each tumour cell (µm).
    shield_min_coverage : float
        Ring coverage from which a tumour cell is shielded (also the strip
        rule of :func:`nest_shield_fraction`).
    nest_strip_um : float
        Outer strip of the nest boundary (µm); with labels the strip starts
        at the tumour-cell outline (see :func:`nest_shield_fraction`).
    contact_um : float
        Centroid distance counted as contact without labels (µm).
    antagonism_tile_um : float
        Tile side of the antagonism grid (µm).
    antagonism_radii_um : sequence of float
        Radii of the neutrophil → T cross-pcf (µm).
    n_sim, seed : int
        Random-labelling simulations and seed.
    tissue : shapely geometry, optional
        Tissue region for the tile grid and the pcf window; default
        :func:`tibspace.geometry.tissue_region_from_cells` of the cells.
    edge_um : float
        Depth (µm) of the nest edge for the edge-only contact comparison.
    progress : callable, optional

    Returns
    -------
    ShieldResult
        ``per_cell`` (tumour cells: ``cell_id, ring_px,
        shield_coverage_net, shield_coverage_col1, shield_coverage, shielded,
        n_t_contacts, t_contact``), ``per_nest``, ``sample``, ``tiles``,
        ``cross_pcf``, ``parameters``.

    Notes
    -----
    Contact (metrics.md): with labels, a T cell touches a tumour cell when
    their labels are 8-adjacent; the rate is the fraction of tumour cells
    touched by ≥ 1 T cell, compared shielded vs unshielded with Fisher's exact
    test (two-sided; ``contact_rate_ratio`` = shielded / unshielded rate, < 1
    means shields keep T cells off). Shielded cells sit preferentially at the
    nest edge, where T cells are, so the raw comparison is confounded by
    position: ``sample["contact_edge"]`` repeats it for tumour cells within
    ``edge_um`` of the boundary only (an addition to metrics.md; read this
    one). Antagonism: tiles with ≥ 50 % tissue;
    neutrophil + NET area fraction = (NET pixels ∪ neutrophil pixels) / tile
    tissue area (without labels: NET area + Σ neutrophil ``area_um2``, or
    π·5² µm² per neutrophil when that column is missing); Spearman ρ with the
    T density (cells/mm²); negative ρ = antagonism. The cross-pcf of
    neutrophils → T cells uses random labelling among neutrophils and T cells
    (pcf below the envelope = the two avoid each other).

    Examples
    --------
    >>> import shapely
    >>> from tibspace.geometry import TumourRegion
    >>> lab = np.zeros((60, 60), np.int32); lab[10:20, 10:20] = 1; lab[10:20, 20:26] = 2
    >>> net = np.zeros((60, 60), bool); net[5:25, 0:10] = True
    >>> cells = pd.DataFrame({"cell_id": [1, 2], "x_um": [14.5, 22.5], "y_um": [14.5, 14.5],
    ...                       "phenotype": ["tumour", "CD8_T"]})
    >>> res = shield_analysis(cells, lab, {"net": net}, 1.0, TumourRegion.from_polygons([shapely.box(8, 8, 22, 22)]),
    ...                       n_sim=9, tissue=shapely.box(0, 0, 60, 60))
    >>> res.per_cell[["cell_id", "t_contact"]].values.tolist()
    [[1, True]]
    """
    import shapely

    from tibspace import tissue as geo

    if not isinstance(cells, pd.DataFrame):
        raise InputError(f"cells must be a pandas DataFrame (got {type(cells).__name__})")
    miss = [c for c in ("cell_id", "x_um", "y_um", "phenotype") if c not in cells.columns]
    if miss:
        raise InputError(f"cell table lacks column(s) {miss}; expected cell_id, x_um, y_um, phenotype")
    if not pixel_size_um or pixel_size_um <= 0:
        raise InputError(f"pixel_size_um={pixel_size_um}: expected a positive pixel size in µm")
    tumour_types = [str(t) for t in tumour_types]
    t_types = [str(t) for t in t_types]
    neutrophil_types = [str(t) for t in neutrophil_types]
    if not tumour_types or not t_types:
        raise InputError("tumour_types and t_types must each list at least one phenotype")
    masks = dict(masks or {})
    labels = None if cell_labels is None else np.asarray(cell_labels)
    shape = None
    for name, m in masks.items():
        m = np.asarray(m, bool)
        masks[name] = m
        if shape is not None and m.shape != shape:
            raise InputError(f"mask {name!r} has shape {m.shape}; expected {shape} like the other masks")
        shape = m.shape
    if labels is not None and shape is not None and labels.shape != shape:
        raise InputError(f"cell_labels has shape {labels.shape} but the masks have {shape}; "
                         "they must come from the same image")
    params = {"tumour_types": tumour_types, "t_types": t_types, "neutrophil_types": neutrophil_types,
              "shield_ring_um": float(shield_ring_um), "shield_min_coverage": float(shield_min_coverage),
              "nest_strip_um": float(nest_strip_um), "contact_um": float(contact_um),
              "antagonism_tile_um": float(antagonism_tile_um),
              "antagonism_radii_um": [float(r) for r in antagonism_radii_um], "n_sim": int(n_sim),
              "edge_um": float(edge_um),
              "seed": int(seed), "pixel_size_um": float(pixel_size_um)}
    notes: list[str] = []
    total = 5
    report(progress, "shield", 0, total)
    net = masks.get("net")
    col = masks.get("col1")
    union = None
    if net is not None or col is not None:
        union = np.zeros(shape, bool)
        for m in (net, col):
            if m is not None:
                union |= m
    if net is None:
        notes.append("no NET mask: NET coverage unavailable")
    if col is None:
        notes.append("no collagen-I mask: COL1 coverage unavailable")

    ph = cells["phenotype"].astype(str).to_numpy()
    is_tum = np.isin(ph, tumour_types)
    is_t = np.isin(ph, t_types)
    is_neu = np.isin(ph, neutrophil_types)
    tum_ids = cells["cell_id"].to_numpy(np.int64)[is_tum]

    # ---- per-cell ring coverage
    if labels is not None and union is not None:
        cov = shield_ring_coverage(labels, tum_ids, net, col, pixel_size_um, ring_um=shield_ring_um)
        if net is None:
            cov["shield_coverage_net"] = np.nan
        if col is None:
            cov["shield_coverage_col1"] = np.nan
        cov["shielded"] = (cov["shield_coverage"] >= shield_min_coverage).to_numpy()
        ring_available = True
    else:
        cov = pd.DataFrame({"cell_id": tum_ids, "ring_px": np.zeros(len(tum_ids), np.int64),
                            "shield_coverage_net": np.nan, "shield_coverage_col1": np.nan,
                            "shield_coverage": np.nan, "shielded": False})
        ring_available = False
        notes.append("per-cell shield coverage unavailable: needs the cell label image and NET/COL1 masks"
                     if labels is None else "per-cell shield coverage unavailable: no NET/COL1 mask")
    report(progress, "shield", 1, total)

    # ---- contacts
    cnt, contact_method = _contact_counts(cells, tum_ids, is_t, labels, float(contact_um))
    cov["n_t_contacts"] = cnt
    cov["t_contact"] = cnt > 0
    sh = cov["shielded"].to_numpy(bool)
    tc = cov["t_contact"].to_numpy(bool)
    measurable = cov["shield_coverage"].notna().to_numpy()
    if ring_available:
        contact = _fisher(int((sh & tc & measurable).sum()), int((sh & ~tc & measurable).sum()),
                          int((~sh & tc & measurable).sum()), int((~sh & ~tc & measurable).sum()))
    else:
        contact = _fisher(0, 0, int(tc.sum()), int((~tc).sum()))
        contact.update({"contact_rate_shielded": float("nan"), "n_shielded": 0,
                        "note": "shielded vs unshielded comparison unavailable without ring coverage"})
    contact["contact_rate_all"] = float(tc.mean()) if tc.size else float("nan")
    contact["method"] = contact_method
    report(progress, "shield", 2, total)

    # ---- per nest (nest_id stays out of per_cell: the pipeline merges per_cell into the cell
    # table, whose nest_id column — nearest nest of EVERY cell — must not be overwritten)
    n_nests = int(getattr(region, "n_nests", len(getattr(region, "nests", []))))
    pos = pd.Index(cells["cell_id"].to_numpy()).get_indexer(tum_ids)
    if n_nests and len(tum_ids):
        nid = np.asarray(geo.nearest_nest_id(cells["x_um"].to_numpy(float)[pos],
                                             cells["y_um"].to_numpy(float)[pos], region), np.int64)
    else:
        nid = np.zeros(len(tum_ids), np.int64)
    if union is not None and n_nests:
        tmask = None
        if labels is not None:
            lut = np.zeros(int(max(labels.max(), tum_ids.max() if tum_ids.size else 0)) + 1, bool)
            lut[tum_ids[tum_ids > 0]] = True
            tmask = lut[labels]
        strip = nest_shield_fraction(region, union, pixel_size_um, strip_um=nest_strip_um,
                                     min_coverage=shield_min_coverage, tumour_mask=tmask)
    else:
        strip = pd.DataFrame({"nest_id": np.arange(1, n_nests + 1), "boundary_shield_fraction": np.nan})
    rows = []
    for k in range(1, n_nests + 1):
        m = (nid == k) & measurable
        rows.append({"nest_id": k, "n_tumour": int((nid == k).sum()),
                     "shielded_fraction": float(sh[m].mean()) if m.any() else float("nan"),
                     "mean_shield_coverage": float(cov["shield_coverage"].to_numpy()[m].mean()) if m.any()
                     else float("nan"),
                     "t_contact_rate": float(tc[nid == k].mean()) if (nid == k).any() else float("nan")})
    per_nest = pd.DataFrame(rows, columns=["nest_id", "n_tumour", "shielded_fraction", "mean_shield_coverage",
                                           "t_contact_rate"])
    per_nest = per_nest.merge(strip, on="nest_id", how="left") if n_nests else per_nest
    contact_edge = {"edge_um": float(edge_um), "note": "needs ring coverage and a tumour region"}
    if ring_available and n_nests and len(tum_ids):
        d_t = np.asarray(geo.signed_distance_um(cells["x_um"].to_numpy(float)[pos],
                                                cells["y_um"].to_numpy(float)[pos], region), float)
        e = measurable & (d_t > -float(edge_um))
        contact_edge = _fisher(int((sh & tc & e).sum()), int((sh & ~tc & e).sum()),
                               int((~sh & tc & e).sum()), int((~sh & ~tc & e).sum()))
        contact_edge["edge_um"] = float(edge_um)
    report(progress, "shield", 3, total)

    # ---- antagonism: tiles
    if tissue is None:
        tissue = geo.tissue_region_from_cells(cells["x_um"].to_numpy(float), cells["y_um"].to_numpy(float))
        notes.append("tissue region for antagonism tiles derived from the cell positions")
    tile = float(antagonism_tile_um)
    minx, miny, maxx, maxy = tissue.bounds
    x0, y0 = math.floor(minx / tile) * tile, math.floor(miny / tile) * tile
    nx_t = max(1, int(math.ceil((maxx - x0) / tile)))
    ny_t = max(1, int(math.ceil((maxy - y0) / tile)))
    gx, gy = np.meshgrid(x0 + np.arange(nx_t) * tile, y0 + np.arange(ny_t) * tile)
    boxes = shapely.box(gx.ravel(), gy.ravel(), gx.ravel() + tile, gy.ravel() + tile)
    t_area = shapely.area(shapely.intersection(boxes, tissue)).reshape(ny_t, nx_t)
    x = cells["x_um"].to_numpy(float)
    y = cells["y_um"].to_numpy(float)

    def per_tile_count(sel, weights=None):
        ix = np.floor((x[sel] - x0) / tile).astype(np.int64)
        iy = np.floor((y[sel] - y0) / tile).astype(np.int64)
        ok = (ix >= 0) & (ix < nx_t) & (iy >= 0) & (iy < ny_t)
        w = None if weights is None else weights[ok]
        return np.bincount(iy[ok] * nx_t + ix[ok], weights=w, minlength=nx_t * ny_t).reshape(ny_t, nx_t)

    n_t_tile = per_tile_count(is_t)
    if labels is not None:
        ids = cells["cell_id"].to_numpy(np.int64)
        size = int(max(labels.max(), ids.max() if ids.size else 0)) + 1
        neu_lut = np.zeros(size, bool)
        neu_lut[ids[is_neu]] = True
        neu_px = neu_lut[labels]
        nn_mask = neu_px | net if net is not None else neu_px
        nn_area = _tile_sums(nn_mask, pixel_size_um, x0, y0, tile, ny_t, nx_t)
        area_method = "pixels of NET mask ∪ neutrophil labels"
    else:
        w = (cells["area_um2"].to_numpy(float)[is_neu] if "area_um2" in cells.columns
             else np.full(int(is_neu.sum()), math.pi * 25.0))
        nn_area = per_tile_count(is_neu, w)
        if net is not None:
            nn_area = nn_area + _tile_sums(net, pixel_size_um, x0, y0, tile, ny_t, nx_t)
        area_method = "NET mask pixels + neutrophil cell areas (no labels)"
    keep = t_area >= 0.5 * tile * tile
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(keep, np.minimum(nn_area / t_area, 1.0), np.nan)
        tdens = np.where(keep, n_t_tile / t_area * 1e6, np.nan)
    tiles = pd.DataFrame({"x0_um": gx.ravel(), "y0_um": gy.ravel(), "tissue_area_um2": t_area.ravel(),
                          "neutrophil_net_area_fraction": frac.ravel(), "t_density_per_mm2": tdens.ravel()})
    tiles = tiles[keep.ravel()].reset_index(drop=True)
    from scipy.stats import spearmanr

    if len(tiles) >= 3 and tiles["neutrophil_net_area_fraction"].nunique() > 1 and \
            tiles["t_density_per_mm2"].nunique() > 1:
        rho, p_rho = spearmanr(tiles["neutrophil_net_area_fraction"], tiles["t_density_per_mm2"])
    else:
        rho, p_rho = float("nan"), float("nan")
        notes.append("antagonism Spearman undefined: fewer than 3 tiles or a constant variable")
    report(progress, "shield", 4, total)

    # ---- antagonism: cross-pcf neutrophil -> T under random labelling
    pcf = pd.DataFrame()
    try:
        from tibspace.stats import random_labelling_envelope

        pcf = random_labelling_envelope(_relabel(cells, neutrophil_types, t_types), "cross_pcf", "__a__", "__b__",
                                        np.asarray(antagonism_radii_um, float), tissue, n_sim=n_sim, seed=seed,
                                        outside="drop")
    except InputError as exc:
        notes.append(f"neutrophil-T cross-pcf skipped: {exc}")

    meas = measurable
    sample = {
        "n_tumour": int(len(tum_ids)),
        "ring_coverage_available": bool(ring_available),
        "shielded_fraction": float(sh[meas].mean()) if meas.any() else float("nan"),
        "mean_shield_coverage": float(cov["shield_coverage"].to_numpy()[meas].mean()) if meas.any() else float("nan"),
        "mean_shield_coverage_net": float(np.nanmean(cov["shield_coverage_net"])) if meas.any() and net is not None
        else float("nan"),
        "mean_shield_coverage_col1": float(np.nanmean(cov["shield_coverage_col1"])) if meas.any() and col is not None
        else float("nan"),
        "boundary_shield_fraction": (float(strip["shielded_length_um"].sum() / strip["sampled_length_um"].sum())
                                     if "sampled_length_um" in strip and strip["sampled_length_um"].sum() > 0
                                     else float("nan")),
        "mask_area_fraction": {k: float(np.asarray(v).mean()) for k, v in masks.items()},
        "contact": contact,
        "contact_edge": contact_edge,
        "antagonism": {
            "n_tiles": int(len(tiles)), "tile_um": tile, "area_fraction": area_method,
            "spearman_rho": float(rho), "spearman_p": float(p_rho),
            "cross_pcf_r_um": pcf["r_um"].tolist() if len(pcf) else [],
            "cross_pcf": pcf["value"].tolist() if len(pcf) else [],
            "cross_pcf_lo": pcf["lo"].tolist() if len(pcf) else [],
            "cross_pcf_hi": pcf["hi"].tolist() if len(pcf) else [],
            "cross_pcf_p_value": pcf["p_value"].tolist() if len(pcf) else [],
            "cross_pcf_p_global": float(pcf["p_global"].iat[0]) if len(pcf) else float("nan"),
            "interpretation": "negative rho / pcf below the envelope = neutrophils+NETs and T cells avoid each other",
        },
        "notes": notes,
    }
    report(progress, "shield", total, total)
    return ShieldResult(per_cell=cov, per_nest=per_nest, sample=sample, tiles=tiles, cross_pcf=pcf,
                        parameters=params)
