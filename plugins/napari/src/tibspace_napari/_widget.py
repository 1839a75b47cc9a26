"""The tibspace dock widget: choose image + panel, preview a gate, run, see, export.

A thin shell: the analysis is :func:`tibspace.pipeline.run_image`, run in a
``napari.qt.threading`` worker so the viewer stays responsive; results become
layers through :func:`tibspace_napari._layers.result_layers`; Export calls
:func:`tibspace.pipeline.write_outputs` (the CLI's files). Errors a user can
cause (:class:`tibspace.errors.TibspaceError`) are shown in the dock and as a
napari notification.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QFrame, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                            QPushButton, QScrollArea, QSlider, QSpinBox, QVBoxLayout,
                            QWidget)

from tibspace.errors import Cancelled, InputError, TibspaceError

from . import _layers
from ._reader import METADATA_KEY, UM
from ._labels import LabelsPicker

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["TibspaceWidget", "load_panel_with_overrides", "PARAMETERS"]

#: Parameters exposed in the dock: (panel key, label, default µm, maximum).
PARAMETERS = (
    ("cell_expansion_um", "Cell expansion (µm)", 3.0, 50.0),
    ("margin_um", "Margin half-width (µm)", 50.0, 1000.0),
    ("barrier_width_um", "Barrier width (µm)", 50.0, 1000.0),
    ("segment_um", "Segment length (µm)", 50.0, 5000.0),
)
_FROM_PANEL = "(from panel)"
_SLIDER_STEPS = 1000


def load_panel_with_overrides(panel_path: str | Path, *, parameters: Optional[dict] = None,
                              nuclear: Optional[str] = None, membrane: Optional[str] = None,
                              gates: Optional[dict] = None, pixel_size_um: Optional[float] = None):
    """Load a panel and apply the dock's settings (the panel file is not changed).

    Parameters
    ----------
    panel_path : path
        Panel TOML.
    parameters : dict, optional
        ``{name: value}`` merged over the panel's ``[parameters]``.
    nuclear, membrane : str, optional
        A channel to use as the nuclear / membrane channel instead of the panel's.
    gates : dict, optional
        ``{marker: value}`` manual gates replacing the panel's.
    pixel_size_um : float, optional
        Used when the image records no pixel size.

    Returns
    -------
    tibspace.panel.Panel

    Raises
    ------
    tibspace.errors.PanelError
        Malformed panel, or a gate for a marker the panel does not have.
    """
    from tibspace.errors import PanelError
    from tibspace.cells import load_panel

    panel = load_panel(panel_path)
    changes: dict[str, Any] = {}
    if parameters:
        changes["parameters"] = {**dict(panel.parameters), **parameters}
    if nuclear:
        changes["nuclear"] = [nuclear]
    if membrane:
        changes["membrane"] = [membrane]
    if gates:
        markers = dict(panel.markers)
        for m, v in gates.items():
            if m not in markers:
                raise PanelError(f"{panel_path}: gate given for marker {m!r} which the panel's "
                                 f"[markers] lacks; it has: {', '.join(markers)}")
            spec = markers[m]
            markers[m] = (dataclasses.replace(spec, gate=float(v)) if dataclasses.is_dataclass(spec)
                          else {**dict(spec), "gate": float(v)})
        changes["markers"] = markers
    if pixel_size_um:
        changes["pixel_size_um"] = float(pixel_size_um)
    if not changes:
        return panel
    if dataclasses.is_dataclass(panel):
        fields = {f.name for f in dataclasses.fields(panel)}
        unknown = set(changes) - fields
        if unknown:
            raise InputError(f"this tibspace Panel has no field(s) {sorted(unknown)}; "
                             "update tibspace-napari to match tibspace")
        return dataclasses.replace(panel, **changes)
    for k, v in changes.items():
        setattr(panel, k, v)
    return panel


def warm_up_napari() -> None:
    """JIT-compile napari's numba helpers used by the result layers, off screen.

    napari compiles (numba) its Shapes triangulation helpers and its direct
    label-colour mapping for 32/64-bit labels on first use: seconds per
    function and dtype, once per process (measured 7–12 s for Shapes and
    ~10 s for int32 labels on a loaded 2-core box). The widget calls this in
    a worker thread while the analysis runs, so showing results does not
    stall the viewer.
    """
    try:
        from napari.layers import Shapes
        from napari.utils.colormaps import DirectLabelColormap

        tri = np.array([[0.0, 0.0], [0.0, 4.0], [3.0, 5.0], [4.0, 0.0], [2.0, 1.0]])
        Shapes([tri, tri + 10.0], shape_type=["path", "polygon"])
        cmap = DirectLabelColormap(color_dict={None: np.ones(4), 0: np.zeros(4)})
        for dtype in (np.int32, np.uint32, np.int64):
            cmap._data_to_texture(np.array([[0, 1], [2, 3]], dtype=dtype))
    except Exception:  # noqa: BLE001 - an optimisation only
        pass


_WARMED_UP = threading.Event()


def _warm_up_once() -> None:
    if not _WARMED_UP.is_set():
        _WARMED_UP.set()
        warm_up_napari()


NO_IMAGE_TEXT = "Open an image (File › Open, or File › Open Sample › tibspace)."


def image_status(meta: dict) -> str:
    """The dock's status line for an open image (its name, channels, pixel size, what to do next).

    Examples
    --------
    >>> image_status({"path": "/d/s.ome.tif", "channels": ["DAPI", "CD8"], "pixel_size_um": 0.5})
    's.ome.tif open: 2 channels, 0.5 µm/pixel. Check the panel and press Run analysis.'
    >>> image_status({"path": "/d/s.ome.tif", "channels": ["DAPI"], "pixel_size_um": None})
    's.ome.tif: no pixel size in the file; set it above before running.'
    """
    name = Path(meta["path"]).name
    px = meta.get("pixel_size_um")
    if px is None:
        return f"{name}: no pixel size in the file; set it above before running."
    n = len(meta.get("channels") or [])
    return f"{name} open: {n} channel{'s' if n != 1 else ''}, {px:g} µm/pixel. Check the panel and press Run analysis."


class _ProgressRelay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(str, int, int)


class TibspaceWidget(QWidget):
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
        # Controls live in a scroll area so the dock can be short (small screens,
        # results dock underneath).
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        # Run controls, progress and errors stay visible above the scroll area.
        top = QVBoxLayout()
        top.setContentsMargins(6, 6, 6, 0)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run analysis")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        top.addLayout(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        top.addWidget(self.progress_bar)
        self.status_label = QLabel(NO_IMAGE_TEXT)
        self.status_label.setWordWrap(True)
        top.addWidget(self.status_label)
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #ff6060; font-weight: bold;")
        self.error_label.setVisible(False)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top.addWidget(self.error_label)
        outer.addLayout(top)

        # Vertical scrolling only: the dock is as wide as its widest row, so
        # nothing (spin-box buttons, browse buttons) is ever cut off sideways.
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumHeight(160)
        inner = QWidget()
        scroll.setWidget(inner)
        outer.addWidget(scroll)
        self._scroll, self._inner = scroll, inner
        root = QVBoxLayout(inner)

        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        form.addRow("Image", self.image_combo)
        self.pixel_size = QDoubleSpinBox(decimals=4, minimum=0.0, maximum=1000.0, singleStep=0.05)
        self.pixel_size.setSpecialValueText("from file")
        self.pixel_size.setToolTip("µm per pixel; 'from file' uses the image's metadata")
        form.addRow("Pixel size (µm)", self.pixel_size)
        row = QHBoxLayout()
        self.panel_edit = QLineEdit()
        self.panel_edit.setPlaceholderText("marker panel .toml")
        self.panel_edit.editingFinished.connect(self._on_panel_changed)
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_panel)
        row.addWidget(self.panel_edit)
        row.addWidget(browse)
        form.addRow("Panel", row)
        self.nuclear_combo = QComboBox()
        self.membrane_combo = QComboBox()
        form.addRow("Nuclear channel", self.nuclear_combo)
        form.addRow("Membrane channel", self.membrane_combo)
        self.labels_edit = QLineEdit()
        self.labels_edit.setPlaceholderText("mask file or run folder: skips segmentation")
        form.addRow("Cell labels (optional)", self.labels_edit)
        self.labels_picker = LabelsPicker(self.viewer, self.labels_edit)
        form.addRow("… or a Labels layer", self.labels_picker.combo)
        root.addWidget(box)

        box = QGroupBox("Parameters")
        form = QFormLayout(box)
        self.param_spins: dict[str, QDoubleSpinBox] = {}
        for key, label, default, maximum in PARAMETERS:
            spin = QDoubleSpinBox(decimals=1, minimum=0.5, maximum=maximum, value=default)
            spin.setSuffix(" µm")
            self.param_spins[key] = spin
            form.addRow(label.replace(" (µm)", ""), spin)
        self.seed_spin = QSpinBox(minimum=0, maximum=999_999_999, value=0)
        form.addRow("Seed", self.seed_spin)
        root.addWidget(box)

        box = QGroupBox("Gate preview")
        form = QFormLayout(box)
        self.marker_combo = QComboBox()
        self.marker_combo.currentIndexChanged.connect(self._on_marker_changed)
        form.addRow("Marker", self.marker_combo)
        self.gate_slider = QSlider(Qt.Orientation.Horizontal)
        self.gate_slider.setRange(0, _SLIDER_STEPS)
        self.gate_slider.valueChanged.connect(self._on_slider)
        self.gate_spin = QDoubleSpinBox(decimals=3, minimum=0.0, maximum=1e6)
        self.gate_spin.valueChanged.connect(self._on_gate_value)
        row = QHBoxLayout()
        self.gate_spin.setMinimumWidth(self.gate_spin.minimumSizeHint().width())  # every digit shown
        row.addWidget(self.gate_slider, 1)
        row.addWidget(self.gate_spin, 0)
        form.addRow("Gate", row)
        self.use_gate = QCheckBox("use this gate in the next run")
        form.addRow(self.use_gate)
        self.gate_info = QLabel("")
        self.gate_info.setWordWrap(True)
        form.addRow(self.gate_info)
        root.addWidget(box)

        box = QGroupBox("Export")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("output folder")
        out_browse = QPushButton("…")
        out_browse.setMaximumWidth(30)
        out_browse.clicked.connect(self._browse_out)
        row.addWidget(self.out_edit)
        row.addWidget(out_browse)
        form.addRow("Folder", row)
        self.export_button = QPushButton("Export results")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self.export)
        form.addRow(self.export_button)
        root.addWidget(box)
        root.addStretch(1)
        for combo in inner.findChildren(QComboBox):
            # Long channel or image names are elided in their field instead of widening the dock.
            combo.setMinimumContentsLength(12)
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
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

    # -------------------------------------------------------- gate preview
    def _fill_markers(self, columns: list[str], gates: dict[str, float]) -> None:
        """List the gateable columns; the preview layer appears on first use."""
        self._gates_used = gates
        self.marker_combo.blockSignals(True)
        self.marker_combo.clear()
        for col in columns:
            self.marker_combo.addItem(col, col)
        self.marker_combo.blockSignals(False)
        self._on_marker_changed(preview=False)

    def _marker_values(self, column: str) -> Optional[np.ndarray]:
        """Values the gate applies to: per-cell means after a run, else coarse pixels."""
        if self.result is not None and column in self.result.cells:
            return self.result.cells[column].to_numpy(dtype=float)
        src = self._pixel_source(column)
        return None if src is None else src[0]

    def _pixel_source(self, column: str) -> Optional[tuple]:
        """``(pixels, scale, translate)`` for the pixel gate preview of a channel.

        Reads at most ~4M pixels: the coarsest pyramid level (subsampled), or
        for a big non-pyramidal image a central 2048² window (only the tiles
        it touches are decoded).
        """
        meta = self._current_image()
        if meta is None:
            return None
        key = (meta["path"], column)
        if key not in self._pixel_cache:
            layer = self._channel_layer(meta["path"], column)
            if layer is None:
                return None
            data = layer.data[-1] if layer.multiscale else layer.data
            full = layer.data[0].shape if layer.multiscale else layer.data.shape
            ny, nx = data.shape[-2:]
            ly = layer.scale[-2] * full[-2] / ny  # world units per pixel of `data`
            lx = layer.scale[-1] * full[-1] / nx
            if max(ny, nx) > 4096:
                h, w = min(ny, 2048), min(nx, 2048)
                y0, x0 = (ny - h) // 2, (nx - w) // 2
                vals = np.asarray(data[y0:y0 + h, x0:x0 + w], dtype=float)
                src = (vals, (ly, lx), (y0 * ly, x0 * lx))
            else:
                step = max(1, int(np.ceil(max(ny, nx) / 2048)))
                vals = np.asarray(data[::step, ::step], dtype=float)
                src = (vals, (ly * step, lx * step), (0.0, 0.0))
            self._pixel_cache[key] = src
        return self._pixel_cache[key]

    def _channel_layer(self, path: str, channel: str) -> Any:
        for layer in self.viewer.layers:
            meta = layer.metadata.get(METADATA_KEY, {})
            if meta.get("path") == path and meta.get("channel") == channel:
                return layer
        return None

    def _on_marker_changed(self, *_: Any, preview: bool = True) -> None:
        column = self.marker_combo.currentData()
        if column is None:
            return
        vals = self._marker_values(column)
        if vals is None or vals.size == 0:
            return
        hi = float(np.nanpercentile(vals, 99.9)) * 1.2 or 1.0
        self._gate_range = (0.0, max(hi, float(np.nanmax(vals)) if vals.size < 5e6 else hi))
        self.gate_spin.blockSignals(True)
        self.gate_spin.setMaximum(self._gate_range[1])
        self.gate_spin.blockSignals(False)
        gate = getattr(self, "_gates_used", {}).get(column)
        if gate is None:
            gate = float(np.nanpercentile(vals, 90))
        if preview:
            self.set_gate(gate)
        else:
            self.gate_spin.blockSignals(True)
            self.gate_spin.setValue(float(gate))
            self.gate_spin.blockSignals(False)
            self._sync_slider(float(gate))
            self.gate_info.setText(f"gate used: {gate:.3g}" if column in self._gates_used
                                   else "")

    def set_gate(self, value: float) -> None:
        """Set the preview gate (updates slider, spin box and the preview layer)."""
        self.gate_spin.setValue(float(value))

    def _on_slider(self, pos: int) -> None:
        lo, hi = getattr(self, "_gate_range", (0.0, 1.0))
        value = lo + (hi - lo) * pos / _SLIDER_STEPS
        self.gate_spin.blockSignals(True)
        self.gate_spin.setValue(value)
        self.gate_spin.blockSignals(False)
        self._update_preview(value)

    def _sync_slider(self, value: float) -> None:
        lo, hi = getattr(self, "_gate_range", (0.0, 1.0))
        self.gate_slider.blockSignals(True)
        self.gate_slider.setValue(int(round((value - lo) / (hi - lo or 1.0) * _SLIDER_STEPS)))
        self.gate_slider.blockSignals(False)

    def _on_gate_value(self, value: float) -> None:
        self._sync_slider(value)
        self._update_preview(value)

    def _update_preview(self, gate: float) -> None:
        column = self.marker_combo.currentData()
        if column is None:
            return
        if self.result is not None and column in self.result.cells:
            r = self.result
            data, kwargs, kind = _layers.gate_preview_layer(
                r.cells, column, gate, labels=r.labels, pixel_size_um=float(r.pixel_size_um))
            n = kwargs["metadata"]["tibspace"]["n_positive"]
            self.gate_info.setText(f"{n:,} of {len(r.cells):,} cells have mean {column} > "
                                   f"{gate:.3g} ({100.0 * n / max(len(r.cells), 1):.1f} %)")
        else:
            src = self._pixel_source(column)
            if src is None:
                return
            vals, (sy, sx), translate = src
            from napari.utils.colormaps import DirectLabelColormap

            data = (vals > gate).astype(np.uint8)
            kind = "labels"
            kwargs = {"name": "gate preview", "scale": (sy, sx), "translate": translate,
                      "opacity": 0.5,
                      "colormap": DirectLabelColormap(color_dict={0: np.zeros(4),
                                                                  None: np.array([1, 1, 0, 1.0])}),
                      "metadata": {"tibspace": {"kind": "gate", "column": column,
                                                "gate": float(gate)}}}
            meta = self._current_image()
            if meta is not None and meta.get("pixel_size_um") is not None:
                kwargs["units"] = UM
            self.gate_info.setText(f"{100.0 * data.mean():.1f} % of pixels above {gate:.3g} "
                                   "(pixel preview; per-cell after a run)")
        self._replace_layer(data, kwargs, kind)

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

    # ---------------------------------------------------------------- run
    def _run_arguments(self) -> tuple[str, Any, Optional[float]]:
        meta = self._current_image()
        if meta is None:
            raise InputError("no image open: open an OME-TIFF / TIFF folder (File › Open) or the "
                             "sample (File › Open Sample › tibspace) first")
        panel_path = self.panel_edit.text().strip()
        if not panel_path:
            raise InputError("no marker panel chosen: pick a panel .toml in the tibspace dock")
        px = self.pixel_size.value() or None
        if px is None and meta.get("pixel_size_um") is None:
            raise InputError(f"{meta['path']}: no pixel size in the file; enter the pixel size "
                             "(µm per pixel) in the tibspace dock")
        params = {k: float(s.value()) for k, s in self.param_spins.items()}
        gates = None
        if self.use_gate.isChecked() and self.marker_combo.currentData():
            gates = {self._marker_of(self.marker_combo.currentData()): self.gate_spin.value()}
        panel = load_panel_with_overrides(
            panel_path, parameters=params, nuclear=self.nuclear_combo.currentData(),
            membrane=self.membrane_combo.currentData(), gates=gates)
        return meta["path"], panel, px

    def _marker_of(self, column: str) -> str:
        """Panel marker whose gate applies to cell-table column ``column``."""
        if self.result is not None:
            for m, g in (self.result.metrics.get("gates") or {}).items():
                if g.get("column") == column:
                    return m
        return column

    def run(self) -> None:
        """Start ``run_image`` in a worker thread (no-op while one is running)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self.worker is not None:
            return
        self.clear_error()
        try:
            image_path, panel, px = self._run_arguments()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.show_error(exc)
            return
        from tibspace.pipeline import run_image

        self._cancel.clear()
        relay, cancel = self._relay, self._cancel

        def _progress(step: str, done: int, total: int) -> None:
            # Runs in the worker thread: stop if asked, else tell the GUI.
            if cancel.is_set():
                raise Cancelled("run cancelled by the user")
            relay.progressed.emit(str(step), int(done), int(total))

        self._pbar = progress(total=0, desc="tibspace")
        if not _WARMED_UP.is_set():
            # Its own thread: a Cancel never waits for the warm-up.
            create_worker(_warm_up_once, _ignore_errors=True)
        # Connecting "errored" ourselves stops napari re-raising worker errors
        # in the event loop: they are shown in the dock instead.
        labels = self.labels_picker.argument()
        self.worker = create_worker(run_image, image_path, panel, pixel_size_um=px,
                                    seed=int(self.seed_spin.value()), progress=_progress, labels=labels,
                                    _start_thread=False,
                                    _connect={"returned": self._on_returned,
                                              "errored": self._on_errored,
                                              "finished": self._on_finished})
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.status_label.setText(f"Running on {Path(image_path).name} …")
        self.worker.start()

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress report."""
        if self.worker is not None:
            self._cancel.set()
            self.status_label.setText("Cancelling …")

    def _on_progress(self, step: str, done: int, total: int) -> None:
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
        self.progress_bar.setFormat(f"{step}: %v / %m")
        self.status_label.setText(f"{step} ({done}/{total})")
        pbar = self._pbar  # napari's progress may process events re-entrantly
        if pbar is not None:
            pbar.total = max(total, 0)
            pbar.n = done
            pbar.set_description(f"tibspace: {step}")

    def _on_returned(self, result: Any) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self.progress_bar.setFormat("done")
        self._show_result(result)
        n_cells = len(result.cells)
        self.status_label.setText(f"Done: {n_cells:,} cells. Hover a cell for its numbers; "
                                  "click a nest in 'tibspace results' to go there.")

    def _on_errored(self, exc: BaseException) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        if isinstance(exc, Cancelled):
            self.progress_bar.setFormat("cancelled")
            self.status_label.setText("Run cancelled.")
            return
        self.progress_bar.setFormat("failed")
        self.status_label.setText("Run failed.")
        self.show_error(exc)

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()

    # ------------------------------------------------------------- errors
    def show_error(self, exc: BaseException | str) -> None:
        """Show an error in the dock (red label) and as a napari notification."""
        from napari.utils.notifications import show_error

        if isinstance(exc, TibspaceError) or isinstance(exc, str):
            msg = str(exc)
        else:
            msg = f"unexpected error ({type(exc).__name__}): {exc}"
        self.error_label.setText(msg)
        self.error_label.setVisible(True)
        show_error(msg)

    def clear_error(self) -> None:
        self.error_label.setText("")
        self.error_label.setVisible(False)

    # ------------------------------------------------------------- export
    def export(self) -> None:
        """Write the CLI's output files for the current result (worker thread)."""
        from napari.qt.threading import create_worker
        from tibspace.pipeline import write_outputs

        if self.result is None or self.export_worker is not None:
            return
        out = self.out_edit.text().strip()
        if not out:
            self.show_error("no output folder: enter one next to 'Folder' in the Export box")
            return
        self.clear_error()
        self.export_button.setEnabled(False)
        self.status_label.setText(f"Writing results to {out} …")

        def done(files: list) -> None:
            self.exported = [Path(f) for f in files]
            self.status_label.setText(f"Wrote {len(files)} files to {out}")

        def finished() -> None:
            self.export_worker = None
            self.export_button.setEnabled(True)

        self.export_worker = create_worker(write_outputs, self.result, out, _start_thread=False,
                                           _connect={"returned": done, "errored": self.show_error,
                                                     "finished": finished})
        self.export_worker.start()
