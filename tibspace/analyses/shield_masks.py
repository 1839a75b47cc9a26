"""Boolean NET / collagen-I pixel masks from multiplex image channels.

A pixel of mask ``m`` is positive when it is above the gate of any of the
mask's channels and, for each co-required channel (e.g. MPO on NETs), within
``require_dilation_um`` µm of a pixel above that channel's gate; objects
smaller than ``min_object_um2`` µm² are removed. Gates are in raw intensity
units of their channel. Pixels are (row, col) = (y, x) with centres at
``(i + 0.5) · pixel_size_um``; the image is processed in tiles with a halo so
whole slides stay bounded in memory. Used by :mod:`tibspace.analyses.shield`.

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

Background: before an automatic gate, the channel's smooth background is
estimated at the physical scale ``background_um`` (default 25 µm blocks, a
3 × 3-block median; :mod:`tibspace.analyses.shield_background`) and removed:
the gate and the threshold see ``raw − background + level`` (``level`` = the
background's median), so an uneven background (illumination, thickness,
autofluorescence blotches) neither raises the noise floor nor fills the mask
on the bright side. Gates of automatic channels are reported in these
flattened units. ``background_um=0`` thresholds raw intensities; a numeric
gate always applies to raw intensities (its units are the channel's).

Edge growth: where an automatic gate is set by its noise floor (median +
5 σ above Otsu, a noisy channel), pixels above the lower floor median + 3 σ
(:data:`GROW_SD`) within :data:`GROW_UM` µm of a pixel above the gate join
the mask, so the PSF-dimmed rims of real structures are kept while isolated
noise is not. Where Otsu sets the gate (median + 5 σ below it), both gates
are Otsu and nothing grows. A co-required channel with an automatic gate
(MPO on NETs) is gated at that lower floor (max(split, median + 3 σ)): it only
has to show signal within ``require_dilation_um`` of the mask's own positive
pixels, and NET-bound MPO is dim enough that a 5 σ floor loses it in a noisy
channel.

Autofluorescence and absent stains (:mod:`tibspace.analyses.shield_af`):
candidate pixels bright in ≥ 75 % of the channels the mask does not use are
autofluorescent granules and dropped, unless a stain remains once the
granule's share (its spectrum, measured on the data) is removed; a channel
whose mask's median pixel is not above its 5 σ floor is ``absent`` and its
mask is emptied. Decisions are returned with ``return_decisions=True``.

The image is processed in tiles of ``tile_size_px`` with a halo, so peak
memory is set by the tile size plus the output masks. Small-object removal
is exact across tile seams: an object cut by the halo edge is at least as
long as the halo, which is chosen larger than ``min_object_um2`` in pixels.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.analyses.shield_af import (ABSENT, FLOOR_SD, AfReference, af_need, af_points, decision_entry,
                                         section_grid, with_spectrum)
from tibspace.analyses.shield_background import background_at_points, estimate_background, flatten
from tibspace.analyses.shield_sample import (_image_yx, _read, _split_and_noise, _stride, _strided_sample,
                                             _tissue_sample_mask, otsu_gate_log1p)

__all__ = ["shield_masks", "otsu_gate_log1p", "GROW_SD", "GROW_UM"]

#: Noise floor (σ above the median) of the growth gate (module docstring).
GROW_SD = 3.0
#: Reach (µm) of edge growth from pixels above the gate.
GROW_UM = 1.0
#: Reference channels of the autofluorescence test use every REF_SUB-th gate sample in y and x: their floor
#: and the granules' spectrum are medians, which a quarter of the sample gives as well, at a quarter the cost.
REF_SUB = 2

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
                 background_um: float = 25.0, af_reject: bool = True, return_decisions: bool = False,
                 progress=None) -> tuple:
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

    Gates and tiling: see the module docstring.

    Parameters
    ----------
    image : numpy.ndarray (C, Y, X) or tibspace.io.MultiplexImage
        The multiplex image (a MultiplexImage is read lazily, tile by tile).
    panel_masks : dict
        Mask name (``"net"``, ``"col1"``) -> MaskSpec.
    channel_index : dict or None
        Channel name -> index into the image's channel axis; None: ``image.channel_index(name)``.
    pixel_size_um, tile_size_px, require_dilation_um : float, int, float
        Pixel size (µm); tile side (px); tolerance for the co-required channel(s) (µm).
    tissue_mask : bool ndarray (Y, X), optional
        Restrict Otsu samples to tissue pixels.
    max_gate_pixels, background_um : int, float
        Subsample size for automatic gates and the background mesh; block side (µm) of the
        background removed before automatic gates (0: none).
    af_reject : bool
        Drop pixels with the autofluorescence signature (module docstring); False: the rule without it.
    return_decisions, progress : bool, callable, optional
        Also return the per-channel decisions; ``progress(step, done, total)``.

    Returns
    -------
    masks : dict of str -> bool ndarray (Y, X)
    gates : dict of str -> float
        ``"<mask>:<channel>"`` -> gate used (raw intensity units; automatic gates in
        background-flattened units, see the module docstring).
    decisions : dict of str -> dict, with ``return_decisions``
        ``"<mask>:<channel>"`` -> {value, method, decision ("positive" / "absent" / "manual gate"),
        evidence, area_fraction} (:func:`tibspace.analyses.shield_af.decision_entry`).

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
    gates: dict[str, float] = {}
    plans, cache = _plan_masks(image, panel_masks, channel_index, tissue_mask, max_gate_pixels, gates,
                               (float(pixel_size_um), float(background_um or 0.0)), bool(af_reject))
    dil_px = int(math.ceil(require_dilation_um / pixel_size_um))
    n_tiles = int(math.ceil(ny / tile_size_px)) * int(math.ceil(nx / tile_size_px))
    masks: dict[str, np.ndarray] = {}
    decisions: dict[str, dict] = {}
    st_ = _stride(image, max_gate_pixels)
    tm = _decision_grid(image, plans, channel_index, tissue_mask, max_gate_pixels, cache, st_, (ny, nx))
    for i, plan in enumerate(plans):
        def step(done, _i=i):
            report(progress, "shield masks", _i * n_tiles + done, len(plans) * n_tiles)

        masks[plan[0]], entries = _one_mask(image, plan, (pixel_size_um, dil_px, tile_size_px), step, st_, tm)
        decisions.update(entries)
    return (masks, gates, decisions) if return_decisions else (masks, gates)


def _decide(mask: np.ndarray, info, stride: int, tm: np.ndarray | None) -> dict[str, dict]:
    """Recorded gate and presence decision of each channel of one mask (:func:`shield_af.decision_entry`)."""
    on_grid = mask[::stride, ::stride]
    if tm is not None:
        on_grid = on_grid & tm
    area = float(mask.mean())
    out = {}
    for key, g, method, stats, grid, is_req in info:
        vals = None if grid is None else grid[on_grid[: grid.shape[0], : grid.shape[1]]]
        out[key] = decision_entry(g, stats, vals, area, method, is_req)
    return out


def _decision_grid(image, plans, channel_index, tissue_mask, max_gate_pixels, cache, stride, yx):
    """The tissue grid of the gate sample, where an automatic gate needs a decision; else None."""
    if not any(x[3] is not None for p in plans for x in p[5]):
        return None
    ny, nx = yx
    return _tissue_grid(image, channel_index, tissue_mask, max_gate_pixels, cache,
                        (len(range(0, ny, stride)), len(range(0, nx, stride))))

def _one_mask(image, plan, geometry, step, stride, tissue_grid):
    """One mask and its channels' decisions; an ``absent`` channel's pixels are taken out again."""
    name, own, req, min_um2, af, info = plan
    pixel_size_um, dil_px, tile_size_px = geometry
    n_af = [0]
    mask = _mask_tiles(image, own, req, min_um2, pixel_size_um, dil_px, tile_size_px, step, af, n_af)
    entries = _decide(mask, info, stride, tissue_grid)
    if any(e["decision"] == ABSENT for e in entries.values()) and mask.any():
        mask = _without_absent(image, mask, own, req, info, entries, (min_um2, pixel_size_um, dil_px, tile_size_px),
                               af)
        for e in entries.values():
            e["area_fraction"] = float(mask.mean())
    for e in entries.values():
        e["evidence"]["autofluorescence"] = None if af is None else dict(af.evidence(), pixels_removed=n_af[0])
    return mask, entries

def _without_absent(image, mask, own, req, info, entries, sizes, af) -> np.ndarray:
    """The mask rebuilt from the mask's channels decided ``positive`` (empty when none is, or when a
    co-required channel is absent)."""
    keep = [o for o, (key, *_rest) in zip(own, [x for x in info if not x[5]])
            if entries[key]["decision"] != ABSENT]
    req_absent = any(entries[x[0]]["decision"] == ABSENT for x in info if x[5])
    if not keep or req_absent:
        return np.zeros_like(mask)
    min_um2, px, dil_px, tile = sizes
    return _mask_tiles(image, keep, req, min_um2, px, dil_px, tile, lambda d: None, af)


def _auto_gate(image, c: int, method: str, channel_index, tissue_mask, max_gate_pixels: int, cache: dict,
               scale: tuple[float, float]):
    """Automatic gate of channel ``c`` from a strided sample restricted to tissue pixels, after removing the
    channel's background; ``(gate, growth gate, Background or None, (split, median, σ), flattened sample
    grid)``. ``scale`` = (pixel_size_um, background_um)."""
    st_ = _stride(image, max_gate_pixels)
    sample = _strided_sample(image, c, max_gate_pixels)
    tm = _tissue_grid(image, channel_index, tissue_mask, max_gate_pixels, cache, sample.shape)
    in_tissue = tm is not None
    bg = None
    if scale[1] > 0:
        bg = estimate_background(sample, tm, st_, scale[0], scale[1])
        sample = flatten(sample, bg, np.arange(sample.shape[0]) * st_, np.arange(sample.shape[1]) * st_)
    split, med, sd = _split_and_noise(sample[tm] if in_tissue else sample, method)
    gate = float(max(split, med + 5.0 * sd))          # = otsu_gate_log1p(sample, method=method)
    return gate, min(gate, max(split, med + GROW_SD * sd)), bg, (split, med, sd), sample


def _tissue_grid(image, channel_index, tissue_mask, max_gate_pixels: int, cache: dict, shape) -> np.ndarray | None:
    """Tissue pixels of the strided sample grid (None: use every sample)."""
    if tissue_mask is not None:
        st_ = _stride(image, max_gate_pixels)
        tm = np.asarray(tissue_mask[::st_, ::st_], bool)[: shape[0], : shape[1]]
    else:
        if "tissue" not in cache:
            _tissue_sample_mask(image, _all_channels(image, channel_index), max_gate_pixels, cache)
            cache["tissue"] = section_grid(cache["sum"], _stride(image, max_gate_pixels) * cache["px"])
        tm = cache["tissue"]
    return tm if tm.shape == tuple(shape) and tm.any() else None


def _all_channels(image, channel_index) -> list[int]:
    return sorted(set(int(v) for v in channel_index.values())) if channel_index else \
        list(range(int(image.shape[0])))


def _af_reference(image, name: str, spec, used: set, own: list, channel_index, tissue_mask, max_gate_pixels: int,
                  cache: dict, scale) -> AfReference | None:
    """Reference channels of mask ``name`` for the autofluorescence test (:mod:`shield_af`), or None, with
    the granules' spectrum measured on the sample grid. ``own`` = [(channel, gate, Background or None,
    flattened sample grid or None, background median or None)] of the mask's own channels."""
    declared = _as_list(_spec_get(spec, "autofluorescence"))
    if declared:
        idx = [_channel_of(image, channel_index, ch, name) for ch in declared]
    else:
        idx = [c for c in _all_channels(image, channel_index) if c not in used]
    # a channel that is constant on the section (an empty ion channel of a MIBI panel) carries no signature
    idx = [c for c in idx if _reference_floor(image, c, channel_index, tissue_mask, max_gate_pixels, cache,
                                              scale)[0] is not None]
    need = af_need(len(idx), bool(declared))
    if need == 0:
        return None
    chans, excess = [], []
    cand = None
    if own and all(grid is not None for *_, grid, _ in own):
        cand = np.zeros(own[0][3][::REF_SUB, ::REF_SUB].shape, bool)
        for _, g, _, grid, _ in own:
            cand |= grid[::REF_SUB, ::REF_SUB] > g      # the mask's own candidates on the reference grid
    for c in idx:
        floor, bg, med, at_cand = _reference_floor(image, c, channel_index, tissue_mask, max_gate_pixels, cache,
                                                   scale, cand)
        chans.append((c, floor, bg, med))
        if cand is not None:
            excess.append(at_cand - med)
    names = {int(v): str(k) for k, v in (channel_index or {}).items()}
    ref = AfReference(tuple(chans), need, tuple(names.get(c, str(c)) for c in idx))
    if cand is None:
        return ref
    own_excess = [grid[::REF_SUB, ::REF_SUB][cand] - med for *_, grid, med in own]
    return with_spectrum(ref, np.array(excess), own_excess, [(c, bg, g) for c, g, bg, _, _ in own])


def _reference_floor(image, c: int, channel_index, tissue_mask, max_gate_pixels: int, cache: dict, scale,
                     cand: np.ndarray | None = None):
    """(floor, Background or None, background median, flattened values at ``cand`` or None) of reference
    channel ``c`` on the reference grid (floor None: the channel is constant there) (every :data:`REF_SUB`-th gate sample): floor = median + 5 σ of its
    flattened samples on the section (:func:`shield_af.section_grid`: tissue against glass, not the gates'
    bright-pixel split, so the median is the channel's background even where its stain covers most cells)."""
    st_ = _stride(image, max_gate_pixels) * REF_SUB
    sample = _strided_sample(image, c, max_gate_pixels)[::REF_SUB, ::REF_SUB]
    rows, cols = np.arange(sample.shape[0]) * st_, np.arange(sample.shape[1]) * st_
    if ("ref", c) in cache:
        floor, bg, med = cache[("ref", c)]
        if cand is None or floor is None:
            return floor, bg, med, None
        yy, xx = np.nonzero(cand)
        v = sample[yy, xx].astype(np.float64)
        return floor, bg, med, v if bg is None else v - background_at_points(bg, rows[yy], cols[xx]) + bg.level
    tg = _section(image, channel_index, tissue_mask, max_gate_pixels, cache, scale)
    tg = tg[::REF_SUB, ::REF_SUB] if tg is not None and tg[::REF_SUB, ::REF_SUB].shape == sample.shape else None
    tg = tg if tg is not None and tg.any() else None
    bg = estimate_background(sample, tg, st_, scale[0], scale[1]) if scale[1] > 0 else None
    if bg is not None:
        sample = flatten(sample, bg, rows, cols)
    vals = sample[tg] if tg is not None else sample
    if vals.size == 0 or np.ptp(vals) == 0:
        cache[("ref", c)] = (None, bg, None)            # constant: no floor (the caller leaves it out)
        return None, bg, None, None
    _, med, sd = _split_and_noise(vals, "background")
    cache[("ref", c)] = (float(med + FLOOR_SD * sd), bg, float(med))
    return (*cache[("ref", c)], None if cand is None else sample[cand])


def _section(image, channel_index, tissue_mask, max_gate_pixels: int, cache: dict, scale) -> np.ndarray | None:
    """The section on the gate's sample grid: ``tissue_mask`` when given, else :func:`shield_af.section_grid`."""
    if "section" not in cache:
        st_ = _stride(image, max_gate_pixels)
        ny, nx = _image_yx(image)
        shape = (len(range(0, ny, st_)), len(range(0, nx, st_)))
        if tissue_mask is not None:
            cache["section"] = _tissue_grid(image, channel_index, tissue_mask, max_gate_pixels, cache, shape)
        else:
            if "sum" not in cache:
                _tissue_grid(image, channel_index, None, max_gate_pixels, cache, shape)
            cache["section"] = section_grid(cache["sum"], st_ * scale[0])
    return cache["section"]


def _plan_masks(image, panel_masks, channel_index, tissue_mask, max_gate_pixels: int, gates: dict,
                scale: tuple[float, float], af_reject: bool = True) -> list:
    """Per mask: (name, own, required, min_object_um2, AfReference or None, info), own / required =
    [(channel, gate, Background or None, growth gate)], info = [(key, gate, method, stats, sample grid, is
    required)] for :func:`_decide`; fills ``gates``. ``scale`` = (pixel_size_um, background_um)."""
    plans = []
    cache: dict = {"px": float(scale[0])}
    for name, spec in panel_masks.items():
        chans = _as_list(_spec_get(spec, "channels"))
        req = _as_list(_spec_get(spec, "require"))
        if not chans:
            raise InputError(f"mask {name!r} lists no channels; expected e.g. channels = [\"CitH3\"]")
        gate = _spec_get(spec, "gate", "otsu")
        min_um2 = float(_spec_get(spec, "min_object_um2", 0.0) or 0.0)
        cidx, info = [], []
        for is_req, group in ((False, chans), (True, req)):
            gi = []
            for ch in group:
                c = _channel_of(image, channel_index, ch, name)
                g = _resolve_gate(gate, ch, is_req)
                bg, grow, stats, grid, method = None, None, None, None, "manual"
                if isinstance(g, str):
                    method = g.lower()
                    if method not in ("otsu", "gmm", "background"):
                        raise InputError(f"mask {name!r}: gate {g!r} for channel {ch!r}; expected a number, "
                                         "\"otsu\", \"gmm\" or \"background\"")
                    g, grow, bg, stats, grid = _auto_gate(image, c, method, channel_index, tissue_mask,
                                                          max_gate_pixels, cache, scale)
                if is_req and grow is not None:
                    g = grow       # a co-required channel only has to show signal: its floor is GROW_SD σ
                gates[f"{name}:{ch}"] = float(g)
                gi.append((c, float(g), bg, float(g) if grow is None or is_req else float(grow)))
                info.append((f"{name}:{ch}", float(g), method, stats,
                             None if grid is None else grid.astype(np.float32), is_req))
            cidx.append(gi)
        used = {c for c, *_ in cidx[0] + cidx[1]}
        own_grids = [(c, g, bg, x[4], None if x[3] is None else x[3][1])
                     for (c, g, bg, _), x in zip(cidx[0], [x for x in info if not x[5]])]
        af = _af_reference(image, name, spec, used, own_grids, channel_index, tissue_mask, max_gate_pixels,
                           cache, scale) if af_reject else None
        plans.append((name, cidx[0], cidx[1], min_um2, af, info))
    return plans, cache


def _mask_tiles(image, own, req, min_um2: float, pixel_size_um: float, dil_px: int, tile_size_px: int,
                step, af: AfReference | None = None, n_af: list | None = None) -> np.ndarray:
    """One mask, tile by tile: halo for exact object sizes plus the reach of ``require``'s dilation and of
    edge growth. Pixels with the autofluorescence signature of ``af`` are dropped before small objects are
    removed (their count on the tile cores is added to ``n_af[0]``)."""
    ny, nx = _image_yx(image)
    min_px = int(math.ceil(min_um2 / pixel_size_um ** 2)) if min_um2 > 0 else 0
    halo = min_px + 2
    grow_px = int(math.ceil(GROW_UM / pixel_size_um)) if any(gl < g for _, g, _, gl in own) else 0
    grow_disk = _disk(grow_px)
    reach = max(dil_px, grow_px)
    out = np.zeros((ny, nx), dtype=bool)
    disk = _disk(dil_px) if req else None
    done = 0
    for y0 in range(0, ny, tile_size_px):
        for x0 in range(0, nx, tile_size_px):
            y1, x1 = min(y0 + tile_size_px, ny), min(x0 + tile_size_px, nx)
            ey0, ex0 = max(0, y0 - halo - reach), max(0, x0 - halo - reach)
            ey1, ex1 = min(ny, y1 + halo + reach), min(nx, x1 + halo + reach)
            pos = np.zeros((ey1 - ey0, ex1 - ex0), dtype=bool)
            for c, g, bg, g_low in own:
                v = _channel_tile(image, c, bg, ey0, ey1, ex0, ex1)
                hi = v > g
                if g_low < g and hi.any():
                    hi |= (v > g_low) & ndi.binary_dilation(hi, structure=grow_disk)
                pos |= hi
            for c, g, bg, _ in req:
                r_ok = _channel_tile(image, c, bg, ey0, ey1, ex0, ex1) > g
                if disk is not None:
                    r_ok = ndi.binary_dilation(r_ok, structure=disk)
                pos &= r_ok
            if af is not None and pos.any():
                pos = _drop_af(image, pos, af, (ey0, ey1, ex0, ex1), (y0 - ey0, y1 - ey0, x0 - ex0, x1 - ex0), n_af)
            # crop the dilation margin: `pos` is exact on tile + halo
            hy0, hx0 = max(0, y0 - halo), max(0, x0 - halo)
            hy1, hx1 = min(ny, y1 + halo), min(nx, x1 + halo)
            pos = pos[hy0 - ey0: hy1 - ey0, hx0 - ex0: hx1 - ex0]
            if min_px > 1 and pos.any():
                pos = _remove_small_keep_cut(pos, min_px, cut=(hy0 > 0, hy1 < ny, hx0 > 0, hx1 < nx))
            out[y0:y1, x0:x1] = pos[y0 - hy0: y1 - hy0, x0 - hx0: x1 - hx0]
            done += 1
            step(done)
    return out


def _drop_af(image, pos: np.ndarray, af: AfReference, box, core, n_af: list | None) -> np.ndarray:
    """``pos`` without its pixels that are bright in ``af.need`` reference channels (a pixel test, so the
    result does not depend on the tiling); counts the dropped pixels of the tile core into ``n_af``."""
    ey0, ey1, ex0, ex1 = box
    ys, xs = np.nonzero(pos)
    hit = af_points(lambda c: _read(image, c, ey0, ey1, ex0, ex1), af, ys, xs, ey0, ex0)
    if not hit.any():
        return pos
    pos = pos.copy()
    pos[ys[hit], xs[hit]] = False
    if n_af is not None:
        cy0, cy1, cx0, cx1 = core
        yh, xh = ys[hit], xs[hit]
        n_af[0] += int(np.count_nonzero((yh >= cy0) & (yh < cy1) & (xh >= cx0) & (xh < cx1)))
    return pos


def _disk(r_px: int) -> np.ndarray | None:
    """Disk structuring element of radius ``r_px`` pixels (None for 0)."""
    if r_px <= 0:
        return None
    r = np.arange(-r_px, r_px + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= r_px ** 2


def _channel_tile(image, c: int, bg, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Channel ``c`` on rows y0..y1, cols x0..x1: raw, or background-flattened when ``bg`` is given."""
    v = _read(image, c, y0, y1, x0, x1)
    return v if bg is None else flatten(v, bg, np.arange(y0, y1), np.arange(x0, x1))


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


