"""Given cell masks in the dock: a napari Labels layer as the mask; the given mask shown with the result.

The mask is the sample's planted ground truth (``sample_data/truth/truth_cells.tif``).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tibspace_napari._labels import GIVEN_LAYER, labels_layer_names
from tibspace_napari._sample_data import sample_paths
from tibspace_napari._widget import TibspaceWidget

RUN_TIMEOUT_MS = 300_000


@pytest.fixture
def sample_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("tibspace-napari", "hcc_sample")
    return viewer


@pytest.fixture(scope="module")
def truth():
    image, _ = sample_paths()
    path = image.parent / "truth" / "truth_cells.tif"
    if not path.exists():
        pytest.skip("no planted truth beside the sample")
    return path, tifffile.imread(path)


def _run(qtbot, widget):
    widget.run()
    assert widget.worker is not None, widget.error_label.text()
    with qtbot.waitSignal(widget.worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert widget.error_label.isHidden(), widget.error_label.text()
    return widget.result


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Same labelled pixels, one-to-one ids (relabelling allowed)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_a_napari_labels_layer_is_the_given_mask(sample_viewer, qtbot, truth):
    _, mask = truth
    viewer = sample_viewer
    _, panel = sample_paths()
    widget = TibspaceWidget(viewer)
    widget.panel_edit.setText(str(panel))
    px = widget._current_image()["pixel_size_um"]
    viewer.add_labels(mask, name="my painted cells", scale=(px, px))
    # the picker lists the user's Labels layer, never tibspace's own
    assert labels_layer_names(viewer) == ["my painted cells"]
    widget.labels_picker.select("my painted cells")
    r = _run(qtbot, widget)
    seg = r.metrics["segmentation"]
    assert seg["method"] == "given labels" and seg["cells_source"] == "given"
    ids = np.unique(mask[mask > 0])
    assert len(r.cells) == len(ids)
    assert _same_partition(np.asarray(r.labels), mask)
    # the picked layer is the mask on screen; no second copy; result layers not offered as masks
    assert GIVEN_LAYER not in viewer.layers and viewer.layers["my painted cells"].visible
    assert "cells" in viewer.layers and labels_layer_names(viewer) == ["my painted cells"]
    assert widget.labels_picker._tmp is None or all(
        p.suffix == ".tif" for p in __import__("pathlib").Path(widget.labels_picker._tmp.name).iterdir())


def test_a_given_mask_file_shows_as_a_labels_layer(sample_viewer, qtbot, truth):
    from napari.layers import Labels

    path, mask = truth
    viewer = sample_viewer
    _, panel = sample_paths()
    widget = TibspaceWidget(viewer)
    widget.panel_edit.setText(str(panel))
    widget.labels_edit.setText(str(path))
    r = _run(qtbot, widget)
    layer = viewer.layers[GIVEN_LAYER]
    assert isinstance(layer, Labels) and layer.visible
    assert _same_partition(np.asarray(layer.data), mask)
    assert tuple(layer.scale) == pytest.approx((r.pixel_size_um, r.pixel_size_um))
    # under every result layer, over the stains
    names = [ly.name for ly in viewer.layers]
    assert names.index(GIVEN_LAYER) < names.index("cells") < names.index("cells by phenotype")
    assert all(names.index(GIVEN_LAYER) > i for i, ly in enumerate(viewer.layers) if ly._type_string == "image")
    # a second run without a mask takes the layer away
    widget.labels_edit.setText("")
    widget.labels_picker.show_given(type("R", (), {"metrics": {"segmentation": {"method": "classical"}},
                                                    "labels": None})())
    assert GIVEN_LAYER not in viewer.layers


def test_a_wrong_size_labels_layer_is_the_docks_one_line_error(sample_viewer, qtbot, monkeypatch):
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda *a: None)
    _, panel = sample_paths()
    widget = TibspaceWidget(sample_viewer)
    widget.panel_edit.setText(str(panel))
    sample_viewer.add_labels(np.ones((40, 30), np.int32), name="tiny")
    widget.labels_picker.select("tiny")
    widget.run()
    with qtbot.waitSignal(widget.worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    text = widget.error_label.text()
    assert "tiny.tif" in text and "does not match" in text and "\n" not in text.strip()
    assert widget.result is None
