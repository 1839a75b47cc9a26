"""Tests of tibspace.profiles.infiltration_profile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings, strategies as st

from tibspace.errors import InputError
from tibspace.tissue import (TumourRegion, annotate_cells, band_areas_um2, tumour_region_from_cells, tissue_region_from_cells)
from tibspace.stats import DEFAULT_EDGES_UM, band_index, infiltration_profile
from tibspace.synthetic import make_clustered_cells

TISSUE = shapely.box(0, 0, 2000, 2000)


def _region():
    return TumourRegion.from_polygons([
        shapely.Point(600, 700).buffer(250, quad_segs=64),
        shapely.box(1150, 1100, 1700, 1500),
        shapely.Point(1400, 450).buffer(150, quad_segs=64).difference(
            shapely.Point(1400, 450).buffer(60, quad_segs=64)),
    ])


def _poisson(lam_per_mm2, seed, box=TISSUE, types=("A", "B")):
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = box.bounds
    n = rng.poisson(lam_per_mm2 * box.area / 1e6)
    return pd.DataFrame({"x_um": rng.uniform(x0, x1, n), "y_um": rng.uniform(y0, y1, n),
                         "phenotype": rng.choice(types, n)})


def test_poisson_density_matches_intensity_in_every_band():
    lam = 3000.0                             # cells/mm², split evenly into A and B
    cells = _poisson(lam, seed=1)
    reg = _region()
    prof = infiltration_profile(cells, reg, TISSUE, sample_id="s1")
    assert list(prof.columns) == ["sample_id", "band_lo_um", "band_hi_um", "band_mid_um",
                                  "phenotype", "count", "area_um2", "density_per_mm2"]
    assert len(prof) == 20 * 2 and (prof["sample_id"] == "s1").all()
    for _, r in prof.iterrows():
        mu = lam / 2
        sd = np.sqrt(mu * r.area_um2 / 1e6) / (r.area_um2 / 1e6)   # Poisson sd of the density
        assert abs(r.density_per_mm2 - mu) < 4.5 * sd, r.to_dict()
    # pooled over bands, the estimate is tight
    tot = prof["count"].sum() / (prof.drop_duplicates("band_lo_um")["area_um2"].sum() / 1e6)
    assert tot == pytest.approx(lam, rel=0.03)


def test_counts_sum_to_cells_within_band_range_and_match_bands():
    cells = make_clustered_cells(6000, seed=3)
    t = cells[cells.phenotype == "tumour"]
    reg = tumour_region_from_cells(t.x_um, t.y_um)
    tissue = tissue_region_from_cells(cells.x_um, cells.y_um)
    ann = annotate_cells(cells, reg)
    prof = infiltration_profile(ann, reg, tissue)
    d = ann["signed_dist_um"].to_numpy()
    inside = (d > -200) & (d <= 200)
    assert prof["count"].sum() == inside.sum()
    # per band and phenotype, against pandas' right-closed intervals
    cut = pd.cut(d, DEFAULT_EDGES_UM, right=True)
    ref = pd.crosstab(cut, ann["phenotype"]).stack()
    got = prof.set_index(["band_lo_um", "phenotype"])["count"]
    for (iv, ph), n in ref.items():
        assert got[(iv.left, ph)] == n
    # areas are the exact band areas, densities per tissue area (cells/mm²)
    areas = band_areas_um2(reg, tissue, DEFAULT_EDGES_UM)
    np.testing.assert_allclose(prof.drop_duplicates("band_lo_um")["area_um2"], areas)
    np.testing.assert_allclose(prof["density_per_mm2"], prof["count"] / prof["area_um2"] * 1e6)
    # signed_dist_um is computed when absent: same result
    prof2 = infiltration_profile(cells, reg, tissue)
    pd.testing.assert_frame_equal(prof, prof2)


def test_profile_shows_planted_barrier_and_exclusion():
    cells = make_clustered_cells(30000, seed=5)
    t = cells[cells.phenotype == "tumour"]
    reg = tumour_region_from_cells(t.x_um, t.y_um)
    tissue = tissue_region_from_cells(cells.x_um, cells.y_um)
    prof = infiltration_profile(cells, reg, tissue, edges_um=[-100, -50, 0, 50, 100, 200],
                                phenotypes=["CAF", "tumour"])
    caf = prof[prof.phenotype == "CAF"].set_index("band_lo_um")["density_per_mm2"]
    # CAFs are planted at 35 % of cells in the 0-50 µm rim of half the nests,
    # 20 % in stroma and 1 % inside: rim > stroma > inside
    assert caf[0.0] > caf[100.0] > caf[-50.0]
    tum = prof[prof.phenotype == "tumour"].set_index("band_lo_um")["density_per_mm2"]
    assert tum[-100.0] > 1500 and tum[100.0] < 100


def test_by_nest_consistent_with_global():
    cells = _poisson(2000, seed=7, types=("A", "B", "C"))
    reg = _region()
    edges = [-60.0, -30, 0, 30, 60, 120]
    glob = infiltration_profile(cells, reg, TISSUE, edges_um=edges)
    per = infiltration_profile(cells, reg, TISSUE, edges_um=edges, by_nest=True)
    assert set(per["nest_id"]) == {1, 2, 3}
    agg = per.groupby(["band_lo_um", "phenotype"])[["count", "area_um2"]].sum()
    g = glob.set_index(["band_lo_um", "phenotype"])
    np.testing.assert_array_equal(agg["count"].to_numpy(), g.loc[agg.index, "count"].to_numpy())
    np.testing.assert_allclose(agg["area_um2"].to_numpy(), g.loc[agg.index, "area_um2"].to_numpy(),
                               rtol=1e-9)
    # inside bands are each nest's own erosion rings
    n1 = per[(per.nest_id == 1) & (per.band_lo_um == -30) & (per.phenotype == "A")]
    disc = reg.nests[0]
    expect = disc.buffer(0).area - disc.buffer(-30, quad_segs=32).area
    assert n1["area_um2"].iat[0] == pytest.approx(expect, rel=1e-6)
    # Poisson: per-nest densities also match the intensity
    for _, r in per[per.area_um2 > 0].iterrows():
        mu = 2000 / 3
        sd = np.sqrt(mu * r.area_um2 / 1e6) / (r.area_um2 / 1e6)
        assert abs(r.density_per_mm2 - mu) < 5 * sd


@settings(max_examples=20, deadline=None)
@given(d=st.lists(st.floats(-300, 300, allow_nan=False), min_size=1, max_size=50),
       edges=st.lists(st.floats(-250, 250, allow_nan=False), min_size=2, max_size=8, unique=True))
def test_band_index_right_closed(d, edges):
    e = np.sort(np.asarray(edges))
    i = band_index(np.asarray(d), e)
    for di, ii in zip(d, i):
        if ii >= 0:
            assert e[ii] < di <= e[ii + 1]
        else:
            assert di <= e[0] or di > e[-1]


def test_profile_inputs():
    reg = _region()
    cells = _poisson(500, seed=0)
    with pytest.raises(InputError, match="phenotype"):
        infiltration_profile(cells.drop(columns="phenotype"), reg, TISSUE)
    with pytest.raises(InputError, match="edges"):
        infiltration_profile(cells, reg, TISSUE, edges_um=[0, 0, 1])
    empty = infiltration_profile(cells.iloc[:0], reg, TISSUE, phenotypes=["A"], edges_um=[-20, 0, 20])
    assert empty["count"].tolist() == [0, 0] and (empty["density_per_mm2"] == 0).all()
    prof = infiltration_profile(cells, reg, TISSUE, phenotypes=["A", "Z"], edges_um=[-20, 0, 20])
    assert prof.loc[prof.phenotype == "Z", "count"].sum() == 0
