"""Channel rendering of synthetic tissue: marker levels, autofluorescence, optics, noise.

Expected photon counts per cell compartment (nucleus, cytoplasm, membrane)
and marker, tissue autofluorescence, NET / collagen-I stain, then crosstalk to
neighbouring channels, a Gaussian PSF, shot and read noise and a camera gain
to uint16 DN. Rendered per tile with a margin, so tiles join seamlessly.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi

from tibspace.synthetic import raster
from tibspace.synthetic.kernels import _NORMAL_TABLE, _compose, _mix_blur_noise
from tibspace.synthetic.spec import CHANNELS
from tibspace.synthetic.world import illumination, illumination_at, speckle_map, speckles

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
_MARGIN_PX = 8                # tile margin (px): blur + membrane context


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


def _render_image(cells, nuclei, cell_lab, qn, net, col, tissue, shape, px, seed, rng, noise,
                  world=None, world_rng=None):
    """The (C, H, W) uint16 image; with a non-default ``world`` also the
    realised illumination and speckles (``extras``), else ``extras = {}``."""
    H, W = shape
    C = len(CHANNELS)
    lev = np.ascontiguousarray(_levels(cells, rng).T)
    wn = np.array([_COMPARTMENTS[c][0] for c in CHANNELS], np.float32)
    wc = np.array([_COMPARTMENTS[c][1] for c in CHANNELS], np.float32)
    wm = np.array([_COMPARTMENTS[c][2] for c in CHANNELS], np.float32)
    net_w = np.array([_NET_LEVEL.get(c, 0.0) for c in CHANNELS], np.float32)
    col_w = np.array([_COL1_LEVEL.get(c, 0.0) for c in CHANNELS], np.float32)
    fwd = np.full(C, _CROSSTALK_NEXT, np.float32)
    bwd = np.full(C, _CROSSTALK_PREV, np.float32)
    af_in = _AF_TISSUE
    afstep = max(int(round(40.0 / px)), 8)
    afgrid = (0.7 + 0.6 * rng.uniform(size=(H // afstep + 3, W // afstep + 3))).astype(
        np.float32)
    afgrid = ndi.gaussian_filter(afgrid, 1.0)
    extras, illum, spk = {}, None, None
    if world is not None and not world.is_default():
        for name in world.absent_markers:   # no stain, no crosstalk into the channel
            c = CHANNELS.index(name)
            lev[:, c] = 0.0
            net_w[c] = col_w[c] = fwd[c] = bwd[c] = 0.0
        if world.autofluorescence != 1.0:
            af_in = (_AF_TISSUE * np.float32(world.autofluorescence)).astype(np.float32)
        extras, illum, spk = _world_fields(world, tissue, shape, px, world_rng)
    sig = _PSF_SIGMA_UM / px
    r = max(1, int(math.ceil(2.5 * sig)))
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sig) ** 2).astype(np.float32)
    taps /= taps.sum()
    m = max(_MARGIN_PX, r + 2)
    image = np.empty((C, H, W), np.uint16)
    ext = shapely.get_coordinates(tissue.exterior) / px
    seed = int(seed) & 0x7FFFFFFFFFFFFFFF
    spk_w = (_AF_TISSUE / _AF_TISSUE.mean()).astype(np.float32)

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
                 y0 - m, x0 - m, seed, lev, wn, wc, wm, net_w, col_w, af_in,
                 np.float32(_AF_OUTSIDE), afgrid, float(afstep), _NORMAL_TABLE, _CHROMATIN,
                 _GRANULARITY, buf)
        if spk is not None:
            buf += spk_w[:, None, None] * tile(spk)[None]
        if illum is not None:
            yy, xx = np.mgrid[y0 - m:y1 + m, x0 - m:x1 + m]
            buf *= illumination_at(illum, xx * px, yy * px).astype(np.float32)[None]
        out = np.empty((C, y1 - y0, x1 - x0), np.uint16)
        _mix_blur_noise(buf, fwd, bwd, taps, _GAIN_DN_PER_PHOTON,
                        _READ_NOISE_DN, float(noise), seed, y0, x0, m, m, _NORMAL_TABLE, out)
        image[:, y0:y1, x0:x1] = out

    raster._run_threads(work, list(raster._tiles(H, W, raster._TILE)))
    return image, extras


def _world_fields(world, tissue, shape, px, rng):
    """Illumination field and speckle photon map of the world (None if unused)."""
    extras, illum, spk = {}, None, None
    if world.illumination_gradient > 0:
        illum = illumination(shape, px, world.illumination_gradient, rng)
        extras["illumination"] = illum
    if world.af_speckles_per_mm2 > 0:
        pts = speckles(tissue, world.af_speckles_per_mm2, rng)
        spk = speckle_map(pts, shape, px)
        extras["speckles"] = pts
    return extras, illum, spk
