"""Layout of the tibspace dock: run controls on top, setting boxes in a scroll area.

:func:`build_dock` creates the widgets of a :class:`TibspaceWidget` as its
attributes (``run_button``, ``image_combo``, ``param_spins``, ``gate_slider``,
``export_button``, …) and connects them to its methods. The scroll area
scrolls vertically only: the dock is as wide as its widest row.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QFrame, QGroupBox,
                            QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QScrollArea,
                            QSlider, QSpinBox, QVBoxLayout, QWidget)

from ._gate_preview import _SLIDER_STEPS
from ._labels import LabelsPicker
from ._settings import NO_IMAGE_TEXT, PARAMETERS

__all__ = ["build_dock"]


def build_dock(w: Any) -> None:
    """Create and connect the controls of the dock widget ``w``."""
    outer = _run_controls(w)
    root = _scroll_area(w, outer)
    for title, fill in (("Input", _input_box), ("Parameters", _parameters_box),
                        ("Gate preview", _gate_box), ("Export", _export_box)):
        box = QGroupBox(title)
        fill(w, QFormLayout(box))
        root.addWidget(box)
    root.addStretch(1)
    for combo in w._inner.findChildren(QComboBox):
        # Long channel or image names are elided in their field instead of widening the dock.
        combo.setMinimumContentsLength(12)
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)


def _run_controls(w):
    """Run / Cancel buttons, progress bar, status and error lines (always visible);
    returns the dock's outer layout."""
    # Controls live in a scroll area so the dock can be short (small screens,
    # results dock underneath).
    outer = QVBoxLayout(w)
    outer.setContentsMargins(0, 0, 0, 0)
    # Run controls, progress and errors stay visible above the scroll area.
    top = QVBoxLayout()
    top.setContentsMargins(6, 6, 6, 0)
    row = QHBoxLayout()
    w.run_button = QPushButton("Run analysis")
    w.run_button.clicked.connect(w.run)
    w.cancel_button = QPushButton("Cancel")
    w.cancel_button.setEnabled(False)
    w.cancel_button.clicked.connect(w.cancel)
    row.addWidget(w.run_button)
    row.addWidget(w.cancel_button)
    top.addLayout(row)
    w.progress_bar = QProgressBar()
    w.progress_bar.setRange(0, 100)
    w.progress_bar.setValue(0)
    top.addWidget(w.progress_bar)
    w.status_label = QLabel(NO_IMAGE_TEXT)
    w.status_label.setWordWrap(True)
    top.addWidget(w.status_label)
    w.error_label = QLabel("")
    w.error_label.setWordWrap(True)
    w.error_label.setStyleSheet("color: #ff6060; font-weight: bold;")
    w.error_label.setVisible(False)
    w.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    top.addWidget(w.error_label)
    outer.addLayout(top)
    return outer


def _scroll_area(w, outer):
    """The scroll area holding the setting boxes; returns the layout they go in."""
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
    w._scroll, w._inner = scroll, inner
    return QVBoxLayout(inner)


def _input_box(w, form):
    """Image, pixel size, panel, nuclear / membrane channels, given cell labels."""
    w.image_combo = QComboBox()
    w.image_combo.currentIndexChanged.connect(w._on_image_changed)
    form.addRow("Image", w.image_combo)
    w.pixel_size = QDoubleSpinBox(decimals=4, minimum=0.0, maximum=1000.0, singleStep=0.05)
    w.pixel_size.setSpecialValueText("from file")
    w.pixel_size.setToolTip("µm per pixel; 'from file' uses the image's metadata")
    form.addRow("Pixel size (µm)", w.pixel_size)
    w.panel_edit = QLineEdit()
    w.panel_edit.editingFinished.connect(w._on_panel_changed)
    form.addRow("Panel", _path_row(w.panel_edit, "marker panel .toml", w._browse_panel))
    w.nuclear_combo = QComboBox()
    w.membrane_combo = QComboBox()
    form.addRow("Nuclear channel", w.nuclear_combo)
    form.addRow("Membrane channel", w.membrane_combo)
    w.labels_edit = QLineEdit()
    w.labels_edit.setPlaceholderText("mask file or run folder: skips segmentation")
    form.addRow("Cell labels (optional)", w.labels_edit)
    w.labels_picker = LabelsPicker(w.viewer, w.labels_edit)
    form.addRow("… or a Labels layer", w.labels_picker.combo)


def _parameters_box(w, form):
    """The panel parameters of :data:`PARAMETERS` (µm) and the seed."""
    w.param_spins: dict[str, QDoubleSpinBox] = {}
    for key, label, default, maximum in PARAMETERS:
        spin = QDoubleSpinBox(decimals=1, minimum=0.5, maximum=maximum, value=default)
        spin.setSuffix(" µm")
        w.param_spins[key] = spin
        form.addRow(label.replace(" (µm)", ""), spin)
    w.seed_spin = QSpinBox(minimum=0, maximum=999_999_999, value=0)
    form.addRow("Seed", w.seed_spin)


def _gate_box(w, form):
    """Marker, gate slider and spin box, "use this gate" and the preview line."""
    w.marker_combo = QComboBox()
    w.marker_combo.currentIndexChanged.connect(w._on_marker_changed)
    form.addRow("Marker", w.marker_combo)
    w.gate_slider = QSlider(Qt.Orientation.Horizontal)
    w.gate_slider.setRange(0, _SLIDER_STEPS)
    w.gate_slider.valueChanged.connect(w._on_slider)
    w.gate_spin = QDoubleSpinBox(decimals=3, minimum=0.0, maximum=1e6)
    w.gate_spin.valueChanged.connect(w._on_gate_value)
    row = QHBoxLayout()
    w.gate_spin.setMinimumWidth(w.gate_spin.minimumSizeHint().width())  # every digit shown
    row.addWidget(w.gate_slider, 1)
    row.addWidget(w.gate_spin, 0)
    form.addRow("Gate", row)
    w.use_gate = QCheckBox("use this gate in the next run")
    form.addRow(w.use_gate)
    w.gate_info = QLabel("")
    w.gate_info.setWordWrap(True)
    form.addRow(w.gate_info)


def _export_box(w, form):
    """Output folder and the Export button."""
    w.out_edit = QLineEdit()
    form.addRow("Folder", _path_row(w.out_edit, "output folder", w._browse_out))
    w.export_button = QPushButton("Export results")
    w.export_button.setEnabled(False)
    w.export_button.clicked.connect(w.export)
    form.addRow(w.export_button)


def _path_row(edit, placeholder, browse):
    """A path field with its "…" browse button (``browse`` is called on click)."""
    edit.setPlaceholderText(placeholder)
    button = QPushButton("…")
    button.setMaximumWidth(30)
    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(button)
    return row
