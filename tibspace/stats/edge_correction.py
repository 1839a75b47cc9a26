"""Edge corrections of the pair statistics (per ordered pair i -> j, weight ``e_ij``).

``"none"``
    1.
``"isotropic"`` (Ripley)
    ``2π d_ij / length of the circle of radius d_ij about point i inside W``.
    Closed form for rectangles (four edges and corner overlaps). For polygons
    the exact arc length from circle–edge intersections, tabulated per point on
    ``_ISO_TABLE_SIZE`` radii ``r = b + (R − b) u²`` (b: the point's distance
    to the boundary, R: the largest radius; denser near b where the fraction
    changes fastest) and interpolated linearly in u. Only points within R of
    the boundary get a table; all others weigh 1.
``"translation"``
    ``|W| / |W ∩ (W + v_ij)|``, v_ij = x_j − x_i. Closed form for rectangles;
    for polygons the set covariance γ of a raster of W (FFT, see
    :func:`tibspace.stats.windows.set_covariance`), bilinearly interpolated;
    the weight is the ratio γ(0)/γ(v) of raster values, so the raster's area
    bias cancels to first order.

Weights are capped at 100 (spatstat's ``maxweight``). :func:`_edge_setup`
computes the per-point data once per point set; :func:`_weighted_pair_hist`
runs the pair histogram with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.stats._inputs import _xy_digest
from tibspace.stats._kernels import _Grid, _cell_list, _n_chunks, _pair_hist
from tibspace.stats._polygon_kernels import _iso_tables, _min_seg_dist
from tibspace.stats.windows import _Memo, _Window, _boundary_candidates, _frozen, _set_covariance

_EDGE_MODES = {"none": 0, "isotropic": 1, "translation": 2}
_ISO_TABLE_SIZE = 128

# The setup of all cells (cross-L), which the envelopes subset per type pair.
_SETUP_MEMO = _Memo(2)


@dataclass(frozen=True)
class _EdgeSetup:
    """Per-point edge-correction data for the numba kernels (one point set).

    Immutable (numbers and read-only arrays, no shapely object), so one setup
    can be shared between calls and threads through :data:`_SETUP_MEMO`.
    """
    mode: int
    rect: np.ndarray
    bnd: np.ndarray            # distance to the window boundary (isotropic), else inf
    tidx: np.ndarray           # row of iso_tab per point (-1: none)
    iso_tab: np.ndarray
    reach: float
    cov: np.ndarray
    cov_step: float
    cov_P: float
    cov0: float

    def __post_init__(self):
        for v in (self.rect, self.bnd, self.tidx, self.iso_tab, self.cov):
            _frozen(v)

    def kernel_args(self, order=None):
        """(bnd, tidx) in the given point order, then the window arguments."""
        bnd = self.bnd if order is None else np.ascontiguousarray(self.bnd[order])
        tidx = self.tidx if order is None else np.ascontiguousarray(self.tidx[order])
        return bnd, tidx

    def subset(self, mask):
        """Setup of the points ``mask`` selects: per-point data are
        per-point (bnd, and the iso_tab row tidx points at), so selecting
        them equals the setup computed on those points alone."""
        return replace(self, bnd=self.bnd[mask], tidx=self.tidx[mask])


def _setup_key(x, y, win: _Window, edge_correction, reach):
    """Content key: the points, the window, the correction and the reach."""
    return _xy_digest(x, y), win.key, edge_correction, float(reach)


def _edge_setup(x, y, win: _Window, edge_correction, reach) -> _EdgeSetup:
    """Edge-correction setup of the points (x, y); memoised for polygon windows
    (the last two point sets), whose boundary work is the costly part."""
    if edge_correction not in _EDGE_MODES:
        raise InputError(f"edge_correction={edge_correction!r}: expected one of {sorted(_EDGE_MODES)}")
    if win.kind == "rect":
        return _compute_edge_setup(x, y, win, edge_correction, reach)
    key = _setup_key(x, y, win, edge_correction, reach)
    es = _SETUP_MEMO.get(key)
    if es is None:
        es = _compute_edge_setup(x, y, win, edge_correction, reach)
        _SETUP_MEMO.put(key, es)
    return es


def _memoised_edge_setup(x, y, win: _Window, edge_correction, reach) -> Optional[_EdgeSetup]:
    """The memoised setup of (x, y) if there is one (never computes)."""
    if win.kind == "rect" or edge_correction not in _EDGE_MODES:
        return None
    return _SETUP_MEMO.get(_setup_key(x, y, win, edge_correction, reach))


def _compute_edge_setup(x, y, win: _Window, edge_correction, reach) -> _EdgeSetup:
    """Edge-correction setup of the points (x, y) in ``win`` for pairs up to ``reach`` (µm)."""
    mode = _EDGE_MODES[edge_correction]
    rect = np.array(win.bounds, dtype=np.float64)
    n = x.size
    bnd = np.full(n, np.inf)
    tidx = np.full(n, -1, dtype=np.int64)
    iso_tab = np.ones((1, 2))
    cov = np.ones((2, 2))
    cov_step, cov_P, cov0 = 1.0, 0.0, 1.0
    if win.kind == "rect":
        if mode == 1:
            bnd = np.minimum(np.minimum(x - rect[0], rect[2] - x), np.minimum(y - rect[1], rect[3] - y))
    elif mode == 1:
        mode = 3
        bnd, tidx, iso_tab = _iso_polygon_setup(x, y, win.geom, reach, tidx, iso_tab)
    elif mode == 2:
        mode = 4
        cov, cov_step, P = _set_covariance(win, reach)
        cov_P, cov0 = float(P), float(cov[P, P])
    return _EdgeSetup(mode, rect, bnd, tidx, iso_tab, float(reach), cov, float(cov_step), cov_P, cov0)


def _iso_polygon_setup(x, y, geom, reach, tidx, iso_tab):
    """Boundary distance of every point, and circle-fraction tables (rows
    ``tidx``) for the points within ``reach`` of the polygon's boundary."""
    cptr, cedges, (ex0, ey0, ex1, ey1) = _boundary_candidates(geom, x, y, reach)
    bnd = _min_seg_dist(x, y, cptr, cedges, ex0, ey0, ex1, ey1)
    sel = np.flatnonzero(np.diff(cptr) > 0)       # only points within reach of the boundary
    tidx[sel] = np.arange(sel.size)
    if sel.size:
        lens = cptr[sel + 1] - cptr[sel]
        sub_ptr = np.zeros(sel.size + 1, dtype=np.int64)
        np.cumsum(lens, out=sub_ptr[1:])
        sub_edges = cedges[np.repeat(cptr[sel], lens) + (np.arange(lens.sum()) - np.repeat(sub_ptr[:-1], lens))]
        iso_tab = _iso_tables(x[sel], y[sel], bnd[sel], sub_ptr, sub_edges, ex0, ey0, ex1, ey1,
                              reach, _ISO_TABLE_SIZE)
    return bnd, tidx, iso_tab


def _hist_with_setup(grid: _Grid, codes_sorted, n_types, radii, es: _EdgeSetup, kernel_h):
    bnd, tidx = es.kernel_args(grid.order)
    return _pair_hist(grid.xs, grid.ys, codes_sorted, bnd, tidx, grid.start, grid.nx, grid.ny, int(n_types),
                      radii * radii, es.reach * es.reach, radii, float(kernel_h), es.mode, es.rect, es.iso_tab,
                      es.reach, es.cov, es.cov_step, es.cov_P, es.cov0, _n_chunks())


def _weighted_pair_hist(x, y, codes, n_types, radii, win: _Window, edge_correction, *,
                        kernel_h=0.0, progress=None):
    """hist[a, b, k] of edge-corrected pair weights (see _pair_hist)."""
    report(progress, "edge correction", 0, 1)
    es = _edge_setup(x, y, win, edge_correction, float(radii[-1] + kernel_h))
    report(progress, "edge correction", 1, 1)
    grid = _cell_list(x, y, es.reach)
    report(progress, "pair histogram", 0, 1)
    hist = _hist_with_setup(grid, np.ascontiguousarray(codes[grid.order]).astype(np.int64), n_types, radii,
                            es, kernel_h)
    report(progress, "pair histogram", 1, 1)
    return hist
