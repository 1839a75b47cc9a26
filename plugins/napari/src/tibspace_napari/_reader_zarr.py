"""Open ``*.zarr`` folders in napari: OME-Zarr images and SpatialData stores.

The same layers as the TIFF reader (:mod:`._reader`): one image layer per
channel named by marker, additive blending, colour by marker group,
``scale=(px, px)`` in µm, multiscale for a pyramid, pixels left on disk. The
images are opened by :func:`tibspace.io.open_image` (:mod:`tibspace.io.zarr_image`),
so napari shows what ``tibspace run STORE.zarr`` analyses.

- **OME-Zarr image** (NGFF 0.4 / 0.5, bioformats2raw layout): its channels.
- **SpatialData store**: every element of ``images/`` (with several, layers
  are named ``"<channel> (<element>)"``; ``STORE.zarr::ELEMENT`` opens one),
  and every element of ``labels/`` as a hidden labels layer in µm. A
  tibspace result ``<sample_id>.zarr`` (``tibspace run --spatialdata``) thus
  opens as its stains plus ``cell_labels``; its ``stains_thumbnail`` (the
  channels ``r, g, b``, table runs) is one RGB layer.

A zarr folder in which tibspace can read no image gives no reader (None), so
other readers (napari-ome-zarr, napari-spatialdata) may try it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tibspace.errors import InputError
from tibspace.io import ELEMENT_SEP, MultiplexImage, is_zarr, open_labels, open_zarr, split_element

from ._layer_rasters import label_pyramid
from ._reader import METADATA_KEY, UM, image_layers, open_for_layers, single_path

__all__ = ["napari_get_zarr_reader", "read_zarr", "zarr_image_elements"]

#: Channel names of an RGB image element (tibspace's ``stains_thumbnail``).
RGB_CHANNELS = ["r", "g", "b"]


def _store_and_element(path: str | Path) -> tuple[Path, Optional[str]]:
    """``(store folder, element named after ::)``, trailing slashes removed."""
    text = str(path)
    return split_element(text.rstrip("/") if len(text) > 1 else text)


def _candidates(store: Path, element: Optional[str]) -> list[Optional[str]]:
    """Image elements to try: the named one, each of ``images/``, or the store itself (None)."""
    if element is not None:
        return [element]
    if (store / "images").is_dir():
        return sorted(p.name for p in (store / "images").iterdir() if p.is_dir())
    return [None]


def zarr_image_elements(path: str | Path) -> list[Optional[str]]:
    """Image elements of a zarr folder that tibspace opens (None: the store is one OME-Zarr image).

    Only metadata is read. An empty list means "not readable here".

    Examples
    --------
    >>> import tempfile
    >>> zarr_image_elements(tempfile.mkdtemp(suffix=".zarr"))
    []
    """
    store, element = _store_and_element(path)
    if not is_zarr(store):
        return []
    readable = []
    for name in _candidates(store, element):
        try:
            img, _ = open_zarr(store, name)
        except Exception:  # noqa: BLE001 - a probe: any failure means another reader's store
            continue
        img.close()
        readable.append(name)
    return readable


def _rgb_layer(img: MultiplexImage, known: bool, name: str) -> tuple:
    """One RGB image layer of an ``r, g, b`` element (channels last)."""
    px = float(img.pixel_size_um)
    levels = [lv.transpose(1, 2, 0) for lv in img.levels]
    meta = {"path": str(img.path), "element": name, "pixel_size_um": px if known else None}
    kwargs = {"name": name, "rgb": True, "contrast_limits": (0, 255), "scale": (px, px),
              "multiscale": len(levels) > 1,
              **({"units": UM} if known else {}), "metadata": {METADATA_KEY: meta}}
    return (levels if len(levels) > 1 else levels[0]), kwargs, "image"


def _element_layers(store: Path, element: Optional[str],
                    several: bool) -> tuple[list[tuple], MultiplexImage, bool]:
    """``(layers, image, pixel size known)`` of one image element (names suffixed by the
    element when the store has several)."""
    target = store if element is None else Path(f"{store}{ELEMENT_SEP}{element}")
    img, known = open_for_layers(target)
    # The store itself when it holds one image, else the element's address (what `tibspace run` needs).
    img.path = target if len(_candidates(store, None)) > 1 else store
    if [str(n).lower() for n in img.channel_names] == RGB_CHANNELS and img.dtype == np.uint8:
        return [_rgb_layer(img, known, element or store.name)], img, known
    layers = image_layers(img, pixel_size_known=known,
                          extra_metadata={"element": element} if element else None)
    if several:
        for _, kw, _ in layers:
            kw["name"] = f"{kw['name']} ({element})"
    return layers, img, known


def _labels_layers(store: Path, image: MultiplexImage, known: bool) -> list[tuple]:
    """Hidden labels layers of the store's ``labels/`` elements, in µm (the image's when unknown)."""
    folder = store / "labels"
    if not folder.is_dir():
        return []
    out = []
    for name in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        try:
            levels, px = open_labels(store, name)
        except InputError:
            continue
        if px is None:  # no unit of its own: on the image's pixel grid when it has the image's shape
            if tuple(levels[0].shape) != tuple(image.levels[0].shape[1:]):
                continue
            px = float(image.pixel_size_um)
        data = levels if len(levels) > 1 else label_pyramid(levels[0])
        kwargs = {"name": name, "scale": (px, px), "opacity": 0.35, "blending": "translucent",
                  "multiscale": isinstance(data, list), "visible": False,
                  **({"units": UM} if known else {}),
                  "metadata": {METADATA_KEY: {"path": str(store), "element": name, "kind": "labels"}}}
        out.append((data, kwargs, "labels"))
    return out


def read_zarr(path: str | Path) -> list[tuple]:
    """napari LayerDataTuples of an OME-Zarr image or a SpatialData store (see module docstring).

    Raises
    ------
    tibspace.errors.InputError
        No image in the folder that tibspace reads (one line naming it).
    """
    store, named = _store_and_element(path)
    elements = zarr_image_elements(path)
    if not elements:
        raise InputError(f"{store}: no image tibspace can read (an OME-Zarr image or a SpatialData "
                         "store with images/)")
    several = len(elements) > 1
    layers: list[tuple] = []
    first: Optional[tuple[MultiplexImage, bool]] = None
    for element in elements:
        el_layers, img, known = _element_layers(store, element, several)
        layers += el_layers
        first = first or (img, known)
    if named is None and first is not None:
        layers += _labels_layers(store, *first)
    return layers


def napari_get_zarr_reader(path: str | Sequence[str]) -> Optional[Callable[..., list]]:
    """npe2 reader hook: a reader for a zarr folder with an image tibspace reads, else None.

    Examples
    --------
    >>> napari_get_zarr_reader("slide.ome.tif") is None
    True
    """
    path = single_path(path)
    if path is None or not zarr_image_elements(path):
        return None
    return _reader_function


def _reader_function(path: str | Sequence[str]) -> list[tuple]:
    return read_zarr(single_path(path))
