"""Given label masks measured tile by tile: bring your own masks on whole slides, in bounded memory.

A cell mask read by window (:func:`tibspace.io.label_tiles.open_label_plane`) is scanned once
for its sorted original ids and each id's bounding box (:func:`scan_label_plane`); label ``k``
is the ``k``-th smallest id, as :func:`tibspace.io.read_label_mask` numbers them. The image is
cut into ``tile_size_px`` square cores; a cell belongs to the core holding the top-left corner
of its bounding box, and is measured in that core's *window*: the core grown to the bounding
boxes of its cells, so every cell is measured whole, exactly once. Centroids and moments are
computed in whole-image pixels (:func:`tibspace.cells.measure_cells`), and every per-cell sum
visits the cell's pixels in the same order as in the whole image, so the table equals the
whole-image measurement value for value. Nuclei given with the cells are re-keyed to the cell
they lie in, pixel by pixel (nucleus pixels outside every cell are dropped). The relabelled
cell and nucleus label images are pasted core by core into numpy arrays (up to 64 Mpx) or
zarr arrays on disk (above), as :func:`tibspace.segment.segment_image` hands them on.
Memory: one window of pixels and channels, the per-cell index, and the numpy label images of
images up to 64 Mpx. A nucleus mask given alone is grown into cells window by window
(:class:`ExpandedNuclei`): each window is expanded from the nuclei within a halo of the
expansion distance, which gives the whole-image expansion pixel for pixel.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from typing import Any, Optional

import numpy as np
import pandas as pd

from tibspace.errors import InputError
from tibspace.io.label_tiles import LabelIndex, LabelPlane, scan_label_plane, window_ids, windows
from tibspace.progress import report
from tibspace.segment.image import _IN_MEMORY_MAX_PX, SegmentationResult, _keep_or_clean
from tibspace.segment.tiling import _ChannelReader, new_label_array

__all__ = ["segment_from_label_planes"]


class ExpandedNuclei:
    """Cells grown from a nucleus mask, read by window like a :class:`LabelPlane`.

    A window's cells are the nuclei of the window grown by ``distance_px``
    (:func:`tibspace.segment.expand.expand_labels_fast`), computed on the window
    plus a halo of ``ceil(distance_px) + 1`` px: a pixel takes the id of its
    nearest nucleus pixel within ``distance_px``, and every such pixel lies in
    the halo, so a window equals the same crop of the whole-image expansion.
    Ids stay the nuclei's original ids.

    Examples
    --------
    >>> import numpy as np
    >>> nuc = np.zeros((1, 11), np.int64); nuc[0, 2] = 7; nuc[0, 8] = 9
    >>> ExpandedNuclei(LabelPlane.of_array("n.tif", nuc), 2.0).read(0, 1, 3, 9).tolist()
    [[7, 7, 0, 9, 9, 9]]
    """

    def __init__(self, nuclei: LabelPlane, distance_px: float):
        self.nuclei, self.distance_px = nuclei, float(distance_px)
        self.path, self.shape = nuclei.path, nuclei.shape
        self._halo = int(math.ceil(self.distance_px)) + 1

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        from tibspace.segment.expand import expand_labels_fast

        h, (ny, nx) = self._halo, self.shape
        a0, a1, b0, b1 = max(0, y0 - h), min(ny, y1 + h), max(0, x0 - h), min(nx, x1 + h)
        raw = window_ids(self.nuclei, (a0, a1, b0, b1))
        ids, dense = np.unique(raw, return_inverse=True)      # original ids may exceed int32
        dense = dense.reshape(raw.shape).astype(np.int32)
        if ids[0] != 0:
            ids, dense = np.r_[0, ids], dense + 1
        grown = expand_labels_fast(dense, self.distance_px) if self.distance_px > 0 else dense
        return ids[grown[y0 - a0:y1 - a0, x0 - b0:x1 - b0]]

    def close(self) -> None:
        """The nucleus plane is closed by its owner."""


def segment_from_label_planes(image: Any, cells: LabelPlane, nuclei: Optional[LabelPlane] = None, *,
                              tile_size_px: int = 2048, work_dir: Optional[Any] = None,
                              source: Optional[dict] = None,
                              progress: Any = None) -> SegmentationResult:
    """Measure every channel of ``image`` (a MultiplexImage) on given labels, tile by tile.

    Parameters
    ----------
    image : MultiplexImage
        The image; each tile reads only its window.
    cells, nuclei : LabelPlane
        Cell mask and optional nucleus mask of the image's shape, original ids.
    tile_size_px : int
        Side of the square tile cores (px, ≥ 64).
    work_dir, source : path, dict, optional
        Folder of the zarr label images (above 64 Mpx; default: the system temp
        folder); the label files' path, layout and sha256 (for the parameters).
    progress : callable, optional
        ``progress(step, done, total)``, per tile.

    Returns
    -------
    SegmentationResult
        Cells with ``cell_id`` 1..n and ``label_id`` (the original id); labels
        (and nuclei) relabelled 1..n, int32.
    """
    tile = int(tile_size_px)
    if tile < 64:
        raise InputError(f"tile_size_px must be ≥ 64 px, got {tile_size_px!r}")
    index = scan_label_plane(cells, tile)
    if nuclei is not None:
        scan_label_plane(nuclei, tile, boxes=False)
    shape = cells.shape
    in_memory = shape[0] * shape[1] <= _IN_MEMORY_MAX_PX
    tmp = tempfile.mkdtemp(prefix="tibspace-labels-", dir=work_dir)
    try:
        out_cells = new_label_array(shape, in_memory, tmp, "cells")
        out_nuc = new_label_array(shape, in_memory, tmp, "nuclei") if nuclei is not None else out_cells
        table = _measure_tiles(image, cells, nuclei, index, tile, out_cells, out_nuc, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _keep_or_clean(tmp, in_memory, out_cells, out_nuc)
    params = {"method": "given labels", "cells_source": "given",
              "nuclei_source": "given" if nuclei is not None else "cells",
              "tile_size_px": tile}
    if nuclei is None:
        params["note"] = "no nucleus mask given: nuclear measurements use the whole cell"
    params.update({"labels": source} if source else {})
    n_tiles = sum(1 for _ in windows(shape, tile))
    return SegmentationResult(cells=table, labels=out_cells, nuclei=out_nuc,
                              pixel_size_um=float(image.pixel_size_um), n_tiles=n_tiles,
                              parameters=params)


def _owners(index: LabelIndex, shape: tuple[int, int], tile: int) -> list[np.ndarray]:
    """Per tile (row-major), the 0-based labels whose box's top-left corner lies in its core."""
    n_tx = -(-shape[1] // tile)
    n_tiles = -(-shape[0] // tile) * n_tx
    key = (index.boxes[:, 0] // tile) * n_tx + index.boxes[:, 2] // tile
    order = np.argsort(key, kind="stable")
    bounds = np.searchsorted(key[order], np.arange(n_tiles + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(n_tiles)]


def _measure_tiles(image: Any, cells: LabelPlane, nuclei: Optional[LabelPlane], index: LabelIndex,
                   tile: int, out_cells: Any, out_nuc: Any, progress: Any) -> pd.DataFrame:
    """Measure each tile's cells in its window and paste its core's relabelled labels."""
    owners = _owners(index, cells.shape, tile)
    tables = []
    for k, core in enumerate(windows(cells.shape, tile)):
        owned = owners[k]
        win = _window(core, index.boxes[owned])
        raw = window_ids(cells, win)
        raw_nuc = window_ids(nuclei, win) if nuclei is not None else None
        if owned.size:
            tables.append(_measure_window(image, raw, raw_nuc, index.ids[owned], owned + 1, win))
        _paste_core(raw, raw_nuc, index.ids, core, win, out_cells, out_nuc)
        report(progress, "measure given labels", k + 1, len(owners))
    table = pd.concat(tables, ignore_index=True)
    table = table.sort_values("cell_id", kind="stable").reset_index(drop=True)
    table["label_id"] = index.ids[table["cell_id"].to_numpy() - 1]
    return table


def _window(core: tuple[int, int, int, int], boxes: np.ndarray) -> tuple[int, int, int, int]:
    """The core grown to hold every box (boxes start inside the core)."""
    y0, y1, x0, x1 = core
    if len(boxes):
        y1, x1 = max(y1, int(boxes[:, 1].max())), max(x1, int(boxes[:, 3].max()))
    return y0, y1, x0, x1


def _measure_window(image: Any, raw: np.ndarray, raw_nuc: Optional[np.ndarray], owned_ids: np.ndarray,
                    owned_labels: np.ndarray, win: tuple[int, int, int, int]) -> pd.DataFrame:
    """Cell table of the owned cells of one window (``cell_id`` = label 1..n).

    The other cells' pixels become background: no measurement of an owned cell
    looks at another cell's label, only at whether a pixel is its own.
    """
    from tibspace.cells import measure_cells

    local = _lookup(raw, owned_ids)
    nuc = local if raw_nuc is None else np.where(raw_nuc > 0, local, 0).astype(np.int32)
    chans = _ChannelReader(image, range(image.n_channels), win)
    table = measure_cells(local, nuc, chans, list(image.channel_names), float(image.pixel_size_um),
                          offset_px=(win[0], win[2]))
    table["cell_id"] = owned_labels[table["cell_id"].to_numpy() - 1].astype(np.int64)
    return table


def _lookup(raw: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """int32 image: ``k + 1`` where ``raw == ids[k]`` (``ids`` ascending), 0 elsewhere."""
    pos = np.searchsorted(ids, raw)
    np.minimum(pos, ids.size - 1, out=pos)
    hit = ids[pos] == raw
    out = pos.astype(np.int32)
    out += 1
    out[~hit] = 0
    return out


def _paste_core(raw: np.ndarray, raw_nuc: Optional[np.ndarray], ids: np.ndarray,
                core: tuple[int, int, int, int], win: tuple[int, int, int, int],
                out_cells: Any, out_nuc: Any) -> None:
    """Write the core's labels 1..n (and nuclei keyed to their cell) into the label images."""
    y0, y1, x0, x1 = core
    sub = raw[y0 - win[0]:y1 - win[0], x0 - win[2]:x1 - win[2]]
    lab = _lookup(sub, ids)
    out_cells[y0:y1, x0:x1] = lab
    if raw_nuc is not None:
        nsub = raw_nuc[y0 - win[0]:y1 - win[0], x0 - win[2]:x1 - win[2]]
        out_nuc[y0:y1, x0:x1] = np.where(nsub > 0, lab, 0).astype(np.int32)

