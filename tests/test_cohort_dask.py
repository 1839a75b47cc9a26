"""Cohorts on Dask workers: how the workers are set up, what a worker that cannot
see a slide reports, Ctrl-C then rerun on a cluster, SpatialData per sample,
same-name slides and ``..`` in paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from tibspace.cohort import read_manifest, run_cohort
from tibspace.cohort.workers import cohort_client, machine_cores, worker_env
from tibspace.synthetic.cohort import CohortDesign, make_cohort, make_sample_table

from _interrupt import interrupted_cohort

ROOT = Path(__file__).resolve().parents[1]
PANEL = ROOT / "sample_data" / "hcc_sample_panel.toml"
QUIET = {"progress": lambda line: None}


def _tree(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_worker_env_gives_each_worker_its_share_of_the_cores():
    assert worker_env(2, cores=8)["NUMBA_NUM_THREADS"] == "4"
    assert worker_env(2, cores=8)["OMP_NUM_THREADS"] == "4"
    assert worker_env(4, cores=2)["NUMBA_NUM_THREADS"] == "1"      # never 0 threads
    assert worker_env(3, cores=8)["OPENBLAS_NUM_THREADS"] == "2"


def _probe():
    """In a worker: its numba thread count, whether the outputs' libraries are imported
    already, and numba's on-disk cache hits/misses of tibspace's kernels so far."""
    import numba

    from tibspace.stats import _kernels
    from tibspace.tissue import _cellarea

    hits = misses = 0
    for mod in (_kernels, _cellarea):
        for v in vars(mod).values():
            st = getattr(v, "stats", None)
            if st is not None and hasattr(st, "cache_hits"):
                hits += sum(st.cache_hits.values())
                misses += sum(st.cache_misses.values())
    return {"numba_threads": numba.config.NUMBA_NUM_THREADS, "preloaded": "anndata" in sys.modules
            and "tibspace.pipeline" in sys.modules, "hits": hits, "misses": misses}


@pytest.mark.slow
def test_workers_are_warm_sized_and_load_kernels_from_the_disk_cache(tmp_path):
    from tibspace.cohort.run import run_sample

    make_cohort(tmp_path / "in", CohortDesign(patients_per_group=1, samples_per_patient=(1,)), seed=2)
    samples = read_manifest(tmp_path / "in" / "manifest.csv")
    # this process fills numba's disk cache (if a fresh checkout has none yet)
    assert (run_cohort(samples[:1], PANEL, tmp_path / "warm", scheduler="synchronous", **QUIET)["status"]
            == "done").all()
    client, close = cohort_client(None, 2)
    try:
        before = list(client.run(_probe).values())
        futs = [client.submit(run_sample, s, PANEL.read_text(), str(tmp_path / "out" / s.folder), None, 0,
                              pure=False, workers=[w]) for s, w in zip(samples, client.scheduler_info()["workers"])]
        assert [f.result().status for f in futs] == ["done", "done"]
        after = list(client.run(_probe).values())
    finally:
        close()
    share = max(1, machine_cores() // 2)
    assert all(p["numba_threads"] == share and p["preloaded"] for p in before), before
    # every kernel a sample used came from the cache: nothing compiled in a worker
    assert all(p["hits"] > 0 and p["misses"] == 0 for p in after), after


@pytest.mark.slow
def test_dask_worker_that_cannot_see_a_slide_and_a_corrupt_slide_are_recorded(tmp_path):
    """A path the client saw (manifest validation) but the worker does not: one line naming it."""
    make_cohort(tmp_path / "in", CohortDesign(patients_per_group=2, samples_per_patient=(1,)), seed=6)
    samples = read_manifest(tmp_path / "in" / "manifest.csv")
    gone, corrupt = samples[0], samples[1]
    gone.table.unlink()                              # gone after the client validated the manifest
    corrupt.table.write_bytes(b"PAR1 not really")
    status = run_cohort(samples, PANEL, tmp_path / "out", n_workers=1, **QUIET).set_index("sample_id")
    err = status.loc[gone.sample_id, "error"]
    assert status.loc[gone.sample_id, "status"] == "failed"
    assert str(gone.table) in err and "not visible from worker" in err and "\n" not in err
    assert status.loc[corrupt.sample_id, "status"] == "failed" and corrupt.table.name in status.loc[
        corrupt.sample_id, "error"]
    assert (status.drop([gone.sample_id, corrupt.sample_id])["status"] == "done").all()
    assert not (tmp_path / "out" / gone.folder).exists() and not (tmp_path / "out" / corrupt.folder).exists()
    written = pd.read_csv(tmp_path / "out" / "cohort_status.csv", keep_default_na=False)
    assert set(written["status"]) == {"done", "failed"}


@pytest.mark.slow
def test_dask_cohort_interrupted_then_rerun_runs_only_the_unfinished(tmp_path):
    samples = interrupted_cohort(tmp_path, PANEL, seed=8, n_workers=2)
    finished = {s.folder for s in samples if (tmp_path / "out" / s.folder / "tibspace_run_key.json").exists()}
    assert len(finished) >= 2
    # nothing half-written: a folder is either a whole result or absent (hidden staging aside)
    for p in (tmp_path / "out").iterdir():
        if not p.name.startswith("."):
            assert p.name in finished and (p / "metrics.json").exists(), p
    status = run_cohort(samples, PANEL, tmp_path / "out", n_workers=2, **QUIET)
    by_folder = dict(zip([s.folder for s in samples], status["status"]))
    assert {f for f, st in by_folder.items() if st == "cached"} == finished
    assert all(st == "done" for f, st in by_folder.items() if f not in finished)


def test_cohort_spatialdata_is_written_per_sample_and_is_part_of_the_run_key(tmp_path):
    import spatialdata as sd

    make_cohort(tmp_path / "in", CohortDesign(patients_per_group=1, samples_per_patient=(1,)), seed=9)
    samples = read_manifest(tmp_path / "in" / "manifest.csv")
    status = run_cohort(samples, PANEL, tmp_path / "out", scheduler="synchronous", spatialdata=True, **QUIET)
    assert (status["status"] == "done").all()
    for s in samples:
        zarr = tmp_path / "out" / s.folder / f"{s.folder}.zarr"
        assert zarr.is_dir(), zarr
        table = next(iter(sd.read_zarr(zarr).tables.values()))
        assert table.n_obs == len(pd.read_parquet(s.table))
    # the same inputs without SpatialData are another result: run again, not "cached"
    again = run_cohort(samples, PANEL, tmp_path / "out", scheduler="synchronous", **QUIET)
    assert (again["status"] == "done").all()


def test_same_name_tables_in_two_folders_get_two_samples(tmp_path, capsys):
    from tibspace.cli import main

    for k, cov in (("P11", [0.9, 0.8]), ("P12", [0.0, 0.1])):
        (tmp_path / k).mkdir()
        make_sample_table(cov, seed=len(k) + int(k[1:])).to_csv(tmp_path / k / "cells.csv", index=False)
    rc = main(["analyze", str(tmp_path / "P11" / "cells.csv"), str(tmp_path / "P12" / "cells.csv"),
               "--panel", str(PANEL), "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 0
    summary = pd.read_csv(tmp_path / "o" / "cohort_summary.csv").set_index("sample_id")
    assert sorted(summary.index) == ["P11_cells", "P12_cells"]
    for k in ("P11", "P12"):
        n = len(pd.read_csv(tmp_path / k / "cells.csv"))
        assert summary.loc[f"{k}_cells", "n_cells"] == n
        assert len(pd.read_csv(tmp_path / "o" / f"{k}_cells" / "cells.csv")) == n   # nothing overwritten
    cov = summary["barrier.barrier_coverage"]
    assert cov["P11_cells"] > 0.6 > 0.2 > cov["P12_cells"]


def test_dotdot_in_manifest_paths_and_ids_stays_inside_out(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "m").mkdir()
    make_sample_table([0.5], seed=3).to_parquet(tmp_path / "data" / "a.parquet", index=False)
    (tmp_path / "m" / "manifest.csv").write_text("sample_id,table\n../../escape,../data/a.parquet\n")
    (s,) = read_manifest(tmp_path / "m" / "manifest.csv")
    assert s.table == (tmp_path / "data" / "a.parquet").resolve()          # resolved against the manifest
    assert s.folder == "escape"
    before = _tree(tmp_path)
    status = run_cohort([s], PANEL, tmp_path / "out", scheduler="synchronous", **QUIET)
    assert (status["status"] == "done").all()
    new = _tree(tmp_path) - before
    assert new and all(p.is_relative_to(tmp_path / "out") for p in new), sorted(new)[:5]
    assert (tmp_path / "out" / "escape" / "metrics.json").exists()


def test_manifest_row_with_an_empty_path_names_the_row(tmp_path):
    from tibspace.errors import InputError

    (tmp_path / "x.csv").write_text("cell_id,x_um,y_um\n")
    (tmp_path / "m.csv").write_text("sample_id,table,response\na,x.csv,R\nb,   ,NR\n")
    with pytest.raises(InputError, match=r"line 3 \(b\): give exactly one of image or table") as exc:
        read_manifest(tmp_path / "m.csv")
    assert "\n" not in str(exc.value)
