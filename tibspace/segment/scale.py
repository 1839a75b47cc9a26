"""The typical nucleus diameter of an image, measured from its nuclear channel.

Granulometry: the nuclear signal is lightly smoothed (σ = 0.4 µm) and
thresholded at Otsu; every foreground pixel gets its *opening radius*, the
radius of the largest disc that fits in the foreground and covers it (from a
geometric ladder of radii, 0.5–12 µm). The estimate is twice the 60th
percentile of the opening radii, in µm. Touching nuclei merged by the
threshold still admit only discs of about one nucleus, so chains and small
clusters do not inflate the estimate; the percentile is pixel-weighted, so
the size of the nuclei that hold most of the stained area counts.
:func:`sample_windows` picks a bounded set of windows of a large image, so
the cost of the estimate does not grow with the image (segment_image: 16
windows of 512², at most 4 Mpx).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from tibspace.errors import InputError
from tibspace.io import check_pixel_size_um
from tibspace.segment.expand import distance_to_background

__all__ = ["estimate_nucleus_diameter", "noise_smoothing_um"]

# percentile of the pixel-weighted opening radii taken as the nucleus radius
_PERCENTILE = 60.0
_RADII_UM = (0.5, 12.0)
_N_RADII = 48
# The noise-measured smoothing brings the pixel noise down to this fraction
# of the nucleus-vs-background contrast.
NOISE_TO_CONTRAST = 0.05
# The nucleus/background split that the noise is measured against is the Otsu
# foreground after smoothing at this σ (µm): texture-blind, not size-blind.
_NOISE_FG_SIGMA_UM = 1.0


def _opened_count(masks: list, dts: list, r: float) -> int:
    """Foreground pixels covered by a disc of radius ``r`` that fits in the foreground.

    The opening of a mask by a disc of radius r is the set within r of the
    pixels at least r from the background (two exact distance transforms).
    """
    n = 0
    for m, dt in zip(masks, dts):
        core = dt >= r
        if core.any():
            n += int(np.count_nonzero((distance_to_background(~core) <= r) & m))
    return n


def _radius_percentiles(masks: list, radii: np.ndarray, qs: list[float]) -> tuple[list, int]:
    """Percentiles ``qs`` of the opening radius (on the ladder ``radii``) of the covered pixels.

    The share of pixels whose opening radius is ≥ r falls with r, so each
    percentile is found by bisection over the ladder (a few openings instead
    of one per radius). Returns the radii and the number of covered pixels.
    """
    dts = [distance_to_background(m) for m in masks]
    memo: dict[int, int] = {}

    def count(i: int) -> int:
        if i not in memo:
            memo[i] = _opened_count(masks, dts, float(radii[i]))
        return memo[i]

    total = count(0)
    out = []
    for q in qs:
        need = (1.0 - q / 100.0) * total
        lo, hi = 0, len(radii) - 1  # largest i with count(i) >= need
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(mid) >= need:
                lo = mid
            else:
                hi = mid - 1
        out.append(float(radii[lo]))
    return out, total


def _as_windows(nuclear: Any) -> list[np.ndarray]:
    wins = [np.asarray(a, np.float32) for a in (nuclear if isinstance(nuclear, (list, tuple))
                                                else [nuclear])]
    if any(w.ndim != 2 for w in wins):
        raise InputError("nuclear image must be 2-D (Y, X) to estimate the nucleus size")
    return wins


def noise_smoothing_um(nuclear: Any, pixel_size_um: float) -> dict[str, Any]:
    """Gaussian σ (µm) that brings the pixel noise of the nuclear signal to 5 % of its contrast.

    The noise is the robust spread (1.4826 × MAD) of each pixel minus its 3×3
    mean inside the nuclear foreground (Otsu after a 1 µm smoothing, which
    joins speckled nuclei whatever their size; eroded by 1 µm so that edges do
    not count), rescaled to one pixel's white
    noise (× √(9/8)); the contrast is the median foreground minus the median
    background of that smoothed signal. A Gaussian of σ px divides white
    noise by 2√π σ, so σ = (noise / contrast) / (0.05 × 2√π) px. Ion-count
    (MIBI, IMC) nuclear channels are speckled and need σ ≈ 1–2 px; smooth
    fluorescence stains need less than the d/16 smoothing used anyway.

    Parameters
    ----------
    nuclear : (Y, X) array or list of (Y, X) arrays
        Nuclear signal (windows of one image are pooled).
    pixel_size_um : float
        µm per pixel.

    Returns
    -------
    dict
        ``noise_smoothing_um`` (0 when the signal has no foreground or no
        noise) and ``noise_to_contrast`` (pixel noise / contrast).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:128, :128]
    >>> disc = ((yy - 64) ** 2 + (xx - 64) ** 2 < 30 ** 2) * 10.0
    >>> noisy = np.random.default_rng(0).poisson(disc).astype(float)
    >>> noise_smoothing_um(noisy, 0.5)["noise_smoothing_um"] > noise_smoothing_um(disc, 0.5)["noise_smoothing_um"]
    True
    """
    from skimage.filters import threshold_otsu

    px = check_pixel_size_um(pixel_size_um)
    wins = _as_windows(nuclear)
    sig = _NOISE_FG_SIGMA_UM / px
    sm = [ndi.gaussian_filter(w, sig, mode="nearest", truncate=3.0) for w in wins]
    pooled = np.concatenate([a.ravel() for a in sm])
    if pooled.size == 0 or not np.isfinite(pooled).all() or pooled.max() <= pooled.min():
        return {"noise_smoothing_um": 0.0, "noise_to_contrast": 0.0}
    thr = float(threshold_otsu(pooled, nbins=1024))
    fgv, bgv, hf = [], [], []
    inner = np.ones((2 * int(math.ceil(sig)) + 1,) * 2, bool)
    for w, a in zip(wins, sm):
        fg = a > thr
        fgv.append(a[fg])
        bgv.append(a[~fg])
        # the noise inside the nuclei, not their edges
        core = ndi.binary_erosion(fg, inner)
        hf.append((w - ndi.uniform_filter(w, 3, mode="nearest"))[core])
    fgv, bgv, hf = (np.concatenate(v) for v in (fgv, bgv, hf))
    if fgv.size == 0 or bgv.size == 0 or hf.size == 0:
        return {"noise_smoothing_um": 0.0, "noise_to_contrast": 0.0}
    contrast = float(np.median(fgv) - np.median(bgv))
    noise = 1.4826 * float(np.median(np.abs(hf - np.median(hf)))) * math.sqrt(9.0 / 8.0)
    if not contrast > 0:
        return {"noise_smoothing_um": 0.0, "noise_to_contrast": 0.0}
    ratio = noise / contrast
    sigma_px = ratio / (NOISE_TO_CONTRAST * 2.0 * math.sqrt(math.pi))
    return {"noise_smoothing_um": float(sigma_px * px), "noise_to_contrast": float(ratio)}


def estimate_nucleus_diameter(nuclear: Any, pixel_size_um: float,
                              smoothing_sigma_um: float = 0.0) -> dict[str, Any]:
    """Estimate the typical nucleus diameter (µm) of a nuclear-stain image or images.

    Parameters
    ----------
    nuclear : (Y, X) array or list of (Y, X) arrays
        Nuclear signal (several windows of one image are pooled: one Otsu
        threshold, one distribution of opening radii).
    pixel_size_um : float
        µm per pixel.
    smoothing_sigma_um : float
        Smooth with this σ when it exceeds 0.4 µm (speckled signal, see
        :func:`noise_smoothing_um`).

    Returns
    -------
    dict
        ``nucleus_diameter_um`` (the estimate), ``nucleus_diameter_quartiles_um``
        (twice the 25th/75th percentile opening radius), ``estimate_pixels``
        (foreground pixels measured) and ``estimate_method``.

    Raises
    ------
    InputError
        When the signal is constant (no foreground to measure).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:200, :200]
    >>> img = sum(((yy - cy) ** 2 + (xx - cx) ** 2 < 10 ** 2).astype(float)
    ...           for cy in range(20, 200, 40) for cx in range(20, 200, 40))
    >>> round(estimate_nucleus_diameter(img, 0.5)["nucleus_diameter_um"])
    10
    """
    from skimage.filters import threshold_otsu

    px = check_pixel_size_um(pixel_size_um)
    wins = _as_windows(nuclear)
    sig = max(max(0.4, float(smoothing_sigma_um)) / px, 0.5)
    sm = [ndi.gaussian_filter(w, sig, mode="nearest", truncate=3.0) for w in wins]
    pooled = np.concatenate([s.ravel() for s in sm])
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0 or float(pooled.max()) <= float(pooled.min()):
        raise InputError("the nuclear channel is constant: no nuclei to measure their size")
    thr = float(threshold_otsu(pooled, nbins=1024))
    lo = max(_RADII_UM[0] / px, 1.0)
    radii = np.geomspace(lo, max(_RADII_UM[1] / px, lo * 2), _N_RADII)
    (q25, q, q75), n_px = _radius_percentiles([a > thr for a in sm], radii,
                                              [25.0, _PERCENTILE, 75.0])
    if n_px == 0:
        raise InputError("no nuclei found in the nuclear channel to measure their size")
    # nuclei need ≥ 3 px to be segmented
    d_um = max(2.0 * float(q) * px, 3.0 * px)
    return {"nucleus_diameter_um": d_um,
            "nucleus_diameter_quartiles_um": [2.0 * float(q25) * px, 2.0 * float(q75) * px],
            "estimate_pixels": n_px,
            "estimate_method": (f"granulometry: 2 x {_PERCENTILE:g}th percentile of the opening "
                                "radius of the Otsu foreground")}


def sample_windows(shape_yx: tuple[int, int], side_px: int, n: int) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` windows ``(y0, y1, x0, x1)`` of ``side_px``, spread over the image.

    The whole image when it holds at most ``n`` windows' pixels; otherwise
    the windows centred on an evenly spaced √n × √n grid (deterministic).

    Examples
    --------
    >>> sample_windows((100, 100), 512, 4)
    [(0, 100, 0, 100)]
    >>> len(sample_windows((8192, 8192), 1024, 4))
    4
    """
    ny, nx = (int(s) for s in shape_yx)
    s = int(side_px)
    if ny * nx <= n * s * s:
        return [(0, ny, 0, nx)]
    k = max(int(math.floor(math.sqrt(n))), 1)
    out = []
    for i in range(k):
        for j in range(k):
            cy = int((i + 0.5) * ny / k)
            cx = int((j + 0.5) * nx / k)
            y0 = min(max(cy - s // 2, 0), max(ny - s, 0))
            x0 = min(max(cx - s // 2, 0), max(nx - s, 0))
            out.append((y0, min(y0 + s, ny), x0, min(x0 + s, nx)))
    return out
