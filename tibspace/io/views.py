"""Lazy ``(C, Y, X)`` views over TIFF pixel data, wrapped as dask arrays.

A view decodes only the tiles or strips a window overlaps: directly from the
TIFF pages (:class:`_PageWindowReader`), through tifffile's zarr store for any
other axis order (:class:`_ZarrView`), or over one file per channel
(:class:`_StackView`). Decoding failures become one :class:`InputError` line
naming the file.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import dask.array as da
import numpy as np

from tibspace.errors import InputError


@contextlib.contextmanager
def _decode_errors(path: Path) -> Iterator[None]:
    """Turn tifffile/imagecodecs decoding failures (many exception types) into
    one :class:`InputError` naming the file."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot decode pixel data ({type(exc).__name__}: "
                         f"{_first_line(exc)}); the file is truncated or corrupt — "
                         "re-export it") from None


class _PageWindowReader:
    """Reads a window of single-sample TIFF pages by decoding only the tiles or
    strips it overlaps, with tifffile's own codec for the page.

    One page per channel (``pages[c]``), all with the keyframe's layout. This
    is the same work the zarr store does, without zarr 3's per-chunk
    overhead, which on 512² tiles cost about as much as the zlib decode
    itself (``benchmarks/bench_segmentation.py``).
    """

    def __init__(self, path: Path, pages: Sequence[Any]):
        key = pages[0].keyframe
        self.path = path
        self.pages = list(pages)
        self.ny, self.nx, self.th, self.tw, self.dtype = self._layout(key)
        self.ntx = -(-self.nx // self.tw)
        self._decode = key.decode
        self._jpegtables = getattr(key, "jpegtables", None)

    @staticmethod
    def _layout(key: Any) -> tuple:
        """(rows, cols, segment rows, segment cols, dtype) of a page: tiles, or strips of full width."""
        ny, nx = int(key.imagelength), int(key.imagewidth)
        if key.is_tiled:
            return ny, nx, int(key.tilelength), int(key.tilewidth), np.dtype(key.dtype)
        return ny, nx, int(min(key.rowsperstrip or ny, ny)), nx, np.dtype(key.dtype)

    @staticmethod
    def usable(pages: Sequence[Any], shape_yx: tuple[int, int]) -> bool:
        """Pages this reader can handle: 2-D, one sample, one layout, every segment present."""
        if not pages or any(p is None for p in pages):
            return False
        try:
            key = pages[0].keyframe
            layout = _PageWindowReader._layout(key)
            ny, nx, th, tw, _ = layout
            n_segments = (-(-ny // th)) * (-(-nx // tw))
            return (key.samplesperpixel == 1 and key.imagedepth == 1 and (ny, nx) == tuple(shape_yx)
                    and all(_PageWindowReader._layout(p.keyframe) == layout
                            and len(p.dataoffsets) == n_segments for p in pages))
        except Exception:  # an unusual layout (or no dtype): the zarr path handles it
            return False

    def read(self, channels: Sequence[int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.zeros((len(channels), y1 - y0, x1 - x0), self.dtype)
        ty = np.arange(y0 // self.th, (y1 - 1) // self.th + 1)
        tx = np.arange(x0 // self.tw, (x1 - 1) // self.tw + 1)
        idx = (ty[:, None] * self.ntx + tx[None, :]).ravel()
        for k, c in enumerate(channels):
            page = self.pages[c]
            fh = page.parent.filehandle
            with _decode_errors(self.path):
                offsets = np.asarray(page.dataoffsets)[idx]
                counts = np.asarray(page.databytecounts)[idx]
                for data, i in fh.read_segments(offsets, counts, indices=idx, sort=True,
                                                lock=fh.lock):
                    if data is None or len(data) == 0:
                        continue  # sparse file: a missing tile is 0
                    seg, (_, _, sy, sx, _), _ = self._decode(data, int(i), jpegtables=self._jpegtables)
                    seg = seg.reshape(seg.shape[-3], seg.shape[-2])
                    oy0, oy1 = max(sy, y0), min(sy + seg.shape[0], y1)
                    ox0, ox1 = max(sx, x0), min(sx + seg.shape[1], x1)
                    if oy1 > oy0 and ox1 > ox0:
                        out[k, oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0] = \
                            seg[oy0 - sy:oy1 - sy, ox0 - sx:ox1 - sx]
        return out


class _ZarrView:
    """A ``(C, Y, X)`` array-like over one zarr array with arbitrary TIFF axes.

    ``axes`` is tifffile's axes string of the stored array (e.g. ``"CYX"``,
    ``"TCZYX"``, ``"IYX"``, ``"YXS"``); ``channel_axis`` the letter used as
    channel (or ``None`` for a single-channel image). All other axes have
    length one and are indexed with 0. Decoding errors become
    :class:`InputError` naming ``path``.
    """

    def __init__(self, path: Path, zarray: Any, axes: str, channel_axis: Optional[str]):
        self.path = path
        self._z = zarray
        self._axes = axes
        self._cax = channel_axis
        shape = dict(zip(axes, zarray.shape))
        self.shape = (shape[channel_axis] if channel_axis else 1, shape["Y"], shape["X"])
        self.dtype = np.dtype(zarray.dtype)
        self.ndim = 3
        zchunks = dict(zip(axes, zarray.chunks))
        self.native_chunks = (zchunks[channel_axis] if channel_axis else 1,
                              zchunks["Y"], zchunks["X"])

    def __getitem__(self, key: Any) -> np.ndarray:
        ckey, ykey, xkey = _normalise_key(key, self.shape)
        native: list[Any] = []
        for ax in self._axes:
            if ax == "Y":
                native.append(ykey)
            elif ax == "X":
                native.append(xkey)
            elif ax == self._cax:
                native.append(ckey)
            else:
                native.append(0)
        with _decode_errors(self.path):
            if isinstance(ckey, np.ndarray) and self._cax is not None:
                out = self._z.oindex[tuple(native)]
            else:
                out = self._z[tuple(native)]
        out = np.asarray(out)
        # Kept axes, in stored order: channel (if array-indexed/slice), Y, X.
        kept = [ax for ax, k in zip(self._axes, native)
                if ax in ("Y", "X") or (ax == self._cax and not np.isscalar(k)
                                        and not isinstance(k, (int, np.integer)))]
        if self._cax is None:  # single-channel file: index a virtual axis of length 1
            if not isinstance(ckey, (int, np.integer)):
                out = out[np.newaxis][ckey]
                kept = ["C"] + kept
        order = [kept.index(a) for a in ("C" if self._cax is None else self._cax, "Y", "X")
                 if a in kept]
        if order != list(range(len(order))):
            out = np.transpose(out, order)
        return out


class _StackView:
    """A ``(C, Y, X)`` array-like over a list of 2-D zarr arrays (folder input)."""

    def __init__(self, paths: list[Path], zarrays: list[Any]):
        self.paths = paths
        self._zs = zarrays
        self.shape = (len(zarrays),) + tuple(zarrays[0].shape)
        self.dtype = np.result_type(*[np.dtype(z.dtype) for z in zarrays])
        self.ndim = 3
        self.native_chunks = (1,) + tuple(zarrays[0].chunks)

    def __getitem__(self, key: Any) -> np.ndarray:
        ckey, ykey, xkey = _normalise_key(key, self.shape)
        idx = np.arange(self.shape[0])[ckey]
        planes = []
        for c in np.atleast_1d(idx):
            try:
                planes.append(np.asarray(self._zs[int(c)][ykey, xkey], dtype=self.dtype))
            except Exception as exc:
                raise InputError(f"{self.paths[int(c)]}: cannot decode pixel data "
                                 f"({type(exc).__name__}: {_first_line(exc)}); the file is "
                                 "truncated or corrupt — re-export it") from None
        out = np.stack(planes)
        return out[0] if np.ndim(idx) == 0 else out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _normalise_key(key: Any, shape: tuple[int, int, int]) -> tuple[Any, slice, slice]:
    """Split a ``(c, y, x)`` index into channel key (int/slice/int array) and Y/X slices."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = [k is Ellipsis for k in key].index(True)
        key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
    key = tuple(key) + (slice(None),) * (3 - len(key))
    if len(key) != 3:
        raise IndexError(f"too many indices for a (C, Y, X) image: {key!r}")
    ckey, ykey, xkey = key
    if isinstance(ckey, (list, tuple, np.ndarray)):
        ckey = np.asarray(ckey, dtype=np.intp)
        ckey = np.where(ckey < 0, ckey + shape[0], ckey)
    elif isinstance(ckey, (int, np.integer)):
        ckey = int(ckey) + (shape[0] if ckey < 0 else 0)
    for k in (ykey, xkey):
        if not isinstance(k, slice):
            raise IndexError("Y and X must be indexed with slices")
    return ckey, ykey, xkey


def _dask_chunks(native: tuple[int, int, int], shape: tuple[int, int, int],
                 target: int = 1024) -> tuple[int, int, int]:
    """Dask chunks: multiples of the file's tiles/strips, about ``target`` px a side.

    Striped files have one-row (or few-row) strips; using them directly would
    give dask graphs with millions of tasks.
    """
    out = [1]
    for n, size in zip(native[1:], shape[1:]):
        n = max(int(n), 1)
        out.append(int(min(size, max(n, math.ceil(target / n) * n))))
    return tuple(out)  # type: ignore[return-value]


def _as_dask(view: Any, name: str) -> da.Array:
    chunks = _dask_chunks(view.native_chunks, view.shape)
    # An explicit name keeps dask from hashing the (lazy) view's contents.
    arr = da.from_array(view, chunks=chunks, name=name, asarray=True, fancy=False,
                        lock=False, meta=np.empty((0, 0, 0), dtype=view.dtype))
    if np.dtype(view.dtype).kind == "f":
        arr = arr.map_blocks(_fill_nonfinite, dtype=arr.dtype, name=name + "-finite")
    return arr


def _fill_nonfinite(a: np.ndarray) -> np.ndarray:
    """NaN / ±inf pixels of a ``(C, Y, X)`` float window set to the lowest finite value of
    their channel in the window (0 where the window has none): they read as background.

    Integer data is returned unchanged. :func:`tibspace.io.image.nonfinite_counts` counts
    them for the run's warnings.

    Examples
    --------
    >>> _fill_nonfinite(np.array([[[1.0, np.nan], [np.inf, 3.0]]])).tolist()
    [[[1.0, 1.0], [1.0, 3.0]]]
    """
    if a.dtype.kind != "f" or a.size == 0:
        return a
    bad = ~np.isfinite(a)
    if not bad.any():
        return a
    a = np.array(a, copy=True)
    planes = a.reshape((-1,) + a.shape[-2:]) if a.ndim >= 2 else a.reshape(1, 1, -1)
    masks = bad.reshape(planes.shape)
    for plane, m in zip(planes, masks):
        if m.any():
            ok = plane[~m]
            plane[m] = ok.min() if ok.size else 0
    return a


class _Plane:
    """2-D view of a single-channel :class:`_ZarrView` (for :class:`_StackView`)."""

    def __init__(self, view: _ZarrView):
        self._v = view
        self.shape = view.shape[1:]
        self.dtype = view.dtype
        self.chunks = view.native_chunks[1:]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return self._v[(0,) + tuple(key)]
