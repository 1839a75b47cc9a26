"""Cohorts: a manifest of samples run on Dask with resume and failure isolation,
cohort tables, and the patient-level group comparison (responders vs non-responders)."""

from tibspace.cohort.compare import (bootstrap_median_difference, cliffs_delta, compare_groups,
                                     naive_nest_level_p, patient_table, plot_comparison)
from tibspace.cohort.manifest import Sample, read_manifest
from tibspace.cohort.report import print_cohort_pdf, print_sample_pdfs, write_cohort_report
from tibspace.cohort.run import run_cohort, run_key, run_sample
from tibspace.cohort.tables import cohort_tables, flatten, sample_row, write_cohort_tables

__all__ = ["Sample", "read_manifest", "run_cohort", "run_key", "run_sample", "cohort_tables",
           "write_cohort_tables", "flatten", "sample_row", "patient_table", "compare_groups",
           "bootstrap_median_difference", "cliffs_delta", "naive_nest_level_p", "plot_comparison",
           "write_cohort_report", "print_cohort_pdf", "print_sample_pdfs", "compare_cohort", "run_manifest"]


def compare_cohort(out_dir, *, by: str, groups=None, n_boot: int = 2000, seed: int = 0, pdf=None):
    """Compare the groups of a finished cohort folder; writes ``compare_<by>.csv``,
    ``compare_<by>.png`` and refreshes ``cohort_report.html`` (and ``cohort_report.pdf``
    when ``pdf``; ``None``: when the folder has one already). Returns the table."""
    from pathlib import Path

    import pandas as pd

    from tibspace.errors import InputError
    from tibspace.io import safe_name
    from tibspace.outputs import write_table

    out_dir = Path(out_dir)
    if not (out_dir / "cohort_samples.parquet").exists():
        raise InputError(f"{out_dir}: no cohort_samples.parquet; run `tibspace cohort MANIFEST.csv` into it first")
    samples_t = pd.read_parquet(out_dir / "cohort_samples.parquet")
    nests_f = out_dir / "cohort_nests.parquet"
    nests_t = pd.read_parquet(nests_f) if nests_f.exists() else None
    manifest_cols = [c for c in samples_t.columns if c in _manifest_columns(out_dir)]
    patients = patient_table(samples_t, nests_t, by=by, exclude=manifest_cols)
    table = compare_groups(patients, by=by, groups=groups, n_boot=n_boot, seed=seed)
    stem = out_dir / f"compare_{safe_name(by)}"
    write_table(table, stem, formats=("csv",))
    fig = plot_comparison(patients, table, by=by)
    fig.savefig(stem.with_suffix(".png"))
    import json

    samples = [Sample(**{**d, "image": None, "table": None, "labels": None})
               for d in json.loads((out_dir / "cohort_samples.json").read_text())]
    status = pd.read_csv(out_dir / "cohort_status.csv", keep_default_na=False)
    status["seconds"] = pd.to_numeric(status["seconds"], errors="coerce")
    write_cohort_report(out_dir, samples, status, by=by, patients=patients, comparison=table,
                        comparison_csv=stem.with_suffix(".csv").name)
    _cohort_pdf(out_dir, (out_dir / "cohort_report.pdf").exists() if pdf is None else pdf)
    return table


def _cohort_pdf(out_dir, pdf: bool) -> None:
    """Print ``cohort_report.pdf`` from the fresh HTML, or remove an older one (it would tell another run)."""
    if pdf:
        _say(print_cohort_pdf(out_dir))
    else:
        (out_dir / "cohort_report.pdf").unlink(missing_ok=True)


def _say(note) -> None:
    """A one-line note on stderr (a PDF that could not be printed), if any."""
    import sys

    if note:
        print(note, file=sys.stderr, flush=True)


def _manifest_columns(out_dir) -> set:
    import json

    try:
        return {k for d in json.loads((out_dir / "cohort_samples.json").read_text()) for k in d["clinical"]}
    except (OSError, ValueError, KeyError):
        return set()


def run_manifest(manifest, panel, out_dir, *, scheduler=None, n_workers=None, seed=None, force=False,
                 by=None, progress=None, spatialdata=False, max_pixels=None, pdf=False):
    """The whole cohort job: validate the manifest, run every sample, write the
    cohort tables and report (with the ``by`` comparison when given).

    ``pdf``: also ``cohort_report.pdf`` and every finished sample's ``report.pdf``
    (printed in the sample's task; a sample found done gets its PDF from its
    ``report.html``, without a rerun). Without a browser, one line says so.

    Returns the status table (one row per sample: done / cached / failed).
    """
    import json
    from pathlib import Path

    from tibspace.io import atomic_path
    from tibspace.outputs.report_pdf import NO_BROWSER, find_browser

    samples = read_manifest(manifest)
    out_dir = Path(out_dir)
    if pdf and find_browser() is None:
        _say(f"cohort_report.pdf and report.pdf skipped: {NO_BROWSER}")
        pdf = False
    status = run_cohort(samples, panel, out_dir, scheduler=scheduler, n_workers=n_workers, seed=seed,
                        force=force, progress=progress, spatialdata=spatialdata, max_pixels=max_pixels, pdf=pdf)
    if pdf:
        for note in print_sample_pdfs(out_dir, samples, status):
            _say(note)
    write_cohort_tables(samples, out_dir, status)
    with atomic_path(out_dir / "cohort_samples.json") as tmp:
        tmp.write_text(json.dumps([{"sample_id": s.sample_id, "folder": s.folder, "patient_id": s.patient_id,
                                    "clinical": s.clinical} for s in samples], indent=1), encoding="utf-8")
    if by:
        compare_cohort(out_dir, by=by, seed=seed or 0, pdf=pdf)
    else:
        write_cohort_report(out_dir, samples, status)
        _cohort_pdf(out_dir, pdf)
    return status
