"""OME-Zarr images and SpatialData stores as multiplex images (read lazily).

- **OME-Zarr** (NGFF 0.4 ``.zattrs`` or 0.5 ``zarr.json`` with ``ome``
  attributes): the ``multiscales`` datasets are the pyramid levels (full
  resolution first), channel names come from ``omero.channels[].label``, the
  pixel size in µm from the datasets' and the multiscale's ``scale``
  transformations on the y/x axes, in the axes' length ``unit``. A
  bioformats2raw layout (``bioformats2raw.layout``) opens its series ``0``.
- **SpatialData** (a Zarr group with ``images/``): its only image element, or
  the one named after ``::`` (``slide.zarr::stains``); several images and none
  named is a one-line error listing them. SpatialData writes no length unit:
  the scale to its coordinate system is taken as µm when the store holds a
  ``tables`` group (what tibspace's ``--spatialdata`` writes), else the pixel
  size must be given (``--pixel-size-um`` or the panel).

- **labels** of a SpatialData store (``labels/<name>``, for viewers):
  :func:`open_labels`, by the same rules.

Axes other than c, y, x of length > 1 are refused (Z-stacks, time series).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from tibspace.errors import InputError

ELEMENT_SEP = "::"


def split_element(path: str | Path) -> tuple[Path, Optional[str]]:
    """``(store, element)`` of ``"slide.zarr::name"``; ``(path, None)`` without ``::``
    (or when a file of that literal name exists).

    Examples
    --------
    >>> split_element("a/b.zarr::stains")
    (PosixPath('a/b.zarr'), 'stains')
    >>> split_element("a/b.ome.tif")
    (PosixPath('a/b.ome.tif'), None)
    """
    text = str(path)
    if ELEMENT_SEP not in text or Path(text).exists():
        return Path(text), None
    base, name = text.rsplit(ELEMENT_SEP, 1)
    return Path(base), (name.strip("/") or None)


def is_zarr(path: Path) -> bool:
    """A folder that is a Zarr group (v2 or v3), or a folder named ``*.zarr``."""
    return path.is_dir() and (path.name.lower().endswith(".zarr")
                              or any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zgroup")))


def _attrs(group: Path) -> dict:
    for name in ("zarr.json", ".zattrs"):
        f = group / name
        if f.exists():
            try:
                d = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"{f}: unreadable Zarr metadata ({exc})") from None
            d = d.get("attributes", {}) if name == "zarr.json" else d
            return d.get("ome", d)
    return {}


def _image_group(path: Path, element: Optional[str]) -> Path:
    """The OME-Zarr group of the image: the store itself, its bioformats2raw series, or a SpatialData element."""
    if (path / "images").is_dir():  # SpatialData
        elements = sorted(p.name for p in (path / "images").iterdir() if p.is_dir())
        if element is not None:
            if element not in elements:
                raise InputError(f"{path}: no image element {element!r}; it has: {', '.join(elements) or 'none'}")
            return path / "images" / element
        if not elements:
            raise InputError(f"{path}: SpatialData store without images; analyse its table instead "
                             "(tibspace analyze)")
        if len(elements) > 1:
            raise InputError(f"{path}: {len(elements)} images ({', '.join(elements)}); name one as "
                             f"{path.name}{ELEMENT_SEP}{elements[0]}")
        return path / "images" / elements[0]
    if element is not None:
        if (path / element).is_dir():
            return path / element
        raise InputError(f"{path}: no group {element!r} in this OME-Zarr")
    if "bioformats2raw.layout" in _attrs(path) and (path / "0").is_dir():
        return path / "0"
    return path


def _scale_of(transforms: list, y: int, x: int) -> Optional[float]:
    """The y/x scale of a list of NGFF transformations (sequences multiplied out); None without one."""
    out = None
    for t in transforms or []:
        s = None
        if t.get("type") == "sequence":
            s = _scale_of(t.get("transformations", []), y, x)
        elif t.get("type") == "scale" and "scale" in t:
            sy, sx = float(t["scale"][y]), float(t["scale"][x])
            if abs(sy - sx) > 0.01 * max(sy, sx):
                raise InputError(f"anisotropic pixels {sx} x {sy}: tibspace needs square pixels")
            s = sx
        if s is not None:
            out = s if out is None else out * s
    return out


def _levels(group: Path, ms: dict, axes: list[str]) -> list:
    """One lazy ``(C, Y, X)`` dask array per multiscale dataset."""
    import dask.array as da
    import zarr

    levels = []
    for ds in ms.get("datasets", []):
        try:
            arr = da.from_zarr(zarr.open_array(str(group / ds["path"]), mode="r"))
        except Exception as exc:
            if not levels:
                raise InputError(f"{group / ds.get('path', '?')}: cannot read this Zarr array "
                                 f"({type(exc).__name__})") from None
            break  # a damaged reduced level is not fatal
        if arr.ndim != len(axes):
            raise InputError(f"{group}: array has {arr.ndim} dimensions but axes {axes}")
        for k, name in enumerate(axes):
            if name not in ("c", "y", "x") and arr.shape[k] != 1:
                raise InputError(f"{group}: axis {name!r} has {arr.shape[k]} planes; tibspace analyses 2-D "
                                 "images (one plane per channel): export a single plane")
        arr = arr[tuple(slice(None) if a in ("c", "y", "x") else 0 for a in axes)]
        kept = [a for a in axes if a in ("c", "y", "x")]
        if "c" not in kept:
            arr, kept = arr[None], ["c"] + kept
        arr = arr.transpose([kept.index(a) for a in ("c", "y", "x")])
        if levels and arr.shape[0] != levels[0].shape[0]:
            break
        levels.append(arr)
    if not levels:
        raise InputError(f"{group}: the OME-Zarr multiscale lists no datasets")
    return levels


def _pixel_size(path: Path, group: Path, ms: dict, axes: list[str]) -> Optional[float]:
    """µm per pixel of the full-resolution level, or None when the store does not say in a length unit."""
    from tibspace.io.tiff_meta import _unit_to_um

    yk, xk = axes.index("y"), axes.index("x")
    px = _scale_of(ms["datasets"][0].get("coordinateTransformations"), yk, xk)
    top = _scale_of(ms.get("coordinateTransformations"), yk, xk)
    scale = (px or 1.0) * (top or 1.0) if (px is not None or top is not None) else None
    unit = next((a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict) and a.get("name") == "x"), None)
    if unit is not None:
        try:
            f = _unit_to_um(str(unit))
        except KeyError:
            f = None  # "unit", "space", ...: not a length
        return None if scale is None or f is None else scale * f
    if group != path and (path / "tables").is_dir() and top is not None:
        return scale  # a tibspace-written SpatialData store: its coordinate system is in µm
    return None


def open_zarr(path: Path, element: Optional[str] = None) -> tuple[Any, Optional[float]]:
    """(MultiplexImage, pixel size in µm or None) of an OME-Zarr image or a SpatialData store."""
    from tibspace.io.image import MultiplexImage

    group = _image_group(path, element)
    attrs = _attrs(group)
    ms = (attrs.get("multiscales") or [None])[0]
    if ms is None:
        raise InputError(f"{group}: no OME-Zarr 'multiscales' metadata; tibspace reads OME-Zarr images "
                         "and SpatialData stores (or a folder of single-channel TIFFs)")
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", ["c", "y", "x"])]
    if "y" not in axes or "x" not in axes:
        raise InputError(f"{group}: axes {axes} have no y and x")
    levels = _levels(group, ms, axes)
    labels = [c.get("label") for c in (attrs.get("omero") or {}).get("channels", [])]
    n_c = int(levels[0].shape[0])
    names = labels if len(labels) == n_c and all(labels) else [f"channel_{i}" for i in range(n_c)]
    img = MultiplexImage(path=path, channel_names=[str(n) for n in names], pixel_size_um=float("nan"),
                         levels=levels, dtype=levels[0].dtype)
    return img, _pixel_size(path, group, ms, axes)


def open_labels(path: Path, name: str) -> tuple[list, Optional[float]]:
    """Lazy ``(Y, X)`` levels of the label element ``labels/<name>`` of a SpatialData store and
    its µm per pixel (the rules of its images: µm when the store holds ``tables``), None when unknown.

    Raises
    ------
    InputError
        No such element, no ``multiscales`` metadata, or not a 2-D label image (one line).
    """
    group = Path(path) / "labels" / name
    if not group.is_dir():
        raise InputError(f"{path}: no label element {name!r}")
    ms = (_attrs(group).get("multiscales") or [None])[0]
    if ms is None:
        raise InputError(f"{group}: no OME-Zarr 'multiscales' metadata")
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", ["y", "x"])]
    if "y" not in axes or "x" not in axes:
        raise InputError(f"{group}: axes {axes} have no y and x")
    levels = _levels(group, ms, axes)
    if int(levels[0].shape[0]) != 1:
        raise InputError(f"{group}: {int(levels[0].shape[0])} channels; a label image has one")
    return [lv[0] for lv in levels], _pixel_size(Path(path), group, ms, axes)
