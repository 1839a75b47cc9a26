"""What users see and carry away: the HTML report, AnnData in scverse conventions."""

from __future__ import annotations

import re
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tibspace

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    result = tibspace.run_image(REPO / "sample_data" / "hcc_sample.ome.tif",
                                REPO / "sample_data" / "hcc_sample_panel.toml", out_dir=out, seed=0)
    return result, out


def test_report_reads_as_plain_words(demo):
    result, out = demo
    html = (out / "report.html").read_text()
    ex = result.metrics["analyses"]["exclusion"]["sample"]
    assert f"Immune phenotype: {ex['immune_phenotype']}" in html
    assert "Tumour immune barrier" in html and "Shields:" in html and "Glossary" in html
    for figure in ("stain thumbnail", "cell map", "profile", "barrier coverage", "shields", "enrichment", "cross-L"):
        assert f'alt="{figure}"' in html, figure
    table = html[html.index("<h2>Per nest</h2>"):html.index("<h2>Glossary</h2>")]
    assert not re.search(r"\d e[+-]\d|\de\+\d", table)          # no 3.21e+04 in the nest table
    assert "{'" not in html and '{"' not in table                # no Python/JSON dict dumps
    assert table.count("<tr>") == result.region.n_nests + 1
    assert 'href="nests.csv"' in html and "@media print" in html


def test_report_says_what_was_not_measured(tmp_path):
    from tibspace.synthetic import make_clustered_cells

    cells = make_clustered_cells(2000, seed=3)
    out = tmp_path / "o"
    tibspace.analyze_table(cells, REPO / "sample_data" / "hcc_sample_panel.toml", out_dir=out)
    html = (out / "report.html").read_text()
    assert "Not measured:" in html and "shield" in html.split("Not measured:")[1][:400]


def test_anndata_follows_scverse_conventions(demo):
    import anndata as ad

    result, out = demo
    a = ad.read_h5ad(out / "cells.h5ad")
    assert a.obs["shielded"].dtype == bool
    assert a[a.obs["shielded"]].n_obs == int(result.cells["shielded"].fillna(False).astype(bool).sum())
    assert "nan" not in list(a.obs["phenotype"].cat.categories)
    assert set(a.obs["sample_id"]) == {result.sample_id}
    lib = a.uns["spatial"][result.sample_id]
    assert lib["images"]["hires"].shape[2] == 3 and lib["scalefactors"]["tissue_hires_scalef"] > 0
    assert len(a.uns["phenotype_colors"]) == len(a.obs["phenotype"].cat.categories)
    z = a.uns["phenotype_nhood_enrichment"]["zscore"]
    assert z.shape == (len(a.obs["phenotype"].cat.categories),) * 2 and np.isfinite(z).any()


def test_anndata_plots_in_squidpy_without_arguments(demo):
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    sq = pytest.importorskip("squidpy")
    _, out = demo
    a = ad.read_h5ad(out / "cells.h5ad")
    sq.pl.spatial_scatter(a, color="phenotype")
    sq.pl.nhood_enrichment(a, cluster_key="phenotype")


def _chromium():
    from tibspace.outputs.report_pdf import find_browser

    return find_browser()


def _pdf_pages(data: bytes) -> int:
    """Page count from the PDF's page tree (``/Type /Page`` objects), without a PDF library."""
    return len(re.findall(rb"/Type\s*/Page(?![a-z])", data))


def test_report_pdf_printed_by_a_headless_browser(demo, tmp_path, capsys):
    """--pdf: report.pdf beside report.html, ≥ 1 page, holding the summary sentence."""
    result, _ = demo
    if _chromium() is None:
        pytest.skip("no Chromium (scripts/test.sh installs it as root)")
    out = tmp_path / "with_pdf"
    from tibspace.pipeline import write_outputs

    write_outputs(result, out, pdf=True)
    data = (out / "report.pdf").read_bytes()
    assert data[:5] == b"%PDF-" and b"%%EOF" in data[-1024:]
    sentence = f"Immune phenotype: {result.metrics['analyses']['exclusion']['sample']['immune_phenotype']}"
    assert sentence in (out / "report.html").read_text()
    try:
        import pypdf
    except ImportError:
        assert _pdf_pages(data) >= 1
        return
    reader = pypdf.PdfReader(out / "report.pdf")
    assert len(reader.pages) >= 1 and len(reader.pages) == _pdf_pages(data)
    box = reader.pages[0].mediabox  # A4 (the report's @page rule), in points
    assert (float(box.width), float(box.height)) == pytest.approx((595.3, 841.9), abs=1.0)
    text = " ".join(" ".join((p.extract_text() or "").split()) for p in reader.pages)
    assert sentence in text and result.sample_id in text


def test_report_pdf_without_a_browser_is_a_one_line_note(demo, tmp_path, monkeypatch, capsys):
    from tibspace.cli import main

    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.delenv("TIBSPACE_BROWSER", raising=False)
    table = demo[1] / "cells.parquet"
    assert main(["analyze", str(table), "--panel", str(REPO / "sample_data" / "hcc_sample_panel.toml"),
                 "--out", str(tmp_path / "o"), "--pdf", "--quiet"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "report.pdf" in ln]
    assert err == ["report.pdf skipped: no Chromium/Chrome found (install chromium or set TIBSPACE_BROWSER)"]
    assert (tmp_path / "o" / "report.html").exists() and not (tmp_path / "o" / "report.pdf").exists()


def test_report_screenshot_in_a_headless_browser(demo, tmp_path):
    """Renders report.html in headless Chromium; ``TIBSPACE_UPDATE_DOC_IMAGES=1`` keeps the picture in
    docs/images/ (a plain test run leaves the checkout untouched)."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium (scripts/test.sh installs it as root)")
    _, out = demo
    shot = tmp_path / "report.png"
    from tibspace.outputs.report_pdf import headless_command

    subprocess.run(headless_command(browser, tmp_path / "profile", "--hide-scrollbars", "--window-size=1200,2200",
                                    f"--screenshot={shot}", (out / "report.html").as_uri()),
                   check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    if os.environ.get("TIBSPACE_UPDATE_DOC_IMAGES") == "1":
        shutil.copy(shot, REPO / "docs" / "images" / "report.png")


def test_spatialdata_zarr_reloads_with_every_element(tmp_path):
    sd = pytest.importorskip("spatialdata")
    from tibspace.cli import main

    assert main(["demo", "--out", str(tmp_path / "o"), "--spatialdata", "--quiet"]) == 0
    s = sd.read_zarr(tmp_path / "o" / "hcc_sample.zarr")
    assert set(s.images) == {"stains"} and set(s.labels) == {"cell_labels"}
    assert set(s.shapes) == {"tumour_nests", "exclusion_zones"}
    t = s.tables["cells"]
    assert t.uns["spatialdata_attrs"]["region"] == "cell_labels"
    labels = np.asarray(s.labels["cell_labels"])
    assert set(t.obs["instance_id"]) == set(np.unique(labels[labels > 0]))
    # the nests are in µm, where the cells are
    import shapely

    nests = shapely.union_all(s.shapes["tumour_nests"].geometry.to_numpy())
    xy = t.obsm["spatial"]
    tum = (t.obs["phenotype"] == "tumour").to_numpy()
    inside = shapely.contains_xy(nests, xy[tum, 0], xy[tum, 1]).mean()
    assert inside > 0.9
