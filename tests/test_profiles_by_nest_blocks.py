"""Per-nest band areas with large sets cut into spatial blocks: the same numbers as
before on a small table (exact), and the same areas to rounding when blocks are forced."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import shapely

from tibspace import tissue as geo
from tibspace.stats import infiltration_profile
from tibspace.synthetic import make_clustered_cells
from tibspace.tissue import band_split


@pytest.fixture(scope="module")
def small():
    cells = make_clustered_cells(20000, seed=0)
    x, y = cells.x_um.to_numpy(float), cells.y_um.to_numpy(float)
    tum = (cells.phenotype == "tumour").to_numpy()
    return cells, geo.tumour_region_from_cells(x[tum], y[tum]), geo.tissue_region_from_cells(x, y)


def test_profiles_by_nest_exact_values_as_before(small):
    """sha256 of the area and count columns (and the exact total) from commit eb29cb2."""
    cells, reg, tissue = small
    p = infiltration_profile(cells, reg, tissue, by_nest=True)
    assert (reg.n_nests, len(p)) == (11, 1760)
    assert float(p.area_um2.sum()).hex() == "0x1.69f1e321aedc0p+25"
    assert hashlib.sha256(p.area_um2.to_numpy().tobytes()).hexdigest() == (
        "4488894060bdfd526c933c240f3ccf22b3e98724fa93146d44b729315d6cbeba")
    assert hashlib.sha256(p["count"].to_numpy().tobytes()).hexdigest() == (
        "8151cdc873a6aa796d4555159429c6fa5279d758b43e4bbabcf20323f8b6c5a3")


def test_forced_blocks_give_the_same_areas(small, monkeypatch):
    cells, reg, tissue = small
    edges = np.arange(-100.0, 100.0 + 1e-9, 25.0)
    geo.clear_geometry_cache()
    whole = geo.nest_band_areas_um2(reg, tissue, edges)
    geo.clear_geometry_cache()
    monkeypatch.setattr(band_split, "_BLOCK_MAX_COORDS", 300)
    split = geo.nest_band_areas_um2(reg, tissue, edges)
    geo.clear_geometry_cache()
    np.testing.assert_allclose(split, whole, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(split.sum(axis=0), geo.band_areas_um2(reg, tissue, edges), rtol=1e-9)


def test_split_large_parts_tiles_each_part():
    rng = np.random.default_rng(3)
    blob = shapely.union_all(shapely.buffer(shapely.points(rng.uniform(0, 2000, (400, 2))), 60.0, quad_segs=16))
    parts = shapely.get_parts(blob)
    pieces = band_split._split_large_parts(parts, max_coords=500)
    assert shapely.get_num_coordinates(pieces).max() <= 500 < shapely.get_num_coordinates(parts).max()
    assert shapely.area(pieces).sum() == pytest.approx(shapely.area(parts).sum(), rel=1e-12)
    assert shapely.symmetric_difference(shapely.union_all(pieces), blob).area < 1e-6 * blob.area
    assert band_split._split_large_parts(parts, max_coords=10**9) is parts   # small parts: untouched
