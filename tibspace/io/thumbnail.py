"""Small overview images of a multiplex image, read in bounded memory.

A thumbnail is read from the coarsest pyramid level that is still at least
``max_side`` pixels on its long side (level 0 if the file has no pyramid),
band by band, and reduced by block means, so its cost does not grow with the
slide beyond one band of rows.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def thumbnail(img, channels: Sequence[int], *, max_side: int = 1024, band_rows: int = 1024
              ) -> tuple[np.ndarray, float]:
    """``(Y, X, len(channels))`` float32 block-mean thumbnail and its µm per pixel.

    Parameters
    ----------
    img : tibspace.io.MultiplexImage
    channels : sequence of int
        Channel indices to read.
    max_side : int
        Longest side of the thumbnail, in pixels (at most).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from tibspace.io import open_image, write_ome_tiff
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.ome.tif"
    >>> _ = write_ome_tiff(p, np.ones((2, 300, 200), np.uint16), ["DAPI", "CD8"], 0.5)
    >>> t, um = thumbnail(open_image(p), [0], max_side=100)
    >>> t.shape, um
    ((100, 67, 1), 1.5)
    """
    level = 0
    for k, arr in enumerate(img.levels):
        if max(arr.shape[-2:]) >= max_side:
            level = k
    ny, nx = (int(s) for s in img.levels[level].shape[-2:])
    factor = max(1, math.ceil(max(ny, nx) / max_side))
    out = np.zeros((math.ceil(ny / factor), math.ceil(nx / factor), len(channels)), np.float32)
    rows = max(factor, (band_rows // factor) * factor)
    for y0 in range(0, ny, rows):
        band = img.read_region(list(channels), y0, min(ny, y0 + rows), 0, nx, level=level).astype(np.float32)
        band = np.nan_to_num(band, nan=0.0, posinf=0.0, neginf=0.0)
        c, h, w = band.shape
        hp, wp = math.ceil(h / factor) * factor, math.ceil(w / factor) * factor
        padded = np.pad(band, ((0, 0), (0, hp - h), (0, wp - w)), mode="edge")
        red = padded.reshape(c, hp // factor, factor, wp // factor, factor).mean(axis=(2, 4))
        out[y0 // factor: y0 // factor + red.shape[1]] = np.moveaxis(red, 0, -1)
    level_px = img.pixel_size_um * (img.levels[0].shape[-1] / img.levels[level].shape[-1])
    return out, float(level_px * factor)


def composite_rgb(stack: np.ndarray, colours: Sequence[tuple[int, int, int]], *, percentile: float = 99.5
                  ) -> np.ndarray:
    """Additive colour composite (uint8 RGB) of a ``(Y, X, C)`` stack, each channel
    scaled to its ``percentile``."""
    rgb = np.zeros(stack.shape[:2] + (3,), np.float32)
    for k, col in enumerate(colours):
        ch = stack[..., k]
        hi = float(np.percentile(ch, percentile)) if ch.size else 0.0
        lo = float(np.percentile(ch, 1)) if ch.size else 0.0
        if hi > lo:
            rgb += np.clip((ch - lo) / (hi - lo), 0, 1)[..., None] * (np.asarray(col, np.float32) / 255)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
