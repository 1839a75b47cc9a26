"""Numba kernels on polygon edges (µm): exact circle–polygon arc fractions,
per-point tables of them over radii, point–segment distances as GEOS computes
them, edge bucketing on a grid, and an even-odd scanline raster.

Edges are four arrays ``ex0, ey0, ex1, ey1`` (one entry per ring segment, see
:func:`tibspace.stats.windows._polygon_edges`); candidate edges per point are
CSR arrays ``(cptr, cedges)``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

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


@njit(cache=True, inline="always")
def _ray_hit(ax, ay, ddx, ddy, ux, uy):
    """Distance along the reference ray (unit direction u from the centre) at
    which it crosses the edge (a, a + d), ``a`` relative to the centre; -1 if
    it does not cross it."""
    den = ux * ddy - uy * ddx
    if den == 0.0:
        return -1.0
    s_ray = (ax * ddy - ay * ddx) / den
    t_edge = (ax * uy - ay * ux) / den
    if s_ray >= 0.0 and t_edge >= 0.0 and t_edge < 1.0:
        return s_ray
    return -1.0


@njit(cache=True, inline="always")
def _arc_fraction(angs, na, inside):
    """Fraction of a circle inside the polygon from its ``na`` sorted crossing
    angles (measured from the reference direction) and whether the circle is
    inside at the reference direction."""
    two_pi = 2.0 * math.pi
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
    return total / two_pi


@njit(cache=True)
def _circle_frac_poly(px, py, rho, ex0, ey0, ex1, ey1, cand):
    """Exact fraction of the circle (px, py, rho) inside the polygon whose
    edges near the point are ``cand``; (px, py) must be inside the polygon."""
    m = cand.shape[0]
    angs = np.empty(2 * m + 1)
    na = 0
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
        s_ray = _ray_hit(ax, ay, ddx, ddy, ux, uy)
        if s_ray >= 0.0 and s_ray <= rho:
            inside = not inside
    if na == 0:
        return 1.0 if inside else 0.0
    return _arc_fraction(np.sort(angs[:na]), na, inside)


@njit(cache=True)
def _edge_ranges(X, Y, cand, ex0, ey0, ex1, ey1):
    """Per candidate edge its nearest and farthest distance from (X, Y), and
    the sorted distances at which the reference ray from (X, Y) crosses the
    candidate edges."""
    m = cand.shape[0]
    ux = math.cos(_THETA0)
    uy = math.sin(_THETA0)
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
        s_ray = _ray_hit(ax, ay, ddx, ddy, ux, uy)
        if s_ray >= 0.0:
            ray[nr] = s_ray
            nr += 1
    return dmin, dmax, np.sort(ray[:nr])


@njit(cache=True, inline="always")
def _circle_crossings(X, Y, rho, cand, dmin, dmax, ex0, ey0, ex1, ey1, angs):
    """Angles (into ``angs``) where the circle (X, Y, rho) crosses the candidate
    edges whose distance range contains rho; returns their count."""
    na = 0
    for k in range(cand.shape[0]):
        if dmin[k] > rho or dmax[k] < rho:
            continue
        e = cand[k]
        ddx = ex1[e] - ex0[e]
        ddy = ey1[e] - ey0[e]
        if ddx == 0.0 and ddy == 0.0:
            continue
        na = _edge_circle_angles(ex0[e] - X, ey0[e] - Y, ddx, ddy, rho, angs, na)
    return na


@njit(cache=True, inline="always")
def _insertion_sort(a, n):
    """Sort ``a[:n]`` in place (n is small: no allocation, unlike np.sort)."""
    for k in range(1, n):
        v = a[k]
        q = k - 1
        while q >= 0 and a[q] > v:
            a[q + 1] = a[q]
            q -= 1
        a[q + 1] = v


@njit(parallel=True, cache=True)
def _iso_tables(px, py, bnd, cptr, cedges, ex0, ey0, ex1, ey1, R, G):
    """Per point: circle fraction inside the polygon at G radii b + (R - b) u².

    The arithmetic of :func:`_circle_frac_poly`, organised for many radii: each
    candidate edge's distance range from the point is computed once, so a
    radius only intersects the edges it can cross, and the status at the
    reference angle comes from the sorted crossings of the reference ray.
    """
    nbp = px.shape[0]
    tab = np.ones((nbp, G))
    for p in prange(nbp):
        cand = cedges[cptr[p]:cptr[p + 1]]
        dmin, dmax, rays = _edge_ranges(px[p], py[p], cand, ex0, ey0, ex1, ey1)
        angs = np.empty(2 * cand.shape[0] + 1)
        b = bnd[p]
        for g in range(1, G):
            u = g / (G - 1)
            rho = b + (R - b) * u * u
            if rho <= 0.0:
                continue
            inside = (np.searchsorted(rays, rho, side="right") % 2) == 0
            na = _circle_crossings(px[p], py[p], rho, cand, dmin, dmax, ex0, ey0, ex1, ey1, angs)
            if na == 0:
                tab[p, g] = 1.0 if inside else 0.0
            else:
                _insertion_sort(angs, na)
                tab[p, g] = _arc_fraction(angs, na, inside)
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
