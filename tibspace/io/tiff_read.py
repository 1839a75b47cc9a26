"""Opening multiplex images lazily: OME-TIFF, multi-page TIFF, folders of TIFFs.

Supported inputs
----------------
1. OME-TIFF (channel names from ``Channel@Name``, pixel size from
   ``PhysicalSizeX/Y`` converted to µm), tiled or striped, pyramidal via
   SubIFDs or series levels.
2. Plain multi-page TIFF whose pages carry names: MIBI-style ``PageName``
   tags, ImageJ hyperstacks with ``Labels``, or per-page descriptions
   (PerkinElmer/Akoya XML ``<Name>``, MIBI JSON ``channel.target``).
3. A folder of single-channel TIFFs, one per marker, named by the marker.
4. OME-Zarr images and SpatialData stores (:mod:`tibspace.io.zarr_image`).

A file is opened with :mod:`tifffile`, exposed as a zarr store and wrapped as
dask arrays shaped ``(C, Y, X)``, one per pyramid level. Every problem a user
can cause is an :class:`~tibspace.errors.InputError` with a one-line message
naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import dask.array as da
import numpy as np
import tifffile

from tibspace.errors import InputError
from tibspace.io.image import MultiplexImage
from tibspace.io.limits import check_declared_pixels, check_max_pixels_value, check_memory
from tibspace.io.tiff_meta import (_channel_names_from_file, _check_ome_against_ifds, _make_unique,
                                   _pixel_size_from_file,
                                   _resolve_pixel_size, _stem)
from tibspace.io.views import (_PageWindowReader, _Plane, _StackView, _ZarrView, _as_dask, _dask_chunks,
                               _first_line)
from tibspace.io.zarr_image import ELEMENT_SEP, is_zarr, open_zarr, split_element


_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_image(path: str | Path, pixel_size_um: Optional[float] = None,
               channel_names: Optional[Sequence[str]] = None,
               max_pixels: Optional[int] = None) -> MultiplexImage:
    """Open a multiplex image lazily.

    Parameters
    ----------
    path : str or Path
        OME-TIFF, multi-page TIFF with named pages, ImageJ hyperstack, a
        folder of single-channel TIFFs named by marker, an OME-Zarr image or a
        SpatialData store (``slide.zarr::element`` names one of several images;
        :mod:`tibspace.io.zarr_image`).
    pixel_size_um : float, optional
        µm per pixel; overrides (with a warning if different) or supplies the
        file's own pixel size.
    channel_names : list of str, optional
        Channel names overriding those in the file (same length).
    max_pixels : int, optional
        Refuse a file whose planes declare more pixels (Y·X) than this, before
        anything is read (:mod:`tibspace.io.limits`; :func:`tibspace.run_image`
        passes its default 2·10¹⁰). ``None``: no declared-size limit (the image
        is opened lazily either way). A strip or tile too large to decode in
        the memory available is always refused.

    Returns
    -------
    MultiplexImage

    Raises
    ------
    InputError
        Missing path, not a TIFF, corrupt file, no pixel size anywhere,
        anisotropic pixels, Z-stacks/time series/RGB, mismatching names,
        planes larger than ``max_pixels``, strips/tiles larger than memory.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> from tibspace.io import write_ome_tiff
    >>> write_ome_tiff(d / "a.ome.tif", np.ones((3, 40, 50), np.uint8),
    ...                ["DAPI", "CD3", "CD8"], 0.65)
    >>> img = open_image(d / "a.ome.tif")
    >>> img.n_channels, img.pixel_size_um, img.data.shape
    (3, 0.65, (3, 40, 50))
    """
    path, element = split_element(Path(path).expanduser())
    max_pixels = check_max_pixels_value(max_pixels)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if is_zarr(path):
        img, file_px = open_zarr(path, element)
    elif element is not None:
        raise InputError(f"{path}: '{ELEMENT_SEP}{element}' names an image element of a SpatialData / "
                         "OME-Zarr store, and this is not one")
    elif path.is_dir():
        img, file_px = _open_folder(path, max_pixels)
    else:
        img, file_px = _open_file(path, warn_unnamed=channel_names is None, max_pixels=max_pixels)
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


def _open_file(path: Path, warn_unnamed: bool = True, max_pixels: Optional[int] = None
               ) -> tuple[MultiplexImage, Optional[float]]:
    tf = _open_tifffile(path)
    try:
        return _open_series(path, tf, warn_unnamed, max_pixels)
    except BaseException:
        tf.close()
        raise


def _check_declared_size(path: Path, series: Any, cax: Optional[str], max_pixels: Optional[int]) -> None:
    """Refuse, from the header alone, planes over ``max_pixels`` and strips/tiles over memory."""
    sizes = dict(zip(series.axes, series.shape))
    if "Y" not in sizes or "X" not in sizes:
        return  # reported by the callers
    ny, nx = int(sizes["Y"]), int(sizes["X"])
    check_declared_pixels(path, ny, nx, int(sizes[cax]) if cax else 1, max_pixels)
    key = series.keyframe
    if key is None:
        return
    try:
        item = np.dtype(key.dtype).itemsize * int(key.samplesperpixel or 1)
        seg = ((int(key.tilelength), int(key.tilewidth)) if key.is_tiled
               else (int(min(key.rowsperstrip or ny, ny)), nx))
    except Exception:  # noqa: BLE001 - an unusual layout: tifffile reports it on reading
        return
    # a strip/tile is decoded whole, and a dask block (_dask_chunks) holds a few of them;
    # decoding holds the compressed and the decoded copy: twice the block
    _, by, bx = _dask_chunks((1,) + seg, (1, ny, nx))
    kind = "tiles" if key.is_tiled else "strips"
    check_memory(path, f"a {ny}×{nx} px plane stored in {kind} of {seg[0]}×{seg[1]} px",
                 2.0 * item * max(seg[0] * seg[1], by * bx),
                 "re-save it tiled (e.g. bfconvert -tilex 1024 -tiley 1024) or use a machine with more memory")


def _open_series(path: Path, tf: tifffile.TiffFile, warn_unnamed: bool = True,
                 max_pixels: Optional[int] = None) -> tuple[MultiplexImage, Optional[float]]:
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
    _check_declared_size(path, series, cax, max_pixels)

    level0_pages = [p for p in series.pages if p is not None]
    _check_data_within_file(path, tf, level0_pages)
    _check_ome_against_ifds(path, tf, series, level0_pages)

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


def _open_folder(path: Path, max_pixels: Optional[int] = None) -> tuple[MultiplexImage, Optional[float]]:
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
            _check_declared_size(f, series, cax, max_pixels)
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
