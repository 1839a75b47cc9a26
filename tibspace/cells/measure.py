"""Per-cell measurements from label images: position, shape and intensities.

:func:`measure_cells` turns a whole-cell label image (and its nuclei) plus the
channel images into the cell table (one row per cell, ``cell_id`` == label
value). Every reduction is a single vectorised pass over the labelled pixels
(``np.bincount``), one pass per channel, so the cost is linear in pixels and
independent of the number of cells; the results equal
:func:`skimage.measure.regionprops_table` (centroid, area, perimeter,
eccentricity, solidity, mean intensity).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numba
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from tibspace.io import atomic_path
from tibspace.errors import InputError

__all__ = ["measure_cells", "write_cell_table", "SHAPE_COLUMNS"]

#: Columns :func:`measure_cells` always returns, before the channel columns.
SHAPE_COLUMNS = ("cell_id", "x_um", "y_um", "area_um2", "nucleus_area_um2", "perimeter_um",
                 "eccentricity", "solidity")

# skimage.measure.perimeter weights, indexed by the 3x3 border-neighbour code
# (self=1, 4-neighbour=2, diagonal=10); see skimage/measure/_regionprops_utils.py.
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


def _as_labels(labels: Any, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D (Y, X) label image, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise InputError(f"{what} must hold integer labels, got dtype {arr.dtype}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int32)
    if arr.size and int(arr.min()) < 0:
        raise InputError(f"{what} holds negative labels; labels must be 0 (background) or "
                         "positive cell ids")
    return arr


@numba.njit(cache=True, nogil=True)
def _perimeters_px(lab: np.ndarray, n: int, weights: np.ndarray) -> np.ndarray:
    """skimage ``regionprops`` perimeter (4-connectivity) of labels 1..n, in px.

    A border pixel is a labelled pixel with a 4-neighbour of another label
    (or outside the image); each border pixel gets skimage's weight for the
    pattern of same-label border pixels around it (self 1, edge 2, corner 10).
    """
    h, w = lab.shape
    border = np.zeros((h, w), np.uint8)
    for r in range(h):
        for c in range(w):
            v = lab[r, c]
            if v == 0:
                continue
            if (r == 0 or r == h - 1 or c == 0 or c == w - 1 or lab[r - 1, c] != v
                    or lab[r + 1, c] != v or lab[r, c - 1] != v or lab[r, c + 1] != v):
                border[r, c] = 1
    out = np.zeros(n + 1, np.float64)
    for r in range(h):
        for c in range(w):
            if border[r, c] == 0:
                continue
            v = lab[r, c]
            code = 1
            for dr in range(-1, 2):
                rr = r + dr
                if rr < 0 or rr >= h:
                    continue
                for dc in range(-1, 2):
                    cc = c + dc
                    if (dr == 0 and dc == 0) or cc < 0 or cc >= w:
                        continue
                    if border[rr, cc] and lab[rr, cc] == v:
                        code += 2 if (dr == 0 or dc == 0) else 10
            out[v] += weights[code]
    return out


@numba.njit(cache=True, nogil=True)
def _moments_px(lab: np.ndarray, n: int, oy: int, ox: int):
    """Pixel count, centroid (row, col) and central second moments per label.

    Coordinates are whole-image pixels (``lab``'s top-left pixel is ``(oy, ox)``),
    so a label measured in any window that holds it gives the same bits.
    """
    h, w = lab.shape
    cnt = np.zeros(n + 1, np.float64)
    sr = np.zeros(n + 1, np.float64)
    sc = np.zeros(n + 1, np.float64)
    for r in range(h):
        for c in range(w):
            v = lab[r, c]
            if v:
                cnt[v] += 1.0
                sr[v] += r + oy
                sc[v] += c + ox
    cr = np.zeros(n + 1, np.float64)
    cc = np.zeros(n + 1, np.float64)
    for v in range(n + 1):
        if cnt[v] > 0:
            cr[v] = sr[v] / cnt[v]
            cc[v] = sc[v] / cnt[v]
    mrr = np.zeros(n + 1, np.float64)
    mcc = np.zeros(n + 1, np.float64)
    mrc = np.zeros(n + 1, np.float64)
    for r in range(h):
        for c in range(w):
            v = lab[r, c]
            if v:
                dr = (r + oy) - cr[v]
                dc = (c + ox) - cc[v]
                mrr[v] += dr * dr
                mcc[v] += dc * dc
                mrc[v] += dr * dc
    return cnt, cr, cc, mrr, mcc, mrc


@numba.njit(cache=True, nogil=True)
def _channel_sums(lab: np.ndarray, nuc: np.ndarray, has_nuc: bool, chan: np.ndarray,
                  n: int, n_nuc: int):
    """Sum of one channel over each cell label and each nucleus label."""
    h, w = lab.shape
    cs = np.zeros(n + 1, np.float64)
    ns = np.zeros(n_nuc + 1, np.float64)
    for r in range(h):
        for c in range(w):
            x = np.float64(chan[r, c])
            cs[lab[r, c]] += x
            if has_nuc:
                ns[nuc[r, c]] += x
    cs[0] = 0.0
    ns[0] = 0.0
    return cs, ns


@numba.njit(cache=True, nogil=True)
def _run_end_points(lab: np.ndarray, n: int):
    """Edge midpoints of the first and last pixel of every row run of each label.

    Points are in doubled integer coordinates ``(2r, 2c)``, three per run end
    (its outer left/right edge and its top/bottom edges); the points of label
    ``v`` are ``pr[start[v]*3:start[v+1]*3]`` (and ``pc``).
    """
    h, w = lab.shape
    cnt = np.zeros(n + 2, np.int64)
    for r in range(h):
        for c in range(w):
            v = lab[r, c]
            if v == 0:
                continue
            if c == 0 or lab[r, c - 1] != v:
                cnt[v] += 1
            if c == w - 1 or lab[r, c + 1] != v:
                cnt[v] += 1
    start = np.zeros(n + 2, np.int64)
    for i in range(1, n + 2):
        start[i] = start[i - 1] + cnt[i - 1]
    fill = start.copy()
    total = start[n + 1]
    pr = np.empty(total * 3, np.int64)
    pc = np.empty(total * 3, np.int64)
    for r in range(h):
        for c in range(w):
            v = lab[r, c]
            if v == 0:
                continue
            for side in (-1, 1):
                end = c == 0 or lab[r, c - 1] != v if side < 0 else c == w - 1 or lab[r, c + 1] != v
                if not end:
                    continue
                k = fill[v] * 3
                pr[k] = 2 * r
                pc[k] = 2 * c + side
                pr[k + 1] = 2 * r - 1
                pc[k + 1] = 2 * c
                pr[k + 2] = 2 * r + 1
                pc[k + 2] = 2 * c
                fill[v] += 1
    return pr, pc, start


@numba.njit(cache=True, nogil=True)
def _hull(xs: np.ndarray, ys: np.ndarray):
    """Andrew's monotone chain over points sorted by (x, y): closed hull ``hx, hy, k``."""
    m = xs.size
    hx = np.empty(2 * m + 1, np.int64)
    hy = np.empty(2 * m + 1, np.int64)
    k = 0
    for i in range(m):
        while k >= 2 and ((hx[k - 1] - hx[k - 2]) * (ys[i] - hy[k - 2])
                          - (hy[k - 1] - hy[k - 2]) * (xs[i] - hx[k - 2])) <= 0:
            k -= 1
        hx[k] = xs[i]
        hy[k] = ys[i]
        k += 1
    lower = k + 1
    for i in range(m - 2, -1, -1):
        while k >= lower and ((hx[k - 1] - hx[k - 2]) * (ys[i] - hy[k - 2])
                              - (hy[k - 1] - hy[k - 2]) * (xs[i] - hx[k - 2])) <= 0:
            k -= 1
        hx[k] = xs[i]
        hy[k] = ys[i]
        k += 1
    return hx, hy, k


@numba.njit(cache=True, nogil=True)
def _pixels_in_hull(hx: np.ndarray, hy: np.ndarray, k: int) -> int:
    """Pixel centres (even doubled coordinates) inside or on the hull, row by
    row, as skimage's ``grid_points_in_poly`` counts them."""
    xmin = hx[0]
    xmax = hx[0]
    for i in range(k):
        xmin = min(xmin, hx[i])
        xmax = max(xmax, hx[i])
    total_px = 0
    for r in range((xmin + 1) // 2, xmax // 2 + 1):
        x = 2 * r
        lo = 1e18
        hi = -1e18
        for i in range(k - 1):
            x1, y1, x2, y2 = hx[i], hy[i], hx[i + 1], hy[i + 1]
            if x1 == x2:
                if x1 == x:
                    lo = min(lo, min(y1, y2))
                    hi = max(hi, max(y1, y2))
            elif min(x1, x2) <= x <= max(x1, x2):
                y = y1 + (y2 - y1) * (x - x1) / (x2 - x1)
                lo = min(lo, y)
                hi = max(hi, y)
        if hi >= lo:
            cnt_r = math.floor(hi / 2.0 + 1e-9) - math.ceil(lo / 2.0 - 1e-9) + 1
            if cnt_r > 0:
                total_px += cnt_r
    return total_px


@numba.njit(cache=True, nogil=True)
def _convex_areas_px(lab: np.ndarray, n: int) -> np.ndarray:
    """Convex area (px) of each label 1..n, as skimage's ``area_convex``.

    The hull of the run-end edge midpoints equals the hull of all the label's
    pixel edge midpoints (what :func:`skimage.morphology.convex_hull_image`
    uses); the area is the number of pixel centres inside or on it.
    """
    pr, pc, start = _run_end_points(lab, n)
    out = np.zeros(n + 1, np.float64)
    stride = 2 * lab.shape[1] + 8
    for v in range(1, n + 1):
        a, b = start[v] * 3, start[v + 1] * 3
        if b == a:
            continue
        order = np.argsort((pr[a:b] + 2) * stride + (pc[a:b] + 2))
        hx, hy, k = _hull(pr[a:b][order], pc[a:b][order])
        out[v] = _pixels_in_hull(hx, hy, k)
    return out


def measure_cells(cell_labels: Any, nuclei_labels: Any, intensities: Any,
                  channel_names: Sequence[str], pixel_size_um: float, *,
                  offset_px: tuple[int, int] = (0, 0)) -> pd.DataFrame:
    """Measure every labelled cell: centroid, shape and mean intensities.

    Parameters
    ----------
    cell_labels : (Y, X) int array
        Whole-cell labels; 0 is background, each value > 0 one cell.
    nuclei_labels : (Y, X) int array or None
        Nucleus labels using the same ids as ``cell_labels`` (a nucleus id
        absent from ``cell_labels`` is ignored).
    intensities : (C, Y, X) array-like or None
        Channel images. Indexed one channel at a time (``intensities[i]``),
        so a lazy object that reads channel ``i`` on demand keeps memory at
        one channel.
    channel_names : sequence of str
        One name per channel; columns are named exactly after them.
    pixel_size_um : float
        µm per pixel.
    offset_px : (int, int)
        ``(row, col)`` of the labels' top-left pixel in the whole image: centroids
        and moments are computed in whole-image pixels, so a cell measured in a
        window (a tile) gives the same values as in the whole image.

    Returns
    -------
    pandas.DataFrame
        One row per cell id present, sorted by id, with ``cell_id``,
        ``x_um``, ``y_um`` (skimage centroid (row, col) + offset, times the
        pixel size), ``area_um2``, ``nucleus_area_um2``, ``perimeter_um``
        (skimage 4-connectivity perimeter), ``eccentricity``, ``solidity``,
        ``<channel>`` (whole-cell mean) and ``<channel>_nucleus`` (nucleus
        mean, NaN for a cell without nucleus pixels).

    Notes
    -----
    All shape features equal ``skimage.measure.regionprops_table`` (tested);
    they are computed in one pass over the labelled pixels instead of one
    crop per cell.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((6, 8), np.int32); lab[1:5, 1:4] = 1; lab[2:4, 5:7] = 2
    >>> img = np.arange(48, dtype=np.float32).reshape(1, 6, 8)
    >>> df = measure_cells(lab, lab, img, ["DAPI"], 0.5)
    >>> df[["cell_id", "x_um", "y_um", "area_um2", "DAPI"]].to_numpy().tolist()
    [[1.0, 1.0, 1.25, 3.0, 22.0], [2.0, 2.75, 1.25, 1.0, 25.5]]
    """
    lab, nuc, px, names = _checked_inputs(cell_labels, nuclei_labels, intensities,
                                          channel_names, pixel_size_um)
    n = int(lab.max()) if lab.size else 0
    if n > 4 * np.count_nonzero(lab) + 1024:
        return _measure_sparse_ids(lab, nuc, intensities, names, px, offset_px)
    lab = np.ascontiguousarray(lab, dtype=np.int64 if lab.dtype.itemsize > 4 else np.int32)
    ids, cols_out, a = _shape_columns(lab, n, px, offset_px)
    if nuc is not None:
        nuc = np.ascontiguousarray(nuc, dtype=lab.dtype)
        nmax = max(n, int(nuc.max()) if nuc.size else 0)
        narea = np.bincount(nuc.ravel(), minlength=nmax + 1).astype(np.float64)[ids]
    else:
        nmax = n
        narea = np.full(ids.shape, np.nan)
    cols_out["nucleus_area_um2"] = narea * px * px
    cols_out.update(_channel_means(lab, nuc, intensities, names, ids, a, narea, n, nmax))
    # Channel columns after the shape columns; nucleus columns last.
    order = list(SHAPE_COLUMNS) + names + [c + "_nucleus" for c in names]
    if len(set(order)) != len(order):
        raise InputError(f"channel names {names} clash with each other or with the table's "
                         f"columns {list(SHAPE_COLUMNS)}; rename the channels")
    return pd.DataFrame({c: cols_out[c] for c in order})


def _checked_inputs(cell_labels, nuclei_labels, intensities, channel_names, pixel_size_um):
    """Validated ``(labels, nuclei or None, pixel size, channel names)``."""
    lab = _as_labels(cell_labels, "cell_labels")
    px = float(pixel_size_um)
    if not (math.isfinite(px) and px > 0):
        raise InputError(f"pixel_size_um must be a positive number of µm, got {pixel_size_um!r}")
    names = [str(c) for c in channel_names]
    n_ch = 0 if intensities is None else len(intensities)
    if n_ch != len(names):
        raise InputError(f"{len(names)} channel names for {n_ch} intensity channels; give one "
                         "name per channel")
    nuc = None
    if nuclei_labels is not None:
        nuc = _as_labels(nuclei_labels, "nuclei_labels")
        if nuc.shape != lab.shape:
            raise InputError(f"nuclei_labels shape {nuc.shape} differs from cell_labels "
                             f"shape {lab.shape}")
    return lab, nuc, px, names


def _measure_sparse_ids(lab, nuc, intensities, names, px, offset_px) -> pd.DataFrame:
    """Sparse ids (e.g. a window of a whole-slide label image): measure on
    compact ids 1..k so per-id arrays stay small, then map the ids back."""
    idx = np.flatnonzero(lab)
    uniq, inv = np.unique(lab.ravel()[idx], return_inverse=True)
    compact = np.zeros(lab.shape, np.int32)
    compact.ravel()[idx] = inv + 1
    cnuc = None
    if nuc is not None:
        nflat_all = nuc.ravel()
        nid = np.flatnonzero(nflat_all)
        pos = np.searchsorted(uniq, nflat_all[nid])
        ok = (pos < uniq.size) & (uniq[np.minimum(pos, uniq.size - 1)] == nflat_all[nid])
        cnuc = np.zeros(lab.shape, np.int32)
        cnuc.ravel()[nid[ok]] = pos[ok] + 1
    df = measure_cells(compact, cnuc, intensities, names, px, offset_px=offset_px)
    df["cell_id"] = uniq[df["cell_id"].to_numpy() - 1].astype(np.int64)
    return df


def _shape_columns(lab: np.ndarray, n: int, px: float, offset_px):
    """``(ids, columns, pixel counts)``: centroid, area, perimeter, eccentricity,
    solidity of every label present (µm / µm²)."""
    oy, ox = (int(v) for v in offset_px)
    cnt, cr_all, cc_all, mrr_all, mcc_all, mrc_all = _moments_px(lab, n, oy, ox)
    ids = np.flatnonzero(cnt)
    ids = ids[ids > 0]
    a = cnt[ids]
    cr, cc = cr_all[ids], cc_all[ids]
    var_r, var_c, cov = mrr_all[ids] / a, mcc_all[ids] / a, mrc_all[ids] / a
    # skimage inertia tensor [[var_c, -cov], [-cov, var_r]]: eigenvalues l1 >= l2.
    half_tr = (var_r + var_c) / 2.0
    disc = np.sqrt(np.maximum(((var_c - var_r) / 2.0) ** 2 + cov * cov, 0.0))
    l1 = np.maximum(half_tr + disc, 0.0)
    l2 = np.maximum(half_tr - disc, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0.0, 1.0)),
                       0.0)
    perim = _perimeters_px(lab, n, _PERIMETER_WEIGHTS)[ids]
    hull = _convex_areas_px(lab, n)[ids]
    with np.errstate(invalid="ignore", divide="ignore"):
        solidity = np.where(hull > 0, np.minimum(a / np.maximum(hull, 1e-12), 1.0), 1.0)
    cols = {"cell_id": ids.astype(np.int64), "x_um": cc * px, "y_um": cr * px,
            "area_um2": a * px * px, "perimeter_um": perim * px, "eccentricity": ecc,
            "solidity": solidity}
    return ids, cols, a


def _channel_means(lab, nuc, intensities, names, ids, a, narea, n, nmax) -> dict[str, np.ndarray]:
    """``<channel>`` (whole-cell mean) and ``<channel>_nucleus`` (nucleus mean,
    NaN without nucleus pixels), reading one channel at a time."""
    cols: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        chan = np.asarray(intensities[i])
        if chan.shape != lab.shape:
            raise InputError(f"channel {name!r} has shape {chan.shape}, labels have {lab.shape}")
        if chan.dtype == np.bool_ or chan.dtype.kind not in "iuf":
            chan = chan.astype(np.float64)
        chan = np.ascontiguousarray(chan)
        cs, ns = _channel_sums(lab, nuc if nuc is not None else lab, nuc is not None, chan,
                               n, nmax)
        cols[name] = cs[ids] / a
        with np.errstate(invalid="ignore", divide="ignore"):
            cols[name + "_nucleus"] = (np.where(narea > 0, ns[ids] / np.maximum(narea, 1),
                                                np.nan) if nuc is not None
                                       else np.full(ids.shape, np.nan))
    return cols


def write_cell_table(df: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write the cell table as ``cells.parquet`` and ``cells.csv`` in ``out_dir``.

    Both files are written atomically (a failure leaves no partial file).

    Returns
    -------
    (Path, Path)
        The Parquet and CSV paths.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> d = tempfile.mkdtemp()
    >>> pq, csv = write_cell_table(pd.DataFrame({"cell_id": [1, 2], "x_um": [0.5, 3.0]}), d)
    >>> pd.read_parquet(pq)["x_um"].tolist(), csv.name
    ([0.5, 3.0], 'cells.csv')
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"write_cell_table needs a pandas DataFrame, got {type(df).__name__}")
    out = Path(out_dir)
    pq, csv = out / "cells.parquet", out / "cells.csv"
    with atomic_path(pq) as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    return pq, csv
