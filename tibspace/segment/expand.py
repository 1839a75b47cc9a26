"""Distance transforms and the growth of nuclei into whole cells.

Distances are in pixels unless a name says µm. The exact Euclidean distance
(and nearest-source) transform is the separable O(N) algorithm of
Felzenszwalb & Huttenlocher (2012), compiled with numba: scipy's
``distance_transform_edt`` always builds the full (2, Y, X) feature transform,
which the tile workers do not need. Cells are nuclei grown by at most
``expansion_um``: to the nearest nucleus, or along membrane ridges when a
membrane channel is given.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from scipy import ndimage as ndi

from tibspace.errors import InputError
from tibspace.io import check_pixel_size_um

__all__ = ["distance_to_background", "expand_labels_fast", "expand_nuclei_to_cells"]


@numba.njit(cache=True, nogil=True)
def _lower_envelope(f, n, d, arg, v, z):
    """1-D squared distance transform of sampled function ``f`` (inf = no source)."""
    k = -1
    for q in range(n):
        fq = f[q]
        if fq == np.inf:
            continue
        while k >= 0:
            p = v[k]
            s = ((fq + q * q) - (f[p] + p * p)) / (2.0 * q - 2.0 * p)
            if s <= z[k]:
                k -= 1
            else:
                break
        if k < 0:
            k = 0
            v[0] = q
            z[0] = -np.inf
        else:
            k += 1
            v[k] = q
            z[k] = s
        z[k + 1] = np.inf
    if k < 0:
        for q in range(n):
            d[q] = np.inf
            arg[q] = -1
        return
    j = 0
    for q in range(n):
        while z[j + 1] < q:
            j += 1
        p = v[j]
        d[q] = (q - p) * (q - p) + f[p]
        arg[q] = p


@numba.njit(cache=True, nogil=True)
def _edt_nearest(source, want_nearest):
    """Squared distance of every pixel to the nearest ``source`` pixel.

    Returns ``(d2 float32, src_row int32, src_col int32)``; the source arrays
    are empty unless ``want_nearest``. Pixels with no source anywhere get inf.
    """
    h, w = source.shape
    big = np.inf
    g = np.empty((h, w), np.float64)
    srow = np.empty((h, w), np.int32)
    # Vertical pass, row by row (cache friendly): nearest source row per column.
    last = np.full(w, -1, np.int32)
    for r in range(h):
        for c in range(w):
            if source[r, c]:
                last[c] = r
            srow[r, c] = last[c]
    nxt = np.full(w, -1, np.int32)
    for r in range(h - 1, -1, -1):
        for c in range(w):
            if source[r, c]:
                nxt[c] = r
            best = srow[r, c]
            n = nxt[c]
            if n >= 0 and (best < 0 or n - r < r - best):
                best = n
            srow[r, c] = best
            g[r, c] = big if best < 0 else (r - best) * (r - best)
    d2 = np.empty((h, w), np.float32)
    if want_nearest:
        out_r = np.empty((h, w), np.int32)
        out_c = np.empty((h, w), np.int32)
    else:
        out_r = np.empty((0, 0), np.int32)
        out_c = np.empty((0, 0), np.int32)
    dd = np.empty(w, np.float64)
    arg = np.empty(w, np.int64)
    v = np.empty(w, np.int64)
    z = np.empty(w + 1, np.float64)
    for r in range(h):
        _lower_envelope(g[r], w, dd, arg, v, z)
        for c in range(w):
            d2[r, c] = dd[c]
            if want_nearest:
                a = arg[c]
                if a >= 0:
                    out_r[r, c] = srow[r, a]
                    out_c[r, c] = a
                else:
                    out_r[r, c] = -1
                    out_c[r, c] = -1
    return d2, out_r, out_c


@numba.njit(cache=True, nogil=True)
def _expand_nearest(lab, d2, src_r, src_c, max_d2):
    h, w = lab.shape
    out = np.zeros((h, w), np.int32)
    for r in range(h):
        for c in range(w):
            if d2[r, c] <= max_d2 and src_r[r, c] >= 0:
                out[r, c] = lab[src_r[r, c], src_c[r, c]]
    return out


def distance_to_background(mask: Any) -> np.ndarray:
    """Euclidean distance (px, float32) of each True pixel to the nearest False pixel.

    Same as ``scipy.ndimage.distance_transform_edt(mask)`` (tested), several
    times faster; inf when the mask has no False pixel.

    Examples
    --------
    >>> import numpy as np
    >>> distance_to_background(np.array([[0, 1, 1, 1, 0]], bool)).tolist()
    [[0.0, 1.0, 2.0, 1.0, 0.0]]
    """
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    d2, _, _ = _edt_nearest(~m, False)
    return np.sqrt(d2, out=d2)


def expand_labels_fast(labels: Any, distance_px: float) -> np.ndarray:
    """``skimage.segmentation.expand_labels`` without the (2, Y, X) index array.

    Each background pixel within ``distance_px`` of a label takes the label of
    its nearest labelled pixel (ties between equally near labels may resolve
    differently from skimage). Examples: see :func:`expand_nuclei_to_cells`.
    """
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    if not lab.any():
        return lab.copy()
    d2, sr, sc = _edt_nearest(lab > 0, True)
    return _expand_nearest(lab, d2, sr, sc, float(distance_px) ** 2)


def expand_nuclei_to_cells(nuclei: Any, pixel_size_um: float, *, expansion_um: float = 3.0,
                           membrane: Any = None) -> np.ndarray:
    """Whole cells: nuclei grown by up to ``expansion_um``, keeping their ids.

    Without ``membrane`` each background pixel within ``expansion_um`` of a
    nucleus joins the nearest nucleus (:func:`skimage.segmentation.expand_labels`).
    With ``membrane``, the same region is split between cells by a marker
    watershed on the smoothed membrane signal, so cell borders follow the
    membrane ridges instead of the mid-lines between nuclei.

    Parameters
    ----------
    nuclei : (Y, X) int array
        Nucleus labels.
    pixel_size_um : float
        µm per pixel.
    expansion_um : float
        Maximum distance a cell extends beyond its nucleus.
    membrane : (Y, X) array, optional
        Membrane signal (e.g. Na/K-ATPase, E-cadherin).

    Returns
    -------
    (Y, X) int32
        Cell labels with the nuclei's ids; every nucleus pixel keeps its id.

    Examples
    --------
    >>> import numpy as np
    >>> nuc = np.zeros((1, 11), np.int32); nuc[0, 2] = 1; nuc[0, 8] = 2
    >>> expand_nuclei_to_cells(nuc, 1.0, expansion_um=2.0).tolist()
    [[1, 1, 1, 1, 1, 0, 2, 2, 2, 2, 2]]
    """
    from skimage.segmentation import watershed

    px = check_pixel_size_um(pixel_size_um)
    lab = np.asarray(nuclei)
    if lab.ndim != 2:
        raise InputError(f"nuclei must be a 2-D label image, got shape {lab.shape}")
    e_um = float(expansion_um)
    if not (math.isfinite(e_um) and e_um >= 0):
        raise InputError(f"expansion_um must be ≥ 0 µm, got {expansion_um!r}")
    lab = lab.astype(np.int32, copy=False)
    e_px = e_um / px
    if e_px <= 0 or not lab.any():
        return lab.copy()
    grown = expand_labels_fast(lab, e_px)
    if membrane is None:
        return grown.astype(np.int32, copy=False)
    mem = np.asarray(membrane, dtype=np.float32)
    if mem.shape != lab.shape:
        raise InputError(f"membrane image shape {mem.shape} differs from nuclei {lab.shape}")
    mem = ndi.gaussian_filter(mem, 1.0, truncate=2.0)
    # Nuclei are the markers; flooding the membrane signal from them puts
    # cell borders on membrane ridges, never beyond the expansion limit.
    cells = watershed(mem, markers=lab, mask=grown > 0)
    return cells.astype(np.int32, copy=False)
