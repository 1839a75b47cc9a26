"""Neighbourhood enrichment: type–type neighbour counts against random labelling.

``counts[a, b]`` is the number of directed edges (a cell, b neighbour) of a
symmetric cell graph without self-loops (squidpy's count matrix: every
undirected edge in both directions). The null permutes the phenotype labels
over the cells; its mean and variance are exact (:func:`join_count_moments`)
or Monte-Carlo, and ``zscore = (counts − mean) / sd``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import njit, prange

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.stats._inputs import _table_xy_types
from tibspace.stats._kernels import _cell_list, _half_neighbour, _n_chunks
from tibspace.stats.neighbourhood import spatial_graph

__all__ = ["NeighbourhoodEnrichment", "neighbourhood_enrichment", "join_count_moments"]


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
                            q = _half_neighbour(cx, cy, nb_k, nx, ny)
                            if q < 0:
                                continue
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
    K = len(cats)
    sizes = np.bincount(codes, minlength=K)
    params = {"graph_method": graph_method if graph is None else "given", "radius_um": radius_um, "k": k}
    report(progress, "neighbour graph", 0, 1)
    counts, deg, g = _observed_counts(x, y, codes, K, graph, graph_method, radius_um, k, method)
    report(progress, "neighbour graph", 1, 1)
    D = int(deg.sum())
    if method == "exact":
        mean, var = join_count_moments(sizes, D, float(np.sum(deg.astype(np.float64) ** 2)))
        n_perm_out, seed_out = None, None
    else:
        n_perm_out, seed_out = int(n_perm), seed
        mean, var = _permutation_moments(g, codes, K, n_perm_out, seed, progress)
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, (counts - mean) / np.where(sd > 0, sd, 1.0), np.nan)
    return NeighbourhoodEnrichment(list(cats), counts.astype(np.int64), mean, sd, z, method,
                                   n_perm_out, seed_out, n_edges=D // 2, parameters=params)


def _observed_counts(x, y, codes, K, graph, graph_method, radius_um, k, method):
    """Type-pair counts (both directions), degrees, and the graph (None when the
    exact radius path counts straight from a cell-list pass)."""
    if graph is None and graph_method == "radius" and method == "exact":
        r = float(radius_um)
        if not (np.isfinite(r) and r > 0):
            raise InputError(f"radius_um must be a positive number of µm (got {radius_um})")
        counts, deg = _radius_counts(x, y, codes, K, r)
        return counts, deg, None
    if graph is None:
        g = spatial_graph(x, y, method=graph_method, radius_um=radius_um, k=k)
    else:
        g = _check_graph(graph, x.size)
    indptr = g.indptr.astype(np.int64)
    indices = g.indices.astype(np.int64)
    counts = _csr_type_counts(indptr, indices, codes, K, _n_chunks())
    return counts, np.diff(indptr), g


def _permutation_moments(g, codes, K, n_perm, seed, progress):
    """Monte-Carlo mean and variance (ddof=0, as squidpy) of the counts over
    ``n_perm`` label permutations of the graph ``g``."""
    if n_perm < 2:
        raise InputError(f"n_perm must be >= 2 (got {n_perm})")
    indptr = g.indptr.astype(np.int64)
    indices = g.indices.astype(np.int64)
    n = codes.size
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
    return mean + first, var
