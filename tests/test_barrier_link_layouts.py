"""Barrier coverage and the barrier → exclusion link on synthetic cell tables with known truth.

``make_barrier_table`` plants irregular nests, barrier arcs separated by gaps
≥ 20 µm, and T cells that stop where the barrier is: piled against it, held
50–150 µm away, or spread through the stroma; the ``independent`` layout
blocks T cells along the barrier arcs rotated by a random offset (the null).
"""

from __future__ import annotations

import numpy as np
import pytest

from tibspace.analyses import barrier_analysis
from tibspace.synthetic.tables import make_barrier_table
from tibspace.tissue import TumourRegion

SEEDS = range(10)


def _run(seed, layout, n_nests=9):
    cells, truth = make_barrier_table(seed, t_layout=layout, n_nests=n_nests)
    region = TumourRegion.from_polygons(truth["nests"])
    res = barrier_analysis(cells, region, truth["tissue"], n_sim=0, colocalization_radii_um=(), seed=seed)
    # region nests are re-ordered: match each to the planted nest it contains
    order = [int(np.argmax([n.intersects(q.representative_point()) for q in truth["nests"]]))
             for n in region.nests]
    planted = np.asarray(truth["coverage"])[order]
    return res, planted


@pytest.fixture(scope="module")
def runs():
    return {lay: [_run(s, lay) for s in SEEDS] for lay in ("piled", "held", "spread")}


def test_coverage_recovered_per_nest(runs):
    err = np.concatenate([r.per_nest["barrier_coverage"].to_numpy() - p for r, p in runs["piled"]])
    planted = np.concatenate([p for _, p in runs["piled"]])
    assert np.abs(err).max() <= 0.12, np.abs(err).max()
    assert np.abs(err).mean() <= 0.03, np.abs(err).mean()
    assert np.abs(err[planted == 1.0]).max() <= 0.07      # no under-call of full linings
    assert np.abs(err[planted == 0.0]).max() <= 0.10


def test_short_gaps_are_found():
    # one nest, two arcs separated by gaps of ~30 µm and ~500 µm: both gaps found
    found = []
    for seed in SEEDS:
        cells, truth = make_barrier_table(seed, n_nests=1, coverage=[0.95], min_gap_um=30.0)
        res = barrier_analysis(cells, TumourRegion.from_polygons(truth["nests"]), truth["tissue"], n_sim=0,
                               colocalization_radii_um=())
        n_planted = len(truth["intervals"][0])
        found.append(res.per_nest["n_gaps"].iat[0] >= n_planted)
    assert np.mean(found) >= 0.8, found


@pytest.mark.parametrize("layout", ["piled", "held", "spread"])
def test_link_detected_for_every_t_layout(runs, layout):
    ps = np.array([r.sample["link"]["p_value"] for r, _ in runs[layout]])
    assert np.all([r.sample["link"]["difference"] < 0 for r, _ in runs[layout]])
    assert np.mean(ps < 0.01) >= 0.9 and ps.max() < 0.05, ps


def test_link_calibrated_when_t_independent_of_barrier():
    ps = np.array([_run(s, "independent")[0].sample["link"]["p_value"] for s in range(100, 120)])
    assert np.mean(ps > 0.05) >= 0.85, ps
    assert np.mean(ps <= 0.5) >= 0.25, ps                 # not degenerate


def test_link_untestable_without_informative_rings():
    cells, truth = make_barrier_table(0, n_nests=2, coverage=[1.0, 0.0])
    res = barrier_analysis(cells, TumourRegion.from_polygons(truth["nests"]), truth["tissue"], n_sim=0,
                           colocalization_radii_um=())
    link = res.sample["link"]
    assert link["n_informative_rings"] == 0 and np.isnan(link["p_value"]) and "not tested" in link["note"]
