"""Full-window screenshot after an analysis of the sample (docs/images/napari_analysis.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication

from tibspace_napari._widget import TibspaceWidget

from .test_widget import RUN_TIMEOUT_MS

OUT = Path(__file__).resolve().parents[5] / "docs" / "images" / "napari_analysis.png"


def test_screenshot_after_analysis(make_napari_viewer, qtbot, run_cache):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("tibspace-napari", "hcc_sample")
    widget = TibspaceWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="tibspace", area="right")
    viewer.window._qt_window.resize(1400, 900)
    if "sample" in run_cache:
        widget._show_result(run_cache["sample"])
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    img = viewer.screenshot(str(OUT), canvas_only=False, flash=False)
    assert OUT.is_file()
    rgb = img[..., :3].reshape(-1, 3)
    assert img.shape[1] >= 1300 and img.shape[0] >= 850
    assert rgb.std() > 5
    assert len(np.unique(rgb, axis=0)) > 50
    # The canvas shows the analysis: barrier-green and gap-red pixels are present.
    assert np.any((rgb[:, 1] > 180) & (rgb[:, 0] < 40) & (rgb[:, 2] < 40))
    assert np.any((rgb[:, 0] > 200) & (rgb[:, 1] < 30) & (rgb[:, 2] < 30))
