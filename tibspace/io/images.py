"""Reading and writing multiplex images (OME-TIFF, multipage TIFF, folders).

Everything is lazy: pixels stay on disk until asked for. A file is opened
with :mod:`tifffile`, exposed as a zarr store (only the tiles/strips a window
touches are decoded) and wrapped as :mod:`dask` arrays shaped ``(C, Y, X)``,
one per pyramid level. Pixel size always travels with the image in µm.

Supported inputs
----------------
1. OME-TIFF (channel names from ``Channel@Name``, pixel size from
   ``PhysicalSizeX/Y`` converted to µm), tiled or striped, pyramidal via
   SubIFDs or series levels.
2. Plain multi-page TIFF whose pages carry names: MIBI-style ``PageName``
   tags, ImageJ hyperstacks with ``Labels``, or per-page descriptions
   (PerkinElmer/Akoya XML ``<Name>``, MIBI JSON ``channel.target``).
3. A folder of single-channel TIFFs, one per marker, named by the marker.

Every problem a user can cause is an :class:`~tibspace.errors.InputError`
with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import tempfile
import uuid
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import dask.array as da
import numpy as np
import tifffile

from tibspace.io.files import atomic_path
from tibspace.errors import InputError, positive_um
from tibspace.io.channels import normalise_name as normalise_channel_name
from tibspace.progress import report

__all__ = [
    "MultiplexImage",
    "open_image",
    "check_not_empty",
    "write_ome_tiff",
    "write_labels_ome_tiff",
    "normalise_channel_name",
    "LENGTH_UNITS_UM",
]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# OME UnitsLength (and common spellings) -> micrometres.
LENGTH_UNITS_UM: dict[str, float] = {
    "ym": 1e-18, "zm": 1e-15, "am": 1e-12, "fm": 1e-9, "pm": 1e-6,
    "Å": 1e-4, "å": 1e-4, "angstrom": 1e-4, "nm": 1e-3, "nanometer": 1e-3,
    "nanometre": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0,
    "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "mm": 1e3,
    "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
    "centimetre": 1e4, "dm": 1e5, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "dam": 1e7, "hm": 1e8, "km": 1e9, "thou": 25.4, "mil": 25.4,
    "in": 25400.0, "inch": 25400.0, "ft": 304800.0, "yd": 914400.0,
    "pt": 25400.0 / 72.0, "mi": 1.609344e9,
}
# Units that carry no physical size (OME "pixel", "reference frame").
_NON_PHYSICAL_UNITS = {"pixel", "pixels", "px", "reference frame", "referenceframe", ""}

# Resolution tags giving pixels larger than this are screen/print defaults
# (72/96/300 dpi), not a microscope's sampling; they are ignored.
_MAX_PLAUSIBLE_PIXEL_UM = 100.0

def _unit_to_um(unit: Optional[str]) -> Optional[float]:
    """Factor converting ``unit`` to µm; ``None`` for non-physical units.

    Raises ``KeyError`` for an unknown unit string.
    """
    if unit is None:
        return 1.0  # OME default unit is µm
    u = str(unit).strip()
    if u.lower() in _NON_PHYSICAL_UNITS:
        return None
    # Mojibake and escaped forms of the micro sign seen in real files.
    u = u.replace("Âµ", "µ").replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    if u in LENGTH_UNITS_UM:
        return LENGTH_UNITS_UM[u]
    if u.lower() in LENGTH_UNITS_UM:
        return LENGTH_UNITS_UM[u.lower()]
    raise KeyError(u)


# --------------------------------------------------------------------------
# Lazy, error-wrapping array views
# --------------------------------------------------------------------------


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
    return da.from_array(view, chunks=chunks, name=name, asarray=True, fancy=False,
                         lock=False, meta=np.empty((0, 0, 0), dtype=view.dtype))


# --------------------------------------------------------------------------
# The image object
# --------------------------------------------------------------------------


@dataclass(eq=False)  # dask arrays have no truth value; compare by identity
class MultiplexImage:
    """A lazily read multiplex image: channels, pixel size and pyramid levels.

    Parameters
    ----------
    path : Path
        The file or folder the image was read from.
    channel_names : list of str
        One unique name per channel (repeated names got ``_2``, ``_3``...).
    pixel_size_um : float
        Size of one (square) pixel in µm.
    levels : list of dask.array.Array
        ``(C, Y, X)`` arrays; ``levels[0]`` is full resolution, later ones
        are the file's own pyramid levels (if any), coarsest last.
    dtype : numpy.dtype
        Pixel data type.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> data = np.arange(2 * 64 * 80, dtype=np.uint16).reshape(2, 64, 80)
    >>> write_ome_tiff(d / "a.ome.tif", data, ["DAPI", "CD8"], 0.5, tile=32)
    >>> img = open_image(d / "a.ome.tif")
    >>> img.shape, img.channel_names, img.pixel_size_um
    ((2, 64, 80), ['DAPI', 'CD8'], 0.5)
    >>> img.read_region([img.channel_index("cd-8")], 0, 2, 0, 3).tolist()
    [[[5120, 5121, 5122], [5200, 5201, 5202]]]
    """

    path: Path
    channel_names: list[str]
    pixel_size_um: float
    levels: list[da.Array]
    dtype: np.dtype
    _views: list[Any] = field(default_factory=list, repr=False, compare=False)
    _handles: list[Any] = field(default_factory=list, repr=False, compare=False)
    # per level: a direct tile reader when the pages allow it (else None: zarr view)
    _page_readers: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def data(self) -> da.Array:
        """Full-resolution ``(C, Y, X)`` dask array (``levels[0]``)."""
        return self.levels[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, Y, X)`` of the full-resolution level."""
        return tuple(int(s) for s in self.levels[0].shape)  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def channel_index(self, name: str) -> int:
        """Index of channel ``name`` (case-insensitive, ignoring ``- _ / .`` and spaces).

        Raises
        ------
        InputError
            When no channel matches; the message lists the available channels.
        """
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            if 0 <= int(name) < self.n_channels:
                return int(name)
        key = normalise_channel_name(name)
        exact = [i for i, c in enumerate(self.channel_names) if c == name]
        if exact:
            return exact[0]
        hits = [i for i, c in enumerate(self.channel_names) if normalise_channel_name(c) == key]
        if hits:
            return hits[0]
        raise InputError(f"{self.path}: no channel named {name!r}; it has: "
                         f"{', '.join(self.channel_names)}")

    def read_region(self, channels: Optional[Sequence[int]], y0: int, y1: int, x0: int,
                    x1: int, level: int = 0) -> np.ndarray:
        """Read the window ``[y0:y1, x0:x1]`` of some channels from disk.

        Only the tiles/strips overlapping the window are decoded.

        Parameters
        ----------
        channels : list of int or None
            Channel indices; ``None`` for all channels.
        y0, y1, x0, x1 : int
            Window in pixels of ``level`` (clipped to the image).
        level : int
            Pyramid level (0 = full resolution).

        Returns
        -------
        numpy.ndarray
            ``(c, h, w)`` array.
        """
        view = self._views[level] if self._views else None
        c, ny, nx = (int(s) for s in self.levels[level].shape)
        y0, y1 = max(int(y0), 0), min(int(y1), ny)
        x0, x1 = max(int(x0), 0), min(int(x1), nx)
        if y1 <= y0 or x1 <= x0:
            raise InputError(f"{self.path}: empty window y {y0}:{y1}, x {x0}:{x1} in a "
                             f"{ny}x{nx} image")
        if channels is None:
            ckey: Any = slice(None)
        else:
            ckey = np.asarray(list(channels), dtype=np.intp)
            if ckey.size and (ckey.min() < -c or ckey.max() >= c):
                raise InputError(f"{self.path}: channel index out of range 0..{c - 1}: "
                                 f"{list(channels)}")
        fast = self._page_readers[level] if level < len(self._page_readers) else None
        if fast is not None:
            chans = range(c) if channels is None else [int(i) % c for i in ckey]
            return fast.read(list(chans), y0, y1, x0, x1)
        if view is None:
            return np.asarray(self.levels[level][ckey, y0:y1, x0:x1])
        return view[ckey, slice(y0, y1), slice(x0, x1)]

    def close(self) -> None:
        """Close the underlying file handles (the dask arrays stop working)."""
        for h in self._handles:
            try:
                h.close()
            except Exception:
                pass
        self._handles.clear()

    def __enter__(self) -> "MultiplexImage":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------


def open_image(path: str | Path, pixel_size_um: Optional[float] = None,
               channel_names: Optional[Sequence[str]] = None) -> MultiplexImage:
    """Open a multiplex image lazily.

    Parameters
    ----------
    path : str or Path
        OME-TIFF, multi-page TIFF with named pages, ImageJ hyperstack, or a
        folder of single-channel TIFFs named by marker.
    pixel_size_um : float, optional
        µm per pixel; overrides (with a warning if different) or supplies the
        file's own pixel size.
    channel_names : list of str, optional
        Channel names overriding those in the file (same length).

    Returns
    -------
    MultiplexImage

    Raises
    ------
    InputError
        Missing path, not a TIFF, corrupt file, no pixel size anywhere,
        anisotropic pixels, Z-stacks/time series/RGB, mismatching names.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_ome_tiff(d / "a.ome.tif", np.ones((3, 40, 50), np.uint8),
    ...                ["DAPI", "CD3", "CD8"], 0.65)
    >>> img = open_image(d / "a.ome.tif")
    >>> img.n_channels, img.pixel_size_um, img.data.shape
    (3, 0.65, (3, 40, 50))
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        img, file_px = _open_folder(path)
    else:
        img, file_px = _open_file(path, warn_unnamed=channel_names is None)
    try:
        img.pixel_size_um = _resolve_pixel_size(path, file_px, pixel_size_um)
        if channel_names is not None:
            names = [str(n) for n in channel_names]
            if len(names) != img.n_channels:
                raise InputError(f"{path}: {len(names)} channel names given but the image has "
                                 f"{img.n_channels} channels; give one name per channel")
            img.channel_names = names
        img.channel_names = _make_unique(img.channel_names, path)
    except BaseException:
        img.close()
        raise
    return img


def check_pixel_size_um(value: Any, where: Any = None) -> float:
    """``value`` as a positive, finite float of µm per pixel, or a one-line InputError.

    Examples
    --------
    >>> check_pixel_size_um("0.5")
    0.5
    """
    return positive_um(value, "pixel_size_um", where=where, unit="µm per pixel")


def _resolve_pixel_size(path: Path, file_px: Optional[float],
                        given: Optional[float]) -> float:
    if given is not None:
        given = check_pixel_size_um(given, path)
        if file_px is not None and abs(file_px - given) > 0.01 * file_px:
            warnings.warn(f"{path}: pixel size {given} µm given overrides {file_px:.6g} µm "
                          "recorded in the file", stacklevel=3)
        return given
    if file_px is None:
        raise InputError(f"{path}: no pixel size in the file's metadata; pass "
                         "--pixel-size-um (µm per pixel) or set [image] pixel_size_um in "
                         "the panel")
    return file_px


def _make_unique(names: Sequence[str], path: Path) -> list[str]:
    """Suffix repeated channel names with ``_2``, ``_3``... (with a warning)."""
    seen: dict[str, int] = {}
    out: list[str] = []
    taken = set(names)
    for n in names:
        if n not in seen:
            seen[n] = 1
            out.append(n)
            continue
        k = seen[n] + 1
        while f"{n}_{k}" in taken:
            k += 1
        seen[n] = k
        new = f"{n}_{k}"
        taken.add(new)
        warnings.warn(f"{path}: channel name {n!r} occurs more than once; the repeat is "
                      f"called {new!r}", stacklevel=3)
        out.append(new)
    return out


def _check_tiff_magic(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror})") from None
    if head not in _TIFF_MAGIC:
        kind = _sniff_kind(head)
        raise InputError(f"{path}: not a TIFF file{kind}; tibspace reads OME-TIFF / TIFF "
                         "images (convert it, e.g. with bfconvert or QuPath)")


def _sniff_kind(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return " (it is a PNG image)"
    if head.startswith(b"\xff\xd8"):
        return " (it is a JPEG image)"
    if head.startswith(b"PK"):
        return " (it is a ZIP archive)"
    if head.startswith(b"\x89HDF"):
        return " (it is an HDF5 file)"
    if not head:
        return " (it is empty)"
    try:
        head.decode("ascii")
        return " (it looks like text)"
    except UnicodeDecodeError:
        return ""


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's log records while parsing: a damaged file becomes one
    InputError line, not a screenful of logged tag errors."""
    log = logging.getLogger("tifffile")
    old = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(old)


def _open_tifffile(path: Path) -> tifffile.TiffFile:
    _check_tiff_magic(path)
    try:
        with _quiet_tifffile():
            tf = tifffile.TiffFile(path)
            _ = tf.series  # parse now, so errors surface here
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read this TIFF ({type(exc).__name__}: "
                         f"{_first_line(exc)}); the file is truncated or corrupt — "
                         "re-export it") from None
    return tf


def _check_data_within_file(path: Path, tf: tifffile.TiffFile, pages: Sequence[Any]) -> None:
    """Fail early when strips/tiles point past the end of the file (truncation)."""
    size = tf.filehandle.size
    for page in pages:
        try:
            offs = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
        except Exception:
            continue
        if offs.size and int((offs + counts).max()) > size:
            raise InputError(f"{path}: the file is truncated (pixel data runs past its end "
                             f"at {size} bytes); re-copy or re-export it")


def _open_file(path: Path, warn_unnamed: bool = True
               ) -> tuple[MultiplexImage, Optional[float]]:
    tf = _open_tifffile(path)
    try:
        return _open_series(path, tf, warn_unnamed)
    except BaseException:
        tf.close()
        raise


def _open_series(path: Path, tf: tifffile.TiffFile, warn_unnamed: bool = True
                 ) -> tuple[MultiplexImage, Optional[float]]:
    if not tf.series:
        raise InputError(f"{path}: the TIFF holds no readable image (truncated or corrupt "
                         "header?); re-export it")
    series = tf.series[0]
    axes = series.axes
    shape = series.shape
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"{path}: cannot find the Y/X axes of the image (axes {axes!r}, "
                         f"shape {shape}); export a (C, Y, X) OME-TIFF")
    cax = _channel_axis(path, tf, series)

    level0_pages = [p for p in series.pages if p is not None]
    _check_data_within_file(path, tf, level0_pages)

    views: list[_ZarrView] = []
    token = uuid.uuid4().hex[:12]
    levels: list[da.Array] = []
    n_levels = len(getattr(series, "levels", [series])) or 1
    import zarr  # imported lazily: only needed when opening files

    for lvl in range(n_levels):
        try:
            store = series.aszarr(level=lvl)
            z = zarr.open(store, mode="r")
        except Exception as exc:
            if lvl == 0:
                raise InputError(f"{path}: cannot read this TIFF's pixel layout "
                                 f"({type(exc).__name__}: {_first_line(exc)})") from None
            break  # a damaged reduced level is not fatal
        if not hasattr(z, "shape") or len(z.shape) != len(axes):
            if lvl == 0:
                raise InputError(f"{path}: unexpected pixel layout (axes {axes!r})")
            break
        view = _ZarrView(path, z, axes, cax)
        if lvl and view.shape[0] != views[0].shape[0]:
            break
        views.append(view)
        levels.append(_as_dask(view, f"tibspace-{token}-L{lvl}"))

    c = views[0].shape[0]
    names = _channel_names_from_file(path, tf, series, c, warn_unnamed)
    px = _pixel_size_from_file(path, tf, series)
    readers: list[Any] = []
    if axes == "YX" or (len(axes) == 3 and axes[1:] == "YX" and axes[0] == cax):
        # one page per channel: decode tiles/strips directly
        lvl_series = list(getattr(series, "levels", [series])) or [series]
        for lvl, view in enumerate(views):
            pages = list(lvl_series[lvl].pages) if lvl < len(lvl_series) else []
            ok = len(pages) == view.shape[0] and _PageWindowReader.usable(pages, view.shape[1:])
            readers.append(_PageWindowReader(path, pages) if ok else None)
    img = MultiplexImage(path=path, channel_names=names, pixel_size_um=float("nan"),
                         levels=levels, dtype=views[0].dtype, _views=views, _handles=[tf],
                         _page_readers=readers)
    return img, px


def _channel_axis(path: Path, tf: tifffile.TiffFile, series: Any) -> Optional[str]:
    """Which stored axis holds the channels; errors for Z-stacks, time series, RGB."""
    axes, shape = series.axes, series.shape
    sizes = {a: n for a, n in zip(axes, shape) if a not in ("Y", "X")}
    big = {a: n for a, n in sizes.items() if n > 1}
    if sizes.get("Z", 1) > 1:
        raise InputError(f"{path}: has {sizes['Z']} z-planes; tibspace needs 2-D channels: "
                         "export a single plane or a max projection")
    if sizes.get("T", 1) > 1:
        raise InputError(f"{path}: has {sizes['T']} time points; tibspace needs one 2-D image "
                         "per channel: export a single time point")
    photometric = getattr(series.keyframe, "photometric", None)
    if "S" in big and int(photometric or 0) in (2, 6) and big["S"] in (3, 4):
        # RGB/YCbCr: a brightfield or rendered picture, not one plane per marker.
        raise InputError(f"{path}: is an RGB colour image (shape {tuple(shape)}); tibspace "
                         "needs one grayscale plane per marker (a multichannel "
                         "fluorescence/mass-cytometry image)")
    if len(big) > 1:
        raise InputError(f"{path}: has axes {axes} with shape {tuple(shape)}; tibspace needs "
                         "(channel, Y, X) — export one 2-D plane per channel")
    if big:
        return next(iter(big))
    # single channel: prefer an explicit channel axis of length one if present
    for a in ("C", "S", "I", "Q"):
        if a in sizes:
            return a
    return None


def _channel_names_from_file(path: Path, tf: tifffile.TiffFile, series: Any, c: int,
                             warn_unnamed: bool = True) -> list[str]:
    names: Optional[list[str]] = None
    if tf.is_ome and tf.ome_metadata:
        names = _ome_channel_names(tf.ome_metadata, c)
    if names is None and tf.is_imagej and tf.imagej_metadata:
        labels = tf.imagej_metadata.get("Labels")
        if isinstance(labels, (list, tuple)) and len(labels) >= c and all(labels[:c]):
            names = [str(x).strip() for x in labels[:c]]
    if names is None and c > 1:
        names = _page_names(tf, series, c)
    if names is None and c == 1 and series.keyframe is not None:
        # single page: a PageName, else the file name's stem
        page_name = _tag_value(series.keyframe, "PageName")
        names = [page_name] if page_name else [_stem(path)]
    if names is None:
        if warn_unnamed:
            warnings.warn(f"{path}: no channel names in the file; using channel_0.."
                          f"channel_{c - 1} (pass channel_names to name them)", stacklevel=5)
        names = [f"channel_{i}" for i in range(c)]
    return names


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", ".ome.btf", ".tiff", ".tif", ".btf"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _tag_value(page: Any, tag: str) -> Optional[str]:
    try:
        t = page.tags.get(tag)
    except Exception:
        return None
    if t is None:
        return None
    v = t.value
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    v = str(v).strip().strip("\x00")
    return v or None


def _page_names(tf: tifffile.TiffFile, series: Any, c: int) -> Optional[list[str]]:
    """Per-page channel names: PageName tag, MIBI JSON or PerkinElmer/Akoya XML."""
    pages = []
    for p in series.pages:
        if p is None:
            return None
        if not isinstance(p, tifffile.TiffPage):
            try:
                p = tf.pages[p.index]  # TiffFrame -> full page with tags
                if not isinstance(p, tifffile.TiffPage):
                    return None
            except Exception:
                return None
        pages.append(p)
        if len(pages) == c:
            break
    if len(pages) != c:
        return None
    names: list[str] = []
    for p in pages:
        n = _tag_value(p, "PageName") or _description_name(_tag_value(p, "ImageDescription"))
        if not n:
            return None
        names.append(n)
    return names


def _description_name(desc: Optional[str]) -> Optional[str]:
    if not desc:
        return None
    d = desc.strip()
    if d.startswith("{"):
        try:
            meta = json.loads(d)
        except ValueError:
            return None
        for key in ("channel.target", "channel_name", "name", "channel.mass"):
            if meta.get(key):
                return str(meta[key])
        return None
    if d.startswith("<"):
        # Akoya/PerkinElmer: <Biomarker> is the marker, <Name> the dye/filter
        for tag in ("Biomarker", "Name"):
            m = re.search(rf"<{tag}>([^<]+)</{tag}>", d)
            if m and m.group(1).strip():
                return m.group(1).strip()
    return None


def _ome_root(xml: str) -> Optional[ET.Element]:
    try:
        return ET.fromstring(xml)
    except ET.ParseError:
        return None


def _ome_pixels(xml: str) -> Optional[ET.Element]:
    root = _ome_root(xml)
    if root is None:
        return None
    return root.find("{*}Image/{*}Pixels")


def _ome_channel_names(xml: str, c: int) -> Optional[list[str]]:
    pixels = _ome_pixels(xml)
    if pixels is None:
        return None
    chans = pixels.findall("{*}Channel")
    names = [ch.get("Name") for ch in chans]
    if len(names) == c and all(n not in (None, "") for n in names):
        return [str(n).strip() for n in names]
    return None


def _pixel_size_from_file(path: Path, tf: tifffile.TiffFile, series: Any) -> Optional[float]:
    if tf.is_ome and tf.ome_metadata:
        pixels = _ome_pixels(tf.ome_metadata)
        if pixels is not None and pixels.get("PhysicalSizeX") is not None:
            return _ome_pixel_size(path, pixels)
    page = series.keyframe
    if tf.is_imagej and tf.imagej_metadata is not None:
        px = _imagej_pixel_size(path, tf.imagej_metadata, page)
        if px is not None:
            return px
    return _resolution_pixel_size(path, page)


def _ome_pixel_size(path: Path, pixels: ET.Element) -> Optional[float]:
    vals = []
    for ax in ("X", "Y"):
        raw = pixels.get(f"PhysicalSize{ax}")
        if raw is None:
            vals.append(None)
            continue
        unit = pixels.get(f"PhysicalSize{ax}Unit")
        try:
            factor = _unit_to_um(unit)
        except KeyError:
            raise InputError(f"{path}: unknown PhysicalSize{ax}Unit {unit!r} in the OME "
                             "metadata; pass --pixel-size-um") from None
        if factor is None:
            vals.append(None)
            continue
        try:
            v = float(raw) * factor
        except ValueError:
            raise InputError(f"{path}: PhysicalSize{ax}={raw!r} in the OME metadata is not a "
                             "number; pass --pixel-size-um") from None
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{path}: PhysicalSize{ax}={raw!r} in the OME metadata is not a "
                             "positive size; pass --pixel-size-um")
        vals.append(v)
    return _square(path, vals[0], vals[1])


def _square(path: Path, px: Optional[float], py: Optional[float]) -> Optional[float]:
    if px is None and py is None:
        return None
    if px is None or py is None:
        return px if px is not None else py
    if abs(px - py) > 0.01 * max(px, py):
        raise InputError(f"{path}: pixels are not square ({px:.6g} x {py:.6g} µm); tibspace "
                         "needs square pixels — resample the image to equal X/Y pixel size")
    return px


def _resolution(page: Any) -> tuple[Optional[float], Optional[float]]:
    """Pixels per unit along X and Y from the resolution tags."""
    out = []
    for tag in ("XResolution", "YResolution"):
        t = page.tags.get(tag)
        if t is None:
            out.append(None)
            continue
        v = t.value
        try:
            r = v[0] / v[1] if isinstance(v, tuple) else float(v)
        except (ZeroDivisionError, TypeError, IndexError):
            r = None
        out.append(r if r and math.isfinite(r) and r > 0 else None)
    return out[0], out[1]


def _imagej_pixel_size(path: Path, meta: dict, page: Any) -> Optional[float]:
    unit = meta.get("unit")
    if unit is None:
        return None
    try:
        factor = _unit_to_um(str(unit))
    except KeyError:
        warnings.warn(f"{path}: unknown ImageJ unit {unit!r}; ignoring the pixel size",
                      stacklevel=5)
        return None
    if factor is None:
        return None
    rx, ry = _resolution(page)
    px = factor / rx if rx else None
    py = factor / ry if ry else None
    return _square(path, px, py)


def _resolution_pixel_size(path: Path, page: Any) -> Optional[float]:
    t = page.tags.get("ResolutionUnit")
    if t is None:
        return None
    unit = int(t.value)
    factor = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
    if factor is None:
        return None
    rx, ry = _resolution(page)
    px = factor / rx if rx else None
    py = factor / ry if ry else None
    val = _square(path, px, py)
    if val is not None and val > _MAX_PLAUSIBLE_PIXEL_UM:
        # 72/96/300 dpi defaults written by generic software, not a microscope
        return None
    return val


def _open_folder(path: Path) -> tuple[MultiplexImage, Optional[float]]:
    files = sorted((p for p in path.iterdir()
                    if p.is_file() and not p.name.startswith(".")
                    and p.name.lower().endswith(_TIFF_SUFFIXES)),
                   key=lambda p: (_stem(p).lower(), _stem(p)))
    if not files:
        raise InputError(f"{path}: folder holds no .tif/.tiff files; give a folder of "
                         "single-channel TIFFs named by marker, or an OME-TIFF")
    import zarr

    handles: list[tifffile.TiffFile] = []
    zs: list[Any] = []
    pxs: list[Optional[float]] = []
    shape0: Optional[tuple[int, int]] = None
    try:
        for f in files:
            tf = _open_tifffile(f)
            handles.append(tf)
            series = tf.series[0]
            cax = _channel_axis(f, tf, series)
            sizes = dict(zip(series.axes, series.shape))
            if cax is not None and sizes[cax] > 1:
                raise InputError(f"{f}: has {sizes[cax]} channels; a folder input needs one "
                                 "single-channel TIFF per marker")
            _check_data_within_file(f, tf, [p for p in series.pages if p is not None])
            yx = (sizes["Y"], sizes["X"])
            if shape0 is None:
                shape0 = yx
            elif yx != shape0:
                raise InputError(f"{f}: is {yx[0]}x{yx[1]} pixels but {files[0].name} is "
                                 f"{shape0[0]}x{shape0[1]}; all channels of a folder must "
                                 "have the same size")
            try:
                z = zarr.open(series.aszarr(level=0), mode="r")
            except Exception as exc:
                raise InputError(f"{f}: cannot read this TIFF's pixel layout "
                                 f"({type(exc).__name__}: {_first_line(exc)})") from None
            # view as 2-D
            zs.append(_ZarrView(f, z, series.axes, cax))
            pxs.append(_pixel_size_from_file(f, tf, series))
    except BaseException:
        for h in handles:
            h.close()
        raise
    view = _StackView(files, [_Plane(v) for v in zs])
    px_known = [p for p in pxs if p is not None]
    px = px_known[0] if px_known else None
    if px_known and any(abs(p - px) > 0.01 * px for p in px_known):
        raise InputError(f"{path}: the channel files record different pixel sizes "
                         f"({min(px_known):.6g}..{max(px_known):.6g} µm); pass "
                         "--pixel-size-um")
    token = uuid.uuid4().hex[:12]
    arr = _as_dask(view, f"tibspace-{token}-L0")
    img = MultiplexImage(path=path, channel_names=[_stem(f) for f in files],
                         pixel_size_um=float("nan"), levels=[arr], dtype=view.dtype,
                         _views=[view], _handles=handles)
    return img, px


class _Plane:
    """2-D view of a single-channel :class:`_ZarrView` (for :class:`_StackView`)."""

    def __init__(self, view: _ZarrView):
        self._v = view
        self.shape = view.shape[1:]
        self.dtype = view.dtype
        self.chunks = view.native_chunks[1:]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return self._v[(0,) + tuple(key)]


# --------------------------------------------------------------------------
# Sanity checks
# --------------------------------------------------------------------------


def check_not_empty(img: MultiplexImage, channels: Optional[Sequence[int]] = None) -> None:
    """Raise :class:`InputError` when every pixel (of ``channels``) is 0.

    Reads the coarsest pyramid level block by block, starting in the centre,
    and stops at the first non-zero block, so a normal image costs one block.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_ome_tiff(d / "z.ome.tif", np.zeros((2, 30, 30), np.uint8), ["a", "b"], 1.0)
    >>> check_not_empty(open_image(d / "z.ome.tif"))
    Traceback (most recent call last):
    ...
    tibspace.errors.InputError: ...every pixel is 0...
    """
    # Coarsest level first (cheap); a dim speck can average away there, so an
    # all-zero coarse level is confirmed on full resolution before failing.
    for lvl in dict.fromkeys((len(img.levels) - 1, 0)):
        arr = img.levels[lvl]
        if channels is not None:
            arr = arr[list(channels)]
        blocks = list(np.ndindex(*arr.numblocks))
        centre = np.array(arr.numblocks) / 2.0
        blocks.sort(key=lambda b: float(np.sum(((np.array(b) + 0.5) - centre)[1:] ** 2)))
        for b in blocks:
            if np.any(np.asarray(arr.blocks[b].compute(scheduler="synchronous"))):
                return
    which = "" if channels is None else " of channels " + ", ".join(
        img.channel_names[i] for i in channels)
    raise InputError(f"{img.path}: every pixel{which} is 0 — the image is empty; check the "
                     "export (wrong series/plane?)")


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _as_cyx(data: Any, what: str = "data") -> Any:
    if isinstance(data, (np.ndarray, da.Array)):
        pass
    elif hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "chunks"):
        data = da.from_array(data, chunks=data.chunks)  # zarr & co: stay lazy
    else:
        data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError(f"{what} must be (C, Y, X) or (Y, X), got shape {tuple(data.shape)}")
    if 0 in data.shape:
        raise InputError(f"{what} is empty (shape {tuple(data.shape)})")
    return data


def _halve(band: np.ndarray, method: str) -> np.ndarray:
    """Halve a 2-D band (floor of odd sizes): 2x2 block mean or nearest."""
    h, w = band.shape[0] // 2, band.shape[1] // 2
    if method == "nearest":
        return band[: 2 * h : 2, : 2 * w : 2]
    # float32 sums of four 8/16-bit values are exact; wider types need float64
    small_int = np.issubdtype(band.dtype, np.integer) and band.dtype.itemsize <= 2
    a = band[: 2 * h, : 2 * w].astype(np.float32 if small_int else np.float64)
    out = a[0::2, 0::2] + a[1::2, 0::2]
    out += a[0::2, 1::2]
    out += a[1::2, 1::2]
    out *= 0.25
    if np.issubdtype(band.dtype, np.integer):
        out = np.round(out)  # round half to even, like skimage + numpy
    return out.astype(band.dtype)


def _n_auto_levels(ny: int, nx: int, min_size: int = 1024) -> int:
    n = 1
    while max(ny, nx) >= min_size and min(ny, nx) >= 2:
        ny, nx = ny // 2, nx // 2
        n += 1
    return n


def _band_rows(arr: Any, tile: int, max_bytes: int = 256 * 2**20) -> int:
    """Rows computed at once: a multiple of ``tile`` covering whole dask chunks
    (so no source chunk is computed twice), within ``max_bytes``."""
    rows = tile
    if isinstance(arr, da.Array):
        ch = max(arr.chunks[1])
        rows = tile * max(1, math.ceil(ch / tile))
    row_bytes = int(arr.shape[2]) * np.dtype(arr.dtype).itemsize
    while rows > tile and rows * row_bytes > max_bytes:
        rows -= tile
    return rows


def _tile_iter(arr: Any, tile: int, progress: Any, step: str, done0: list[int],
               total: int, sink: Any = None, method: str = "mean") -> Iterator[np.ndarray]:
    """Yield (tile, tile) blocks of a (C, Y, X) array in TIFF tile order.

    The source is read one channel band (a few tile rows) at a time, so peak
    memory is one band, never the whole image. Each band is also halved into
    ``sink`` (the next pyramid level), so the source is read exactly once.
    """
    c, ny, nx = arr.shape
    is_dask = isinstance(arr, da.Array)
    rows = _band_rows(arr, tile)
    for ci in range(c):
        for y0 in range(0, ny, rows):
            band = arr[ci, y0:y0 + rows, :]
            band = np.asarray(band.compute() if is_dask else band)
            if sink is not None:
                small = _halve(band, method)
                if small.size:
                    sink[ci, y0 // 2: y0 // 2 + small.shape[0], :] = small
            for y in range(0, band.shape[0], tile):
                # reported before yielding: tifffile stops pulling after the last tile
                done0[0] += 1
                report(progress, step, done0[0], total)
                for x in range(0, nx, tile):
                    block = band[y:y + tile, x:x + tile]
                    if block.shape != (tile, tile):
                        pad = np.zeros((tile, tile), dtype=band.dtype)
                        pad[: block.shape[0], : block.shape[1]] = block
                        block = pad
                    yield np.ascontiguousarray(block)


def write_ome_tiff(path: str | Path, data: Any, channel_names: Sequence[str],
                   pixel_size_um: float, *, tile: int = 512,
                   pyramid_levels: Optional[int] = None, compression: Optional[str] = "zlib",
                   downsample: str = "mean", progress: Any = None) -> None:
    """Write a tiled, pyramidal (SubIFD) OME-TIFF with channel names and pixel size.

    Parameters
    ----------
    path : str or Path
        Output file (``.ome.tif``); written atomically.
    data : numpy.ndarray or dask.array.Array
        ``(C, Y, X)`` or ``(Y, X)``. A dask array is never fully loaded: it is
        computed one channel band of ``tile`` rows at a time.
    channel_names : list of str
        One name per channel.
    pixel_size_um : float
        µm per pixel (written as OME ``PhysicalSizeX/Y`` in µm and as TIFF
        resolution in pixels per cm).
    tile : int
        Tile side in pixels (multiple of 16).
    pyramid_levels : int, optional
        Total number of levels including full resolution; default halves
        until the largest side is below 1024 px.
    compression : str or None
        tifffile compression (``"zlib"``, ``"zstd"``, ``None``...).
    downsample : {"mean", "nearest"}
        How reduced levels are made (use ``"nearest"`` for labels).
    progress : callable, optional
        ``progress(step, done, total)``.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> data = np.random.default_rng(0).integers(0, 255, (2, 2100, 1500), dtype=np.uint8)
    >>> write_ome_tiff(d / "p.ome.tif", data, ["DAPI", "CD8"], 0.5)
    >>> [lvl.shape for lvl in open_image(d / "p.ome.tif").levels]
    [(2, 2100, 1500), (2, 1050, 750), (2, 525, 375)]
    """
    path = Path(path)
    data = _as_cyx(data)
    c, ny, nx = (int(s) for s in data.shape)
    names = [str(n) for n in channel_names]
    if len(names) != c:
        raise InputError(f"{path}: {len(names)} channel names for {c} channels")
    try:
        px = float(pixel_size_um)
    except (TypeError, ValueError):
        raise InputError(f"{path}: pixel_size_um must be a number, got {pixel_size_um!r}"
                         ) from None
    if not (math.isfinite(px) and px > 0):
        raise InputError(f"{path}: pixel_size_um must be positive, got {pixel_size_um!r}")
    if tile % 16 or tile <= 0:
        raise InputError(f"tile must be a positive multiple of 16, got {tile}")
    if downsample not in ("mean", "nearest"):
        raise InputError(f"downsample must be 'mean' or 'nearest', got {downsample!r}")
    dtype = np.dtype(data.dtype)
    if dtype == np.bool_:
        data = data.astype(np.uint8)
        dtype = np.dtype(np.uint8)
    n_levels = _n_auto_levels(ny, nx) if pyramid_levels is None else int(pyramid_levels)
    n_levels = max(1, min(n_levels, _n_auto_levels(ny, nx, min_size=2 * 16)))

    shapes = [(c, ny, nx)]
    for _ in range(1, n_levels):
        shapes.append((c, shapes[-1][1] // 2, shapes[-1][2] // 2))
    nbytes = sum(int(np.prod(sh)) for sh in shapes) * dtype.itemsize
    bigtiff = nbytes > 2**31 - 2**25
    total = sum(sh[0] * math.ceil(sh[1] / tile) for sh in shapes)
    done = [0]
    res = (1e4 / px, 1e4 / px)
    metadata = {
        "axes": "CYX",
        "Channel": {"Name": names},
        "PhysicalSizeX": px, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": px, "PhysicalSizeYUnit": "µm",
    }
    # Reduced levels are built while the level above is written: in memory
    # for numpy input (a quarter of its size), in a temporary zarr store next
    # to the output for dask input (so a whole slide never sits in memory).
    in_memory = isinstance(data, np.ndarray)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = (None if in_memory or n_levels == 1 else
               Path(tempfile.mkdtemp(prefix=".tibspace-pyramid-", dir=path.parent)))
    try:
        with atomic_path(path) as tmp:
            with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tw:
                src = data
                for lvl, sh in enumerate(shapes):
                    sink = None
                    if lvl + 1 < n_levels:
                        nsh = shapes[lvl + 1]
                        if in_memory:
                            sink = np.zeros(nsh, dtype)
                        else:
                            import zarr

                            sink = zarr.create_array(
                                store=str(scratch / f"L{lvl + 1}"), shape=nsh, dtype=dtype,
                                chunks=(1, max(1, min(tile // 2, nsh[1])), max(1, nsh[2])),
                                fill_value=0)
                    kwargs: dict[str, Any] = dict(
                        shape=sh, dtype=dtype, tile=(tile, tile), compression=compression,
                        photometric="minisblack",
                        resolution=(res[0] / 2**lvl, res[1] / 2**lvl),
                        resolutionunit="CENTIMETER",
                    )
                    if lvl == 0:
                        kwargs.update(subifds=n_levels - 1, metadata=metadata)
                    else:
                        kwargs.update(subfiletype=1, metadata=None)
                    tw.write(_tile_iter(src, tile, progress, "write OME-TIFF", done, total,
                                        sink=sink, method=downsample), **kwargs)
                    src = sink
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def write_labels_ome_tiff(path: str | Path, labels: Any, pixel_size_um: float, *,
                          tile: int = 512, progress: Any = None) -> None:
    """Write a ``uint32`` label image as a tiled OME-TIFF channel ``"cell_labels"``.

    Reduced levels use nearest-neighbour sampling so label values stay exact.

    Parameters
    ----------
    labels : numpy.ndarray, zarr array or dask.array.Array
        ``(Y, X)`` non-negative integer labels.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> lab = np.zeros((50, 60), np.uint32); lab[10:20, 5:9] = 7
    >>> write_labels_ome_tiff(d / "l.ome.tif", lab, 0.5)
    >>> img = open_image(d / "l.ome.tif")
    >>> img.channel_names, bool((img.data[0].compute() == lab).all())
    (['cell_labels'], True)
    """
    path = Path(path)
    if not isinstance(labels, (np.ndarray, da.Array)):
        if hasattr(labels, "chunks") and hasattr(labels, "shape"):
            labels = da.from_array(labels, chunks=labels.chunks)  # zarr
        else:
            labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"{path}: labels must be a 2-D (Y, X) array, got shape "
                         f"{tuple(labels.shape)}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise InputError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if isinstance(labels, np.ndarray) and labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= 2**32:
            raise InputError(f"{path}: label values must lie in 0..2**32-1, got {lo}..{hi}")
    labels = labels.astype(np.uint32)
    write_ome_tiff(path, labels, ["cell_labels"], pixel_size_um, tile=tile,
                   downsample="nearest", progress=progress)
