"""Label masks read window by window from a tiled or stripped TIFF (bring your own masks on slides).

:func:`open_label_plane` opens the 2-D label plane of a TIFF lazily, as a zarr view of its
tiles or strips (a window decodes only the chunks it overlaps), after the header checks of
:func:`tibspace.io.read_label_mask`: plane shape against the image's, pixel size, dtype.
:func:`scan_label_plane` reads it once, window by window, checks the values (integer-valued,
non-negative, not all background) and collects the sorted original ids with the bounding box
of each id. Memory: one window of pixels, plus a few numbers per labelled object.
Label ``k`` (1..n) is the ``k``-th smallest original id, as :func:`read_label_mask` numbers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from scipy import ndimage as ndi

from tibspace.errors import InputError
from tibspace.io.label_masks import (check_label_dtype, check_label_pixel_size,
                                     check_label_values, resolve_format)

__all__ = ["LabelPlane", "LabelIndex", "open_label_plane", "scan_label_plane", "windows"]

# A TIFF whose chunks (tiles or strips) hold more pixels than this is not read through its
# chunks (each window would decode whole chunks): an uncompressed plane is memory-mapped per
# window, any other is read whole by read_label_mask.
MAX_CHUNK_PX = 16 * 1024 * 1024


class LabelPlane:
    """A ``(Y, X)`` label mask read by window: a zarr view of a TIFF, or an array in memory.

    Parameters
    ----------
    path : Path
        The file (named in error messages).
    array : zarr.Array or numpy.ndarray
        The stored array; ``index`` picks the plane.
    index : tuple
        One entry per axis of ``array``: ``0`` for a length-1 axis, ``None`` for Y and X.
    handle : object, optional
        Open file behind ``array`` (closed by :meth:`close`).
    """

    def __init__(self, path: Path, array: Any, index: tuple = (None, None), handle: Any = None):
        self.path, self._array, self._index, self._handle = Path(path), array, tuple(index), handle
        yx = [n for n, i in zip(array.shape, self._index) if i is None]
        self.shape = (int(yx[0]), int(yx[1]))

    @classmethod
    def of_array(cls, path: Any, array: np.ndarray) -> "LabelPlane":
        """A plane over a 2-D array already in memory."""
        return cls(Path(path), np.asarray(array))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Stored values of rows ``y0:y1``, columns ``x0:x1`` (``(y1-y0, x1-x0)``, read-only use)."""
        yx = iter((slice(int(y0), int(y1)), slice(int(x0), int(x1))))
        key = tuple(next(yx) if i is None else i for i in self._index)
        return np.asarray(self._array[key])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass
class LabelIndex:
    """Sorted original ids of a mask and each id's bounding box.

    Attributes
    ----------
    ids : (n,) int64
        Original label values, ascending (label ``k`` is ``ids[k - 1]``).
    boxes : (n, 4) int64
        ``(y0, y1, x0, x1)`` of each id, end-exclusive, in whole-image pixels.
    """

    ids: np.ndarray
    boxes: np.ndarray


def open_label_plane(path: Any, *, fmt: str = "auto", nuclei: bool = False,
                     shape: Optional[tuple[int, int]] = None,
                     pixel_size_um: Optional[float] = None) -> Optional[LabelPlane]:
    """The label plane of a TIFF, read by window; ``None`` when it must be read whole.

    ``None`` for ``.npy`` files, inForm seg maps (one page per compartment), stacks whose
    first series has a non-Y/X axis longer than 1 (DeepCell 2-channel outputs) and
    compressed TIFFs whose chunks exceed :data:`MAX_CHUNK_PX` (an uncompressed one is read
    through a memory map instead): :func:`tibspace.io.read_label_mask` reads those. The plane shape, pixel size and dtype are checked as there (one-line
    :class:`InputError`).
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or resolve_format(path, fmt) == "inform":
        return None
    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not a readable label TIFF ({e})") from None
    try:
        plane = _plane_of(path, tf, shape, pixel_size_um)
    except BaseException:
        tf.close()
        raise
    if plane is None:
        tf.close()
    return plane


def _plane_of(path: Path, tf: Any, shape: Optional[tuple[int, int]],
              pixel_size_um: Optional[float]) -> Optional[LabelPlane]:
    """The checked zarr view of ``tf``'s first series, level 0 (``None``: read it whole)."""
    import zarr

    from tibspace.io.tiff_meta import _pixel_size_from_file

    series = tf.series[0]
    axes, dims = str(series.axes), tuple(int(n) for n in series.shape)
    if "Y" not in axes or "X" not in axes or any(n != 1 for a, n in zip(axes, dims) if a not in "YX"):
        return None
    ny, nx = dims[axes.index("Y")], dims[axes.index("X")]
    if shape is not None and (ny, nx) != tuple(shape):
        raise InputError(f"{path}: label shape {ny}x{nx} does not match image {shape[0]}x{shape[1]}")
    check_label_pixel_size(path, _pixel_size_from_file(path, tf, series), pixel_size_um)
    check_label_dtype(path, np.dtype(series.dtype))
    try:
        arr = zarr.open(series.aszarr(level=0), mode="r")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not a readable label TIFF ({e})") from None
    chunk = dict(zip(axes, arr.chunks))
    if int(chunk["Y"]) * int(chunk["X"]) > MAX_CHUNK_PX:
        return _contiguous_plane(path, tf, series, (ny, nx))
    index = tuple(None if a in "YX" else 0 for a in axes)
    return LabelPlane(path, arr, index, handle=tf)


def _contiguous_plane(path: Path, tf: Any, series: Any, shape: tuple[int, int]) -> Optional[LabelPlane]:
    """An uncompressed single-page plane (one strip, as ``tifffile.imwrite`` writes by default)
    read by window through a memory map; ``None`` when the pixels are not stored contiguously."""
    page = series.keyframe
    if len(series.pages) != 1 or not page.is_contiguous or int(page.samplesperpixel) != 1:
        return None
    dtype = np.dtype(page.dtype).newbyteorder(tf.byteorder)
    return LabelPlane(path, _Contiguous(path, int(page.dataoffsets[0]), shape, dtype), handle=tf)


class _Contiguous:
    """A ``(Y, X)`` array stored contiguously at ``offset`` in a file: each read maps the file,
    copies the window and unmaps, so no more of the file than the window stays resident."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, int], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        m = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
        try:
            return np.array(m[key], dtype=self.dtype.newbyteorder("="))
        finally:
            del m


def windows(shape: tuple[int, int], tile_px: int) -> Iterator[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` of the ``tile_px``-square tiles partitioning ``shape``, row by row.

    Examples
    --------
    >>> list(windows((3, 5), 4))
    [(0, 3, 0, 4), (0, 3, 4, 5)]
    """
    ny, nx = shape
    for y0 in range(0, ny, tile_px):
        for x0 in range(0, nx, tile_px):
            yield y0, min(y0 + tile_px, ny), x0, min(x0 + tile_px, nx)


def window_ids(plane: LabelPlane, win: tuple[int, int, int, int]) -> np.ndarray:
    """The checked label values of window ``win`` of ``plane`` as int64."""
    raw = plane.read(*win)
    check_label_values(plane.path, raw)
    return raw.astype(np.int64, copy=False)


def scan_label_plane(plane: LabelPlane, tile_px: int, *, boxes: bool = True) -> LabelIndex:
    """Check every value of ``plane`` and index its ids, one ``tile_px`` window at a time.

    Raises a one-line :class:`InputError` for non-integer or negative values and for a mask
    without a labelled pixel. ``boxes=False`` only checks (the index then has no ids).
    """
    ids_parts, box_parts, any_label = [], [], False
    for win in windows(plane.shape, int(tile_px)):
        a = window_ids(plane, win)
        if not boxes:
            any_label = any_label or bool(a.any())
            continue
        ids, bx = _window_boxes(a, win[0], win[2])
        ids_parts.append(ids)
        box_parts.append(bx)
        any_label = any_label or bool(ids.size)
    if not any_label:
        raise InputError(f"{plane.path}: label mask is empty (no labelled pixels)")
    if not boxes:
        return LabelIndex(np.zeros(0, np.int64), np.zeros((0, 4), np.int64))
    return _merge_boxes(np.concatenate(ids_parts), np.concatenate(box_parts))


def _window_boxes(a: np.ndarray, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids (> 0, ascending) of window ``a`` and their boxes in whole-image pixels."""
    ids, inv = np.unique(a, return_inverse=True)
    lab = inv.reshape(a.shape)
    if ids.size and ids[0] == 0:
        ids = ids[1:]
    else:
        lab = lab + 1
    if ids.size == 0:
        return ids, np.zeros((0, 4), np.int64)
    sl = ndi.find_objects(lab, max_label=ids.size)
    bx = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in sl], np.int64)
    bx += np.array([y0, y0, x0, x0], np.int64)
    return ids, bx


def _merge_boxes(ids: np.ndarray, boxes: np.ndarray) -> LabelIndex:
    """One box per id: the union of its boxes from every window."""
    order = np.argsort(ids, kind="stable")
    ids, boxes = ids[order], boxes[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    out = np.empty((starts.size, 4), np.int64)
    for k, reduce in enumerate((np.minimum, np.maximum, np.minimum, np.maximum)):
        out[:, k] = reduce.reduceat(boxes[:, k], starts)
    return LabelIndex(ids[starts], out)
