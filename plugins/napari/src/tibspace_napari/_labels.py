"""Given cell masks in the dock: a napari Labels layer as the mask, and the given mask shown with the result.

- :class:`LabelsPicker` adds a "… or a Labels layer" choice under the dock's
  'Cell labels (optional)' field, listing the viewer's own Labels layers (not
  tibspace's result layers). A picked layer is written to a temporary label
  TIFF named after the layer, so ``run_image(labels=...)`` reads it like any
  ``--labels`` file (same checks, same messages); the file goes with the next
  run or the widget.
- After a run on a given mask read from a file, the mask (as the run read it:
  ``result.labels``, relabelled 1..n) is shown as the Labels layer
  :data:`GIVEN_LAYER` at the run's pixel size, under the result layers; a
  mask picked from the viewer is already there and is only made visible.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

#: Name of the Labels layer showing a mask given as a file.
GIVEN_LAYER = "given cell labels"
_FILE = "— file or folder above —"


def _result_names() -> set[str]:
    from ._layers import LAYER_NAMES

    return {*LAYER_NAMES, "gate preview", GIVEN_LAYER}


def _is_result_layer(layer: Any) -> bool:
    return layer.name in _result_names()


def labels_layer_names(viewer: Any) -> list[str]:
    """The viewer's Labels layers a user could give as the cell mask (tibspace's own excluded)."""
    from napari.layers import Labels

    return [ly.name for ly in viewer.layers if isinstance(ly, Labels) and not _is_result_layer(ly)]


class LabelsPicker:
    """The Labels-layer choice of the dock and the given-mask layer after a run."""

    def __init__(self, viewer: Any, path_edit: Any) -> None:
        from qtpy.QtWidgets import QComboBox

        self.viewer, self.path_edit = viewer, path_edit
        self.combo = QComboBox()
        self.combo.setToolTip("use a napari Labels layer (same size as the image) as the cell mask")
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self._picked: Optional[str] = None
        self.refresh()
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(self.refresh)

    def refresh(self, *_: Any) -> None:
        """List the viewer's Labels layers, keeping the current choice when it still exists."""
        current = self.combo.currentData()
        names = labels_layer_names(self.viewer)
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem(_FILE, None)
        for n in names:
            self.combo.addItem(n, n)
        if current in names:
            self.combo.setCurrentIndex(names.index(current) + 1)
        self.combo.blockSignals(False)

    def select(self, name: Optional[str]) -> None:
        """Pick the Labels layer ``name`` (None: the file field)."""
        i = self.combo.findData(name) if name is not None else 0
        if i < 0:
            raise KeyError(f"no Labels layer {name!r}; Labels layers: {', '.join(labels_layer_names(self.viewer))}")
        self.combo.setCurrentIndex(i)

    def argument(self) -> Optional[str]:
        """What ``run_image(labels=...)`` gets: the picked layer as a temporary TIFF, else the typed path."""
        import tifffile

        self.cleanup()
        name = self.combo.currentData()
        self._picked = name
        if name is None or name not in self.viewer.layers:
            self._picked = None
            return self.path_edit.text().strip() or None
        data = self.viewer.layers[name].data
        arr = np.asarray(data[0] if self.viewer.layers[name].multiscale else data)
        self._tmp = tempfile.TemporaryDirectory(prefix="tibspace-labels-")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "labels"
        path = Path(self._tmp.name) / f"{safe}.tif"
        tifffile.imwrite(path, arr if arr.dtype.kind in "iu" else arr.astype(np.int64, copy=False))
        return str(path)

    def show_given(self, result: Any) -> Optional[Any]:
        """After a run: show the given mask (see module docstring); returns the layer shown, if any."""
        from napari.layers import Labels

        if GIVEN_LAYER in self.viewer.layers:
            self.viewer.layers.remove(GIVEN_LAYER)
        seg = (getattr(result, "metrics", None) or {}).get("segmentation") or {}
        if seg.get("method") != "given labels" or seg.get("cells_source") != "given" or result.labels is None:
            return None
        if self._picked is not None and self._picked in self.viewer.layers:
            layer = self.viewer.layers[self._picked]
            layer.visible = True
            return layer
        px = float(result.pixel_size_um)
        layer = Labels(result.labels, name=GIVEN_LAYER, scale=(px, px), opacity=0.45, units=("um", "um"),
                       metadata={"tibspace_given": {"source": (seg.get("labels") or {}).get("cells", {})}})
        self.viewer.add_layer(layer)
        # under the result layers, over the stains
        names = _result_names() - {GIVEN_LAYER}
        first = min((i for i, ly in enumerate(self.viewer.layers) if ly.name in names), default=None)
        if first is not None:
            self.viewer.layers.move(self.viewer.layers.index(layer), first)
        return layer

    def cleanup(self) -> None:
        """Remove the temporary TIFF of a picked layer."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
