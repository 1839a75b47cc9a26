"""Raster layers: strided label pyramids, lazy look-ups and the NET / collagen-I masks.

Raster layers keep their pixels and get ``scale=(px, px)`` (µm per pixel), so
pixel (r, c) sits at (r * px, c * px) µm.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ._layer_style import _MASK_NAMES, _TRANSPARENT, MASK_COLOURS, _rgba


def label_pyramid(labels: Any, max_side: int = 4096, min_side: int = 512) -> Any:
    """Strided views ``labels[::2**k, ::2**k]`` as a napari multiscale list.

    Numpy strided views cost no memory; napari then draws the level that fits
    the screen instead of downsampling a huge array on every redraw. Arrays
    with sides <= ``max_side`` are returned unchanged.

    Examples
    --------
    >>> levels = label_pyramid(np.zeros((5000, 3000), np.int32))
    >>> [lv.shape for lv in levels]
    [(5000, 3000), (2500, 1500), (1250, 750)]
    """
    if max(labels.shape) <= max_side:
        return labels
    levels = [labels]
    f = 2
    while min(labels.shape) // f >= min_side:
        levels.append(labels[::f, ::f])
        f *= 2
    return levels


def _is_multiscale(data: Any) -> bool:
    return isinstance(data, list)


def _lookup(labels: Any, lut: np.ndarray) -> Any:
    """Lazy ``lut[labels]`` over a (multiscale) labels array (dask, per block)."""
    import dask.array as da

    def one(level: Any) -> Any:
        arr = level if isinstance(level, da.Array) else da.from_array(level, chunks=2048)
        return arr.map_blocks(lambda b: lut[np.clip(b, 0, lut.size - 1)], dtype=lut.dtype)

    if _is_multiscale(labels):
        return [one(lv) for lv in labels]
    if max(labels.shape) <= 4096:
        return lut[np.clip(np.asarray(labels), 0, lut.size - 1)]
    return one(labels)


def mask_layers(masks: Optional[dict], pixel_size_um: float,
                image_shape: Optional[Sequence[int]] = None) -> list[tuple]:
    """Labels layers "NET mask" and "Col1 mask" (value 1 = in mask).

    A mask at another resolution than the image (e.g. computed on a pyramid
    level) is scaled so it covers the same µm extent.
    """
    from napari.utils.colormaps import DirectLabelColormap

    out = []
    for key in ("net", "col1"):
        m = (masks or {}).get(key)
        if m is None:
            continue
        px = float(pixel_size_um)
        sy = sx = px
        if image_shape is not None:
            sy = px * image_shape[0] / m.shape[0]
            sx = px * image_shape[1] / m.shape[1]
        data = label_pyramid(m.view(np.uint8) if m.dtype == bool else m)
        cmap = DirectLabelColormap(color_dict={0: _TRANSPARENT, None: _rgba(MASK_COLOURS[key])})
        out.append((data, {"name": _MASK_NAMES[key], "scale": (sy, sx), "colormap": cmap,
                           "opacity": 0.6, "blending": "translucent",
                           "multiscale": _is_multiscale(data),
                           "metadata": {"tibspace": {"kind": key}}}, "labels"))
    return out
