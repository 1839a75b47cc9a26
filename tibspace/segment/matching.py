"""Scoring a segmentation against a reference.

:func:`match_labels` matches objects one-to-one at an IoU threshold (object
F1); :func:`match_points` matches centroids one-to-one within a distance (in
the units of the coordinates, usually pixels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tibspace.errors import InputError

__all__ = ["match_labels", "match_points"]


def match_labels(pred: Any, truth: Any, iou: float = 0.5) -> tuple[int, int, int, float]:
    """One-to-one object matching of two label images at an IoU threshold.

    Overlaps come from a contingency table of the pixels labelled in both
    images (never all pairs of objects). For ``iou >= 0.5`` a match is unique
    by construction; for lower thresholds pairs are taken greedily by
    decreasing IoU.

    Parameters
    ----------
    pred, truth : (Y, X) int arrays
        Predicted and reference labels (0 = background).
    iou : float
        Minimum intersection over union of a match.

    Returns
    -------
    tp, fp, fn : int
        Matched, unmatched predicted and unmatched reference objects
        (F1 = 2 tp / (2 tp + fp + fn)).
    mean_iou : float
        Mean IoU of the matched pairs (NaN without matches).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((10, 10), int); t[1:5, 1:5] = 1; t[6:9, 6:9] = 2
    >>> p = np.zeros((10, 10), int); p[1:5, 1:4] = 7; p[0:2, 7:9] = 3
    >>> match_labels(p, t)
    (1, 1, 1, 0.75)
    """
    a = np.asarray(pred)
    b = np.asarray(truth)
    if a.shape != b.shape:
        raise InputError(f"pred shape {a.shape} differs from truth shape {b.shape}")
    a = a.ravel().astype(np.int64)
    b = b.ravel().astype(np.int64)
    pa_ids, pa_area = np.unique(a[a > 0], return_counts=True)
    tb_ids, tb_area = np.unique(b[b > 0], return_counts=True)
    both = (a > 0) & (b > 0)
    if not both.any():
        return 0, int(pa_ids.size), int(tb_ids.size), float("nan")
    ia = np.searchsorted(pa_ids, a[both])
    ib = np.searchsorted(tb_ids, b[both])
    key = ia * tb_ids.size + ib
    pairs, inter = np.unique(key, return_counts=True)
    pi, ti = pairs // tb_ids.size, pairs % tb_ids.size
    union = pa_area[pi] + tb_area[ti] - inter
    j = inter / union
    ok = j >= iou
    pi, ti, j = pi[ok], ti[ok], j[ok]
    if iou < 0.5:
        order = np.argsort(-j, kind="stable")
        used_p = np.zeros(pa_ids.size, bool)
        used_t = np.zeros(tb_ids.size, bool)
        keep = []
        for k in order:
            if not used_p[pi[k]] and not used_t[ti[k]]:
                used_p[pi[k]] = used_t[ti[k]] = True
                keep.append(k)
        j = j[np.asarray(keep, dtype=np.intp)]
    tp = int(j.size)
    return (tp, int(pa_ids.size) - tp, int(tb_ids.size) - tp,
            float(j.mean()) if tp else float("nan"))


def match_points(pred_xy: Any, ref_xy: Any, max_dist: float) -> tuple[int, int, int, float]:
    """One-to-one matching of two point sets within ``max_dist`` (Hungarian).

    Candidate pairs come from a KD-tree; the optimal assignment (minimum total
    distance among maximum-cardinality matchings) is solved separately for
    each connected group of candidates, so memory stays linear in points.

    Returns
    -------
    tp, fp, fn : int
        Matched, unmatched predicted and unmatched reference points.
    mean_dist : float
        Mean distance of matched pairs (NaN without matches).

    Examples
    --------
    >>> match_points([[0, 0], [10, 0], [50, 50]], [[1, 0], [10, 2], [30, 30]], 4)
    (2, 1, 1, 1.5)
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    p = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    r = np.asarray(ref_xy, dtype=np.float64).reshape(-1, 2)
    if len(p) == 0 or len(r) == 0:
        return 0, len(p), len(r), float("nan")
    pairs = cKDTree(p).sparse_distance_matrix(cKDTree(r), max_dist, output_type="ndarray")
    if len(pairs) == 0:
        return 0, len(p), len(r), float("nan")
    i, j, d = pairs["i"], pairs["j"], pairs["v"]
    n_p = len(p)
    g = coo_matrix((np.ones(len(i)), (i, n_p + j)), shape=(n_p + len(r),) * 2)
    _, comp = connected_components(g, directed=False)
    big = 1e6 * (max_dist + 1.0)
    matched: list[float] = []
    order = np.argsort(comp[i], kind="stable")
    i, j, d = i[order], j[order], d[order]
    bounds = np.flatnonzero(np.diff(comp[i])) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(i)]):
        ii, jj, dd = i[lo:hi], j[lo:hi], d[lo:hi]
        up, inv_p = np.unique(ii, return_inverse=True)
        ur, inv_r = np.unique(jj, return_inverse=True)
        cost = np.full((up.size, ur.size), big)
        cost[inv_p, inv_r] = dd
        rr, cc = linear_sum_assignment(cost)
        sel = cost[rr, cc] < big
        matched.extend(cost[rr, cc][sel].tolist())
    tp = len(matched)
    return tp, len(p) - tp, len(r) - tp, float(np.mean(matched)) if tp else float("nan")
