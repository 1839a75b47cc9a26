"""The barrier → exclusion link: a circular-shift test along nest boundaries.

Per-segment values (e.g. a T-cell density ratio) are compared between
barrier-covered and uncovered segments; the null rotates the covered labels
along each boundary ring (keeping the barrier's run structure, i.e. its
spatial autocorrelation) while the values stay in place.
"""

from __future__ import annotations

import numpy as np

__all__ = ["circular_shift_test", "entry_shift_test"]


def _masked_medians(vs: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Row-wise median of ``vs`` (sorted ascending, finite) over the True entries of ``sel``."""
    cnt = sel.sum(axis=1)
    cs = np.cumsum(sel, axis=1, dtype=np.int32)
    k1 = (cnt + 1) // 2
    k2 = cnt // 2 + 1
    i1 = np.argmax(cs >= k1[:, None], axis=1)
    i2 = np.argmax(cs >= k2[:, None], axis=1)
    med = 0.5 * (vs[i1] + vs[i2])
    med[cnt == 0] = np.nan
    return med


def circular_shift_test(values: np.ndarray, covered: np.ndarray, ring: np.ndarray, position: np.ndarray, *,
                        n_shifts: int = 999, seed: int = 0, max_block: int = 4_000_000) -> dict:
    """One-sided circular-shift test: do covered segments have LOWER values?

    Statistic: ``median(values[covered]) − median(values[~covered])`` over
    finite values. Null: the covered labels are rotated along each ring by an
    independent uniform offset (which keeps the run structure, i.e. the
    spatial autocorrelation, of the barrier), values stay in place.
    ``p = (1 + #{null ≤ observed}) / (1 + n_shifts)``; when the number of
    distinct rotation combinations (product of ring lengths) is ≤
    ``n_shifts`` all are enumerated and ``p = #{null ≤ observed} / #combos``
    (exact; includes the identity). All shifts are evaluated as one numpy
    operation (in blocks of ≤ ``max_block`` elements).

    Parameters
    ----------
    values : float array (n,)
        Per-segment value (NaN: left out of the medians).
    covered : bool array (n,)
    ring : array (n,)
        Ring key per segment (e.g. nest_id * 1000 + ring).
    position : int array (n,)
        Circular index of the segment along its ring (0 … len − 1, each once).
    n_shifts : int
    seed : int

    Returns
    -------
    dict
        ``statistic, p_value, n_shifts (used), exact (bool),
        median_covered, median_uncovered, n_covered, n_uncovered,
        n_informative_rings, null (array)``. Rotations only move labels
        within rings, so rings that are wholly covered or wholly uncovered
        carry no information: with ``n_informative_rings == 0`` the null is
        the observed value and ``p`` is NaN, not 1 (the test compares segments along
        the same boundary, never nests with each other).

    Examples
    --------
    >>> cov = np.random.default_rng(1).random(80) < 0.3      # one ring, 80 segments
    >>> v = np.where(cov, 0.2, 1.0)                           # low T ratio where covered
    >>> res = circular_shift_test(v, cov, np.zeros(80), np.arange(80))
    >>> round(res["statistic"], 2), res["exact"], res["p_value"] < 0.05
    (-0.8, True, True)
    """
    v = np.asarray(values, float)
    c = np.asarray(covered, bool)
    ring = np.asarray(ring)
    pos = np.asarray(position, np.int64)
    n = v.size
    out = {"statistic": float("nan"), "p_value": float("nan"), "n_shifts": 0, "exact": False,
           "n_informative_rings": 0,
           "median_covered": float("nan"), "median_uncovered": float("nan"),
           "n_covered": 0, "n_uncovered": 0, "null": np.zeros(0)}
    if n == 0:
        return out
    # order segments by (ring, position) so ring r occupies [start_r, start_r + n_r)
    rkeys, rc = np.unique(ring, return_inverse=True)
    order = np.lexsort((pos, rc))
    v, c, rc, pos = v[order], c[order], rc[order], pos[order]
    sizes = np.bincount(rc, minlength=rkeys.size)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    local = np.arange(n) - starts[rc]               # 0..n_r-1 in position order
    valid = np.isfinite(v)
    # only rings holding both covered and uncovered segments can change under rotation
    has_c = np.bincount(rc, weights=c.astype(float), minlength=rkeys.size) > 0
    has_u = np.bincount(rc, weights=(~c).astype(float), minlength=rkeys.size) > 0
    out["n_informative_rings"] = int(np.sum(has_c & has_u))
    out["n_covered"] = int((c & valid).sum())
    out["n_uncovered"] = int((~c & valid).sum())
    if out["n_covered"] == 0 or out["n_uncovered"] == 0:
        return out
    vo = np.argsort(v[valid], kind="stable")
    vs = v[valid][vo]
    cols = np.flatnonzero(valid)[vo]                # columns in sorted-value order

    def stats(shift):                               # shift: (S, R) offsets
        g = starts[rc][None, :] + (local[None, :] - shift[:, rc]) % sizes[rc][None, :]
        cs = c[g][:, cols]
        return _masked_medians(vs, cs) - _masked_medians(vs, ~cs)

    obs = float(stats(np.zeros((1, rkeys.size), np.int64))[0])
    out["statistic"] = obs
    out["median_covered"] = float(np.median(v[c & valid]))
    out["median_uncovered"] = float(np.median(v[~c & valid]))
    n_combos = float(np.prod(sizes.astype(float)))
    exact = n_combos <= n_shifts
    if exact:
        grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
        shifts = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    else:
        rng = np.random.default_rng(seed)
        shifts = (rng.random((int(n_shifts), rkeys.size)) * sizes[None, :]).astype(np.int64)
    block = max(1, int(max_block // max(n, 1)))
    null = np.concatenate([stats(shifts[i:i + block]) for i in range(0, len(shifts), block)])
    le = np.sum(null <= obs + 1e-12 * max(1.0, abs(obs)))
    if exact:
        p = le / len(null)
    else:
        p = (1 + le) / (1 + len(null))
    if out["n_informative_rings"] == 0:
        p = float("nan")                            # every rotation gives the observed value: no test
    out.update({"p_value": float(p), "n_shifts": int(len(null)), "exact": bool(exact), "null": null})
    return out


def entry_shift_test(n_inner, area_inner, n_supply, area_supply, covered, ring, position, *,
                     n_shifts: int = 999, seed: int = 0, max_block: int = 4_000_000) -> dict:
    """Do T cells enter the tumour less where the barrier is? A pooled circular-shift test.

    Per segment: ``n_inner`` T cells in the tumour-side band (area
    ``area_inner``) and ``n_supply`` T cells in the wide outer reach (area
    ``area_supply``), the local T supply. The *entry index* of a set of
    segments is ``(Σ n_inner / Σ area_inner) / (Σ n_supply / Σ area_supply)``
    (T density entering the tumour per unit of T density available outside);
    pooling counts before dividing keeps it defined and stable at 0–3 T
    cells per segment. Statistic: ``log(entry covered) − log(entry
    uncovered)`` (< 0 when covered segments let fewer T cells in), with +0.5
    on each pooled count. Because the supply reaches far out (default 150
    µm), it counts T cells held by the barrier whether they pile up against
    it, are held 50–150 µm away or spread through the stroma.

    Null: the covered labels are rotated along each boundary ring by an
    independent uniform offset (keeps the barrier's run structure, i.e. its
    autocorrelation, and each ring's T pattern), pooled over rings; one-sided
    ``p = (1 + #{null ≤ observed}) / (1 + n_shifts)``, exact enumeration when
    the product of ring lengths is ≤ ``n_shifts``. Only rings with both
    covered and uncovered segments inform it; with none, ``p`` is NaN.

    Parameters
    ----------
    n_inner, area_inner, n_supply, area_supply : arrays (n,)
        Counts and band areas (µm²) per segment; segments with a NaN or
        non-positive area are left out (their labels still rotate).
    covered : bool array (n,)
    ring, position : arrays (n,)
        Ring key and circular index along the ring (0 … len − 1, each once).
    n_shifts, seed : int

    Returns
    -------
    dict
        ``statistic, p_value, n_shifts, exact, entry_covered,
        entry_uncovered, n_covered, n_uncovered, n_informative_rings, null``.

    Examples
    --------
    >>> cov = np.arange(60) % 20 < 8                                  # 3 rings of 20, 8 covered each
    >>> n_in = np.where(cov, 0, 2); n_sup = np.full(60, 6)
    >>> res = entry_shift_test(n_in, np.full(60, 2500.0), n_sup, np.full(60, 7500.0), cov,
    ...                        np.arange(60) // 20, np.arange(60) % 20, n_shifts=999)
    >>> res["statistic"] < -2, res["p_value"] < 0.01
    (True, True)
    """
    a_in = np.asarray(area_inner, float)
    a_sup = np.asarray(area_supply, float)
    ok = np.isfinite(a_in) & np.isfinite(a_sup) & (a_in > 0) & (a_sup > 0)
    cols = np.stack([np.where(ok, np.asarray(n_inner, float), 0.0), np.where(ok, a_in, 0.0),
                     np.where(ok, np.asarray(n_supply, float), 0.0), np.where(ok, a_sup, 0.0)], axis=1)
    c = np.asarray(covered, bool)
    out = {"statistic": float("nan"), "p_value": float("nan"), "n_shifts": 0, "exact": False,
           "entry_covered": float("nan"), "entry_uncovered": float("nan"),
           "n_covered": int((c & ok).sum()), "n_uncovered": int((~c & ok).sum()),
           "n_informative_rings": 0, "null": np.zeros(0)}
    if c.size == 0 or out["n_covered"] == 0 or out["n_uncovered"] == 0:
        return out
    rkeys, rc = np.unique(np.asarray(ring), return_inverse=True)
    order = np.lexsort((np.asarray(position, np.int64), rc))
    c, rc, cols = c[order], rc[order], cols[order]
    sizes = np.bincount(rc, minlength=rkeys.size)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    local = np.arange(c.size) - starts[rc]
    has_c = np.bincount(rc, weights=c.astype(float), minlength=rkeys.size) > 0
    has_u = np.bincount(rc, weights=(~c).astype(float), minlength=rkeys.size) > 0
    out["n_informative_rings"] = int(np.sum(has_c & has_u))
    total = cols.sum(axis=0)

    def entry(s):                                   # s: (S, 4) pooled sums
        return np.log((s[:, 0] + 0.5) / s[:, 1]) - np.log((s[:, 2] + 0.5) / s[:, 3])

    def stats(shift):                               # shift: (S, R) offsets
        g = starts[rc][None, :] + (local[None, :] - shift[:, rc]) % sizes[rc][None, :]
        sc = c[g].astype(float) @ cols              # (S, 4) sums over covered
        with np.errstate(invalid="ignore", divide="ignore"):
            return entry(sc) - entry(total[None, :] - sc)

    sc0 = c.astype(float) @ cols
    with np.errstate(invalid="ignore", divide="ignore"):
        out["entry_covered"] = float(np.exp(entry(sc0[None, :])[0]))
        out["entry_uncovered"] = float(np.exp(entry((total - sc0)[None, :])[0]))
    obs = float(stats(np.zeros((1, rkeys.size), np.int64))[0])
    out["statistic"] = obs
    n_combos = float(np.prod(sizes.astype(float)))
    exact = n_combos <= n_shifts
    if exact:
        grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
        shifts = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    else:
        rng = np.random.default_rng(seed)
        shifts = (rng.random((int(n_shifts), rkeys.size)) * sizes[None, :]).astype(np.int64)
    block = max(1, int(max_block // max(c.size, 1)))
    null = np.concatenate([stats(shifts[i:i + block]) for i in range(0, len(shifts), block)])
    # a rotation can leave one side without tissue area: such a draw is no evidence either way
    le = np.sum(~(null > obs + 1e-12 * max(1.0, abs(obs))))
    p = le / len(null) if exact else (1 + le) / (1 + len(null))
    if out["n_informative_rings"] == 0:
        p = float("nan")
    out.update({"p_value": float(p), "n_shifts": int(len(null)), "exact": bool(exact), "null": null})
    return out
