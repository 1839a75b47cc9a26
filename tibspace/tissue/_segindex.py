"""Exact nearest-segment queries over polylines (µm): :class:`_SegmentIndex`.

Candidate segments come from a KD-tree over the polyline vertices and are
*certified*: a segment of length <= h whose endpoints are both farther than
r_k (the distance to the k-th nearest vertex) is farther than
sqrt(r_k² - h²/4), so once the best exact point-segment distance is below
that bound no unexamined segment can beat it; uncertified points are
re-queried with a larger k. Results equal ``shapely.distance`` to the
polylines to floating point.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy.spatial import cKDTree

from tibspace.errors import InputError


def _ring_or_line_segments(c, closed: bool, n_seg: int):
    """Segments of one polyline ``c`` (m, 2) whose first segment gets index ``n_seg``:
    (start points, end points, segment after each vertex, segment before each vertex)."""
    m = len(c)
    if closed:          # closed ring: m vertices, m segments, vertex j joins j-1 and j
        segs = n_seg + np.arange(m)
        return c, np.roll(c, -1, axis=0), segs, np.roll(segs, 1)
    if m == 1:          # degenerate line: one zero-length segment
        segs = np.array([n_seg])
        return c, c, segs, segs
    # open polyline: m-1 segments, ends have one segment
    segs = n_seg + np.arange(m - 1)
    return c[:-1], c[1:], np.r_[segs, segs[-1]], np.r_[segs[0], segs]


def _polylines_to_segments(coords_list, labels, closed):
    """Concatenated (A, B, label, prev, next, vertices) of all polylines (loop over lines)."""
    A, B, lab, prev_s, next_s, verts = [], [], [], [], [], []
    n_seg = 0
    for c, l, cl in zip(coords_list, labels, closed):
        c = np.asarray(c, dtype=float)
        if cl and len(c) > 1 and np.array_equal(c[0], c[-1]):
            c = c[:-1]
        if len(c) == 0:
            continue
        a, b, nxt, prv = _ring_or_line_segments(c, cl, n_seg)
        A.append(a); B.append(b); lab.append(np.full(len(a), l))
        prev_s.append(prv); next_s.append(nxt); verts.append(c)
        n_seg += len(a)
    if n_seg == 0:
        raise InputError("boundary: no line segments (empty region); nothing to measure "
                         "distances to")
    return tuple(np.concatenate(v) for v in (A, B, lab, prev_s, next_s, verts))


def _open_polylines_to_segments(V, line, vlab):
    """Vectorised :func:`_polylines_to_segments` for open polylines (vertices ``V``
    with their line id ``line``, contiguous per line; ``vlab`` the label of each
    vertex's line): (A, B, label, prev, next, vertices), the same arrays."""
    n = len(V)
    cont = line[:-1] == line[1:]                      # vertex v starts the segment (v, v+1)
    first = np.r_[True, ~cont]                        # first vertex of its line
    last = np.r_[~cont, True]                         # last vertex of its line
    single = first & last                             # one-vertex line: a zero-length segment
    start = np.r_[cont, False] | single               # vertices that start a segment
    seg_id = np.cumsum(start) - 1                     # segment index of each start vertex
    S = np.flatnonzero(start)
    B = np.where(single[S], S, np.minimum(S + 1, n - 1))
    # next segment of a vertex: the one it starts, or (last vertex) the one ending at it;
    # previous: the one ending at it, or (first vertex) the one it starts
    nxt = np.where(start, seg_id, np.r_[0, seg_id[:-1]])
    prv = np.where(first, seg_id, np.r_[0, seg_id[:-1]])
    return V[S].astype(float), V[B].astype(float), vlab[S], prv, nxt, np.asarray(V, float)


def _exact_nearest(A, D, len2, px, py, cand):
    """Min distance from points to candidate segments (n, m) -> (dist, seg)."""
    ax = A[cand, 0]; ay = A[cand, 1]
    dx = D[cand, 0]; dy = D[cand, 1]
    l2 = len2[cand]
    wx = px[:, None] - ax; wy = py[:, None] - ay
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(l2 > 0, (wx * dx + wy * dy) / l2, 0.0)
    t = np.clip(t, 0.0, 1.0)
    ex = wx - t * dx; ey = wy - t * dy
    d2 = ex * ex + ey * ey
    j = np.argmin(d2, axis=1)
    r = np.arange(len(px))
    return np.sqrt(d2[r, j]), cand[r, j]


class _SegmentIndex:
    """Exact nearest-segment queries over a set of polylines (KD-tree on vertices).

    Each polyline vertex knows the (up to two) segments it is an endpoint of.
    A query examines the segments adjacent to the k nearest vertices and
    certifies the result with the bound sqrt(r_k² - h²/4) (module docstring).
    """

    def __init__(self, coords_list, labels, closed):
        self._set_segments(*_polylines_to_segments(coords_list, labels, closed))

    def _set_segments(self, A, B, labels, prev, nxt, V):
        self.A = A
        self.D = B - self.A
        self.len2 = np.einsum("ij,ij->i", self.D, self.D)
        self.labels = labels
        self.prev = prev
        self.next = nxt
        self.V = V
        self.h = float(np.sqrt(self.len2.max()))
        self.tree = cKDTree(self.V)

    @classmethod
    def from_polygons(cls, polygons, max_segment_um: float | None = 10.0, labels=None):
        coords, labs, closed = [], [], []
        for i, p in enumerate(polygons):
            if max_segment_um:
                p = shapely.segmentize(p, max_segment_um)
            lab = i if labels is None else labels[i]
            for ring in [p.exterior, *p.interiors]:
                coords.append(shapely.get_coordinates(ring)); labs.append(lab); closed.append(True)
        return cls(coords, labs, closed)

    @classmethod
    def from_lines(cls, lines, labels, max_segment_um: float | None = 10.0):
        if max_segment_um:
            lines = shapely.segmentize(np.asarray(lines, dtype=object), max_segment_um)
        coords, idx = shapely.get_coordinates(lines, return_index=True)
        if len(coords) == 0:
            return cls([], [], [])
        self = cls.__new__(cls)
        self._set_segments(*_open_polylines_to_segments(coords, idx, np.asarray(labels)[idx]))
        return self

    def _query_chunk(self, px, py, k: int):
        """Certified nearest segment of each point of one chunk: (dist, seg)."""
        dist = np.empty(px.size); seg = np.empty(px.size, dtype=np.int64)
        nv = len(self.V)
        h2 = 0.25 * self.h * self.h
        todo = np.arange(px.size)
        kk = min(k, nv)
        while todo.size:
            dk, ik = self.tree.query(np.c_[px[todo], py[todo]], k=kk)
            dk = dk.reshape(todo.size, kk); ik = ik.reshape(todo.size, kk)
            cand = np.concatenate([self.next[ik], self.prev[ik]], axis=1)
            d, sg = _exact_nearest(self.A, self.D, self.len2, px[todo], py[todo], cand)
            dist[todo] = d
            seg[todo] = sg
            if kk >= nv:
                break
            rk2 = dk[:, -1] ** 2 - h2
            # certified when best² <= r_k² - h²/4 (tiny slack for rounding)
            ok = (d * d) <= rk2 * (1 - 1e-12)
            todo = todo[~ok]
            kk = min(nv, kk * 4)
        return dist, seg

    def query(self, x, y, k: int = 4, chunk: int = 200_000):
        """Exact distance to the nearest segment and that segment's index."""
        n = x.size
        dist = np.empty(n); seg = np.empty(n, dtype=np.int64)
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            dist[sl], seg[sl] = self._query_chunk(x[sl], y[sl], k)
        return dist, seg
