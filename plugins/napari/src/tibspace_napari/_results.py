"""The "tibspace results" dock: key numbers, per-nest table, profile and coverage plots.

Figures are drawn by :mod:`tibspace.plotting` (the same functions as the HTML
report), numbers are read from ``PipelineResult.metrics`` / ``per_nest``.
Clicking a nest row centres the camera on that nest.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
from qtpy.QtWidgets import (QAbstractItemView, QLabel, QSplitter, QTableWidget,
                            QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget)
from qtpy.QtCore import Qt

from ._layers import NEST_FEATURES

__all__ = ["ResultsWidget", "key_numbers", "nest_rows", "legend_html", "NEST_COLUMNS",
           "KEY_NUMBERS"]

#: Per-nest columns shown (when present), in order.
NEST_COLUMNS = NEST_FEATURES


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "n/a"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


#: Key numbers of a sample: (label, path in metrics.json).
KEY_NUMBERS = (
    ("tissue area (mm²)", ("tissue_area_mm2",)),
    ("tumour nests", ("tumour_region", "n_nests")),
    ("tumour area (mm²)", ("tumour_region", "tumour_area_mm2")),
    ("tumour perimeter (µm)", ("tumour_region", "perimeter_um")),
    ("immune phenotype", ("analyses", "exclusion", "sample", "immune_phenotype")),
    ("infiltration ratio (in / out)", ("analyses", "exclusion", "sample", "infiltration_ratio")),
    ("exclusion zones", ("analyses", "exclusion", "sample", "n_zones")),
    ("exclusion zone area (µm²)", ("analyses", "exclusion", "sample", "zone_area_um2")),
    ("perimeter bordering a zone", ("analyses", "exclusion", "sample", "zone_perimeter_fraction")),
    ("barrier coverage", ("analyses", "barrier", "sample", "barrier_coverage")),
    ("barrier gaps", ("analyses", "barrier", "sample", "n_gaps")),
    ("largest gap (µm)", ("analyses", "barrier", "sample", "largest_gap_um")),
    ("barrier thickness (µm)", ("analyses", "barrier", "sample", "mean_thickness_um")),
    ("SPP1 macrophage : CAF", ("analyses", "barrier", "sample", "macrophage_caf_ratio")),
    ("T ratio covered − uncovered", ("analyses", "barrier", "sample", "link", "difference")),
    ("barrier → exclusion p", ("analyses", "barrier", "sample", "link", "p_value")),
    ("shielded tumour cells", ("analyses", "shield", "sample", "shielded_fraction")),
    ("mean shield coverage", ("analyses", "shield", "sample", "mean_shield_coverage")),
    ("nest boundary shielded", ("analyses", "shield", "sample", "boundary_shield_fraction")),
    ("T contact rate shielded / unshielded",
     ("analyses", "shield", "sample", "contact", "contact_rate_ratio")),
    ("contact Fisher p", ("analyses", "shield", "sample", "contact", "fisher_p_two_sided")),
    ("NET–T Spearman ρ", ("analyses", "shield", "sample", "antagonism", "spearman_rho")),
)


def key_numbers(result: Any) -> list[tuple[str, str]]:
    """The sample's key numbers as ``(label, formatted value)`` rows (see KEY_NUMBERS).

    Numbers the run did not produce are left out; skipped analyses are listed
    with their reason.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> r = SimpleNamespace(metrics={"n_cells": 1200, "tissue_area_mm2": 0.25}, cells=None)
    >>> key_numbers(r)
    [('cells', '1,200'), ('tissue area (mm²)', '0.25')]
    """
    m = result.metrics or {}
    n = m.get("n_cells", None if result.cells is None else len(result.cells))
    rows: list[tuple[str, str]] = [("cells", _fmt(n))]
    for label, path in KEY_NUMBERS:
        v = _get(m, *path)
        if v is not None:
            rows.append((label, _fmt(v)))
    for name, why in (m.get("skipped") or {}).items():
        rows.append((f"skipped: {name}", str(why)))
    return rows


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb[:3])


def legend_html(phenotypes) -> str:
    """HTML legend: phenotype dot colours and the structure colours of the layers.

    Examples
    --------
    >>> "tumour" in legend_html(["tumour", "CD8_T"])
    True
    """
    from tibspace.outputs import STRUCTURE_COLOURS, phenotype_colour

    from ._layers import MASK_COLOURS

    chips = [f'<span style="color:{_hex(phenotype_colour(p))}">&#9679;</span>&nbsp;{p}'
             for p in sorted(set(map(str, phenotypes)))]
    lines = [("tumour_nest", "&#9634;", "tumour nest"), ("barrier_covered", "&#9473;",
                                                         "barrier covered"),
             ("barrier_gap", "&#9473;", "barrier gap"), ("exclusion_zone", "&#9632;",
                                                       "exclusion zone")]
    struct = [f'<span style="color:{_hex(STRUCTURE_COLOURS[k])}">{sym}</span>&nbsp;{label}'
              for k, sym, label in lines]
    struct += [f'<span style="color:{_hex(MASK_COLOURS["net"])}">&#9632;</span>&nbsp;NET',
               f'<span style="color:{_hex(MASK_COLOURS["col1"])}">&#9632;</span>&nbsp;Col1']
    return ("&nbsp;&nbsp; ".join(chips) + "<br>" + "&nbsp;&nbsp; ".join(struct))


def nest_rows(per_nest: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The per-nest table restricted to :data:`NEST_COLUMNS` (those present)."""
    if per_nest is None or len(per_nest) == 0:
        return pd.DataFrame(columns=["nest_id"])
    cols = [c for c in NEST_COLUMNS if c in per_nest.columns]
    return per_nest[cols].reset_index(drop=True)


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class ResultsWidget(QWidget):
    """Key numbers, per-nest table and plots of one ``PipelineResult``."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.result: Any = None
        layout = QVBoxLayout(self)
        self.title = QLabel("")
        self.title.setWordWrap(True)
        layout.addWidget(self.title)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.legend)
        split = QSplitter(Qt.Orientation.Vertical)
        tabs = QTabWidget()
        self.summary_table = QTableWidget(0, 2)
        self.summary_table.setHorizontalHeaderLabels(["sample", "value"])
        self.summary_table.horizontalHeader().setStretchLastSection(True)
        self.summary_table.verticalHeader().setVisible(False)
        self.summary_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        tabs.addTab(self.summary_table, "Sample")
        self.nest_table = QTableWidget(0, 0)
        self.nest_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.nest_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.nest_table.verticalHeader().setVisible(False)
        self.nest_table.cellClicked.connect(self._on_nest_clicked)
        tabs.addTab(self.nest_table, "Nests")
        self.tabs = tabs
        split.addWidget(tabs)
        self.figure = Figure(figsize=(4, 5), dpi=80, facecolor="white")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        split.addWidget(self.canvas)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        layout.addWidget(split)
        self.setMinimumWidth(360)

    def set_result(self, result: Any) -> None:
        self.result = result
        m = result.metrics or {}
        self.title.setText(f"<b>{m.get('sample_id', 'sample')}</b>")
        self.legend.setText(legend_html(result.cells["phenotype"].unique()
                                        if "phenotype" in result.cells else []))
        rows = key_numbers(result)
        self.summary_table.setRowCount(len(rows))
        for i, (k, v) in enumerate(rows):
            self.summary_table.setItem(i, 0, QTableWidgetItem(k))
            item = QTableWidgetItem(v)
            item.setToolTip(v)
            self.summary_table.setItem(i, 1, item)
        self.summary_table.resizeColumnToContents(0)
        nests = nest_rows(getattr(result, "per_nest", None))
        self.nest_table.clear()
        self.nest_table.setColumnCount(len(nests.columns))
        self.nest_table.setRowCount(len(nests))
        self.nest_table.setHorizontalHeaderLabels([str(c) for c in nests.columns])
        for i in range(len(nests)):
            for j, c in enumerate(nests.columns):
                self.nest_table.setItem(i, j, QTableWidgetItem(_fmt(nests.iat[i, j])))
        self.nest_table.resizeColumnsToContents()
        self._nest_ids = nests["nest_id"].to_numpy() if "nest_id" in nests else np.zeros(0)
        self._draw()

    def _draw(self) -> None:
        from tibspace.outputs import plot_barrier_coverage, plot_infiltration_profile

        r = self.result
        self.figure.clear()
        ax1, ax2 = self.figure.subplots(2, 1)
        plot_infiltration_profile(getattr(r, "profiles", None), ax1)
        plot_barrier_coverage(getattr(r, "per_nest", None), ax2)
        if ax2.get_ylabel():
            ax2.set_ylabel("coverage (fraction)")
        if ax1.get_legend() is not None:
            ax1.legend(fontsize=6, frameon=False, ncol=2, loc="upper right")
        for ax in (ax1, ax2):
            ax.title.set_fontsize(9)
            ax.xaxis.label.set_fontsize(8)
            ax.yaxis.label.set_fontsize(8)
            ax.tick_params(labelsize=7)
        self.figure.tight_layout()
        self.canvas.draw_idle()

    def _on_nest_clicked(self, row: int, _col: int = 0) -> None:
        self.centre_on_nest(int(self._nest_ids[row]))

    def centre_on_nest(self, nest_id: int) -> None:
        """Centre the camera on nest ``nest_id`` and zoom so it fills the view."""
        from ._layers import nest_polygons

        polys, ids = nest_polygons(getattr(self.result, "region", None))
        hit = [p for p, i in zip(polys, ids) if int(i) == int(nest_id)]
        if not hit:
            return
        x0, y0, x1, y1 = hit[0].bounds
        camera = _camera(self.viewer)
        camera.center = ((y0 + y1) / 2.0, (x0 + x1) / 2.0)
        canvas = self.viewer.window._qt_viewer.canvas.size if self.viewer.window else None
        extent = max(x1 - x0, y1 - y0) * 1.3 or 100.0
        try:
            h, w = canvas
            camera.zoom = min(h, w) / extent
        except Exception:  # noqa: BLE001 - zoom is a nicety; centring already done
            pass
