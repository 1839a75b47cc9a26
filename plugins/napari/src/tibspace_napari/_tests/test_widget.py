"""The dock widget end to end on the bundled sample: run, layers, dock, gate, export, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication

from tibspace_napari._sample_data import sample_paths
from tibspace_napari._widget import TibspaceWidget

RUN_TIMEOUT_MS = 300_000  # the pipeline on the sample; generous for a loaded CI box


@pytest.fixture
def sample_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("tibspace-napari", "hcc_sample")
    return viewer


def _run(qtbot, widget):
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(50)
    steps = []
    widget._relay.progressed.connect(lambda s, d, t: steps.append((s, d, t)))
    widget.run()
    assert widget.worker is not None, widget.error_label.text()
    with qtbot.waitSignal(widget.worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    timer.stop()
    return steps, ticks


def test_sample_run_end_to_end(sample_viewer, qtbot, tmp_path, run_cache):
    viewer = sample_viewer
    image, panel = sample_paths()
    widget = TibspaceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="tibspace")
    # The sample's own panel is picked up from the layers' metadata.
    assert widget.panel_edit.text() == str(panel)
    assert widget.image_combo.currentData() == str(image)

    steps, ticks = _run(qtbot, widget)
    assert widget.error_label.isHidden(), widget.error_label.text()
    r = widget.result
    run_cache["sample"] = r
    assert r is not None and len(r.cells) > 100
    # Progress reached the GUI from the worker thread, and the event loop kept
    # running during the analysis (the viewer stayed responsive).
    names = {s for s, _, _ in steps}
    assert {"phenotyping", "barrier", "exclusion"} <= names
    assert len(ticks) >= 10

    _assert_result_layers(viewer.layers, r)
    _assert_results_dock(widget, viewer, r)
    _assert_gate_preview(widget, viewer.layers, r)
    _assert_export(widget, qtbot, tmp_path, r)


def _assert_result_layers(layers, r):
    """The result layers: names, scales, points on their cells, barrier runs add up."""
    px = r.pixel_size_um
    for name in ("cells", "cells by phenotype", "tumour nests", "barrier covered",
                 "barrier gaps", "exclusion zones", "NET mask", "Col1 mask"):
        assert name in layers, f"missing layer {name}"
    assert tuple(layers["cells"].scale) == (px, px)
    assert tuple(layers["NET mask"].scale) == pytest.approx((px, px))
    pts = layers["cells by phenotype"]
    assert tuple(pts.scale) == (1.0, 1.0) and len(pts.data) == len(r.cells)
    np.testing.assert_allclose(pts.data, r.cells[["y_um", "x_um"]].to_numpy())
    for col in ("cell_id", "phenotype", "signed_dist_um", "compartment", "nest_id",
                "shield_coverage"):
        assert col in pts.features, col
    assert pts.features["phenotype"].tolist() == r.cells["phenotype"].astype(str).tolist()
    # Points sit on their own cell's pixels.
    rc = np.round(pts.data / px).astype(int)
    assert np.mean(r.labels[rc[:, 0], rc[:, 1]] == pts.features["cell_id"].to_numpy()) > 0.98
    nests = layers["tumour nests"]
    assert set(nests.features["nest_id"]) == set(range(1, r.region.n_nests + 1))
    # the layers draw the analysis' own covered / gap runs: lengths add up to its numbers
    covered = layers["barrier covered"].features["length_um"].sum()
    gaps = layers["barrier gaps"].features["length_um"].sum()
    sample = r.metrics["analyses"]["barrier"]["sample"]
    assert covered == pytest.approx(sample["covered_length_um"], rel=1e-6)
    assert covered + gaps == pytest.approx(sample["assessable_perimeter_um"], rel=1e-6)


def _assert_results_dock(widget, viewer, r):
    """Results dock: numbers per sample and per nest, figures, click → camera on nest."""
    dock = widget.results_widget
    shown = {dock.summary_table.item(i, 0).text(): dock.summary_table.item(i, 1).text()
             for i in range(dock.summary_table.rowCount())}
    cov = r.metrics["analyses"]["barrier"]["sample"]["barrier_coverage"]
    assert shown["barrier coverage"] == f"{cov:.3g}"
    assert shown["cells"] == f"{len(r.cells):,}"
    assert shown["immune phenotype"] == r.metrics["analyses"]["exclusion"]["sample"][
        "immune_phenotype"]
    assert dock.nest_table.rowCount() == r.region.n_nests
    assert len(dock.figure.axes) == 2 and dock.figure.axes[0].lines
    dock.nest_table.cellClicked.emit(1, 0)
    target = r.region.nests[int(dock._nest_ids[1]) - 1]
    x0, y0, x1, y1 = target.bounds
    from tibspace_napari._results import _camera

    np.testing.assert_allclose(_camera(viewer).center[-2:], ((y0 + y1) / 2, (x0 + x1) / 2))


def _assert_gate_preview(widget, layers, r):
    """Gate preview from the cell table: no re-analysis, counts match the table."""
    idx = widget.marker_combo.findData("CD8")
    widget.marker_combo.setCurrentIndex(idx)
    gate = r.metrics["gates"]["CD8"]["value"]
    assert widget.gate_spin.value() == pytest.approx(gate, abs=1e-3)
    for g in (gate, 2 * gate):
        widget.set_gate(g)
        prev = layers["gate preview"]
        n = int((r.cells["CD8"] > widget.gate_spin.value()).sum())
        assert len(prev.data) == n == prev.metadata["tibspace"]["n_positive"]
    assert widget.result is r


def _assert_export(widget, qtbot, tmp_path, r):
    """Export writes the CLI's files."""
    out = tmp_path / "out"
    widget.out_edit.setText(str(out))
    widget.export()
    with qtbot.waitSignal(widget.export_worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert widget.error_label.isHidden(), widget.error_label.text()
    for f in ("cells.parquet", "cells.csv", "metrics.json", "gates.csv", "nests.csv",
              "segments.csv", "cell_labels.ome.tif"):
        assert (out / f).is_file(), f
    assert sorted(widget.exported) == sorted(p for p in out.rglob("*") if p.is_file())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_cells"] == len(r.cells)


def test_panel_overrides_do_not_touch_the_file(tmp_path):
    from tibspace.errors import PanelError
    from tibspace.cells import load_panel
    from tibspace_napari._widget import load_panel_with_overrides

    _, panel_path = sample_paths()
    before = panel_path.read_text()
    p = load_panel_with_overrides(panel_path, parameters={"margin_um": 30.0, "segment_um": 25.0},
                                  nuclear="NaKATPase", gates={"CD8": 42.5})
    assert p.parameters["margin_um"] == 30.0 and p.parameters["segment_um"] == 25.0
    assert p.nuclear == ["NaKATPase"] and p.markers["CD8"].gate == 42.5
    ref = load_panel(panel_path)
    assert p.markers["CD3"] == ref.markers["CD3"] and p.phenotypes == ref.phenotypes
    assert panel_path.read_text() == before
    with pytest.raises(PanelError, match="NOPE"):
        load_panel_with_overrides(panel_path, gates={"NOPE": 1.0})


def test_cancel_stops_the_run(sample_viewer, qtbot):
    widget = TibspaceWidget(sample_viewer)
    widget.run()
    widget.cancel()
    with qtbot.waitSignal(widget.worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert widget.result is None
    assert "cancelled" in widget.status_label.text().lower()
    assert widget.error_label.isHidden()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert "cells by phenotype" not in sample_viewer.layers


def test_bad_panel_is_shown_in_the_dock(sample_viewer, qtbot, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget = TibspaceWidget(sample_viewer)
    bad = tmp_path / "bad_panel.toml"
    bad.write_text("[channels\nnuclear = DAPI\n")  # not TOML
    widget.panel_edit.setText(str(bad))
    widget.run()
    assert widget.worker is None
    assert widget.error_label.isVisible() or not widget.error_label.isHidden()
    assert "bad_panel.toml" in widget.error_label.text()
    assert shown and "bad_panel.toml" in shown[-1]


def test_missing_channel_error_from_worker(sample_viewer, qtbot, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    _, panel = sample_paths()
    text = panel.read_text().replace('nuclear = ["DAPI"]', 'nuclear = ["Hoechst_missing"]')
    assert "Hoechst_missing" in text
    p = tmp_path / "panel_missing.toml"
    p.write_text(text)
    widget = TibspaceWidget(sample_viewer)
    widget.panel_edit.setText(str(p))
    widget.run()
    with qtbot.waitSignal(widget.worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert "Hoechst_missing" in widget.error_label.text()
    assert "unexpected" not in widget.error_label.text()  # a TibspaceError, one line
    assert shown and "Hoechst_missing" in shown[-1]
    assert widget.result is None


def test_no_pixel_size_is_asked_for(make_napari_viewer, qtbot, tmp_path):
    import tifffile

    folder = tmp_path / "mibi_like"
    folder.mkdir()
    for name in ("HH3", "CD8"):
        tifffile.imwrite(folder / f"{name}.tif", np.ones((32, 32), np.uint8))
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="no pixel size"):
        viewer.open(str(folder), plugin="tibspace-napari")
    widget = TibspaceWidget(viewer)
    widget.panel_edit.setText(str(sample_paths()[1]))
    widget.run()
    assert widget.worker is None
    assert "pixel size" in widget.error_label.text()
    # Before a run the gate preview works on pixels of the open image.
    widget.marker_combo.setCurrentIndex(widget.marker_combo.findData("CD8"))
    widget.set_gate(0.5)
    assert np.all(np.asarray(viewer.layers["gate preview"].data) == 1)
    widget.set_gate(2.0)
    assert np.all(np.asarray(viewer.layers["gate preview"].data) == 0)
    # A run with a pixel size puts the image layers into that µm world.
    from types import SimpleNamespace

    widget._adopt_pixel_size(SimpleNamespace(pixel_size_um=0.39, image_path=folder))
    for name in ("HH3", "CD8"):
        assert tuple(viewer.layers[name].scale) == (0.39, 0.39)
        assert str(viewer.layers[name].units[0]) == "micrometer"
        assert viewer.layers[name].metadata["tibspace"]["pixel_size_um"] == 0.39


def _assert_dock_fits(widget, viewer):
    """Nothing of the dock is cut off on a 1920×1080 screen, also after a run."""
    from qtpy.QtWidgets import QAbstractSpinBox

    hint = widget.minimumSizeHint()
    assert hint.width() <= 1920 // 3 and hint.height() <= 1080 // 2, (hint.width(), hint.height())
    assert not widget._scroll.horizontalScrollBar().isVisible()
    assert widget.width() >= widget.minimumWidth()
    for spin in widget.findChildren(QAbstractSpinBox):  # arrows and digits fully shown
        assert spin.width() >= spin.minimumSizeHint().width(), spin.objectName()
    # The results dock sits beside the analysis dock, not under it squeezing it.
    assert widget.height() >= 0.6 * viewer.window._qt_window.height()
    assert widget.results_dock.height() >= 0.6 * viewer.window._qt_window.height()
    assert viewer.window._qt_viewer.canvas.size[1] >= 0.4 * 1920  # the canvas keeps a good part of the width


def test_status_names_the_open_sample(sample_viewer):
    widget = TibspaceWidget(sample_viewer)
    text = widget.status_label.text()
    assert not text.startswith("Open an image") and text.startswith("hcc_sample.ome.tif open:")
    assert "µm/pixel" in text and "Run analysis" in text
    sample_viewer.layers.clear()
    assert widget.status_label.text().startswith("Open an image")


# --------------------------------------------------------------------- screenshot
# Last in this file: it reuses the run of test_sample_run_end_to_end when that ran.
OUT = Path(__file__).resolve().parents[5] / "docs" / "images" / "napari_analysis.png"


def test_screenshot_after_analysis(make_napari_viewer, qtbot, run_cache):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("tibspace-napari", "hcc_sample")
    widget = TibspaceWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="tibspace", area="right")
    viewer.window._qt_window.resize(1920, 1080)  # a full-HD screen
    assert widget.status_label.text().startswith("hcc_sample.ome.tif open:")
    if "sample" in run_cache:
        widget._on_returned(run_cache["sample"])  # as if the run had just finished
    else:
        widget.run()
        with qtbot.waitSignal(widget.worker.finished, timeout=RUN_TIMEOUT_MS):
            pass
        run_cache["sample"] = widget.result
    assert widget.result is not None, widget.error_label.text()
    qtbot.waitUntil(dock.isVisible)
    qtbot.waitUntil(widget.results_dock.isVisible)
    QApplication.processEvents()
    viewer.reset_view()
    qtbot.wait(200)
    _assert_dock_fits(widget, viewer)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    img = viewer.screenshot(str(OUT), canvas_only=False, flash=False)
    assert OUT.is_file()
    rgb = img[..., :3].reshape(-1, 3)
    assert img.shape[1] >= 1900 and img.shape[0] >= 1000
    assert rgb.std() > 5
    assert len(np.unique(rgb, axis=0)) > 50
    # The canvas shows the analysis: barrier-green and gap-red pixels are present.
    assert np.any((rgb[:, 1] > 180) & (rgb[:, 0] < 40) & (rgb[:, 2] < 40))
    assert np.any((rgb[:, 0] > 200) & (rgb[:, 1] < 30) & (rgb[:, 2] < 30))


def test_cell_labels_field_is_used(sample_viewer, qtbot, tmp_path, monkeypatch):
    """The 'Cell labels (optional)' file goes to run_image: a wrong-shape mask is the dock's error."""
    import tifffile

    monkeypatch.setattr("napari.utils.notifications.show_error", lambda *a: None)
    bad = tmp_path / "cells_masks.tif"
    tifffile.imwrite(bad, np.ones((30, 30), np.uint16))
    _, panel = sample_paths()
    widget = TibspaceWidget(sample_viewer)
    widget.panel_edit.setText(str(panel))
    widget.labels_edit.setText(str(bad))
    widget.run()
    with qtbot.waitSignal(widget.worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert "cells_masks.tif" in widget.error_label.text() and "does not match" in widget.error_label.text()
    assert widget.result is None
