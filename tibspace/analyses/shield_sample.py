"""Sampling and automatic gates of the shield-mask channels (used by :mod:`tibspace.analyses.shield_masks`).

Reads of a (C, Y, X) numpy array or a lazy :class:`tibspace.io.MultiplexImage`
(tile reads, strided samples of ≤ ``max_pixels`` pixels so whole slides stay
bounded), the automatic gate :func:`otsu_gate_log1p` with its background
statistics, and the tissue pixels of the strided grid that feed the gates.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tibspace.errors import InputError

__all__ = ["otsu_gate_log1p"]


def _read(image: Any, c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return np.asarray(image[c, y0:y1, x0:x1])
    return np.asarray(image.read_region([c], y0, y1, x0, x1))[0]


def _image_yx(image: Any) -> tuple[int, int]:
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 3:
        raise InputError(f"image has shape {shape}; expected (C, Y, X)")
    return shape[1], shape[2]


def _stride(image: Any, max_pixels: int) -> int:
    """Sample spacing s (pixels) so that every s-th pixel in y and x gives ≤ max_pixels."""
    ny, nx = _image_yx(image)
    return max(1, int(math.ceil(math.sqrt(ny * nx / float(max_pixels)))))


def _strided_sample(image: Any, c: int, max_pixels: int) -> np.ndarray:
    """Every s-th pixel in y and x of channel ``c`` (s = :func:`_stride`)."""
    ny, nx = _image_yx(image)
    s = _stride(image, max_pixels)
    if isinstance(image, np.ndarray):
        return np.asarray(image[c, ::s, ::s])
    data = getattr(image, "data", None)
    if data is not None:  # dask: reads chunk by chunk, keeps only the strided pixels
        return np.asarray(data[c, ::s, ::s])
    rows = [np.asarray(image.read_region([c], y, min(y + 1, ny), 0, nx))[0, 0, ::s]
            for y in range(0, ny, s)]
    return np.stack(rows)


def otsu_gate_log1p(values: np.ndarray, *, floor_sd: float = 5.0, method: str = "otsu", seed: int = 0) -> float:
    """Automatic gate: Otsu threshold of ``log1p(values)``, floored above the background.

    Otsu always splits a sample in two, even when the channel has no positive
    structures (it then splits noise, or tissue from glass). The gate is
    therefore ``max(otsu, median + floor_sd · σ)``, where σ is the background
    noise in raw units (noise is additive) estimated from the left half of the
    distribution (``median − 16th percentile``, or the RMS deviation below the
    median if larger), which positive pixels do not reach as long as they are
    fewer than half the sample. Returned in raw intensity units.
    ``floor_sd=0`` gives plain Otsu. ``method="background"`` returns the
    floor alone ("signal above tissue background"). ``method="gmm"`` replaces Otsu by
    :func:`tibspace.cells.auto_gate`'s two-component mixture (fitted on
    ≤ 200,000 of the values, chosen with ``seed``), floored the same way.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> bg = rng.normal(10, 2, 20000).clip(0)
    >>> v = np.r_[bg, rng.normal(200, 20, 1000)]
    >>> 20 < otsu_gate_log1p(v) < 150
    True
    >>> bool(otsu_gate_log1p(bg) > bg.max() * 0.8)   # no positives: the floor keeps the gate above noise
    True
    """
    split, med, sd = _split_and_noise(values, method, seed)
    return float(max(split, med + floor_sd * sd)) if floor_sd > 0 else float(split)


def _split_and_noise(values: np.ndarray, method: str, seed: int = 0) -> tuple[float, float, float]:
    """(split, median, σ) of :func:`otsu_gate_log1p` in raw units: the Otsu / GMM split (−inf for
    ``"background"``) and the background median and noise σ of its floor."""
    from skimage.filters import threshold_otsu

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or np.ptp(v) == 0:
        raise InputError("cannot compute an Otsu gate: the channel is empty or constant; "
                         "give a numeric gate in the panel's [masks] entry")
    lv = np.log1p(np.clip(v, 0, None))
    if method == "background":
        t = -np.inf                                     # the floor alone: "above tissue background"
    elif method == "otsu":
        t = float(threshold_otsu(lv))
    elif method == "gmm":
        from tibspace.cells import auto_gate

        sub = v if v.size <= 200_000 else np.random.default_rng(seed).choice(v, 200_000, replace=False)
        t = float(np.log1p(auto_gate(sub, "gmm", marker="mask channel", seed=seed)))
    else:
        raise InputError(f"automatic gate method {method!r}: expected \"otsu\", \"gmm\" or \"background\"")
    split = float(np.expm1(t)) if np.isfinite(t) else -np.inf
    # background noise is additive: estimate it in raw units from the left half
    p16, med = np.percentile(v, [15.865, 50.0])
    left = v[v <= med]
    sd = max(med - p16, float(np.sqrt(np.mean((left - med) ** 2))) if left.size else 0.0, 1e-12)
    return split, float(med), float(sd)


def _tissue_sample_mask(image: Any, channels: Sequence[int], max_pixels: int, cache: dict | None = None) -> np.ndarray:
    """Tissue pixels of the strided grid: Otsu on log1p of the summed channels.

    Tissue autofluoresces in every channel while glass does not, so the sum
    separates them; used only to choose which pixels feed automatic gates.
    The sum is kept in ``cache["sum"]`` (for :func:`_section_grid`).
    """
    from skimage.filters import threshold_otsu

    tot = None
    for c in channels:
        a = _strided_sample(image, c, max_pixels).astype(np.float64)
        tot = a if tot is None else tot + a
    if cache is not None:
        cache["sum"] = tot
    lt = np.log1p(np.clip(tot, 0, None))
    if np.ptp(lt) == 0:
        return np.ones(lt.shape, bool)
    m = lt > threshold_otsu(lt)
    # a slide that is all tissue: Otsu then splits tissue textures; keep everything
    return m if m.mean() < 0.97 and m.mean() > 0.05 else np.ones(lt.shape, bool)
