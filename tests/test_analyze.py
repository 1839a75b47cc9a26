"""`tibspace analyze`: geometry, statistics and analyses on an existing cell table."""

import json

import numpy as np
import pandas as pd

from tibspace.cli import REPO_ROOT, main


def test_analyze_phenoptr_set4_output_contract(real_data, tmp_path, capsys):
    table = real_data / "phenoptr_lung_vectra" / "Set4_cell_seg_data.csv"
    out = tmp_path / "out"
    code = main(["analyze", str(table), "--panel", str(REPO_ROOT / "examples" / "panels" / "phenoptr_set4.toml"),
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    raw = pd.read_csv(table)
    cells = pd.read_parquet(out / "cells.parquet")
    # input columns kept, plus the geometry columns
    assert {"Cell X Position", "Tissue Category", "signed_dist_um", "compartment", "nest_id"} <= set(cells.columns)
    assert len(cells) == len(raw) == 6072
    assert (cells["phenotype"] == "tumour").sum() == 2257
    # tumour cells lie inside the tumour region built from them
    d = cells.loc[cells["phenotype"] == "tumour", "signed_dist_um"]
    assert (d <= 0).mean() >= 0.99
    prof = pd.read_csv(out / "profiles.csv")
    assert {"band_lo_um", "band_hi_um", "phenotype", "count", "area_um2", "density_per_mm2"} <= set(prof.columns)
    has_area = prof["area_um2"] > 0  # bands beyond the tissue have no area and no density
    np.testing.assert_allclose(prof.loc[has_area, "density_per_mm2"],
                               prof.loc[has_area, "count"] / prof.loc[has_area, "area_um2"] * 1e6, rtol=1e-5)
    assert prof.loc[has_area, "count"].sum() > 0.9 * 6072  # ±200 µm of the tumour covers nearly the whole field
    cross = pd.read_csv(out / "stats" / "cross_L.csv")
    assert {"statistic", "type_a", "type_b", "r_um", "value", "envelope_lo", "envelope_hi"} <= set(cross.columns)
    key = cross[(cross.type_a == "tumour") & (cross.type_b == "CD8_T")]
    assert len(key) and key["envelope_lo"].notna().all() and (key["envelope_lo"] <= key["envelope_hi"]).all()
    ne = pd.read_csv(out / "stats" / "neighbourhood_enrichment.csv")
    assert {"type_a", "type_b", "count", "zscore"} <= set(ne.columns)
    m = json.loads((out / "metrics.json").read_text())
    assert "barrier" in m["skipped"] and "shield" in m["skipped"]  # no SPP1 / no image
    assert m["analyses"]["exclusion"]["sample"]["immune_phenotype"] in {"inflamed", "excluded", "desert"}
    assert m["parameters"]["margin_um"] == 50.0 and m["input"]["sha256"]


def test_analyze_cohort_writes_one_folder_per_sample_and_a_summary(real_data, tmp_path):
    from tibspace.synthetic import make_clustered_cells

    for seed in (1, 2):
        make_clustered_cells(4000, seed=seed).to_csv(tmp_path / f"s{seed}.csv", index=False)
    panel = tmp_path / "p.toml"
    panel.write_text("[parameters]\nseed = 0\n")
    out = tmp_path / "cohort"
    assert main(["analyze", str(tmp_path / "s1.csv"), str(tmp_path / "s2.csv"), "--panel", str(panel),
                 "--out", str(out), "--quiet"]) == 0
    summary = pd.read_csv(out / "cohort_summary.csv")
    assert summary["sample_id"].tolist() == ["s1", "s2"] and (summary["n_cells"] == 4000).all()
    assert "barrier.barrier_coverage" in summary.columns and "exclusion.immune_phenotype" in summary.columns
    assert (out / "s1" / "metrics.json").is_file() and (out / "s2" / "metrics.json").is_file()


def test_envelopes_can_be_switched_off_for_speed():
    import tibspace
    from tibspace.cells import Panel
    from tibspace.synthetic import make_clustered_cells

    cells = make_clustered_cells(5000, seed=3)
    off = tibspace.analyze_table(cells, Panel.from_dict({"parameters": {"n_envelope_sim": 0}}))
    on = tibspace.analyze_table(cells, Panel.from_dict({"parameters": {"n_envelope_sim": 19}}))
    assert off.stats["cross_L"]["envelope_lo"].isna().all()
    assert on.stats["cross_L"]["envelope_lo"].notna().sum() > 0
    np.testing.assert_array_equal(off.stats["cross_L"]["value"], on.stats["cross_L"]["value"])


def test_no_tumour_cells_says_so_and_still_writes_everything_else(tmp_path):
    import tibspace
    from tibspace.cells import Panel
    from tibspace.synthetic import make_clustered_cells

    cells = make_clustered_cells(3000, seed=4)
    cells = cells[cells["phenotype"] != "tumour"].reset_index(drop=True)
    r = tibspace.analyze_table(cells, Panel.from_dict({}), out_dir=tmp_path)
    assert r.metrics["skipped"]["tumour_geometry"].startswith("no tumour region")
    assert {"barrier", "exclusion", "shield"} <= set(r.metrics["skipped"])
    assert (r.cells["compartment"] == "no_tumour_region").all()
    assert "neighbourhood_enrichment" in r.stats  # statistics do not need a tumour
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "cells.parquet").is_file()
