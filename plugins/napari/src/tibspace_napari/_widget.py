"""The tibspace dock widget: choose image + panel, preview a gate, run, see, export.

A thin shell: the analysis is :func:`tibspace.run_image`, run in a
``napari.qt.threading`` worker so the viewer stays responsive
(:mod:`._worker`); results become layers through
:func:`tibspace_napari._layers.result_layers`; Export calls
:func:`tibspace.write_outputs` (the CLI's files). The controls are laid out by
:mod:`._dock`, the gate preview lives in :mod:`._gate_preview`, the panel
overrides in :mod:`._settings`. Errors a user can cause
(:class:`tibspace.errors.TibspaceError`) are shown in the dock and as a napari
notification.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QWidget

from tibspace.errors import TibspaceError

from . import _layers
from ._dock import build_dock
from ._gate_preview import _GatePreview
from ._reader import METADATA_KEY, UM
from ._settings import NO_IMAGE_TEXT, PARAMETERS, image_status, load_panel_with_overrides  # noqa: F401
from ._worker import _ProgressRelay, _RunControl, warm_up_napari  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["TibspaceWidget", "load_panel_with_overrides", "PARAMETERS"]

_FROM_PANEL = "(from panel)"


class TibspaceWidget(_GatePreview, _RunControl, QWidget):
    """Dock widget running the tibspace pipeline on an open image.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is opened from the menu).
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.result: Any = None
        self.worker: Any = None
        self.export_worker: Any = None
        self.exported: list[Path] = []
        self.results_dock: Any = None
        self._cancel = threading.Event()
        self._pbar: Any = None
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._on_progress)
        self._pixel_cache: dict[tuple[str, str], np.ndarray] = {}
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        build_dock(self)
        self._fit_width()

    def _fit_width(self) -> None:
        """Minimum width = the controls' preferred width plus a vertical scroll bar: never clipped sideways.

        Measured again when shown (the style and fonts are known only then).
        """
        bar = self._scroll.verticalScrollBar().sizeHint().width()
        inner = self._inner.layout()
        inner.activate()
        self.setMinimumWidth(max(inner.sizeHint().width(), inner.minimumSize().width()) + bar + 4)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self._fit_width()
        super().showEvent(event)

    # ------------------------------------------------------------ images
    def _images(self) -> dict[str, dict]:
        """Open tibspace images: path -> metadata of their first layer."""
        out: dict[str, dict] = {}
        for layer in self.viewer.layers:
            meta = layer.metadata.get(METADATA_KEY) if hasattr(layer, "metadata") else None
            if meta and "path" in meta and "channel" in meta and meta["path"] not in out:
                out[meta["path"]] = {**meta, "channels": []}
            if meta and meta.get("path") in out and "channel" in meta:
                out[meta["path"]]["channels"].append(meta["channel"])
        return out

    def _refresh_images(self, *_: Any) -> None:
        images = self._images()
        current = self.image_combo.currentData()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for path in images:
            self.image_combo.addItem(Path(path).name, path)
        if current in images:
            self.image_combo.setCurrentIndex(list(images).index(current))
        self.image_combo.blockSignals(False)
        if self.image_combo.currentData() != current:
            self._on_image_changed()

    def _current_image(self) -> Optional[dict]:
        path = self.image_combo.currentData()
        return self._images().get(path) if path else None

    def _on_image_changed(self, *_: Any) -> None:
        meta = self._current_image()
        for combo in (self.nuclear_combo, self.membrane_combo):
            combo.clear()
            combo.addItem(_FROM_PANEL, None)
        if meta is None:
            if self.worker is None:
                self.status_label.setText(NO_IMAGE_TEXT)
            return
        for combo in (self.nuclear_combo, self.membrane_combo):
            for ch in meta["channels"]:
                combo.addItem(ch, ch)
        px = meta.get("pixel_size_um")
        self.pixel_size.setValue(0.0 if px else self.pixel_size.value())
        if self.worker is None:
            self.status_label.setText(image_status(meta))
        if meta.get("panel") and not self.panel_edit.text():
            self.panel_edit.setText(str(meta["panel"]))
            self._on_panel_changed()
        if self.result is None:
            self._fill_markers(meta["channels"], {})
        if not self.out_edit.text():
            p = Path(meta["path"])
            stem = p.name.split(".")[0] if p.is_file() else p.name
            self.out_edit.setText(str(p.parent / f"{stem}_tibspace"))

    def _browse_panel(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Marker panel", "", "Panel (*.toml)")
        if path:
            self.panel_edit.setText(path)
            self._on_panel_changed()

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.out_edit.setText(path)

    def _on_panel_changed(self) -> None:
        """Show the panel's parameters in the dock (and its errors, if any)."""
        text = self.panel_edit.text().strip()
        if not text:
            return
        try:
            from tibspace.cells import load_panel

            panel = load_panel(text)
        except TibspaceError as exc:
            self.show_error(exc)
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.show_error(exc)
            return
        self.clear_error()
        for key, spin in self.param_spins.items():
            if key in panel.parameters:
                spin.setValue(float(panel.parameters[key]))
        if "seed" in panel.parameters:
            self.seed_spin.setValue(int(panel.parameters["seed"]))
    # ------------------------------------------------------------- layers
    def _replace_layer(self, data: Any, kwargs: dict, kind: str) -> Any:
        """Update a same-named layer of the same type in place, else (re)create it."""
        from napari.layers import Layer

        name = kwargs["name"]
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        # Same kind and geometry: update in place (a slider drag must stay smooth).
        if old is not None and old._type_string == kind and not isinstance(data, list):
            if kind == "points":
                old.data = data
                old.metadata = kwargs.get("metadata", {})
                return old
            if kind == "labels" and not old.multiscale and old.data.shape == data.shape \
                    and tuple(old.scale) == tuple(kwargs["scale"]) \
                    and tuple(old.translate) == tuple(kwargs.get("translate", (0.0, 0.0))):
                old.data = data
                old.metadata = kwargs.get("metadata", {})
                return old
        if old is not None:
            self.viewer.layers.remove(old)
        layer = Layer.create(data, kwargs, kind)
        self.viewer.add_layer(layer)
        return layer

    def _show_result(self, result: Any) -> None:
        self.result = result
        for name in (*_layers.LAYER_NAMES, "gate preview"):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self._adopt_pixel_size(result)
        for layer in _layers.create_layers(_layers.result_layers(result)):
            self.viewer.add_layer(layer)
        if "cells by phenotype" in self.viewer.layers:
            # Hovering then shows each cell's numbers in the status bar.
            self.viewer.layers.selection.active = self.viewer.layers["cells by phenotype"]
        self._scale_bar().visible = True
        self._pixel_cache.clear()
        gates = {}
        for m, g in (result.metrics.get("gates") or {}).items():
            gates[g.get("column", m)] = float(g["value"])
        cols = [c for c in gates] + [c for c in (result.channel_columns or []) if c not in gates]
        self._fill_markers(cols, gates)
        self.labels_picker.show_given(result)
        self._show_results_dock(result)
        self.export_button.setEnabled(True)

    def _scale_bar(self) -> Any:
        overlays = getattr(getattr(self.viewer, "canvas", None), "overlays", None)
        bar = getattr(overlays, "scale_bar", None) if overlays is not None else None
        return bar if bar is not None else self.viewer.scale_bar

    def _adopt_pixel_size(self, result: Any) -> None:
        """Image layers opened without a pixel size take the run's (µm world)."""
        px = float(result.pixel_size_um)
        path = str(result.image_path) if result.image_path is not None else None
        for layer in self.viewer.layers:
            meta = layer.metadata.get(METADATA_KEY, {})
            if meta.get("path") == path and "channel" in meta and meta.get("pixel_size_um") is None:
                layer.scale = (px, px)
                layer.units = UM
                meta["pixel_size_um"] = px
        self._pixel_cache.clear()

    def _show_results_dock(self, result: Any) -> None:
        from ._results import ResultsWidget

        if self.results_dock is None:
            self.results_widget = ResultsWidget(self.viewer)
            self.results_dock = self.viewer.window.add_dock_widget(
                self.results_widget, name="tibspace results", area="right", tabify=False)
            own = self._own_dock()
            if own is not None:
                # Beside the analysis dock, both full height: stacked under it, the
                # controls were squeezed into a short scroll area after a run.
                self.viewer.window._qt_window.splitDockWidget(own, self.results_dock, Qt.Orientation.Horizontal)
        self.results_widget.set_result(result)
        self.results_dock.setVisible(True)

    def _own_dock(self) -> Any:
        """The QDockWidget holding this widget (None when it is not docked)."""
        from qtpy.QtWidgets import QDockWidget

        w = self.parent()
        while w is not None and not isinstance(w, QDockWidget):
            w = w.parent()
        return w
