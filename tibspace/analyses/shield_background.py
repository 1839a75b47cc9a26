"""Smooth background of a mask channel at a physical scale (µm), removed before automatic mask gates.

Sections show an additive background that varies across the field
(illumination, tissue thickness, autofluorescence blotches). A gate computed on
raw intensities is then dominated by the bright side: its noise floor
(median + k·σ) rises with the spread of the background, and positive pixels
on the dim side fall below it. :func:`estimate_background` estimates the
background of one channel on a mesh of square blocks of side ``scale_um``:

- block value = the ``quantile`` (default 10th percentile) of the block's
  tissue pixels (positive structures fill at most ~70 % of a block even in a
  densely shielded nest, so the low quantile stays on background); blocks
  with < 25 % tissue take the value of the nearest block with tissue;
- a 3 × 3 median over the mesh removes blocks filled with signal (a planar
  ramp is unchanged by it);
- between block centres the background is bilinear, continued linearly for
  half a block beyond the outer centres (to the image edge), constant further out.

:func:`flatten` returns ``raw − background + level``, where ``level`` is the
median of the mesh: the background is flattened to its own median, so on an
even background the flattened channel equals the raw one up to the mesh's
noise and gates keep their meaning. The mesh is built from the strided gate
sample (every s-th pixel, :func:`tibspace.analyses.shield_masks`), so a block
holds at least 8 × 8 samples: its side is ``max(scale_um, 8·s·pixel_size_um)``.
Values are in raw intensity units of the channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Background", "estimate_background", "flatten", "background_at_points"]

_MIN_TISSUE = 0.25        # a block with less tissue (fraction of its samples) takes its neighbour's value
_MIN_BLOCK_SAMPLES = 8    # samples per block side, at least


@dataclass(frozen=True)
class Background:
    """Background mesh of one channel.

    Attributes
    ----------
    mesh : ndarray (ny_blocks, nx_blocks)
        Background at the block centres (raw intensity units).
    step_px : float
        Block side (pixels).
    origin_px : float
        Pixel index (row and column) of block (0, 0)'s centre.
    level : float
        Median of ``mesh``: the level :func:`flatten` brings the background to.
    scale_um : float
        Block side (µm).
    """

    mesh: np.ndarray
    step_px: float
    origin_px: float
    level: float
    scale_um: float

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Background at the pixel grid ``rows × cols`` (pixel indices), shape (len(rows), len(cols)).

        Examples
        --------
        >>> bg = Background(np.array([[0.0, 10.0], [20.0, 30.0]]), 10.0, 4.5, 15.0, 5.0)
        >>> bg.at(np.array([4.5, 9.5, 30.0]), np.array([4.5, 9.5])).tolist()
        [[0.0, 5.0], [10.0, 15.0], [30.0, 35.0]]
        """
        i0, i1, wy = _axis_weights(rows, self.origin_px, self.step_px, self.mesh.shape[0])
        j0, j1, wx = _axis_weights(cols, self.origin_px, self.step_px, self.mesh.shape[1])
        along_x = (1.0 - wx) * self.mesh[:, j0] + wx * self.mesh[:, j1]      # (ny_blocks, len(cols))
        return (1.0 - wy)[:, None] * along_x[i0] + wy[:, None] * along_x[i1]


def _axis_weights(idx: np.ndarray, origin: float, step: float, n: int):
    """Neighbouring block indices and the weight of the second along one axis (linear up to half a block
    beyond the outer block centres, constant further out)."""
    if n == 1:
        z = np.zeros(len(idx), np.int64)
        return z, z, np.zeros(len(idx))
    f = np.clip((np.asarray(idx, np.float64) - origin) / step, -0.5, n - 0.5)
    i0 = np.clip(np.floor(f), 0, n - 2).astype(np.int64)
    return i0, i0 + 1, f - i0


def estimate_background(sample: np.ndarray, tissue: np.ndarray | None, stride: int, pixel_size_um: float,
                        scale_um: float, *, quantile: float = 0.1) -> Background:
    """Background mesh of one channel from its strided sample (see the module docstring).

    Parameters
    ----------
    sample : ndarray (hs, ws)
        Channel values at pixels ``(k·stride, l·stride)``.
    tissue : bool ndarray (hs, ws) or None
        Tissue samples (None or a mismatched shape: every sample).
    stride : int
        Sample spacing (pixels).
    pixel_size_um, scale_um : float
        Pixel size and block side (µm).
    quantile : float
        Quantile of a block's tissue samples taken as its background.

    Returns
    -------
    Background

    Examples
    --------
    >>> yy, xx = np.mgrid[0:200, 0:200]
    >>> ramp = 0.5 * xx + 10.0                       # additive background, 10 -> 109.5
    >>> img = ramp.copy(); img[90:110, :] += 1000    # a bright band
    >>> bg = estimate_background(img, None, 1, 0.5, 10.0)
    >>> flat = flatten(img, bg, np.arange(200), np.arange(200))
    >>> bool(np.ptp(flat[:80]) < 2.0), bool((flat[95:105] - np.median(flat[:80])).min() > 990)
    (True, True)
    """
    a = np.asarray(sample, np.float64)
    nb = max(_MIN_BLOCK_SAMPLES, int(round(scale_um / (pixel_size_um * stride))))
    hs, ws = a.shape
    nby, nbx = int(math.ceil(hs / nb)), int(math.ceil(ws / nb))
    v = np.full((nby * nb, nbx * nb), np.nan)
    v[:hs, :ws] = a
    if tissue is not None and np.shape(tissue) == a.shape and np.any(tissue):
        v[:hs, :ws][~np.asarray(tissue, bool)] = np.nan
    blocks = v.reshape(nby, nb, nbx, nb).transpose(0, 2, 1, 3).reshape(nby, nbx, nb * nb)
    n_ok = np.isfinite(blocks).sum(axis=2)
    valid = n_ok >= _MIN_TISSUE * nb * nb
    mesh = np.zeros((nby, nbx))
    if valid.any():
        mesh[valid] = _block_quantile(blocks[valid], n_ok[valid], quantile)
        if not valid.all():
            _, (iy, ix) = ndi.distance_transform_edt(~valid, return_indices=True)
            mesh = mesh[iy, ix]
    else:
        mesh[:] = np.nanquantile(a, quantile)
    mesh = ndi.median_filter(mesh, size=3, mode="nearest")
    step = float(nb * stride)
    return Background(mesh=mesh, step_px=step, origin_px=stride * (nb - 1) / 2.0,
                      level=float(np.median(mesh)), scale_um=step * float(pixel_size_um))


def _block_quantile(blocks: np.ndarray, n_ok: np.ndarray, q: float) -> np.ndarray:
    """``np.nanquantile(blocks, q, axis=1)`` (linear method, same values) by one sort of the rows."""
    v = np.where(np.isfinite(blocks), blocks, np.inf)
    v.sort(axis=1)
    pos = q * (n_ok - 1).astype(np.float64)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_ok - 1)
    rows = np.arange(len(v))
    a, b, t = v[rows, lo], v[rows, hi], pos - lo
    d = b - a
    return np.where(t >= 0.5, b - d * (1.0 - t), a + d * t)


def flatten(values: np.ndarray, bg: Background, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``values − background + level`` on the pixel grid ``rows × cols`` (float64)."""
    return np.asarray(values, np.float64) - bg.at(rows, cols) + bg.level


def background_at_points(bg: Background, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Background at the points ``(rows[k], cols[k])`` (pixel indices): the values of :meth:`Background.at`
    on those pixels, without the grid.

    Examples
    --------
    >>> bg = Background(np.array([[0.0, 10.0], [20.0, 30.0]]), 10.0, 4.5, 15.0, 5.0)
    >>> background_at_points(bg, np.array([4.5, 9.5, 30.0]), np.array([4.5, 9.5, 4.5])).tolist()
    [0.0, 15.0, 30.0]
    """
    i0, i1, wy = _axis_weights(rows, bg.origin_px, bg.step_px, bg.mesh.shape[0])
    j0, j1, wx = _axis_weights(cols, bg.origin_px, bg.step_px, bg.mesh.shape[1])
    m = bg.mesh
    top = (1.0 - wx) * m[i0, j0] + wx * m[i0, j1]
    bottom = (1.0 - wx) * m[i1, j0] + wx * m[i1, j1]
    return (1.0 - wy) * top + wy * bottom
