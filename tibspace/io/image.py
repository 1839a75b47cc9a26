"""The lazily read multiplex image: channels, pixel size (µm) and pyramid levels.

:class:`MultiplexImage` holds ``(C, Y, X)`` dask arrays whose pixels stay on
disk until a window is read; :func:`check_not_empty` refuses an all-zero image
at the cost of about one block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import dask.array as da
import numpy as np

from tibspace.errors import InputError
from tibspace.io.channels import match_vendor_name, normalise_name as normalise_channel_name
from tibspace.io.views import _fill_nonfinite


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
    >>> from tibspace.io import open_image, write_ome_tiff
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
    # one line per problem found in the pixels (non-finite values), for metrics.json
    warnings: list[str] = field(default_factory=list, repr=False, compare=False)

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
        return _find_channel(self.path, self.channel_names, name)

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
            ``(c, h, w)`` array; NaN / ±inf pixels of float images read as the
            lowest finite value of their channel in the window (``levels`` too).
        """
        return _fill_nonfinite(self._read_raw(channels, y0, y1, x0, x1, level))

    def _read_raw(self, channels: Optional[Sequence[int]], y0: int, y1: int, x0: int,
                  x1: int, level: int = 0) -> np.ndarray:
        """:meth:`read_region` as stored (non-finite values kept)."""
        c, ny, nx = (int(s) for s in self.levels[level].shape)
        y0, y1, x0, x1 = _clip_window(self.path, (ny, nx), y0, y1, x0, x1)
        ckey = _channel_key(self.path, c, channels)
        fast = self._page_readers[level] if level < len(self._page_readers) else None
        if fast is not None:
            chans = range(c) if channels is None else [int(i) % c for i in ckey]
            return fast.read(list(chans), y0, y1, x0, x1)
        view = self._views[level] if self._views else None
        if view is None:  # (in-memory images: the dask array is the data)
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


def _find_channel(path: Path, names: Sequence[str], name: Any) -> int:
    """Index of ``name`` in ``names``: an in-range int, the exact name, else the normalised one."""
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if 0 <= int(name) < len(names):
            return int(name)
    exact = [i for i, c in enumerate(names) if c == name]
    if exact:
        return exact[0]
    key = normalise_channel_name(name)
    hits = [i for i, c in enumerate(names) if normalise_channel_name(c) == key]
    if hits:
        return hits[0]
    vendor = match_vendor_name(name, names, path)
    if vendor is not None:
        return vendor
    raise InputError(f"{path}: no channel named {name!r}; it has: {', '.join(names)}")


def _clip_window(path: Path, shape_yx: tuple[int, int], y0: int, y1: int, x0: int,
                 x1: int) -> tuple[int, int, int, int]:
    """The window clipped to the image; an InputError when nothing is left."""
    ny, nx = shape_yx
    y0, y1 = max(int(y0), 0), min(int(y1), ny)
    x0, x1 = max(int(x0), 0), min(int(x1), nx)
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"{path}: empty window y {y0}:{y1}, x {x0}:{x1} in a "
                         f"{ny}x{nx} image")
    return y0, y1, x0, x1


def _channel_key(path: Path, c: int, channels: Optional[Sequence[int]]) -> Any:
    """``slice(None)`` for all channels, else the checked index array."""
    if channels is None:
        return slice(None)
    ckey = np.asarray(list(channels), dtype=np.intp)
    if ckey.size and (ckey.min() < -c or ckey.max() >= c):
        raise InputError(f"{path}: channel index out of range 0..{c - 1}: {list(channels)}")
    return ckey



def check_not_empty(img: MultiplexImage, channels: Optional[Sequence[int]] = None) -> None:
    """Raise :class:`InputError` when every pixel (of ``channels``) is 0.

    Reads the coarsest pyramid level block by block, starting in the centre,
    and stops at the first non-zero block, so a normal image costs one block.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from tibspace.io import open_image, write_ome_tiff
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


# A channel with more non-finite pixels than this fraction is refused when a run needs it.
MOSTLY_NONFINITE = 0.5


def nonfinite_counts(img: MultiplexImage, window_px: int = 2048) -> dict[str, int]:
    """NaN / ±inf pixels per channel of a float image (``{}`` for integer images).

    Reads every full-resolution pixel once, in ``window_px``² windows (bounded
    memory); the pixels as stored, before :meth:`MultiplexImage.read_region`
    sets them to their channel's lowest finite value.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from tibspace.io import open_image, write_ome_tiff
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> a = np.ones((2, 30, 30), np.float32); a[1, 3, 4] = np.nan
    >>> write_ome_tiff(d / "f.ome.tif", a, ["DAPI", "CD8"], 1.0)
    >>> nonfinite_counts(open_image(d / "f.ome.tif"))
    {'DAPI': 0, 'CD8': 1}
    """
    if np.dtype(img.dtype).kind != "f":
        return {}
    _, ny, nx = img.shape
    counts = {}
    for c, name in enumerate(img.channel_names):
        n = 0
        for y0 in range(0, ny, window_px):
            for x0 in range(0, nx, window_px):
                raw = img._read_raw([c], y0, min(y0 + window_px, ny), x0, min(x0 + window_px, nx))
                n += int(raw.size - np.count_nonzero(np.isfinite(raw)))
        counts[name] = n
    return counts


def check_finite(img: MultiplexImage, required: Sequence[int] = ()) -> list[str]:
    """Warnings (one line per channel) for non-finite pixels; an error for a ``required``
    channel that is mostly non-finite (more than :data:`MOSTLY_NONFINITE` of its pixels).

    The lines are also appended to ``img.warnings`` (they go to metrics.json).
    """
    counts = nonfinite_counts(img)
    total = int(img.shape[1]) * int(img.shape[2])
    lines = []
    for c, name in enumerate(img.channel_names):
        n = counts.get(name, 0)
        if not n:
            continue
        if c in set(required) and n > MOSTLY_NONFINITE * total:
            raise InputError(f"{img.path}: channel {name} has {n} of {total} pixels NaN or infinite "
                             f"({n / total:.0%}); re-export the image with finite values")
        lines.append(f"{img.path.name}: channel {name} has {n} NaN/infinite pixel{'s' if n > 1 else ''} "
                     f"of {total}; they read as the lowest finite value around them (background)")
    img.warnings.extend(lines)
    return lines
