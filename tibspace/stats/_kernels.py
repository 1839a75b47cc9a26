"""Numba kernels over neighbour pairs found with a cell list.

A cell list sorts the points into square grid cells of side >= the largest
distance of interest, so every pair within reach lies in the same or an
adjacent cell; each unordered pair is visited once through a half stencil
(own cell, right, and the three cells of the next row). Memory stays linear
in the number of points: no all-pairs matrix is ever built.

Edge-correction factors ``e_ij`` (see :mod:`tibspace.stats.edge_correction`)
are evaluated per ordered pair by :func:`_edge_weight`; weights are capped at
``_MAX_ISO_WEIGHT`` (spatstat's ``maxweight``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from tibspace.stats._inputs import _as_xy

_MAX_ISO_WEIGHT = 100.0


def _n_chunks():
    return max(1, min(256, 8 * numba.get_num_threads()))


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
def _half_stencil(k):
    """Cell offset (ox, oy) of the k-th of the five cells a cell's pairs are
    sought in (itself, right, and the three cells of the next row), so that
    each unordered pair of neighbouring cells is visited once."""
    if k == 0:
        return 0, 0
    if k == 1:
        return 1, 0
    if k == 2:
        return -1, 1
    if k == 3:
        return 0, 1
    return 1, 1


@njit(cache=True, inline="always")
def _half_neighbour(cx, cy, k, nx, ny):
    """Index of the k-th :func:`_half_stencil` cell of grid cell (cx, cy), -1 outside the grid."""
    ox, oy = _half_stencil(k)
    qx = cx + ox
    qy = cy + oy
    if qx < 0 or qx >= nx or qy >= ny:
        return -1
    return qy * nx + qx


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
                        q = _half_neighbour(cx, cy, nb_k, nx, ny)
                        if q < 0:
                            continue
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
def _pairs_rows(xs, ys, start, nx, ny, reach2, offs, pi, pj, fill, row0, row1):
    """Pairs within sqrt(reach2) per grid row ``row0 <= cy < row1``, each
    unordered pair once (half stencil). ``fill=False``: returns the number of
    pairs of every row; ``fill=True``: writes row cy's pairs (sorted
    positions) to ``pi, pj[offs[cy] - offs[row0]:]`` in the order the count
    visited them."""
    cnt = np.zeros(ny, dtype=np.int64)
    for cy in prange(row0, row1):
        c = offs[cy] - offs[row0] if fill else 0
        for cx in range(nx):
            cell = cy * nx + cx
            for i in range(start[cell], start[cell + 1]):
                for nb_k in range(5):
                    q = _half_neighbour(cx, cy, nb_k, nx, ny)
                    if q < 0:
                        continue
                    j0 = i + 1 if nb_k == 0 else start[q]
                    for j in range(j0, start[q + 1]):
                        dx = xs[j] - xs[i]
                        dy = ys[j] - ys[i]
                        if dx * dx + dy * dy <= reach2:
                            if fill:
                                pi[c] = i
                                pj[c] = j
                            c += 1
        cnt[cy] = c
    return cnt


def _count_pairs_rows(xs, ys, start, nx, ny, reach2):
    """Number of pairs within sqrt(reach2) per grid row (see :func:`_pairs_rows`)."""
    none = np.zeros(0, dtype=np.int64)
    return _pairs_rows(xs, ys, start, nx, ny, reach2, np.zeros(ny, dtype=np.int64), none, none, False, 0, ny)


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


def _grid_pairs(grid: _Grid, r2, cnt, row0: int = 0, row1: int | None = None):
    """Pairs within sqrt(r2) of a cell list (original indices) given the
    per-row pair counts of :func:`_count_pairs_rows` (see :func:`neighbour_pairs`);
    only those of grid rows ``row0 <= cy < row1`` (default all), which are
    that slice of the full list."""
    row1 = grid.ny if row1 is None else int(row1)
    offs = np.zeros(grid.ny + 1, dtype=np.int64)
    np.cumsum(cnt, out=offs[1:])
    m = offs[row1] - offs[row0]
    pi = np.empty(m, dtype=np.int64)
    pj = np.empty(m, dtype=np.int64)
    _pairs_rows(grid.xs, grid.ys, grid.start, grid.nx, grid.ny, r2, offs, pi, pj, True, int(row0), row1)
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
