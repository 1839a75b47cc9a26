"""Nuclei in one 2-D nuclear-stain image: smoothing, foreground, seeds, watershed.

All lengths are given in µm and converted with ``pixel_size_um``; ``d`` is the
nucleus diameter (``nucleus_diameter_um``). Steps:

1. smooth the nuclear signal (Gaussian, σ = d/16);
2. foreground = pixels above a low global threshold (half the Otsu threshold;
   :func:`tibspace.segment.segment_image` computes it once for the whole image
   so tiles agree) AND brighter than their local mean (Gaussian, σ = d/2). The
   local test cuts the dim gaps between touching nuclei in dense tissue, where
   a global threshold alone merges them; the low global threshold keeps dim
   nuclei;
3. seeds = maxima of the lightly smoothed distance-to-background over a
   (0.9 d)-wide neighbourhood, at least 0.1 d deep, so touching nuclei get one
   seed each; a foreground component holding no seed is one nucleus;
4. marker watershed on the distance map, run only on the components holding
   several seeds; objects smaller than ``min_area_um2`` are dropped.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from scipy import ndimage as ndi

from tibspace.errors import InputError
from tibspace.io import check_pixel_size_um
from tibspace.segment.expand import distance_to_background

__all__ = ["segment_nuclei", "smooth_nuclear"]

# Default foreground threshold = this fraction of the Otsu threshold of the
# smoothed nuclear signal (the local-contrast test does the fine separation).
FOREGROUND_FRACTION_OF_OTSU = 0.5
# Fragments whose shared boundary is this wide (relative to the smaller
# fragment's peak distance to background) are one nucleus (0 = never merge).
MERGE_SADDLE_RATIO = 0.9


def nucleus_params(pixel_size_um: float, nucleus_diameter_um: float,
                   min_area_um2: Optional[float],
                   smoothing_sigma_um: Optional[float] = None) -> dict[str, float]:
    """All nucleus-segmentation parameters, in µm and in pixels.

    The smoothing is σ = d/16, or ``smoothing_sigma_um`` when that is larger
    (the noise-measured smoothing of :func:`tibspace.segment.scale.noise_smoothing_um`).
    """
    d_um = float(nucleus_diameter_um)
    if not (math.isfinite(d_um) and d_um > 0):
        raise InputError(f"nucleus_diameter_um must be a positive number of µm, got "
                         f"{nucleus_diameter_um!r}")
    px = pixel_size_um
    d_px = d_um / px
    if d_px < 3:
        raise InputError(f"nuclei of {d_um} µm are only {d_px:.1f} px wide at {px} µm/px; "
                         "check pixel_size_um (nuclei need ≥ 3 px to be segmented)")
    sigma_um = d_um / 16.0
    if smoothing_sigma_um is not None:
        sigma_um = max(sigma_um, float(smoothing_sigma_um))
    min_dist_um = 0.45 * d_um
    if min_area_um2 is None:
        min_area_um2 = 0.2 * math.pi * (d_um / 2.0) ** 2
    return {
        "nucleus_diameter_um": d_um, "nucleus_diameter_px": d_px,
        "smoothing_sigma_um": sigma_um, "smoothing_sigma_px": max(sigma_um / px, 0.5),
        "local_sigma_um": d_um / 2.0, "local_sigma_px": d_px / 2.0,
        "seed_min_distance_um": min_dist_um,
        "seed_min_distance_px": max(int(round(min_dist_um / px)), 1),
        "seed_min_depth_um": 0.1 * d_um, "seed_min_depth_px": 0.1 * d_px,
        "min_area_um2": float(min_area_um2),
        "min_area_px": float(min_area_um2) / (px * px),
    }


def smooth_nuclear(nuclear: Any, pixel_size_um: float, *,
                   nucleus_diameter_um: float = 8.0) -> np.ndarray:
    """The smoothed float32 nuclear signal that :func:`segment_nuclei` thresholds.

    Parameters
    ----------
    nuclear : (Y, X) array
        Nuclear signal.
    pixel_size_um : float
        µm per pixel.
    nucleus_diameter_um : float
        Nucleus diameter ``d``; the Gaussian has σ = d/16 (at least 0.5 px).

    Examples
    --------
    >>> import numpy as np
    >>> smooth_nuclear(np.ones((8, 8)), 0.5).dtype
    dtype('float32')
    """
    px = check_pixel_size_um(pixel_size_um)
    p = nucleus_params(px, nucleus_diameter_um, None)
    img = np.asarray(nuclear, dtype=np.float32)
    return ndi.gaussian_filter(img, p["smoothing_sigma_px"], mode="nearest", truncate=3.0)


def otsu(values: np.ndarray) -> float:
    """Otsu threshold of the finite ``values`` (inf when they are constant or empty)."""
    from skimage.filters import threshold_otsu

    v = np.asarray(values, dtype=np.float32).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or float(v.max()) <= float(v.min()):
        return float("inf")
    return float(threshold_otsu(v, nbins=1024))


def segment_nuclei(nuclear: Any, pixel_size_um: float, *, nucleus_diameter_um: float = 8.0,
                   threshold: Optional[float] = None,
                   min_area_um2: Optional[float] = None,
                   smoothing_sigma_um: Optional[float] = None) -> np.ndarray:
    """Segment nuclei in one 2-D nuclear-stain image (classical watershed).

    Parameters
    ----------
    nuclear : (Y, X) array
        Nuclear signal (DAPI/Hoechst/HH3, or a sum of normalised channels).
    pixel_size_um : float
        µm per pixel.
    nucleus_diameter_um : float
        Typical nucleus diameter ``d``; sets smoothing (σ = d/16), the local
        contrast scale (σ = d/2), seed spacing (0.45 d) and the minimum seed
        depth (0.1 d of distance to background).
    threshold : float, optional
        Lowest foreground value of the *smoothed* signal (see
        :func:`smooth_nuclear`), in the units of ``nuclear``; default half the
        Otsu threshold of the smoothed image.
    min_area_um2 : float, optional
        Smaller objects are dropped; default 20 % of a disc of the nucleus
        diameter.
    smoothing_sigma_um : float, optional
        Smooth with this σ when it exceeds d/16 (noisy, speckled signal).

    Returns
    -------
    (Y, X) int32
        Labels ``1..n``; 0 is background.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:60, :90]
    >>> img = sum(((yy - 30) ** 2 + (xx - cx) ** 2 < 64).astype(float) for cx in (20, 34, 70))
    >>> lab = segment_nuclei(img, 0.5)
    >>> int(lab.max())
    3
    """
    px = check_pixel_size_um(pixel_size_um)
    arr = np.asarray(nuclear)
    if arr.ndim != 2:
        raise InputError(f"nuclear image must be 2-D (Y, X), got shape {arr.shape}")
    p = nucleus_params(px, nucleus_diameter_um, min_area_um2, smoothing_sigma_um)
    sm = ndi.gaussian_filter(arr.astype(np.float32, copy=False), p["smoothing_sigma_px"],
                             mode="nearest", truncate=3.0)
    thr = FOREGROUND_FRACTION_OF_OTSU * otsu(sm) if threshold is None else float(threshold)
    fg = _foreground(sm, thr, p["local_sigma_px"])
    if not fg.any():
        return np.zeros(arr.shape, np.int32)
    dist_s = _smoothed_distance(fg)
    seed_pix = _seed_pixels(dist_s, int(p["seed_min_distance_px"]), p["seed_min_depth_px"])
    lab = _split_components(fg, dist_s, seed_pix)
    return _drop_small(lab, p["min_area_px"])


def _foreground(sm: np.ndarray, thr: float, local_sigma_px: float) -> np.ndarray:
    """Above the (low) global threshold AND brighter than the local mean."""
    local = ndi.gaussian_filter(sm, local_sigma_px, mode="nearest", truncate=2.5)
    return (sm > thr) & (sm > local)


def _smoothed_distance(fg: np.ndarray) -> np.ndarray:
    """Distance to background, lightly blurred.

    The blur removes the ridge plateaus of the exact distance transform that
    would otherwise seed one elongated nucleus twice.
    """
    return ndi.gaussian_filter(distance_to_background(fg), 1.0, truncate=2.0)


def _seed_pixels(dist_s: np.ndarray, m: int, min_depth_px: float) -> np.ndarray:
    """Flat index of one pixel per seed.

    Seeds are pixels that are the maximum of their (2 m + 1)² neighbourhood
    (so seeds are ≥ m px apart) and at least ``min_depth_px`` deep; a plateau
    of equal maxima is one seed (its first pixel in raster order).
    """
    peak = (dist_s == ndi.maximum_filter(dist_s, size=2 * m + 1, mode="nearest"))
    peak &= dist_s >= min_depth_px
    seeds, n_seeds = ndi.label(peak, structure=np.ones((3, 3), bool))
    first = np.zeros(n_seeds + 1, np.intp)
    sidx = np.flatnonzero(seeds)
    sl = seeds.ravel()[sidx]
    first[sl[::-1]] = sidx[::-1]
    return first[1:]


def _split_components(fg: np.ndarray, dist_s: np.ndarray, seed_pix: np.ndarray) -> np.ndarray:
    """Labels: foreground components, those with several seeds split by watershed.

    Components holding 0 or 1 seed are one nucleus each; only components with
    several seeds need the (costly) watershed.
    """
    from skimage.segmentation import watershed

    comp, n_comp = ndi.label(fg)
    per_comp = np.bincount(comp.ravel()[seed_pix], minlength=n_comp + 1)
    multi = per_comp >= 2
    multi[0] = False
    lab = comp.copy()
    if multi.any():
        in_multi = multi[comp]
        keep = multi[comp.ravel()[seed_pix]]
        markers = np.zeros(fg.shape, np.int32)
        markers.ravel()[seed_pix[keep]] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        ws = watershed(-dist_s, markers, mask=in_multi)
        if MERGE_SADDLE_RATIO > 0:
            ws = _merge_weak_splits(ws, dist_s, MERGE_SADDLE_RATIO)
        lab[in_multi] = ws[in_multi] + n_comp
    return lab


def _merge_weak_splits(ws: np.ndarray, dist_s: np.ndarray, ratio: float) -> np.ndarray:
    """Merge neighbouring fragments whose shared boundary is barely a neck.

    Two touching fragments are one nucleus when the distance-to-background
    on their shared boundary (the saddle, the widest point of the neck) is at
    least ``ratio`` times the smaller of their two peaks: a real cut between
    touching nuclei runs through a narrow neck, an over-split of one large
    (textured) nucleus through its full width.
    """
    n = int(ws.max())
    if n < 2:
        return ws
    a_parts, b_parts, s_parts = [], [], []
    for x, y, dx, dy in ((ws[:, :-1], ws[:, 1:], dist_s[:, :-1], dist_s[:, 1:]),
                         (ws[:-1, :], ws[1:, :], dist_s[:-1, :], dist_s[1:, :])):
        m = (x > 0) & (y > 0) & (x != y)
        a_parts.append(np.minimum(x[m], y[m]))
        b_parts.append(np.maximum(x[m], y[m]))
        s_parts.append(np.minimum(dx[m], dy[m]))
    a = np.concatenate(a_parts).astype(np.int64)
    if a.size == 0:
        return ws
    b = np.concatenate(b_parts).astype(np.int64)
    sad = np.concatenate(s_parts)
    key = a * (n + 1) + b
    order = np.lexsort((sad, key))
    key, sad = key[order], sad[order]
    last = np.r_[np.flatnonzero(np.diff(key)), key.size - 1]
    pa, pb, saddle = key[last] // (n + 1), key[last] % (n + 1), sad[last]
    peak = np.zeros(n + 1, np.float64)
    np.maximum.at(peak, ws.ravel(), dist_s.ravel())
    merge = saddle >= ratio * np.minimum(peak[pa], peak[pb])
    if not merge.any():
        return ws
    parent = np.arange(n + 1)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(pa[merge], pb[merge]):
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    lut = np.array([root(i) for i in range(n + 1)], dtype=ws.dtype)
    return lut[ws]


def _drop_small(lab: np.ndarray, min_area_px: float) -> np.ndarray:
    """Remove labels with fewer than ``min_area_px`` pixels and renumber 1..n."""
    n = int(lab.max())
    if n == 0:
        return lab.astype(np.int32, copy=False)
    area = np.bincount(lab.ravel(), minlength=n + 1)
    keep = area >= min_area_px
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[lab]
