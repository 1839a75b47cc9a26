"""Worker glue of the dock: the analysis and the export run in ``napari.qt.threading`` workers.

:class:`_RunControl` (a mixin of :class:`tibspace_napari._widget.TibspaceWidget`)
starts :func:`tibspace.run_image` in a worker, relays its progress to the GUI
thread through a queued signal (:class:`_ProgressRelay`), stops it at the next
progress report on Cancel, shows errors a user can cause
(:class:`tibspace.errors.TibspaceError`) in the dock and as a napari
notification, and writes the CLI's files with :func:`tibspace.write_outputs`.
:func:`warm_up_napari` compiles napari's numba helpers off screen meanwhile.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
from qtpy.QtCore import QObject, Signal

from tibspace.errors import Cancelled, InputError, TibspaceError

from ._settings import load_panel_with_overrides

__all__ = ["warm_up_napari"]


def warm_up_napari() -> None:
    """JIT-compile napari's numba helpers used by the result layers, off screen.

    napari compiles (numba) its Shapes triangulation helpers and its direct
    label-colour mapping for 32/64-bit labels on first use: seconds per
    function and dtype, once per process (figures in
    ``docs/validation/napari.md``). The widget calls this in a worker thread
    while the analysis runs, so showing results does not stall the viewer.
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



class _ProgressRelay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(str, int, int)



class _RunControl:
    """Run, cancel, progress, errors and export of :class:`TibspaceWidget` (a mixin)."""

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
        from tibspace import run_image

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
        from tibspace import write_outputs

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
