"""The cohort report (HTML, and PDF with ``--pdf``): status of every sample, the group comparison and links
to each sample's report.

The PDFs are printed by a headless Chromium (:mod:`tibspace.outputs.report_pdf`);
the report's ``@media print`` rules fit its tables to A4 (long names wrap).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from tibspace.cohort.manifest import Sample


def _fmt(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    if not math.isfinite(f):
        return "–"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e5):
        return f"{f:.2e}"
    return f"{f:.3g}"


def write_cohort_report(out_dir: str | Path, samples: list[Sample], status: pd.DataFrame, *,
                        by: str | None = None, patients: pd.DataFrame | None = None,
                        comparison: pd.DataFrame | None = None, comparison_csv: str = "") -> Path:
    """Render ``DIR/cohort_report.html`` from the jinja2 template."""
    import jinja2

    from tibspace.cohort.compare import plot_comparison
    from tibspace.io import atomic_path

    env = jinja2.Environment(loader=jinja2.PackageLoader("tibspace.cohort", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["fmt"] = _fmt
    st = status.set_index("sample_id")
    rows = [{"sample_id": s.sample_id, "patient_id": s.patient_id, "folder": s.folder, **s.clinical,
             "status": st.loc[s.sample_id, "status"], "error": st.loc[s.sample_id, "error"],
             "seconds": st.loc[s.sample_id, "seconds"]} for s in samples]
    clinical = list(dict.fromkeys(k for s in samples for k in s.clinical))
    ctx = dict(title=Path(out_dir).name, samples=rows, clinical=clinical, n_total=len(samples),
               n_done=int((status["status"] != "failed").sum()), n_failed=int((status["status"] == "failed").sum()),
               n_cached=int((status["status"] == "cached").sum()), comparison=None, by=by)
    if comparison is not None and patients is not None:
        fig = plot_comparison(patients, comparison, by=by)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        groups = [g.strip() for g in comparison["groups"].iloc[0].split(" vs ")] if len(comparison) else []
        ctx.update(comparison=comparison[comparison["q_value"].notna()].to_dict(orient="records"),
                   groups=groups, plot=base64.b64encode(buf.getvalue()).decode(), n_patients=len(patients),
                   n_tested=int(comparison["q_value"].notna().sum()), comparison_csv=comparison_csv)
    html = env.get_template("cohort_report.html.j2").render(**ctx)
    target = Path(out_dir) / "cohort_report.html"
    with atomic_path(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target


def print_cohort_pdf(out_dir: str | Path, browser: Optional[str] = None) -> Optional[str]:
    """Print ``DIR/cohort_report.html`` to ``DIR/cohort_report.pdf``; None when written, else a one-line note.

    A previous ``cohort_report.pdf`` is removed when printing fails, so the PDF
    never tells another story than the HTML beside it.
    """
    from tibspace.outputs.report_pdf import print_pdf

    out_dir = Path(out_dir)
    note = print_pdf(out_dir / "cohort_report.html", out_dir / "cohort_report.pdf", browser=browser)
    if note:
        (out_dir / "cohort_report.pdf").unlink(missing_ok=True)
    return note


def print_sample_pdfs(out_dir: str | Path, samples: Sequence[Sample], status: pd.DataFrame,
                      browser: Optional[str] = None) -> list[str]:
    """``report.pdf`` for every finished sample whose folder has none (e.g. done by an earlier run
    without ``--pdf``), added to its result set (:func:`tibspace.io.extended_result_set`).

    Returns
    -------
    list of str
        One line per sample whose PDF could not be printed (``"<sample_id>: <why>"``).
    """
    from tibspace.io import extended_result_set
    from tibspace.outputs.report_pdf import print_pdf

    finished = set(status.loc[status["status"] != "failed", "sample_id"])
    notes = []
    for s in samples:
        folder = Path(out_dir) / s.folder
        if s.sample_id not in finished or (folder / "report.pdf").exists() or not (folder / "report.html").exists():
            continue
        with extended_result_set(folder) as stage:
            note = print_pdf(stage / "report.html", stage / "report.pdf", browser=browser)
        if note:
            notes.append(f"{s.sample_id}: {note}")
    return notes
