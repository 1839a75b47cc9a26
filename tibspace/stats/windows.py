"""Observation windows: validation, inside tests, boundary geometry.

A window is ``(xmin, ymin, xmax, ymax)`` in µm or a shapely ``Polygon`` /
``MultiPolygon`` (the tissue region, µm). Points must lie in it; the area
``|W|`` is the shapely area (µm²). This module also gives the polygon
quantities the edge corrections need: the boundary edges near each point
(exactly GEOS's ``dwithin`` sets), the exact fraction of a circle inside the
window, and the set covariance ``γ(v) = |W ∩ (W + v)|``.

Thread safety: every call works on its own copy of the caller's polygon
(:func:`_own_copy`, bit-identical) and prepares only that copy; the memos
(:class:`_Memo`) are keyed by content hashes and hold read-only numpy results,
never a shapely object. The caller's geometry is read once (its WKB) and
never prepared, so statistics may run in any thread while other threads use
the same polygon.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np

from tibspace.errors import InputError
from tibspace.stats._inputs import _as_xy, _xy_digest
from tibspace.stats._kernels import _circle_frac_rect
from tibspace.stats._polygon_kernels import (_bucket_candidates, _circle_frac_poly, _edge_buckets, _replace_rows,
                                             _scanline_fill)


@dataclass(frozen=True)
class _Window:
    kind: str                      # "rect" or "poly"
    bounds: tuple                  # xmin, ymin, xmax, ymax
    area: float
    geom: object = None            # "poly": this call's own prepared copy of the caller's polygon
    key: bytes = b""               # content hash of the window, for memo keys

    @property
    def half_min_side(self) -> float:
        xmin, ymin, xmax, ymax = self.bounds
        return 0.5 * min(xmax - xmin, ymax - ymin)


def _as_window(window) -> _Window:
    """The validated window of one call.

    A polygon is copied (through its WKB, which keeps every coordinate bit for
    bit) and only the copy is prepared: the caller's geometry is never
    prepared or otherwise modified, and the copy belongs to this call, so no
    GEOS object is shared with other threads (GEOS prepared geometries are
    not thread-safe).
    """
    if window is None:
        raise InputError("window is missing: pass (xmin, ymin, xmax, ymax) in µm or a shapely Polygon")
    try:
        from shapely.geometry.base import BaseGeometry
    except ImportError:  # pragma: no cover
        BaseGeometry = ()
    if isinstance(window, BaseGeometry):
        return _polygon_window(window)
    try:
        b = tuple(float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"window {window!r} is neither (xmin, ymin, xmax, ymax) nor a shapely Polygon") from None
    if len(b) != 4 or not all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise InputError(f"window {window!r}: expected finite (xmin, ymin, xmax, ymax) with xmax > xmin and ymax > ymin (µm)")
    return _Window("rect", b, (b[2] - b[0]) * (b[3] - b[1]), None, b"rect" + np.array(b).tobytes())


def _own_copy(geom):
    """A new geometry equal to ``geom`` bit for bit (through its WKB), and the WKB.

    Reading the WKB is the only use of ``geom``: the copy may be prepared and
    used freely by the calling thread."""
    import shapely
    wkb = shapely.to_wkb(geom)
    return shapely.from_wkb(wkb), wkb


def _polygon_window(window) -> _Window:
    import shapely
    geom, wkb = _own_copy(window)
    if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError(f"window is a {geom.geom_type}{' (empty)' if geom.is_empty else ''}; "
                         "expected a non-empty shapely Polygon or MultiPolygon in µm")
    if not geom.is_valid:
        raise InputError("window polygon is not valid (self-intersecting?); fix it with shapely.make_valid or buffer(0)")
    shapely.prepare(geom)
    key = b"poly" + hashlib.sha256(wkb).digest()
    return _Window("poly", tuple(float(v) for v in geom.bounds), float(geom.area), geom, key)


def _as_radii(radii_um, win: Optional[_Window], name="radii_um", check_max=True):
    r = np.atleast_1d(np.asarray(radii_um, dtype=np.float64)).ravel()
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise InputError(f"{name}: expected a non-empty list of finite radii in µm")
    if np.any(r <= 0):
        raise InputError(f"{name}: all radii must be > 0 µm (got min {r.min():g})")
    if np.any(np.diff(r) <= 0):
        raise InputError(f"{name}: radii must be strictly increasing")
    if check_max and win is not None and r[-1] > win.half_min_side + 1e-9:
        raise InputError(f"{name}: largest radius {r[-1]:g} µm exceeds half the window's smaller side "
                         f"({win.half_min_side:g} µm); use smaller radii or a larger window")
    return r


class _Memo:
    """Small thread-safe LRU of numpy results keyed by content.

    Keys are content hashes (of the coordinates, the window and the
    parameters), so equal inputs hit from any thread and any copy of the
    window. Values hold numpy arrays and numbers only, never a shapely object,
    and their arrays are made read-only when stored (:func:`_frozen`): what
    one thread reads, no other thread can change.
    """

    def __init__(self, size=2):
        self.size = size
        self._lock = threading.Lock()
        self._items = OrderedDict()

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self):
        with self._lock:
            self._items.clear()


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` made read-only (in place) and returned."""
    a.setflags(write=False)
    return a


# The inside test of the whole table, which the pipeline repeats on the same
# cells (cross-L and every envelope).
_INSIDE_MEMO = _Memo(2)


def _inside(win: _Window, x, y):
    if win.kind == "rect":
        xmin, ymin, xmax, ymax = win.bounds
        return (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
    import shapely
    key = (_xy_digest(x, y), win.key)
    ok = _INSIDE_MEMO.get(key)
    if ok is None:
        ok = _frozen(shapely.intersects_xy(win.geom, x, y))
        _INSIDE_MEMO.put(key, ok)
    return ok.copy()     # callers combine masks in place


def _check_inside(win: _Window, x, y, outside: str, name="points"):
    """Boolean mask of points to keep (all of them or an InputError)."""
    if outside not in ("error", "drop"):
        raise InputError(f"outside={outside!r}: expected 'error' or 'drop'")
    ok = _inside(win, x, y)
    if not ok.all() and outside == "error":
        raise InputError(f"{name}: {int((~ok).sum())} of {ok.size} points lie outside the window; "
                         "clip them or pass outside='drop'")
    return ok


def _polygon_edges(geom):
    import shapely
    rings = shapely.get_rings(shapely.get_parts(geom))
    coords, idx = shapely.get_coordinates(rings, return_index=True)
    same = idx[1:] == idx[:-1]
    a = coords[:-1][same]
    b = coords[1:][same]
    keep = np.any(a != b, axis=1)
    a, b = a[keep], b[keep]
    return (np.ascontiguousarray(a[:, 0]), np.ascontiguousarray(a[:, 1]),
            np.ascontiguousarray(b[:, 0]), np.ascontiguousarray(b[:, 1]))


def _strtree_candidates(ex0, ey0, ex1, ey1, x, y, reach):
    """(point, edge) pairs with GEOS dwithin(point, edge, reach), via an STRtree."""
    import shapely
    segs = shapely.linestrings(np.stack([np.stack([ex0, ey0], 1), np.stack([ex1, ey1], 1)], axis=1))
    tree = shapely.STRtree(segs)
    return tree.query(shapely.points(x, y), predicate="dwithin", distance=reach)


def _boundary_candidates(geom, x, y, reach):
    """Per point: polygon edges within ``reach`` (CSR) and the edge arrays.

    The candidate sets are exactly those of GEOS ``dwithin`` (an STRtree query
    with ``predicate="dwithin"``), found without building a shapely point per
    cell (slow for millions of cells): edges are bucketed on a grid of cells of side
    >= reach and each point tests the edges of its own cell with GEOS's
    point–segment formula. Points with an edge at a distance within a
    rounding margin of ``reach`` (rare) are decided by the STRtree itself.
    """
    ex0, ey0, ex1, ey1 = _polygon_edges(geom)
    n = x.size
    reach = float(reach)
    exs, eys = np.r_[ex0, ex1], np.r_[ey0, ey1]
    xmin, xmax, ymin, ymax = exs.min(), exs.max(), eys.min(), eys.max()
    # GEOS and this code round differently by O(1e-16 x coordinate size); a point
    # whose distance is within 1e-9 of that scale of reach is left to GEOS.
    tol = 1e-9 * (reach + max(abs(xmin), abs(xmax), abs(ymin), abs(ymax), xmax - xmin, ymax - ymin))
    R = reach + 4 * tol                       # bucketing margin beyond the tolerance band
    gx0, gy0 = xmin - R, ymin - R
    ex_, ey_ = xmax - xmin + 2 * R, ymax - ymin + 2 * R
    cs = max(reach, 1e-9 * max(ex_, ey_, 1.0))
    budget = 4 * (n + ex0.size) + 1024         # keep the number of grid cells O(points + edges)
    if (ex_ / cs + 1) * (ey_ / cs + 1) > budget:
        cs = max(cs, math.sqrt(ex_ * ey_ / budget) * 1.01)
    nx, ny = int(ex_ // cs) + 1, int(ey_ // cs) + 1
    bstart, bitems = _edge_buckets(ex0, ey0, ex1, ey1, R, gx0, gy0, cs, nx, ny)
    cptr, cedges, amb = _bucket_candidates(x, y, gx0, gy0, cs, nx, ny, bstart, bitems,
                                           ex0, ey0, ex1, ey1, reach, tol)
    if amb.any():
        # Replace the rows of the undecided points by GEOS's own answer.
        rows = np.flatnonzero(amb)
        qi, qe = _strtree_candidates(ex0, ey0, ex1, ey1, x[rows], y[rows], reach)
        o = np.lexsort((qe, qi))
        rptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(qi, minlength=rows.size), out=rptr[1:])
        cptr, cedges = _replace_rows(cptr, cedges, rows, rptr, qe[o].astype(np.int64))
    return cptr, cedges, (ex0, ey0, ex1, ey1)


def circle_fraction_in_window(x_um, y_um, r_um, window) -> np.ndarray:
    """Exact fraction of the circle of radius ``r_um`` about each point that lies in ``window``.

    Used for Ripley's isotropic edge correction (weight = 1 / fraction).

    Parameters
    ----------
    x_um, y_um : array_like
        Point coordinates (µm), inside the window.
    r_um : float
        Circle radius (µm).
    window : tuple or shapely Polygon
        ``(xmin, ymin, xmax, ymax)`` or a polygon.

    Returns
    -------
    numpy.ndarray
        Fraction in [0, 1] per point.

    Examples
    --------
    >>> float(circle_fraction_in_window([0.0], [5.0], 5.0, (0, 0, 20, 20))[0])
    0.5
    """
    win = _as_window(window)
    x, y = _as_xy(x_um, y_um)
    r = float(r_um)
    if not r > 0:
        raise InputError(f"r_um must be > 0 (got {r_um})")
    _check_inside(win, x, y, "error")
    if win.kind == "rect":
        b = win.bounds
        if r >= 2 * win.half_min_side:
            raise InputError("r_um must be smaller than the rectangle's smaller side")
        return np.array([_circle_frac_rect(xi, yi, r, *b) for xi, yi in zip(x, y)])
    cptr, cedges, (ex0, ey0, ex1, ey1) = _boundary_candidates(win.geom, x, y, r * 1.000001)
    return np.array([_circle_frac_poly(x[i], y[i], r, ex0, ey0, ex1, ey1, cedges[cptr[i]:cptr[i + 1]])
                     for i in range(x.size)])


def set_covariance(window, reach_um, *, pixel_um=None):
    """Set covariance γ(v) = |W ∩ (W + v)| of a polygon window on a grid, by FFT.

    The window is rasterised at pixel centres (``pixel_um``, default
    max(min(reach/64, sqrt(bbox area / 4e6)), sqrt(bbox area / 16e6)), so the raster has 4–16M
    pixels) and zero-padded by ``reach_um`` so the circular FFT correlation
    equals the linear one for |v_x|, |v_y| <= reach. Error: γ is exact for the
    raster; the raster differs from W by about perimeter × pixel area, so
    relative errors of γ(0)/γ(v) are O(pixel × perimeter / |W|)
    (docs/validation/stats.md).

    Parameters
    ----------
    window : shapely Polygon or MultiPolygon
        Window in µm.
    reach_um : float
        Largest |v| needed (µm).
    pixel_um : float, optional
        Raster pixel size (µm).

    Returns
    -------
    cov : numpy.ndarray
        ``(2P+1, 2P+1)`` array; ``cov[P + iy, P + ix]`` = γ((ix, iy) * pixel) in µm².
    pixel_um : float
    P : int

    Examples
    --------
    >>> from shapely.geometry import box
    >>> cov, px, P = set_covariance(box(0, 0, 100, 50), 10.0, pixel_um=1.0)
    >>> round(float(cov[P, P]))
    5000
    """
    return _set_covariance(_as_window(window), reach_um, pixel_um)


def _set_covariance(win: _Window, reach_um, pixel_um=None):
    """:func:`set_covariance` of a validated window."""
    from scipy import fft

    if win.kind == "rect":
        import shapely.geometry as sg
        geom = sg.box(*win.bounds)
    else:
        geom = win.geom
    xmin, ymin, xmax, ymax = win.bounds
    if pixel_um is None:
        # reach/64, but at most ~16M raster pixels for whole slides
        pixel_um = max(min(reach_um / 64.0, math.sqrt((xmax - xmin) * (ymax - ymin) / 4e6)),
                       math.sqrt((xmax - xmin) * (ymax - ymin) / 16e6))
    px = float(pixel_um)
    P = int(math.ceil(reach_um / px)) + 2
    W = int(math.ceil((xmax - xmin) / px)) + 1
    H = int(math.ceil((ymax - ymin) / px)) + 1
    ex0, ey0, ex1, ey1 = _polygon_edges(geom)
    raster = _scanline_fill((ex0 - xmin) / px, (ey0 - ymin) / px, (ex1 - xmin) / px, (ey1 - ymin) / px, H, W)
    shape = (H + P + 1, W + P + 1)
    F = fft.rfft2(raster.astype(np.float64), s=shape, workers=-1)
    corr = fft.irfft2(F * np.conj(F), s=shape, workers=-1)
    idx_y = np.r_[np.arange(-P, 0) % shape[0], np.arange(0, P + 1)]
    idx_x = np.r_[np.arange(-P, 0) % shape[1], np.arange(0, P + 1)]
    cov = corr[np.ix_(idx_y, idx_x)] * px * px
    # γ(v) = |W ∩ (W + v)|: corr[v] = sum_x r(x) r(x + v); symmetric, so the sign convention is immaterial.
    return np.ascontiguousarray(np.maximum(cov, 0.0)), px, P
