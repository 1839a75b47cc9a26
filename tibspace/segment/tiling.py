"""Tiles of a whole image: the grid, the tile worker, cell ownership, stitching.

A tile is a *core* (the cores partition the image) and a *window* (the core
grown by the overlap on each side, clipped to the image), both
``(y0, y1, x0, x1)`` in whole-image pixels. A worker reads only its window
from the file, segments and measures it, and keeps the cells whose centroid
(rounded to the nearest pixel) lies in its core, so every cell is owned by
exactly one tile. Local ids 1..k follow the (row, column) order of the owned
centroids. Workers save their owned label crops as .npy files in a temp
folder as they finish (in every scheduler), and :class:`LabelAssembler`
pastes them into the label images (numpy, or zarr on disk) in tile order
while later tiles still run, offsetting local ids to global ids, the earlier
tile keeping a contested pixel: memory holds the cell tables and a few tile
crops, never all of them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from tibspace.cells import measure_cells
from tibspace.progress import report
from tibspace.segment.expand import expand_nuclei_to_cells
from tibspace.segment.nuclei import segment_nuclei
from tibspace.segment.scheduler import run_tasks

__all__ = ["tile_grid"]

# The global statistics use at most this many pixel values per channel.
_STATS_MAX_PX = 16e6


def tile_grid(shape_yx: tuple[int, int], tile_size_px: int,
              overlap_px: int) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Cores and windows of a tiling, in row-major tile order.

    Returns a list of ``(core, window)``, each ``(y0, y1, x0, x1)``: cores
    partition the image; a window is its core grown by ``overlap_px`` on each
    side, clipped to the image.

    Examples
    --------
    >>> tile_grid((100, 150), 100, 10)
    [((0, 100, 0, 100), (0, 100, 0, 110)), ((0, 100, 100, 150), (0, 100, 90, 150))]
    """
    ny, nx = (int(s) for s in shape_yx)
    t = int(tile_size_px)
    o = int(overlap_px)
    out = []
    for y0 in range(0, ny, t):
        for x0 in range(0, nx, t):
            core = (y0, min(y0 + t, ny), x0, min(x0 + t, nx))
            win = (max(y0 - o, 0), min(y0 + t + o, ny), max(x0 - o, 0), min(x0 + t + o, nx))
            out.append((core, win))
    return out


class _ChannelReader:
    """``reader[i]`` reads channel ``i`` of a window from disk (lazy intensities).

    Channels already read for segmentation are taken from ``cache``.
    """

    def __init__(self, img: Any, channels: Sequence[int], window: tuple[int, int, int, int],
                 cache: Optional[dict] = None):
        self._img = img
        self._ch = list(channels)
        self._w = window
        self._cache = cache if cache is not None else {}

    def __len__(self) -> int:
        return len(self._ch)

    def __getitem__(self, i: int) -> np.ndarray:
        c = self._ch[i]
        if c in self._cache:
            return self._cache[c]
        y0, y1, x0, x1 = self._w
        return self._img.read_region([c], y0, y1, x0, x1)[0]


def _combine(img: Any, channels: Sequence[int], scales: Sequence[float],
             window: tuple[int, int, int, int], cache: dict) -> np.ndarray:
    """Sum of ``channel / scale`` over ``channels`` in ``window`` (float32).

    The raw channels are kept in ``cache`` for the measurements.
    """
    y0, y1, x0, x1 = window
    out = np.zeros((y1 - y0, x1 - x0), np.float32)
    for c, s in zip(channels, scales):
        raw = cache.get(c)
        if raw is None:
            raw = cache[c] = img.read_region([c], y0, y1, x0, x1)[0]
        out += raw.astype(np.float32) * np.float32(1.0 / s)
    return out


def _open(path: str, pixel_size_um: float) -> Any:
    from tibspace.io import open_image

    return open_image(path, pixel_size_um=pixel_size_um)


def _tile_stats(path: str, pixel_size_um: float, channels: Sequence[int],
                core: tuple[int, int, int, int], sigma_px: float, stride: int,
                level: int = 0) -> np.ndarray:
    """Smoothed channel values of a tile core (in ``level``'s pixels), subsampled (``(c, n)``)."""
    img = _open(path, pixel_size_um)
    try:
        y0, y1, x0, x1 = core
        out = []
        for c in channels:
            a = img.read_region([c], y0, y1, x0, x1, level=level)[0].astype(np.float32)
            if sigma_px >= 0.3:
                a = ndi.gaussian_filter(a, sigma_px, mode="nearest", truncate=3.0)
            out.append(a[stride // 2::stride, stride // 2::stride].ravel())
        return np.stack(out)
    finally:
        img.close()


def _channel_sample(path: Path, px: float, channels: Sequence[int], grid: list,
                    sigma_px: float, d_px: float, client: Any, step: str,
                    progress: Any) -> tuple[np.ndarray, int]:
    """Smoothed values of ``channels`` over the whole image, ``(c, n)``.

    Uses the coarsest pyramid level on which a nucleus is still ≥ 4 px wide,
    read in this process when it has ≤ 16 Mpx; otherwise every tile task
    returns a strided sample (≤ 16 M values in all) of its core on that level,
    so memory is bounded and the work is that of the level, not of the image.
    """
    from tibspace.io import open_image

    img = open_image(path, pixel_size_um=px)
    try:
        nx = img.shape[2]
        best = 0
        for lvl, arr in enumerate(img.levels):
            f = nx / float(arr.shape[2])
            if f <= max(1.0, d_px / 4.0) and f > nx / float(img.levels[best].shape[2]):
                best = lvl
        _, ly, lx = (int(v) for v in img.levels[best].shape)
        if ly * lx <= _STATS_MAX_PX:
            f = nx / float(lx)
            out = []
            for c in channels:
                a = img.read_region([c], 0, ly, 0, lx, level=best)[0].astype(np.float32)
                sig = sigma_px / f
                if sig >= 0.3:
                    a = ndi.gaussian_filter(a, sig, mode="nearest", truncate=3.0)
                out.append(a.ravel())
            return np.stack(out), best
    finally:
        img.close()
    ny = img.shape[1]
    stride = max(1, int(math.ceil(math.sqrt(ly * lx / _STATS_MAX_PX))))

    def on_level(core):  # a partition of the image stays a partition of the level
        y0, y1, x0, x1 = core
        return (round(y0 * ly / ny), round(y1 * ly / ny), round(x0 * lx / nx), round(x1 * lx / nx))

    cores = [c for c in (on_level(core) for core, _ in grid) if c[1] > c[0] and c[3] > c[2]]
    stats = run_tasks(_tile_stats, [(str(path), px, list(channels), core, sigma_px * lx / nx, stride,
                                     best) for core in cores], client, step, progress)
    return np.concatenate(stats, axis=1), best


def _segment_tile(index: int, path: str, pixel_size_um: float,
                  core: tuple[int, int, int, int], window: tuple[int, int, int, int],
                  nuclear: Sequence[int], nuclear_scales: Sequence[float],
                  membrane: Sequence[int], membrane_scales: Sequence[float],
                  measure_idx: Sequence[int], measure_names: Sequence[str],
                  threshold: float, nucleus_diameter_um: float, expansion_um: float,
                  min_area_um2: Optional[float], out_dir: Optional[str],
                  smoothing_sigma_um: Optional[float] = None,
                  backend: Optional[tuple] = None) -> dict[str, Any]:
    """Segment, own and measure the cells of one tile (runs in a Dask worker).

    Reads only ``window`` of the file. Returns the measured table of the
    cells whose centroid lies in ``core`` (local ids 1..k in (row, col) order
    of their centroids) and their label crops (saved to ``out_dir`` as .npy
    when given, else returned in the dict). ``backend`` = ``(name, options)``
    of a registered backend that segments the nuclei instead of the classical
    watershed.
    """
    img = _open(path, pixel_size_um)
    try:
        wy0, wy1, wx0, wx1 = window
        cache: dict = {}
        nuc_img = _combine(img, nuclear, nuclear_scales, window, cache)
        if backend is None:
            nuclei = segment_nuclei(nuc_img, pixel_size_um,
                                    nucleus_diameter_um=nucleus_diameter_um,
                                    threshold=threshold, min_area_um2=min_area_um2,
                                    smoothing_sigma_um=smoothing_sigma_um)
        else:
            nuclei = _backend_nuclei(backend, nuc_img, pixel_size_um)
        del nuc_img
        mem = (_combine(img, membrane, membrane_scales, window, cache) if len(membrane)
               else None)
        cells = expand_nuclei_to_cells(nuclei, pixel_size_um, expansion_um=expansion_um,
                                       membrane=mem)
        del mem
        lut, n_segmented = _owned_ids(cells, core, window)
        cells = lut[cells]
        nuclei = lut[nuclei]
        cache = {c: v for c, v in cache.items() if c in set(measure_idx)}
        table = measure_cells(cells, nuclei, _ChannelReader(img, measure_idx, window, cache),
                              list(measure_names), pixel_size_um, offset_px=(wy0, wx0))
    finally:
        img.close()
    res: dict[str, Any] = {"index": index, "table": table, "n_segmented": n_segmented}
    res.update(_crops(cells, nuclei, window, index, out_dir))
    return res


def _backend_nuclei(backend: tuple, nuc_img: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Nucleus labels of a registered backend on one window, renumbered 1..n (int32)."""
    from tibspace.errors import InputError
    from tibspace.segment.backends import get_backend

    name, options = backend
    lab = np.asarray(get_backend(name)(nuc_img, None, pixel_size_um, dict(options)))
    if lab.shape != nuc_img.shape or not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"[segmentation] method = {name!r} returned a {lab.dtype} label image "
                         f"of shape {lab.shape}; expected integers of shape {nuc_img.shape}")
    ids, inv = np.unique(lab, return_inverse=True)
    out = inv.reshape(lab.shape).astype(np.int32)
    if ids[0] != 0:  # no background in the window
        out += 1
    return out


def _owned_ids(cells: np.ndarray, core: tuple[int, int, int, int],
               window: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
    """Look-up table window id -> owned local id (0 = not owned), and the cell count.

    A cell is owned when its whole-cell centroid, in whole-image pixels and
    rounded to the nearest pixel, lies in ``core``. Sums of whole-image
    coordinates are exact in float64, so two tiles that segment a cell
    identically compute bit-identical centroids.
    """
    wy0, _, wx0, _ = window
    n = int(cells.max())
    w = cells.shape[1]
    idx = np.flatnonzero(cells)
    flat = cells.ravel()[idx]
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=(idx // w + wy0).astype(np.float64),
                         minlength=n + 1) / area
        cx = np.bincount(flat, weights=(idx % w + wx0).astype(np.float64),
                         minlength=n + 1) / area
    y0, y1, x0, x1 = core
    ry, rx = np.floor(cy + 0.5), np.floor(cx + 0.5)
    own = (area > 0) & (ry >= y0) & (ry < y1) & (rx >= x0) & (rx < x1)
    own[0] = False
    owned = np.flatnonzero(own)
    owned = owned[np.lexsort((cx[owned], cy[owned]))]
    lut = np.zeros(n + 1, np.int32)
    lut[owned] = np.arange(1, owned.size + 1, dtype=np.int32)
    return lut, int((area[1:] > 0).sum())


def _crops(cells: np.ndarray, nuclei: np.ndarray, window: tuple[int, int, int, int],
           index: int, out_dir: Optional[str]) -> dict[str, Any]:
    """The owned labels cropped to their bounding box (small transfers).

    Returns ``origin`` (whole-image row, column of the crop) and ``cells`` /
    ``nuclei``: the arrays, or the paths of .npy files in ``out_dir``.
    """
    rows = np.flatnonzero(cells.any(axis=1))
    colsnz = np.flatnonzero(cells.any(axis=0))
    if rows.size:
        by0, by1, bx0, bx1 = rows[0], rows[-1] + 1, colsnz[0], colsnz[-1] + 1
    else:
        by0 = by1 = bx0 = bx1 = 0
    crop_c = np.ascontiguousarray(cells[by0:by1, bx0:bx1])
    crop_n = np.ascontiguousarray(nuclei[by0:by1, bx0:bx1])
    res: dict[str, Any] = {"origin": (window[0] + int(by0), window[2] + int(bx0))}
    if out_dir is None:
        res["cells"], res["nuclei"] = crop_c, crop_n
        return res
    pc = os.path.join(out_dir, f"tile{index:06d}_cells.npy")
    pn = os.path.join(out_dir, f"tile{index:06d}_nuclei.npy")
    np.save(pc, crop_c)
    np.save(pn, crop_n)
    res["cells"], res["nuclei"] = pc, pn
    return res


def new_label_array(shape: tuple[int, int], in_memory: bool, tmp: Optional[str], name: str):
    """A zero int32 label image: numpy in memory, or a zarr array under ``tmp``."""
    if in_memory:
        return np.zeros(shape, np.int32)
    import zarr

    return zarr.create_array(store=os.path.join(tmp, name + ".zarr"), shape=shape,
                             chunks=(1024, 1024), dtype="int32", fill_value=0)


class LabelAssembler:
    """Pastes tile label crops into the whole-image label images as the tiles finish.

    :meth:`add` is handed each tile result in completion order (the
    ``on_result`` of :func:`tibspace.segment.scheduler.run_tasks`); crops are
    pasted in tile order, so a tile that finishes early waits (its crops on
    disk when the worker wrote them there) until every earlier tile is in.
    Global ids are the local ids offset by the cells of the earlier tiles and
    each table's ``cell_id`` is offset likewise; a pixel claimed by two tiles'
    cells stays with the earlier tile. Only the tables stay in memory; crop
    files are removed once pasted.
    """

    def __init__(self, labels: Any, nuclei: Any, n_tiles: int, progress: Any = None):
        self.labels, self.nuclei = labels, nuclei
        self.n_tiles = int(n_tiles)
        self.tables: list = []
        self.conflicts = 0
        self.n_segmented = 0
        self._offset = 0
        self._pending: dict[int, dict] = {}
        self._progress = progress

    def add(self, index: int, result: dict) -> None:
        """Take tile ``index``'s result; paste it and every waiting successor now in order."""
        self._pending[int(index)] = result
        while len(self.tables) in self._pending:
            self._paste_tile(self._pending.pop(len(self.tables)))
            report(self._progress, "assemble labels", len(self.tables), self.n_tiles)

    @property
    def complete(self) -> bool:
        return len(self.tables) == self.n_tiles

    def _paste_tile(self, r: dict) -> None:
        off = self._offset
        tab = r["table"]
        tab["cell_id"] = tab["cell_id"].to_numpy() + off
        self.tables.append(tab)
        self._offset += len(tab)
        self.n_segmented += int(r["n_segmented"])
        on_disk = isinstance(r["cells"], str)
        crop_c = np.load(r["cells"]) if on_disk else r["cells"]
        crop_n = np.load(r["nuclei"]) if on_disk else r["nuclei"]
        if crop_c.size:
            oy, ox = r["origin"]
            sl = (slice(oy, oy + crop_c.shape[0]), slice(ox, ox + crop_c.shape[1]))
            self.conflicts += _paste(self.labels, sl, crop_c, off)
            _paste(self.nuclei, sl, crop_n, off)
        if on_disk:
            os.remove(r["cells"])
            os.remove(r["nuclei"])
        r["cells"] = r["nuclei"] = None


def assemble_labels(results: list[dict], labels: Any, nuclei: Any,
                    progress: Any) -> tuple[list, int]:
    """Write every tile's crops into ``labels`` / ``nuclei`` with global ids (all at once).

    Returns the tables in tile order and the number of contested cell
    pixels (see :class:`LabelAssembler`, which does the same as tiles finish).
    """
    asm = LabelAssembler(labels, nuclei, len(results), progress)
    for k, r in enumerate(results):
        asm.add(k, r)
    return asm.tables, asm.conflicts


def _paste(target: Any, sl: tuple[slice, slice], crop: np.ndarray, off: int) -> int:
    """Put ``crop + off`` into the free pixels of ``target[sl]``; return the clashes."""
    cur = np.asarray(target[sl])
    new = crop > 0
    clash = new & (cur > 0)
    put = new & ~clash
    cur[put] = crop[put] + off
    target[sl] = cur
    return int(clash.sum())
