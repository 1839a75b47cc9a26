"""Neighbour graphs and neighbour counts of cells (µm).

Spatial graphs (radius, k nearest neighbours, Delaunay) as symmetric CSR
adjacency matrices; the Keren mixing score; per-cell counts of a phenotype
within a radius (phenoptr's ``count_within``); the distance to the nearest
cell of each phenotype; and squidpy's co-occurrence ratio. Distances are
``<=`` a radius throughout. All pair searches use cell lists or KD-trees (no
all-pairs matrices), so memory grows linearly with the number of cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from tibspace.errors import InputError, positive_um
from tibspace.progress import report
from tibspace.stats._inputs import _as_xy, _table_xy_types
from tibspace.stats._kernels import _cell_list, _n_chunks, _pair_hist, neighbour_pairs

__all__ = ["spatial_graph", "mixing_score", "counts_within", "nearest_distance_to_phenotypes", "co_occurrence"]


# --------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------
def _pairs_to_csr(i, j, n, data=None):
    rows = np.concatenate([i, j])
    cols = np.concatenate([j, i])
    vals = np.ones(rows.size, dtype=np.float32) if data is None else np.concatenate([data, data])
    g = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    g.sum_duplicates()
    g.sort_indices()
    return g


def spatial_graph(x_um, y_um, *, method="radius", radius_um=30.0, k=6, max_edge_um=None,
                  weights="connectivity") -> sp.csr_matrix:
    """Symmetric cell neighbour graph without self-loops, as a CSR matrix.

    Parameters
    ----------
    x_um, y_um : array_like
        Cell positions (µm).
    method : {"radius", "knn", "delaunay"}
        ``"radius"``: every pair with distance <= ``radius_um`` (cell-list
        neighbour pairs, as squidpy's generic radius graph);
        ``"knn"``: the ``k`` nearest neighbours of each cell, symmetrised by
        union; ``"delaunay"``: Delaunay triangulation edges, optionally only
        those of length <= ``max_edge_um``.
    radius_um : float
        Radius for ``"radius"`` (µm).
    k : int
        Neighbours for ``"knn"``.
    max_edge_um : float, optional
        Longest Delaunay edge kept (µm).
    weights : {"connectivity", "distance"}
        Matrix values: 1.0, or the edge length in µm.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n, n)`` symmetric adjacency (float32 for connectivity).

    Examples
    --------
    >>> g = spatial_graph([0, 10, 50], [0, 0, 0], radius_um=15)
    >>> g.toarray().astype(int).tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    x, y = _as_xy(x_um, y_um, "cells x_um/y_um")
    n = x.size
    if weights not in ("connectivity", "distance"):
        raise InputError(f"weights={weights!r}: expected 'connectivity' or 'distance'")
    if method == "radius":
        i, j = _radius_edges(x, y, radius_um)
    elif method == "knn":
        k = int(k)
        if k < 1:
            raise InputError(f"k must be >= 1 (got {k})")
        if n < 2:
            return sp.csr_matrix((n, n), dtype=np.float32)
        i, j = _knn_edges(x, y, k)
    elif method == "delaunay":
        i, j = _delaunay_edges(x, y, max_edge_um)
    else:
        raise InputError(f"method={method!r}: expected 'radius', 'knn' or 'delaunay'")
    data = np.hypot(x[i] - x[j], y[i] - y[j]) if weights == "distance" else None
    return _pairs_to_csr(i.astype(np.int64), j.astype(np.int64), n, data)


def _radius_edges(x, y, radius_um):
    """Every pair (i, j) at distance <= ``radius_um``, once."""
    r = float(radius_um)
    if not (np.isfinite(r) and r > 0):
        raise InputError(f"radius_um must be a positive number of µm (got {radius_um})")
    return neighbour_pairs(x, y, r)


def _knn_edges(x, y, k):
    """Pairs (i < j) where one is among the other's k nearest neighbours (union)."""
    n = x.size
    kk = min(k + 1, n)
    _, idx = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=kk)
    idx = idx.reshape(n, kk)
    rows = np.repeat(np.arange(n), kk).reshape(n, kk)
    notself = idx != rows
    # keep the first k non-self neighbours of each row (duplicates of a position may precede self)
    rank = np.cumsum(notself, axis=1)
    keep = notself & (rank <= k)
    i, j = rows[keep], idx[keep]
    a = np.minimum(i, j)
    b = np.maximum(i, j)
    key = np.unique(a.astype(np.int64) * n + b)
    return key // n, key % n


def _delaunay_edges(x, y, max_edge_um):
    """Delaunay triangulation edges (i < j), those longer than ``max_edge_um`` dropped."""
    from scipy.spatial import Delaunay, QhullError
    n = x.size
    if n < 3:
        raise InputError(f"delaunay graph needs at least 3 cells (got {n})")
    try:
        tri = Delaunay(np.c_[x, y])
    except QhullError:
        raise InputError("delaunay graph: cells are collinear or duplicated; use method='radius' or 'knn'") from None
    indptr, indices = tri.vertex_neighbor_vertices
    rows = np.repeat(np.arange(n), np.diff(indptr))
    m = rows < indices
    i, j = rows[m], indices[m].astype(np.int64)
    if max_edge_um is not None:
        keep = np.hypot(x[i] - x[j], y[i] - y[j]) <= float(max_edge_um)
        i, j = i[keep], j[keep]
    return i, j


# --------------------------------------------------------------------------
# Simple neighbour counts
# --------------------------------------------------------------------------
def _type_mask(ph: pd.Series, types, phenotype_col):
    ts = [types] if isinstance(types, str) else list(types)
    present = set(ph.unique())
    missing = [t for t in ts if t not in present]
    if missing:
        raise InputError(f"cells: phenotype(s) {missing} not found in column {phenotype_col!r} "
                         f"(have {sorted(map(str, present))[:12]})")
    return ph.isin(ts).to_numpy()


def _check_radius(r, name="radius_um"):
    return positive_um(r, name)


def mixing_score(cells, *, immune_types, tumour_types, radius_um=30.0, phenotype_col="phenotype") -> float:
    """Keren et al. (2018) mixing score: immune–tumour / immune–immune interactions within a radius.

    An interaction is a pair of cells at distance <= ``radius_um``; each pair
    is counted once (immune–immune pairs are unordered). Note: SPIAT's
    ``mixing_score_summary`` counts reference–reference pairs in both
    directions, i.e. its score is half of this one. Returns NaN when there
    is no immune–immune interaction.

    Examples
    --------
    >>> cells = pd.DataFrame({"x_um": [0, 5, 10, 100], "y_um": [0, 0, 0, 0],
    ...                       "phenotype": ["T", "T", "tumour", "tumour"]})
    >>> mixing_score(cells, immune_types=["T"], tumour_types=["tumour"], radius_um=6)
    1.0
    """
    x, y, _, _ = _table_xy_types(cells, phenotype_col, None)
    r = _check_radius(radius_um)
    ph = cells[phenotype_col].astype(str)
    im = _type_mask(ph, immune_types, phenotype_col)
    tu = _type_mask(ph, tumour_types, phenotype_col)
    if (im & tu).any():
        raise InputError("immune_types and tumour_types overlap; a phenotype can be in only one group")
    if im.sum() == 0:
        return float("nan")
    ti = cKDTree(np.c_[x[im], y[im]])
    n_ii = (ti.count_neighbors(ti, r) - im.sum()) / 2
    n_it = ti.count_neighbors(cKDTree(np.c_[x[tu], y[tu]]), r) if tu.any() else 0
    return float(n_it / n_ii) if n_ii > 0 else float("nan")


def counts_within(cells, type_a, type_b, radius_um, *, phenotype_col="phenotype", category_col=None,
                  category=None) -> np.ndarray:
    """For each ``type_a`` cell, the number of ``type_b`` cells within ``radius_um`` (itself excluded).

    Follows phenoptr's ``count_within`` (distance <= radius). With
    ``category_col`` and ``category``, both a and b cells are restricted to
    that tissue category (phenoptr's ``category=``); with ``category_col``
    alone, each a cell counts only b cells of its own category.

    Parameters
    ----------
    cells : pandas.DataFrame
    type_a, type_b : str or list of str
        Phenotype(s) of the 'from' and 'to' cells.
    radius_um : float
    category_col : str, optional
        Tissue-category column (e.g. ``"Tissue Category"``).
    category : str, optional
        Category to restrict to.

    Returns
    -------
    numpy.ndarray of int64
        One count per selected a cell, in table order
        (``cells[is_a & in_category]``).

    Examples
    --------
    >>> cells = pd.DataFrame({"x_um": [0, 3, 6, 50], "y_um": [0, 0, 0, 0],
    ...                       "phenotype": ["T", "T", "CK", "CK"]})
    >>> counts_within(cells, "T", ["T", "CK"], 4.0).tolist()
    [1, 2]
    """
    x, y, _, _ = _table_xy_types(cells, phenotype_col, None)
    r = _check_radius(radius_um)
    ph = cells[phenotype_col].astype(str)
    am = _type_mask(ph, type_a, phenotype_col)
    bm = _type_mask(ph, type_b, phenotype_col)
    if category is not None and category_col is None:
        raise InputError("category given without category_col; pass category_col='Tissue Category' (or similar)")
    if category_col is not None:
        if category_col not in cells.columns:
            raise InputError(f"cells: column {category_col!r} is missing (have {list(cells.columns)[:12]})")
        cat = cells[category_col].astype(str).to_numpy()
        if category is not None:
            if str(category) not in set(cat):
                raise InputError(f"cells: category {category!r} not found in column {category_col!r} "
                                 f"(have {sorted(set(cat))[:12]})")
            inside = cat == str(category)
            am &= inside
            bm &= inside
    ia = np.flatnonzero(am)
    out = np.zeros(ia.size, dtype=np.int64)
    if ia.size == 0 or not bm.any():
        return out
    if category_col is not None and category is None:
        groups = [np.flatnonzero(cat[ia] == c) for c in np.unique(cat[ia])]
    else:
        groups = [np.arange(ia.size)]
    for gsel in groups:
        rows = ia[gsel]
        bsel = bm & (cat == cat[rows[0]]) if (category_col is not None and category is None) else bm
        if not bsel.any():
            continue
        tree = cKDTree(np.c_[x[bsel], y[bsel]])
        cnt = tree.query_ball_point(np.c_[x[rows], y[rows]], r, return_length=True).astype(np.int64)
        out[gsel] = cnt - bsel[rows].astype(np.int64)   # a cell that is also a b cell does not count itself
    return out


def nearest_distance_to_phenotypes(cells, *, phenotypes=None, phenotype_col="phenotype") -> pd.DataFrame:
    """Distance (µm) from every cell to the nearest cell of each phenotype.

    Columns ``dist_to_<phenotype>_um`` aligned with ``cells.index``; the
    distance to a cell's own phenotype excludes the cell itself; NaN where
    no such (other) cell exists. (phenoptr's ``find_nearest_distance``.)

    Examples
    --------
    >>> cells = pd.DataFrame({"x_um": [0, 3, 10], "y_um": [0, 4, 0], "phenotype": ["T", "T", "CK"]})
    >>> nearest_distance_to_phenotypes(cells)["dist_to_T_um"].tolist()
    [5.0, 5.0, 8.06225774829855]
    """
    x, y, codes, types = _table_xy_types(cells, phenotype_col, None)
    wanted = types if phenotypes is None else [str(p) for p in ([phenotypes] if isinstance(phenotypes, str)
                                                               else phenotypes)]
    xy = np.c_[x, y]
    out = {}
    for name in wanted:
        t = types.index(name) if name in types else -1
        m = codes == t
        col = np.full(x.size, np.nan)
        if m.any():
            tree = cKDTree(xy[m])
            # workers=-1: queries are independent, so threads give the same numbers
            d1, _ = tree.query(xy[~m], k=1, workers=-1)
            col[~m] = d1
            if m.sum() >= 2:
                d2, _ = tree.query(xy[m], k=2, workers=-1)
                col[m] = d2[:, 1]   # nearest is the cell itself (distance 0)
        out[f"dist_to_{name}_um"] = col
    return pd.DataFrame(out, index=cells.index)


def co_occurrence(cells, intervals_um, *, phenotype_col="phenotype", progress=None, mode="cumulative",
                  categories=None) -> pd.DataFrame:
    """Co-occurrence ratio p(b | a within distance) / p(b), squidpy's definition, via neighbour pairs.

    For each distance step the ordered pairs of distinct cells are counted
    by phenotype, ``n_ab``; ``value(a, b) = (n_ab / Σ_c n_ac) / (Σ_c n_bc / Σ_cd n_cd)``.
    ``mode="cumulative"`` (default, squidpy >= 1.6 behaviour, exactly the
    same numbers): pairs with d <= ``intervals_um[k+1]`` (the first edge is
    only a lower label); ``mode="interval"``: pairs with
    ``intervals_um[k] < d <= intervals_um[k+1]`` (squidpy <= 1.5 annuli).
    Only pairs up to ``max(intervals_um)`` are visited (cell list), so time
    and memory are linear in cells, unlike squidpy's all-pairs loop.
    Undefined ratios (no pair for a, or p(b) = 0) are NaN (squidpy returns 0).

    Returns
    -------
    pandas.DataFrame
        ``type_a`` (conditioning), ``type_b``, ``r_min_um``, ``r_max_um``,
        ``value``, ``count`` (n_ab).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cells = pd.DataFrame({"x_um": rng.uniform(0, 200, 300), "y_um": rng.uniform(0, 200, 300),
    ...                       "phenotype": rng.choice(["A", "B"], 300)})
    >>> co_occurrence(cells, [0, 20, 40]).shape
    (8, 6)
    """
    if mode not in ("cumulative", "interval"):
        raise InputError(f"mode={mode!r}: expected 'cumulative' or 'interval'")
    edges = np.asarray(intervals_um, dtype=np.float64).ravel()
    if edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0) or edges[0] < 0:
        raise InputError("intervals_um: expected >= 2 strictly increasing, finite, non-negative distances (µm)")
    x, y, codes, cats = _table_xy_types(cells, phenotype_col, categories)
    sel = codes >= 0
    x, y, codes = x[sel], y[sel], codes[sel]
    K = len(cats)
    radii = edges.copy()
    report(progress, "co-occurrence pairs", 0, 1)
    grid = _cell_list(x, y, float(edges[-1]))
    dummy2 = np.ones((2, 2))
    hist = _pair_hist(grid.xs, grid.ys, np.ascontiguousarray(codes[grid.order]).astype(np.int64),
                      np.full(x.size, np.inf), np.full(x.size, -1, np.int64), grid.start, grid.nx, grid.ny,
                      int(K), radii * radii, float(edges[-1]) ** 2, radii, 0.0, 0, np.zeros(4), dummy2, 1.0,
                      dummy2, 1.0, 0.0, 1.0, _n_chunks())
    report(progress, "co-occurrence pairs", 1, 1)
    cnt = np.rint(hist).astype(np.int64)          # bin k: (edges[k-1], edges[k]]
    if mode == "cumulative":
        cnt = np.cumsum(cnt, axis=2)[:, :, 1:]
        rmin = np.zeros(edges.size - 1)
    else:
        cnt = cnt[:, :, 1:]
        rmin = edges[:-1]
    rmax = edges[1:]
    c = cnt.astype(np.float64)
    row = c.sum(axis=1)                       # row[a, k] = Σ_b n_ab
    tot = row.sum(axis=0)                     # Σ_ab n_ab
    with np.errstate(divide="ignore", invalid="ignore"):
        pb = row / tot[None, :]               # p(b) (counts are symmetric)
        val = (c / row[:, None, :]) / pb[None, :, :]
    val[~np.isfinite(val)] = np.nan
    a, b, k = np.meshgrid(np.arange(K), np.arange(K), np.arange(rmax.size), indexing="ij")
    cats_o = np.asarray(cats, dtype=object)
    return pd.DataFrame({"type_a": cats_o[a.ravel()], "type_b": cats_o[b.ravel()],
                         "r_min_um": rmin[k.ravel()], "r_max_um": rmax[k.ravel()],
                         "value": val.ravel(), "count": cnt.ravel()})
