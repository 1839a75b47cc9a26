"""Random-labelling envelopes of cross statistics (cross-K, cross-L, cross-pcf).

The cell locations stay fixed and the phenotype labels are permuted (``seed``),
so inhomogeneous tissue does not create spurious association. Neighbour pairs
within the largest radius and their edge-correction weights are found once;
each simulation is then a masked weighted sum over them. For two labels the
pairs are stored as rows per cell (CSR) and 64 simulations share a pass, one
bit lane each (``_LANES``); every simulation's sums are bit-identical to a
loop over that simulation alone.

Envelope: the k-th smallest / largest simulated values,
``k = max(1, floor(alpha/2 · (n_sim + 1)))``; pointwise and global (MAD)
Monte-Carlo p-values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numba
import numpy as np
import pandas as pd
from numba import njit, prange

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.stats._inputs import _table_xy_types
from tibspace.stats._kernels import (_Grid, _accumulate, _bin_guessed, _cell_list, _count_pairs_rows, _edge_weight,
                                     _grid_pairs, _n_chunks, _pair_weights, _radii_spacing)
from tibspace.stats.edge_correction import (_EDGE_MODES, _EdgeSetup, _edge_setup, _memoised_edge_setup)
from tibspace.stats.estimators import _stoyan_bandwidth
from tibspace.stats.windows import _as_radii, _as_window, _check_inside

__all__ = ["random_labelling_envelope"]


def _labelled_sums(pi, pj, dd, wij, wji, labels, a, b, edges2, radii, kernel_h):
    """For each simulation row of ``labels``: sum over ordered pairs with
    label[i] == a and label[j] == b of their weight, binned like _pair_hist."""
    out = np.zeros((labels.shape[0], 1, 1, edges2.shape[0]))
    _labelled_sums_into(out, pi, pj, dd, wij, wji, labels, a, b, edges2, radii, kernel_h)
    return out[:, 0, 0, :]


@njit(parallel=True, cache=True)
def _labelled_sums_into(out, pi, pj, dd, wij, wji, labels, a, b, edges2, radii, kernel_h):
    """:func:`_labelled_sums` added to ``out`` (nsim, 1, 1, nb): pairs given in
    consecutive slices add up to the sums of the whole list, bit for bit."""
    nsim = labels.shape[0]
    for s in prange(nsim):
        lab = labels[s]
        h = out[s]
        for k in range(pi.shape[0]):
            li = lab[pi[k]]
            lj = lab[pj[k]]
            d = dd[k]
            if li == a and lj == b:
                _accumulate(h, 0, 0, d, d * d, wij[k], edges2, radii, kernel_h)
            if lj == a and li == b:
                _accumulate(h, 0, 0, d, d * d, wji[k], edges2, radii, kernel_h)


_LANES = 64    # simulations per bit mask (uint64)


def _lane_groups(m, n):
    """Split m simulations into groups of <= 64 (one bit mask each), one group
    per numba thread where possible so that the groups run in parallel, while
    the groups' masks (16 bytes per cell) stay within ~256 MB for n cells."""
    g = max(-(-m // _LANES), min(m, numba.get_num_threads(), max(1, int(2.5e8 // (16 * max(n, 1))))))
    return np.array([q * m // g for q in range(g + 1)], dtype=np.int64)


@njit(parallel=True, cache=True)
def _label_bits(labels, s, t, gstart, only_s_t):
    """Per group g and cell c: bit l of ``sbits[g, c]`` (``tbits[g, c]``) set when
    ``labels[gstart[g] + l, c]`` is ``s`` (``t``). ``only_s_t``: every label is
    s or t, so the t bits are the lanes' bits that are not s bits."""
    m, n = labels.shape
    G = gstart.shape[0] - 1
    sbits = np.zeros((G, n), dtype=np.uint64)
    tbits = np.zeros((G, n), dtype=np.uint64)
    blk = 4096     # a block of masks stays in L1 while the label rows stream past
    nblk = (n + blk - 1) // blk
    for gb in prange(G * nblk):
        g = gb // nblk
        c0 = (gb % nblk) * blk
        c1 = min(n, c0 + blk)
        sg = sbits[g]
        tg = tbits[g]
        for q in range(gstart[g], gstart[g + 1]):
            sh = np.uint64(q - gstart[g])
            row = labels[q]
            for c in range(c0, c1):
                sg[c] |= np.uint64(row[c] == s) << sh
            if not only_s_t:
                for c in range(c0, c1):
                    tg[c] |= np.uint64(row[c] == t) << sh
        if only_s_t:
            lanes = gstart[g + 1] - gstart[g]
            full = ~np.uint64(0) if lanes == 64 else (np.uint64(1) << np.uint64(lanes)) - np.uint64(1)
            for c in range(c0, c1):
                tg[c] = full & ~sg[c]
    return sbits, tbits


def _labelled_sums_lanes(rowptr, other, w, binidx, sbits, tbits, gstart, nb):
    """For each simulation (group g, lane l): sum of ``w`` over the directed
    entries (row cell c, other cell o) with bit l set in ``sbits[g, c]`` and in
    ``tbits[g, o]``, binned by ``binidx``.

    The simulations of a group share one pass over the rows (the CSR is read
    once per group, not once per simulation) and are updated together, one
    vector lane each (absent entries add +0.0, which leaves a sum of positive
    weights bit-identical); groups run in parallel. Every simulation adds its
    entries in row order then entry order, as a loop over that simulation
    alone would, so its sums are bit-identical to that loop's.
    """
    acc = _lane_accumulator(gstart, nb)
    _lanes_add(acc, rowptr, other, w, binidx, sbits, tbits, gstart, 0)
    return _lanes_out(acc, gstart)


def _lane_accumulator(gstart, nb):
    """Zeroed sums (group, bin, lane) for :func:`_lanes_add`."""
    return np.zeros((gstart.size - 1, nb, max(1, int(np.diff(gstart).max()))))


@njit(parallel=True, cache=True)
def _lanes_add(acc, rowptr, other, w, binidx, sbits, tbits, gstart, c0):
    """Add to ``acc`` the entries of the CSR rows of cells ``c0, c0 + 1, ...``
    (see :func:`_labelled_sums_lanes`): rows given in consecutive blocks add
    up to the sums over all rows, bit for bit."""
    n = rowptr.shape[0] - 1
    G = gstart.shape[0] - 1
    L = acc.shape[2]
    one = np.uint64(1)
    for g in prange(G):
        h = acc[g]
        for r in range(n):
            sc = sbits[g, c0 + r]
            if sc == 0:
                continue
            for e in range(rowptr[r], rowptr[r + 1]):
                hit = sc & tbits[g, other[e]]
                if hit == 0:
                    continue
                we = w[e]
                hk = h[binidx[e]]
                for l in range(L):
                    hk[l] += we if (hit >> np.uint64(l)) & one else 0.0


def _lanes_out(acc, gstart):
    """Sums per simulation (row q = simulation ``gstart[g] + lane``) from the accumulator."""
    G = gstart.size - 1
    out = np.empty((int(gstart[G]), acc.shape[1]))
    for g in range(G):
        out[gstart[g]:gstart[g + 1]] = acc[g, :, :gstart[g + 1] - gstart[g]].T
    return out


def _labelled_sums_rows(csr, labels, s, t, nb, only_s_t=False):
    """For each simulation row of ``labels``: sum of the CSR weights over the
    directed entries (row cell c, other cell o) with label[c] == s and
    label[o] == t, binned (see :func:`_rows_by_label_side`). ``only_s_t``:
    the labels are all s or t (a faster bit packing)."""
    rowptr, other, w, binidx = csr
    gstart = _lane_groups(labels.shape[0], labels.shape[1])
    sbits, tbits = _label_bits(labels, s, t, gstart, bool(only_s_t))
    return _labelled_sums_lanes(rowptr, other, w, binidx, sbits, tbits, gstart, nb)


def _labelled_sums_row_blocks(make_csr, blocks, labels, s, t, nb, only_s_t=False):
    """:func:`_labelled_sums_rows` over the CSR built block by block
    (``make_csr(c0, c1)``: the rows of cells c0..c1-1), so that only one
    block's entries are in memory; the same sums, bit for bit."""
    gstart = _lane_groups(labels.shape[0], labels.shape[1])
    sbits, tbits = _label_bits(labels, s, t, gstart, bool(only_s_t))
    acc = _lane_accumulator(gstart, nb)
    for c0, c1 in blocks:
        rowptr, other, w, binidx = make_csr(c0, c1)
        _lanes_add(acc, rowptr, other, w, binidx, sbits, tbits, gstart, c0)
    return _lanes_out(acc, gstart)


@njit(parallel=True, cache=True)
def _row_bounds(xs, ys, order, start, nx, ny, reach2, n_chunks):
    """Per cell (original index): number of other points within reach (3 x 3
    cells). Grid rows are interleaved over chunks so that clustered cells
    balance across threads."""
    n = xs.shape[0]
    cnt = np.zeros(n, dtype=np.int64)
    for ch in prange(n_chunks):
        for cy in range(ch, ny, n_chunks):
            for cx in range(nx):
                for p in range(start[cy * nx + cx], start[cy * nx + cx + 1]):
                    c = 0
                    for qy in range(max(cy - 1, 0), min(cy + 2, ny)):
                        for qx in range(max(cx - 1, 0), min(cx + 2, nx)):
                            for q in range(start[qy * nx + qx], start[qy * nx + qx + 1]):
                                dx = xs[q] - xs[p]
                                dy = ys[q] - ys[p]
                                if dx * dx + dy * dy <= reach2 and q != p:
                                    c += 1
                    cnt[order[p]] = c
    return cnt


@njit(parallel=True, cache=True)
def _fill_rows(xs, ys, bnd, tidx, order, start, nx, ny, reach2, edges2, r0, inv_step, uniform, centre_side,
               mode, rect, iso_tab, iso_R, cov, cov_step, cov_P, cov0, rowptr, other, w, bins, used, n_chunks,
               c0, c1):
    """Fill the rows of cells ``c0 <= c < c1`` of :func:`_rows_by_label_side`
    (offsets ``rowptr``, from 0 at row c0); ``used`` gets each row's entry
    count (below its bound when a distance rounds into no bin)."""
    nb = edges2.shape[0]
    for ch in prange(n_chunks):
        for cy in range(ch, ny, n_chunks):
            for cx in range(nx):
                for p in range(start[cy * nx + cx], start[cy * nx + cx + 1]):
                    r = order[p] - c0
                    if r < 0 or r >= c1 - c0:
                        continue
                    e = rowptr[r]
                    cap = rowptr[r + 1] - e      # the row's bound (never written past)
                    c = 0
                    for qy in range(max(cy - 1, 0), min(cy + 2, ny)):
                        for qx in range(max(cx - 1, 0), min(cx + 2, nx)):
                            for q in range(start[qy * nx + qx], start[qy * nx + qx + 1]):
                                dx = xs[q] - xs[p]
                                dy = ys[q] - ys[p]
                                if dx * dx + dy * dy > reach2 or q == p or c >= cap:
                                    continue
                                # _pair_weights' arithmetic for the pair (i, j) = (min, max): its
                                # x[j] - x[i] is +-dx exactly (IEEE subtraction is antisymmetric), so
                                # d, and the offset from either centre, are bit for bit the same
                                d = math.sqrt(dx * dx + dy * dy)
                                k = _bin_guessed(d, d * d, edges2, r0, inv_step, uniform)
                                if k >= nb:
                                    continue
                                # the centre weighs the pair by its own circle
                                if centre_side:
                                    wt = _edge_weight(mode, xs[p], ys[p], bnd[p], tidx[p], d, dx, dy, rect,
                                                      iso_tab, iso_R, cov, cov_step, cov_P, cov0)
                                else:
                                    wt = _edge_weight(mode, xs[q], ys[q], bnd[q], tidx[q], d, -dx, -dy, rect,
                                                      iso_tab, iso_R, cov, cov_step, cov_P, cov0)
                                other[e + c] = order[q]
                                w[e + c] = wt
                                bins[e + c] = k
                                c += 1
                    used[r] = c


def _row_counts(grid: _Grid, reach):
    """Per cell (original index): number of other cells within ``reach`` (sums to twice the pairs)."""
    return _row_bounds(grid.xs, grid.ys, grid.order, grid.start, grid.nx, grid.ny, float(reach) ** 2, _n_chunks())


def _rows_by_label_side(grid: _Grid, es: _EdgeSetup, radii, centre_side, row_counts, c0=0, c1=None):
    """Directed neighbour entries grouped by row cell (CSR) for :func:`_labelled_sums_rows`.

    Rows are the cells in their original order. ``centre_side=True``: rows
    are the centres of the statistic (weight ``w(row -> other)``); ``False``:
    rows are the partners (weight ``w(other -> row)``, the centre's weight).
    Each entry keeps its radius bin ``k`` (smallest k with d² <= r_k², d the
    rounded distance, as :func:`_bin_of`), so a simulation is a masked sum
    with no distance work.

    Entries come from the cell list directly (no pair list, two parallel
    passes). Row ``order[p]`` lists the points q within reach of sorted
    position p in increasing q (the 3 x 3 cells around p's cell in row-major
    order), which is the order in which the pair list of
    :func:`neighbour_pairs` (increasing (i, j), i < j) meets p's pairs: each
    row, and so every sum over the rows, is bit-identical to a CSR filled
    from that list. ``c0, c1``: only the rows of cells c0..c1-1 (default all).
    """
    c1 = grid.xs.size if c1 is None else int(c1)
    n = c1 - int(c0)
    rowptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_counts[c0:c1], out=rowptr[1:])
    other = np.empty(rowptr[-1], dtype=np.int32)
    w = np.empty(rowptr[-1], dtype=np.float64)
    bins = np.empty(rowptr[-1], dtype=np.uint8 if radii.size < 256 else np.int32)
    used = np.empty(n, dtype=np.int64)
    bnd, tidx = es.kernel_args(grid.order)
    uniform, r0, inv_step = _radii_spacing(radii)
    # float(reach) ** 2 as _row_counts (and neighbour_pairs) square it
    _fill_rows(grid.xs, grid.ys, bnd, tidx, grid.order, grid.start, grid.nx, grid.ny, float(es.reach) ** 2,
               radii * radii, r0, inv_step, uniform, bool(centre_side), es.mode, es.rect, es.iso_tab, es.reach,
               es.cov, es.cov_step, es.cov_P, es.cov0, rowptr, other, w, bins, used, _n_chunks(), int(c0), c1)
    if used.sum() < rowptr[-1]:
        # a distance within reach whose square rounds past the last radius: drop the gaps
        keep = np.arange(rowptr[-1]) - np.repeat(rowptr[:-1], np.diff(rowptr)) < np.repeat(used, np.diff(rowptr))
        other, w, bins = other[keep], w[keep], bins[keep]
        rowptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(used, out=rowptr[1:])
    return rowptr, other, w, bins


def random_labelling_envelope(cells, statistic="cross_L", type_a=None, type_b=None, radii_um=None,
                              window=None, n_sim=199, seed=0, phenotype_col="phenotype", alpha=0.05, *,
                              edge_correction="isotropic", population="pair", bandwidth_um=None,
                              outside="error", progress=None, max_pairs=25_000_000) -> pd.DataFrame:
    """Envelope of a cross statistic under random labelling (locations fixed, labels permuted).

    Random labelling, not CSR: the cell locations are kept and the phenotype
    labels permuted, so inhomogeneous tissue does not create spurious
    association. ``population="pair"`` (default, Diggle's bivariate random
    labelling) permutes the a/b labels among the a ∪ b cells only, so it asks
    whether a sits closer to b than b-or-a cells sit to each other;
    ``population="all"`` permutes the labels of all cells in the table.

    Neighbour pairs within max(r) (+ bandwidth for pcf) and their
    edge-correction weights are computed once; each simulation is a weighted
    sum over pairs whose permuted labels match.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``x_um``, ``y_um``, ``phenotype_col``.
    statistic : {"cross_L", "cross_K", "cross_pcf"}
    type_a, type_b : str
        Phenotypes (a == b gives the univariate statistic of a).
    radii_um : array_like
        Strictly increasing radii (µm).
    window : tuple or shapely Polygon
    n_sim : int
        Number of permutations (199 gives a 5 % two-sided pointwise envelope).
    seed : int
    alpha : float
        Two-sided level of the pointwise envelope.
    edge_correction : {"isotropic", "translation", "none"}
    population : {"pair", "all"}
        Which cells' labels are permuted (see above).
    bandwidth_um : float, optional
        Kernel half-width for ``"cross_pcf"`` (default Stoyan's rule).
    max_pairs : int
        Up to this many neighbour pairs are stored once; above, they are
        built in blocks of at most ``max_pairs`` for every batch of
        simulations (memory bounded by the block; the same numbers).

    Returns
    -------
    pandas.DataFrame
        ``r_um, value, mean, lo, hi, p_value, p_global`` where ``lo``/``hi`` are
        the k-th smallest / largest simulated values with
        k = max(1, floor(alpha/2 · (n_sim + 1))) (pointwise envelope),
        ``p_value`` the two-sided pointwise Monte-Carlo rank p per r,
        ``min(1, 2 · min(1 + #sim >= obs, 1 + #sim <= obs) / (n_sim + 1))``,
        and ``p_global`` the global MAD test over all r: deviation
        ``T = max_r |S(r) − mean_sim(r)|``, ``p = (1 + #T_sim >= T_obs) / (n_sim + 1)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cells = pd.DataFrame({"x_um": rng.uniform(0, 300, 400), "y_um": rng.uniform(0, 300, 400),
    ...                       "phenotype": rng.choice(["A", "B"], 400)})
    >>> env = random_labelling_envelope(cells, "cross_L", "A", "B", [10, 20], (0, 0, 300, 300), n_sim=19)
    >>> list(env.columns)
    ['r_um', 'value', 'mean', 'lo', 'hi', 'p_value', 'p_global']
    """
    n_sim = _check_envelope_args(statistic, type_a, type_b, radii_um, population, n_sim, alpha, edge_correction)
    win = _as_window(window)
    radii = _as_radii(radii_um, win)
    pts = _envelope_points(cells, phenotype_col, type_a, type_b, win, outside, population)
    kernel_h = 0.0
    if statistic == "cross_pcf":
        kernel_h = float(bandwidth_um) if bandwidth_um is not None else _stoyan_bandwidth(pts.n_b, win.area)
    reach = float(radii[-1] + kernel_h)
    es = _envelope_edge_setup(pts, win, edge_correction, reach)
    rng = np.random.default_rng(seed)
    stat_hist, batch = _simulation_kernel(pts, es, radii, kernel_h, reach, population, max_pairs, n_sim, progress)
    obs, sims = _simulate(stat_hist, pts, radii.size, n_sim, batch, rng, progress)
    value = _statistic_from_hist(obs, statistic, win.area, radii, pts)
    sim_v = _statistic_from_hist(sims, statistic, win.area, radii, pts)
    return _envelope_table(radii, value, sim_v, alpha)


def _check_envelope_args(statistic, type_a, type_b, radii_um, population, n_sim, alpha, edge_correction):
    """The envelope's scalar arguments checked; returns ``n_sim`` as an int."""
    if statistic not in ("cross_L", "cross_K", "cross_pcf"):
        raise InputError(f"statistic={statistic!r}: expected 'cross_L', 'cross_K' or 'cross_pcf'")
    if type_a is None or type_b is None or radii_um is None:
        raise InputError("random_labelling_envelope needs type_a, type_b and radii_um")
    if population not in ("pair", "all"):
        raise InputError(f"population={population!r}: expected 'pair' or 'all'")
    n_sim = int(n_sim)
    if n_sim < 1:
        raise InputError(f"n_sim must be >= 1 (got {n_sim})")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1) (got {alpha})")
    if edge_correction not in _EDGE_MODES:
        raise InputError(f"edge_correction={edge_correction!r}: expected one of {sorted(_EDGE_MODES)}")
    return n_sim


@dataclass
class _EnvelopePoints:
    """The cells whose labels are permuted, and the statistic's two types."""
    x: np.ndarray
    y: np.ndarray
    codes: np.ndarray          # phenotype code per cell
    n_types: int               # number of phenotype codes in the table
    a: int
    b: int
    n_a: int
    n_b: int
    x_in: np.ndarray           # all cells in the window (their setup may be memoised)
    y_in: np.ndarray
    pair: Optional[np.ndarray]  # cells of a or b among them (population="pair"), else None

    @property
    def same(self) -> bool:
        return self.a == self.b

    @property
    def n_b_partners(self) -> int:
        """b points per a point: n_b − 1 for the univariate statistic."""
        return self.n_b - 1 if self.same else self.n_b


def _envelope_points(cells, phenotype_col, type_a, type_b, win, outside, population) -> _EnvelopePoints:
    x, y, codes, types = _table_xy_types(cells, phenotype_col, None)
    for t in (type_a, type_b):
        if str(t) not in types:
            raise InputError(f"cells: phenotype {t!r} not found in column {phenotype_col!r} (have {types[:12]})")
    a = types.index(str(type_a))
    b = types.index(str(type_b))
    keep = _check_inside(win, x, y, outside, "cells")
    x, y, codes = x[keep], y[keep], codes[keep]
    x_in, y_in = x, y
    pair = None
    if population == "pair":
        pair = (codes == a) | (codes == b)
        x, y, codes = x[pair], y[pair], codes[pair]
    n_a = int((codes == a).sum())
    n_b = int((codes == b).sum())
    if n_a < 1 or n_b < (2 if a == b else 1):
        raise InputError(f"random_labelling_envelope: too few cells of {type_a!r} ({n_a}) or {type_b!r} ({n_b})")
    return _EnvelopePoints(x, y, codes, len(types), a, b, n_a, n_b, x_in, y_in, pair)


def _envelope_edge_setup(pts: _EnvelopePoints, win, edge_correction, reach) -> _EdgeSetup:
    """Edge setup of the permuted cells: their rows of the memoised setup of
    all cells in the window when there is one (cross_l_all_pairs on the same
    table, window and reach), else computed on them."""
    es = _memoised_edge_setup(pts.x_in, pts.y_in, win, edge_correction, reach)
    if es is None:
        return _edge_setup(pts.x, pts.y, win, edge_correction, reach)
    return es.subset(pts.pair) if pts.pair is not None else es


def _simulation_kernel(pts: _EnvelopePoints, es, radii, kernel_h, reach, population, max_pairs, n_sim, progress):
    """``stat_hist(labels)`` (per labelling row: the statistic's binned pair
    weights) and the batch size. Up to ``max_pairs`` neighbour pairs are
    stored once; above, they stream in blocks of at most ``max_pairs`` pairs
    (rebuilt for every batch of simulations), with the same sums bit for bit."""
    grid = _cell_list(pts.x, pts.y, reach)
    report(progress, "neighbour pairs", 0, 1)
    two_labels = kernel_h == 0.0 and population == "pair" and not pts.same
    r2 = float(reach) ** 2                          # as neighbour_pairs squares it
    if two_labels:
        row_counts = _row_counts(grid, reach)       # per cell: its directed entries
        n_pairs = int(row_counts.sum()) // 2
        stat_hist = _row_kernel(grid, es, radii, pts, row_counts, _blocks(row_counts, 2 * max_pairs))
        # a batch's one-byte labels take n_cells bytes per simulation (at most ~256 MB)
        batch = max(1, min(n_sim, _LANES * numba.get_num_threads(), int(2.5e8 // max(pts.x.size, 1))))
    else:
        row_counts = _count_pairs_rows(grid.xs, grid.ys, grid.start, grid.nx, grid.ny, r2)   # per grid row
        n_pairs = int(row_counts.sum())
        blocks = _blocks(row_counts, max_pairs)
        stat_hist = _pair_kernel(grid, es, radii, kernel_h, reach, pts, r2, row_counts, blocks)
        batch = max(1, min(n_sim, int(2e8 // max(n_pairs + pts.x.size, 1)), 64))
        if len(blocks) > 1:     # pairs rebuilt per batch: batches as large as the labels allow
            batch = max(1, min(n_sim, 64, int(2.5e8 // max(pts.x.size, 1))))
    report(progress, "neighbour pairs", 1, 1)
    return stat_hist, batch


def _blocks(counts, budget):
    """Consecutive ranges [i0, i1) of ``counts`` each summing to at most ``budget``
    (or holding one item that alone exceeds it); one range when the total fits."""
    n = len(counts)
    cum = np.cumsum(counts)
    out, i0 = [], 0
    while i0 < n:
        base = cum[i0 - 1] if i0 else 0
        i1 = max(i0 + 1, int(np.searchsorted(cum, base + budget, side="right")))
        out.append((i0, min(i1, n)))
        i0 = i1
    return out or [(0, 0)]


def _row_kernel(grid, es, radii, pts: _EnvelopePoints, row_counts, blocks):
    """Two labels only (a, b): visit the rows of the rarer label and sum the
    weights of their neighbours carrying the other label (26 bytes/pair),
    stored when ``blocks`` (ranges of cells) is one range, else built block by block.
    Same sums as :func:`_pair_kernel`, in another order (equal to ~1e-15 relative)."""
    s_lab, t_lab = (pts.a, pts.b) if pts.n_a <= pts.n_b else (pts.b, pts.a)
    centre_side = s_lab == pts.a
    if len(blocks) == 1:
        csr = _rows_by_label_side(grid, es, radii, centre_side, row_counts)

        def stat_hist(labels):
            return _labelled_sums_rows(csr, labels, s_lab, t_lab, radii.size, only_s_t=True)
        return stat_hist

    def make_csr(c0, c1):
        return _rows_by_label_side(grid, es, radii, centre_side, row_counts, c0, c1)

    def stat_hist(labels):
        return _labelled_sums_row_blocks(make_csr, blocks, labels, s_lab, t_lab, radii.size, only_s_t=True)
    return stat_hist


def _pair_kernel(grid, es, radii, kernel_h, reach, pts: _EnvelopePoints, r2, row_counts, blocks):
    """Pairs and weights (40 bytes/pair), stored when ``blocks`` (ranges of grid
    rows) is one range, else built block by block; each simulation is a masked
    weighted sum over them."""
    def pairs(row0, row1):
        pi, pj = _grid_pairs(grid, r2, row_counts, row0, row1)
        return (pi, pj, *_pair_weights(pts.x, pts.y, pi, pj, es.bnd, es.tidx, es.mode, es.rect, es.iso_tab,
                                       reach, es.cov, es.cov_step, es.cov_P, es.cov0))

    stored = pairs(*blocks[0]) if len(blocks) == 1 else None

    def stat_hist(labels):
        out = np.zeros((labels.shape[0], 1, 1, radii.size))
        for block in blocks:
            pi, pj, dd, wij, wji = stored if stored is not None else pairs(*block)
            _labelled_sums_into(out, pi, pj, dd, wij, wji, labels, pts.a, pts.b, radii * radii, radii, kernel_h)
        return out[:, 0, 0, :]
    return stat_hist


def _simulate(stat_hist, pts: _EnvelopePoints, n_radii, n_sim, batch, rng, progress):
    """Observed binned sums and those of ``n_sim`` label permutations, in batches."""
    # Generator.permutation draws the same random numbers whatever the dtype of a
    # 1-D array, so one-byte codes give the same labellings, faster, and they are
    # cache-friendlier in the kernels.
    lab_codes = pts.codes.astype(np.int8) if pts.n_types <= 127 else pts.codes
    obs = stat_hist(lab_codes[None, :])[0]
    sims = np.empty((n_sim, n_radii))
    done = 0
    while done < n_sim:
        m = min(batch, n_sim - done)
        labels = np.empty((m, lab_codes.size), dtype=lab_codes.dtype)
        for q in range(m):
            labels[q] = rng.permutation(lab_codes)
        sims[done:done + m] = stat_hist(labels)
        done += m
        report(progress, "random labelling", done, n_sim)
    return obs, sims


def _statistic_from_hist(h, statistic, area, radii, pts: _EnvelopePoints):
    """cross_K / cross_L / cross_pcf from binned pair weights (last axis: radii)."""
    nbp = pts.n_b_partners
    if statistic == "cross_pcf":
        return area * h / (2 * np.pi * radii * pts.n_a * nbp)
    k = area * np.cumsum(h, axis=-1) / (pts.n_a * nbp)
    return k if statistic == "cross_K" else np.sqrt(np.maximum(k, 0) / np.pi)


def _envelope_table(radii, value, sim_v, alpha) -> pd.DataFrame:
    """Pointwise envelope, pointwise and global (MAD) p-values (see random_labelling_envelope)."""
    n_sim = sim_v.shape[0]
    srt = np.sort(sim_v, axis=0)
    k = max(1, int(math.floor(alpha / 2 * (n_sim + 1))))
    k = min(k, n_sim)
    lo = srt[k - 1]
    hi = srt[n_sim - k]
    n_ge = (sim_v >= value[None, :] - 1e-12 * np.abs(value[None, :])).sum(axis=0)
    n_le = (sim_v <= value[None, :] + 1e-12 * np.abs(value[None, :])).sum(axis=0)
    p_point = np.minimum(1.0, 2.0 * np.minimum(n_ge + 1, n_le + 1) / (n_sim + 1))
    mean = sim_v.mean(axis=0)
    t_obs = np.nanmax(np.abs(value - mean))
    t_sim = np.nanmax(np.abs(sim_v - mean[None, :]), axis=1)
    p_global = (1 + np.sum(t_sim >= t_obs)) / (n_sim + 1)
    return pd.DataFrame({"r_um": radii, "value": value, "mean": mean, "lo": lo, "hi": hi,
                         "p_value": p_point, "p_global": np.full(radii.size, p_global)})
