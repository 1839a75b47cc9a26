"""Point-pattern statistics in physical units: Ripley K/L, cross-K/L, pair
correlation, nearest-neighbour G-cross and random-labelling envelopes.

Everything runs over *neighbour pairs* found with a cell list (grid of square
cells of side >= the largest radius) inside numba kernels, never over an
all-pairs matrix, so memory grows linearly with the number of cells and 1M
cells with all 64 type pairs take seconds (``benchmarks/bench_stats.py``).

Conventions
-----------
window
    ``(xmin, ymin, xmax, ymax)`` in µm, or a shapely ``Polygon`` /
    ``MultiPolygon`` (tissue region, µm). Points must lie in the window
    (``outside="drop"`` removes the others, the default raises).
K estimator
    ``K_ab(r) = |W| / (n_a n_b') * sum_{i in a} sum_{j in b, j != i} e_ij 1(d_ij <= r)``
    with ``n_b' = n_b - 1`` when a and b are the same points
    (``intensity="unbiased"``, the default: λ² estimated by n(n−1)/|W|², as in
    spatstat and astropy) or ``n_b' = n_b`` (``intensity="naive"``:
    λ = n/|W|). ``L = sqrt(K / π)``.
Edge corrections ``e_ij``
    ``"none"``: 1.
    ``"isotropic"`` (Ripley): 2πd / length of the circle of radius d_ij about
    point i inside W. Closed form for rectangles (all four edges and corner
    overlaps); for polygons exact arc length from circle–edge intersections,
    tabulated per point on a grid of 128 radii refined near the point's own
    boundary distance (``r = b + (R − b) u²``) and interpolated linearly in u;
    only points within R of the boundary get a table, all others weigh 1.
    Weights are capped at 100 (spatstat's ``maxweight``).
    ``"translation"``: |W| / |W ∩ (W + v_ij)|. Closed form for rectangles;
    for polygons the set covariance of W is computed once by FFT of a raster
    of W (4–16M pixels, at most R/64 where that fits; see :func:`set_covariance`)
    and bilinearly interpolated; the weight is the ratio γ(0)/γ(v) of raster
    values so the raster's area bias cancels to first order.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Optional

import numba
import numpy as np
import pandas as pd
from numba import njit, prange
from scipy.spatial import cKDTree

from tibspace.errors import InputError
from tibspace.progress import report

__all__ = [
    "ripley_k", "ripley_l", "cross_k", "cross_l", "pair_correlation", "g_cross",
    "cross_l_all_pairs", "random_labelling_envelope", "set_covariance",
    "circle_fraction_in_window",
]

_EDGE_MODES = {"none": 0, "isotropic": 1, "translation": 2}
_ISO_TABLE_SIZE = 128
_MAX_ISO_WEIGHT = 100.0


# --------------------------------------------------------------------------
# Windows and validation
# --------------------------------------------------------------------------
@dataclass
class _Window:
    kind: str                      # "rect" or "poly"
    bounds: tuple                  # xmin, ymin, xmax, ymax
    area: float
    geom: object = None            # shapely geometry for "poly"

    @property
    def half_min_side(self) -> float:
        xmin, ymin, xmax, ymax = self.bounds
        return 0.5 * min(xmax - xmin, ymax - ymin)


def _as_window(window) -> _Window:
    if window is None:
        raise InputError("window is missing: pass (xmin, ymin, xmax, ymax) in µm or a shapely Polygon")
    try:
        import shapely
        from shapely.geometry.base import BaseGeometry
    except ImportError:  # pragma: no cover
        BaseGeometry = ()
    if isinstance(window, BaseGeometry):
        if window.is_empty or window.geom_type not in ("Polygon", "MultiPolygon"):
            raise InputError(f"window is a {window.geom_type}{' (empty)' if window.is_empty else ''}; "
                             "expected a non-empty shapely Polygon or MultiPolygon in µm")
        if not window.is_valid:
            raise InputError("window polygon is not valid (self-intersecting?); fix it with shapely.make_valid or buffer(0)")
        shapely.prepare(window)
        return _Window("poly", tuple(float(v) for v in window.bounds), float(window.area), window)
    try:
        b = tuple(float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"window {window!r} is neither (xmin, ymin, xmax, ymax) nor a shapely Polygon") from None
    if len(b) != 4 or not all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise InputError(f"window {window!r}: expected finite (xmin, ymin, xmax, ymax) with xmax > xmin and ymax > ymin (µm)")
    return _Window("rect", b, (b[2] - b[0]) * (b[3] - b[1]))


class _Memo:
    """Small thread-safe LRU of results derived from a point set and a polygon window.

    Keys hold the window's ``id``; the entry keeps the geometry itself and is
    only returned for that very object (no id reuse after garbage collection;
    shapely geometries are immutable). Values are shared: callers must not
    modify them in place.
    """

    def __init__(self, size=2):
        self.size = size
        self._lock = threading.Lock()
        self._items = OrderedDict()

    def get(self, key, geom):
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] is not geom:
                return None
            self._items.move_to_end(key)
            return hit[1]

    def put(self, key, geom, value):
        with self._lock:
            self._items[key] = (geom, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self):
        with self._lock:
            self._items.clear()


# Polygon-window work that the pipeline repeats on the same cells: the inside
# test of the whole table (cross-L and every envelope) and the isotropic setup
# of all cells (cross-L), which the envelopes subset per type pair.
_INSIDE_MEMO = _Memo(2)
_SETUP_MEMO = _Memo(2)


def _xy_digest(x, y):
    """Content hash of float64 coordinate arrays (SHA-256: ~10 ms per million points)."""
    h = hashlib.sha256(np.int64(x.size).tobytes())
    h.update(np.ascontiguousarray(x, dtype=np.float64))
    h.update(np.ascontiguousarray(y, dtype=np.float64))
    return h.digest()


def _as_xy(x, y, name="points"):
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"{name}: x and y have different lengths ({x.size} vs {y.size})")
    if x.size == 0:
        raise InputError(f"{name}: no points given; expected at least one cell")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        bad = int(np.sum(~(np.isfinite(x) & np.isfinite(y))))
        raise InputError(f"{name}: {bad} coordinates are NaN/inf; drop or fix those cells first")
    return x, y


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


def _inside(win: _Window, x, y):
    if win.kind == "rect":
        xmin, ymin, xmax, ymax = win.bounds
        return (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
    import shapely
    key = _xy_digest(x, y)
    ok = _INSIDE_MEMO.get(key, win.geom)
    if ok is None:
        ok = shapely.intersects_xy(win.geom, x, y)
        _INSIDE_MEMO.put(key, win.geom, ok)
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


# --------------------------------------------------------------------------
# Cell list
# --------------------------------------------------------------------------
@dataclass
class _Grid:
    order: np.ndarray          # original index of sorted position
    xs: np.ndarray
    ys: np.ndarray
    start: np.ndarray          # cell start offsets (ncells + 1)
    nx: int
    ny: int


def _cell_list(x, y, reach):
    """Sort points into square cells of side >= reach (bounded cell count)."""
    n = x.size
    x0, y0 = float(x.min()), float(y.min())
    ex, ey = float(x.max()) - x0, float(y.max()) - y0
    # a hair larger than reach so rounding never puts two points within reach two cells apart
    cell = max(float(reach), 1e-9) * (1 + 1e-9)
    # Keep the number of cells O(n) even for tiny radii.
    if (ex / cell + 1) * (ey / cell + 1) > 4 * n + 64:
        cell = max(cell, math.sqrt(max(ex * ey, 1e-12) / (4 * n + 64)) * 1.01, ex / 65536, ey / 65536)
    nx = int(ex // cell) + 1
    ny = int(ey // cell) + 1
    order, start = _counting_sort_cells(x, y, x0, y0, 1.0 / cell, nx, ny)
    return _Grid(order, x[order], y[order], start, nx, ny)


@njit(cache=True)
def _counting_sort_cells(x, y, x0, y0, inv_cell, nx, ny):
    """Stable O(n) sort of points by grid cell (row-major); returns order and cell starts."""
    n = x.shape[0]
    key = np.empty(n, dtype=np.int64)
    start = np.zeros(nx * ny + 1, dtype=np.int64)
    for i in range(n):
        cx = min(int((x[i] - x0) * inv_cell), nx - 1)
        cy = min(int((y[i] - y0) * inv_cell), ny - 1)
        k = cy * nx + cx
        key[i] = k
        start[k + 1] += 1
    for k in range(nx * ny):
        start[k + 1] += start[k]
    pos = start[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        k = key[i]
        order[pos[k]] = i
        pos[k] += 1
    return order, start


# --------------------------------------------------------------------------
# Edge-correction weights (numba)
# --------------------------------------------------------------------------
@njit(cache=True, fastmath=False)
def _circle_frac_rect(x, y, r, xmin, ymin, xmax, ymax):
    """Fraction of the circle (x, y, r) inside the rectangle (exact, r < side)."""
    dl = x - xmin
    dr = xmax - x
    db = y - ymin
    dt = ymax - y
    al = math.acos(dl / r) if dl < r else 0.0
    ar = math.acos(dr / r) if dr < r else 0.0
    ab = math.acos(db / r) if db < r else 0.0
    at = math.acos(dt / r) if dt < r else 0.0
    out = 2.0 * (al + ar + ab + at)
    half_pi = 0.5 * math.pi
    # Arcs beyond a vertical and a horizontal edge overlap iff the corner is
    # inside the circle; the overlap is a + b - π/2.
    if dl * dl + db * db < r * r:
        out -= al + ab - half_pi
    if dl * dl + dt * dt < r * r:
        out -= al + at - half_pi
    if dr * dr + db * db < r * r:
        out -= ar + ab - half_pi
    if dr * dr + dt * dt < r * r:
        out -= ar + at - half_pi
    f = 1.0 - out / (2.0 * math.pi)
    return f


@njit(cache=True, inline="always")
def _edge_weight(mode, xi, yi, bi, ti, d, dx, dy, rect, iso_tab, iso_R, cov, cov_step, cov_P, cov0):
    """Edge-correction factor e_ij for the ordered pair (i, j).

    mode 0 none, 1 isotropic rectangle, 2 translation rectangle,
    3 isotropic polygon (table), 4 translation polygon (raster covariance).
    """
    if mode == 0:
        return 1.0
    if mode == 1:
        if d <= bi:
            return 1.0
        f = _circle_frac_rect(xi, yi, d, rect[0], rect[1], rect[2], rect[3])
        return 1.0 / f if f > 1.0 / _MAX_ISO_WEIGHT else _MAX_ISO_WEIGHT
    if mode == 2:
        w = rect[2] - rect[0]
        h = rect[3] - rect[1]
        return (w * h) / ((w - abs(dx)) * (h - abs(dy)))
    if mode == 3:
        if d <= bi or ti < 0:
            return 1.0
        G = iso_tab.shape[1]
        span = iso_R - bi
        if span <= 0.0:
            return 1.0
        u = math.sqrt(min((d - bi) / span, 1.0)) * (G - 1)
        k = int(u)
        if k >= G - 1:
            f = iso_tab[ti, G - 1]
        else:
            t = u - k
            f = iso_tab[ti, k] * (1.0 - t) + iso_tab[ti, k + 1] * t
        return 1.0 / f if f > 1.0 / _MAX_ISO_WEIGHT else _MAX_ISO_WEIGHT
    # mode 4: bilinear interpolation of the raster set covariance
    gx = dx / cov_step + cov_P
    gy = dy / cov_step + cov_P
    ix = int(math.floor(gx))
    iy = int(math.floor(gy))
    n1 = cov.shape[0] - 1
    if ix < 0:
        ix = 0
    if iy < 0:
        iy = 0
    if ix > n1 - 1:
        ix = n1 - 1
    if iy > n1 - 1:
        iy = n1 - 1
    tx = gx - ix
    ty = gy - iy
    g = (cov[iy, ix] * (1 - tx) * (1 - ty) + cov[iy, ix + 1] * tx * (1 - ty)
         + cov[iy + 1, ix] * (1 - tx) * ty + cov[iy + 1, ix + 1] * tx * ty)
    if g <= cov0 / _MAX_ISO_WEIGHT:
        return _MAX_ISO_WEIGHT
    return cov0 / g


@njit(cache=True, inline="always")
def _bin_of(d2, edges2):
    """Smallest k with d2 <= edges2[k] (edges2 sorted); len(edges2) if none."""
    lo = 0
    hi = edges2.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if edges2[mid] < d2:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, inline="always")
def _accumulate(hist, ca, cb, d, d2, w, edges2, radii, kernel_h):
    if kernel_h <= 0.0:
        k = _bin_of(d2, edges2)
        if k < edges2.shape[0]:
            hist[ca, cb, k] += w
    else:
        # Epanechnikov kernel of half-width h at every radius within h of d.
        nr = radii.shape[0]
        k = _bin_of((d - kernel_h) * (d - kernel_h) if d > kernel_h else 0.0, edges2)
        while k < nr and radii[k] < d + kernel_h:
            u = (radii[k] - d) / kernel_h
            if u > -1.0 and u < 1.0:
                hist[ca, cb, k] += w * 0.75 * (1.0 - u * u) / kernel_h
            k += 1


@njit(parallel=True, cache=True)
def _pair_hist(xs, ys, codes, bnd, tidx, start, nx, ny, n_types, edges2, reach2, radii, kernel_h,
               mode, rect, iso_tab, iso_R, cov, cov_step, cov_P, cov0, n_chunks):
    """Weighted histogram over all ordered pairs (i != j) with d <= reach.

    hist[c_i, c_j, k] accumulates e_ij for pairs in bin k (d in (r_{k-1}, r_k]),
    or e_ij * kernel(r_k - d) when kernel_h > 0. Pairs are visited once via a
    half stencil and both orders are accumulated. Grid rows are interleaved
    over chunks so that clustered data balance across threads.
    """
    nb = edges2.shape[0]
    out = np.zeros((n_chunks, n_types, n_types, nb))
    r0 = radii[0]
    uniform = nb >= 2
    step = (radii[nb - 1] - r0) / (nb - 1) if nb >= 2 else 1.0
    inv_step = 1.0 / step if step > 0 else 0.0
    for k in range(1, nb):
        if abs(radii[k] - radii[k - 1] - step) > 1e-9 * step:
            uniform = False
    for c in prange(n_chunks):
        hist = out[c]
        for cy in range(c, ny, n_chunks):
            for cx in range(nx):
                cell = cy * nx + cx
                s0 = start[cell]
                s1 = start[cell + 1]
                for i in range(s0, s1):
                    xi = xs[i]
                    yi = ys[i]
                    ci = codes[i]
                    for nb_k in range(5):
                        if nb_k == 0:
                            ox = 0
                            oy = 0
                        elif nb_k == 1:
                            ox = 1
                            oy = 0
                        elif nb_k == 2:
                            ox = -1
                            oy = 1
                        elif nb_k == 3:
                            ox = 0
                            oy = 1
                        else:
                            ox = 1
                            oy = 1
                        qx = cx + ox
                        qy = cy + oy
                        if qx < 0 or qx >= nx or qy >= ny:
                            continue
                        q = qy * nx + qx
                        j0 = start[q]
                        j1 = start[q + 1]
                        if nb_k == 0:
                            j0 = i + 1
                        for j in range(j0, j1):
                            dx = xs[j] - xi
                            dy = ys[j] - yi
                            d2 = dx * dx + dy * dy
                            if d2 > reach2:
                                continue
                            d = math.sqrt(d2)
                            cj = codes[j]
                            wij = _edge_weight(mode, xi, yi, bnd[i], tidx[i], d, dx, dy, rect,
                                               iso_tab, iso_R, cov, cov_step, cov_P, cov0)
                            wji = _edge_weight(mode, xs[j], ys[j], bnd[j], tidx[j], d, -dx, -dy, rect,
                                               iso_tab, iso_R, cov, cov_step, cov_P, cov0)
                            if kernel_h > 0.0:
                                _accumulate(hist, ci, cj, d, d2, wij, edges2, radii, kernel_h)
                                _accumulate(hist, cj, ci, d, d2, wji, edges2, radii, kernel_h)
                            else:
                                # one bin lookup for both orders
                                k = _bin_guessed(d, d2, edges2, r0, inv_step, uniform)
                                if k < nb:
                                    hist[ci, cj, k] += wij
                                    hist[cj, ci, k] += wji
    return out.sum(axis=0)


# --------------------------------------------------------------------------
# Polygon windows: isotropic tables and set covariance
# --------------------------------------------------------------------------
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


_THETA0 = 0.7133  # reference direction for the inside/outside walk (avoids axis-aligned degeneracy)


@njit(cache=True, inline="always")
def _edge_circle_angles(ax, ay, ddx, ddy, rho, angs, na):
    """Append to ``angs[na:]`` the angles (from ``_THETA0``, in [0, 2π)) where the
    circle of radius ``rho`` about the origin crosses the edge (a, a + d),
    ``a`` relative to the centre; returns the new count."""
    A = ddx * ddx + ddy * ddy
    B = 2.0 * (ax * ddx + ay * ddy)
    C = ax * ax + ay * ay - rho * rho
    disc = B * B - 4.0 * A * C
    if disc > 0.0:
        sq = math.sqrt(disc)
        for s in range(2):
            t = (-B - sq) / (2.0 * A) if s == 0 else (-B + sq) / (2.0 * A)
            if t >= 0.0 and t < 1.0:
                angs[na] = (math.atan2(ay + t * ddy, ax + t * ddx) - _THETA0) % (2.0 * math.pi)
                na += 1
    return na


@njit(cache=True)
def _circle_frac_poly(px, py, rho, ex0, ey0, ex1, ey1, cand):
    """Exact fraction of the circle (px, py, rho) inside the polygon whose
    edges near the point are ``cand``; (px, py) must be inside the polygon."""
    m = cand.shape[0]
    angs = np.empty(2 * m + 1)
    na = 0
    two_pi = 2.0 * math.pi
    ux = math.cos(_THETA0)
    uy = math.sin(_THETA0)
    inside = True
    for k in range(m):
        e = cand[k]
        ax = ex0[e] - px
        ay = ey0[e] - py
        ddx = ex1[e] - ex0[e]
        ddy = ey1[e] - ey0[e]
        if ddx == 0.0 and ddy == 0.0:
            continue
        na = _edge_circle_angles(ax, ay, ddx, ddy, rho, angs, na)
        # crossing of the radial segment p -> p + rho * u (status at angle 0)
        den = ux * ddy - uy * ddx
        if den != 0.0:
            s_ray = (ax * ddy - ay * ddx) / den
            t_edge = (ax * uy - ay * ux) / den
            if s_ray >= 0.0 and s_ray <= rho and t_edge >= 0.0 and t_edge < 1.0:
                inside = not inside
    if na == 0:
        return 1.0 if inside else 0.0
    a = np.sort(angs[:na])
    total = 0.0
    prev = 0.0
    st = inside
    for k in range(na):
        if st:
            total += a[k] - prev
        prev = a[k]
        st = not st
    if st:
        total += two_pi - prev
    return total / two_pi


@njit(parallel=True, cache=True)
def _iso_tables(px, py, bnd, cptr, cedges, ex0, ey0, ex1, ey1, R, G):
    """Per point: circle fraction inside the polygon at G radii b + (R - b) u².

    Same arithmetic as _circle_frac_poly, organised for many radii: each
    candidate edge's distance range [dmin, dmax] from the point is computed
    once, so a radius only intersects the edges it can cross; the status at
    the reference angle comes from the sorted crossings of the reference ray.
    """
    nbp = px.shape[0]
    tab = np.ones((nbp, G))
    two_pi = 2.0 * math.pi
    ux = math.cos(_THETA0)
    uy = math.sin(_THETA0)
    for p in prange(nbp):
        cand = cedges[cptr[p]:cptr[p + 1]]
        m = cand.shape[0]
        X = px[p]
        Y = py[p]
        dmin = np.empty(m)
        dmax = np.empty(m)
        ray = np.empty(m)
        nr = 0
        for k in range(m):
            e = cand[k]
            ax = ex0[e] - X
            ay = ey0[e] - Y
            ddx = ex1[e] - ex0[e]
            ddy = ey1[e] - ey0[e]
            A = ddx * ddx + ddy * ddy
            t = 0.0
            if A > 0:
                t = min(1.0, max(0.0, -(ax * ddx + ay * ddy) / A))
            qx = ax + t * ddx
            qy = ay + t * ddy
            dmin[k] = math.sqrt(qx * qx + qy * qy)
            dmax[k] = max(math.sqrt(ax * ax + ay * ay), math.sqrt((ax + ddx) ** 2 + (ay + ddy) ** 2))
            den = ux * ddy - uy * ddx
            if den != 0.0:
                s_ray = (ax * ddy - ay * ddx) / den
                t_edge = (ax * uy - ay * ux) / den
                if s_ray >= 0.0 and t_edge >= 0.0 and t_edge < 1.0:
                    ray[nr] = s_ray
                    nr += 1
        rays = np.sort(ray[:nr])
        angs = np.empty(2 * m + 1)
        b = bnd[p]
        for g in range(1, G):
            u = g / (G - 1)
            rho = b + (R - b) * u * u
            if rho <= 0.0:
                continue
            inside = (np.searchsorted(rays, rho, side="right") % 2) == 0
            na = 0
            for k in range(m):
                if dmin[k] > rho or dmax[k] < rho:
                    continue
                e = cand[k]
                ddx = ex1[e] - ex0[e]
                ddy = ey1[e] - ey0[e]
                if ddx == 0.0 and ddy == 0.0:
                    continue
                na = _edge_circle_angles(ex0[e] - X, ey0[e] - Y, ddx, ddy, rho, angs, na)
            if na == 0:
                tab[p, g] = 1.0 if inside else 0.0
                continue
            for k in range(1, na):          # insertion sort: na is small, no allocation
                v = angs[k]
                q = k - 1
                while q >= 0 and angs[q] > v:
                    angs[q + 1] = angs[q]
                    q -= 1
                angs[q + 1] = v
            total = 0.0
            prev = 0.0
            st = inside
            for k in range(na):
                if st:
                    total += angs[k] - prev
                prev = angs[k]
                st = not st
            if st:
                total += two_pi - prev
            tab[p, g] = total / two_pi
    return tab


@njit(parallel=True, cache=True)
def _min_seg_dist(px, py, cptr, cedges, ex0, ey0, ex1, ey1):
    n = px.shape[0]
    out = np.full(n, np.inf)
    for p in prange(n):
        best = np.inf
        for k in range(cptr[p], cptr[p + 1]):
            e = cedges[k]
            ax = ex0[e]
            ay = ey0[e]
            dx = ex1[e] - ax
            dy = ey1[e] - ay
            L2 = dx * dx + dy * dy
            t = 0.0
            if L2 > 0:
                t = ((px[p] - ax) * dx + (py[p] - ay) * dy) / L2
                t = min(1.0, max(0.0, t))
            qx = ax + t * dx - px[p]
            qy = ay + t * dy - py[p]
            dd = math.sqrt(qx * qx + qy * qy)
            if dd < best:
                best = dd
        out[p] = best
    return out


@njit(cache=True, inline="always")
def _point_segment_distance(px, py, ax, ay, bx, by):
    """Distance from p to the segment ab, with GEOS's formula (Distance::pointToSegment)."""
    dx = bx - ax
    dy = by - ay
    L2 = dx * dx + dy * dy
    if L2 == 0.0:
        return math.sqrt((px - ax) * (px - ax) + (py - ay) * (py - ay))
    r = ((px - ax) * dx + (py - ay) * dy) / L2
    if r <= 0.0:
        return math.sqrt((px - ax) * (px - ax) + (py - ay) * (py - ay))
    if r >= 1.0:
        return math.sqrt((px - bx) * (px - bx) + (py - by) * (py - by))
    s = ((ay - py) * dx - (ax - px) * dy) / L2
    return abs(s) * math.sqrt(L2)


@njit(cache=True)
def _edge_buckets(ex0, ey0, ex1, ey1, R, gx0, gy0, cs, nx, ny):
    """Edges per grid cell (CSR, increasing edge index in every cell).

    Edge e is listed in every cell that can hold a point within ``R`` of it:
    for each row of cells, the part of the edge within R of the row (in y)
    gives an x range, widened by R. Conservative (it may list more).
    """
    ne = ex0.shape[0]
    start = np.zeros(nx * ny + 1, dtype=np.int64)
    items = np.empty(0, dtype=np.int64)
    fill = start[:0].copy()
    for rep in range(2):
        if rep == 1:
            for k in range(nx * ny):
                start[k + 1] += start[k]
            items = np.empty(start[nx * ny], dtype=np.int64)
            fill = start[:-1].copy()
        for e in range(ne):
            x0, y0, x1, y1 = ex0[e], ey0[e], ex1[e], ey1[e]
            r0 = max(0, int(math.floor((min(y0, y1) - R - gy0) / cs)))
            r1 = min(ny - 1, int(math.floor((max(y0, y1) + R - gy0) / cs)))
            for r in range(r0, r1 + 1):
                b0 = gy0 + r * cs - R
                b1 = gy0 + (r + 1) * cs + R
                if y1 == y0:
                    xa, xb = min(x0, x1), max(x0, x1)
                else:
                    ta = min(1.0, max(0.0, (b0 - y0) / (y1 - y0)))
                    tb = min(1.0, max(0.0, (b1 - y0) / (y1 - y0)))
                    xa = x0 + ta * (x1 - x0)
                    xb = x0 + tb * (x1 - x0)
                    if xa > xb:
                        xa, xb = xb, xa
                c0 = max(0, int(math.floor((xa - R - gx0) / cs)))
                c1 = min(nx - 1, int(math.floor((xb + R - gx0) / cs)))
                for c in range(c0, c1 + 1):
                    k = r * nx + c
                    if rep == 0:
                        start[k + 1] += 1
                    else:
                        items[fill[k]] = e
                        fill[k] += 1
    return start, items


@njit(cache=True, inline="always")
def _point_cell(px, py, gx0, gy0, cs, nx, ny):
    """Grid cell of a point, or -1 when the point is outside the grid."""
    fx = (px - gx0) / cs
    fy = (py - gy0) / cs
    if not (fx >= 0.0 and fy >= 0.0 and fx < nx and fy < ny):
        return -1
    return min(int(fy), ny - 1) * nx + min(int(fx), nx - 1)


@njit(parallel=True, cache=True)
def _bucket_candidates(x, y, gx0, gy0, cs, nx, ny, bstart, bitems, ex0, ey0, ex1, ey1, reach, tol):
    """Per point, the edges of its grid cell within ``reach`` (CSR, increasing
    edge index) and a flag for points with an edge whose distance is within
    ``tol`` of ``reach`` (too close to call against GEOS's rounding)."""
    n = x.shape[0]
    cnt = np.zeros(n + 1, dtype=np.int64)
    amb = np.zeros(n, dtype=np.bool_)
    lo = reach - tol
    hi = reach + tol
    for p in prange(n):
        k = _point_cell(x[p], y[p], gx0, gy0, cs, nx, ny)
        if k < 0:
            continue
        c = 0
        for q in range(bstart[k], bstart[k + 1]):
            e = bitems[q]
            d = _point_segment_distance(x[p], y[p], ex0[e], ey0[e], ex1[e], ey1[e])
            if d <= hi:
                c += 1
                if d > lo:
                    amb[p] = True
        cnt[p + 1] = c
    for p in range(n):
        cnt[p + 1] += cnt[p]
    out = np.empty(cnt[n], dtype=np.int64)
    for p in prange(n):
        k = _point_cell(x[p], y[p], gx0, gy0, cs, nx, ny)
        if k < 0:
            continue
        c = cnt[p]
        for q in range(bstart[k], bstart[k + 1]):
            e = bitems[q]
            if _point_segment_distance(x[p], y[p], ex0[e], ey0[e], ex1[e], ey1[e]) <= hi:
                out[c] = e
                c += 1
    return cnt, out, amb


@njit(cache=True)
def _replace_rows(ptr, items, rows, rptr, ritems):
    """CSR ``(ptr, items)`` with row ``rows[k]`` (increasing) replaced by
    ``ritems[rptr[k]:rptr[k + 1]]``."""
    n = ptr.shape[0] - 1
    cnt = ptr[1:] - ptr[:-1]
    for k in range(rows.shape[0]):
        cnt[rows[k]] = rptr[k + 1] - rptr[k]
    new_ptr = np.zeros(n + 1, dtype=np.int64)
    for p in range(n):
        new_ptr[p + 1] = new_ptr[p] + cnt[p]
    out = np.empty(new_ptr[n], dtype=np.int64)
    k = 0
    for p in range(n):
        if k < rows.shape[0] and rows[k] == p:
            out[new_ptr[p]:new_ptr[p + 1]] = ritems[rptr[k]:rptr[k + 1]]
            k += 1
        else:
            out[new_ptr[p]:new_ptr[p + 1]] = items[ptr[p]:ptr[p + 1]]
    return new_ptr, out


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
    cell (1M points: 2.4 s): edges are bucketed on a grid of cells of side
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


@njit(cache=True)
def _scanline_fill(x0, y0, x1, y1, H, W):
    """Even-odd raster of polygon edges (pixel units): pixel (r, c) is inside
    when its centre (c + 0.5, r + 0.5) is; O(edges x rows spanned + pixels)."""
    ne = x0.shape[0]
    cnt = np.zeros(H + 1, dtype=np.int64)
    for e in range(ne):
        ya = min(y0[e], y1[e])
        yb = max(y0[e], y1[e])
        r0 = max(0, int(math.ceil(ya - 0.5)))
        r1 = min(H - 1, int(math.ceil(yb - 0.5)) - 1)   # centres in [ya, yb)
        for r in range(r0, r1 + 1):
            cnt[r + 1] += 1
    for r in range(H):
        cnt[r + 1] += cnt[r]
    xs = np.empty(cnt[H])
    fill = cnt[:H].copy()
    for e in range(ne):
        ya = min(y0[e], y1[e])
        yb = max(y0[e], y1[e])
        r0 = max(0, int(math.ceil(ya - 0.5)))
        r1 = min(H - 1, int(math.ceil(yb - 0.5)) - 1)
        for r in range(r0, r1 + 1):
            yc = r + 0.5
            xs[fill[r]] = x0[e] + (yc - y0[e]) * (x1[e] - x0[e]) / (y1[e] - y0[e])
            fill[r] += 1
    out = np.zeros((H, W), dtype=np.bool_)
    for r in range(H):
        row = np.sort(xs[cnt[r]:cnt[r + 1]])
        for k in range(0, row.shape[0] - 1, 2):
            c0 = max(0, int(math.ceil(row[k] - 0.5)))
            c1 = min(W - 1, int(math.ceil(row[k + 1] - 0.5)) - 1)
            for c in range(c0, c1 + 1):
                out[r, c] = True
    return out


def set_covariance(window, reach_um, *, pixel_um=None):
    """Set covariance γ(v) = |W ∩ (W + v)| of a polygon window on a grid, by FFT.

    The window is rasterised at pixel centres (``pixel_um``, default
    max(min(reach/64, sqrt(bbox area / 4e6)), sqrt(bbox area / 16e6)), so the raster has 4–16M
    pixels) and zero-padded by ``reach_um`` so the circular FFT correlation
    equals the linear one for |v_x|, |v_y| <= reach. Error: γ is exact for the
    raster; the raster differs from W by about perimeter × pixel area, so
    relative errors of γ(0)/γ(v) are O(pixel × perimeter / |W|) (≈ 1e-3 for a
    1 mm disc at 1.5 µm pixels; see tests).

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
    from scipy import fft

    win = _as_window(window)
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


# --------------------------------------------------------------------------
# Core engine
# --------------------------------------------------------------------------
def _n_chunks():
    return max(1, min(256, 8 * numba.get_num_threads()))


@dataclass
class _EdgeSetup:
    """Per-point edge-correction data for the numba kernels (one point set)."""
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


def _setup_key(x, y, edge_correction, reach):
    return _xy_digest(x, y), edge_correction, float(reach)


def _edge_setup(x, y, win: _Window, edge_correction, reach) -> _EdgeSetup:
    """Edge-correction setup of the points (x, y); memoised for polygon windows
    (the last two point sets), whose boundary work is the costly part."""
    if edge_correction not in _EDGE_MODES:
        raise InputError(f"edge_correction={edge_correction!r}: expected one of {sorted(_EDGE_MODES)}")
    if win.kind == "rect":
        return _compute_edge_setup(x, y, win, edge_correction, reach)
    key = _setup_key(x, y, edge_correction, reach)
    es = _SETUP_MEMO.get(key, win.geom)
    if es is None:
        es = _compute_edge_setup(x, y, win, edge_correction, reach)
        _SETUP_MEMO.put(key, win.geom, es)
    return es


def _memoised_edge_setup(x, y, win: _Window, edge_correction, reach) -> Optional[_EdgeSetup]:
    """The memoised setup of (x, y) if there is one (never computes)."""
    if win.kind == "rect" or edge_correction not in _EDGE_MODES:
        return None
    return _SETUP_MEMO.get(_setup_key(x, y, edge_correction, reach), win.geom)


def _compute_edge_setup(x, y, win: _Window, edge_correction, reach) -> _EdgeSetup:
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
        cptr, cedges, (ex0, ey0, ex1, ey1) = _boundary_candidates(win.geom, x, y, reach)
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
    elif mode == 2:
        mode = 4
        cov, cov_step, P = set_covariance(win.geom, reach)
        cov_P, cov0 = float(P), float(cov[P, P])
    return _EdgeSetup(mode, rect, bnd, tidx, iso_tab, float(reach), cov, float(cov_step), cov_P, cov0)


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


def _k_from_hist(hist_ab, area, n_a, n_b, same, intensity):
    if intensity not in ("unbiased", "naive"):
        raise InputError(f"intensity={intensity!r}: expected 'unbiased' (n(n-1)) or 'naive' (n²)")
    nb = n_b - 1 if (same and intensity == "unbiased") else n_b
    if n_a <= 0 or nb <= 0:
        return np.full(hist_ab.shape[-1], np.nan)
    return area * np.cumsum(hist_ab, axis=-1) / (n_a * nb)


def ripley_k(x_um, y_um, radii_um, window, *, edge_correction="isotropic", intensity="unbiased",
             outside="error") -> np.ndarray:
    """Ripley's K function of one point pattern, edge-corrected, in µm².

    Parameters
    ----------
    x_um, y_um : array_like
        Point coordinates (µm).
    radii_um : array_like
        Strictly increasing radii (µm), each <= half the window's smaller side.
    window : tuple or shapely Polygon
        ``(xmin, ymin, xmax, ymax)`` (µm) or tissue polygon.
    edge_correction : {"isotropic", "translation", "none"}
        See the module docstring.
    intensity : {"unbiased", "naive"}
        λ² estimate n(n−1)/|W|² (default; spatstat, astropy) or n²/|W|².
    outside : {"error", "drop"}
        What to do with points outside the window.

    Returns
    -------
    numpy.ndarray
        K(r) for each radius (µm²); K(r) ≈ πr² for a Poisson pattern.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.uniform(0, 500, 2000), rng.uniform(0, 500, 2000)
    >>> k = ripley_k(x, y, [10, 20], (0, 0, 500, 500))
    >>> bool(np.allclose(k / (np.pi * np.array([10, 20]) ** 2), 1, atol=0.1))
    True
    """
    win = _as_window(window)
    x, y = _as_xy(x_um, y_um)
    radii = _as_radii(radii_um, win)
    keep = _check_inside(win, x, y, outside)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise InputError("ripley_k needs at least 2 points in the window")
    hist = _weighted_pair_hist(x, y, np.zeros(x.size, np.int64), 1, radii, win, edge_correction)
    return _k_from_hist(hist[0, 0], win.area, x.size, x.size, True, intensity)


def ripley_l(x_um, y_um, radii_um, window, *, edge_correction="isotropic", intensity="unbiased",
             outside="error") -> np.ndarray:
    """Besag's L function, ``sqrt(K(r) / π)`` (µm); L(r) ≈ r under CSR.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.uniform(0, 500, 2000), rng.uniform(0, 500, 2000)
    >>> bool(np.allclose(ripley_l(x, y, [20], (0, 0, 500, 500)), 20, atol=1.0))
    True
    """
    k = ripley_k(x_um, y_um, radii_um, window, edge_correction=edge_correction,
                 intensity=intensity, outside=outside)
    return np.sqrt(np.maximum(k, 0.0) / np.pi)


def cross_k(xa, ya, xb, yb, radii_um, window, *, edge_correction="isotropic", outside="error") -> np.ndarray:
    """Cross-type K function K_ab(r) (µm²): expected number of b points within
    r of a typical a point, divided by the b intensity.

    ``K_ab(r) = |W| / (n_a n_b) Σ_{i∈a} Σ_{j∈b} e_ij 1(d_ij <= r)``; the
    isotropic weight is that of the a point (as spatstat's ``Kcross``). a and
    b must be different cells (coincident pairs at distance 0 are counted).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> xa, ya, xb, yb = (rng.uniform(0, 400, 1500) for _ in range(4))
    >>> k = cross_k(xa, ya, xb, yb, [20], (0, 0, 400, 400))
    >>> bool(abs(k[0] / (np.pi * 400) - 1) < 0.15)
    True
    """
    win = _as_window(window)
    xa, ya = _as_xy(xa, ya, "type a points")
    xb, yb = _as_xy(xb, yb, "type b points")
    radii = _as_radii(radii_um, win)
    ka = _check_inside(win, xa, ya, outside, "type a points")
    kb = _check_inside(win, xb, yb, outside, "type b points")
    xa, ya, xb, yb = xa[ka], ya[ka], xb[kb], yb[kb]
    x = np.concatenate([xa, xb])
    y = np.concatenate([ya, yb])
    codes = np.r_[np.zeros(xa.size, np.int64), np.ones(xb.size, np.int64)]
    hist = _weighted_pair_hist(x, y, codes, 2, radii, win, edge_correction)
    return _k_from_hist(hist[0, 1], win.area, xa.size, xb.size, False, "naive")


def cross_l(xa, ya, xb, yb, radii_um, window, *, edge_correction="isotropic", outside="error") -> np.ndarray:
    """Cross-type L function ``sqrt(K_ab / π)`` (µm); ≈ r under independence.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> xa, ya, xb, yb = (rng.uniform(0, 400, 1500) for _ in range(4))
    >>> bool(abs(cross_l(xa, ya, xb, yb, [20], (0, 0, 400, 400))[0] - 20) < 1.5)
    True
    """
    k = cross_k(xa, ya, xb, yb, radii_um, window, edge_correction=edge_correction, outside=outside)
    return np.sqrt(np.maximum(k, 0.0) / np.pi)


def _stoyan_bandwidth(n, area):
    # spatstat's default for pcf: Epanechnikov half-width 0.15 / sqrt(λ)
    return 0.15 / math.sqrt(n / area)


def pair_correlation(x, y, radii_um, window, *, bandwidth_um=None, edge_correction="translation",
                     xb=None, yb=None, intensity="unbiased", outside="error") -> np.ndarray:
    """Pair correlation function g(r) (dimensionless; 1 under CSR), kernel estimate.

    ``g(r) = |W| / (2π r n_a n_b') Σ_{i≠j} e_ij κ_h(r − d_ij)`` with the
    Epanechnikov kernel κ_h of half-width ``bandwidth_um`` (default Stoyan's
    rule 0.15/sqrt(λ), as spatstat's ``pcf``). With ``xb, yb`` the cross-type
    pcf g_ab of points (x, y) = a against b.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> x, y = rng.uniform(0, 600, 3000), rng.uniform(0, 600, 3000)
    >>> g = pair_correlation(x, y, [20, 40], (0, 0, 600, 600))
    >>> bool(np.all(np.abs(g - 1) < 0.15))
    True
    """
    win = _as_window(window)
    xa, ya = _as_xy(x, y)
    radii = _as_radii(radii_um, win)
    ka = _check_inside(win, xa, ya, outside)
    xa, ya = xa[ka], ya[ka]
    cross = xb is not None or yb is not None
    if cross:
        xb_, yb_ = _as_xy(xb, yb, "type b points")
        kb = _check_inside(win, xb_, yb_, outside, "type b points")
        xb_, yb_ = xb_[kb], yb_[kb]
        xx = np.concatenate([xa, xb_])
        yy = np.concatenate([ya, yb_])
        codes = np.r_[np.zeros(xa.size, np.int64), np.ones(xb_.size, np.int64)]
        ntyp, nb, same = 2, xb_.size, False
    else:
        xx, yy, codes, ntyp, nb, same = xa, ya, np.zeros(xa.size, np.int64), 1, xa.size, True
    if bandwidth_um is None:
        h = _stoyan_bandwidth(xx.size if not cross else nb, win.area)
    else:
        h = float(bandwidth_um)
        if not h > 0:
            raise InputError(f"bandwidth_um must be > 0 (got {bandwidth_um})")
    hist = _weighted_pair_hist(xx, yy, codes, ntyp, radii, win, edge_correction, kernel_h=h)
    hab = hist[0, 1] if cross else hist[0, 0]
    if intensity not in ("unbiased", "naive"):
        raise InputError(f"intensity={intensity!r}: expected 'unbiased' or 'naive'")
    nbp = nb - 1 if (same and intensity == "unbiased") else nb
    return win.area * hab / (2 * np.pi * radii * xa.size * nbp)


def g_cross(xa, ya, xb, yb, radii_um, *, window=None, outside="error") -> np.ndarray:
    """Nearest-neighbour distance distribution G_ab(r): fraction of a points
    whose nearest b point is within r.

    Without ``window`` the raw empirical CDF. With ``window`` the border
    (reduced-sample) correction: only a points at least r from the window
    boundary count at radius r, ``G(r) = #{d_i <= r, b_i >= r} / #{b_i >= r}``
    (NaN where no a point qualifies).

    Examples
    --------
    >>> g_cross([0.0, 10.0], [0.0, 0.0], [3.0], [0.0], [2, 3, 8])
    array([0. , 0.5, 1. ])
    """
    xa, ya = _as_xy(xa, ya, "type a points")
    xb, yb = _as_xy(xb, yb, "type b points")
    win = _as_window(window) if window is not None else None
    radii = _as_radii(radii_um, win, check_max=False)
    if win is not None:
        ka = _check_inside(win, xa, ya, outside, "type a points")
        kb = _check_inside(win, xb, yb, outside, "type b points")
        xa, ya, xb, yb = xa[ka], ya[ka], xb[kb], yb[kb]
    d, _ = cKDTree(np.c_[xb, yb]).query(np.c_[xa, ya], k=1)
    if win is None:
        ds = np.sort(d)
        return np.searchsorted(ds, radii, side="right") / d.size
    if win.kind == "rect":
        b0 = win.bounds
        bd = np.minimum(np.minimum(xa - b0[0], b0[2] - xa), np.minimum(ya - b0[1], b0[3] - ya))
    else:
        import shapely
        bd = shapely.distance(win.geom.boundary, shapely.points(xa, ya))
    out = np.empty(radii.size)
    for k, r in enumerate(radii):
        m = bd >= r
        out[k] = np.mean(d[m] <= r) if m.any() else np.nan
    return out


# --------------------------------------------------------------------------
# Cell tables
# --------------------------------------------------------------------------
def _table_xy_types(cells, phenotype_col, types):
    if not isinstance(cells, pd.DataFrame):
        raise InputError("cells: expected a pandas DataFrame with x_um, y_um and a phenotype column")
    if len(cells) == 0:
        raise InputError("cells: the table is empty; expected at least one cell")
    for c in ("x_um", "y_um", phenotype_col):
        if c not in cells.columns:
            raise InputError(f"cells: column {c!r} is missing (have {list(cells.columns)[:12]}); "
                             "rename or pass phenotype_col=")
    if "cell_id" in cells.columns and cells["cell_id"].duplicated().any():
        n = int(cells["cell_id"].duplicated().sum())
        raise InputError(f"cells: column 'cell_id' has {n} duplicated ids; cell ids must be unique")
    x, y = _as_xy(cells["x_um"].to_numpy(), cells["y_um"].to_numpy(), "cells x_um/y_um")
    ph = cells[phenotype_col]
    # factorize once (fast for millions of rows), then map the few uniques;
    # missing values get code -1, which spares a separate isna pass
    raw, uniq = pd.factorize(ph, sort=False)
    if (raw < 0).any():
        raise InputError(f"cells: column {phenotype_col!r} has {int(ph.isna().sum())} missing phenotypes; "
                         "fill them (e.g. 'other') first")
    uniq_s = [str(u) for u in uniq]
    if types is None:
        if isinstance(ph.dtype, pd.CategoricalDtype):
            present = set(uniq_s)
            types = [str(t) for t in ph.cat.categories if str(t) in present]
        else:
            types = sorted(set(uniq_s))
    else:
        types = [str(t) for t in types]
        missing = [t for t in types if t not in set(uniq_s)]
        if missing:
            raise InputError(f"cells: phenotypes {missing} not found in column {phenotype_col!r} "
                             f"(have {sorted(set(uniq_s))[:12]})")
    lut = {t: i for i, t in enumerate(types)}
    lut_arr = np.array([lut.get(u, -1) for u in uniq_s], dtype=np.int64)
    codes = lut_arr[raw]
    return x, y, codes, types


def cross_l_all_pairs(cells, radii_um, window, *, phenotype_col="phenotype", types=None,
                      edge_correction="isotropic", progress=None, statistic="cross_L",
                      intensity="unbiased", outside="error") -> pd.DataFrame:
    """Cross-L (or cross-K) for ALL ordered phenotype pairs in one pass over neighbour pairs.

    One numba pass over the pairs within max(r) fills ``hist[type_a, type_b, r]``
    with edge-correction weights; a cumulative sum gives K for every pair.
    Cells whose phenotype is not in ``types`` are ignored. For a == b the
    univariate K/L of that type (``n_a (n_a − 1)`` with ``intensity="unbiased"``).

    Parameters
    ----------
    cells : pandas.DataFrame
        Cell table with ``x_um``, ``y_um`` and ``phenotype_col``.
    radii_um : array_like
        Strictly increasing radii (µm).
    window : tuple or shapely Polygon
        Window (µm).
    phenotype_col : str
        Phenotype column.
    types : list of str, optional
        Phenotypes to use (default: all, sorted or categorical order).
    edge_correction : {"isotropic", "translation", "none"}
    progress : callable, optional
        ``progress(step, done, total)``.
    statistic : {"cross_L", "cross_K"}

    Returns
    -------
    pandas.DataFrame
        Tidy: ``statistic, type_a, type_b, r_um, value, n_a, n_b``
        (``len(types)² × len(radii)`` rows); NaN where a type has < 1 cell
        (or < 2 for a == b).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cells = pd.DataFrame({"x_um": rng.uniform(0, 300, 600), "y_um": rng.uniform(0, 300, 600),
    ...                       "phenotype": rng.choice(["T", "tumour"], 600)})
    >>> df = cross_l_all_pairs(cells, [10, 20], (0, 0, 300, 300))
    >>> df.shape, list(df.columns)
    ((8, 7), ['statistic', 'type_a', 'type_b', 'r_um', 'value', 'n_a', 'n_b'])
    """
    if statistic not in ("cross_L", "cross_K"):
        raise InputError(f"statistic={statistic!r}: expected 'cross_L' or 'cross_K'")
    win = _as_window(window)
    radii = _as_radii(radii_um, win)
    x, y, codes, types = _table_xy_types(cells, phenotype_col, types)
    sel = codes >= 0
    keep = _check_inside(win, x[sel], y[sel], outside, "cells")
    idx = np.flatnonzero(sel)[keep]
    x, y, codes = x[idx], y[idx], codes[idx]
    T = len(types)
    counts = np.bincount(codes, minlength=T)
    hist = _weighted_pair_hist(x, y, codes, T, radii, win, edge_correction, progress=progress)
    rows = []
    R = radii.size
    for a in range(T):
        for b in range(T):
            k = _k_from_hist(hist[a, b], win.area, counts[a], counts[b], a == b, intensity)
            val = np.sqrt(np.maximum(k, 0) / np.pi) if statistic == "cross_L" else k
            rows.append(pd.DataFrame({"statistic": statistic, "type_a": types[a], "type_b": types[b],
                                      "r_um": radii, "value": val,
                                      "n_a": np.full(R, counts[a]), "n_b": np.full(R, counts[b])}))
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------
# Random labelling envelopes
# --------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _count_pairs_rows(xs, ys, start, nx, ny, reach2):
    cnt = np.zeros(ny, dtype=np.int64)
    for cy in prange(ny):
        c = 0
        for cx in range(nx):
            cell = cy * nx + cx
            for i in range(start[cell], start[cell + 1]):
                for nb_k in range(5):
                    ox = 0 if nb_k == 0 or nb_k == 3 else (1 if nb_k != 2 else -1)
                    oy = 0 if nb_k <= 1 else 1
                    qx = cx + ox
                    qy = cy + oy
                    if qx < 0 or qx >= nx or qy >= ny:
                        continue
                    q = qy * nx + qx
                    j0 = i + 1 if nb_k == 0 else start[q]
                    for j in range(j0, start[q + 1]):
                        dx = xs[j] - xs[i]
                        dy = ys[j] - ys[i]
                        if dx * dx + dy * dy <= reach2:
                            c += 1
        cnt[cy] = c
    return cnt


@njit(parallel=True, cache=True)
def _fill_pairs_rows(xs, ys, start, nx, ny, reach2, offs, pi, pj):
    for cy in prange(ny):
        c = offs[cy]
        for cx in range(nx):
            cell = cy * nx + cx
            for i in range(start[cell], start[cell + 1]):
                for nb_k in range(5):
                    ox = 0 if nb_k == 0 or nb_k == 3 else (1 if nb_k != 2 else -1)
                    oy = 0 if nb_k <= 1 else 1
                    qx = cx + ox
                    qy = cy + oy
                    if qx < 0 or qx >= nx or qy >= ny:
                        continue
                    q = qy * nx + qx
                    j0 = i + 1 if nb_k == 0 else start[q]
                    for j in range(j0, start[q + 1]):
                        dx = xs[j] - xs[i]
                        dy = ys[j] - ys[i]
                        if dx * dx + dy * dy <= reach2:
                            pi[c] = i
                            pj[c] = j
                            c += 1


def neighbour_pairs(x_um, y_um, reach_um):
    """All unordered pairs (i < j in cell-list order, returned as original
    indices) with distance <= ``reach_um``, via a cell list (no all-pairs matrix).

    Returns
    -------
    i, j : numpy.ndarray of int64
        Original indices of each pair (each unordered pair once).

    Examples
    --------
    >>> i, j = neighbour_pairs([0, 1, 5], [0, 0, 0], 2.0)
    >>> sorted(zip(i.tolist(), j.tolist()))
    [(0, 1)]
    """
    x, y = _as_xy(x_um, y_um)
    grid = _cell_list(x, y, reach_um)
    r2 = float(reach_um) ** 2
    return _grid_pairs(grid, r2, _count_pairs_rows(grid.xs, grid.ys, grid.start, grid.nx, grid.ny, r2))


def _grid_pairs(grid: _Grid, r2, cnt):
    """Pairs within sqrt(r2) of a cell list (original indices) given the
    per-row pair counts of :func:`_count_pairs_rows` (see :func:`neighbour_pairs`)."""
    offs = np.zeros(grid.ny + 1, dtype=np.int64)
    np.cumsum(cnt, out=offs[1:])
    pi = np.empty(offs[-1], dtype=np.int64)
    pj = np.empty(offs[-1], dtype=np.int64)
    _fill_pairs_rows(grid.xs, grid.ys, grid.start, grid.nx, grid.ny, r2, offs, pi, pj)
    return grid.order[pi], grid.order[pj]


@njit(cache=True)
def _pair_weights(x, y, pi, pj, bnd, tidx, mode, rect, iso_tab, iso_R, cov, cov_step, cov_P, cov0):
    m = pi.shape[0]
    wij = np.empty(m)
    wji = np.empty(m)
    dd = np.empty(m)
    for k in range(m):
        i = pi[k]
        j = pj[k]
        dx = x[j] - x[i]
        dy = y[j] - y[i]
        d = math.sqrt(dx * dx + dy * dy)
        dd[k] = d
        wij[k] = _edge_weight(mode, x[i], y[i], bnd[i], tidx[i], d, dx, dy, rect, iso_tab, iso_R, cov,
                              cov_step, cov_P, cov0)
        wji[k] = _edge_weight(mode, x[j], y[j], bnd[j], tidx[j], d, -dx, -dy, rect, iso_tab, iso_R, cov,
                              cov_step, cov_P, cov0)
    return dd, wij, wji


@njit(parallel=True, cache=True)
def _labelled_sums(pi, pj, dd, wij, wji, labels, a, b, edges2, radii, kernel_h):
    """For each simulation row of ``labels``: sum over ordered pairs with
    label[i] == a and label[j] == b of their weight, binned like _pair_hist."""
    nsim = labels.shape[0]
    nb = edges2.shape[0]
    out = np.zeros((nsim, 1, 1, nb))
    for s in prange(nsim):
        lab = labels[s]
        h = out[s]
        for k in range(pi.shape[0]):
            li = lab[pi[k]]
            lj = lab[pj[k]]
            d = dd[k]
            if li == a and lj == b:
                _accumulate(h, 0, 0, d, d * d, wij[k], edges2, radii, kernel_h)
            if lj == a and li == b:
                _accumulate(h, 0, 0, d, d * d, wji[k], edges2, radii, kernel_h)
    return out[:, 0, 0, :]


_LANES = 64    # simulations per bit mask (uint64)


def _lane_groups(m, n):
    """Split m simulations into groups of <= 64 (one bit mask each), one group
    per numba thread where possible so that the groups run in parallel, while
    the groups' masks (16 bytes per cell) stay within ~256 MB for n cells."""
    g = max(-(-m // _LANES), min(m, numba.get_num_threads(), max(1, int(2.5e8 // (16 * max(n, 1))))))
    return np.array([q * m // g for q in range(g + 1)], dtype=np.int64)


@njit(parallel=True, cache=True)
def _label_bits(labels, s, t, gstart, only_s_t):
    """Per group g and cell c: bit l of ``sbits[g, c]`` (``tbits[g, c]``) set when
    ``labels[gstart[g] + l, c]`` is ``s`` (``t``). ``only_s_t``: every label is
    s or t, so the t bits are the lanes' bits that are not s bits."""
    m, n = labels.shape
    G = gstart.shape[0] - 1
    sbits = np.zeros((G, n), dtype=np.uint64)
    tbits = np.zeros((G, n), dtype=np.uint64)
    blk = 4096     # a block of masks stays in L1 while the label rows stream past
    nblk = (n + blk - 1) // blk
    for gb in prange(G * nblk):
        g = gb // nblk
        c0 = (gb % nblk) * blk
        c1 = min(n, c0 + blk)
        sg = sbits[g]
        tg = tbits[g]
        for q in range(gstart[g], gstart[g + 1]):
            sh = np.uint64(q - gstart[g])
            row = labels[q]
            for c in range(c0, c1):
                sg[c] |= np.uint64(row[c] == s) << sh
            if not only_s_t:
                for c in range(c0, c1):
                    tg[c] |= np.uint64(row[c] == t) << sh
        if only_s_t:
            lanes = gstart[g + 1] - gstart[g]
            full = ~np.uint64(0) if lanes == 64 else (np.uint64(1) << np.uint64(lanes)) - np.uint64(1)
            for c in range(c0, c1):
                tg[c] = full & ~sg[c]
    return sbits, tbits


@njit(parallel=True, cache=True)
def _labelled_sums_lanes(rowptr, other, w, binidx, sbits, tbits, gstart, nb):
    """For each simulation (group g, lane l): sum of ``w`` over the directed
    entries (row cell c, other cell o) with bit l set in ``sbits[g, c]`` and in
    ``tbits[g, o]``, binned by ``binidx``.

    The simulations of a group share one pass over the rows (the CSR is read
    once per group, not once per simulation) and are updated together, one
    vector lane each (absent entries add +0.0, which leaves a sum of positive
    weights bit-identical); groups run in parallel. Every simulation adds its
    entries in row order then entry order, as a loop over that simulation
    alone would, so its sums are bit-identical to that loop's.
    """
    n = rowptr.shape[0] - 1
    G = gstart.shape[0] - 1
    L = 1
    for g in range(G):
        L = max(L, gstart[g + 1] - gstart[g])
    acc = np.zeros((G, nb, L))
    one = np.uint64(1)
    for g in prange(G):
        h = acc[g]
        for c in range(n):
            sc = sbits[g, c]
            if sc == 0:
                continue
            for e in range(rowptr[c], rowptr[c + 1]):
                hit = sc & tbits[g, other[e]]
                if hit == 0:
                    continue
                we = w[e]
                hk = h[binidx[e]]
                for l in range(L):
                    hk[l] += we if (hit >> np.uint64(l)) & one else 0.0
    out = np.empty((gstart[G], nb))
    for g in range(G):
        for q in range(gstart[g], gstart[g + 1]):
            out[q] = acc[g, :, q - gstart[g]]
    return out


def _labelled_sums_rows(csr, labels, s, t, nb, only_s_t=False):
    """For each simulation row of ``labels``: sum of the CSR weights over the
    directed entries (row cell c, other cell o) with label[c] == s and
    label[o] == t, binned (see :func:`_rows_by_label_side`). ``only_s_t``:
    the labels are all s or t (a faster bit packing)."""
    rowptr, other, w, binidx = csr
    gstart = _lane_groups(labels.shape[0], labels.shape[1])
    sbits, tbits = _label_bits(labels, s, t, gstart, bool(only_s_t))
    return _labelled_sums_lanes(rowptr, other, w, binidx, sbits, tbits, gstart, nb)


@njit(cache=True, inline="always")
def _bin_guessed(d, d2, edges2, r0, inv_step, uniform):
    """``_bin_of(d2, edges2)`` without a binary search's unpredictable branches
    when the radii are evenly spaced: an arithmetic guess, then an exact fix-up."""
    nb = edges2.shape[0]
    if not uniform:
        return _bin_of(d2, edges2)
    k = int(math.ceil((d - r0) * inv_step))
    if k < 0:
        k = 0
    elif k > nb:
        k = nb
    while k > 0 and edges2[k - 1] >= d2:
        k -= 1
    while k < nb and edges2[k] < d2:
        k += 1
    return k


def _radii_spacing(radii):
    """(uniform, r0, 1 / step) of the radii for :func:`_bin_guessed`."""
    nb = radii.size
    if nb < 2:
        return False, float(radii[0]), 0.0
    step = (radii[-1] - radii[0]) / (nb - 1)
    uniform = bool(step > 0 and np.all(np.abs(np.diff(radii) - step) <= 1e-9 * step))
    return uniform, float(radii[0]), (1.0 / step if step > 0 else 0.0)


@njit(parallel=True, cache=True)
def _row_bounds(xs, ys, order, start, nx, ny, reach2, n_chunks):
    """Per cell (original index): number of other points within reach (3 x 3
    cells). Grid rows are interleaved over chunks so that clustered cells
    balance across threads."""
    n = xs.shape[0]
    cnt = np.zeros(n, dtype=np.int64)
    for ch in prange(n_chunks):
        for cy in range(ch, ny, n_chunks):
            for cx in range(nx):
                for p in range(start[cy * nx + cx], start[cy * nx + cx + 1]):
                    c = 0
                    for qy in range(max(cy - 1, 0), min(cy + 2, ny)):
                        for qx in range(max(cx - 1, 0), min(cx + 2, nx)):
                            for q in range(start[qy * nx + qx], start[qy * nx + qx + 1]):
                                dx = xs[q] - xs[p]
                                dy = ys[q] - ys[p]
                                if dx * dx + dy * dy <= reach2 and q != p:
                                    c += 1
                    cnt[order[p]] = c
    return cnt


@njit(parallel=True, cache=True)
def _fill_rows(xs, ys, bnd, tidx, order, start, nx, ny, reach2, edges2, r0, inv_step, uniform, centre_side,
               mode, rect, iso_tab, iso_R, cov, cov_step, cov_P, cov0, rowptr, other, w, bins, used, n_chunks):
    """Fill the rows of :func:`_rows_by_label_side` (offsets ``rowptr``); ``used``
    gets each row's entry count (below its bound when a distance rounds into no bin)."""
    nb = edges2.shape[0]
    for ch in prange(n_chunks):
        for cy in range(ch, ny, n_chunks):
            for cx in range(nx):
                for p in range(start[cy * nx + cx], start[cy * nx + cx + 1]):
                    e = rowptr[order[p]]
                    cap = rowptr[order[p] + 1] - e      # the row's bound (never written past)
                    c = 0
                    for qy in range(max(cy - 1, 0), min(cy + 2, ny)):
                        for qx in range(max(cx - 1, 0), min(cx + 2, nx)):
                            for q in range(start[qy * nx + qx], start[qy * nx + qx + 1]):
                                dx = xs[q] - xs[p]
                                dy = ys[q] - ys[p]
                                if dx * dx + dy * dy > reach2 or q == p or c >= cap:
                                    continue
                                # _pair_weights' arithmetic for the pair (i, j) = (min, max): its
                                # x[j] - x[i] is +-dx exactly (IEEE subtraction is antisymmetric), so
                                # d, and the offset from either centre, are bit for bit the same
                                d = math.sqrt(dx * dx + dy * dy)
                                k = _bin_guessed(d, d * d, edges2, r0, inv_step, uniform)
                                if k >= nb:
                                    continue
                                # the centre weighs the pair by its own circle
                                if centre_side:
                                    wt = _edge_weight(mode, xs[p], ys[p], bnd[p], tidx[p], d, dx, dy, rect,
                                                      iso_tab, iso_R, cov, cov_step, cov_P, cov0)
                                else:
                                    wt = _edge_weight(mode, xs[q], ys[q], bnd[q], tidx[q], d, -dx, -dy, rect,
                                                      iso_tab, iso_R, cov, cov_step, cov_P, cov0)
                                other[e + c] = order[q]
                                w[e + c] = wt
                                bins[e + c] = k
                                c += 1
                    used[order[p]] = c


def _row_counts(grid: _Grid, reach):
    """Per cell (original index): number of other cells within ``reach`` (sums to twice the pairs)."""
    return _row_bounds(grid.xs, grid.ys, grid.order, grid.start, grid.nx, grid.ny, float(reach) ** 2, _n_chunks())


def _rows_by_label_side(grid: _Grid, es: _EdgeSetup, radii, centre_side, row_counts):
    """Directed neighbour entries grouped by row cell (CSR) for :func:`_labelled_sums_rows`.

    Rows are the cells in their original order. ``centre_side=True``: rows
    are the centres of the statistic (weight ``w(row -> other)``); ``False``:
    rows are the partners (weight ``w(other -> row)``, the centre's weight).
    Each entry keeps its radius bin ``k`` (smallest k with d² <= r_k², d the
    rounded distance, as :func:`_bin_of`), so a simulation is a masked sum
    with no distance work.

    Entries come from the cell list directly (no pair list, two parallel
    passes). Row ``order[p]`` lists the points q within reach of sorted
    position p in increasing q (the 3 x 3 cells around p's cell in row-major
    order), which is the order in which the pair list of
    :func:`neighbour_pairs` (increasing (i, j), i < j) meets p's pairs: each
    row, and so every sum over the rows, is bit-identical to a CSR filled
    from that list.
    """
    n = grid.xs.size
    rowptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_counts, out=rowptr[1:])
    other = np.empty(rowptr[-1], dtype=np.int32)
    w = np.empty(rowptr[-1], dtype=np.float64)
    bins = np.empty(rowptr[-1], dtype=np.uint8 if radii.size < 256 else np.int32)
    used = np.empty(n, dtype=np.int64)
    bnd, tidx = es.kernel_args(grid.order)
    uniform, r0, inv_step = _radii_spacing(radii)
    # float(reach) ** 2 as _row_counts (and neighbour_pairs) square it
    _fill_rows(grid.xs, grid.ys, bnd, tidx, grid.order, grid.start, grid.nx, grid.ny, float(es.reach) ** 2,
               radii * radii, r0, inv_step, uniform, bool(centre_side), es.mode, es.rect, es.iso_tab, es.reach,
               es.cov, es.cov_step, es.cov_P, es.cov0, rowptr, other, w, bins, used, _n_chunks())
    if used.sum() < rowptr[-1]:
        # a distance within reach whose square rounds past the last radius: drop the gaps
        keep = np.arange(rowptr[-1]) - np.repeat(rowptr[:-1], np.diff(rowptr)) < np.repeat(used, np.diff(rowptr))
        other, w, bins = other[keep], w[keep], bins[keep]
        rowptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(used, out=rowptr[1:])
    return rowptr, other, w, bins


def random_labelling_envelope(cells, statistic="cross_L", type_a=None, type_b=None, radii_um=None,
                              window=None, n_sim=199, seed=0, phenotype_col="phenotype", alpha=0.05, *,
                              edge_correction="isotropic", population="pair", bandwidth_um=None,
                              outside="error", progress=None, max_pairs=25_000_000) -> pd.DataFrame:
    """Envelope of a cross statistic under random labelling (locations fixed, labels permuted).

    Random labelling, not CSR: the cell locations are kept and the phenotype
    labels permuted, so inhomogeneous tissue does not create spurious
    association. ``population="pair"`` (default, Diggle's bivariate random
    labelling) permutes the a/b labels among the a ∪ b cells only, so it asks
    whether a sits closer to b than b-or-a cells sit to each other;
    ``population="all"`` permutes the labels of all cells in the table.

    Neighbour pairs within max(r) (+ bandwidth for pcf) and their
    edge-correction weights are computed once; each simulation is a weighted
    sum over pairs whose permuted labels match.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``x_um``, ``y_um``, ``phenotype_col``.
    statistic : {"cross_L", "cross_K", "cross_pcf"}
    type_a, type_b : str
        Phenotypes (a == b gives the univariate statistic of a).
    radii_um : array_like
        Strictly increasing radii (µm).
    window : tuple or shapely Polygon
    n_sim : int
        Number of permutations (199 gives a 5 % two-sided pointwise envelope).
    seed : int
    alpha : float
        Two-sided level of the pointwise envelope.
    edge_correction : {"isotropic", "translation", "none"}
    population : {"pair", "all"}
        Which cells' labels are permuted (see above).
    bandwidth_um : float, optional
        Kernel half-width for ``"cross_pcf"`` (default Stoyan's rule).
    max_pairs : int
        Above this many neighbour pairs the pairs are not stored; every
        simulation then re-runs the cell-list pass (memory stays linear).

    Returns
    -------
    pandas.DataFrame
        ``r_um, value, mean, lo, hi, p_value, p_global`` where ``lo``/``hi`` are
        the k-th smallest / largest simulated values with
        k = max(1, floor(alpha/2 · (n_sim + 1))) (pointwise envelope),
        ``p_value`` the two-sided pointwise Monte-Carlo rank p per r,
        ``min(1, 2 · min(1 + #sim >= obs, 1 + #sim <= obs) / (n_sim + 1))``,
        and ``p_global`` the global MAD test over all r: deviation
        ``T = max_r |S(r) − mean_sim(r)|``, ``p = (1 + #T_sim >= T_obs) / (n_sim + 1)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cells = pd.DataFrame({"x_um": rng.uniform(0, 300, 400), "y_um": rng.uniform(0, 300, 400),
    ...                       "phenotype": rng.choice(["A", "B"], 400)})
    >>> env = random_labelling_envelope(cells, "cross_L", "A", "B", [10, 20], (0, 0, 300, 300), n_sim=19)
    >>> list(env.columns)
    ['r_um', 'value', 'mean', 'lo', 'hi', 'p_value', 'p_global']
    """
    if statistic not in ("cross_L", "cross_K", "cross_pcf"):
        raise InputError(f"statistic={statistic!r}: expected 'cross_L', 'cross_K' or 'cross_pcf'")
    if type_a is None or type_b is None or radii_um is None:
        raise InputError("random_labelling_envelope needs type_a, type_b and radii_um")
    if population not in ("pair", "all"):
        raise InputError(f"population={population!r}: expected 'pair' or 'all'")
    n_sim = int(n_sim)
    if n_sim < 1:
        raise InputError(f"n_sim must be >= 1 (got {n_sim})")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1) (got {alpha})")
    if edge_correction not in _EDGE_MODES:
        raise InputError(f"edge_correction={edge_correction!r}: expected one of {sorted(_EDGE_MODES)}")
    win = _as_window(window)
    radii = _as_radii(radii_um, win)
    x, y, codes, types = _table_xy_types(cells, phenotype_col, None)
    for t in (type_a, type_b):
        if str(t) not in types:
            raise InputError(f"cells: phenotype {t!r} not found in column {phenotype_col!r} (have {types[:12]})")
    a = types.index(str(type_a))
    b = types.index(str(type_b))
    keep = _check_inside(win, x, y, outside, "cells")
    x, y, codes = x[keep], y[keep], codes[keep]
    # The setup of all cells in the window may be memoised (cross_l_all_pairs on the
    # same table, window and reach); a pair's cells then take their rows of it.
    x_in, y_in = x, y
    pair = None
    if population == "pair":
        pair = (codes == a) | (codes == b)
        x, y, codes = x[pair], y[pair], codes[pair]
    n_a = int((codes == a).sum())
    n_b = int((codes == b).sum())
    same = a == b
    if n_a < 1 or n_b < (2 if same else 1):
        raise InputError(f"random_labelling_envelope: too few cells of {type_a!r} ({n_a}) or {type_b!r} ({n_b})")
    kernel_h = 0.0
    if statistic == "cross_pcf":
        kernel_h = float(bandwidth_um) if bandwidth_um is not None else _stoyan_bandwidth(n_b, win.area)
    reach = float(radii[-1] + kernel_h)
    es = _memoised_edge_setup(x_in, y_in, win, edge_correction, reach)
    if es is None:
        es = _edge_setup(x, y, win, edge_correction, reach)
    elif pair is not None:
        es = es.subset(pair)
    del x_in, y_in
    rng = np.random.default_rng(seed)
    sims = np.empty((n_sim, radii.size))
    grid = _cell_list(x, y, reach)
    report(progress, "neighbour pairs", 0, 1)
    two_labels = kernel_h == 0.0 and population == "pair" and not same
    r2 = float(reach) ** 2                          # as neighbour_pairs squares it
    if two_labels:
        row_counts = _row_counts(grid, reach)       # per cell: its directed entries
        n_pairs = int(row_counts.sum()) // 2
    else:
        row_counts = _count_pairs_rows(grid.xs, grid.ys, grid.start, grid.nx, grid.ny, r2)   # per grid row
        n_pairs = int(row_counts.sum())
    batch = max(1, min(n_sim, int(2e8 // max(n_pairs + x.size, 1)), 64))
    if n_pairs <= max_pairs and two_labels:
        # Two labels only (a, b): visit the rows of the rarer label and sum
        # the weights of their neighbours carrying the other label (26 bytes/pair).
        # Same sums as _labelled_sums, in another order (equal to ~1e-15 relative).
        s_lab, t_lab = (a, b) if n_a <= n_b else (b, a)
        csr = _rows_by_label_side(grid, es, radii, s_lab == a, row_counts)
        # a batch's one-byte labels take n_cells bytes per simulation (at most ~256 MB)
        batch = max(1, min(n_sim, _LANES * numba.get_num_threads(), int(2.5e8 // max(x.size, 1))))

        def stat_hist(labels):
            return _labelled_sums_rows(csr, labels, s_lab, t_lab, radii.size, only_s_t=True)
    elif n_pairs <= max_pairs:
        # Pairs and weights once (40 bytes/pair); each simulation is a masked weighted sum.
        pi, pj = _grid_pairs(grid, r2, row_counts)
        dd, wij, wji = _pair_weights(x, y, pi, pj, es.bnd, es.tidx, es.mode, es.rect, es.iso_tab, reach,
                                     es.cov, es.cov_step, es.cov_P, es.cov0)

        def stat_hist(labels):
            return _labelled_sums(pi, pj, dd, wij, wji, labels, a, b, radii * radii, radii, kernel_h)
    else:
        # Too many pairs to keep: one cell-list pass per simulation (memory linear in cells).
        def stat_hist(labels):
            out = np.empty((labels.shape[0], radii.size))
            for s_, lab in enumerate(labels):
                c3 = np.where(lab == a, 0, np.where(lab == b, 1, 2)).astype(np.int64)
                h = _hist_with_setup(grid, np.ascontiguousarray(c3[grid.order]), 3, radii, es, kernel_h)
                out[s_] = h[0, 1] if not same else h[0, 0]
            return out
    report(progress, "neighbour pairs", 1, 1)
    # Generator.permutation draws the same random numbers whatever the dtype of a
    # 1-D array, so one-byte codes give the same labellings, faster, and they are
    # cache-friendlier in the kernels.
    lab_codes = codes.astype(np.int8) if len(types) <= 127 else codes
    obs = stat_hist(lab_codes[None, :])[0]
    done = 0
    while done < n_sim:
        m = min(batch, n_sim - done)
        labels = np.empty((m, lab_codes.size), dtype=lab_codes.dtype)
        for q in range(m):
            labels[q] = rng.permutation(lab_codes)
        sims[done:done + m] = stat_hist(labels)
        done += m
        report(progress, "random labelling", done, n_sim)
    nbp = n_b - 1 if same else n_b

    def finish(h):
        if statistic == "cross_pcf":
            return win.area * h / (2 * np.pi * radii * n_a * nbp)
        k = win.area * np.cumsum(h, axis=-1) / (n_a * nbp)
        return k if statistic == "cross_K" else np.sqrt(np.maximum(k, 0) / np.pi)

    value = finish(obs)
    sim_v = finish(sims)
    srt = np.sort(sim_v, axis=0)
    k = max(1, int(math.floor(alpha / 2 * (n_sim + 1))))
    k = min(k, n_sim)
    lo = srt[k - 1]
    hi = srt[n_sim - k]
    n_ge = (sim_v >= value[None, :] - 1e-12 * np.abs(value[None, :])).sum(axis=0)
    n_le = (sim_v <= value[None, :] + 1e-12 * np.abs(value[None, :])).sum(axis=0)
    p_point = np.minimum(1.0, 2.0 * np.minimum(n_ge + 1, n_le + 1) / (n_sim + 1))
    mean = sim_v.mean(axis=0)
    t_obs = np.nanmax(np.abs(value - mean))
    t_sim = np.nanmax(np.abs(sim_v - mean[None, :]), axis=1)
    p_global = (1 + np.sum(t_sim >= t_obs)) / (n_sim + 1)
    return pd.DataFrame({"r_um": radii, "value": value, "mean": mean, "lo": lo, "hi": hi,
                         "p_value": p_point, "p_global": np.full(radii.size, p_global)})
