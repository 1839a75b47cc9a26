"""Gate preview of the dock: a marker's gate shown live as a layer.

Before a run the gate applies to coarse pixels of the channel (at most ~4M
pixels: the coarsest pyramid level, or a central 2048² window of a big flat
image); after a run to the per-cell mean intensities of the cell table. Cells
(or pixels) above the gate are painted in the "gate preview" layer.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _layers
from ._reader import METADATA_KEY, UM

#: Positions of the gate slider (its range is 0 … 1.2 × the 99.9th percentile).
_SLIDER_STEPS = 1000


class _GatePreview:
    """Marker list, slider / spin box and preview layer of :class:`TibspaceWidget` (a mixin)."""

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
