"""Writing tiled, pyramidal OME-TIFF images and label masks.

Reduced levels are SubIFDs halved by 2x2 mean (images) or nearest sampling
(labels); the source is read one channel band at a time, so a dask image is
never held in memory whole. Pixel size is written as OME ``PhysicalSizeX/Y``
in µm and as TIFF resolution in pixels per cm. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import dask.array as da
import numpy as np
import tifffile
import uuid

from tibspace.errors import InputError
from tibspace.io.files import atomic_path
from tibspace.progress import report


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
    >>> from tibspace.io import open_image
    >>> data = np.random.default_rng(0).integers(0, 255, (2, 2100, 1500), dtype=np.uint8)
    >>> write_ome_tiff(d / "p.ome.tif", data, ["DAPI", "CD8"], 0.5)
    >>> [lvl.shape for lvl in open_image(d / "p.ome.tif").levels]
    [(2, 2100, 1500), (2, 1050, 750), (2, 525, 375)]
    """
    path = Path(path)
    data = _as_cyx(data)
    names, px = _check_write_args(path, data, channel_names, pixel_size_um, tile, downsample)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    shapes = _level_shapes(data.shape, pyramid_levels)
    metadata = {
        "axes": "CYX",
        "Channel": {"Name": names},
        "PhysicalSizeX": px, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": px, "PhysicalSizeYUnit": "µm",
    }
    metadata["UUID"] = _content_uuid(data, metadata, path.name)
    nbytes = sum(int(np.prod(sh)) for sh in shapes) * np.dtype(data.dtype).itemsize
    # Reduced levels are built while the level above is written: in memory
    # for numpy input (a quarter of its size), in a temporary zarr store next
    # to the output for dask input (so a whole slide never sits in memory).
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = (None if isinstance(data, np.ndarray) or len(shapes) == 1 else
               Path(tempfile.mkdtemp(prefix=".tibspace-pyramid-", dir=path.parent)))
    try:
        with atomic_path(path) as tmp:
            with tifffile.TiffWriter(tmp, bigtiff=nbytes > 2**31 - 2**25, ome=True) as tw:
                _write_levels(tw, data, shapes, metadata, px, tile=tile,
                              compression=compression, downsample=downsample,
                              scratch=scratch, progress=progress)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _check_write_args(path: Path, data: Any, channel_names: Sequence[str], pixel_size_um: Any,
                      tile: int, downsample: str) -> tuple[list[str], float]:
    """(channel names as str, pixel size as float) after checking every argument."""
    names = [str(n) for n in channel_names]
    if len(names) != int(data.shape[0]):
        raise InputError(f"{path}: {len(names)} channel names for {int(data.shape[0])} channels")
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
    return names, px


def _level_shapes(shape: Sequence[int], pyramid_levels: Optional[int]) -> list[tuple[int, int, int]]:
    """``(C, Y, X)`` of every pyramid level, each half the one above (floor)."""
    c, ny, nx = (int(s) for s in shape)
    n_levels = _n_auto_levels(ny, nx) if pyramid_levels is None else int(pyramid_levels)
    n_levels = max(1, min(n_levels, _n_auto_levels(ny, nx, min_size=2 * 16)))
    shapes = [(c, ny, nx)]
    for _ in range(1, n_levels):
        shapes.append((c, shapes[-1][1] // 2, shapes[-1][2] // 2))
    return shapes


def _level_sink(shape: tuple[int, int, int], dtype: np.dtype, tile: int,
                scratch: Optional[Path], lvl: int) -> Any:
    """Array receiving the next level: numpy in memory, else a zarr store in ``scratch``."""
    if scratch is None:
        return np.zeros(shape, dtype)
    import zarr

    return zarr.create_array(
        store=str(scratch / f"L{lvl}"), shape=shape, dtype=dtype,
        chunks=(1, max(1, min(tile // 2, shape[1])), max(1, shape[2])), fill_value=0)


def _content_uuid(data: Any, metadata: dict, name: str) -> str:
    """OME UUID derived from the content (uuid5 over a SHA-256), so reruns are byte-identical.

    numpy input hashes the pixel bytes; dask input (whole slides) hashes shape,
    dtype, metadata and file name, so the data is not read twice.
    """
    h = hashlib.sha256()
    h.update(json.dumps(metadata, sort_keys=True, default=str).encode())
    h.update(f"{name}|{data.shape}|{data.dtype}".encode())
    if isinstance(data, np.ndarray):
        h.update(np.ascontiguousarray(data).tobytes())
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "tibspace:" + h.hexdigest()))


def _write_levels(tw: tifffile.TiffWriter, data: Any, shapes: list[tuple[int, int, int]],
                  metadata: dict, px: float, *, tile: int, compression: Optional[str],
                  downsample: str, scratch: Optional[Path], progress: Any) -> None:
    """Write level 0 with its OME metadata, then each reduced level as a SubIFD."""
    dtype = np.dtype(data.dtype)
    n_levels = len(shapes)
    total = sum(sh[0] * math.ceil(sh[1] / tile) for sh in shapes)
    done = [0]
    res = 1e4 / px  # pixels per cm
    src = data
    for lvl, sh in enumerate(shapes):
        sink = (_level_sink(shapes[lvl + 1], dtype, tile, scratch, lvl + 1)
                if lvl + 1 < n_levels else None)
        kwargs: dict[str, Any] = dict(
            shape=sh, dtype=dtype, tile=(tile, tile), compression=compression,
            photometric="minisblack", resolution=(res / 2**lvl, res / 2**lvl),
            resolutionunit="CENTIMETER",
        )
        if lvl == 0:
            kwargs.update(subifds=n_levels - 1, metadata=metadata)
        else:
            kwargs.update(subfiletype=1, metadata=None)
        tw.write(_tile_iter(src, tile, progress, "write OME-TIFF", done, total,
                            sink=sink, method=downsample), **kwargs)
        src = sink

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
    >>> from tibspace.io import open_image
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
