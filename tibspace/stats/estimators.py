"""Second-order and nearest-neighbour statistics of point patterns (µm).

One estimator per function, edge correction an argument (as spatstat):

K
    ``K_ab(r) = |W| / (n_a n_b') Σ_{i∈a} Σ_{j∈b, j≠i} e_ij 1(d_ij <= r)`` (µm²),
    ``n_b' = n_b − 1`` when a and b are the same points and
    ``intensity="unbiased"`` (λ² estimated by n(n−1)/|W|², spatstat and
    astropy), else ``n_b``. ``e_ij``: :mod:`tibspace.stats.edge_correction`.
L
    ``L(r) = sqrt(K(r) / π)`` (µm); L(r) = r under complete spatial randomness.
pair correlation
    ``g(r) = |W| / (2π r n_a n_b') Σ_{i≠j} e_ij κ_h(r − d_ij)``, Epanechnikov
    kernel of half-width h (default Stoyan's 0.15/sqrt(λ), as spatstat's pcf).
G-cross
    fraction of a points whose nearest b point is within r; border (reduced
    sample) correction with a window.

Points must lie in the window (``outside="drop"`` removes the others; the
default raises). All pair work runs over cell-list neighbour pairs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from tibspace.errors import InputError
from tibspace.stats._inputs import _as_xy, _table_xy_types
from tibspace.stats.edge_correction import _weighted_pair_hist
from tibspace.stats.windows import _as_radii, _as_window, _check_inside

__all__ = ["ripley_k", "ripley_l", "cross_k", "cross_l", "pair_correlation", "g_cross", "cross_l_all_pairs"]


def _k_from_hist(hist_ab, area, n_a, n_b, same, intensity):
    if intensity not in ("unbiased", "naive"):
        raise InputError(f"intensity={intensity!r}: expected 'unbiased' (n(n-1)) or 'naive' (n²)")
    nb = n_b - 1 if (same and intensity == "unbiased") else n_b
    if n_a <= 0 or nb <= 0:
        return np.full(hist_ab.shape[-1], np.nan)
    return area * np.cumsum(hist_ab, axis=-1) / (n_a * nb)


def ripley_k(x_um, y_um, radii_um, window, *, edge_correction="isotropic", intensity="unbiased",
             outside="error") -> np.ndarray:
    """Ripley's K function of one point pattern, edge-corrected, in µm².

    Parameters
    ----------
    x_um, y_um : array_like
        Point coordinates (µm).
    radii_um : array_like
        Strictly increasing radii (µm), each <= half the window's smaller side.
    window : tuple or shapely Polygon
        ``(xmin, ymin, xmax, ymax)`` (µm) or tissue polygon.
    edge_correction : {"isotropic", "translation", "none"}
        See the module docstring.
    intensity : {"unbiased", "naive"}
        λ² estimate n(n−1)/|W|² (default; spatstat, astropy) or n²/|W|².
    outside : {"error", "drop"}
        What to do with points outside the window.

    Returns
    -------
    numpy.ndarray
        K(r) for each radius (µm²); K(r) ≈ πr² for a Poisson pattern.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.uniform(0, 500, 2000), rng.uniform(0, 500, 2000)
    >>> k = ripley_k(x, y, [10, 20], (0, 0, 500, 500))
    >>> bool(np.allclose(k / (np.pi * np.array([10, 20]) ** 2), 1, atol=0.1))
    True
    """
    win = _as_window(window)
    x, y = _as_xy(x_um, y_um)
    radii = _as_radii(radii_um, win)
    keep = _check_inside(win, x, y, outside)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise InputError("ripley_k needs at least 2 points in the window")
    hist = _weighted_pair_hist(x, y, np.zeros(x.size, np.int64), 1, radii, win, edge_correction)
    return _k_from_hist(hist[0, 0], win.area, x.size, x.size, True, intensity)


def ripley_l(x_um, y_um, radii_um, window, *, edge_correction="isotropic", intensity="unbiased",
             outside="error") -> np.ndarray:
    """Besag's L function, ``sqrt(K(r) / π)`` (µm); L(r) ≈ r under CSR.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.uniform(0, 500, 2000), rng.uniform(0, 500, 2000)
    >>> bool(np.allclose(ripley_l(x, y, [20], (0, 0, 500, 500)), 20, atol=1.0))
    True
    """
    k = ripley_k(x_um, y_um, radii_um, window, edge_correction=edge_correction,
                 intensity=intensity, outside=outside)
    return np.sqrt(np.maximum(k, 0.0) / np.pi)


def cross_k(xa, ya, xb, yb, radii_um, window, *, edge_correction="isotropic", outside="error") -> np.ndarray:
    """Cross-type K function K_ab(r) (µm²): expected number of b points within
    r of a typical a point, divided by the b intensity.

    ``K_ab(r) = |W| / (n_a n_b) Σ_{i∈a} Σ_{j∈b} e_ij 1(d_ij <= r)``; the
    isotropic weight is that of the a point (as spatstat's ``Kcross``). a and
    b must be different cells (coincident pairs at distance 0 are counted).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> xa, ya, xb, yb = (rng.uniform(0, 400, 1500) for _ in range(4))
    >>> k = cross_k(xa, ya, xb, yb, [20], (0, 0, 400, 400))
    >>> bool(abs(k[0] / (np.pi * 400) - 1) < 0.15)
    True
    """
    win = _as_window(window)
    xa, ya = _as_xy(xa, ya, "type a points")
    xb, yb = _as_xy(xb, yb, "type b points")
    radii = _as_radii(radii_um, win)
    ka = _check_inside(win, xa, ya, outside, "type a points")
    kb = _check_inside(win, xb, yb, outside, "type b points")
    xa, ya, xb, yb = xa[ka], ya[ka], xb[kb], yb[kb]
    x = np.concatenate([xa, xb])
    y = np.concatenate([ya, yb])
    codes = np.r_[np.zeros(xa.size, np.int64), np.ones(xb.size, np.int64)]
    hist = _weighted_pair_hist(x, y, codes, 2, radii, win, edge_correction)
    return _k_from_hist(hist[0, 1], win.area, xa.size, xb.size, False, "naive")


def cross_l(xa, ya, xb, yb, radii_um, window, *, edge_correction="isotropic", outside="error") -> np.ndarray:
    """Cross-type L function ``sqrt(K_ab / π)`` (µm); ≈ r under independence.

    Parameters
    ----------
    xa, ya, xb, yb : array_like
        Coordinates (µm) of the type-a and type-b points.
    radii_um, window, edge_correction, outside
        As in :func:`ripley_k`.

    Returns
    -------
    numpy.ndarray
        L_ab(r) for each radius (µm).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> xa, ya, xb, yb = (rng.uniform(0, 400, 1500) for _ in range(4))
    >>> bool(abs(cross_l(xa, ya, xb, yb, [20], (0, 0, 400, 400))[0] - 20) < 1.5)
    True
    """
    k = cross_k(xa, ya, xb, yb, radii_um, window, edge_correction=edge_correction, outside=outside)
    return np.sqrt(np.maximum(k, 0.0) / np.pi)


def _stoyan_bandwidth(n, area):
    # spatstat's default for pcf: Epanechnikov half-width 0.15 / sqrt(λ)
    return 0.15 / math.sqrt(n / area)


def pair_correlation(x, y, radii_um, window, *, bandwidth_um=None, edge_correction="translation",
                     xb=None, yb=None, intensity="unbiased", outside="error") -> np.ndarray:
    """Pair correlation function g(r) (dimensionless; 1 under CSR), kernel estimate.

    ``g(r) = |W| / (2π r n_a n_b') Σ_{i≠j} e_ij κ_h(r − d_ij)`` with the
    Epanechnikov kernel κ_h of half-width ``bandwidth_um`` (default Stoyan's
    rule 0.15/sqrt(λ), as spatstat's ``pcf``). With ``xb, yb`` the cross-type
    pcf g_ab of points (x, y) = a against b.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> x, y = rng.uniform(0, 600, 3000), rng.uniform(0, 600, 3000)
    >>> g = pair_correlation(x, y, [20, 40], (0, 0, 600, 600))
    >>> bool(np.all(np.abs(g - 1) < 0.15))
    True
    """
    win = _as_window(window)
    xa, ya = _as_xy(x, y)
    radii = _as_radii(radii_um, win)
    ka = _check_inside(win, xa, ya, outside)
    xa, ya = xa[ka], ya[ka]
    cross = xb is not None or yb is not None
    if cross:
        xb_, yb_ = _as_xy(xb, yb, "type b points")
        kb = _check_inside(win, xb_, yb_, outside, "type b points")
        xb_, yb_ = xb_[kb], yb_[kb]
        xx = np.concatenate([xa, xb_])
        yy = np.concatenate([ya, yb_])
        codes = np.r_[np.zeros(xa.size, np.int64), np.ones(xb_.size, np.int64)]
        ntyp, nb, same = 2, xb_.size, False
    else:
        xx, yy, codes, ntyp, nb, same = xa, ya, np.zeros(xa.size, np.int64), 1, xa.size, True
    if bandwidth_um is None:
        h = _stoyan_bandwidth(xx.size if not cross else nb, win.area)
    else:
        h = float(bandwidth_um)
        if not h > 0:
            raise InputError(f"bandwidth_um must be > 0 (got {bandwidth_um})")
    hist = _weighted_pair_hist(xx, yy, codes, ntyp, radii, win, edge_correction, kernel_h=h)
    hab = hist[0, 1] if cross else hist[0, 0]
    if intensity not in ("unbiased", "naive"):
        raise InputError(f"intensity={intensity!r}: expected 'unbiased' or 'naive'")
    nbp = nb - 1 if (same and intensity == "unbiased") else nb
    return win.area * hab / (2 * np.pi * radii * xa.size * nbp)


def g_cross(xa, ya, xb, yb, radii_um, *, window=None, outside="error") -> np.ndarray:
    """Nearest-neighbour distance distribution G_ab(r): fraction of a points
    whose nearest b point is within r.

    Without ``window`` the raw empirical CDF. With ``window`` the border
    (reduced-sample) correction: only a points at least r from the window
    boundary count at radius r, ``G(r) = #{d_i <= r, b_i >= r} / #{b_i >= r}``
    (NaN where no a point qualifies).

    Examples
    --------
    >>> g_cross([0.0, 10.0], [0.0, 0.0], [3.0], [0.0], [2, 3, 8])
    array([0. , 0.5, 1. ])
    """
    xa, ya = _as_xy(xa, ya, "type a points")
    xb, yb = _as_xy(xb, yb, "type b points")
    win = _as_window(window) if window is not None else None
    radii = _as_radii(radii_um, win, check_max=False)
    if win is not None:
        ka = _check_inside(win, xa, ya, outside, "type a points")
        kb = _check_inside(win, xb, yb, outside, "type b points")
        xa, ya, xb, yb = xa[ka], ya[ka], xb[kb], yb[kb]
    d, _ = cKDTree(np.c_[xb, yb]).query(np.c_[xa, ya], k=1)
    if win is None:
        ds = np.sort(d)
        return np.searchsorted(ds, radii, side="right") / d.size
    if win.kind == "rect":
        b0 = win.bounds
        bd = np.minimum(np.minimum(xa - b0[0], b0[2] - xa), np.minimum(ya - b0[1], b0[3] - ya))
    else:
        import shapely
        bd = shapely.distance(win.geom.boundary, shapely.points(xa, ya))
    out = np.empty(radii.size)
    for k, r in enumerate(radii):
        m = bd >= r
        out[k] = np.mean(d[m] <= r) if m.any() else np.nan
    return out


def cross_l_all_pairs(cells, radii_um, window, *, phenotype_col="phenotype", types=None,
                      edge_correction="isotropic", progress=None, statistic="cross_L",
                      intensity="unbiased", outside="error") -> pd.DataFrame:
    """Cross-L (or cross-K) for ALL ordered phenotype pairs in one pass over neighbour pairs.

    One numba pass over the pairs within max(r) fills ``hist[type_a, type_b, r]``
    with edge-correction weights; a cumulative sum gives K for every pair.
    Cells whose phenotype is not in ``types`` are ignored. For a == b the
    univariate K/L of that type (``n_a (n_a − 1)`` with ``intensity="unbiased"``).

    Parameters
    ----------
    cells : pandas.DataFrame
        Cell table with ``x_um``, ``y_um`` and ``phenotype_col``.
    radii_um : array_like
        Strictly increasing radii (µm).
    window : tuple or shapely Polygon
        Window (µm).
    phenotype_col : str
        Phenotype column.
    types : list of str, optional
        Phenotypes to use (default: all, sorted or categorical order).
    edge_correction : {"isotropic", "translation", "none"}
    progress : callable, optional
        ``progress(step, done, total)``.
    statistic : {"cross_L", "cross_K"}

    Returns
    -------
    pandas.DataFrame
        Tidy: ``statistic, type_a, type_b, r_um, value, n_a, n_b``
        (``len(types)² × len(radii)`` rows); NaN where a type has < 1 cell
        (or < 2 for a == b).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cells = pd.DataFrame({"x_um": rng.uniform(0, 300, 600), "y_um": rng.uniform(0, 300, 600),
    ...                       "phenotype": rng.choice(["T", "tumour"], 600)})
    >>> df = cross_l_all_pairs(cells, [10, 20], (0, 0, 300, 300))
    >>> df.shape, list(df.columns)
    ((8, 7), ['statistic', 'type_a', 'type_b', 'r_um', 'value', 'n_a', 'n_b'])
    """
    if statistic not in ("cross_L", "cross_K"):
        raise InputError(f"statistic={statistic!r}: expected 'cross_L' or 'cross_K'")
    win = _as_window(window)
    radii = _as_radii(radii_um, win)
    x, y, codes, types = _table_xy_types(cells, phenotype_col, types)
    sel = codes >= 0
    keep = _check_inside(win, x[sel], y[sel], outside, "cells")
    idx = np.flatnonzero(sel)[keep]
    x, y, codes = x[idx], y[idx], codes[idx]
    T = len(types)
    counts = np.bincount(codes, minlength=T)
    hist = _weighted_pair_hist(x, y, codes, T, radii, win, edge_correction, progress=progress)
    rows = []
    R = radii.size
    for a in range(T):
        for b in range(T):
            k = _k_from_hist(hist[a, b], win.area, counts[a], counts[b], a == b, intensity)
            val = np.sqrt(np.maximum(k, 0) / np.pi) if statistic == "cross_L" else k
            rows.append(pd.DataFrame({"statistic": statistic, "type_a": types[a], "type_b": types[b],
                                      "r_um": radii, "value": val,
                                      "n_a": np.full(R, counts[a]), "n_b": np.full(R, counts[b])}))
    return pd.concat(rows, ignore_index=True)
