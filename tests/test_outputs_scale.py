"""Outputs that stay light as tables grow: one artist per plot layer, per-nest plots as
distributions for many nests, metrics.json holding numbers and file references."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import tibspace  # noqa: E402
from tibspace.cells import Panel  # noqa: E402
from tibspace.outputs.plotting import plot_barrier_coverage, plot_overview  # noqa: E402
from tibspace.synthetic import make_clustered_cells  # noqa: E402

_PANEL = {"parameters": {"n_envelope_sim": 0, "n_shifts": 19}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for n in (4000, 16000):
        d = tmp_path_factory.mktemp(f"n{n}")
        res = tibspace.analyze_table(make_clustered_cells(n, seed=0), Panel.from_dict(_PANEL), seed=0,
                                     out_dir=d)
        out[n] = (res, d)
    return out


@pytest.mark.parametrize("n", [4000, 16000])
def test_overview_is_one_artist_per_layer(runs, n):
    res, _ = runs[n]
    fig, ax = plt.subplots(figsize=(8, 8))
    plot_overview(res, ax, raster_above=10_000)
    n_nests = res.region.n_nests
    assert n_nests >= 3
    # cells (one scatter, or one image above raster_above), nest outlines, barrier covered,
    # barrier gaps, exclusion zones: at most one collection each, whatever the nest count
    layers = 1 + 1 + 2 + (1 if res.exclusion_zones else 0)
    assert len(ax.collections) + len(ax.images) <= layers
    assert len(ax.images) == (1 if len(res.cells) > 10_000 else 0)
    assert len(ax.lines) == 0 and len(ax.patches) == 0
    assert len(ax.texts) == n_nests  # the nest numbers (≤ max_labels nests)
    assert len(ax.get_legend().get_texts()) == res.cells["phenotype"].nunique()
    plt.close(fig)


def test_overview_of_many_nests_has_no_per_nest_artists(runs):
    res, _ = runs[16000]
    fig, ax = plt.subplots()
    plot_overview(res, ax, max_labels=2)
    assert len(ax.texts) == 0 and len(ax.collections) + len(ax.images) <= 5
    plt.close(fig)


@pytest.mark.parametrize("n_nests", [12, 500])
def test_barrier_coverage_plot_is_readable_for_hundreds_of_nests(n_nests):
    rng = np.random.default_rng(n_nests)
    pn = pd.DataFrame({"nest_id": np.arange(1, n_nests + 1),
                       "barrier_coverage": rng.uniform(0, 1, n_nests),
                       "perimeter_um": rng.uniform(100, 900, n_nests)})
    fig, ax = plt.subplots()
    plot_barrier_coverage(pn, ax)
    # one bar per nest for few nests, a 20-bin distribution for many
    assert len(ax.patches) == (n_nests if n_nests <= 40 else 20)
    if n_nests > 40:
        heights = np.array([p.get_height() for p in ax.patches])
        assert heights.sum() == pytest.approx(pn["perimeter_um"].sum())
    plt.close(fig)


def test_metrics_json_holds_numbers_and_references_not_tables(runs):
    sizes, nests = {}, {}
    for n, (res, d) in runs.items():
        text = (d / "metrics.json").read_text()
        m = json.loads(text)
        nests[n] = res.region.n_nests
        sizes[n] = len(text.encode())
        table = pd.read_csv(d / "nests.csv")
        for name in ("barrier", "exclusion"):
            ref = m["analyses"][name]["per_nest"]
            assert ref["file"] == "nests.csv" and ref["n"] == nests[n] == len(table)
            assert set(ref["columns"]) <= set(table.columns)
        assert m["analyses"]["barrier"]["segments"]["file"] == "segments.csv"
        # nothing per cell: no list in metrics.json is as long as the cell table
        assert _longest_list(m) < min(len(res.cells), 50 * nests[n])
    # grows with the nests only (bounded bytes per nest), not with the cells
    per_nest = (sizes[16000] - sizes[4000]) / max(nests[16000] - nests[4000], 1)
    assert per_nest < 3000
    assert sizes[16000] < 20_000 + 3000 * nests[16000]


def _longest_list(obj) -> int:
    if isinstance(obj, dict):
        return max((_longest_list(v) for v in obj.values()), default=0)
    if isinstance(obj, list):
        return max([len(obj)] + [_longest_list(v) for v in obj])
    return 0
