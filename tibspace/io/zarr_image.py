"""OME-Zarr images and SpatialData stores as multiplex images (read lazily).

- **OME-Zarr** (NGFF 0.4 ``.zattrs`` or 0.5 ``zarr.json`` with ``ome``
  attributes): the ``multiscales`` datasets are the pyramid levels, channel
  names come from ``omero.channels[].label``, the pixel size from the first
  dataset's ``scale`` on the y/x axes when their unit is a length.
- **SpatialData** (a folder with ``images/``): the image element named
  ``stains`` (what tibspace writes), else the only or first one; its pixel
  size from the element's transformation to its first coordinate system
  (tibspace writes µm).
Axes other than c, y, x of length > 1 are refused (Z-stacks, time series).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from tibspace.errors import InputError

_UNIT_UM = {"micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3, "nm": 1e-3,
            "millimeter": 1e3, "mm": 1e3}


def is_zarr(path: Path) -> bool:
    """A folder that is a Zarr group (v2 or v3)."""
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zgroup"))


def _attrs(group: Path) -> dict:
    for name in ("zarr.json", ".zattrs"):
        f = group / name
        if f.exists():
            d = json.loads(f.read_text(encoding="utf-8"))
            d = d.get("attributes", d) if name == "zarr.json" else d
            return d.get("ome", d)
    return {}


def _image_group(path: Path) -> Path:
    if (path / "images").is_dir():  # SpatialData
        elements = sorted(p for p in (path / "images").iterdir() if p.is_dir())
        if not elements:
            raise InputError(f"{path}: SpatialData store without images; analyse its table instead")
        named = [p for p in elements if p.name == "stains"]
        return named[0] if named else elements[0]
    return path


def _scale_of(transforms: list, y: int, x: int) -> Optional[float]:
    for t in transforms or []:
        if t.get("type") == "sequence":
            s = _scale_of(t.get("transformations", []), y, x)
            if s is not None:
                return s
        if t.get("type") == "scale" and "scale" in t:
            sy, sx = float(t["scale"][y]), float(t["scale"][x])
            if abs(sy - sx) > 0.01 * max(sy, sx):
                raise InputError(f"anisotropic pixels {sx} x {sy}: tibspace needs square pixels")
            return sx
    return None


def open_zarr(path: Path) -> tuple[Any, Optional[float]]:
    """(MultiplexImage, pixel size in µm or None) of an OME-Zarr image or a SpatialData store."""
    import dask.array as da
    import zarr

    from tibspace.io.image import MultiplexImage

    group = _image_group(path)
    attrs = _attrs(group)
    ms = (attrs.get("multiscales") or [None])[0]
    if ms is None:
        raise InputError(f"{group}: no OME-Zarr 'multiscales' metadata; expected an OME-Zarr image")
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", ["c", "y", "x"])]
    if "y" not in axes or "x" not in axes:
        raise InputError(f"{group}: axes {axes} have no y and x")
    levels = []
    for ds in ms["datasets"]:
        arr = da.from_zarr(zarr.open_array(str(group / ds["path"]), mode="r"))
        for k, name in enumerate(axes):
            if name not in ("c", "y", "x") and arr.shape[k] != 1:
                raise InputError(f"{group}: axis {name!r} has {arr.shape[k]} planes; tibspace analyses 2-D "
                                 "images (one plane per channel)")
        index = tuple(slice(None) if a in ("c", "y", "x") else 0 for a in axes)
        arr = arr[index]
        kept = [a for a in axes if a in ("c", "y", "x")]
        if "c" not in kept:
            arr, kept = arr[None], ["c"] + kept
        levels.append(arr.transpose([kept.index(a) for a in ("c", "y", "x")]))
    yk, xk = axes.index("y"), axes.index("x")
    unit = next((a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict) and a.get("name") == "x"), None)
    px = _scale_of(ms["datasets"][0].get("coordinateTransformations"), yk, xk)
    top = _scale_of(ms.get("coordinateTransformations"), yk, xk)
    if top is not None:
        px = (px or 1.0) * top
    if unit is not None:
        px = px * _UNIT_UM[unit.lower()] if unit.lower() in _UNIT_UM and px is not None else None
    elif group != path:  # SpatialData without units: tibspace writes µm; others must say
        px = px if (path / "tables").exists() and top is not None else None
    else:
        px = None
    labels = [c.get("label") for c in (attrs.get("omero") or {}).get("channels", [])]
    n_c = int(levels[0].shape[0])
    names = labels if len(labels) == n_c and all(labels) else [f"channel_{i}" for i in range(n_c)]
    img = MultiplexImage(path=path, channel_names=[str(n) for n in names], pixel_size_um=px or 1.0,
                         levels=levels, dtype=levels[0].dtype)
    return img, px
