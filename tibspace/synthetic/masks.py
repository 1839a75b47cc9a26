"""Planted NET and collagen-I masks of synthetic tissue (pixels).

Shields are painted on a ring of ``SHIELD_RING_UM`` outside each shielded
tumour cell's outline (≥ 70 % covered; unshielded tumour cells < 20 %); NETs
also appear around stromal neutrophils and collagen-I fibres in stroma ≥ 20 µm
from the nests. The true ring coverage of every tumour cell is measured here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi
from shapely.geometry import Polygon

from tibspace.synthetic.cells import _poisson_in
from tibspace.synthetic.kernels import _ring_dist, _ring_pass
from tibspace.synthetic.raster import _disk_patch
from tibspace.synthetic.spec import SHIELD_RING_UM


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


class _Rings:
    """Shield-ring passes over the outlines of ``cells`` (indices into the
    cell table) on the whole-cell label image."""

    def __init__(self, cells, cell_lab, shape, px):
        self.cells, self.lab, self.shape = cells, cell_lab, shape
        self.ring_px = SHIELD_RING_UM / px
        self.dy, self.dx = _disk_offsets(self.ring_px)
        self.d2 = (self.dy.astype(np.int64) ** 2 + self.dx ** 2).astype(np.uint16)
        self.ids = cells.cell_id.to_numpy().astype(np.int32)

    def _boxes(self, idx):
        return _ring_boxes(self.cells, idx, self.ring_px, self.shape)

    def paint(self, idx, target, tex):
        """Set ``target`` on the rings of ``idx`` where ``tex`` (None: everywhere)."""
        if len(idx) == 0:
            return
        y0, y1, x0, x1 = self._boxes(idx)
        dummy_n = np.zeros(len(idx), np.int64)
        mode = 1 if tex is not None else 2
        _ring_pass(self.lab, self.ids[idx], y0, y1, x0, x1, self.dy, self.dx,
                   tex if tex is not None else np.zeros((1, 1), bool), mode, target, dummy_n,
                   dummy_n.copy())

    def coverage(self, idx, mask):
        """Fraction of each ring of ``idx`` inside ``mask`` (NaN: empty ring)."""
        y0, y1, x0, x1 = self._boxes(idx)
        nring = np.zeros(len(idx), np.int64)
        ncov = np.zeros(len(idx), np.int64)
        _ring_pass(self.lab, self.ids[idx], y0, y1, x0, x1, self.dy, self.dx, mask, 0,
                   np.zeros((1, 1), bool), nring, ncov)
        return np.where(nring > 0, ncov / np.maximum(nring, 1), np.nan)

    def dist_map(self, idx):
        """Squared ring distance (px²) to the nearest outline of ``idx``."""
        dm = np.full(self.shape, np.iinfo(np.uint16).max, np.uint16)
        if len(idx):
            y0, y1, x0, x1 = self._boxes(idx)
            _ring_dist(self.lab, self.ids[idx], y0, y1, x0, x1, self.dy, self.dx, self.d2, dm)
        return dm


def _plant_masks(cells, cell_lab, nests, tissue, shape, px, rng):
    """Paint NET and collagen-I shields on tumour-cell rings, stromal NETs near
    neutrophils and stromal collagen fibres; measure true shield coverage.

    Returns ``(net, col1, cells)``: the two bool masks and the cell table with
    ``shield_type`` (possibly promoted), ``shielded`` and the ring coverages
    ``shield_coverage[_net|_col1]`` (NaN for non-tumour cells)."""
    net = np.zeros(shape, bool)
    col = np.zeros(shape, bool)
    rings = _Rings(cells, cell_lab, shape, px)
    tum_idx = np.flatnonzero((cells.phenotype == "tumour").to_numpy())
    stype = cells.shield_type.to_numpy().astype(object)
    s_px = max(0.35 / px, 0.6)
    net_tex, col_tex = _nest_textures(nests, shape, px, s_px, rng)
    _paint_shields(rings, net, col, net_tex, col_tex, tum_idx, stype,
                   (cells.phenotype == "tumour").to_numpy(), rng)
    cov_net = rings.coverage(tum_idx, net)
    cov_col = rings.coverage(tum_idx, col)
    nest_zone = shapely.union_all([n.buffer(20.0) for n in nests]) if nests else Polygon()
    _stromal_nets(net, cells, nest_zone, shape, px, s_px, rng)
    _collagen_fibres(col, tissue, nest_zone, shape, px, rng)

    cells = cells.copy()
    cells["shield_type"] = stype
    cov = np.full(len(cells), np.nan)
    cov[tum_idx] = rings.coverage(tum_idx, net | col)
    cells["shield_coverage"] = cov
    cells["shielded"] = np.isin(stype, ["net", "col1", "both"]) & (cells.phenotype == "tumour")
    cn = np.full(len(cells), np.nan)
    cc = np.full(len(cells), np.nan)
    cn[tum_idx] = cov_net
    cc[tum_idx] = cov_col
    cells["shield_coverage_net"] = cn
    cells["shield_coverage_col1"] = cc
    return net, col, cells


def _nest_textures(nests, shape, px, s_px, rng):
    """NET spots and collagen fibre textures, only in each nest's bounding box."""
    H, W = shape
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
    return net_tex, col_tex


def _paint_shields(rings, net, col, net_tex, col_tex, tum_idx, stype, is_tumour, rng):
    """Paint the shielded tumour cells' rings into ``net`` / ``col`` (in place;
    ``stype`` too, when an unshielded cell gets promoted).

    Neighbouring tumour cells' rings overlap near their contacts. A ring pixel
    is painted for a shielded cell only where it is nearer to that cell than to
    any unshielded tumour cell, so overlaps are split and the planted classes
    stay apart (shielded ≥ 0.7, unshielded < 0.2)."""
    shielded = np.isin(stype, ["net", "col1", "both"]) & is_tumour

    def split_maps():
        d_u = rings.dist_map(tum_idx[~shielded[tum_idx]])
        d_n = rings.dist_map(np.flatnonzero(np.isin(stype, ["net", "both"]) & shielded))
        d_c = rings.dist_map(np.flatnonzero(np.isin(stype, ["col1", "both"]) & shielded))
        return d_n < d_u, d_c < d_u

    split_net, split_col = split_maps()
    net |= net_tex & split_net
    col |= col_tex & split_col
    # fix-ups for the few cells the split cannot satisfy (patch corners):
    # fill an under-covered shield's own share of its ring without texture
    # holes; promote an unshielded cell whose ring is mostly covered.
    for _ in range(8):
        cov = rings.coverage(tum_idx, net | col)
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
            rings.paint(np.array([j]), net if is_n else col, split_net if is_n else split_col)


def _stromal_nets(net, cells, nest_zone, shape, px, s_px, rng):
    """NET patches (4–8 µm radius) around 40 % of the stromal neutrophils
    outside ``nest_zone`` (in place)."""
    H, W = shape
    neu = cells[(cells.phenotype == "neutrophil") & ~cells.near_net]
    if not len(neu):
        return
    far = ~shapely.contains_xy(nest_zone, neu.x.to_numpy(), neu.y.to_numpy())
    neu = neu[far & (rng.uniform(size=len(neu)) < 0.4)]
    for _, c in neu.iterrows():
        rr = rng.uniform(4.0, 8.0) / px
        oy, ox = rng.normal(0, 3.0 / px, 2)
        cy, cx = c.cy_px + oy, c.cx_px + ox
        box, disk = _disk_patch(cy, cx, rr, (H, W))
        if disk is None:
            continue
        net[box] |= disk & _texture(disk.shape, rng, 0.5, s_px, False)


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
