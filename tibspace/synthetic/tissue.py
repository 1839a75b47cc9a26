"""Synthetic HCC-like multiplex tissue with planted ground truth.

:func:`make_tissue` renders a 12-channel multiplex image of liver-cancer-like
tissue (tumour nests in stroma) together with everything a test needs to know
about it: nucleus and whole-cell labels, the true phenotype and position of
every cell, the nest outlines, the planted barrier arcs (SPP1+ macrophages and
CAFs lining a chosen fraction of each nest's perimeter), the planted NET /
collagen-I shields around tumour cells (as pixel masks) and the T-cell
placement of the chosen immune phenotype.

Everything is planned in micrometres and converted to pixels with
``pixel_size_um``. Image formation is vectorised (numba kernels over small
per-cell bounding boxes for the labels, per-tile kernels for the channels),
processed in tiles with Dask threads, so an 8192² × 12 image takes seconds.
Random numbers for pixel noise come from a counter-based hash of
``(seed, channel, row, column)``, so the result does not depend on tiling or
on the number of threads.

Channels (this order): ``DAPI, NaKATPase, HepPar1, CD68, SPP1, aSMA, FAP, CD3,
CD8, MPO, CitH3, COL1``. True phenotypes: ``tumour`` (HepPar1+),
``SPP1_macrophage`` (CD68+ SPP1+), ``CAF`` (aSMA+ and/or FAP+), ``CD8_T``
(CD3+ CD8+), ``other_T`` (CD3+ CD8-), ``neutrophil`` (MPO+), ``other``.

Run ``python -m tibspace.synthetic --out DIR --preset sample`` to regenerate
the bundled ``sample_data``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numba
import numpy as np
import pandas as pd
import shapely
import shapely.affinity
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from shapely.geometry import LineString, MultiLineString, Polygon, mapping, shape as shapely_shape
from shapely.ops import substring

from tibspace.errors import InputError
from tibspace.io.qupath import qupath_px_to_um, um_to_qupath_px
from tibspace.progress import report

__all__ = ["CHANNELS", "PHENOTYPES", "SyntheticTissue", "make_tissue", "load_truth",
           "make_sample"]

#: Channel names of the synthetic image, in channel order.
CHANNELS = ("DAPI", "NaKATPase", "HepPar1", "CD68", "SPP1", "aSMA", "FAP", "CD3", "CD8",
            "MPO", "CitH3", "COL1")
#: True phenotypes planted by :func:`make_tissue`.
PHENOTYPES = ("tumour", "SPP1_macrophage", "CAF", "CD8_T", "other_T", "neutrophil", "other")
IMMUNE_PHENOTYPES = ("inflamed", "excluded", "desert")

#: Centre distance (µm) within which a T cell touches a tumour cell: tumour
#: (≤ 8.5 µm) plus T-cell (≤ 4.5 µm) radii plus the 3 µm shield ring, so every
#: outline contact, and every contact the analysis counts from centroids
#: (``contact_um`` 12 µm), is within it.
SHIELD_BLOCK_REACH_UM = 16.0
#: Width of the barrier band outside the nest boundary (µm), as in metrics.md.
BARRIER_WIDTH_UM = 50.0
#: Ring outside each tumour cell's outline used for shield coverage (µm).
SHIELD_RING_UM = 3.0
#: Inner/outer margin half-width (µm).
MARGIN_UM = 50.0

# ---------------------------------------------------------------------------
# cell morphology per phenotype: nucleus equivalent diameter (µm, mean, sd),
# aspect ratio range, harmonic irregularity amplitude, cytoplasm expansion (µm)
_MORPH = {
    "tumour": dict(d=(10.5, 0.8), aspect=(1.0, 1.35), irr=0.05, lobes=0.0, exp=4.5),
    "SPP1_macrophage": dict(d=(8.0, 0.6), aspect=(1.1, 1.5), irr=0.09, lobes=0.0, exp=4.0),
    "CAF": dict(d=(7.2, 0.6), aspect=(2.0, 3.0), irr=0.04, lobes=0.0, exp=2.5),
    "CD8_T": dict(d=(6.0, 0.4), aspect=(1.0, 1.2), irr=0.04, lobes=0.0, exp=2.0),
    "other_T": dict(d=(6.0, 0.4), aspect=(1.0, 1.2), irr=0.04, lobes=0.0, exp=2.0),
    "neutrophil": dict(d=(7.5, 0.5), aspect=(1.0, 1.3), irr=0.04, lobes=0.16, exp=2.5),
    "other": dict(d=(7.5, 0.7), aspect=(1.1, 2.0), irr=0.06, lobes=0.0, exp=2.5),
}

# Marker levels (expected photon counts at the brightest compartment) per
# phenotype; unlisted = 0. Per-cell variation is log-normal.
_LEVELS = {
    "DAPI": dict(tumour=1900, SPP1_macrophage=1500, CAF=1600, CD8_T=1700, other_T=1700,
                 neutrophil=1500, other=1600),
    "NaKATPase": dict(tumour=700, SPP1_macrophage=500, CAF=450, CD8_T=550, other_T=550,
                      neutrophil=450, other=500),
    "HepPar1": dict(tumour=1200),
    "CD68": dict(SPP1_macrophage=1100),
    "SPP1": dict(SPP1_macrophage=1000),
    "aSMA": dict(CAF=1000),
    "FAP": dict(CAF=900),
    "CD3": dict(CD8_T=1100, other_T=1100),
    "CD8": dict(CD8_T=1000),
    "MPO": dict(neutrophil=1200),
    "CitH3": dict(neutrophil=250),
    "COL1": dict(),
}
_LOG_SD = 0.4
# compartment weights per channel: (nucleus, cytoplasm, membrane)
_COMPARTMENTS = {
    "DAPI": (1.0, 0.0, 0.0), "NaKATPase": (0.0, 0.1, 1.0), "HepPar1": (0.15, 1.0, 0.25),
    "CD68": (0.1, 1.0, 0.7), "SPP1": (0.1, 1.0, 0.4), "aSMA": (0.1, 1.0, 0.5),
    "FAP": (0.05, 0.5, 1.0), "CD3": (0.15, 0.5, 1.0), "CD8": (0.15, 0.5, 1.0),
    "MPO": (0.2, 1.0, 0.5), "CitH3": (1.0, 0.1, 0.0), "COL1": (0.0, 0.0, 0.0),
}
_GRANULARITY = 0.25           # relative SD of cytoplasm/membrane texture
_CHROMATIN = 0.12             # relative SD of nuclear texture
_NET_LEVEL = {"CitH3": 900.0, "MPO": 220.0}     # photons in NET pixels
_COL1_LEVEL = {"COL1": 900.0}
# tissue autofluorescence (photons) per channel inside tissue, and outside
_AF_TISSUE = np.array([40, 45, 60, 35, 35, 40, 35, 30, 30, 35, 40, 55], np.float32)
_AF_OUTSIDE = 6.0
_CROSSTALK_NEXT = 0.04        # fraction of channel c seen in channel c+1
_CROSSTALK_PREV = 0.02        # fraction of channel c seen in channel c-1
_PSF_SIGMA_UM = 0.4
_GAIN_DN_PER_PHOTON = 0.12    # camera gain (DN per photon): small DN noise keeps files small
_READ_NOISE_DN = 0.7

_TILE = 1024                  # render tile (px)
_MARGIN_PX = 8                # blur + membrane context


# ---------------------------------------------------------------------------
# result container
@dataclass
class SyntheticTissue:
    """A synthetic multiplex image with its ground truth.

    Attributes
    ----------
    image : numpy.ndarray or None
        ``(C, Y, X)`` uint16 image (None when loaded with ``load_image=False``).
    channel_names : list of str
    pixel_size_um : float
    nuclei, cells : numpy.ndarray
        ``(Y, X)`` int32 labels; a cell's nucleus and whole cell share the id.
    truth : pandas.DataFrame
        One row per cell: ``cell_id, x_um, y_um, phenotype, nest_id`` (0 =
        stroma), ``shielded, shield_coverage`` (tumour cells; NaN for others),
        ``true_signed_dist_um`` (negative inside nests), plus ``area_um2`` and
        ``nucleus_area_um2``. ``x_um, y_um`` are the nucleus centroid (pixel
        (row r, col c) centre = (c·px, r·px)).
    nests : list of shapely.Polygon
        Nest outlines in µm; nest_id = index + 1.
    tissue : shapely.Polygon
        Tissue region in µm.
    net_mask, col1_mask : numpy.ndarray
        Planted NET and collagen-I pixel masks (bool).
    planted : dict
        Parameters, seed and realised structure (per-nest barrier arcs and
        coverage, shield fractions, T-cell densities per compartment).
    panel_toml : str
        Panel file whose rules recover the true phenotypes.
    """

    image: Optional[np.ndarray]
    channel_names: list
    pixel_size_um: float
    nuclei: np.ndarray
    cells: np.ndarray
    truth: pd.DataFrame
    nests: list
    tissue: Any
    net_mask: np.ndarray
    col1_mask: np.ndarray
    planted: dict
    panel_toml: str = ""

    def barrier_arcs(self) -> list:
        """Planted barrier-covered arcs per nest (list of shapely LineStrings in
        µm, one list per nest in nest order).

        Examples
        --------
        >>> t = make_tissue((512, 512), n_nests=1, nest_radius_um=(40, 50), barrier_coverage=1.0)
        >>> arcs = t.barrier_arcs()[0]
        >>> round(sum(a.length for a in arcs) / t.nests[0].exterior.length, 6)
        1.0
        """
        out = []
        for nest, info in zip(self.nests, self.planted.get("nests", [])):
            arcs = []
            for s0, s1 in info["covered_intervals_um"]:
                g = _arc_geometry(nest, s0, s1)
                arcs.extend(getattr(g, "geoms", [g]))
            out.append(arcs)
        return out

    def write(self, out_dir: str | os.PathLike, *, image_name: str = "image.ome.tif",
              panel_name: str = "panel.toml", truth_dir: str = ".",
              pyramid: bool = True) -> Path:
        """Write image, panel and ground truth into ``out_dir``.

        Files: ``image_name`` (OME-TIFF with channel names and pixel size),
        ``panel_name`` and, inside ``truth_dir``: ``truth_cells.csv``,
        ``truth_nuclei.tif``, ``truth_cells.tif`` (uint32 labels),
        ``net_mask.tif``, ``col1_mask.tif`` (uint8 0/1), ``truth_nests.geojson``
        (QuPath-style annotations in pixel coordinates) and ``planted.json``.
        All TIFFs are zlib-compressed; every file is written atomically.

        Returns the truth folder.
        """
        from tibspace.io import atomic_path
        from tibspace.io import write_ome_tiff

        out_dir = Path(out_dir)
        tdir = out_dir / truth_dir
        tdir.mkdir(parents=True, exist_ok=True)
        if self.image is not None:
            levels = None if pyramid else 1
            write_ome_tiff(out_dir / image_name, self.image, list(self.channel_names),
                           self.pixel_size_um, pyramid_levels=levels)
        with atomic_path(out_dir / panel_name) as tmp:
            tmp.write_text(self.panel_toml)
        with atomic_path(tdir / "truth_cells.csv") as tmp:
            self.truth.to_csv(tmp, index=False, float_format="%.4f")
        for name, arr in (("truth_nuclei.tif", self.nuclei.astype(np.uint32)),
                          ("truth_cells.tif", self.cells.astype(np.uint32)),
                          ("net_mask.tif", self.net_mask.astype(np.uint8)),
                          ("col1_mask.tif", self.col1_mask.astype(np.uint8))):
            _write_plain_tiff(tdir / name, arr, self.pixel_size_um)
        with atomic_path(tdir / "truth_nests.geojson") as tmp:
            tmp.write_text(json.dumps(_nests_geojson(self), indent=1))
        with atomic_path(tdir / "planted.json") as tmp:
            tmp.write_text(json.dumps(self.planted, indent=1, default=_json_default))
        return tdir


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _write_plain_tiff(path: Path, arr: np.ndarray, pixel_size_um: float) -> None:
    import tifffile

    from tibspace.io import atomic_path

    res = 1e4 / pixel_size_um  # pixels per cm
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, compression="zlib", tile=(512, 512) if min(arr.shape) >= 512
                         else None, resolution=(res, res), resolutionunit="CENTIMETER",
                         metadata=None)


def _nests_geojson(t: SyntheticTissue) -> dict:
    """QuPath-style GeoJSON: coordinates in pixels, pixel (r, c) spanning
    [c, c+1) × [r, r+1) (QuPath's convention), so x_px = x_um / px + 0.5."""
    px = t.pixel_size_um

    def to_px(g):
        return um_to_qupath_px(g, px)

    feats = [{"type": "Feature", "geometry": mapping(to_px(t.tissue)),
              "properties": {"objectType": "annotation", "name": "tissue",
                             "classification": {"name": "Tissue", "color": [200, 200, 200]}}}]
    nest_info = t.planted.get("nests", [])
    for i, nest in enumerate(t.nests):
        info = nest_info[i] if i < len(nest_info) else {}
        feats.append({"type": "Feature", "geometry": mapping(to_px(nest)),
                      "properties": {"objectType": "annotation", "name": f"nest {i + 1}",
                                     "classification": {"name": "Tumor", "color": [200, 0, 0]},
                                     "measurements": {
                                         "nest_id": i + 1, "area_um2": float(nest.area),
                                         "perimeter_um": float(nest.exterior.length),
                                         "barrier_coverage_planted": float(
                                             info.get("barrier_coverage_realised", np.nan))}}})
        for j, (s0, s1) in enumerate(info.get("covered_intervals_um", [])):
            arc = _arc_geometry(nest, s0, s1)
            feats.append({"type": "Feature", "geometry": mapping(to_px(arc)),
                          "properties": {"objectType": "annotation",
                                         "name": f"nest {i + 1} barrier arc {j + 1}",
                                         "classification": {"name": "Barrier",
                                                            "color": [0, 160, 0]},
                                         "measurements": {"nest_id": i + 1,
                                                          "start_um": s0, "end_um": s1}}})
    return {"type": "FeatureCollection", "features": feats}


def load_truth(path: str | os.PathLike, *, load_image: bool = False) -> SyntheticTissue:
    """Read back what :meth:`SyntheticTissue.write` wrote.

    Parameters
    ----------
    path : str or Path
        The output folder, or its truth folder (the one holding
        ``truth_cells.csv``); ``path/truth`` is tried too.
    load_image : bool
        Also read the image (``*.ome.tif`` next to the truth folder).

    Examples
    --------
    >>> import tempfile
    >>> t = make_tissue((512, 512), n_nests=1, nest_radius_um=(40, 50))
    >>> d = tempfile.mkdtemp()
    >>> _ = t.write(d)
    >>> back = load_truth(d)
    >>> bool((back.nuclei == t.nuclei).all()), len(back.truth) == len(t.truth)
    (True, True)
    """
    import tifffile

    path = Path(path)
    cands = [path, path / "truth"]
    tdir = next((c for c in cands if (c / "truth_cells.csv").is_file()), None)
    if tdir is None:
        raise InputError(f"{path}: no truth_cells.csv here or in {path / 'truth'}; "
                         "pass the folder written by SyntheticTissue.write")
    planted = json.loads((tdir / "planted.json").read_text())
    truth = pd.read_csv(tdir / "truth_cells.csv", keep_default_na=False,
                        na_values={c: ["", "nan", "NaN"] for c in (
                            "shield_coverage", "shield_coverage_net", "shield_coverage_col1",
                            "true_signed_dist_um")})
    px = float(planted["parameters"]["pixel_size_um"])
    gj = json.loads((tdir / "truth_nests.geojson").read_text())
    nests, tissue = [], None
    for f in gj["features"]:
        props = f["properties"]
        geom = qupath_px_to_um(shapely_shape(f["geometry"]), px)
        cls = props.get("classification", {}).get("name")
        if cls == "Tumor":
            nests.append((props["measurements"]["nest_id"], geom))
        elif cls == "Tissue":
            tissue = geom
    nests = [g for _, g in sorted(nests, key=lambda t: t[0])]
    image, names = None, list(planted["channel_names"])
    if load_image:
        from tibspace.io import open_image

        root = tdir if list(tdir.glob("*.ome.tif")) else tdir.parent
        files = sorted(root.glob("*.ome.tif"))
        if not files:
            raise InputError(f"{root}: no *.ome.tif image found; write it or use load_image=False")
        with open_image(files[0]) as img:
            image = np.asarray(img.data.compute())
            names = list(img.channel_names)
    panel = ""
    for p in list(tdir.glob("*.toml")) + list(tdir.parent.glob("*.toml")):
        panel = p.read_text()
        break
    return SyntheticTissue(
        image=image, channel_names=names, pixel_size_um=px,
        nuclei=tifffile.imread(tdir / "truth_nuclei.tif").astype(np.int32),
        cells=tifffile.imread(tdir / "truth_cells.tif").astype(np.int32),
        truth=truth, nests=nests, tissue=tissue,
        net_mask=tifffile.imread(tdir / "net_mask.tif").astype(bool),
        col1_mask=tifffile.imread(tdir / "col1_mask.tif").astype(bool),
        planted=planted, panel_toml=panel)


# ---------------------------------------------------------------------------
# numba kernels
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, inline="always")
def _splitmix(z):
    z = z + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _hash64(seed, c, y, x):
    """SplitMix64 of a unique counter for (c, y, x): 64 random bits per pixel."""
    ctr = (np.uint64(c) << np.uint64(56)) | (np.uint64(y) << np.uint64(28)) | np.uint64(x)
    return _splitmix(np.uint64(seed) + ctr * _GOLD)


@numba.njit(cache=True, inline="always")
def _lane(z, k, table):
    """k-th 16-bit lane of z mapped through the normal quantile table."""
    return table[(z >> np.uint64(16 * k)) & np.uint64(0xFFFF)]


def _normal_table() -> np.ndarray:
    """Standard normal quantiles at (k + 0.5) / 65536: a 16-bit uniform → N(0, 1)."""
    from scipy.special import ndtri

    return ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


_NORMAL_TABLE = _normal_table()


@numba.njit(cache=True, nogil=True)
def _rasterise(cy, cx, a, b, ct, st, hc, hs, exp_px, ids, y0, x0, key, lab, qn):
    """Z-buffer rasterisation of irregular elliptic nuclei and their cells.

    For every pixel the owner is the cell with the smallest signed distance
    ``key`` (px) beyond its nucleus outline (negative inside the nucleus),
    among cells whose expansion ``exp_px`` reaches the pixel: overlapping
    nuclei split along equal-distance curves, cytoplasm is Voronoi-limited.
    ``qn`` receives the owner's normalised nuclear radius (<1 inside).
    Harmonics k = 2, 3, ... with amplitudes (hc, hs) perturb the outline.
    """
    H, W = key.shape
    n = cy.shape[0]
    K = hc.shape[1]
    for i in range(n):
        amp = 0.0
        for k in range(K):
            amp += abs(hc[i, k]) + abs(hs[i, k])
        R = max(a[i], b[i]) * (1.0 + amp) + exp_px[i] + 1.0
        ylo = max(int(math.floor(cy[i] - R)), y0)
        yhi = min(int(math.ceil(cy[i] + R)), y0 + H - 1)
        xlo = max(int(math.floor(cx[i] - R)), x0)
        xhi = min(int(math.ceil(cx[i] + R)), x0 + W - 1)
        seff0 = math.sqrt(a[i] * b[i])
        for y in range(ylo, yhi + 1):
            dy = y - cy[i]
            for x in range(xlo, xhi + 1):
                dx = x - cx[i]
                u = (dx * ct[i] + dy * st[i]) / a[i]
                v = (-dx * st[i] + dy * ct[i]) / b[i]
                rho = math.sqrt(u * u + v * v)
                rb = 1.0
                if rho > 1e-9:
                    c1 = u / rho
                    s1 = v / rho
                    ck = c1 * c1 - s1 * s1  # cos 2θ
                    sk = 2.0 * c1 * s1      # sin 2θ
                    for k in range(K):
                        rb += hc[i, k] * ck + hs[i, k] * sk
                        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
                q = rho / rb
                kk = (q - 1.0) * seff0 * rb
                if kk > exp_px[i]:
                    continue
                yy = y - y0
                xx = x - x0
                if kk < key[yy, xx]:
                    key[yy, xx] = kk
                    lab[yy, xx] = ids[i]
                    qn[yy, xx] = q


@numba.njit(cache=True, nogil=True)
def _ring_pass(cells, ids, y0s, y1s, x0s, x1s, dy_off, dx_off, paint, mode, out_mask,
               out_n, out_cov):
    """Ring of pixels outside each cell within the disk offsets (dy_off, dx_off).

    mode 0: count ring pixels (out_n) and those where ``paint`` is True (out_cov).
    mode 1: set ``out_mask`` on ring pixels where ``paint`` is True.
    mode 2: set ``out_mask`` on all ring pixels.
    The ring is the disk dilation of the cell minus the cell; it is built from
    the cell's boundary pixels (the nearest cell pixel to any outside pixel is
    a boundary pixel), each ring pixel counted once.
    """
    H, W = cells.shape
    nd = dy_off.shape[0]
    for j in range(ids.shape[0]):
        cid = ids[j]
        ya, yb, xa, xb = y0s[j], y1s[j], x0s[j], x1s[j]
        hh = yb - ya
        ww = xb - xa
        seen = np.zeros((hh, ww), np.bool_)
        n = 0
        cov = 0
        for y in range(ya, yb):
            for x in range(xa, xb):
                if cells[y, x] != cid:
                    continue
                border = False
                if y == 0 or cells[y - 1, x] != cid:
                    border = True
                elif y == H - 1 or cells[y + 1, x] != cid:
                    border = True
                elif x == 0 or cells[y, x - 1] != cid:
                    border = True
                elif x == W - 1 or cells[y, x + 1] != cid:
                    border = True
                if not border:
                    continue
                for o in range(nd):
                    qy = y + dy_off[o]
                    qx = x + dx_off[o]
                    if qy < 0 or qx < 0 or qy >= H or qx >= W:
                        continue
                    if qy < ya or qy >= yb or qx < xa or qx >= xb:
                        continue
                    if cells[qy, qx] == cid or seen[qy - ya, qx - xa]:
                        continue
                    seen[qy - ya, qx - xa] = True
                    n += 1
                    if mode == 0:
                        if paint[qy, qx]:
                            cov += 1
                    elif mode == 1:
                        if paint[qy, qx]:
                            out_mask[qy, qx] = True
                    else:
                        out_mask[qy, qx] = True
        out_n[j] = n
        out_cov[j] = cov


@numba.njit(cache=True, nogil=True)
def _ring_dist(cells, ids, y0s, y1s, x0s, x1s, dy_off, dx_off, d2_off, dmap):
    """dmap[q] = min over the given cells not containing q of the squared
    disk-offset distance (px²) from the cell's boundary to q (ring only)."""
    H, W = cells.shape
    nd = dy_off.shape[0]
    for j in range(ids.shape[0]):
        cid = ids[j]
        ya, yb, xa, xb = y0s[j], y1s[j], x0s[j], x1s[j]
        for y in range(ya, yb):
            for x in range(xa, xb):
                if cells[y, x] != cid:
                    continue
                if not ((y == 0 or cells[y - 1, x] != cid) or (y == H - 1 or cells[y + 1, x] != cid)
                        or (x == 0 or cells[y, x - 1] != cid)
                        or (x == W - 1 or cells[y, x + 1] != cid)):
                    continue
                for o in range(nd):
                    qy = y + dy_off[o]
                    qx = x + dx_off[o]
                    if qy < 0 or qx < 0 or qy >= H or qx >= W:
                        continue
                    if cells[qy, qx] == cid:
                        continue
                    if d2_off[o] < dmap[qy, qx]:
                        dmap[qy, qx] = d2_off[o]


@numba.njit(cache=True, nogil=True)
def _compose(L, Ln, Q, net, col, tissue, gy0, gx0, seed, lev, wn, wc, wm, net_w, col_w,
             af_in, af_out, afgrid, afstep, table, chromatin, granularity, out):
    """Noise-free expected photon counts of every channel for one tile."""
    C, H, W = out.shape
    gh, gw = afgrid.shape
    for y in range(H):
        for x in range(W):
            gy = gy0 + y
            gx = gx0 + x
            # smooth autofluorescence field: bilinear on a coarse grid
            fy = gy / afstep
            fx = gx / afstep
            iy = min(int(fy), gh - 2)
            ix = min(int(fx), gw - 2)
            ty = fy - iy
            tx = fx - ix
            af = ((1 - ty) * ((1 - tx) * afgrid[iy, ix] + tx * afgrid[iy, ix + 1])
                  + ty * ((1 - tx) * afgrid[iy + 1, ix] + tx * afgrid[iy + 1, ix + 1]))
            l = L[y, x]
            zz = _hash64(seed, 200, gy, gx)
            nucv = 0.0
            cyto = 0.0
            mem = 0.0
            if l > 0:
                if Ln[y, x] > 0:
                    q = min(Q[y, x], 1.0)
                    nucv = (0.45 + 0.55 * math.sqrt(1.0 - q * q)) * (
                        1.0 + chromatin * _lane(zz, 0, table))
                else:
                    cyto = 1.0
                border = False
                if y > 0 and L[y - 1, x] != l:
                    border = True
                elif y < H - 1 and L[y + 1, x] != l:
                    border = True
                elif x > 0 and L[y, x - 1] != l:
                    border = True
                elif x < W - 1 and L[y, x + 1] != l:
                    border = True
                if border:
                    mem = 1.0
                gran = 1.0 + granularity * _lane(zz, 1, table)
                if gran < 0.2:
                    gran = 0.2
                cyto *= gran
                mem *= gran
            fib = 0.0
            if net[y, x] or col[y, x]:
                fib = 1.0 + 0.3 * _lane(zz, 2, table)
                if fib < 0.2:
                    fib = 0.2
            isn = 1.0 if net[y, x] else 0.0
            isc = 1.0 if col[y, x] else 0.0
            tis = tissue[y, x]
            for c in range(C):
                v = af_in[c] * af if tis else af_out
                if l > 0:
                    v += lev[l, c] * (wn[c] * nucv + wc[c] * cyto + wm[c] * mem)
                v += fib * (net_w[c] * isn + col_w[c] * isc)
                out[c, y, x] = v


@numba.njit(cache=True, nogil=True)
def _mix_blur_noise(buf, fwd, bwd, taps, gain, read_sd, noise, seed, gy0, gx0, cy0, cx0, table,
                    out):
    """Crosstalk between neighbouring channels, Gaussian PSF, shot + read noise.

    ``buf`` (C, H, W) holds expected photons for the tile with a margin of at
    least ``len(taps) // 2`` pixels on every side; ``out`` (C, h, w) receives
    uint16 DN for the core starting at (cy0, cx0) in ``buf``. Noise:
    DN = gain·λ + sqrt(gain²·λ + read²)·z (normal approximation of Poisson
    shot noise plus Gaussian read noise); one 64-bit hash of (seed, y, x)
    gives the z of four channels.
    """
    C, H, W = buf.shape
    _, h, w = out.shape
    nt = taps.shape[0]
    r = nt // 2
    mixed = np.empty(W, np.float32)
    rowb = np.empty((h + 2 * r, w), np.float32)
    lam = np.empty((C, h, w), np.float32)
    acc = np.empty(w, np.float32)
    for c in range(C):
        a = np.float32(fwd) if c > 0 else np.float32(0.0)
        b = np.float32(bwd) if c < C - 1 else np.float32(0.0)
        cm = max(c - 1, 0)
        cp = min(c + 1, C - 1)
        for yy in range(h + 2 * r):
            y = cy0 - r + yy
            for x in range(W):
                mixed[x] = buf[c, y, x] + a * buf[cm, y, x] + b * buf[cp, y, x]
            for x in range(w):
                rowb[yy, x] = 0.0
            for t in range(nt):
                tv = taps[t]
                off = cx0 - r + t
                for x in range(w):
                    rowb[yy, x] += tv * mixed[off + x]
        for y in range(h):
            for x in range(w):
                acc[x] = 0.0
            for t in range(nt):
                tv = taps[t]
                for x in range(w):
                    acc[x] += tv * rowb[y + t, x]
            for x in range(w):
                lam[c, y, x] = acc[x] * gain
    rd2 = read_sd * read_sd
    for g in range((C + 3) // 4):
        for y in range(h):
            for x in range(w):
                z = _hash64(seed, g, gy0 + y, gx0 + x)
                for k in range(4):
                    c = 4 * g + k
                    if c >= C:
                        break
                    lm = lam[c, y, x]
                    v = lm + math.sqrt(gain * lm + rd2) * noise * _lane(z, k, table)
                    v = math.floor(v + 0.5)
                    if v < 0.0:
                        v = 0.0
                    elif v > 65535.0:
                        v = 65535.0
                    out[c, y, x] = np.uint16(v)


# ---------------------------------------------------------------------------
# geometry helpers (µm)
def _radial_blob(cx: float, cy: float, radius: float, rng: np.random.Generator,
                 n_vertices: int = 256) -> Polygon:
    """Irregular nest: r(θ) = R (1 + Σ_k a_k cos(kθ + φ_k)), k = 2..6."""
    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += rng.uniform(0, 0.16 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.6, None)
    return Polygon(np.c_[cx + r * np.cos(theta), cy + r * np.sin(theta)])


def _tissue_polygon(w_um: float, h_um: float, rng: np.random.Generator) -> Polygon:
    """Tissue covering the image except an empty wavy strip at one edge."""
    edge = int(rng.integers(0, 4))
    n = 64
    t = np.linspace(0, 1, n)
    depth_frac = 0.06 + 0.03 * np.sin(2 * np.pi * (t * rng.uniform(1, 2.5) + rng.uniform()))
    depth_frac += 0.015 * np.sin(2 * np.pi * (t * rng.uniform(4, 7) + rng.uniform()))
    m = 1.1  # µm inset so the tissue edge is inside the image (and off pixel centres)
    if edge in (0, 1):   # right / left edge empty
        xs = w_um * (1 - depth_frac) if edge == 0 else w_um * depth_frac
        ys = m + t * (h_um - 2 * m)
        wavy = np.c_[xs, ys]
        if edge == 0:
            pts = np.vstack([[m, m], wavy[0:1] * [1, 0] + [0, m], wavy, [wavy[-1, 0], h_um - m],
                             [m, h_um - m]])
        else:
            pts = np.vstack([[w_um - m, m], [wavy[0, 0], m], wavy, [wavy[-1, 0], h_um - m],
                             [w_um - m, h_um - m]])
    else:                # bottom / top edge empty
        ys = h_um * (1 - depth_frac) if edge == 2 else h_um * depth_frac
        xs = m + t * (w_um - 2 * m)
        wavy = np.c_[xs, ys]
        if edge == 2:
            pts = np.vstack([[m, m], [w_um - m, m], wavy[::-1]])
        else:
            pts = np.vstack([[m, h_um - m], [w_um - m, h_um - m], wavy[::-1]])
    poly = Polygon(pts).buffer(0)
    if poly.geom_type != "Polygon":
        poly = max(poly.geoms, key=lambda g: g.area)
    return poly


def _place_nests(tissue: Polygon, n: int, radius_range, rng, clearance_um: float) -> list:
    """Place n irregular nests one by one, each centre drawn uniformly from the
    region where it fits: ≥ 60 µm inside the tissue edge (room for its barrier
    band) and ≥ ``clearance_um`` from earlier nests."""
    lo, hi = radius_range
    edge = BARRIER_WIDTH_UM + 10
    for restart in range(25):   # greedy placement can paint itself into a corner
        nests = _try_place_nests(tissue, n, lo, hi, rng, clearance_um, edge)
        if len(nests) == n:
            return nests
    minx, miny, maxx, maxy = tissue.bounds
    raise InputError(
        f"make_tissue: could not place {n} non-overlapping nests of radius "
        f"{lo}-{hi} µm in a {maxx - minx:.0f} x {maxy - miny:.0f} µm tissue "
        f"(placed {len(nests)}; each needs {edge:.0f} µm to the tissue edge and "
        f"{clearance_um:.0f} µm to other nests); lower n_nests or nest_radius_um, "
        "or enlarge shape")


def _try_place_nests(tissue, n, lo, hi, rng, clearance_um, edge) -> list:
    nests: list = []
    for k in range(n):
        for attempt in range(60):
            # shrink towards the minimum radius when space runs out
            r = rng.uniform(lo, hi) if attempt < 20 else lo + (hi - lo) * rng.uniform() * (
                1 - attempt / 60)
            blob0 = _radial_blob(0.0, 0.0, r, rng)
            rmax = float(np.max(np.hypot(*np.asarray(blob0.exterior.coords).T)))
            free = tissue.buffer(-(rmax + edge))
            if nests:
                free = free.difference(shapely.union_all(nests).buffer(clearance_um + rmax))
            if free.is_empty or free.area < 1e-6:
                continue
            minx, miny, maxx, maxy = free.bounds
            for _ in range(200):
                cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
                if free.contains(shapely.Point(cx, cy)):
                    nests.append(shapely.affinity.translate(blob0, cx, cy))
                    break
            else:
                continue
            break
        else:
            return nests
    return nests


def _arc_geometry(nest: Polygon, s0: float, s1: float):
    ring = LineString(nest.exterior.coords)
    P = ring.length
    if s1 <= P:
        return substring(ring, s0, s1)
    return MultiLineString([substring(ring, s0, P), substring(ring, 0, s1 - P)])


def _covered_intervals(P: float, coverage: float, rng) -> list:
    """Covered arcs [s0, s1) (s1 may exceed P: wraps) with total length
    coverage·P, as 1–3 runs of ≥ 50 µm separated by gaps of ≥ 50 µm."""
    Lc = coverage * P
    if Lc <= 1e-9:
        return []
    if P - Lc <= 1e-9:
        return [(0.0, P)]
    kmax = int(max(1, min(3, min(Lc, P - Lc) // 60)))
    k = int(rng.integers(1, kmax + 1))

    def split(total, k):
        base = min(50.0, total / k)
        extra = rng.dirichlet(np.ones(k)) * (total - base * k)
        return base + extra

    runs, gaps = split(Lc, k), split(P - Lc, k)
    s = rng.uniform(0, P)
    out = []
    for run, gap in zip(runs, gaps):
        out.append((float(s % P), float(s % P + run)))
        s += run + gap
    return out


def _in_intervals(s: np.ndarray, intervals: list, P: float) -> np.ndarray:
    cov = np.zeros(s.shape, bool)
    for s0, s1 in intervals:
        cov |= (s >= s0) & (s < s1)
        if s1 > P:
            cov |= s < (s1 - P)
    return cov


def _boundary_frame(nest: Polygon, s: np.ndarray):
    """Points on the nest boundary at arc length s, and outward unit normals."""
    ring = LineString(nest.exterior.coords)
    P = ring.length
    p = shapely.get_coordinates(shapely.line_interpolate_point(ring, np.mod(s, P)))
    q = shapely.get_coordinates(shapely.line_interpolate_point(ring, np.mod(s + 0.5, P)))
    t = q - p
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    nrm = np.c_[t[:, 1], -t[:, 0]]
    probe = p + nrm * 0.2
    inside = shapely.contains_xy(nest, probe[:, 0], probe[:, 1])
    nrm[inside] *= -1
    return p, nrm


def _signed_distance(nests: list, x: np.ndarray, y: np.ndarray):
    """Signed distance (µm, negative inside) to the nearest nest boundary,
    the nearest nest index and the arc-length position on its boundary."""
    n = x.shape[0]
    best = np.full(n, np.inf)
    which = np.full(n, -1, np.int64)
    pts = shapely.points(x, y)
    inside_any = np.zeros(n, bool)
    inside_id = np.zeros(n, np.int64)
    for i, nest in enumerate(nests):
        d = shapely.distance(nest.exterior, pts)
        closer = d < best
        best[closer] = d[closer]
        which[closer] = i
        ins = shapely.contains_xy(nest, x, y)
        inside_any |= ins
        inside_id[ins] = i + 1
    sd = np.where(inside_any, -best, best)
    s = np.zeros(n)
    for i, nest in enumerate(nests):
        sel = which == i
        if sel.any():
            s[sel] = shapely.line_locate_point(LineString(nest.exterior.coords), pts[sel])
    return sd, which, s, inside_id


def _poisson_in(poly, density_per_mm2: float, rng) -> np.ndarray:
    """Homogeneous Poisson points (µm) in a polygon."""
    minx, miny, maxx, maxy = poly.bounds
    n = rng.poisson(density_per_mm2 * (maxx - minx) * (maxy - miny) / 1e6)
    x = rng.uniform(minx, maxx, n)
    y = rng.uniform(miny, maxy, n)
    keep = shapely.contains_xy(poly, x, y)
    return np.c_[x[keep], y[keep]]


def _hex_lattice(poly, spacing: float, jitter: float, rng) -> np.ndarray:
    minx, miny, maxx, maxy = poly.bounds
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    R = 0.5 * math.hypot(maxx - minx, maxy - miny) + spacing
    n = int(R / spacing) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    x = (i + 0.5 * (j % 2)) * spacing
    y = j * spacing * math.sqrt(3) / 2
    ang = rng.uniform(0, np.pi)
    ca, sa = math.cos(ang), math.sin(ang)
    px_ = cx + ca * x.ravel() - sa * y.ravel() + rng.uniform(0, spacing)
    py_ = cy + sa * x.ravel() + ca * y.ravel() + rng.uniform(0, spacing)
    px_ += rng.normal(0, jitter, px_.shape)
    py_ += rng.normal(0, jitter, py_.shape)
    keep = shapely.contains_xy(poly, px_, py_)
    return np.c_[px_[keep], py_[keep]]


def _hardcore_thin(xy: np.ndarray, radius: np.ndarray, factor: float = 0.88) -> np.ndarray:
    """Keep-mask: drop a point when a point earlier in the array (higher
    priority) lies closer than factor·(r_i + r_j)."""
    if len(xy) < 2:
        return np.ones(len(xy), bool)
    tree = cKDTree(xy)
    pairs = tree.query_pairs(factor * 2 * radius.max(), output_type="ndarray")
    if len(pairs) == 0:
        return np.ones(len(xy), bool)
    i, j = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(xy[i] - xy[j], axis=1)
    bad = d < factor * (radius[i] + radius[j])
    i, j = i[bad], j[bad]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keep = np.ones(len(xy), bool)
    # greedy in priority order: drop hi unless lo was itself dropped earlier
    order = np.lexsort((hi, lo))
    for a, b in zip(lo[order], hi[order]):
        if keep[a]:
            keep[b] = False
    return keep


# ---------------------------------------------------------------------------
def _check_args(shape, pixel_size_um, n_nests, nest_radius_um, barrier_coverage,
                shield_coverage, immune_phenotype, cell_density, t_density, noise):
    if len(shape) != 2 or min(shape) < 64:
        raise InputError(f"make_tissue: shape must be (rows, cols) with both >= 64, got {shape}")
    if not (pixel_size_um > 0):
        raise InputError(f"make_tissue: pixel_size_um must be > 0, got {pixel_size_um}")
    if n_nests < 0:
        raise InputError(f"make_tissue: n_nests must be >= 0, got {n_nests}")
    lo, hi = nest_radius_um
    if not (0 < lo <= hi):
        raise InputError(f"make_tissue: nest_radius_um must be (min, max) with 0 < min <= max, "
                         f"got {nest_radius_um}")
    covs = np.atleast_1d(np.asarray(barrier_coverage, float))
    if covs.size not in (1, n_nests) or np.any((covs < 0) | (covs > 1)):
        raise InputError(f"make_tissue: barrier_coverage must be a float in [0, 1] or a list of "
                         f"{n_nests} such floats (one per nest), got {barrier_coverage}")
    if not (0 <= shield_coverage <= 1):
        raise InputError(f"make_tissue: shield_coverage must be in [0, 1], got {shield_coverage}")
    if immune_phenotype not in IMMUNE_PHENOTYPES:
        raise InputError(f"make_tissue: immune_phenotype must be one of {IMMUNE_PHENOTYPES}, "
                         f"got {immune_phenotype!r}")
    if cell_density < 0 or (t_density is not None and t_density < 0) or noise < 0:
        raise InputError("make_tissue: cell_density, t_density_per_mm2 and noise must be >= 0")
    return np.broadcast_to(covs, (n_nests,)).astype(float) if n_nests else covs[:0]


def make_tissue(shape: Sequence[int] = (2048, 2048), pixel_size_um: float = 0.5, seed: int = 0,
                *, n_nests: int = 5, nest_radius_um: tuple = (60.0, 140.0),
                cell_density: float = 1500.0, barrier_coverage: float | Sequence[float] = 0.6,
                shield_coverage: float = 0.5, immune_phenotype: str = "excluded",
                barrier_excludes_t: bool = False, t_density_per_mm2: Optional[float] = None,
                shields_block_t: float = 0.0, noise: float = 1.0, progress=None) -> SyntheticTissue:
    """Render a synthetic HCC-like multiplex image with planted ground truth.

    Parameters
    ----------
    shape : (rows, cols)
        Image size in pixels.
    pixel_size_um : float
        µm per pixel; every size below is in µm and converted with it.
    seed : int
        Seed of every random step; same arguments ⇒ identical output.
    n_nests : int
        Number of tumour nests (irregular, non-overlapping blobs, ≥ 120 µm
        apart so their 50 µm barrier bands never touch).
    nest_radius_um : (min, max)
        Range of nest radii (µm).
    cell_density : float
        Target density of ``other`` stromal cells (cells/mm² of stroma); the
        hard-core thinning that keeps nuclei from overlapping removes ~15 %,
        the realised densities are in ``planted["densities_per_mm2"]``.
    barrier_coverage : float or list of float
        Fraction of each nest's perimeter whose 0–50 µm outer band is lined
        with SPP1 macrophages and CAFs (~1,300–1,600 cells/mm², alternating
        types so every 50 µm of covered arc holds both). The rest of the band
        holds only the stromal background of barrier cells (~120 cells/mm²).
    shield_coverage : float
        Fraction of tumour cells planted as shielded: NET (CitH3 + MPO) and/or
        collagen-I painted on ≥ 70 % of a 3 µm ring outside the cell outline;
        unshielded tumour cells keep < 20 % coverage. Shielded cells come in
        patches and favour the nest boundary.
    immune_phenotype : {"inflamed", "excluded", "desert"}
        T-cell (CD8_T : other_T = 3 : 1) placement. inflamed: same density
        inside nests as in stroma. excluded: dense in stroma and outer margin
        (1.5–2×), a few in the inner margin, almost none in the core
        (infiltration ratio < 0.2). desert: ``t_density_per_mm2`` (default
        10) everywhere.
    barrier_excludes_t : bool
        If True, T cells enter the inner margin only along uncovered arcs and
        accumulate in the outer band of covered arcs.
    t_density_per_mm2 : float, optional
        Stromal T-cell density; default 500 (inflamed, excluded), 10 (desert).
    shields_block_t : float
        Probability that a T cell touching a shielded tumour cell (centroids
        within :data:`SHIELD_BLOCK_REACH_UM`) is removed: 0 (default) plants
        no effect of shields on T-cell contact, 1 plants shields that prevent
        every contact. Drawn from its own random stream, so the rest of the
        tissue is identical for any value.
    noise : float
        Multiplier of shot and read noise (0 = noiseless, still quantised).
    progress : callable, optional
        ``progress(step, done, total)``.

    Returns
    -------
    SyntheticTissue

    Examples
    --------
    >>> t = make_tissue((512, 512), n_nests=1, nest_radius_um=(50, 60), seed=1)
    >>> t.image.shape, t.image.dtype.name, t.channel_names[0]
    ((12, 512, 512), 'uint16', 'DAPI')
    >>> bool((t.truth.phenotype == "tumour").any())
    True
    """
    shape = tuple(int(s) for s in shape)
    covs = _check_args(shape, pixel_size_um, n_nests, nest_radius_um, barrier_coverage,
                       shield_coverage, immune_phenotype, cell_density, t_density_per_mm2,
                       noise)
    if not (0 <= shields_block_t <= 1):
        raise InputError(f"make_tissue: shields_block_t must be in [0, 1], got {shields_block_t}")
    px = float(pixel_size_um)
    ss = np.random.SeedSequence(int(seed))
    rngs = [np.random.default_rng(s) for s in ss.spawn(8)]
    H, W = shape
    h_um, w_um = H * px, W * px
    total = 6
    report(progress, "synthetic tissue", 0, total)

    # 1. layout ---------------------------------------------------------------
    tissue = _tissue_polygon(w_um, h_um, rngs[0])
    nests = _place_nests(tissue, n_nests, nest_radius_um, rngs[0],
                         clearance_um=2 * BARRIER_WIDTH_UM + 20)
    intervals = [_covered_intervals(n.exterior.length, c, rngs[1]) for n, c in zip(nests, covs)]

    # 2. cells ----------------------------------------------------------------
    cells = _place_cells(tissue, nests, intervals, px, rngs[2], cell_density=cell_density,
                         shield_coverage=shield_coverage, immune_phenotype=immune_phenotype,
                         barrier_excludes_t=barrier_excludes_t, t_density=t_density_per_mm2)
    if shields_block_t > 0:
        cells = _block_contacts(cells, float(shields_block_t), rngs[6])
    report(progress, "synthetic tissue", 1, total)

    # 3. labels ---------------------------------------------------------------
    nuclei, cell_lab, qn, cells = _render_labels(cells, shape, px, rngs[3])
    report(progress, "synthetic tissue", 2, total)

    # 4. shields and stromal NET / collagen masks -------------------------------
    net_mask, col1_mask, cells = _plant_masks(cells, cell_lab, nests, tissue, shape, px,
                                              rngs[4])
    report(progress, "synthetic tissue", 3, total)

    # 5. image ----------------------------------------------------------------
    image = _render_image(cells, nuclei, cell_lab, qn, net_mask, col1_mask, tissue, shape, px,
                          int(ss.generate_state(1)[0]), rngs[5], noise)
    del qn
    report(progress, "synthetic tissue", 4, total)

    # 6. truth ----------------------------------------------------------------
    truth = _truth_table(cells, px, nests)
    planted = _planted_summary(truth, cells, nests, intervals, covs, tissue, px, dict(
        shape=list(shape), pixel_size_um=px, seed=int(seed), n_nests=n_nests,
        nest_radius_um=list(nest_radius_um), cell_density=cell_density,
        barrier_coverage=[float(c) for c in covs], shield_coverage=shield_coverage,
        immune_phenotype=immune_phenotype, barrier_excludes_t=bool(barrier_excludes_t),
        t_density_per_mm2=t_density_per_mm2, shields_block_t=float(shields_block_t), noise=noise))
    report(progress, "synthetic tissue", total, total)
    return SyntheticTissue(image=image, channel_names=list(CHANNELS), pixel_size_um=px,
                           nuclei=nuclei, cells=cell_lab, truth=truth, nests=nests,
                           tissue=tissue, net_mask=net_mask, col1_mask=col1_mask,
                           planted=planted, panel_toml=panel_toml())


# ---------------------------------------------------------------------------
def _t_density_fn(immune_phenotype: str, rho: float, link: bool):
    """Return f(d, covered) -> T density (cells/mm²) by signed distance d."""

    def f(d, covered):
        d = np.asarray(d, float)
        out = np.full(d.shape, rho)
        outer = (d > 0) & (d <= MARGIN_UM)
        inner = (d <= 0) & (d > -MARGIN_UM)
        core = d <= -MARGIN_UM
        if immune_phenotype == "excluded":
            out[outer] = 1.5 * rho
            out[inner] = 0.12 * rho
            out[core] = 0.01 * rho
            if link:
                # T cells pile up outside covered arcs and enter a shallow
                # (30 µm) strip of the inner margin only along uncovered arcs
                shallow = d > -30.0
                out[outer & covered] = 2.0 * rho
                out[outer & ~covered] = 1.2 * rho
                out[inner & covered] = 0.0
                out[inner & ~covered & shallow] = 0.45 * rho
                out[inner & ~covered & ~shallow] = 0.05 * rho
        else:
            if link:
                out[inner & covered] = 0.0
                out[outer & covered] = 1.5 * rho
        return out

    return f


def _place_cells(tissue, nests, intervals, px, rng, *, cell_density, shield_coverage,
                 immune_phenotype, barrier_excludes_t, t_density) -> pd.DataFrame:
    """All cells in µm with phenotype, nest, shield plan. Priority order of
    the hard-core thinning: tumour lattice > barrier lining > T > neutrophil >
    stromal background."""
    if t_density is None:
        t_density = 10.0 if immune_phenotype == "desert" else 500.0
    tfn = _t_density_fn(immune_phenotype, t_density, barrier_excludes_t)
    nest_union = shapely.union_all(nests) if nests else Polygon()
    stroma = tissue.difference(nest_union)
    parts: list[pd.DataFrame] = []

    # tumour lattice (12 µm hexagonal spacing, jittered) -> tumour, some T
    lattice_spacing = 14.0
    lattice_density = 2 / (math.sqrt(3) * lattice_spacing ** 2) * 1e6
    for i, nest in enumerate(nests):
        xy = _hex_lattice(nest.buffer(-4.0), lattice_spacing, 1.6, rng)
        parts.append(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "phenotype": "tumour",
                                   "prio": 0, "nest": i + 1}))
    tum = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"x": [], "y": [], "phenotype": [], "prio": [], "nest": []})

    # barrier lining in covered arcs: one cell per 12.5 µm of arc, alternating
    # SPP1_macrophage / CAF, depth 5..47 µm skewed to the boundary.
    bar = []
    for i, (nest, ivs) in enumerate(zip(nests, intervals)):
        for s0, s1 in ivs:
            n_slots = max(int(round((s1 - s0) / 12.5)), 1)
            step = (s1 - s0) / n_slots
            s = s0 + (np.arange(n_slots) + rng.uniform(0.15, 0.85, n_slots)) * step
            depth = 5.0 + 42.0 * rng.beta(1.3, 2.0, n_slots)
            p, nrm = _boundary_frame(nest, s)
            xy = p + nrm * depth[:, None]
            start = int(rng.integers(0, 2))
            ph = np.where((np.arange(n_slots) + start) % 2 == 0, "SPP1_macrophage", "CAF")
            tang = np.arctan2(nrm[:, 0], -nrm[:, 1])  # tangent direction for CAF orientation
            bar.append(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "phenotype": ph, "prio": 1,
                                     "nest": 0, "orient": tang}))
    bar = pd.concat(bar, ignore_index=True) if bar else None

    # T cells: stroma by thinning a Poisson process; inside nests by
    # converting lattice points.
    lam_max = max(2.0 * t_density, 1e-9)
    cand = _poisson_in(stroma, lam_max, rng)
    sd, which, s, _ = _signed_distance(nests, cand[:, 0], cand[:, 1]) if nests else (
        np.full(len(cand), np.inf), np.zeros(len(cand), int), np.zeros(len(cand)), None)
    covered = _covered_flags(nests, intervals, which, s)
    # T cells often sit in small clusters: a third of them get a touching
    # companion (6–7 µm away), so nuclei touch and segmentation is not trivial.
    p_pair = 0.35
    keep = rng.uniform(0, lam_max, len(cand)) < tfn(sd, covered) / (1 + p_pair)
    par = cand[keep]
    pair = rng.uniform(size=len(par)) < p_pair
    ang = rng.uniform(0, 2 * np.pi, pair.sum())
    dist = rng.uniform(5.8, 6.8, pair.sum())
    comp = par[pair] + np.c_[np.cos(ang), np.sin(ang)] * dist[:, None]
    comp = comp[shapely.contains_xy(stroma, comp[:, 0], comp[:, 1])]
    par = np.vstack([par, comp])
    tcells = pd.DataFrame({"x": par[:, 0], "y": par[:, 1], "prio": 2, "nest": 0})
    if len(tum):
        sd_t, which_t, s_t, _ = _signed_distance(nests, tum.x.to_numpy(), tum.y.to_numpy())
        cov_t = _covered_flags(nests, intervals, which_t, s_t)
        p_t = tfn(sd_t, cov_t) / lattice_density
        conv = rng.uniform(size=len(tum)) < p_t
        tum["sd"] = sd_t
        tin = tum[conv].copy()
        tum = tum[~conv].copy()
        tcells = pd.concat([tcells, tin[["x", "y", "nest"]].assign(prio=2)], ignore_index=True)
    tcells["phenotype"] = np.where(rng.uniform(size=len(tcells)) < 0.75, "CD8_T", "other_T")

    # shield plan: patchy smooth random field + boundary preference
    tum["shield_type"] = "none"
    if len(tum) and shield_coverage > 0:
        f1 = _smooth_field(tum.x.to_numpy(), tum.y.to_numpy(), 35.0, rng)
        f2 = _smooth_field(tum.x.to_numpy(), tum.y.to_numpy(), 35.0, rng)
        score = f1 + 1.0 * (tum.sd.to_numpy() > -14.0)
        n_sh = int(round(shield_coverage * len(tum)))
        order = np.argsort(-score, kind="stable")
        sel = np.zeros(len(tum), bool)
        sel[order[:n_sh]] = True
        typ = np.where(f2 > 0.35, "net", np.where(f2 < -0.35, "col1", "both"))
        tum.loc[sel, "shield_type"] = typ[sel]

    # neutrophils: near NET-shielded boundary tumour cells + stromal background
    neu = []
    if len(tum):
        nb = tum[(tum.shield_type.isin(["net", "both"])) & (tum.sd > -14.0)]
        pick = nb[rng.uniform(size=len(nb)) < 0.35]
        if len(pick):
            _, which_p, s_p, _ = _signed_distance(nests, pick.x.to_numpy(), pick.y.to_numpy())
            for i, nest in enumerate(nests):
                sel = which_p == i
                if not sel.any():
                    continue
                p, nrm = _boundary_frame(nest, s_p[sel])
                depth = rng.uniform(7.0, 20.0, sel.sum())
                xy = p + nrm * depth[:, None]
                neu.append(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "near_net": True}))
    bg = _poisson_in(stroma, 30.0, rng)
    neu.append(pd.DataFrame({"x": bg[:, 0], "y": bg[:, 1], "near_net": False}))
    neu = pd.concat(neu, ignore_index=True).assign(phenotype="neutrophil", prio=3, nest=0)

    # stromal background: other cells, sparse CAFs and SPP1 macrophages
    oth = _poisson_in(stroma, cell_density * 1.12, rng)
    caf = _poisson_in(stroma, 60.0, rng)
    mac = _poisson_in(stroma, 60.0, rng)
    if nests:
        # the 0–50 µm band off the planted arcs keeps only ~40 barrier cells/mm²
        caf, mac = (xy[(_signed_distance(nests, xy[:, 0], xy[:, 1])[0] > BARRIER_WIDTH_UM)
                       | (rng.uniform(size=len(xy)) < 1 / 3)] for xy in (caf, mac))
    strom = pd.concat([
        pd.DataFrame({"x": caf[:, 0], "y": caf[:, 1], "phenotype": "CAF"}),
        pd.DataFrame({"x": mac[:, 0], "y": mac[:, 1], "phenotype": "SPP1_macrophage"}),
        pd.DataFrame({"x": oth[:, 0], "y": oth[:, 1], "phenotype": "other"}),
    ], ignore_index=True).assign(prio=4, nest=0)

    allc = pd.concat([tum.drop(columns=["sd"], errors="ignore"), bar, tcells, neu, strom],
                     ignore_index=True)
    allc["shield_type"] = allc["shield_type"].fillna("none") if "shield_type" in allc else "none"
    allc["near_net"] = allc["near_net"].eq(True) if "near_net" in allc else False
    if "orient" not in allc:
        allc["orient"] = np.nan
    # keep only cells inside the tissue, away from the image edge by a little
    ins = shapely.contains_xy(tissue, allc.x.to_numpy(), allc.y.to_numpy())
    allc = allc[ins].reset_index(drop=True)
    allc = _morphology(allc, rng)
    allc = allc.sort_values("prio", kind="stable").reset_index(drop=True)
    keep = _hardcore_thin(allc[["x", "y"]].to_numpy(), allc.r_um.to_numpy())
    allc = allc[keep].reset_index(drop=True)
    return allc


def _block_contacts(cells: pd.DataFrame, p_block: float, rng) -> pd.DataFrame:
    """Remove each T cell touching a planned-shielded tumour cell with probability ``p_block``."""
    from scipy.spatial import cKDTree

    sh = (cells["phenotype"] == "tumour").to_numpy() & (cells["shield_type"] != "none").to_numpy()
    is_t = cells["phenotype"].isin(["CD8_T", "other_T"]).to_numpy()
    u = rng.uniform(size=len(cells))  # one draw per cell: independent of which cells are T
    if not sh.any() or not is_t.any():
        return cells
    xy = cells[["x", "y"]].to_numpy()
    d, _ = cKDTree(xy[sh]).query(xy[is_t], distance_upper_bound=SHIELD_BLOCK_REACH_UM)
    drop = np.zeros(len(cells), bool)
    drop[np.flatnonzero(is_t)[np.isfinite(d)]] = True
    drop &= u < p_block
    return cells[~drop].reset_index(drop=True)


def _covered_flags(nests, intervals, which, s):
    covered = np.zeros(len(s), bool)
    for i, nest in enumerate(nests):
        sel = which == i
        if sel.any() and intervals[i]:
            covered[sel] = _in_intervals(s[sel], intervals[i], nest.exterior.length)
    return covered


def _smooth_field(x, y, scale_um, rng, n_waves: int = 24):
    """Smooth zero-mean unit-variance random field (random Fourier features)."""
    k = rng.normal(0, 1.0 / scale_um, (n_waves, 2))
    ph = rng.uniform(0, 2 * np.pi, n_waves)
    v = np.cos(np.outer(x, k[:, 0]) + np.outer(y, k[:, 1]) + ph).sum(1)
    return v * math.sqrt(2.0 / n_waves)


def _morphology(cells: pd.DataFrame, rng) -> pd.DataFrame:
    n = len(cells)
    d = np.empty(n)
    aspect = np.empty(n)
    irr = np.empty(n)
    lobes = np.empty(n)
    exp = np.empty(n)
    for ph, m in _MORPH.items():
        sel = (cells.phenotype == ph).to_numpy()
        k = int(sel.sum())
        if not k:
            continue
        d[sel] = np.clip(rng.normal(m["d"][0], m["d"][1], k), m["d"][0] * 0.8, m["d"][0] * 1.2)
        aspect[sel] = rng.uniform(*m["aspect"], k)
        irr[sel] = m["irr"]
        lobes[sel] = m["lobes"]
        exp[sel] = m["exp"]
    orient = cells["orient"].to_numpy(float)
    orient = np.where(np.isnan(orient), rng.uniform(0, np.pi, n), orient)
    cells = cells.assign(d_um=d, aspect=aspect, irr=irr, lobes=lobes, exp_um=exp, orient=orient,
                         r_um=d / 2)
    return cells


# ---------------------------------------------------------------------------
def _cell_geometry(cells: pd.DataFrame, px: float, rng):
    """Per-cell rasterisation parameters in pixels."""
    n = len(cells)
    r = cells.r_um.to_numpy() / px
    asp = cells.aspect.to_numpy()
    a = r * np.sqrt(asp)
    b = r / np.sqrt(asp)
    th = cells.orient.to_numpy()
    K = 4  # harmonics k = 2..5
    amp = rng.uniform(0.3, 1.0, (n, K)) * cells.irr.to_numpy()[:, None]
    amp /= np.arange(1, K + 1)[None, :] ** 0.5
    lob = cells.lobes.to_numpy()
    amp[:, 1] += lob * rng.uniform(0.7, 1.0, n)   # k=3 lobes for neutrophils
    amp[:, 2] += 0.6 * lob * rng.uniform(0.5, 1.0, n)
    ph = rng.uniform(0, 2 * np.pi, (n, K))
    return dict(cy=cells.y.to_numpy() / px, cx=cells.x.to_numpy() / px, a=a, b=b,
                ct=np.cos(th), st=np.sin(th), hc=amp * np.cos(ph), hs=-amp * np.sin(ph),
                exp_px=cells.exp_um.to_numpy() / px)


def _tiles(H: int, W: int, tile: int):
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            yield y0, min(y0 + tile, H), x0, min(x0 + tile, W)


def _run_threads(fn, items):
    """Run fn over items on Dask's threaded scheduler (kernels release the GIL)."""
    import dask

    tasks = [dask.delayed(fn)(*it) for it in items]
    return dask.compute(*tasks, scheduler="threads")


def _render_labels(cells: pd.DataFrame, shape, px: float, rng):
    H, W = shape
    g = _cell_geometry(cells, px, rng)
    n = len(cells)
    ids = np.arange(1, n + 1, dtype=np.int32)
    amp = np.abs(g["hc"]).sum(1) + np.abs(g["hs"]).sum(1)
    R = np.maximum(g["a"], g["b"]) * (1 + amp) + g["exp_px"] + 2
    nuclei = np.zeros(shape, np.int32)
    lab = np.zeros(shape, np.int32)
    qn = np.zeros(shape, np.float32)

    def work(y0, y1, x0, x1):
        sel = ((g["cy"] + R >= y0) & (g["cy"] - R < y1) & (g["cx"] + R >= x0)
               & (g["cx"] - R < x1))
        key = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
        tl = np.zeros((y1 - y0, x1 - x0), np.int32)
        tq = np.zeros((y1 - y0, x1 - x0), np.float32)
        _rasterise(g["cy"][sel], g["cx"][sel], g["a"][sel], g["b"][sel], g["ct"][sel],
                   g["st"][sel], np.ascontiguousarray(g["hc"][sel]),
                   np.ascontiguousarray(g["hs"][sel]), g["exp_px"][sel], ids[sel], y0, x0, key,
                   tl, tq)
        lab[y0:y1, x0:x1] = tl
        nuclei[y0:y1, x0:x1] = np.where(key < 0, tl, 0)
        qn[y0:y1, x0:x1] = tq
        tn = nuclei[y0:y1, x0:x1]
        yy, xx = np.nonzero(tn)
        v = tn[yy, xx]
        return (np.bincount(v, minlength=n + 1), np.bincount(v, yy + y0, minlength=n + 1),
                np.bincount(v, xx + x0, minlength=n + 1),
                np.bincount(tl.ravel(), minlength=n + 1))

    res = _run_threads(work, list(_tiles(H, W, _TILE)))
    cnt = sum(r[0] for r in res)
    sy = sum(r[1] for r in res)
    sx = sum(r[2] for r in res)
    carea = sum(r[3] for r in res)
    # drop cells whose nucleus was (almost) swallowed by neighbours or the edge
    min_px = max(8, int(round(4.0 / px ** 2)))   # 4 µm²
    ok = cnt[1:] >= min_px
    if not ok.all():
        lut = np.zeros(n + 1, np.int32)
        lut[1:][ok] = np.arange(1, ok.sum() + 1, dtype=np.int32)
        nuclei = lut[nuclei]
        lab = lut[lab]
        cells = cells[ok].reset_index(drop=True)
        cnt, sy, sx, carea = (np.r_[0, v[1:][ok]] for v in (cnt, sy, sx, carea))
        for k in ("cy", "cx", "a", "b", "exp_px"):
            g[k] = g[k][ok]
        R = R[ok]
    cells = cells.assign(cell_id=np.arange(1, len(cells) + 1),
                         cy_px=sy[1:] / cnt[1:], cx_px=sx[1:] / cnt[1:],
                         nucleus_px=cnt[1:], cell_px=carea[1:],
                         seed_cy=g["cy"], seed_cx=g["cx"], R_px=R)
    return nuclei, lab, qn, cells


def _disk_offsets(r_px: float):
    rr = int(math.floor(r_px + 1e-9))
    dy, dx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    sel = (dy ** 2 + dx ** 2 <= r_px ** 2 + 1e-9) & ((dy != 0) | (dx != 0))
    return dy[sel].astype(np.int64), dx[sel].astype(np.int64)


def _ring_boxes(cells: pd.DataFrame, idx: np.ndarray, ring_px: float, shape):
    H, W = shape
    R = cells.R_px.to_numpy()[idx] + ring_px + 2
    cy = cells.seed_cy.to_numpy()[idx]
    cx = cells.seed_cx.to_numpy()[idx]
    y0 = np.clip(np.floor(cy - R), 0, H).astype(np.int64)
    y1 = np.clip(np.ceil(cy + R) + 1, 0, H).astype(np.int64)
    x0 = np.clip(np.floor(cx - R), 0, W).astype(np.int64)
    x1 = np.clip(np.ceil(cx + R) + 1, 0, W).astype(np.int64)
    return y0, y1, x0, x1


def _texture(shape, rng, fill: float, sigma_px, anisotropic: bool):
    """Thresholded smoothed noise with the given fill fraction (spots or fibres)."""
    z = rng.standard_normal(shape).astype(np.float32)
    if anisotropic:
        ang = rng.uniform(0, 180)
        z = ndi.gaussian_filter(z, (sigma_px, 4 * sigma_px))
        z = ndi.rotate(z, ang, reshape=False, order=1, mode="reflect")
    else:
        z = ndi.gaussian_filter(z, sigma_px)
    thr = np.quantile(z, 1 - fill)
    return z > thr


def _plant_masks(cells, cell_lab, nests, tissue, shape, px, rng):
    """Paint NET and collagen-I shields on tumour-cell rings, stromal NETs near
    neutrophils and stromal collagen fibres; measure true shield coverage."""
    H, W = shape
    net = np.zeros(shape, bool)
    col = np.zeros(shape, bool)
    ring_px = SHIELD_RING_UM / px
    dy, dx = _disk_offsets(ring_px)
    tum_idx = np.flatnonzero((cells.phenotype == "tumour").to_numpy())
    ids_all = cells.cell_id.to_numpy().astype(np.int32)
    stype = cells.shield_type.to_numpy().astype(object)
    s_px = max(0.35 / px, 0.6)

    def paint(idx, target, tex):
        if len(idx) == 0:
            return
        y0, y1, x0, x1 = _ring_boxes(cells, idx, ring_px, shape)
        dummy_n = np.zeros(len(idx), np.int64)
        mode = 1 if tex is not None else 2
        _ring_pass(cell_lab, ids_all[idx], y0, y1, x0, x1, dy, dx,
                   tex if tex is not None else np.zeros((1, 1), bool), mode, target, dummy_n,
                   dummy_n.copy())

    def coverage(idx, mask):
        y0, y1, x0, x1 = _ring_boxes(cells, idx, ring_px, shape)
        nring = np.zeros(len(idx), np.int64)
        ncov = np.zeros(len(idx), np.int64)
        _ring_pass(cell_lab, ids_all[idx], y0, y1, x0, x1, dy, dx, mask, 0,
                   np.zeros((1, 1), bool), nring, ncov)
        return np.where(nring > 0, ncov / np.maximum(nring, 1), np.nan)

    # textures only where needed: per nest bounding box
    net_tex = np.zeros(shape, bool)
    col_tex = np.zeros(shape, bool)
    for nest in nests:
        minx, miny, maxx, maxy = nest.buffer(15).bounds
        ya, yb = max(int(miny / px), 0), min(int(maxy / px) + 2, H)
        xa, xb = max(int(minx / px), 0), min(int(maxx / px) + 2, W)
        if yb <= ya or xb <= xa:
            continue
        net_tex[ya:yb, xa:xb] = _texture((yb - ya, xb - xa), rng, 0.86, s_px, False)
        col_tex[ya:yb, xa:xb] = _texture((yb - ya, xb - xa), rng, 0.88, s_px, True)

    # Neighbouring tumour cells' rings overlap near their contacts. A ring
    # pixel is painted for a shielded cell only where it is nearer to that
    # cell than to any unshielded tumour cell, so overlaps are split and the
    # planted classes stay apart (shielded ≥ 0.7, unshielded < 0.2).
    shielded = np.isin(stype, ["net", "col1", "both"]) & (cells.phenotype == "tumour").to_numpy()
    d2 = (dy.astype(np.int64) ** 2 + dx ** 2).astype(np.uint16)

    def dist_map(idx):
        dm = np.full(shape, np.iinfo(np.uint16).max, np.uint16)
        if len(idx):
            y0, y1, x0, x1 = _ring_boxes(cells, idx, ring_px, shape)
            _ring_dist(cell_lab, ids_all[idx], y0, y1, x0, x1, dy, dx, d2, dm)
        return dm

    def split_maps():
        d_u = dist_map(tum_idx[~shielded[tum_idx]])
        d_n = dist_map(np.flatnonzero(np.isin(stype, ["net", "both"]) & shielded))
        d_c = dist_map(np.flatnonzero(np.isin(stype, ["col1", "both"]) & shielded))
        return d_n < d_u, d_c < d_u

    tum_ids = ids_all[tum_idx]
    split_net, split_col = split_maps()
    net |= net_tex & split_net
    col |= col_tex & split_col
    # fix-ups for the few cells the split cannot satisfy (patch corners):
    # fill an under-covered shield's own share of its ring without texture
    # holes; promote an unshielded cell whose ring is mostly covered.
    for _ in range(8):
        cov = coverage(tum_idx, net | col)
        sh = shielded[tum_idx]
        low = tum_idx[sh & ~(cov >= 0.7)]
        high = tum_idx[~sh & (cov >= 0.2)]
        if len(low) == 0 and len(high) == 0:
            break
        for j in high:
            stype[j] = "col1" if rng.uniform() < 0.5 else "net"
            shielded[j] = True
        if len(high):
            split_net, split_col = split_maps()
        for j in np.r_[low, high].astype(np.int64):
            is_n = stype[j] in ("net", "both")
            paint(np.array([j]), net if is_n else col, split_net if is_n else split_col)
    del split_net, split_col
    cov_net = coverage(tum_idx, net)
    cov_col = coverage(tum_idx, col)

    # stromal NETs around some neutrophils away from tumour, and collagen fibres
    nest_zone = shapely.union_all([n.buffer(20.0) for n in nests]) if nests else Polygon()
    neu = cells[(cells.phenotype == "neutrophil") & ~cells.near_net]
    if len(neu):
        far = ~shapely.contains_xy(nest_zone, neu.x.to_numpy(), neu.y.to_numpy())
        neu = neu[far & (rng.uniform(size=len(neu)) < 0.4)]
        for _, c in neu.iterrows():
            rr = rng.uniform(4.0, 8.0) / px
            oy, ox = rng.normal(0, 3.0 / px, 2)
            cy, cx = c.cy_px + oy, c.cx_px + ox
            ya, yb = int(max(cy - rr - 1, 0)), int(min(cy + rr + 2, H))
            xa, xb = int(max(cx - rr - 1, 0)), int(min(cx + rr + 2, W))
            if yb <= ya or xb <= xa:
                continue
            yy, xx = np.mgrid[ya:yb, xa:xb]
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rr ** 2
            net[ya:yb, xa:xb] |= disk & _texture(disk.shape, rng, 0.5, s_px, False)
    _collagen_fibres(col, tissue, nest_zone, shape, px, rng)

    cells = cells.copy()
    cells["shield_type"] = stype
    cov = np.full(len(cells), np.nan)
    cov[tum_idx] = coverage(tum_idx, net | col)
    cells["shield_coverage"] = cov
    cells["shielded"] = np.isin(stype, ["net", "col1", "both"]) & (cells.phenotype == "tumour")
    cn = np.full(len(cells), np.nan)
    cc = np.full(len(cells), np.nan)
    cn[tum_idx] = cov_net
    cc[tum_idx] = cov_col
    cells["shield_coverage_net"] = cn
    cells["shield_coverage_col1"] = cc
    return net, col, cells


def _collagen_fibres(col, tissue, keepout, shape, px, rng, per_mm2: float = 90.0):
    """Smooth random-walk fibres (40–200 µm) in stroma, ≥ 20 µm from nests."""
    H, W = shape
    area = tissue.area / 1e6
    n = rng.poisson(per_mm2 * area)
    if n == 0:
        return
    start = _poisson_in(tissue, per_mm2 * 1.3, rng)[:n]
    n = len(start)
    steps = 160
    length = rng.uniform(40, 200, n)
    ang0 = rng.uniform(0, 2 * np.pi, n)
    dang = np.cumsum(rng.normal(0, 0.06, (n, steps)), axis=1)
    ang = ang0[:, None] + dang
    ds = (length / steps)[:, None]
    x = start[:, 0:1] + np.cumsum(ds * np.cos(ang), axis=1)
    y = start[:, 1:2] + np.cumsum(ds * np.sin(ang), axis=1)
    # resample densely (≤ 0.4 px apart)
    sub = int(max(1, math.ceil(length.max() / steps / (0.4 * px))))
    t = np.linspace(0, 1, sub, endpoint=False)
    xf = (x[:, :-1, None] + (x[:, 1:, None] - x[:, :-1, None]) * t).ravel()
    yf = (y[:, :-1, None] + (y[:, 1:, None] - y[:, :-1, None]) * t).ravel()
    ok = shapely.contains_xy(tissue, xf, yf) & ~shapely.contains_xy(keepout, xf, yf)
    r = np.rint(yf[ok] / px).astype(np.int64)
    c = np.rint(xf[ok] / px).astype(np.int64)
    w = max(1, int(round(0.6 / px)))   # ~1.2 µm wide
    for oy in range(-w + 1, w):
        for ox in range(-w + 1, w):
            rr, cc = r + oy, c + ox
            sel = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            col[rr[sel], cc[sel]] = True


# ---------------------------------------------------------------------------
def _levels(cells: pd.DataFrame, rng) -> np.ndarray:
    n = len(cells)
    lev = np.zeros((len(CHANNELS), n + 1), np.float32)
    ph = cells.phenotype.to_numpy()
    # CAF subtypes: 20 % aSMA only, 20 % FAP only, 60 % both
    caf_u = rng.uniform(size=n)
    for c, name in enumerate(CHANNELS):
        base = np.zeros(n)
        for p, v in _LEVELS[name].items():
            base[ph == p] = v
        if name == "aSMA":
            base[(ph == "CAF") & (caf_u < 0.2)] = 0
        if name == "FAP":
            base[(ph == "CAF") & (caf_u >= 0.2) & (caf_u < 0.4)] = 0
        sd = 0.3 if name in ("DAPI", "NaKATPase") else _LOG_SD
        lev[c, 1:] = base * np.exp(rng.normal(-sd ** 2 / 2, sd, n))
    return lev


def _polygon_mask(xy_px: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Boolean mask of pixels (rows y0..y1, cols x0..x1) whose centres lie
    inside the closed polygon ``xy_px`` (x, y in pixels): even–odd scanline
    fill, O(rows × edges + pixels) instead of a point-in-polygon test per pixel."""
    h, w = y1 - y0, x1 - x0
    ax, ay = xy_px[:-1, 0], xy_px[:-1, 1]
    bx, by = xy_px[1:, 0], xy_px[1:, 1]
    yc = np.arange(y0, y1, dtype=float)[:, None]
    crosses = ((ay <= yc) & (by > yc)) | ((by <= yc) & (ay > yc))
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = ax + (yc - ay) * (bx - ax) / (by - ay)
    rows, edges = np.nonzero(crosses)
    # first pixel centre at or right of the crossing toggles in/out
    col = np.clip(np.ceil(xi[rows, edges] - x0), 0, w).astype(np.int64)
    toggles = np.zeros((h, w + 1), np.int16)
    np.add.at(toggles, (rows, col), 1)
    return (np.cumsum(toggles[:, :w], axis=1) & 1).astype(bool)


def _render_image(cells, nuclei, cell_lab, qn, net, col, tissue, shape, px, seed, rng, noise):
    H, W = shape
    C = len(CHANNELS)
    lev = np.ascontiguousarray(_levels(cells, rng).T)
    wn = np.array([_COMPARTMENTS[c][0] for c in CHANNELS], np.float32)
    wc = np.array([_COMPARTMENTS[c][1] for c in CHANNELS], np.float32)
    wm = np.array([_COMPARTMENTS[c][2] for c in CHANNELS], np.float32)
    net_w = np.array([_NET_LEVEL.get(c, 0.0) for c in CHANNELS], np.float32)
    col_w = np.array([_COL1_LEVEL.get(c, 0.0) for c in CHANNELS], np.float32)
    afstep = max(int(round(40.0 / px)), 8)
    afgrid = (0.7 + 0.6 * rng.uniform(size=(H // afstep + 3, W // afstep + 3))).astype(
        np.float32)
    afgrid = ndi.gaussian_filter(afgrid, 1.0)
    sig = _PSF_SIGMA_UM / px
    r = max(1, int(math.ceil(2.5 * sig)))
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sig) ** 2).astype(np.float32)
    taps /= taps.sum()
    m = max(_MARGIN_PX, r + 2)
    image = np.empty((C, H, W), np.uint16)
    ext = shapely.get_coordinates(tissue.exterior) / px
    seed = int(seed) & 0x7FFFFFFFFFFFFFFF

    def work(y0, y1, x0, x1):
        ya, yb, xa, xb = max(y0 - m, 0), min(y1 + m, H), max(x0 - m, 0), min(x1 + m, W)
        # beyond the image edge, replicate the edge pixels (blur mode "nearest")
        pad = ((ya - (y0 - m), (y1 + m) - yb), (xa - (x0 - m), (x1 + m) - xb))

        def tile(a):
            t = a[ya:yb, xa:xb]
            return np.pad(t, pad, mode="edge") if any(p for pp in pad for p in pp) else \
                np.ascontiguousarray(t)

        tis = _polygon_mask(ext, ya, yb, xa, xb)
        if any(p for pp in pad for p in pp):
            tis = np.pad(tis, pad, mode="edge")
        buf = np.empty((C, y1 - y0 + 2 * m, x1 - x0 + 2 * m), np.float32)
        _compose(tile(cell_lab), tile(nuclei), tile(qn), tile(net), tile(col), tis,
                 y0 - m, x0 - m, seed, lev, wn, wc, wm, net_w, col_w, _AF_TISSUE,
                 np.float32(_AF_OUTSIDE), afgrid, float(afstep), _NORMAL_TABLE, _CHROMATIN,
                 _GRANULARITY, buf)
        out = np.empty((C, y1 - y0, x1 - x0), np.uint16)
        _mix_blur_noise(buf, _CROSSTALK_NEXT, _CROSSTALK_PREV, taps, _GAIN_DN_PER_PHOTON,
                        _READ_NOISE_DN, float(noise), seed, y0, x0, m, m, _NORMAL_TABLE, out)
        image[:, y0:y1, x0:x1] = out

    _run_threads(work, list(_tiles(H, W, _TILE)))
    return image


# ---------------------------------------------------------------------------
def _truth_table(cells: pd.DataFrame, px: float, nests: list) -> pd.DataFrame:
    x = cells.cx_px.to_numpy() * px
    y = cells.cy_px.to_numpy() * px
    if nests:
        sd, _, _, nest_id = _signed_distance(nests, x, y)
    else:
        sd, nest_id = np.full(len(x), np.inf), np.zeros(len(x), np.int64)
    return pd.DataFrame({
        "cell_id": cells.cell_id.to_numpy().astype(np.int64),
        "x_um": x,
        "y_um": y,
        "phenotype": cells.phenotype.to_numpy().astype(str),
        "nest_id": nest_id.astype(np.int64),
        "shielded": cells.shielded.to_numpy().astype(bool),
        "shield_coverage": cells.shield_coverage.to_numpy(),
        "shield_coverage_net": cells.shield_coverage_net.to_numpy(),
        "shield_coverage_col1": cells.shield_coverage_col1.to_numpy(),
        "shield_type": cells.shield_type.to_numpy().astype(str),
        "true_signed_dist_um": sd,
        "area_um2": cells.cell_px.to_numpy() * px * px,
        "nucleus_area_um2": cells.nucleus_px.to_numpy() * px * px,
    })


def _barrier_coverage_from_cells(nest: Polygon, intervals: list, truth: pd.DataFrame,
                                nest_index: int, *, segment_um: float = 50.0,
                                barrier_width_um: float = BARRIER_WIDTH_UM,
                                barrier_density: float = 400.0,
                                barrier=("SPP1_macrophage", "CAF")) -> dict:
    """Barrier coverage of one nest measured from cells (metrics.md rule) on
    segments aligned with the planted arcs: each planted run and gap is cut
    into ⌈len/segment_um⌉ equal segments, so every segment is wholly planted
    covered or uncovered. A segment is covered when its outer band holds
    barrier cells at ≥ ``barrier_density`` cells/mm² and ≥ 1 cell of each
    barrier type. Cells are assigned to the nearest boundary point of their
    nearest nest (``truth`` must carry ``_which`` and ``_s`` columns)."""
    ring = LineString(nest.exterior.coords)
    P = ring.length
    cuts = []
    if not intervals:
        bounds = [(0.0, P, False)]
    elif len(intervals) == 1 and intervals[0][1] - intervals[0][0] >= P - 1e-9:
        bounds = [(0.0, P, True)]
    else:
        iv = sorted(intervals)
        bounds = []
        for k, (s0, s1) in enumerate(iv):
            nxt = iv[(k + 1) % len(iv)][0] + (P if k + 1 == len(iv) else 0)
            bounds.append((s0, s1, True))
            bounds.append((s1, nxt, False))
    for s0, s1, cv in bounds:
        nseg = max(1, int(math.ceil((s1 - s0) / segment_um - 1e-9)))
        e = np.linspace(s0, s1, nseg + 1)
        cuts += [(a, b, cv) for a, b in zip(e[:-1], e[1:])]
    sel = (truth["_which"] == nest_index) & (truth.true_signed_dist_um > 0) & (
        truth.true_signed_dist_um <= barrier_width_um)
    sub = truth[sel]
    s = sub["_s"].to_numpy()
    ph = sub.phenotype.to_numpy()
    seg_cov, seg_len, planted = [], [], []
    for a, b, cv in cuts:
        ins = ((s >= a % P) & (s < b % P)) if (b % P) > (a % P) else ((s >= a % P) | (s < b % P))
        if b - a >= P - 1e-9:
            ins = np.ones(len(s), bool)
        sa = (a % P)
        seg = substring(ring, sa, min(sa + (b - a), P))
        # band area: polygon swept by offsetting the segment outwards
        area = seg.buffer(barrier_width_um, cap_style="flat").difference(nest).area
        dens = ins.sum() / max(area, 1e-9) * 1e6 if area > 0 else 0.0
        has = [(ph[ins] == t).any() for t in barrier]
        seg_cov.append(bool(dens >= barrier_density and all(has)))
        seg_len.append(b - a)
        planted.append(cv)
    seg_len = np.array(seg_len)
    seg_cov = np.array(seg_cov)
    return {"coverage": float((seg_len * seg_cov).sum() / P),
            "agreement": float((seg_len * (seg_cov == np.array(planted))).sum() / P),
            "n_segments": int(len(seg_len))}


def _planted_summary(truth, cells, nests, intervals, covs, tissue, px, params) -> dict:
    sd, which, s, _ = (_signed_distance(nests, truth.x_um.to_numpy(), truth.y_um.to_numpy())
                       if nests else (np.full(len(truth), np.inf), np.full(len(truth), -1),
                                      np.zeros(len(truth)), None))
    tmp = truth.assign(_which=which, _s=s)
    nest_info = []
    for i, nest in enumerate(nests):
        P = nest.exterior.length
        ivs = intervals[i]
        realised = sum(b - a for a, b in ivs) / P
        meas = _barrier_coverage_from_cells(nest, ivs, tmp, i)
        nest_info.append({
            "nest_id": i + 1, "area_um2": nest.area, "perimeter_um": P,
            "centroid_um": [nest.centroid.x, nest.centroid.y],
            "barrier_coverage_planted": float(covs[i]),
            "barrier_coverage_realised": float(realised),
            "barrier_coverage_from_cells": meas["coverage"],
            "barrier_segment_agreement": meas["agreement"],
            "covered_intervals_um": [[float(a), float(b)] for a, b in ivs],
            "n_tumour": int(((truth.nest_id == i + 1) & (truth.phenotype == "tumour")).sum()),
        })
    # densities per compartment (cells/mm² of tissue)
    comp = {"core": (-1e9, -MARGIN_UM), "inner_margin": (-MARGIN_UM, 0.0),
            "outer_margin": (0.0, MARGIN_UM), "stroma_200": (MARGIN_UM, 200.0)}
    dens = {}
    nest_union = shapely.union_all(nests) if nests else Polygon()
    for name, (d0, d1) in comp.items():
        if not nests:
            break
        outer = nest_union.buffer(d1) if d1 != 0 else nest_union
        inner = (nest_union.buffer(d0) if d0 != 0 else nest_union) if d0 > -1e8 else Polygon()
        area = outer.difference(inner).intersection(tissue).area
        sel = (sd > d0) & (sd <= d1)
        dens[name] = {ph: float(((truth.phenotype == ph) & sel).sum() / max(area, 1e-9) * 1e6)
                      for ph in PHENOTYPES}
        dens[name]["area_um2"] = float(area)
    t = dens
    ratio = None
    if nests and (t["outer_margin"]["area_um2"] + t["stroma_200"]["area_um2"]) > 0:
        def cnt(n):
            return t[n]["CD8_T"] * t[n]["area_um2"]
        inside = (cnt("core") + cnt("inner_margin")) / max(
            t["core"]["area_um2"] + t["inner_margin"]["area_um2"], 1e-9)
        outside = (cnt("outer_margin") + cnt("stroma_200")) / max(
            t["outer_margin"]["area_um2"] + t["stroma_200"]["area_um2"], 1e-9)
        ratio = float(inside / outside) if outside > 0 else None
    tum = truth[truth.phenotype == "tumour"]
    return {
        "generator": "tibspace.synthetic.make_tissue",
        "parameters": params,
        "seed": params["seed"],
        "channel_names": list(CHANNELS),
        "immune_phenotype": params["immune_phenotype"],
        "barrier_excludes_t": params["barrier_excludes_t"],
        "nests": nest_info,
        "barrier_coverage_realised": float(
            sum(n["barrier_coverage_realised"] * n["perimeter_um"] for n in nest_info)
            / max(sum(n["perimeter_um"] for n in nest_info), 1e-9)) if nest_info else None,
        "shield": {"target_fraction": params["shield_coverage"],
                   "realised_fraction": float(tum.shielded.mean()) if len(tum) else None,
                   "n_tumour": int(len(tum)), "n_shielded": int(tum.shielded.sum()),
                   "ring_um": SHIELD_RING_UM,
                   "min_coverage_shielded": float(tum.shield_coverage[tum.shielded].min())
                   if tum.shielded.any() else None,
                   "max_coverage_unshielded": float(tum.shield_coverage[~tum.shielded].max())
                   if (~tum.shielded).any() else None},
        "densities_per_mm2": dens,
        "infiltration_ratio_cd8": ratio,
        "n_cells": int(len(truth)),
        "phenotype_counts": {k: int(v) for k, v in truth.phenotype.value_counts().items()},
        "image": {"gain_dn_per_photon": _GAIN_DN_PER_PHOTON, "read_noise_dn": _READ_NOISE_DN,
                  "psf_sigma_um": _PSF_SIGMA_UM, "crosstalk_next": _CROSSTALK_NEXT,
                  "crosstalk_prev": _CROSSTALK_PREV},
    }


# ---------------------------------------------------------------------------
def panel_toml() -> str:
    """Panel file (docs/architecture.md format) whose rules recover the true
    phenotypes of :func:`make_tissue` images."""
    return """# tibspace panel for tibspace.synthetic images (HCC-like, 12 channels)
# The OME-TIFF carries the pixel size, so [image] is not needed.

[channels]
nuclear = ["DAPI"]
membrane = ["NaKATPase"]

[markers]
HepPar1 = { gate = "otsu" }
CD68 = { gate = "otsu" }
SPP1 = { gate = "otsu" }
aSMA = { gate = "otsu" }
FAP = { gate = "otsu" }
CD3 = { gate = "otsu" }
CD8 = { gate = "otsu" }
MPO = { gate = "otsu" }

[phenotypes]
tumour = "HepPar1+"
SPP1_macrophage = "CD68+ & SPP1+"
CAF = "(aSMA+ | FAP+) & not HepPar1+"
CD8_T = "CD3+ & CD8+"
other_T = "CD3+ & CD8-"
neutrophil = "MPO+"
default = "other"

[roles]
tumour = ["tumour"]
effector_t = ["CD8_T"]
t_cells = ["CD8_T", "other_T"]
barrier = ["SPP1_macrophage", "CAF"]
spp1_macrophage = ["SPP1_macrophage"]
caf = ["CAF"]
neutrophil = ["neutrophil"]

[masks]
net = { channels = ["CitH3"], require = ["MPO"], gate = "otsu", min_object_um2 = 5 }
col1 = { channels = ["COL1"], gate = "otsu", min_object_um2 = 5 }
"""


# ---------------------------------------------------------------------------
SAMPLE_PRESET = dict(shape=(1600, 1600), pixel_size_um=0.5, seed=7, n_nests=4,
                     nest_radius_um=(75.0, 105.0), barrier_coverage=[0.2, 0.5, 0.8, 1.0],
                     shield_coverage=0.5, immune_phenotype="excluded",
                     barrier_excludes_t=True, t_density_per_mm2=700.0)


def make_sample(out_dir: str | os.PathLike, progress=None) -> SyntheticTissue:
    """Regenerate the bundled sample (``sample_data``) into ``out_dir``."""
    t = make_tissue(**SAMPLE_PRESET, progress=progress)
    t.write(out_dir, image_name="hcc_sample.ome.tif", panel_name="hcc_sample_panel.toml",
            truth_dir="truth", pyramid=False)
    return t


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tibspace.synthetic",
                                 description="Write a synthetic HCC multiplex image + truth.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--preset", choices=["sample"], default=None,
                    help="'sample': the bundled sample_data")
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    ap.add_argument("--pixel-size-um", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-nests", type=int, default=5)
    ap.add_argument("--barrier-coverage", type=float, nargs="+", default=[0.6])
    ap.add_argument("--shield-coverage", type=float, default=0.5)
    ap.add_argument("--immune-phenotype", choices=IMMUNE_PHENOTYPES, default="excluded")
    ap.add_argument("--barrier-excludes-t", action="store_true")
    a = ap.parse_args(argv)
    if a.preset == "sample":
        make_sample(a.out)
        return 0
    cov = a.barrier_coverage[0] if len(a.barrier_coverage) == 1 else a.barrier_coverage
    t = make_tissue(tuple(a.shape), a.pixel_size_um, a.seed, n_nests=a.n_nests,
                    barrier_coverage=cov, shield_coverage=a.shield_coverage,
                    immune_phenotype=a.immune_phenotype,
                    barrier_excludes_t=a.barrier_excludes_t)
    t.write(a.out)
    return 0

