"""Tumour nests must be tumour: scattered tumour cells make no nest, real nests stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tibspace
from tibspace.tissue import filter_nests, tumour_region_from_cells

REPO = Path(__file__).resolve().parents[1]
PANEL = REPO / "sample_data" / "hcc_sample_panel.toml"


@pytest.mark.parametrize("seed", range(10))
def test_scattered_tumour_cells_make_no_nest(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    x, y = rng.uniform(0, 1000, n), rng.uniform(0, 1000, n)
    tum = np.zeros(n, bool)
    tum[:150] = True  # 150 tumour cells scattered among 2,850 others (a real CODEX spot: 147)
    region = tumour_region_from_cells(x[tum], y[tum])
    kept, comp = filter_nests(region, x, y, tum)
    # before the test: 13-18 "nests" on 6-8 % of the tissue; after: at most one chance clump
    # (10+ tumour cells at > 1,200/mm²) survives, holding at most 1 % of the tissue
    assert comp["kept"].sum() <= 1 and comp.loc[comp["kept"], "area_um2"].sum() <= 0.01 * 1e6


def test_dense_nest_kept_next_to_scattered_cells():
    from tibspace.synthetic.cohort import make_sample_table

    cells = make_sample_table([0.5, 0.5], seed=3)
    rng = np.random.default_rng(0)
    extra = pd.DataFrame({"x_um": rng.uniform(0, 900, 40), "y_um": rng.uniform(0, 900, 40), "phenotype": "tumour"})
    cells = pd.concat([cells, extra], ignore_index=True)
    cells["cell_id"] = np.arange(1, len(cells) + 1)
    r = tibspace.analyze_table(cells, PANEL)
    comp = r.metrics["nest_composition"]
    assert r.region.n_nests == 2
    assert all(p > 0.5 for p in comp["purity_kept"])
    assert comp["n_dropped"] == comp["n_candidates"] - 2


def test_real_tumours_keep_their_nests(real_data):
    """inForm Set4 (lung, CK+) and MCMICRO exemplar-001 (lung, ECAD+): every nest passes."""
    s = pd.read_csv(real_data / "phenoptr_lung_vectra" / "Set4_cell_seg_data.csv", low_memory=False)
    x, y = s["Cell X Position"].to_numpy(float), s["Cell Y Position"].to_numpy(float)
    tum = (s["Phenotype"] == "CK+").to_numpy()
    kept, comp = filter_nests(tumour_region_from_cells(x[tum], y[tum]), x, y, tum)
    assert comp["kept"].all()
    e = pd.read_csv(real_data / "scimap_exemplar001" / "exemplar-001_cells_with_scimap_phenotype.csv")
    x, y = e["X_centroid"].to_numpy(float) * 0.65, e["Y_centroid"].to_numpy(float) * 0.65
    tum = (e["phenotype"] == "ECAD+").to_numpy()
    kept, comp = filter_nests(tumour_region_from_cells(x[tum], y[tum]), x, y, tum)
    # two micro-regions of 4 and 8 tumour cells go; 99 % of the tumour cells stay in nests
    assert comp.loc[comp["kept"], "n_tumour"].sum() >= 0.99 * comp["n_tumour"].sum(), comp
