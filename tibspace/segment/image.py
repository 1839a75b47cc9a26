"""Whole-image segmentation: :func:`segment_image` over overlapping tiles, in bounded memory.

Steps: resolve the channels; plan the tile grid (the overlap holds twice the
largest cell); compute the global statistics once (per-channel scale = 99.5th
percentile, and the foreground threshold on the normalised smoothed nuclear
signal), so that every tile uses the same ones; segment and measure the tiles
(Dask tasks, each reading only its window); assemble global ids ``1..N`` and
the label images (numpy up to 64 Mpx, zarr on disk above) as the tiles finish
(each tile's label crops go to a temp folder first, in every scheduler).
Temporary files live in ``work_dir`` (default: the system temp folder): the
crops are removed as they are pasted; the zarr stores live as long as the
returned arrays.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from tibspace.errors import InputError
from tibspace.segment.nuclei import FOREGROUND_FRACTION_OF_OTSU, nucleus_params, otsu
from tibspace.segment.scale import estimate_nucleus_diameter, noise_smoothing_um, sample_windows
from tibspace.segment.backends import CLASSICAL, check_method
from tibspace.segment.scheduler import run_tasks, scheduler_name, start_scheduler
from tibspace.segment.tiling import (LabelAssembler, _channel_sample, _segment_tile,
                                     new_label_array, tile_grid)

__all__ = ["segment_image", "SegmentationResult"]

# Images up to this many pixels get in-memory numpy label images.
_IN_MEMORY_MAX_PX = 64 * 1024 * 1024
# The nucleus size is estimated from this many windows of this side (bounded cost).
_ESTIMATE_WINDOWS = 16
_ESTIMATE_WINDOW_PX = 512
# Tiles save their label crops to the temp folder and are pasted as they finish
# (False: in-process tiles return crops in memory; kept to test the equality).
_STREAM_TILES = True


@dataclass
class SegmentationResult:
    """Output of :func:`segment_image`.

    Attributes
    ----------
    cells : pandas.DataFrame
        Cell table (:func:`tibspace.cells.measure_cells` columns), ``cell_id``
        1..N equal to the label values.
    labels : numpy.ndarray or zarr.Array
        ``(Y, X)`` int32 whole-cell labels (zarr on disk above 64 Mpx).
    nuclei : numpy.ndarray or zarr.Array or None
        Nucleus labels with the same ids.
    pixel_size_um : float
    n_tiles : int
    parameters : dict
        Every parameter used, in µm and in px.
    labels_path : Path or None
        The uint32 OME-TIFF written, when asked for.
    qc : dict
        Diagnostics: pixels claimed by two tiles' cells (first tile wins),
        cells segmented in windows vs kept, seconds per stage.
    """

    cells: pd.DataFrame
    labels: Any
    nuclei: Any
    pixel_size_um: float
    n_tiles: int
    parameters: dict
    labels_path: Optional[Path] = None
    qc: dict = field(default_factory=dict)


@dataclass
class _Inputs:
    """The image and its resolved channels (indices into the image's channels)."""

    path: Path
    px: float
    shape: tuple[int, int]
    channel_names: list[str]
    nuclear: list[int]
    membrane: list[int]
    measure_idx: list[int]

    def names(self, idx: Sequence[int]) -> list[str]:
        return [self.channel_names[i] for i in idx]


def segment_image(image: Any, nuclear_channels: Any, membrane_channels: Any = (), *,
                  expansion_um: float = 3.0, nucleus_diameter_um: Optional[float] = None,
                  tile_size_px: int = 2048, overlap_px: Optional[int] = None, scheduler: Any = None,
                  n_workers: int = 2, measure_channels: Optional[Sequence[str]] = None,
                  labels_path: Optional[str | os.PathLike] = None, progress: Any = None,
                  pixel_size_um: Optional[float] = None, threshold: Optional[float] = None,
                  min_area_um2: Optional[float] = None, method: str = "classical",
                  backend_options: Optional[dict] = None,
                  work_dir: Optional[str | os.PathLike] = None) -> SegmentationResult:
    """Segment nuclei and cells of a whole image in overlapping tiles, and measure them.

    Unknown channel names, an empty nuclear channel or no nuclei found raise
    :class:`tibspace.errors.InputError`.

    Parameters
    ----------
    image, pixel_size_um : str, Path or MultiplexImage; float, optional
        The image (:func:`tibspace.io.open_image`; each task reads only its window);
        µm per pixel when the file records none (or to override it).
    nuclear_channels, membrane_channels : str or list of str
        Nuclear channel(s), summed after dividing each by its 99.5th percentile;
        optional membrane channel(s) guiding the cell expansion.
    expansion_um : float
        Maximum growth of a cell beyond its nucleus (µm).
    nucleus_diameter_um : float, optional
        Typical nucleus diameter (sets all scales); default: estimated from up to
        sixteen 512² windows (:func:`tibspace.segment.estimate_nucleus_diameter`).
    tile_size_px, overlap_px : int
        Side of a tile core; margin on each side, default (and minimum) twice the
        largest cell diameter, ``2 × (1.5 × nucleus diameter + 2 × expansion)``.
    scheduler, n_workers : None, "threads", "processes", "synchronous", str or Client; int
        Where the tiles run, on how many workers (:func:`.scheduler.start_scheduler`).
    measure_channels : list of str, optional
        Channels measured per cell (default: all channels of the image).
    labels_path, work_dir : str or Path, optional
        Also write the cell labels as a uint32 OME-TIFF at ``labels_path`` (atomically);
        folder of the temporary tile crops and (above 64 Mpx) zarr label images.
    progress : callable, optional
        ``progress(step, done, total)``, called per tile.
    threshold, min_area_um2 : float, optional
        Foreground threshold on the normalised smoothed nuclear signal (default: half
        the whole image's Otsu threshold, one for all tiles); smallest nucleus kept
        (µm², default 20 % of a disc of the nucleus diameter).
    method, backend_options : str; dict, optional
        ``"classical"`` (built-in watershed) or a registered backend, with the
        panel's ``[segmentation]`` options (:mod:`tibspace.segment.backends`).

    Returns
    -------
    SegmentationResult

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from tibspace.io import write_ome_tiff
    >>> yy, xx = np.mgrid[:64, :96]
    >>> dapi = sum(200 * (((yy - 30) ** 2 + (xx - cx) ** 2) < 49) for cx in (20, 50, 75))
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_ome_tiff(d / "a.ome.tif", np.stack([dapi, dapi // 2]).astype(np.uint8),
    ...                ["DAPI", "CD8"], 0.5)
    >>> res = segment_image(d / "a.ome.tif", "DAPI")
    >>> len(res.cells), res.cells["cell_id"].tolist(), int(res.labels.max())
    (3, [1, 2, 3], 3)
    """
    t_start = time.perf_counter()
    options = _checked_options(method, backend_options)
    inp = _resolve_inputs(image, pixel_size_um, nuclear_channels, membrane_channels, measure_channels)
    p, estimate = _nucleus_parameters(inp, nucleus_diameter_um, min_area_um2)
    e_um = _check_expansion(expansion_um)
    plan = _plan_tiles(inp, p, e_um, tile_size_px, overlap_px)
    qc: dict[str, Any] = {}
    run = _segment_all_tiles(inp, p, e_um, plan, threshold, scheduler, n_workers, progress,
                             work_dir, qc, _backend(method, options, p))
    cells_df, labels, nuclei = _assemble(inp, run["asm"], run["tmp"], qc)
    out_path = _write_labels(labels, labels_path, inp.px, qc, progress)
    _keep_or_clean(run["tmp"], run["in_memory"], labels, nuclei)
    qc["seconds_total"] = time.perf_counter() - t_start
    params = _result_parameters(inp, p, estimate, method, threshold, run, e_um, plan, options)
    return SegmentationResult(cells=cells_df, labels=labels, nuclei=nuclei, pixel_size_um=inp.px,
                              n_tiles=len(plan["grid"]), parameters=params, labels_path=out_path, qc=qc)


def _checked_options(method: Any, backend_options: Optional[dict]) -> dict:
    """A copy of the backend options, checked against ``method`` (:func:`check_method`)."""
    options = dict(backend_options or {})
    check_method(method, options)
    return options


def _backend(method: str, options: dict, p: dict) -> Optional[tuple]:
    """``None`` for the classical method, else ``(method, options + the nucleus diameter)``."""
    if method == CLASSICAL:
        return None
    return (method, options | {"nucleus_diameter_um": p["nucleus_diameter_um"],
                               "nucleus_diameter_px": p["nucleus_diameter_px"]})


def _nucleus_parameters(inp: "_Inputs", nucleus_diameter_um: Optional[float],
                        min_area_um2: Optional[float]) -> tuple[dict, dict]:
    """The nucleus parameters (:func:`nucleus_params`) and the estimates behind them.

    The noise-measured smoothing is always measured; the diameter is
    estimated (on the signal smoothed that much) when not given.
    """
    windows = _estimate_windows(inp)
    noise = noise_smoothing_um(windows, inp.px)
    estimate = None
    if nucleus_diameter_um is None:
        try:
            estimate = estimate_nucleus_diameter(windows, inp.px, noise["noise_smoothing_um"])
        except InputError:
            raise _no_nuclei(inp) from None
        nucleus_diameter_um = estimate["nucleus_diameter_um"]
    p = nucleus_params(inp.px, nucleus_diameter_um, min_area_um2, noise["noise_smoothing_um"])
    return p, (estimate or {}) | noise


def _segment_all_tiles(inp: "_Inputs", p: dict, e_um: float, plan: dict,
                       threshold: Optional[float], scheduler: Any, n_workers: int,
                       progress: Any, work_dir: Any, qc: dict,
                       backend: Optional[tuple] = None) -> dict[str, Any]:
    """Start the scheduler, compute the global statistics, segment and paste every tile.

    The scheduler is closed and (on error) the temp folder removed before returning.
    """
    client, close, in_process = start_scheduler(scheduler, len(plan["grid"]), n_workers)
    tmp = tempfile.mkdtemp(prefix="tibspace-seg-", dir=work_dir)
    try:
        t0 = time.perf_counter()
        stats = _global_statistics(inp, p, plan["grid"], threshold, client, progress)
        qc["seconds_statistics"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        asm, in_memory = _new_assembly(inp, len(plan["grid"]), tmp, progress)
        _run_tiles(inp, p, e_um, plan["grid"], stats, client, in_process, tmp, asm, progress,
                   backend)
        qc["seconds_tiles"] = time.perf_counter() - t0
    except BaseException:
        close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    close()
    return {"asm": asm, "tmp": tmp, "in_memory": in_memory, "stats": stats,
            "scheduler": scheduler_name(client, scheduler, in_process, n_workers)}


def _result_parameters(inp: "_Inputs", p: dict, estimate: dict, method: str,
                       threshold: Optional[float], run: dict, e_um: float,
                       plan: dict, options: Optional[dict] = None) -> dict[str, Any]:
    """Every parameter of the run (µm and px), the size estimate, the scheduler used and the
    backend options (when any)."""
    params = dict(p)
    params["nucleus_diameter_source"] = "estimated" if "estimate_method" in estimate else "given"
    params.update({k: v for k, v in estimate.items() if k != "nucleus_diameter_um"})
    params.update(_parameters(inp, method, threshold, run["stats"], e_um, plan))
    params["scheduler"] = run["scheduler"]
    if options:
        params["backend_options"] = options
    return params


def _resolve_inputs(image: Any, pixel_size_um: Optional[float], nuclear_channels: Any,
                    membrane_channels: Any, measure_channels: Any) -> _Inputs:
    """Open the image once for its pixel size, shape and channel indices."""
    from tibspace.io import MultiplexImage, open_image

    if isinstance(image, MultiplexImage):
        path = Path(image.path)
        px = float(pixel_size_um) if pixel_size_um is not None else image.pixel_size_um
        img = open_image(path, pixel_size_um=px)
    else:
        path = Path(image)
        img = open_image(path, pixel_size_um=pixel_size_um)
        px = img.pixel_size_um
    try:
        nuclear = _resolve_channels(img, nuclear_channels, "nuclear")
        if not nuclear:
            raise InputError(f"{path}: no nuclear channel given; pass e.g. nuclear_channels="
                             f"['DAPI'] (the image has: {', '.join(img.channel_names)})")
        membrane = _resolve_channels(img, membrane_channels or (), "membrane")
        if measure_channels is None:
            measure_idx = list(range(img.n_channels))
        else:
            measure_idx = _resolve_channels(img, measure_channels, "measured")
        _, ny, nx = img.shape
    finally:
        img.close()
    return _Inputs(path=path, px=px, shape=(ny, nx), channel_names=list(img.channel_names),
                   nuclear=nuclear, membrane=membrane, measure_idx=measure_idx)


def _estimate_windows(inp: _Inputs) -> list[np.ndarray]:
    """Up to sixteen 512² windows of the nuclear channels (read here), for the estimates.

    Several nuclear channels are summed after dividing each by its 99.5th
    percentile over the windows.
    """
    from tibspace.io import open_image

    wins = sample_windows(inp.shape, _ESTIMATE_WINDOW_PX, _ESTIMATE_WINDOWS)
    img = open_image(inp.path, pixel_size_um=inp.px)
    try:
        per_ch = [[img.read_region([c], *w)[0].astype(np.float32) for w in wins]
                  for c in inp.nuclear]
    finally:
        img.close()
    comb = [np.zeros(a.shape, np.float32) for a in per_ch[0]]
    for arrs in per_ch:
        s = float(np.percentile(np.concatenate([a.ravel() for a in arrs]), 99.5))
        for out, a in zip(comb, arrs):
            out += a / (s if s > 0 else 1.0)
    return comb


def _resolve_channels(img: Any, names: Any, what: str) -> list[int]:
    if names is None:
        return []
    if isinstance(names, (str, int)):
        names = [names]
    out = []
    for nm in names:
        try:
            out.append(img.channel_index(nm))
        except InputError:
            raise InputError(f"{img.path}: no {what} channel named {nm!r}; the image has: "
                             f"{', '.join(img.channel_names)}") from None
    return out


def _check_expansion(expansion_um: Any) -> float:
    e_um = float(expansion_um)
    if not (math.isfinite(e_um) and e_um >= 0):
        raise InputError(f"expansion_um must be ≥ 0 µm, got {expansion_um!r}")
    return e_um


def _plan_tiles(inp: _Inputs, p: dict, e_um: float, tile_size_px: Any,
                overlap_px: Any) -> dict[str, Any]:
    """Tile side, overlap and grid.

    The largest cell is a nucleus 1.5× the typical diameter plus the
    expansion on both sides; the default overlap is twice that.
    """
    max_cell_um = 1.5 * p["nucleus_diameter_um"] + 2 * e_um
    if overlap_px is None:
        overlap = int(math.ceil(2 * max_cell_um / inp.px))
    else:
        overlap = int(overlap_px)
        if overlap < 0:
            raise InputError(f"overlap_px must be ≥ 0, got {overlap_px!r}")
    tile = int(tile_size_px)
    if tile < 64:
        raise InputError(f"tile_size_px must be ≥ 64 px, got {tile_size_px!r}")
    return {"tile": tile, "overlap": overlap, "max_cell_um": max_cell_um,
            "grid": tile_grid(inp.shape, tile, overlap)}


def _no_nuclei(inp: _Inputs) -> InputError:
    return InputError(f"no nuclei found in channel {', '.join(inp.names(inp.nuclear))} of "
                      f"{inp.path}: the channel is empty or the threshold is too high")


def _global_statistics(inp: _Inputs, p: dict, grid: list, threshold: Optional[float],
                       client: Any, progress: Any) -> dict[str, Any]:
    """Channel scales (99.5th percentile) and the foreground threshold, once for all tiles."""
    sample, level = _channel_sample(inp.path, inp.px, inp.nuclear, grid, p["smoothing_sigma_px"],
                                    p["nucleus_diameter_px"], client, "nuclear statistics",
                                    progress)
    scales = []
    for k in range(len(inp.nuclear)):
        s = float(np.percentile(sample[k], 99.5))
        if not (s > 0):
            s = float(sample[k].max())
        if not (s > 0):
            raise InputError(f"no nuclei found in channel {inp.channel_names[inp.nuclear[k]]} "
                             f"of {inp.path}: the channel is empty or the threshold is too "
                             "high")
        scales.append(s)
    comb = (sample / np.asarray(scales, np.float32)[:, None]).sum(axis=0)
    thr = FOREGROUND_FRACTION_OF_OTSU * otsu(comb) if threshold is None else float(threshold)
    if not math.isfinite(thr) or not (comb > thr).any():
        raise _no_nuclei(inp)
    del sample, comb
    mem_scales = []
    if inp.membrane:
        msample, _ = _channel_sample(inp.path, inp.px, inp.membrane, grid, 1.0,
                                     p["nucleus_diameter_px"], client, "membrane statistics",
                                     progress)
        for k in range(len(inp.membrane)):
            s = float(np.percentile(msample[k], 99.5))
            mem_scales.append(s if s > 0 else 1.0)
    return {"scales": scales, "threshold": thr, "membrane_scales": mem_scales, "level": level}


def _run_tiles(inp: _Inputs, p: dict, e_um: float, grid: list, stats: dict, client: Any,
               in_process: bool, tmp: str, asm: LabelAssembler, progress: Any,
               backend: Optional[tuple] = None) -> None:
    """Segment and measure every tile; tiles save .npy crops in ``tmp`` and ``asm`` pastes them."""
    tile_dir = os.path.join(tmp, "tiles")
    os.makedirs(tile_dir)
    stream = _STREAM_TILES or (client is not None and not in_process)
    out_dir = tile_dir if stream else None
    measure_names = inp.names(inp.measure_idx)
    args = [(k, str(inp.path), inp.px, core, win, inp.nuclear, stats["scales"], inp.membrane,
             stats["membrane_scales"], inp.measure_idx, measure_names, stats["threshold"],
             p["nucleus_diameter_um"], e_um, p["min_area_um2"], out_dir, p["smoothing_sigma_um"],
             backend)
            for k, (core, win) in enumerate(grid)]
    on_result = asm.add if stream else None
    results = run_tasks(_segment_tile, args, client, "segment tiles", progress, on_result)
    if not stream:
        for k, r in enumerate(results):
            asm.add(k, r)


def _new_assembly(inp: _Inputs, n_tiles: int, tmp: str,
                  progress: Any) -> tuple[LabelAssembler, bool]:
    """Empty label images (numpy up to 64 Mpx, zarr in ``tmp`` above) and their assembler."""
    ny, nx = inp.shape
    in_memory = ny * nx <= _IN_MEMORY_MAX_PX
    labels = new_label_array((ny, nx), in_memory, tmp, "cells")
    nuclei = new_label_array((ny, nx), in_memory, tmp, "nuclei")
    return LabelAssembler(labels, nuclei, n_tiles, progress), in_memory


def _assemble(inp: _Inputs, asm: LabelAssembler, tmp: str,
              qc: dict) -> tuple[pd.DataFrame, Any, Any]:
    """Global cell table from the assembled tiles (the labels are already pasted)."""
    t0 = time.perf_counter()
    n_total = int(sum(len(t) for t in asm.tables))
    if n_total == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _no_nuclei(inp)
    cells_df = pd.concat(asm.tables, ignore_index=True)
    asm.tables = []
    qc["seconds_assemble"] = time.perf_counter() - t0
    qc["pixels_claimed_twice"] = asm.conflicts
    qc["cells_segmented_in_windows"] = asm.n_segmented
    qc["cells"] = n_total
    return cells_df, asm.labels, asm.nuclei


def _write_labels(labels: Any, labels_path: Any, px: float, qc: dict,
                  progress: Any) -> Optional[Path]:
    if labels_path is None:
        return None
    from tibspace.io import write_labels_ome_tiff

    t0 = time.perf_counter()
    out_path = Path(labels_path)
    write_labels_ome_tiff(out_path, labels, px, progress=progress)
    qc["seconds_write_labels"] = time.perf_counter() - t0
    return out_path


def _keep_or_clean(tmp: str, in_memory: bool, labels: Any, nuclei: Any) -> None:
    """Remove the temp dir; zarr stores live as long as their arrays do."""
    if in_memory:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(os.path.join(tmp, "tiles"), ignore_errors=True)
    weakref.finalize(labels, _remove_store, os.path.join(tmp, "cells.zarr"), tmp)
    weakref.finalize(nuclei, _remove_store, os.path.join(tmp, "nuclei.zarr"), tmp)


def _remove_store(store: str, tmp: str) -> None:
    """Remove a zarr store, and the temp dir once it is empty (the last store gone)."""
    shutil.rmtree(store, ignore_errors=True)
    try:
        os.rmdir(tmp)
    except OSError:
        pass


def _parameters(inp: _Inputs, method: str, threshold: Optional[float], stats: dict,
                e_um: float, plan: dict) -> dict[str, Any]:
    """The run's parameters beyond the nucleus ones, for the result."""
    px = inp.px
    return {
        "method": method, "pixel_size_um": px,
        "nuclear_channels": inp.names(inp.nuclear),
        "nuclear_channel_scales": stats["scales"],
        "membrane_channels": inp.names(inp.membrane),
        "membrane_channel_scales": stats["membrane_scales"],
        "measure_channels": inp.names(inp.measure_idx),
        "threshold": stats["threshold"],
        "threshold_method": (f"{FOREGROUND_FRACTION_OF_OTSU} x Otsu of the smoothed signal"
                             if threshold is None else "given"),
        "statistics_pyramid_level": stats["level"],
        "expansion_um": e_um, "expansion_px": e_um / px,
        "max_cell_diameter_um": plan["max_cell_um"],
        "tile_size_px": plan["tile"], "tile_size_um": plan["tile"] * px,
        "overlap_px": plan["overlap"], "overlap_um": plan["overlap"] * px,
        "n_tiles": len(plan["grid"]),
    }
