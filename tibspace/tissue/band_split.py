"""Band areas (µm²) split by nearest perimeter segment or nearest nest.

The plane is split by the nearest-boundary partition of labelled lines,
approximated by the Voronoi diagram of points sampled along the lines (a
pair 0.25 µm either side of every cut point, plus every <= ``spacing_um`` in
between): the split is exact on straight boundaries and radial on circles,
within about ``spacing_um``²/(8·distance) at corners and where facing
boundaries meet. Per-label areas always sum exactly to the band's tissue area.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.tissue._memo import _memo_set_areas, _partition_memo
from tibspace.tissue.bands import (
    BAND_QUAD_SEGS,
    _check_edges,
    _cumulative_sets,
    _prepared_tissue,
)
from tibspace.tissue.nests import TumourRegion, _polygons_of
from tibspace.tissue.segments import perimeter_segments  # noqa: F401  (docstring examples)


def _sample_lines(lines, spacing_um, end_offset_um):
    """Points along each line: one at ``end_offset_um`` from each end and arc
    midpoints of pieces <= ``spacing_um`` in between; returns (xy, line index)."""
    lengths = shapely.length(lines)
    m = np.maximum(1, np.ceil(lengths / spacing_um).astype(np.int64))
    rep = np.repeat(np.arange(len(lines)), m)
    start = np.repeat(np.cumsum(m) - m, m)
    k = np.arange(rep.size) - start
    pos = [(k + 0.5) / m[rep] * lengths[rep]]
    idx = [rep]
    if end_offset_um > 0:
        ok = np.flatnonzero(lengths > 4 * end_offset_um)
        pos += [np.full(ok.size, end_offset_um), lengths[ok] - end_offset_um]
        idx += [ok, ok]
    pos = np.concatenate(pos); idx = np.concatenate(idx)
    xy = shapely.get_coordinates(shapely.line_interpolate_point(lines[idx], pos))
    return xy, idx


def _voronoi_cells(xy, envelope):
    """Voronoi cells (shapely polygons, in input order) of points, bounded.

    Uses Qhull (scipy), which is robust for co-circular points (GEOS'
    Voronoi returned overlapping cells for points sampled on a circle).
    Four far-away frame points make every cell of a real point bounded;
    cells are exact for every location within ``envelope``.
    """
    from scipy.spatial import Voronoi

    b = shapely.bounds(envelope)
    w = max(b[2] - b[0], b[3] - b[1], 1.0)
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    far = np.array([[cx - 10 * w, cy - 10 * w], [cx + 10 * w, cy - 10 * w],
                    [cx + 10 * w, cy + 10 * w], [cx - 10 * w, cy + 10 * w]])
    if len(xy) == 1:
        return np.array([envelope], dtype=object)
    v = Voronoi(np.vstack([xy, far]))
    regs = [v.regions[i] for i in v.point_region[: len(xy)]]
    lens = np.fromiter((len(r) for r in regs), np.int64, len(regs))
    idx = np.fromiter((j for r in regs for j in r), np.int64, int(lens.sum()))
    rings = shapely.linearrings(v.vertices[idx], indices=np.repeat(np.arange(len(regs)), lens))
    return shapely.polygons(rings)


def _labelled_partition(lines, labels, envelope, spacing_um, end_offset_um=0.25):
    """Memoised :func:`_labelled_partition_uncached` (:func:`_partition_memo`)."""
    lines = np.asarray(lines, dtype=object)
    return _partition_memo("regions", lines, (np.asarray(labels), np.asarray(shapely.bounds(envelope)),
                                              np.array([spacing_um, end_offset_um], float)),
                           lambda: _labelled_partition_uncached(lines, labels, envelope, spacing_um,
                                                                end_offset_um))


def _unique_samples(lines, spacing_um, end_offset_um):
    """:func:`_sample_lines` without exact duplicate points (touching nests), first kept:
    a duplicate would break the point -> cell map."""
    xy, rep = _sample_lines(lines, spacing_um, end_offset_um)
    o = np.lexsort((xy[:, 1], xy[:, 0]))   # stable: the first of equal points comes first
    dup = np.zeros(len(xy), bool)
    dup[o[1:]] = (np.diff(xy[o, 0]) == 0) & (np.diff(xy[o, 1]) == 0)
    return xy[~dup], rep[~dup]


def _labelled_partition_uncached(lines, labels, envelope, spacing_um, end_offset_um=0.25):
    """Regions of the plane nearest to each label's lines (approximate Voronoi
    diagram of labelled line segments).

    Points are sampled along each line (:func:`_sample_lines`): pairs at
    ±``end_offset_um`` around every cut point make the split between two
    consecutive segments the normal at the cut (exact on straight boundaries
    and radial on circles); interior samples every <= ``spacing_um`` place
    the split between facing boundaries (medial axis) to within
    ~spacing²/(8·distance). Cells are dissolved per label by coverage union.
    Returns (labels_unique, geometries).
    """
    lines = np.asarray(lines, dtype=object)
    xy, rep = _unique_samples(lines, spacing_um, end_offset_um)
    cells = _voronoi_cells(xy, envelope)
    lab = np.asarray(labels)[rep]
    order = np.argsort(lab, kind="stable")
    lab_s = lab[order]
    uniq, first, counts = np.unique(lab_s, return_index=True, return_counts=True)
    width = int(counts.max())
    grid = np.full((uniq.size, width), None, dtype=object)
    col = np.arange(lab_s.size) - np.repeat(first, counts)
    grid[np.repeat(np.arange(uniq.size), counts), col] = cells[order]
    # Voronoi cells form a coverage, so a coverage union is fast; where rounding
    # (many bisectors meeting at one point) breaks it, fall back to overlay union.
    try:
        merged = shapely.coverage_union_all(grid, axis=1)
        expect = np.nansum(shapely.area(grid), axis=1)
        bad = ~shapely.is_valid(merged) | (np.abs(shapely.area(merged) - expect)
                                           > 1e-9 * expect.sum() + 1e-9)
    except shapely.errors.GEOSException:
        merged = np.full(uniq.size, None, dtype=object)
        bad = np.ones(uniq.size, dtype=bool)
    if bad.any():
        merged[bad] = shapely.union_all(grid[bad], axis=1)
    return uniq, merged


def _intersection_areas(a, b, n_threads: int = 2, chunk: int = 2048):
    """``shapely.area(shapely.intersection(a, b))`` for aligned arrays, in threads.

    GEOS releases the GIL in vectorised shapely calls, so chunks run in
    parallel; every pair is computed exactly as in one call (same numbers).
    """
    if len(a) <= chunk or n_threads <= 1:
        return shapely.area(shapely.intersection(a, b))
    from concurrent.futures import ThreadPoolExecutor

    bounds = list(range(0, len(a), chunk)) + [len(a)]
    with ThreadPoolExecutor(n_threads) as ex:
        res = list(ex.map(lambda k: shapely.area(shapely.intersection(a[bounds[k]:bounds[k + 1]],
                                                                      b[bounds[k]:bounds[k + 1]])),
                          range(len(bounds) - 1)))
    return np.concatenate(res)


#: Parts of a set with more coordinates than this are cut into spatial blocks
#: before the overlay with the partition (:func:`_split_large_parts`).
_BLOCK_MAX_COORDS = 20_000


def _split_large_parts(parts, max_coords: int | None = None):
    """``parts`` with every part of more than ``max_coords`` coordinates cut, by
    recursive halving of its bounding box, into pieces of at most about that many.

    A sublevel set {d <= e > 0} of many nests merges into a few parts of
    millions of coordinates; overlaying each partition region with a whole
    such part costs the part's size per region (quadratic in the slide). The
    pieces tile the part (areas add up to it, to rounding), and each region
    meets only the few pieces near it. Parts within the bound are returned as
    they are (then the areas are the same, bit for bit).
    """
    max_coords = _BLOCK_MAX_COORDS if max_coords is None else int(max_coords)
    ncoords = shapely.get_num_coordinates(parts)
    if len(parts) == 0 or ncoords.max() <= max_coords:
        return parts
    out = [parts[ncoords <= max_coords]]
    todo = list(parts[ncoords > max_coords])
    while todo:
        g = todo.pop()
        x0, y0, x1, y1 = shapely.bounds(g)
        if max(x1 - x0, y1 - y0) < 1.0:     # a µm-sized knot of vertices: keep it whole
            out.append(np.array([g], dtype=object))
            continue
        if x1 - x0 >= y1 - y0:
            xm = 0.5 * (x0 + x1)
            halves = shapely.intersection(g, [shapely.box(x0 - 1, y0 - 1, xm, y1 + 1),
                                              shapely.box(xm, y0 - 1, x1 + 1, y1 + 1)])
        else:
            ym = 0.5 * (y0 + y1)
            halves = shapely.intersection(g, [shapely.box(x0 - 1, y0 - 1, x1 + 1, ym),
                                              shapely.box(x0 - 1, ym, x1 + 1, y1 + 1)])
        pieces = shapely.get_parts(halves)
        pieces = pieces[(shapely.get_type_id(pieces) == 3) & ~shapely.is_empty(pieces)]
        n = shapely.get_num_coordinates(pieces)
        out.append(pieces[n <= max_coords])
        todo.extend(pieces[n > max_coords])
    return np.concatenate(out)


def _areas_by_partition(parts, regions, n_out):
    """Area of the band (given as parts) inside each partition region (index = label)."""
    out = np.zeros(n_out)
    if len(parts) == 0:
        return out
    parts = _split_large_parts(np.asarray(parts, dtype=object))
    tree = shapely.STRtree(parts)
    ri, pi = tree.query(regions, predicate="intersects")
    if ri.size:
        a = _intersection_areas(regions[ri], parts[pi])
        np.add.at(out, ri, a)
    return out


def _partition_set_areas(region, t, e: float, quad_segs: int, parts, regions, n_out):
    """Memoised :func:`_areas_by_partition` of the clipped set {d <= e} (``parts``)."""
    return _memo_set_areas(region, t, e, quad_segs, regions, n_out,
                           lambda: _areas_by_partition(parts, regions, n_out))


def _envelope(*geoms, pad=10.0):
    b = np.array([shapely.total_bounds(np.atleast_1d(np.asarray(g, dtype=object))) for g in geoms
                  if g is not None])
    return shapely.box(np.nanmin(b[:, 0]) - pad, np.nanmin(b[:, 1]) - pad,
                       np.nanmax(b[:, 2]) + pad, np.nanmax(b[:, 3]) + pad)


def segment_band_areas_um2(segments: pd.DataFrame, region, tissue, inner_um: float,
                           outer_um: float, *, spacing_um: float = 10.0,
                           quad_segs: int = BAND_QUAD_SEGS, progress=None) -> np.ndarray:
    """Tissue area (µm²) of the band ``inner_um < d <= outer_um`` nearest to each
    perimeter segment (array aligned with ``segments`` rows).

    The band polygon (exact, :func:`band_geometry`) is split by the
    nearest-segment partition of the plane, approximated by the Voronoi
    diagram of points sampled along the segments (a pair 0.25 µm either side
    of every cut point, plus every <= ``spacing_um`` in between), summed per
    segment. Only cells near the boundary matter (a band point lies within
    the band reach plus half a segment of its cell's point), so each cell is
    clipped to that box and the set areas inside the small convex cells are
    computed directly (:mod:`tibspace.tissue._cellarea`, numba) instead of by
    GEOS overlays of cells dissolved per segment; cells a set edge only
    touches degenerately use GEOS. An infinite band edge uses the
    dissolved partition. Accuracy: the split between consecutive segments is the
    normal at the cut point on straight boundaries and radial on circles
    (exact there: disc and square tests agree to < 0.5 %); at a cut on a
    corner or where facing boundaries meet (medial axis) the split deviates
    by about ``spacing_um``²/(8·distance); the areas always sum exactly to the
    band's tissue area.

    Examples
    --------
    >>> reg = TumourRegion.from_polygons([shapely.Point(0, 0).buffer(100, quad_segs=256)])
    >>> seg = perimeter_segments(reg, 50.0)
    >>> a = segment_band_areas_um2(seg, reg, None, 0, 50)
    >>> bool(np.allclose(a / a.sum(), seg.length_um / seg.length_um.sum(), rtol=5e-3))
    True
    """
    if len(segments) == 0:
        return np.zeros(0)
    if not inner_um < outer_um:
        raise InputError(f"band ({inner_um}, {outer_um}]: expected inner_um < outer_um (µm)")
    report(progress, "segment band areas", 0, 3)
    t = _prepared_tissue(tissue)
    lo_set, hi_set = _cumulative_sets(region, t, np.array([inner_um, outer_um], float), quad_segs)
    hi_parts = shapely.get_parts(t) if hi_set is None else hi_set
    if len(hi_parts) == 0:
        return np.zeros(len(segments))
    report(progress, "segment band areas", 1, 3)
    geoms = segments["geometry"].to_numpy()
    # cells and envelope independent of the band, so the bands of a barrier analysis
    # share them (memoised): tissue bounds, or the segments padded by the band reach
    finite = [abs(float(v)) for v in (inner_um, outer_um) if np.isfinite(v)]
    reach = max(finite) if finite else 0.0
    env = _envelope(geoms, pad=reach + 10.0) if t is None else _envelope(geoms, t)
    # a band point is within reach of its nearest boundary point, which is within half
    # a segment of a sample of that segment: the cell of the nearest sample holds it
    half = (reach + 0.5 * float(shapely.length(geoms).max()) + 1.0
            if np.isfinite(inner_um) and np.isfinite(outer_um) else np.inf)
    cells = _boundary_cells(geoms, env, spacing_um, half)
    n = len(segments)
    report(progress, "segment band areas", 2, 3)
    if cells is None:   # an infinite band edge: dissolved Voronoi regions and GEOS overlays
        uniq, regions = _labelled_partition(geoms, np.arange(n), env, spacing_um)
        out = np.zeros(n)
        out[uniq] = (_partition_set_areas(region, t, outer_um, quad_segs, hi_parts, regions, len(uniq))
                     - _partition_set_areas(region, t, inner_um, quad_segs, lo_set, regions, len(uniq)))
    else:
        out = (_cell_set_areas(region, t, outer_um, quad_segs, hi_parts, cells, n)
               - _cell_set_areas(region, t, inner_um, quad_segs, lo_set, cells, n))
    report(progress, "segment band areas", 3, 3)
    return np.maximum(out, 0.0)


def _boundary_cells(lines, envelope, spacing_um, half_width_um, end_offset_um=0.25):
    """Voronoi cells of the points sampled along ``lines`` (:func:`_sample_lines`),
    each clipped to the box of half-width ``half_width_um`` about its point
    and to ``envelope``: ``(ptr, vx, vy, line index, points)``, CSR convex polygons
    (:func:`tibspace._cellarea.voronoi_cells_in_boxes`). Memoised
    (:func:`_partition_memo`); None for an infinite half-width (the caller
    then uses the dissolved GEOS partition)."""
    from tibspace.tissue import _cellarea as _cellarea

    if not np.isfinite(half_width_um):
        return None
    lines = np.asarray(lines, dtype=object)
    b = shapely.bounds(envelope)

    def compute():
        xy, rep = _unique_samples(lines, spacing_um, end_offset_um)
        hw = float(half_width_um)
        ptr, vx, vy = _cellarea.voronoi_cells_in_boxes(
            xy, np.maximum(xy[:, 0] - hw, b[0]), np.maximum(xy[:, 1] - hw, b[1]),
            np.minimum(xy[:, 0] + hw, b[2]), np.minimum(xy[:, 1] + hw, b[3]))
        return ptr, vx, vy, rep, xy

    return _partition_memo("cells", lines, (np.asarray(b), np.array([spacing_um, end_offset_um,
                                                                      half_width_um], float)), compute)


def _cell_set_areas(region, t, e: float, quad_segs: int, parts, cells, n_out):
    """Per-label area of the clipped set {d <= e} (``parts``) in the boundary ``cells`` (memoised)."""
    from tibspace.tissue import _cellarea as _cellarea

    def compute():
        ptr, vx, vy, lab, xy = cells
        if not len(parts):
            return np.zeros(n_out)
        # a cell no set edge crosses is inside the set when its point is; the points lie
        # on the boundary (d = 0): outside {d <= e < 0}, inside {d <= e > 0} where in tissue
        inside = None
        if e < 0:
            inside = np.zeros(len(xy), bool)
        elif e > 0:
            inside = np.ones(len(xy), bool) if t is None else shapely.contains_xy(t, xy[:, 0], xy[:, 1])
        a = _cellarea.areas_in_cells(ptr, vx, vy, parts, inside_if_uncrossed=inside)
        return np.bincount(lab, weights=a, minlength=n_out)

    return _memo_set_areas(region, t, e, quad_segs, cells, n_out, compute)


def nest_band_areas_um2(region: TumourRegion, tissue, edges_um, *, spacing_um: float = 10.0,
                        quad_segs: int = BAND_QUAD_SEGS, progress=None) -> np.ndarray:
    """Per-nest band areas: array (n_nests, n_bands) of the tissue area of each
    band ``edges[i] < d <= edges[i+1]`` whose nearest nest is that nest.

    The plane is split between nests by their nearest-boundary partition.
    Inside the nests (sets {d <= e} with e <= 0) it is exact: every part of
    such a set lies in one nest, whose boundary is the nearest, and goes to it
    whole (no overlay). Outside, the partition is the Voronoi diagram of
    boundary points every <= ``spacing_um``, dissolved per nest: the mid-line
    between two nests is placed to within about ``spacing_um``²/(8·distance).
    Columns sum exactly to :func:`band_areas_um2`.

    Examples
    --------
    >>> reg = TumourRegion.from_polygons([shapely.box(0, 0, 10, 10), shapely.box(100, 0, 110, 10)])
    >>> nest_band_areas_um2(reg, None, [-5, 0]).round(3).tolist()
    [[100.0], [100.0]]
    """
    e = _check_edges(edges_um)
    if not isinstance(region, TumourRegion):
        region = TumourRegion.from_polygons(_polygons_of(region))
    n = region.n_nests
    out = np.zeros((n, e.size - 1))
    if n == 0:
        return out
    t = _prepared_tissue(tissue)
    sets = _cumulative_sets(region, t, e, quad_segs, progress, "nest band areas")
    if n == 1:
        cum = np.array([float(shapely.area(t)) if s is None else float(shapely.area(s).sum())
                        for s in sets])
        out[0] = np.diff(cum)
        return out
    rings, labs = [], []
    for i, p in enumerate(region.nests):
        for r in [p.exterior, *p.interiors]:
            rings.append(shapely.LineString(r.coords)); labs.append(i)
    finite = [np.asarray(s, dtype=object) for s in sets if s is not None and len(s)]
    env = _envelope(region.union, t, *finite)
    uniq, regions = _labelled_partition(np.asarray(rings, dtype=object), np.asarray(labs), env,
                                        spacing_um, end_offset_um=0.0)
    # cumulative per-nest areas of {d <= e} ∩ tissue, then differences
    cum = np.zeros((n, e.size))
    nest_tree = None
    for j, s in enumerate(sets):
        if s is not None and e[j] <= 0:
            # {d <= e <= 0} lies inside the nests, where the nearest boundary is
            # the nest's own: each part belongs wholly to the nest holding it
            # (the exact partition; no overlay with the approximate one)
            if len(s):
                nest_tree = nest_tree or shapely.STRtree(np.asarray(region.nests, dtype=object))
                cum[:, j] = _areas_by_containing_nest(s, nest_tree, n)
            continue
        parts = shapely.get_parts(t) if s is None else s
        cum[uniq, j] = _partition_set_areas(region, t, e[j], quad_segs, parts, regions, len(uniq))
    return np.diff(cum, axis=1)


def _areas_by_containing_nest(parts, nest_tree, n):
    """Area of parts lying inside nests, summed per nest (index 0..n-1)."""
    parts = parts[shapely.get_type_id(parts) == 3]
    out = np.zeros(n)
    if len(parts) == 0:
        return out
    pts = shapely.point_on_surface(parts)
    pi, ni = nest_tree.query(pts, predicate="intersects")
    # a point on a part lies in exactly one nest (nests are disjoint); keep the first hit
    first = np.unique(pi, return_index=True)[1]
    pi, ni = pi[first], ni[first]
    np.add.at(out, ni, shapely.area(parts[pi]))
    return out
