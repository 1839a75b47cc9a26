"""Layout geometry of synthetic tissue (µm): tissue region, nests, barrier arcs.

The tissue covers the image except a wavy empty strip at one edge; nests are
smooth radial blobs placed without overlap; barrier arcs are intervals
``[s0, s1)`` of arc length along a nest's exterior ring (``s1`` may exceed the
perimeter ``P``: the arc wraps through ``s = 0``).
"""

from __future__ import annotations

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


def _place_nests(tissue: Polygon, n: int, radius_range, rng, clearance_um: float) -> list:
    """Place n irregular nests one by one, each centre drawn uniformly from the
    region where it fits: ≥ 60 µm inside the tissue edge (room for its barrier
    band) and ≥ ``clearance_um`` from earlier nests."""
    lo, hi = radius_range
    edge = BARRIER_WIDTH_UM + 10
    for restart in range(25):   # greedy placement can paint itself into a corner
        nests = _try_place_nests(tissue, n, lo, hi, rng, clearance_um, edge)
        if len(nests) == n:
            return nests
    minx, miny, maxx, maxy = tissue.bounds
    raise InputError(
        f"make_tissue: could not place {n} non-overlapping nests of radius "
        f"{lo}-{hi} µm in a {maxx - minx:.0f} x {maxy - miny:.0f} µm tissue "
        f"(placed {len(nests)}; each needs {edge:.0f} µm to the tissue edge and "
        f"{clearance_um:.0f} µm to other nests); lower n_nests or nest_radius_um, "
        "or enlarge shape")


def _try_place_nests(tissue, n, lo, hi, rng, clearance_um, edge) -> list:
    nests: list = []
    for k in range(n):
        for attempt in range(60):
            # shrink towards the minimum radius when space runs out
            r = rng.uniform(lo, hi) if attempt < 20 else lo + (hi - lo) * rng.uniform() * (
                1 - attempt / 60)
            blob0 = _radial_blob(0.0, 0.0, r, rng)
            rmax = float(np.max(np.hypot(*np.asarray(blob0.exterior.coords).T)))
            free = tissue.buffer(-(rmax + edge))
            if nests:
                free = free.difference(shapely.union_all(nests).buffer(clearance_um + rmax))
            if free.is_empty or free.area < 1e-6:
                continue
            minx, miny, maxx, maxy = free.bounds
            for _ in range(200):
                cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
                if free.contains(shapely.Point(cx, cy)):
                    nests.append(shapely.affinity.translate(blob0, cx, cy))
                    break
            else:
                continue
            break
        else:
            return nests
    return nests


def _arc_geometry(nest: Polygon, s0: float, s1: float):
    ring = LineString(nest.exterior.coords)
    P = ring.length
    if s1 <= P:
        return substring(ring, s0, s1)
    return MultiLineString([substring(ring, s0, P), substring(ring, 0, s1 - P)])


def _covered_intervals(P: float, coverage: float, rng) -> list:
    """Covered arcs [s0, s1) (s1 may exceed P: wraps) with total length
    coverage·P, as 1–3 runs of ≥ 50 µm separated by gaps of ≥ 50 µm."""
    Lc = coverage * P
    if Lc <= 1e-9:
        return []
    if P - Lc <= 1e-9:
        return [(0.0, P)]
    kmax = int(max(1, min(3, min(Lc, P - Lc) // 60)))
    k = int(rng.integers(1, kmax + 1))

    def split(total, k):
        base = min(50.0, total / k)
        extra = rng.dirichlet(np.ones(k)) * (total - base * k)
        return base + extra

    runs, gaps = split(Lc, k), split(P - Lc, k)
    s = rng.uniform(0, P)
    out = []
    for run, gap in zip(runs, gaps):
        out.append((float(s % P), float(s % P + run)))
        s += run + gap
    return out


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
