"""Areas of polygon sets inside small convex cells (numba kernels).

The nearest-segment band areas of the barrier analysis split thin bands
around the tumour boundary by the Voronoi cells of points sampled along the
boundary. The cells are convex and small, so each area is computed here
directly from the few set edges that cross the cell (Green's theorem), in one
pass, instead of overlaying GEOS polygons cell by cell:

    area(C ∩ P) = ∮ x dy over (∂P inside C)  +  ∮ x dy over (∂C inside P)

The first term clips every edge of P (rings oriented with the interior on
their left) to the convex cell C (Cyrus–Beck). Where an edge enters or
leaves C it marks where ∂C passes into or out of P: just before an entering
crossing, and just after a leaving one, the cell boundary is inside P, so
the second term walks ∂C from each leaving crossing to the next entering
one. A cell with no crossing is wholly inside or outside P: the caller
says which (it may know from the cell's point), else one point-in-polygon
test of a vertex settles it. Degenerate
contacts (a vertex of P on ∂C, an edge of P along an edge of C) and
inconsistent crossings are reported so the caller can use GEOS for those
cells: the kernel never guesses.

The cells (:func:`voronoi_cells_in_boxes`) are Voronoi cells clipped to a
box about each point, built point by point from the neighbours that can
reach the box.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# status codes returned per cell by :func:`_areas_in_cells`
OK, NO_CROSSING, DEGENERATE = 0, 1, 2
_MAX_EVENTS = 512


def voronoi_cells_in_boxes(xy, x0, y0, x1, y1, *, chunk: int = 65_536):
    """Voronoi cell of every point, clipped to its box ``[x0, x1] x [y0, y1]``.

    Each cell is built on its own: its box is cut by the bisector with every
    other point that can still reach it (a point farther than twice the
    cell's current radius cannot), found ring by ring in a uniform grid. No
    global triangulation, so no Qhull (which holds the GIL and, on points
    along curves, costs ~5 s per 400k points); exact for any input.
    Returns CSR convex counter-clockwise polygons ``(ptr, vx, vy)``; exact
    duplicate points get the same cell, each counted once by the caller's
    de-duplication.

    Examples
    --------
    >>> xy = np.array([[0., 0.], [2., 0.], [0., 2.], [2., 2.], [1., 1.]])
    >>> lo, hi = np.full(5, -1.0), np.full(5, 3.0)
    >>> ptr, vx, vy = voronoi_cells_in_boxes(xy, lo, lo, hi, hi)
    >>> polygon_areas(ptr, vx, vy).round(6).tolist()   # the centre cell is the diamond
    [3.5, 3.5, 3.5, 3.5, 2.0]
    """
    xy = np.ascontiguousarray(xy, dtype=np.float64)
    n = len(xy)
    x0, y0, x1, y1 = (np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float64), (n,))) for v in (x0, y0, x1, y1))
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0), np.zeros(0)
    half = np.maximum(np.maximum(xy[:, 0] - x0, x1 - xy[:, 0]), np.maximum(xy[:, 1] - y0, y1 - xy[:, 1]))
    lo = xy.min(axis=0)
    ext = np.maximum(xy.max(axis=0) - lo, 1e-9)
    # bins of about one typical box half-width / 4, capped to ~4 bins per point
    size = float(max(np.median(half) / 4.0, np.sqrt(ext[0] * ext[1] / (4.0 * n)), 1e-6))
    nx, ny = int(ext[0] // size) + 1, int(ext[1] // size) + 1
    bptr, order = _point_grid(xy[:, 0], xy[:, 1], lo[0], lo[1], size, nx, ny)
    ptrs, vxs, vys = [np.zeros(1, np.int64)], [], []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        cnt, sx, sy = _cells_chunk(xy[:, 0], xy[:, 1], a, b, x0, y0, x1, y1, bptr, order, lo[0], lo[1],
                                   size, nx, ny, 1e-6)
        if (cnt < 0).any():
            raise RuntimeError(f"Voronoi cell with more than {_MAX_VERTS} vertices (point {a + np.argmin(cnt)})")
        keep = np.arange(_MAX_VERTS)[None, :] < cnt[:, None]
        vxs.append(sx[keep]); vys.append(sy[keep])
        ptrs.append(ptrs[-1][-1] + np.cumsum(cnt))
    return np.concatenate(ptrs), np.concatenate(vxs), np.concatenate(vys)


_MAX_VERTS = 48


@njit(cache=True)
def _point_grid(x, y, gx0, gy0, size, nx, ny):
    n = x.size
    b = np.empty(n, np.int64)
    cnt = np.zeros(nx * ny + 1, np.int64)
    for i in range(n):
        bi = min(max(int((x[i] - gx0) / size), 0), nx - 1)
        bj = min(max(int((y[i] - gy0) / size), 0), ny - 1)
        b[i] = bj * nx + bi
        cnt[b[i] + 1] += 1
    for k in range(nx * ny):
        cnt[k + 1] += cnt[k]
    fill = cnt[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[fill[b[i]]] = i
        fill[b[i]] += 1
    return cnt, order


@njit(cache=True)
def _radius2(ax, ay, m, qx, qy):
    r = 0.0
    for j in range(m):
        r = max(r, (ax[j] - qx) ** 2 + (ay[j] - qy) ** 2)
    return r


@njit(cache=True)
def _cut_cell(i, ax, ay, m, bx, by, x, y, bptr, order, gx0, gy0, size, nx, ny):
    """Cut the polygon (ax, ay)[:m] around point i by the bisectors with all points
    that can reach it; returns the vertex count (< 3: empty)."""
    qx, qy = x[i], y[i]
    r2 = _radius2(ax, ay, m, qx, qy)
    iq = min(max(int((qx - gx0) / size), 0), nx - 1)
    jq = min(max(int((qy - gy0) / size), 0), ny - 1)
    ring = 0
    while ring <= nx + ny:
        # points in bins `ring` away are >= (ring - 1) * size from q: stop when their
        # bisectors (half that distance away) cannot reach the cell any more
        lim = (ring - 1) * size
        if lim > 0 and lim * lim >= 4.0 * r2:
            break
        for jb in range(max(jq - ring, 0), min(jq + ring, ny - 1) + 1):
            full_row = jb == jq - ring or jb == jq + ring
            step = 1 if full_row else 2 * ring   # inner rows: the ring's two end bins only
            for ib in range(iq - ring, iq + ring + 1, step):
                if ib < 0 or ib >= nx:
                    continue
                bb = jb * nx + ib
                for t in range(bptr[bb], bptr[bb + 1]):
                    p = order[t]
                    dx, dy = qx - x[p], qy - y[p]
                    d2 = dx * dx + dy * dy
                    if d2 == 0.0 or d2 >= 4.0 * r2:
                        continue
                    # keep q's side of the bisector: n·x >= n·mid with n = q - p
                    mx, my = 0.5 * (qx + x[p]), 0.5 * (qy + y[p])
                    c = dx * mx + dy * my
                    cuts = False
                    for j in range(m):
                        if dx * ax[j] + dy * ay[j] < c:
                            cuts = True
                            break
                    if not cuts:   # most candidates: the bisector misses the cell
                        continue
                    m = _clip_halfplane(ax, ay, m, bx, by, dx, dy, c)
                    for j in range(m):
                        ax[j] = bx[j]
                        ay[j] = by[j]
                    if m < 3 or m > ax.size - 8:
                        return m
                    r2 = _radius2(ax, ay, m, qx, qy)
        ring += 1
    return m


@njit(parallel=True, nogil=True, cache=True)
def _cells_chunk(x, y, a, b, x0, y0, x1, y1, bptr, order, gx0, gy0, size, nx, ny, eps):
    """Cells of points a..b-1 into fixed slots (count, x slots, y slots)."""
    n = b - a
    cnt = np.zeros(n, np.int64)
    sx = np.zeros((n, _MAX_VERTS))
    sy = np.zeros((n, _MAX_VERTS))
    n_chunks = 64
    step = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        ax = np.empty(4 * _MAX_VERTS)
        ay = np.empty(4 * _MAX_VERTS)
        bx = np.empty(4 * _MAX_VERTS)
        by = np.empty(4 * _MAX_VERTS)
        for i in range(a + c * step, min(b, a + (c + 1) * step)):
            ax[0], ay[0] = x0[i], y0[i]
            ax[1], ay[1] = x1[i], y0[i]
            ax[2], ay[2] = x1[i], y1[i]
            ax[3], ay[3] = x0[i], y1[i]
            m = _cut_cell(i, ax, ay, 4, bx, by, x, y, bptr, order, gx0, gy0, size, nx, ny)
            m = -1 if m > 4 * _MAX_VERTS - 8 else (_tidy(ax, ay, m, bx, by, eps) if m >= 3 else 0)
            if m > _MAX_VERTS:
                m = -1
            cnt[i - a] = m
            for j in range(max(m, 0)):
                sx[i - a, j] = ax[j]
                sy[i - a, j] = ay[j]
    return cnt, sx, sy


@njit(cache=True)
def polygon_areas(ptr, vx, vy):
    """Shoelace areas of CSR polygons (positive for counter-clockwise)."""
    n = ptr.size - 1
    out = np.zeros(n)
    for i in range(n):
        out[i] = _polygon_area(vx, vy, ptr[i], ptr[i + 1])
    return out


@njit(cache=True)
def _clip_halfplane(ix, iy, m, ox, oy, nx, ny, c):
    """Sutherland–Hodgman: keep nx*x + ny*y >= c of polygon (ix, iy)[:m] into (ox, oy)."""
    k = 0
    for j in range(m):
        j2 = j + 1 if j + 1 < m else 0
        sa = nx * ix[j] + ny * iy[j] - c
        sb = nx * ix[j2] + ny * iy[j2] - c
        if sa >= 0:
            ox[k] = ix[j]
            oy[k] = iy[j]
            k += 1
        if (sa >= 0) != (sb >= 0):
            t = sa / (sa - sb)
            ox[k] = ix[j] + t * (ix[j2] - ix[j])
            oy[k] = iy[j] + t * (iy[j2] - iy[j])
            k += 1
    return k


@njit(cache=True)
def _make_convex(ax, ay, m, bx, by):
    """Drop the vertices where a (nearly) counter-clockwise polygon turns
    clockwise, in place (Graham scan from its lowest vertex, over the given
    order; ``bx``/``by`` are scratch); returns the new vertex count.

    Circumcentres of nearly degenerate triangles carry rounding errors that
    can swap two almost equal vertices of a cell; a removed vertex lies
    within that rounding error of the convex cell."""
    if m < 3:
        return m
    s0 = 0
    for j in range(1, m):
        if ay[j] < ay[s0] or (ay[j] == ay[s0] and ax[j] < ax[s0]):
            s0 = j
    for j in range(m):
        bx[j] = ax[(s0 + j) % m]
        by[j] = ay[(s0 + j) % m]
    k = 0
    for j in range(m + 1):
        x, y = bx[j % m], by[j % m]
        while k >= 2 and ((ax[k - 1] - ax[k - 2]) * (y - ay[k - 2])
                          - (ay[k - 1] - ay[k - 2]) * (x - ax[k - 2])) <= 0.0:
            k -= 1
        if j < m:
            ax[k] = x
            ay[k] = y
            k += 1
    return k


@njit(cache=True)
def _tidy(ax, ay, m, bx, by, eps):
    """Merge vertices within ``eps`` (L1) of the previous one, then drop clockwise
    turns (:func:`_make_convex`); returns the vertex count (0 if < 3)."""
    k = 0
    for j in range(m):
        if k == 0 or abs(ax[j] - ax[k - 1]) + abs(ay[j] - ay[k - 1]) > eps:
            ax[k] = ax[j]
            ay[k] = ay[j]
            k += 1
    while k > 1 and abs(ax[k - 1] - ax[0]) + abs(ay[k - 1] - ay[0]) <= eps:
        k -= 1
    m = _make_convex(ax, ay, k, bx, by)
    return m if m >= 3 else 0


@njit(cache=True)
def _edge_grid(ex0, ey0, ex1, ey1, gx0, gy0, size, nx, ny):
    """Bucket edges into a uniform grid (CSR over bins; an edge is in every bin its box touches)."""
    m = ex0.size
    lo_i = np.empty(m, np.int64)
    lo_j = np.empty(m, np.int64)
    hi_i = np.empty(m, np.int64)
    hi_j = np.empty(m, np.int64)
    cnt = np.zeros(nx * ny + 1, np.int64)
    for e in range(m):
        a = min(max(int((min(ex0[e], ex1[e]) - gx0) / size), 0), nx - 1)
        b = min(max(int((max(ex0[e], ex1[e]) - gx0) / size), 0), nx - 1)
        c = min(max(int((min(ey0[e], ey1[e]) - gy0) / size), 0), ny - 1)
        d = min(max(int((max(ey0[e], ey1[e]) - gy0) / size), 0), ny - 1)
        lo_i[e], hi_i[e], lo_j[e], hi_j[e] = a, b, c, d
        for j in range(c, d + 1):
            for i in range(a, b + 1):
                cnt[j * nx + i + 1] += 1
    for k in range(nx * ny):
        cnt[k + 1] += cnt[k]
    fill = cnt[:-1].copy()
    items = np.empty(cnt[nx * ny], np.int64)
    for e in range(m):
        for j in range(lo_j[e], hi_j[e] + 1):
            for i in range(lo_i[e], hi_i[e] + 1):
                items[fill[j * nx + i]] = e
                fill[j * nx + i] += 1
    return cnt, items, lo_i, lo_j


@njit(cache=True)
def _cell_area_one(s, e, vx, vy, ex0, ey0, ex1, ey1, bptr, items, blo_i, blo_j, gx0, gy0, size, nx, ny,
                   ev_pos, ev_x, ev_y, ev_in, nrm_x, nrm_y, tol):
    """(area of cell ∩ set, status) for the convex CCW cell vx/vy[s:e]."""
    m = e - s
    if m < 3:
        return 0.0, OK
    xmin, xmax, ymin, ymax = _bounds_and_normals(s, m, vx, vy, nrm_x, nrm_y)
    i0 = min(max(int((xmin - gx0) / size), 0), nx - 1)
    i1 = min(max(int((xmax - gx0) / size), 0), nx - 1)
    j0 = min(max(int((ymin - gy0) / size), 0), ny - 1)
    j1 = min(max(int((ymax - gy0) / size), 0), ny - 1)
    area = 0.0
    n_ev = 0
    for bj in range(j0, j1 + 1):
        for bi in range(i0, i1 + 1):
            b = bj * nx + bi
            for q in range(bptr[b], bptr[b + 1]):
                k = items[q]
                # visit each edge once: in the lowest bin shared by the edge and the cell
                if bi != max(blo_i[k], i0) or bj != max(blo_j[k], j0):
                    continue
                ax, ay, bx, by = ex0[k], ey0[k], ex1[k], ey1[k]
                if max(ax, bx) < xmin or min(ax, bx) > xmax or max(ay, by) < ymin or min(ay, by) > ymax:
                    continue
                dx, dy = bx - ax, by - ay
                t_in, t_out = 0.0, 1.0
                j_in, j_out = -1, -1
                reject = False
                for j in range(m):
                    num = nrm_x[j] * (ax - vx[s + j]) + nrm_y[j] * (ay - vy[s + j])
                    den = nrm_x[j] * dx + nrm_y[j] * dy
                    scale = tol * (abs(nrm_x[j]) + abs(nrm_y[j]))
                    # an endpoint of the set edge on the cell boundary: degenerate contact
                    if abs(num) <= scale and _on_cell(ax, ay, s, m, vx, vy, nrm_x, nrm_y, tol):
                        return 0.0, DEGENERATE
                    if abs(num + den) <= scale and _on_cell(bx, by, s, m, vx, vy, nrm_x, nrm_y, tol):
                        return 0.0, DEGENERATE
                    if den == 0.0:
                        if num < 0:
                            reject = True
                            break
                        continue
                    t = -num / den
                    if den > 0:
                        if t > t_in:
                            t_in = t
                            j_in = j
                    else:
                        if t < t_out:
                            t_out = t
                            j_out = j
                    if t_in > t_out:
                        reject = True
                        break
                if reject:
                    continue
                if j_in >= 0 and j_out >= 0 and (t_out - t_in) * (abs(dx) + abs(dy)) <= tol:
                    return 0.0, DEGENERATE   # the edge only grazes the cell (through a vertex)
                x_a, y_a = ax + t_in * dx, ay + t_in * dy
                x_b, y_b = ax + t_out * dx, ay + t_out * dy
                area += 0.5 * (x_a + x_b) * (y_b - y_a)
                if j_in >= 0:
                    n_ev = _push_crossing(n_ev, j_in, x_a, y_a, True, s, m, vx, vy, ev_pos, ev_x, ev_y, ev_in)
                if j_out >= 0 and n_ev >= 0:
                    n_ev = _push_crossing(n_ev, j_out, x_b, y_b, False, s, m, vx, vy, ev_pos, ev_x, ev_y, ev_in)
                if n_ev < 0:
                    return 0.0, DEGENERATE   # more crossings than the scratch holds
    if n_ev == 0:
        return area, NO_CROSSING   # the cell boundary is wholly inside or outside the set
    _sort_crossings(n_ev, ev_pos, ev_x, ev_y, ev_in)
    for a in range(n_ev):
        if ev_in[a] == ev_in[(a + 1) % n_ev]:
            return 0.0, DEGENERATE   # crossings must alternate
    return _cell_boundary_in_set(area, n_ev, s, m, vx, vy, ev_pos, ev_x, ev_y, ev_in), OK


@njit(cache=True, inline="always")
def _bounds_and_normals(s, m, vx, vy, nrm_x, nrm_y):
    """Bounding box of the cell vx/vy[s:s+m]; its inward edge normals into nrm_x/nrm_y."""
    xmin, xmax, ymin, ymax = np.inf, -np.inf, np.inf, -np.inf
    for j in range(s, s + m):
        xmin = min(xmin, vx[j]); xmax = max(xmax, vx[j])
        ymin = min(ymin, vy[j]); ymax = max(ymax, vy[j])
    for j in range(m):
        j2 = j + 1 if j + 1 < m else 0
        # inward (left) normal of edge j of a counter-clockwise polygon
        nrm_x[j] = -(vy[s + j2] - vy[s + j])
        nrm_y[j] = vx[s + j2] - vx[s + j]
    return xmin, xmax, ymin, ymax


@njit(cache=True, inline="always")
def _sort_crossings(n_ev, ev_pos, ev_x, ev_y, ev_in):
    """Sort the crossings along the cell boundary, in place (few: insertion sort)."""
    for a in range(1, n_ev):
        p, x_, y_, f = ev_pos[a], ev_x[a], ev_y[a], ev_in[a]
        b = a - 1
        while b >= 0 and ev_pos[b] > p:
            ev_pos[b + 1], ev_x[b + 1], ev_y[b + 1], ev_in[b + 1] = ev_pos[b], ev_x[b], ev_y[b], ev_in[b]
            b -= 1
        ev_pos[b + 1], ev_x[b + 1], ev_y[b + 1], ev_in[b + 1] = p, x_, y_, f


@njit(cache=True, inline="always")
def _cell_boundary_in_set(area, n_ev, s, m, vx, vy, ev_pos, ev_x, ev_y, ev_in):
    """Second term added to ``area``: ∮ x dy over ∂C inside P, from each leaving
    crossing to the next (entering) one, along the sorted, alternating crossings."""
    for a in range(n_ev):
        if ev_in[a]:
            continue
        b = (a + 1) % n_ev
        px, py = ev_x[a], ev_y[a]
        ja, jb = int(ev_pos[a]), int(ev_pos[b])
        if ja >= m:
            ja = m - 1
        if jb >= m:
            jb = m - 1
        if not (jb == ja and ev_pos[b] >= ev_pos[a] and (b != a)):
            # walk the cell's vertices from edge ja's end up to edge jb's start
            j = ja
            while True:
                j = j + 1 if j + 1 < m else 0
                qx, qy = vx[s + j], vy[s + j]
                area += 0.5 * (px + qx) * (qy - py)
                px, py = qx, qy
                if j == jb:
                    break
        area += 0.5 * (px + ev_x[b]) * (ev_y[b] - py)
    return area


@njit(cache=True)
def _polygon_area(vx, vy, s, e):
    a = 0.0
    for j in range(s, e):
        k = j + 1 if j + 1 < e else s
        a += vx[j] * vy[k] - vx[k] * vy[j]
    return 0.5 * a


@njit(cache=True)
def _push_crossing(n_ev, j, px, py, entering, s, m, vx, vy, ev_pos, ev_x, ev_y, ev_in):
    """Record a crossing of cell edge j at (px, py); returns the new count (-1: full)."""
    if n_ev >= ev_pos.size:
        return -1
    ev_pos[n_ev] = _position(j, px, py, s, m, vx, vy)
    ev_x[n_ev], ev_y[n_ev], ev_in[n_ev] = px, py, entering
    return n_ev + 1


@njit(cache=True)
def _position(j, px, py, s, m, vx, vy):
    """Position of a point on edge j of the cell as j + fraction along the edge."""
    j2 = j + 1 if j + 1 < m else 0
    ux, uy = vx[s + j2] - vx[s + j], vy[s + j2] - vy[s + j]
    u = ((px - vx[s + j]) * ux + (py - vy[s + j]) * uy) / (ux * ux + uy * uy)
    return j + min(max(u, 0.0), 1.0)


@njit(cache=True)
def _on_cell(px, py, s, m, vx, vy, nrm_x, nrm_y, tol):
    """Is (px, py) on the boundary of the convex cell (within tolerance)?"""
    inside_all = True
    near_one = False
    for j in range(m):
        v = nrm_x[j] * (px - vx[s + j]) + nrm_y[j] * (py - vy[s + j])
        scale = tol * (abs(nrm_x[j]) + abs(nrm_y[j]))
        if v < -scale:
            inside_all = False
        if abs(v) <= scale:
            near_one = True
    return inside_all and near_one


@njit(parallel=True, cache=True)
def _areas_in_cells(ptr, vx, vy, ex0, ey0, ex1, ey1, bptr, items, blo_i, blo_j, gx0, gy0, size, nx, ny, tol,
                    n_chunks):
    n = ptr.size - 1
    area = np.zeros(n)
    status = np.zeros(n, np.int8)
    maxm = 3
    for i in range(n):
        maxm = max(maxm, ptr[i + 1] - ptr[i])
    chunk = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        ev_pos = np.empty(_MAX_EVENTS)
        ev_x = np.empty(_MAX_EVENTS)
        ev_y = np.empty(_MAX_EVENTS)
        ev_in = np.empty(_MAX_EVENTS, np.bool_)
        nrm_x = np.empty(maxm)
        nrm_y = np.empty(maxm)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            a, st = _cell_area_one(ptr[i], ptr[i + 1], vx, vy, ex0, ey0, ex1, ey1, bptr, items, blo_i, blo_j,
                                   gx0, gy0, size, nx, ny, ev_pos, ev_x, ev_y, ev_in, nrm_x, nrm_y, tol)
            area[i] = a
            status[i] = st
    return area, status


def oriented_edges(parts):
    """Edges (x0, y0, x1, y1) of polygon parts, every ring with the interior on its left."""
    import shapely

    parts = np.asarray(parts, dtype=object)
    parts = parts[shapely.get_type_id(parts) == 3] if len(parts) else parts
    if len(parts) == 0:
        z = np.zeros(0)
        return z, z, z, z
    parts = shapely.orient_polygons(parts, exterior_cw=False)
    rings = np.concatenate([shapely.get_exterior_ring(parts),
                            *(shapely.get_interior_ring(parts, k) for k in
                              range(int(shapely.get_num_interior_rings(parts).max())))]) \
        if shapely.get_num_interior_rings(parts).max() > 0 else shapely.get_exterior_ring(parts)
    rings = rings[~shapely.is_missing(rings)]
    xy, idx = shapely.get_coordinates(rings, return_index=True)
    same = idx[1:] == idx[:-1]   # consecutive vertices of one ring (closing vertex repeats the first)
    return xy[:-1, 0][same], xy[:-1, 1][same], xy[1:, 0][same], xy[1:, 1][same]


def areas_in_cells(ptr, vx, vy, parts, *, inside_if_uncrossed=None, n_threads: int = 2):
    """Area of ``parts`` (disjoint polygons) inside each convex CSR cell.

    Exact up to floating point; cells whose boundary the set only touches
    degenerately are computed with GEOS instead.

    Parameters
    ----------
    ptr, vx, vy : ndarray
        Convex counter-clockwise cells in CSR form.
    parts : sequence of shapely Polygon
        Disjoint polygons (other geometry types are ignored).
    inside_if_uncrossed : ndarray of bool, optional
        Per cell: whether it lies inside the set when no set edge crosses it
        (known to a caller whose cell points have a known status); default:
        a point-in-polygon test of the cell's first vertex.
    n_threads : int
        Work split for the numba kernel.

    Examples
    --------
    >>> import shapely
    >>> ptr, vx, vy = np.array([0, 4]), np.array([0., 2, 2, 0]), np.array([0., 0, 2, 2])
    >>> float(areas_in_cells(ptr, vx, vy, [shapely.box(1, 1, 5, 5)])[0])
    1.0
    """
    import shapely

    n = ptr.size - 1
    out = np.zeros(n)
    if n == 0:
        return out
    ex0, ey0, ex1, ey1 = oriented_edges(parts)
    if ex0.size == 0:
        return out
    lo = np.array([min(ex0.min(), ex1.min()), min(ey0.min(), ey1.min())])
    hi = np.array([max(ex0.max(), ex1.max()), max(ey0.max(), ey1.max())])
    ext = np.maximum(hi - lo, 1e-9)
    # ~2 edges per bin on average, bins no smaller than 4 µm
    size = float(max(4.0, np.sqrt(ext[0] * ext[1] / max(ex0.size / 2, 1))))
    nx, ny = int(ext[0] // size) + 1, int(ext[1] // size) + 1
    bptr, items, blo_i, blo_j = _edge_grid(ex0, ey0, ex1, ey1, lo[0], lo[1], size, nx, ny)
    area, status = _areas_in_cells(ptr, vx, vy, ex0, ey0, ex1, ey1, bptr, items, blo_i, blo_j, lo[0], lo[1],
                                   size, nx, ny, 1e-9, max(1, 8 * int(n_threads)))
    out[:] = area
    parts = np.asarray(parts, dtype=object)
    parts = parts[shapely.get_type_id(parts) == 3]
    nc = np.flatnonzero(status == NO_CROSSING)
    if nc.size:
        if inside_if_uncrossed is None:
            union = shapely.MultiPolygon(list(parts))
            shapely.prepare(union)
            inside = shapely.contains_xy(union, vx[ptr[nc]], vy[ptr[nc]])
        else:
            inside = np.asarray(inside_if_uncrossed, bool)[nc]
        out[nc[inside]] += polygon_areas(ptr, vx, vy)[nc[inside]]
    bad = np.flatnonzero(status == DEGENERATE)
    if bad.size:
        # GEOS for degenerate contacts, against the few parts each cell meets
        lens = ptr[bad + 1] - ptr[bad]
        take = np.repeat(ptr[bad], lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
        polys = shapely.polygons(shapely.linearrings(vx[take], vy[take],
                                                     indices=np.repeat(np.arange(bad.size), lens)))
        ci, pi = shapely.STRtree(parts).query(polys, predicate="intersects")
        np.add.at(out, bad[ci], shapely.area(shapely.intersection(polys[ci], parts[pi])))
    return out
