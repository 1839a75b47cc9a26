"""Neighbourhood statistics over cell neighbour pairs (µm): spatial graphs,
neighbourhood enrichment with exact permutation moments, mixing score,
counts within a radius, nearest distance to each phenotype, co-occurrence.

All pair searches use cell lists / KD-trees (no all-pairs matrices), so
memory grows linearly with the number of cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import njit, prange
from scipy.spatial import cKDTree

from tibspace.errors import InputError, positive_um
from tibspace.stats.pointpattern import _as_xy, _cell_list, _pair_hist, _table_xy_types, neighbour_pairs
from tibspace.progress import report

__all__ = [
    "spatial_graph", "NeighbourhoodEnrichment", "neighbourhood_enrichment", "join_count_moments",
    "mixing_score", "counts_within", "nearest_distance_to_phenotypes", "co_occurrence",
]


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
        r = float(radius_um)
        if not (np.isfinite(r) and r > 0):
            raise InputError(f"radius_um must be a positive number of µm (got {radius_um})")
        i, j = neighbour_pairs(x, y, r)
    elif method == "knn":
        k = int(k)
        if k < 1:
            raise InputError(f"k must be >= 1 (got {k})")
        if n < 2:
            return sp.csr_matrix((n, n), dtype=np.float32)
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
        i, j = key // n, key % n
    elif method == "delaunay":
        from scipy.spatial import Delaunay, QhullError
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
    else:
        raise InputError(f"method={method!r}: expected 'radius', 'knn' or 'delaunay'")
    data = np.hypot(x[i] - x[j], y[i] - y[j]) if weights == "distance" else None
    return _pairs_to_csr(i.astype(np.int64), j.astype(np.int64), n, data)


# --------------------------------------------------------------------------
# Neighbourhood enrichment
# --------------------------------------------------------------------------
@dataclass
class NeighbourhoodEnrichment:
    """Type–type neighbour counts and their permutation null.

    Attributes
    ----------
    categories : list of str
        Phenotypes, in matrix order.
    counts : numpy.ndarray
        ``counts[a, b]`` = number of (a cell, b neighbour) ordered pairs, i.e.
        every undirected edge counted in both directions (squidpy's count
        matrix: a–a edges count twice on the diagonal).
    expected, sd : numpy.ndarray
        Mean and standard deviation of the counts under random permutation of
        the labels (exact, or Monte-Carlo with ``n_perm`` permutations).
    zscore : numpy.ndarray
        ``(counts - expected) / sd`` (NaN where sd == 0).
    method : str
    n_perm : int or None
    seed : int or None
    """

    categories: list
    counts: np.ndarray
    expected: np.ndarray
    sd: np.ndarray
    zscore: np.ndarray
    method: str
    n_perm: Optional[int] = None
    seed: Optional[int] = None
    n_edges: int = 0
    parameters: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: ``type_a, type_b, count, expected, sd, zscore``.

        Examples
        --------
        >>> ne = NeighbourhoodEnrichment(["A"], np.array([[2.0]]), np.array([[2.0]]),
        ...                              np.array([[0.0]]), np.array([[np.nan]]), "exact")
        >>> ne.to_frame().columns.tolist()
        ['type_a', 'type_b', 'count', 'expected', 'sd', 'zscore']
        """
        K = len(self.categories)
        a, b = np.meshgrid(np.arange(K), np.arange(K), indexing="ij")
        cats = np.asarray(self.categories, dtype=object)
        return pd.DataFrame({"type_a": cats[a.ravel()], "type_b": cats[b.ravel()],
                             "count": self.counts.ravel(), "expected": self.expected.ravel(),
                             "sd": self.sd.ravel(), "zscore": self.zscore.ravel()})


def _ff(x, k):
    """Falling factorial x (x-1) ... (x-k+1) as float (array-friendly)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.ones_like(x)
    for t in range(k):
        out = out * (x - t)
    return out


def join_count_moments(sizes, n_directed_edges, sum_deg_sq):
    """Exact mean and variance of the join-count matrix under random labelling.

    Labels with fixed category sizes are assigned to the n nodes of a
    symmetric graph without self-loops by a uniformly random permutation.
    ``C_ab = Σ_{(u,v) directed edge} 1[L_u=a] 1[L_v=b]`` (each undirected
    edge in both directions, squidpy's convention). With D = number of
    directed edges (= 2E), S2 = Σ_u d_u (d_u − 1) and N4 = D² − 2D − 4 S2
    (ordered pairs of directed edges on four distinct nodes), and
    ``x^(k)`` the falling factorial, the pairs of directed edges split into
    identical (D), reversed (D), sharing one node in one of four positions
    (S2 each) and disjoint (N4); hence

    - a ≠ b: E C = D n_a n_b / n^(2);
      E C² = D n_a n_b / n^(2) + S2 [n_a n_b^(2) + n_a^(2) n_b] / n^(3)
      + N4 n_a^(2) n_b^(2) / n^(4)
    - a = b: E C = D n_a^(2) / n^(2);
      E C² = 2D n_a^(2) / n^(2) + 4 S2 n_a^(3) / n^(3) + N4 n_a^(4) / n^(4)

    (Cliff & Ord's BB/BW join counts generalised to k colours, sampling
    without replacement.)

    Parameters
    ----------
    sizes : array_like
        Number of cells per category (n = sum).
    n_directed_edges : int
        D = nnz of the symmetric adjacency.
    sum_deg_sq : float
        Σ_u d_u².

    Returns
    -------
    mean, var : numpy.ndarray
        ``(K, K)`` arrays.

    Examples
    --------
    >>> m, v = join_count_moments([2, 2], 8, 16)   # 4-cycle
    >>> m.tolist()
    [[1.3333333333333333, 2.6666666666666665], [2.6666666666666665, 1.3333333333333333]]
    """
    s = np.asarray(sizes, dtype=np.float64)
    n = s.sum()
    D = float(n_directed_edges)
    S2 = float(sum_deg_sq) - D
    N4 = D * D - 2 * D - 4 * S2
    n2, n3, n4 = _ff(n, 2), _ff(n, 3), _ff(n, 4)
    inv = lambda num, den: num / den if den > 0 else np.zeros_like(num)  # noqa: E731
    na, nb = s[:, None], s[None, :]
    p2 = inv(na * nb, n2)
    mean = D * p2
    ex2 = D * p2 + S2 * inv(na * _ff(nb, 2) + _ff(na, 2) * nb, n3) + N4 * inv(_ff(na, 2) * _ff(nb, 2), n4)
    d = np.diag_indices(s.size)
    mean[d] = D * inv(_ff(s, 2), n2)
    ex2[d] = 2 * D * inv(_ff(s, 2), n2) + 4 * S2 * inv(_ff(s, 3), n3) + N4 * inv(_ff(s, 4), n4)
    var = np.maximum(ex2 - mean * mean, 0.0)
    # Rounding: relative noise ~1e-16 * E C²; zero out variances that are pure noise.
    var[var < 1e-12 * np.maximum(ex2, 1.0)] = 0.0
    return mean, var


@njit(parallel=True, cache=True)
def _csr_type_counts(indptr, indices, codes, K, n_chunks):
    n = indptr.shape[0] - 1
    out = np.zeros((n_chunks, K, K), dtype=np.int64)
    step = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        for i in range(c * step, min(n, (c + 1) * step)):
            ci = codes[i]
            for p in range(indptr[i], indptr[i + 1]):
                out[c, ci, codes[indices[p]]] += 1
    return out.sum(axis=0)


@njit(parallel=True, cache=True)
def _perm_type_counts(indptr, indices, labels, K):
    m = labels.shape[0]
    n = indptr.shape[0] - 1
    out = np.zeros((m, K, K), dtype=np.int64)
    for s in prange(m):
        lab = labels[s]
        for i in range(n):
            ci = lab[i]
            for p in range(indptr[i], indptr[i + 1]):
                out[s, ci, lab[indices[p]]] += 1
    return out


@njit(parallel=True, cache=True)
def _radius_counts_kernel(xs, ys, codes, start, nx, ny, r2, K, n_chunks):
    """Type-pair counts (every undirected edge in both directions) and degrees
    of the radius graph, visiting each pair once (half stencil).

    Degrees of both endpoints are incremented; a row only touches itself and
    the next row, so even rows and then odd rows are processed in parallel
    (two colours) and no two threads ever write the same degree.
    """
    n = xs.shape[0]
    deg = np.zeros(n, dtype=np.int64)
    out = np.zeros((n_chunks, K, K), dtype=np.int64)
    for colour in range(2):
        n_rows = (ny - colour + 1) // 2
        for ch in prange(n_chunks):
            for rr in range(ch, n_rows, n_chunks):
                cy = 2 * rr + colour
                for cx in range(nx):
                    cell = cy * nx + cx
                    for i in range(start[cell], start[cell + 1]):
                        xi = xs[i]
                        yi = ys[i]
                        ci = codes[i]
                        for nb_k in range(5):
                            ox = 0 if nb_k == 0 or nb_k == 3 else (1 if nb_k != 2 else -1)
                            oy = 0 if nb_k <= 1 else 1
                            qx = cx + ox
                            qy = cy + oy
                            if qx < 0 or qx >= nx or qy >= ny:
                                continue
                            q = qy * nx + qx
                            j0 = i + 1 if nb_k == 0 else start[q]
                            for j in range(j0, start[q + 1]):
                                dx = xs[j] - xi
                                dy = ys[j] - yi
                                if dx * dx + dy * dy <= r2:
                                    cj = codes[j]
                                    out[ch, ci, cj] += 1
                                    out[ch, cj, ci] += 1
                                    deg[i] += 1
                                    deg[j] += 1
    return out.sum(axis=0), deg


def _n_chunks():
    return max(1, min(256, 8 * numba.get_num_threads()))


def _radius_counts(x, y, codes, K, r):
    """Type-pair counts (both directions) and degrees of the radius graph, without building it."""
    grid = _cell_list(x, y, r)
    c = np.ascontiguousarray(codes[grid.order]).astype(np.int64)
    counts, deg = _radius_counts_kernel(grid.xs, grid.ys, c, grid.start, grid.nx, grid.ny, r * r, int(K),
                                        _n_chunks())
    return counts, deg


def _check_graph(graph, n):
    if not sp.issparse(graph):
        raise InputError("graph: expected a scipy.sparse adjacency matrix (e.g. from spatial_graph)")
    g = sp.csr_matrix(graph, copy=True)
    if g.shape != (n, n):
        raise InputError(f"graph has shape {g.shape} but the table has {n} cells; build it from the same table")
    g.eliminate_zeros()
    if g.diagonal().any():
        raise InputError("graph has self-loops; remove them (g.setdiag(0); g.eliminate_zeros())")
    s = (g != 0).astype(np.int8)
    if (s != s.T).nnz:
        raise InputError("graph is not symmetric; symmetrise it (g.maximum(g.T)) or use spatial_graph")
    g.sort_indices()
    return g


def neighbourhood_enrichment(cells, *, phenotype_col="phenotype", graph=None, method="exact", n_perm=1000,
                             seed=0, graph_method="radius", radius_um=30.0, k=6, progress=None,
                             categories=None) -> NeighbourhoodEnrichment:
    """Neighbourhood enrichment of phenotype pairs: observed neighbour counts vs random labelling.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``x_um``, ``y_um`` and ``phenotype_col``.
    phenotype_col : str
    graph : scipy.sparse matrix, optional
        Symmetric adjacency without self-loops (e.g. :func:`spatial_graph`);
        built with ``graph_method``/``radius_um``/``k`` if omitted. For the
        radius graph and ``method="exact"`` no graph is materialised: counts
        and degrees come straight from a cell-list pass.
    method : {"exact", "permutation"}
        ``"exact"``: the permutation mean and variance of every count in
        closed form (:func:`join_count_moments`), i.e. the limit of
        infinitely many permutations, in O(edges). ``"permutation"``:
        ``n_perm`` Monte-Carlo label permutations with ``seed`` (sd with
        ddof=0, as squidpy).
    categories : list of str, optional
        Phenotype order (default: categorical order, else sorted, as squidpy).

    Returns
    -------
    NeighbourhoodEnrichment
        With a single phenotype the counts are deterministic: expected ==
        counts, sd = 0 and zscore = NaN (no error).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cells = pd.DataFrame({"x_um": rng.uniform(0, 300, 500), "y_um": rng.uniform(0, 300, 500),
    ...                       "phenotype": rng.choice(["A", "B"], 500)})
    >>> ne = neighbourhood_enrichment(cells, radius_um=20)
    >>> ne.categories, bool(np.all(np.abs(ne.zscore) < 4))
    (['A', 'B'], True)
    """
    if method not in ("exact", "permutation"):
        raise InputError(f"method={method!r}: expected 'exact' or 'permutation'")
    x, y, codes, cats = _table_xy_types(cells, phenotype_col, categories)
    if (codes < 0).any():
        raise InputError(f"cells: {int((codes < 0).sum())} cells have a phenotype outside `categories`")
    n = x.size
    K = len(cats)
    sizes = np.bincount(codes, minlength=K)
    params = {"graph_method": graph_method if graph is None else "given", "radius_um": radius_um, "k": k}
    report(progress, "neighbour graph", 0, 1)
    if graph is None and graph_method == "radius" and method == "exact":
        r = float(radius_um)
        if not (np.isfinite(r) and r > 0):
            raise InputError(f"radius_um must be a positive number of µm (got {radius_um})")
        counts, deg = _radius_counts(x, y, codes, K, r)
        g = None
    else:
        if graph is None:
            g = spatial_graph(x, y, method=graph_method, radius_um=radius_um, k=k)
        else:
            g = _check_graph(graph, n)
        indptr = g.indptr.astype(np.int64)
        indices = g.indices.astype(np.int64)
        counts = _csr_type_counts(indptr, indices, codes, K, _n_chunks())
        deg = np.diff(indptr)
    report(progress, "neighbour graph", 1, 1)
    D = int(deg.sum())
    if method == "exact":
        mean, var = join_count_moments(sizes, D, float(np.sum(deg.astype(np.float64) ** 2)))
        sd = np.sqrt(var)
        n_perm_out, seed_out = None, None
    else:
        n_perm = int(n_perm)
        if n_perm < 2:
            raise InputError(f"n_perm must be >= 2 (got {n_perm})")
        rng = np.random.default_rng(seed)
        lab = codes.astype(np.int32)
        s1 = np.zeros((K, K))
        s2 = np.zeros((K, K))
        batch = max(1, min(n_perm, int(5e7 // max(n, 1)), 4 * numba.get_num_threads()))
        done = 0
        # running sums in float64 of integer counts (exact below 2^53)
        first = None
        while done < n_perm:
            m = min(batch, n_perm - done)
            labels = np.stack([rng.permutation(lab) for _ in range(m)])
            pc = _perm_type_counts(indptr, indices, labels, K).astype(np.float64)
            if first is None:
                first = pc[0].copy()   # shift for a numerically stable variance
            pc -= first
            s1 += pc.sum(axis=0)
            s2 += (pc * pc).sum(axis=0)
            done += m
            report(progress, "permutations", done, n_perm)
        mean = s1 / n_perm
        var = np.maximum(s2 / n_perm - mean * mean, 0.0)
        mean = mean + first
        sd = np.sqrt(var)
        n_perm_out, seed_out = n_perm, seed
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, (counts - mean) / np.where(sd > 0, sd, 1.0), np.nan)
    return NeighbourhoodEnrichment(list(cats), counts.astype(np.int64), mean, sd, z, method,
                                   n_perm_out, seed_out, n_edges=D // 2, parameters=params)


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
