"""Layout geometry of synthetic tissue (µm): tissue region, nests, barrier arcs.

The tissue covers the image except a wavy empty strip at one edge; nests are
smooth radial blobs placed without overlap; barrier arcs are intervals
``[s0, s1)`` of arc length along a nest's exterior ring (``s1`` may exceed the
perimeter ``P``: the arc wraps through ``s = 0``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import LineString, MultiLineString, Polygon
from shapely.ops import substring

from tibspace.errors import InputError
from tibspace.synthetic.spec import BARRIER_WIDTH_UM

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


def _lobulated_blob(radius: float, rng, n_vertices: int = 256) -> Polygon:
    """Lobulated nest: r(θ) = R (1 + Σ_k a_k cos(kθ + φ_k)), k = 2..10, a_k up to 0.45/k^0.7."""
    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 11):
        r += rng.uniform(0, 0.45 / k ** 0.7) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.35, None)
    return Polygon(np.c_[r * np.cos(theta), r * np.sin(theta)])


def _cord(radius: float, rng, width_range) -> tuple:
    """Trabecular cord centred at 0: a gently winding centreline of length
    4·radius buffered to a width drawn from ``width_range``; (polygon, width)."""
    w = float(rng.uniform(*width_range))
    n = 48
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, n))
    pts = np.cumsum(np.c_[np.cos(heading), np.sin(heading)] * (4.0 * radius / n), axis=0)
    poly = LineString(pts - pts.mean(axis=0)).buffer(w / 2, quad_segs=8)
    if poly.geom_type != "Polygon":
        poly = max(poly.geoms, key=lambda g: g.area)
    return Polygon(poly.exterior), w


def _shape_maker(shape: str, cord_width_um=(24.0, 36.0)):
    """make(r, rng) -> (polygon centred at 0, cord width or None) for a nest shape."""
    if shape == "irregular":
        return lambda r, rng: (_lobulated_blob(r, rng), None)
    if shape == "trabecular":
        return lambda r, rng: _cord(r, rng, cord_width_um)
    return lambda r, rng: (_radial_blob(0.0, 0.0, r, rng), None)


def _place_nests(tissue: Polygon, n: int, radius_range, rng, clearance_um: float, *,
                 shape: str = "blob", cord_width_um=(24.0, 36.0), n_edge: int = 0,
                 widths: Optional[list] = None) -> list:
    """Place n nests one by one, each centre drawn uniformly from the region
    where it fits: ≥ 60 µm inside the tissue edge (room for its barrier band)
    and ≥ ``clearance_um`` from earlier nests. The first ``n_edge`` nests are
    instead cut by the image frame. ``widths`` (if given) receives each nest's
    cord width (None for blobs)."""
    lo, hi = radius_range
    edge = BARRIER_WIDTH_UM + 10
    make = _shape_maker(shape, cord_width_um)
    for restart in range(25):   # greedy placement can paint itself into a corner
        start = _edge_nests(tissue, n_edge, lo, hi, rng, clearance_um, make) if n_edge else []
        placed = _try_place_nests(tissue, n, lo, hi, rng, clearance_um, edge, make, start)
        if len(placed) == n:
            if widths is not None:
                widths[:] = [w for _, w in placed]
            return [g for g, _ in placed]
    minx, miny, maxx, maxy = tissue.bounds
    raise InputError(
        f"make_tissue: could not place {n} non-overlapping nests of radius "
        f"{lo}-{hi} µm in a {maxx - minx:.0f} x {maxy - miny:.0f} µm tissue "
        f"(placed {len(placed)}; each needs {edge:.0f} µm to the tissue edge and "
        f"{clearance_um:.0f} µm to other nests); lower n_nests or nest_radius_um, "
        "or enlarge shape")


def _try_place_nests(tissue, n, lo, hi, rng, clearance_um, edge, make, start=()) -> list:
    nests: list = list(start)
    for k in range(n - len(nests)):
        for attempt in range(60):
            # shrink towards the minimum radius when space runs out
            r = rng.uniform(lo, hi) if attempt < 20 else lo + (hi - lo) * rng.uniform() * (
                1 - attempt / 60)
            blob0, width = make(r, rng)
            rmax = float(np.max(np.hypot(*np.asarray(blob0.exterior.coords).T)))
            free = tissue.buffer(-(rmax + edge))
            if nests:
                free = free.difference(shapely.union_all([g for g, _ in nests]).buffer(
                    clearance_um + rmax))
            if free.is_empty or free.area < 1e-6:
                continue
            minx, miny, maxx, maxy = free.bounds
            for _ in range(200):
                cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
                if free.contains(shapely.Point(cx, cy)):
                    nests.append((shapely.affinity.translate(blob0, cx, cy), width))
                    break
            else:
                continue
            break
        else:
            return nests
    return nests


def _edge_nests(tissue, n_edge, lo, hi, rng, clearance_um, make) -> list:
    """``n_edge`` nests whose centre lies 0.4·r inside a side of the frame the
    tissue reaches, clipped to the tissue (so part of the outline runs along
    the tissue edge, 1.1 µm inside the frame); [] when they do not fit."""
    minx, miny, maxx, maxy = tissue.bounds
    sides = [k for k in range(4) if _side_reached(tissue, k)]
    out: list = []
    for _ in range(n_edge):
        for attempt in range(200):
            r = rng.uniform(lo, hi)
            poly0, width = make(r, rng)
            rmax = float(np.max(np.hypot(*np.asarray(poly0.exterior.coords).T)))
            side = sides[int(rng.integers(len(sides)))]
            along_lo, along_hi = ((miny, maxy) if side in (0, 2) else (minx, maxx))
            if along_hi - along_lo < 2 * (rmax + 60):
                continue
            along = rng.uniform(along_lo + rmax + 60, along_hi - rmax - 60)
            depth = 0.4 * r
            cx, cy = {0: (minx + depth, along), 1: (along, miny + depth),
                      2: (maxx - depth, along), 3: (along, maxy - depth)}[side]
            g = shapely.affinity.translate(poly0, cx, cy).intersection(tissue)
            if g.geom_type != "Polygon":
                g = max(getattr(g, "geoms", [g]), key=lambda q: q.area)
            g = Polygon(g.exterior)
            if out and shapely.union_all([q for q, _ in out]).distance(g) < clearance_um:
                continue
            out.append((g, width))
            break
        else:
            return []
    return out


def _side_reached(tissue: Polygon, side: int) -> bool:
    """Whether the tissue runs along frame side 0 left, 1 top, 2 right, 3 bottom
    over most of its length (not the side of the empty strip)."""
    minx, miny, maxx, maxy = tissue.bounds
    line = {0: LineString([(minx, miny), (minx, maxy)]), 1: LineString([(minx, miny), (maxx, miny)]),
            2: LineString([(maxx, miny), (maxx, maxy)]),
            3: LineString([(minx, maxy), (maxx, maxy)])}[side]
    return tissue.exterior.intersection(line.buffer(1e-6)).length > 0.8 * line.length


def _arc_geometry(nest: Polygon, s0: float, s1: float):
    ring = LineString(nest.exterior.coords)
    P = ring.length
    if s1 <= P:
        return substring(ring, s0, s1)
    return MultiLineString([substring(ring, s0, P), substring(ring, 0, s1 - P)])


def _covered_intervals(P: float, coverage: float, rng, n_arcs=None, min_gap_um=None) -> list:
    """Covered arcs [s0, s1) (s1 may exceed P: wraps) with total length
    coverage·P, as 1–3 runs of ≥ 50 µm separated by gaps of ≥ 50 µm.

    ``n_arcs`` fixes the number of runs and ``min_gap_um`` the minimum gap
    (fewer runs when the gaps do not fit; one gap of ``min_gap_um`` when
    even that does not fit, lowering the coverage)."""
    Lc = coverage * P
    if Lc <= 1e-9:
        return []
    if P - Lc <= 1e-9:
        return [(0.0, P)]
    if n_arcs is None and min_gap_um is None:
        kmax = int(max(1, min(3, min(Lc, P - Lc) // 60)))
        k = int(rng.integers(1, kmax + 1))
        gap_min = 50.0
    else:
        gap_min = 50.0 if min_gap_um is None else float(min_gap_um)
        k = int(n_arcs) if n_arcs is not None else int(rng.integers(1, 4))
        k = max(1, min(k, int((P - Lc) // gap_min)))
        if P - Lc < gap_min:
            Lc = max(P - gap_min, 0.0)

    def split(total, k, floor):
        base = min(floor, total / k)
        extra = rng.dirichlet(np.ones(k)) * (total - base * k)
        return base + extra

    runs, gaps = split(Lc, k, 50.0), split(P - Lc, k, gap_min)
    s = rng.uniform(0, P)
    out = []
    for run, gap in zip(runs, gaps):
        out.append((float(s % P), float(s % P + run)))
        s += run + gap
    return out


def _gaps(intervals: list, P: float) -> list:
    """Uncovered intervals [s0, s1) between covered ``intervals`` (same wrap rule)."""
    if not intervals:
        return [(0.0, P)]
    iv = sorted(intervals)
    out = []
    for k, (s0, s1) in enumerate(iv):
        nxt = iv[(k + 1) % len(iv)][0] + (P if k + 1 == len(iv) else 0.0)
        if nxt - s1 > 1e-9:
            out.append((float(s1 % P), float(s1 % P + (nxt - s1))))
    return out


def _frame_intervals(nest: Polygon, tissue: Polygon, step_um: float = 0.25) -> list:
    """Arcs [s0, s1) of the nest outline lying on the tissue edge (a nest cut
    by the image frame), sampled every ``step_um``."""
    ring = LineString(nest.exterior.coords)
    P = ring.length
    s = np.arange(0.0, P, step_um)
    pts = shapely.line_interpolate_point(ring, s)
    on = shapely.distance(tissue.exterior, pts) < 1e-6
    return _runs(s, on, step_um, P)


def _runs(s: np.ndarray, flag: np.ndarray, step_um: float, P: float) -> list:
    """Intervals of consecutive True samples (wrapping through s = 0)."""
    if not flag.any():
        return []
    if flag.all():
        return [(0.0, P)]
    k0 = int(np.argmin(flag))             # start scanning at an uncovered sample
    f = np.roll(flag, -k0)
    ss = np.roll(s, -k0)
    out, start = [], None
    for j in range(len(f)):
        if f[j] and start is None:
            start = ss[j]
        elif not f[j] and start is not None:
            end = ss[j] if ss[j] > start else ss[j] + P
            out.append((float(start), float(end)))
            start = None
    if start is not None:
        end = ss[0] if ss[0] > start else ss[0] + P
        out.append((float(start), float(end)))
    return out


def _subtract_intervals(intervals: list, remove: list, P: float, step_um: float = 0.25) -> list:
    """``intervals`` minus ``remove`` on a ring of length P (sampled)."""
    if not remove or not intervals:
        return intervals
    s = np.arange(0.0, P, step_um)
    keep = _in_intervals(s, intervals, P) & ~_in_intervals(s, remove, P)
    return _runs(s, keep, step_um, P)


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


def _covered_flags(nests, intervals, which, s):
    covered = np.zeros(len(s), bool)
    for i, nest in enumerate(nests):
        sel = which == i
        if sel.any() and intervals[i]:
            covered[sel] = _in_intervals(s[sel], intervals[i], nest.exterior.length)
    return covered
