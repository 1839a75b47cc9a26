"""Read cell / nucleus label masks made by other segmenters (bring your own masks).

Layouts (detected from the file name, then content; ``fmt`` overrides):
``deepcell`` (``*_feature_0.tif`` whole cell / ``*_feature_1.tif`` nuclear, ``whole_cell.tif`` /
``nuclear.tif``, a 2-channel [whole-cell, nuclear] array, (1, H, W, 2) outputs), ``cellpose``
(``*_seg.npy`` dict with ``masks``; ``*_cp_masks.tif`` / ``*_masks.tif``), ``stardist`` /
``qupath`` / ``tiff`` (a 2-D integer label TIFF), ``inform`` (``*_binary_seg_maps.tif``: the page
whose description says ``Nucleus`` holds nucleus labels), ``mcmicro`` (``segmentation/<method>/
cell.ome.tif`` / ``nuclei.ome.tif``), ``steinbock`` (``masks/<img>.tiff``). A folder resolves to
the file matching the image name. Labels are 2-D int32, 0 = background, relabelled 1..n; the
original ids are returned so a cell table can carry them (``label_id``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tibspace.errors import InputError
from tibspace.io.safe_npy import load_seg_npy

FORMATS = ("auto", "deepcell", "cellpose", "stardist", "qupath", "inform", "mcmicro", "steinbock", "tiff")


def detect_label_format(path: Any) -> str:
    """Name of the layout of a label file from its name."""
    name = Path(path).name.lower()
    if name.endswith("_seg.npy"):
        return "cellpose"
    if "binary_seg_maps" in name:
        return "inform"
    if "_feature_" in name or name.startswith(("whole_cell", "nuclear")):
        return "deepcell"
    if name.endswith(("_cp_masks.tif", "_cp_masks.tiff", "_masks.tif", "_masks.tiff")):
        return "cellpose"
    if "segmentation" in Path(path).parts:
        return "mcmicro"
    if Path(path).parent.name == "masks":
        return "steinbock"
    return "tiff"


def resolve_label_path(path: Any, image_name: str, *, nuclei: bool = False) -> Path:
    """A label file from a file or a run folder (MCMICRO ``segmentation/``, steinbock ``masks/``)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: label mask not found")
    if p.is_file():
        return p
    stem = image_name.split(".")[0]
    want = ("nuclei", "nucleus", "nuclear") if nuclei else ("cell", "whole_cell")
    cands = sorted(q for q in p.rglob("*") if q.suffix.lower() in (".tif", ".tiff", ".npy") and q.is_file())
    for q in cands:
        base = q.name.split(".")[0].lower()
        if base in want and (stem in str(q.relative_to(p)) or len([c for c in cands if c.name == q.name]) == 1):
            return q
    for q in cands:
        if q.name.split(".")[0] == stem and q.parent.name == "masks":
            return q
    raise InputError(f"{p}: no {'nucleus' if nuclei else 'cell'} mask for image {image_name!r} in this folder")


def _tiff_pages(path: Path, shape: Optional[tuple[int, int]] = None
                ) -> tuple[list[np.ndarray], list[str], Optional[float]]:
    """Pages (inForm) or the first series of a label TIFF, and its pixel size in µm.

    The declared plane size is checked against ``shape`` (the image's) and against
    the memory at hand before any pixel is decoded.
    """
    import tifffile

    from tibspace.io.tiff_meta import _pixel_size_from_file

    with tifffile.TiffFile(path) as tf:
        desc = [str(pg.description or "") for pg in tf.pages]
        inform = any("<segmentationimage>" in d.lower() for d in desc)
        series = tf.series[0]
        _check_declared(path, series, shape, len(tf.pages) if inform else 1)
        if inform:
            pages = [pg.asarray() for pg in tf.pages]  # inForm: one page per compartment
        else:
            pages = [series.asarray()]  # level 0 of a pyramid / the whole stack
        px = _pixel_size_from_file(path, tf, series)
    return pages, desc, px


def _check_declared(path: Path, series: Any, shape: Optional[tuple[int, int]], n_planes: int) -> None:
    """Refuse from the header a mask whose planes are not the image's shape, or too big to read."""
    from tibspace.io.limits import check_memory

    sizes = dict(zip(series.axes, series.shape))
    ny, nx = int(sizes.get("Y", 0)), int(sizes.get("X", 0))
    if not (ny and nx):
        return
    if shape is not None and (ny, nx) != tuple(shape):
        raise InputError(f"{path}: label shape {ny}x{nx} does not match image {shape[0]}x{shape[1]}")
    n_values = int(np.prod(series.shape)) * max(n_planes, 1)
    # decoded labels + int64 copy + np.unique's sort and inverse (int64) + the int32 result
    check_memory(path, f"a {ny}×{nx} px label mask", n_values * (np.dtype(series.dtype).itemsize + 28),
                 "give a label mask of the image's own size")


def _sniff(path: Path) -> str:
    """``inform`` when the pages carry inForm SegmentationImage descriptions."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if any("<segmentationimage>" in str(pg.description or "").lower() for pg in tf.pages[:4]):
                return "inform"
    except Exception:  # noqa: BLE001 - unreadable: reported by _raw
        pass
    return "tiff"


def _raw(path: Path, fmt: str, nuclei: bool, shape: Optional[tuple[int, int]] = None
         ) -> tuple[np.ndarray, Optional[float]]:
    if path.suffix.lower() == ".npy":
        d = load_seg_npy(path)
        try:
            return np.asarray(d["masks"] if isinstance(d, dict) else d), None
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: expected a Cellpose _seg.npy dict with 'masks' ({e})") from None
    try:
        pages, desc, px = _tiff_pages(path, shape)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not a readable label TIFF ({e})") from None
    if fmt == "inform":
        key = "<compartmenttype>" + ("nucleus" if nuclei else "membrane")
        for a, d in zip(pages, desc):
            if key in d.lower().replace(" ", ""):
                return a, px
        raise InputError(f"{path}: inForm seg map has no {'Nucleus' if nuclei else 'Membrane'} page")
    arr = np.squeeze(pages[0])
    if fmt == "deepcell" and arr.ndim == 3:
        ch = int(nuclei)
        arr = arr[..., ch] if arr.shape[-1] == 2 else arr[ch]
    return arr, px


def resolve_format(path: Path, fmt: str) -> str:
    """The layout of ``path``: ``fmt``, or (``"auto"``) detected from the name, then the pages."""
    if fmt not in FORMATS:
        raise InputError(f"--labels-format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_label_format(path)
        if fmt == "tiff" and path.suffix.lower() in (".tif", ".tiff"):
            fmt = _sniff(path)
    return fmt


def check_label_pixel_size(path: Path, px: Optional[float], pixel_size_um: Optional[float]) -> None:
    """Refuse a mask whose recorded pixel size differs from the image's by more than 1 %."""
    if px is not None and pixel_size_um is not None and abs(px - pixel_size_um) > 0.01 * pixel_size_um:
        raise InputError(f"{path}: label pixel size {px:.6g} µm (from its resolution tags / OME "
                         f"PhysicalSize) does not match the image's {pixel_size_um:.6g} µm; give a "
                         "mask made on this image at its own resolution")


def check_label_dtype(path: Path, dtype: np.dtype) -> None:
    """Refuse boolean and non-numeric label dtypes (floats are checked value by value)."""
    if dtype.kind == "b":
        raise InputError(f"{path}: expected integer labels, got a boolean mask")
    if dtype.kind not in "iuf":
        raise InputError(f"{path}: expected integer labels, got dtype {dtype}")


def check_label_values(path: Path, arr: np.ndarray) -> None:
    """Refuse non-integer (float) or negative label values in ``arr`` (a mask or a window of it)."""
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(f"{path}: expected integer labels, found non-integer values")
    if arr.size and arr.min() < 0:
        raise InputError(f"{path}: expected non-negative labels, found {arr.min()}")


def read_label_mask(path: Any, *, fmt: str = "auto", nuclei: bool = False,
                    shape: Optional[tuple[int, int]] = None,
                    pixel_size_um: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one label mask → (labels int32 relabelled 1..n, original ids of 1..n)."""
    path = Path(path)
    fmt = resolve_format(path, fmt)
    arr, px = _raw(path, fmt, nuclei, shape if fmt != "deepcell" else None)
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D label image, got shape {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise InputError(f"{path}: label shape {arr.shape[0]}x{arr.shape[1]} does not match image {shape[0]}x{shape[1]}")
    check_label_pixel_size(path, px, pixel_size_um)
    check_label_dtype(path, arr.dtype)
    check_label_values(path, arr)
    if not np.any(arr):
        raise InputError(f"{path}: label mask is empty (no labelled pixels)")
    a = arr.astype(np.int64)
    ids, inv = np.unique(a, return_inverse=True)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
        inv = inv + 1
    return inv.reshape(a.shape).astype(np.int32), ids[1:].astype(np.int64)


def label_source(path: Any, fmt: str = "auto") -> dict:
    """Path, layout and sha256 of a label file (for metrics.json and resume checksums)."""
    p = Path(path)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(p), "format": detect_label_format(p) if fmt == "auto" else fmt, "sha256": h.hexdigest()}
