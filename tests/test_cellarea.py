"""Convex-cell areas (numba) against GEOS, and the segment band areas built on them."""

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from tibspace.tissue import _cellarea as ca
from tibspace import tissue as geo
from tibspace.tissue import band_split
from tibspace.tissue import bands as geo_bands


def _polys(ptr, vx, vy):
    n = ptr.size - 1
    return shapely.polygons(shapely.linearrings(vx, vy, indices=np.repeat(np.arange(n), np.diff(ptr))))


def _halfplane_cells_in_boxes(xy, x0, y0, x1, y1):
    """Reference: each point's box cut by the bisector half-planes of its Delaunay neighbours (GEOS).

    (scipy's Voronoi vertices, with sentinel points far outside, are only good to ~1e-6 here.)
    """
    from scipy.spatial import Delaunay, QhullError

    n = len(xy)
    try:
        tri = Delaunay(xy)
        ptr, idx = tri.vertex_neighbor_vertices
        nbrs = [idx[ptr[i]:ptr[i + 1]] for i in range(n)]
    except (QhullError, ValueError):  # < 3 points or all collinear: every other point
        nbrs = [np.delete(np.arange(n), i) for i in range(n)]
    areas = np.empty(n)
    for i in range(n):
        cell, p = shapely.box(x0[i], y0[i], x1[i], y1[i]), xy[i]
        for j in nbrs[i]:
            d = xy[j] - p
            m, t = (p + xy[j]) / 2, np.array([-d[1], d[0]]) * 1e3
            cell = cell.intersection(shapely.Polygon([m + t, m - t, m - t - d * 1e3, m + t - d * 1e3]))
        areas[i] = cell.area
    return areas


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 300), half=st.floats(1.0, 200.0))
def test_cells_in_boxes_equal_halfplane_intersections(seed, n, half):
    rng = np.random.default_rng(seed)
    xy = np.unique(rng.uniform(0, 100, (n, 2)).round(3), axis=0)
    x0, y0 = np.maximum(xy[:, 0] - half, -5), np.maximum(xy[:, 1] - half, -5)
    x1, y1 = np.minimum(xy[:, 0] + half, 105), np.minimum(xy[:, 1] + half, 105)
    ptr, vx, vy = ca.voronoi_cells_in_boxes(xy, x0, y0, x1, y1)
    got = ca.polygon_areas(ptr, vx, vy)
    np.testing.assert_allclose(got, _halfplane_cells_in_boxes(xy, x0, y0, x1, y1), rtol=1e-9, atol=1e-9)
    assert (got > 0).all()
    # every cell is convex, counter-clockwise and holds its point
    polys = _polys(ptr, vx, vy)
    assert shapely.is_valid(polys).all()
    assert shapely.covers(polys, shapely.points(xy)).all()
    if half >= 150:   # boxes cover the frame: the cells tile it
        assert got.sum() == pytest.approx(110.0 ** 2, rel=1e-12)


def _random_set(rng):
    """Disjoint polygons with holes, from buffered random points minus discs."""
    pts = shapely.points(rng.uniform(0, 100, (int(rng.integers(1, 6)), 2)))
    blob = shapely.union_all(shapely.buffer(pts, rng.uniform(5, 30, len(pts)), quad_segs=int(rng.integers(2, 16))))
    holes = shapely.union_all(shapely.buffer(shapely.points(rng.uniform(0, 100, (3, 2))), 4.0))
    return shapely.get_parts(shapely.difference(blob, holes))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 200), half=st.floats(2.0, 60.0))
def test_areas_in_cells_equal_geos(seed, n, half):
    rng = np.random.default_rng(seed)
    xy = np.unique(rng.uniform(0, 100, (n, 2)), axis=0)
    ptr, vx, vy = ca.voronoi_cells_in_boxes(xy, xy[:, 0] - half, xy[:, 1] - half, xy[:, 0] + half, xy[:, 1] + half)
    parts = _random_set(rng)
    got = ca.areas_in_cells(ptr, vx, vy, parts)
    ref = shapely.area(shapely.intersection(_polys(ptr, vx, vy), shapely.MultiPolygon(list(parts))))
    np.testing.assert_allclose(got, ref, atol=1e-8)


@pytest.mark.parametrize("parts", [
    [shapely.box(2.5, 2.5, 6.5, 6.5)],                 # edges along cell edges
    [shapely.box(2, 2, 6, 6)],                         # vertices on cell points and edges
    [shapely.box(2.3, 2.1, 6.7, 6.2), shapely.box(7, 7, 20, 20)],
    [shapely.box(-1, -1, 11, 11).difference(shapely.box(3.5, 3.5, 5.5, 5.5))],   # a hole along cell edges
])
def test_areas_in_cells_degenerate_contacts(parts):
    g = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    ptr, vx, vy = ca.voronoi_cells_in_boxes(g, np.full(100, -0.5), np.full(100, -0.5), np.full(100, 9.5),
                                            np.full(100, 9.5))
    got = ca.areas_in_cells(ptr, vx, vy, parts)
    ref = shapely.area(shapely.intersection(_polys(ptr, vx, vy), shapely.union_all(parts)))
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_uncrossed_cells_follow_the_callers_status():
    ptr, vx, vy = np.array([0, 4]), np.array([0.0, 2, 2, 0]), np.array([0.0, 0, 2, 2])
    big = [shapely.box(-10, -10, 10, 10)]
    assert ca.areas_in_cells(ptr, vx, vy, big)[0] == pytest.approx(4.0)
    assert ca.areas_in_cells(ptr, vx, vy, big, inside_if_uncrossed=np.array([True]))[0] == pytest.approx(4.0)
    # a ring wholly inside the cell counts by itself
    small = [shapely.box(0.5, 0.5, 1.0, 1.0)]
    assert ca.areas_in_cells(ptr, vx, vy, small, inside_if_uncrossed=np.array([False]))[0] == pytest.approx(0.25)


def _two_nest_region(rng):
    a = shapely.Point(200, 200).buffer(rng.uniform(60, 120), quad_segs=int(rng.integers(4, 64)))
    b = shapely.box(350, 120, 350 + rng.uniform(40, 150), 120 + rng.uniform(40, 200))
    b = shapely.affinity.rotate(b, float(rng.uniform(0, 90)))
    return geo.TumourRegion.from_polygons([p for p in (a, b.difference(a.buffer(5)))])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1_000))
def test_segment_band_areas_equal_the_dissolved_geos_partition(seed):
    """The clipped-cell areas equal the former method (Voronoi cells dissolved per
    segment, GEOS overlays) on nests facing each other across a tissue edge."""
    rng = np.random.default_rng(seed)
    reg = _two_nest_region(rng)
    tissue = shapely.box(0, 0, rng.uniform(420, 700), 500)
    seg = geo.perimeter_segments(reg, 50.0, subdivide=5)
    geoms = seg["geometry"].to_numpy()
    t = geo_bands._prepared_tissue(tissue)
    env = band_split._envelope(geoms, t)
    uniq, regions = band_split._labelled_partition_uncached(geoms, np.arange(len(seg)), env, 10.0)
    sets = geo_bands._cumulative_sets(reg, t, np.array([-30.0, 0.0, 30.0]), geo_bands.BAND_QUAD_SEGS)
    cum = [np.zeros(len(seg)) for _ in sets]
    for c, s in zip(cum, sets):
        c[uniq] = band_split._areas_by_partition(s, regions, len(uniq))
    geo.clear_geometry_cache()
    outer = geo.segment_band_areas_um2(seg, reg, tissue, 0.0, 30.0)
    inner = geo.segment_band_areas_um2(seg, reg, tissue, -30.0, 0.0)
    np.testing.assert_allclose(outer, np.maximum(cum[2] - cum[1], 0), atol=1e-6 * 1500)
    np.testing.assert_allclose(inner, np.maximum(cum[1] - cum[0], 0), atol=1e-6 * 1500)
    # and they add up to the exact band areas
    bands = geo.band_areas_um2(reg, tissue, [-30.0, 0.0, 30.0])
    assert inner.sum() == pytest.approx(bands[0], rel=1e-9)
    assert outer.sum() == pytest.approx(bands[1], rel=1e-9)


def test_segment_band_areas_infinite_edge_uses_the_partition():
    reg = geo.TumourRegion.from_polygons([shapely.box(0, 0, 100, 100)])
    seg = geo.perimeter_segments(reg, 50.0)
    tissue = shapely.box(-100, -100, 200, 200)
    a = geo.segment_band_areas_um2(seg, reg, tissue, 0.0, np.inf)
    assert a.sum() == pytest.approx(300.0 ** 2 - 100.0 ** 2)
    assert isinstance(seg, pd.DataFrame)
