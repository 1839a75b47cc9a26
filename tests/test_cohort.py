"""Cohorts: manifest validation, resume, failure isolation, Dask workers, and the
patient-level group comparison on synthetic cohorts with a planted difference."""

from __future__ import annotations

import os
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tibspace.cohort import (compare_groups, naive_nest_level_p, patient_table, read_manifest, run_cohort,
                             run_manifest)
from tibspace.errors import InputError
from tibspace.synthetic.cohort import CohortDesign, make_cohort

from _interrupt import interrupted_cohort

ROOT = Path(__file__).resolve().parents[1]
PANEL = ROOT / "sample_data" / "hcc_sample_panel.toml"
NULL_METRIC = "exclusion.stromal_t_density_per_mm2"   # same distribution in both groups


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """24 samples of 16 patients (8 R, 8 NR), barrier coverage planted 0.25 vs 0.65."""
    d = tmp_path_factory.mktemp("cohort")
    manifest = make_cohort(d / "in", CohortDesign(), seed=1)
    status = run_manifest(d / "in" / "manifest.csv", PANEL, d / "out", scheduler="synchronous", by="response",
                          progress=lambda line: None)
    return d, manifest, status


def test_planted_barrier_difference_found_null_metric_not(cohort):
    d, manifest, status = cohort
    assert len(manifest) >= 20 and (status["status"] == "done").all()
    table = pd.read_csv(d / "out" / "compare_response.csv").set_index("metric")
    assert table.loc["barrier.barrier_coverage", "q_value"] < 0.05
    assert table.loc["barrier.barrier_coverage", "effect_median_difference"] < 0  # median(R) − median(NR)
    assert table.loc[NULL_METRIC, "q_value"] >= 0.05
    assert table.loc["barrier.barrier_coverage", "n_NR"] == 8  # patients, not samples
    samples = pd.read_csv(d / "out" / "cohort_samples.csv").merge(manifest[["sample_id", "planted_coverage"]])
    # the measured coverage follows the planted one (its accuracy is tested in test_barrier.py)
    assert samples["barrier.barrier_coverage"].corr(samples["planted_coverage"], method="spearman") > 0.9
    for f in ("cohort_samples.parquet", "cohort_nests.parquet", "cohort_cells.h5ad", "cohort_report.html",
              "compare_response.png", "cohort_status.csv"):
        assert (d / "out" / f).exists(), f


def test_cohort_anndata_has_sample_ids(cohort):
    import anndata as ad

    d, manifest, _ = cohort
    a = ad.read_h5ad(d / "out" / "cohort_cells.h5ad")
    assert set(a.obs["sample_id"].cat.categories) == set(manifest["sample_id"])
    assert a.obs_names.is_unique


def test_rerun_skips_finished_samples_and_force_reruns(cohort, tmp_path):
    d, manifest, _ = cohort
    status = run_cohort(read_manifest(d / "in" / "manifest.csv"), PANEL, d / "out", scheduler="synchronous",
                        progress=lambda line: None)
    assert (status["status"] == "cached").all()
    # change one input: only that sample runs again
    t = pd.read_parquet(d / "in" / "R-P01-S1.parquet")
    t.iloc[:-1].to_parquet(d / "in" / "R-P01-S1.parquet", index=False)
    status = run_cohort(read_manifest(d / "in" / "manifest.csv"), PANEL, d / "out", scheduler="synchronous",
                        progress=lambda line: None)
    assert status.set_index("sample_id")["status"].to_dict() == {
        s: ("done" if s == "R-P01-S1" else "cached") for s in manifest["sample_id"]}


def test_interrupted_cohort_resumes_where_it_stopped(tmp_path):
    samples = interrupted_cohort(tmp_path, PANEL, seed=3, scheduler="synchronous")
    status = run_cohort(samples, PANEL, tmp_path / "out", scheduler="synchronous", progress=lambda line: None)
    assert (status["status"] == "cached").sum() == 2 and (status["status"] == "done").sum() == 4


def test_corrupt_sample_is_recorded_and_the_rest_run(tmp_path, capsys):
    from tibspace.cli import main

    make_cohort(tmp_path / "in", CohortDesign(patients_per_group=2, samples_per_patient=(1,)), seed=4)
    (tmp_path / "in" / "R-P02-S1.parquet").write_bytes(b"not a parquet file")
    rc = main(["cohort", str(tmp_path / "in" / "manifest.csv"), "--panel", str(PANEL), "--out", str(tmp_path / "out"),
               "--scheduler", "tcp://127.0.0.1:1"])
    assert rc == 2 and "cannot connect" in capsys.readouterr().err      # an unreachable cluster: one line
    rc = main(["cohort", str(tmp_path / "in" / "manifest.csv"), "--panel", str(PANEL), "--out", str(tmp_path / "out"),
               "--scheduler", "synchronous", "--quiet"])
    assert rc == 1                                                        # a failed sample: exit code ≠ 0
    status = pd.read_csv(tmp_path / "out" / "cohort_status.csv", keep_default_na=False)
    st = status.set_index("sample_id")
    assert st.loc["R-P02-S1", "status"] == "failed" and "R-P02-S1.parquet" in st.loc["R-P02-S1", "error"]
    assert (st.drop("R-P02-S1")["status"] == "done").all()
    assert not (tmp_path / "out" / "R-P02-S1").exists()


@pytest.mark.parametrize("rows, match", [
    ("sample_id,table\na,x.csv\na,y.csv\n", "duplicate sample_id"),
    ("sample_id,table\na,\n", "exactly one of image or table"),
    ("sample_id,table\n,x.csv\n", "empty sample_id"),
    ("sample_id,table\na,missing.csv\n", "does not exist"),
    ("sample_id,table\nA/b,x.csv\nA_b,y.csv\n", "duplicate result folder name"),
    ("id,table\na,x.csv\n", "sample_id column"),
])
def test_manifest_errors_are_one_line(tmp_path, rows, match):
    for f in ("x.csv", "y.csv"):
        (tmp_path / f).write_text("cell_id,x_um,y_um\n")
    (tmp_path / "m.csv").write_text(rows)
    with pytest.raises(InputError, match=match) as exc:
        read_manifest(tmp_path / "m.csv")
    assert "\n" not in str(exc.value)


def test_relative_paths_resolve_against_the_manifest(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text("cell_id,x_um,y_um\n")
    (tmp_path / "d" / "m.csv").write_text("sample_id,table,response\nS 1,x.csv,R\n")
    monkeypatch.chdir(tmp_path)
    (s,) = read_manifest("d/m.csv")
    assert s.table == (tmp_path / "d" / "x.csv").resolve() and s.clinical == {"response": "R"}
    assert s.folder == "S_1" and s.patient_id == "S 1"


def test_naive_nest_level_test_is_anti_conservative_on_null_cohorts():
    """Null cohorts (no group difference, patients differ): per-patient test holds its level, nests do not."""
    rng = np.random.default_rng(7)
    naive, patient_level = [], []
    for _ in range(200):
        rows = []
        for g in ("R", "NR"):
            for p in range(8):
                mu = 0.45 + rng.normal(0, 0.12)
                for n in range(10):
                    rows.append({"sample_id": f"{g}{p}", "patient_id": f"{g}{p}", "response": g,
                                 "barrier_coverage": float(np.clip(mu + rng.normal(0, 0.05), 0, 1))})
        nests = pd.DataFrame(rows)
        samples = nests[["sample_id", "patient_id", "response"]].drop_duplicates()
        naive.append(naive_nest_level_p(nests, "barrier_coverage", by="response"))
        pt = patient_table(samples, nests.drop(columns=["patient_id", "response"]), by="response")
        t = compare_groups(pt, by="response", n_boot=200).set_index("metric")
        patient_level.append(t.loc["nests.barrier_coverage", "p_value"])
    naive_rate = float(np.mean(np.array(naive) < 0.05))
    patient_rate = float(np.mean(np.array(patient_level) < 0.05))
    assert naive_rate > 0.3, naive_rate          # measured 0.5–0.6: anti-conservative
    assert patient_rate <= 0.09, patient_rate     # close to the nominal 0.05


@pytest.mark.slow
def test_dask_cohort_survives_a_killed_worker(tmp_path):
    import distributed

    make_cohort(tmp_path / "in", CohortDesign(patients_per_group=3, samples_per_patient=(1,)), seed=5)
    samples = read_manifest(tmp_path / "in" / "manifest.csv")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=50)
    killed = threading.Event()

    def kill_one_worker(line):
        if ": done" in line and not killed.is_set():
            killed.set()
            nanny = next(iter(cluster.workers.values()))
            os.kill(nanny.process.process.pid, 9)   # the worker process dies mid-cohort; its nanny restarts it

    try:
        status = run_cohort(samples, PANEL, tmp_path / "out", scheduler=cluster.scheduler_address,
                            progress=kill_one_worker)
    finally:
        cluster.close()
    assert killed.is_set()
    assert (status["status"] == "done").all(), status
    for s in samples:
        assert (tmp_path / "out" / s.folder / "metrics.json").exists()


def test_multi_image_qupath_table_is_split_into_samples(tmp_path, capsys):
    """A QuPath export covering two images becomes two samples, each with its own call."""
    from tibspace.cli import main
    from tibspace.synthetic.cohort import make_sample_table

    a = make_sample_table([0.9, 0.8], seed=1).assign(Image="slide_A.ome.tif")
    b = make_sample_table([0.0, 0.1], seed=2).assign(Image="slide_B.ome.tif")
    pd.concat([a, b]).to_csv(tmp_path / "export.csv", index=False)
    assert main(["analyze", str(tmp_path / "export.csv"), "--panel", str(PANEL), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    summary = pd.read_csv(tmp_path / "o" / "cohort_summary.csv").set_index("sample_id")
    assert sorted(summary.index) == ["export_slide_A", "export_slide_B"]
    assert summary.loc["export_slide_A", "n_cells"] == len(a) and summary.loc["export_slide_B", "n_cells"] == len(b)
    cov = summary["barrier.barrier_coverage"]
    assert cov["export_slide_A"] > 0.6 > 0.2 > cov["export_slide_B"]
    assert "barrier.link.p_value" in summary.columns   # nested results are kept, flattened


def test_cohort_pdf_prints_the_cohort_and_every_sample_report_on_a4(tmp_path, capsys):
    """--pdf: cohort_report.pdf on A4 with its widest tables inside the page, and a report.pdf in every
    sample's result set, also for samples an earlier run without --pdf had done (no rerun)."""
    from tibspace.cli import main
    from tibspace.io.resultset import read_manifest as result_files
    from tibspace.outputs.report_pdf import find_browser

    if find_browser() is None:
        pytest.skip("no Chromium (scripts/test.sh installs it as root)")
    import pypdf

    make_cohort(tmp_path / "in", CohortDesign(patients_per_group=2, samples_per_patient=(1,)), seed=6)
    manifest = pd.read_csv(tmp_path / "in" / "manifest.csv")
    for k in range(8):   # a wide manifest: eight clinical columns with long values
        manifest[f"clinical_annotation_{k}"] = [f"treatment-arm-{k}-cycle-{i}-long-free-text-note"
                                                for i in range(len(manifest))]
    manifest.to_csv(tmp_path / "in" / "manifest.csv", index=False)
    args = ["cohort", str(tmp_path / "in" / "manifest.csv"), "--panel", str(PANEL), "--out", str(tmp_path / "out"),
            "--scheduler", "synchronous", "--quiet", "--by", "response"]
    assert main(args) == 0 and not (tmp_path / "out" / "cohort_report.pdf").exists()
    first = manifest["sample_id"].iloc[0]
    t = pd.read_parquet(tmp_path / "in" / f"{first}.parquet")
    t.iloc[:-1].to_parquet(tmp_path / "in" / f"{first}.parquet", index=False)   # only this sample runs again
    capsys.readouterr()
    assert main(args + ["--pdf"]) == 0
    assert f"and {(tmp_path / 'out' / 'cohort_report.pdf').resolve()}" in capsys.readouterr().out
    status = pd.read_csv(tmp_path / "out" / "cohort_status.csv").set_index("sample_id")["status"]
    assert status.to_dict() == {s: ("done" if s == first else "cached") for s in manifest["sample_id"]}
    for s in manifest["sample_id"]:
        folder = tmp_path / "out" / s
        assert (folder / "report.pdf").read_bytes()[:5] == b"%PDF-", s
        assert {"report.pdf", "report.html", "tibspace_run_key.json"} <= result_files(folder), s
        assert s in pypdf.PdfReader(folder / "report.pdf").pages[0].extract_text()

    reader = pypdf.PdfReader(tmp_path / "out" / "cohort_report.pdf")
    for page in reader.pages:
        box = page.mediabox
        assert (float(box.width), float(box.height)) == pytest.approx((595.3, 841.9), abs=1.0)   # A4 in points
    # Chromium clips what overflows the page and prints no text for it: every column of the
    # samples table (the last ones too) and every metric must be there (lines may wrap anywhere).
    text = unicodedata.normalize("NFKC", "".join("".join(p.extract_text().split()) for p in reader.pages))  # ﬀ -> ff
    wide = [c for c in manifest.columns if c.startswith("clinical_annotation_")]
    for cell in wide + list(manifest[wide[-1]]) + list(manifest["sample_id"]) + ["time(s)report"]:
        assert cell in text, cell
    tested = pd.read_csv(tmp_path / "out" / "compare_response.csv").dropna(subset=["q_value"])["metric"]
    assert len(tested) > 20 and [m for m in tested if m not in text] == []
    # compare refreshes the PDF it finds beside the report
    before = (tmp_path / "out" / "cohort_report.pdf").stat().st_mtime_ns
    assert main(["compare", str(tmp_path / "out"), "--by", "response", "--n-boot", "200"]) == 0
    assert (tmp_path / "out" / "cohort_report.pdf").stat().st_mtime_ns > before


def test_cohort_pdf_without_a_browser_is_one_line(tmp_path, monkeypatch, capsys):
    from tibspace.cli import main

    (tmp_path / "a.parquet").write_bytes(b"not a parquet file")
    (tmp_path / "m.csv").write_text("sample_id,table\nA,a.parquet\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cohort_report.pdf").write_bytes(b"%PDF- of an earlier run")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.delenv("TIBSPACE_BROWSER", raising=False)
    assert main(["cohort", str(tmp_path / "m.csv"), "--panel", str(PANEL), "--out", str(tmp_path / "out"),
                 "--scheduler", "synchronous", "--quiet", "--pdf"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if "skipped" in ln]
    assert err == ["cohort_report.pdf and report.pdf skipped: no Chromium/Chrome found "
                   "(install chromium or set TIBSPACE_BROWSER)"]
    assert (tmp_path / "out" / "cohort_report.html").exists()
    assert not (tmp_path / "out" / "cohort_report.pdf").exists()   # an older PDF would tell another run
