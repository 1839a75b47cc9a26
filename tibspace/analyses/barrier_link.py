"""The barrier → exclusion link: a circular-shift test along nest boundaries.

Per-segment values are compared between barrier-covered and uncovered
segments; the null rotates the covered labels along each boundary ring
(keeping the barrier's run structure, i.e. its spatial autocorrelation) while
the values stay in place. :func:`circular_shift_test` compares medians of a
per-segment value; :func:`pooled_ratio_shift_test` (the barrier analysis's
link) compares the T-cell inner/outer density ratio pooled over the covered
and over the uncovered segments, because a segment's bands hold only 0-5 T
cells and a median of per-segment ratios is then mostly pseudocounts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tibspace.errors import InputError

__all__ = ["circular_shift_test", "pooled_ratio_shift_test"]


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
    finite values. Null: the covered labels rotated along each ring by
    independent uniform offsets, values in place. ``p = (1 + #{null ≤
    observed}) / (1 + n_shifts)``; when the number of rotation combinations
    (product of ring lengths) is ≤ ``n_shifts`` all are enumerated and
    ``p = #{null ≤ observed} / #combos`` (exact; includes the identity).

    Parameters
    ----------
    values : float array (n,)
        Per-segment value (NaN: left out of the medians).
    covered : bool array (n,)
    ring : array (n,)
        Ring key per segment (e.g. nest_id * 1000 + ring).
    position : int array (n,)
        Circular index of the segment along its ring (0 … len − 1, each once).
    n_shifts, seed : int
        Random rotations when not exact; their seed.
    max_block : int
        Most array elements evaluated at once (shifts × segments).

    Returns
    -------
    dict
        ``statistic, p_value, n_shifts (used), exact (bool),
        median_covered, median_uncovered, n_covered, n_uncovered,
        n_informative_rings, null (array)``. Rings wholly covered or wholly
        uncovered do not change under rotation: with
        ``n_informative_rings == 0`` the null is the observed value and
        ``p = 1`` (the test never compares nests with each other).

    Examples
    --------
    >>> cov = np.random.default_rng(1).random(80) < 0.3      # one ring, 80 segments
    >>> v = np.where(cov, 0.2, 1.0)                           # low T ratio where covered
    >>> res = circular_shift_test(v, cov, np.zeros(80), np.arange(80))
    >>> round(res["statistic"], 2), res["exact"], res["p_value"] < 0.05
    (-0.8, True, True)
    """
    out = _untested()
    if np.asarray(values, float).size == 0:
        return out
    rings = _ring_layout(values, covered, ring, position)
    out.update(_label_counts(rings))
    if out["n_covered"] == 0 or out["n_uncovered"] == 0:
        return out
    ranked = _ValueRanks.of(rings)
    obs = float(_shifted_differences(rings, ranked, np.zeros((1, rings.sizes.size), np.int64))[0])
    v, c, valid = rings.values, rings.covered, rings.valid
    out.update({"statistic": obs, "median_covered": float(np.median(v[c & valid])),
                "median_uncovered": float(np.median(v[~c & valid]))})
    shifts, exact = _rotation_offsets(rings.sizes, n_shifts, seed)
    block = max(1, int(max_block // max(v.size, 1)))
    null = np.concatenate([_shifted_differences(rings, ranked, shifts[i:i + block])
                           for i in range(0, len(shifts), block)])
    out.update({"p_value": _shift_p_value(null, obs, exact), "n_shifts": int(len(null)), "exact": bool(exact),
                "null": null})
    return out


@dataclass(frozen=True)
class _LinkBands:
    """The link's T-cell bands (µm): inner −``inner_um`` < d ≤ −``guard_um``, outer 0 < d ≤ ``outer_um``."""

    inner_um: float
    outer_um: float
    guard_um: float = 0.0

    @classmethod
    def of(cls, margin_um, outside_band_um, link_guard_um) -> "_LinkBands":
        """The bands of :func:`barrier_analysis`'s arguments (µm).

        The guard: a T cell within about a cell diameter of the drawn outline
        cannot be told inside from outside (image nest outlines lie a median
        5 µm, p90 ~10 µm, outside the cell centres'). The outer band reaches the
        exclusion analysis's stroma (200 µm): T cells kept off a barrier at any
        distance up to it count as available outside.
        """
        if not 0.0 <= float(link_guard_um) < float(margin_um):
            raise InputError(f"link_guard_um={link_guard_um}: expected 0 ≤ guard < margin_um ({margin_um}) µm")
        return cls(inner_um=float(margin_um), outer_um=float(outside_band_um), guard_um=float(link_guard_um))



# ---------------------------------------------------------------------------
# steps of circular_shift_test
def _untested() -> dict:
    """The result of a test that cannot run (no segments, or no covered or no uncovered value)."""
    return {"statistic": float("nan"), "p_value": float("nan"), "n_shifts": 0, "exact": False,
            "n_informative_rings": 0,
            "median_covered": float("nan"), "median_uncovered": float("nan"),
            "n_covered": 0, "n_uncovered": 0, "null": np.zeros(0)}


@dataclass(frozen=True)
class _RingLayout:
    """Segments ordered by (ring, position): ring r occupies rows ``starts[r] … starts[r] + sizes[r] − 1``.

    Attributes
    ----------
    values, covered, valid : arrays (n,)
        Value, covered label and ``isfinite(value)`` of each row.
    ring_of : int array (n,)
        Ring number 0..R−1 of each row (rings in sorted key order).
    local : int array (n,)
        Position of each row along its ring, 0..sizes[r] − 1.
    sizes, starts : int arrays (R,)
        Segments per ring; first row of each ring.
    """

    values: np.ndarray
    covered: np.ndarray
    valid: np.ndarray
    ring_of: np.ndarray
    local: np.ndarray
    sizes: np.ndarray
    starts: np.ndarray


def _ring_layout(values, covered, ring, position) -> _RingLayout:
    """Order the segments by (ring, position) (see :class:`_RingLayout`)."""
    v = np.asarray(values, float)
    c = np.asarray(covered, bool)
    pos = np.asarray(position, np.int64)
    rkeys, rc = np.unique(np.asarray(ring), return_inverse=True)
    order = np.lexsort((pos, rc))
    v, c, rc = v[order], c[order], rc[order]
    sizes = np.bincount(rc, minlength=rkeys.size)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return _RingLayout(values=v, covered=c, valid=np.isfinite(v), ring_of=rc, local=np.arange(v.size) - starts[rc],
                       sizes=sizes, starts=starts)


def _label_counts(rings: _RingLayout) -> dict:
    """Rings holding both covered and uncovered segments; covered / uncovered segments with a finite value."""
    rc, c, n_rings = rings.ring_of, rings.covered, rings.sizes.size
    has_c = np.bincount(rc, weights=c.astype(float), minlength=n_rings) > 0
    has_u = np.bincount(rc, weights=(~c).astype(float), minlength=n_rings) > 0
    return {"n_informative_rings": int(np.sum(has_c & has_u)), "n_covered": int((c & rings.valid).sum()),
            "n_uncovered": int((~c & rings.valid).sum())}


@dataclass(frozen=True)
class _ValueRanks:
    """The finite values in ascending order (``ascending``) and the row of each (``rows``)."""

    ascending: np.ndarray
    rows: np.ndarray

    @classmethod
    def of(cls, rings: _RingLayout) -> "_ValueRanks":
        """Stable ascending order of the finite values of ``rings``."""
        vo = np.argsort(rings.values[rings.valid], kind="stable")
        return cls(ascending=rings.values[rings.valid][vo], rows=np.flatnonzero(rings.valid)[vo])


def _shifted_differences(rings: _RingLayout, ranked: _ValueRanks, shift: np.ndarray) -> np.ndarray:
    """Median covered − median uncovered value after each row of ring offsets ``shift`` (S, R)."""
    rc = rings.ring_of
    g = rings.starts[rc][None, :] + (rings.local[None, :] - shift[:, rc]) % rings.sizes[rc][None, :]
    cs = rings.covered[g][:, ranked.rows]
    return _masked_medians(ranked.ascending, cs) - _masked_medians(ranked.ascending, ~cs)


def _rotation_offsets(sizes: np.ndarray, n_shifts: int, seed: int) -> tuple[np.ndarray, bool]:
    """Ring offsets (S, R) of the null: every combination when ≤ ``n_shifts`` (exact), else random."""
    n_combos = float(np.prod(sizes.astype(float)))
    exact = n_combos <= n_shifts
    if exact:
        grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1).astype(np.int64), exact
    rng = np.random.default_rng(seed)
    return (rng.random((int(n_shifts), sizes.size)) * sizes[None, :]).astype(np.int64), exact


def _shift_p_value(null: np.ndarray, obs: float, exact: bool) -> float:
    """Share of null statistics ≤ the observed one (+1 on both counts when not exact)."""
    le = np.sum(null <= obs + 1e-12 * max(1.0, abs(obs)))
    if exact:
        return float(le / len(null))
    return float((1 + le) / (1 + len(null)))


def pooled_ratio_shift_test(n_inner: np.ndarray, area_inner: np.ndarray, n_outer: np.ndarray,
                            area_outer: np.ndarray, covered: np.ndarray, ring: np.ndarray, position: np.ndarray, *,
                            n_shifts: int = 999, seed: int = 0, pseudocount: float = 0.5) -> dict:
    """One-sided circular-shift test: is the pooled T inner/outer ratio LOWER on covered segments?

    Pooled ratio of a set S of segments: ``((Σ_S n_inner + c) / Σ_S area_inner)
    / ((Σ_S n_outer + c) / Σ_S area_outer)`` with pseudocount ``c``.
    Statistic: ``log ratio(covered) − log ratio(uncovered)``. Null and p as in
    :func:`circular_shift_test` (covered labels rotated along each ring).

    Parameters
    ----------
    n_inner, area_inner, n_outer, area_outer : arrays (n,)
        Per-segment T counts and band areas (any one area unit); segments with a
        non-finite or non-positive area are left out.
    covered, ring, position
        As in :func:`circular_shift_test`.
    n_shifts, seed : int
    pseudocount : float

    Returns
    -------
    dict
        ``statistic, p_value, n_shifts, exact, n_informative_rings, ratio_covered,
        ratio_uncovered, n_covered, n_uncovered, null``.

    Examples
    --------
    >>> cov = np.arange(40) % 10 < 5                          # one ring, covered in runs of 5
    >>> n_in = np.where(cov, 0, 2); n_out = np.full(40, 3)
    >>> res = pooled_ratio_shift_test(n_in, np.ones(40), n_out, np.ones(40), cov, np.zeros(40), np.arange(40))
    >>> res["statistic"] < 0, res["exact"], round(res["p_value"], 3)
    (True, True, 0.1)
    """
    cols = np.stack([np.asarray(a, float) for a in (n_inner, area_inner, n_outer, area_outer)], axis=1)
    ok = np.isfinite(cols).all(axis=1) & (cols[:, 1] > 0) & (cols[:, 3] > 0)
    out = {**_untested(), "ratio_covered": float("nan"), "ratio_uncovered": float("nan")}
    for k in ("median_covered", "median_uncovered"):
        out.pop(k)
    if not ok.any():
        return out
    # rows of the ring layout carry the index of their segment, so the counts follow the reordering
    rings = _ring_layout(np.flatnonzero(ok).astype(float), np.asarray(covered, bool)[ok],
                         np.asarray(ring)[ok], np.asarray(position)[ok])
    x = cols[rings.values.astype(np.int64)]
    out.update(_label_counts(rings))
    if out["n_covered"] == 0 or out["n_uncovered"] == 0:
        return out
    shifts, exact = _rotation_offsets(rings.sizes, n_shifts, seed)
    obs, r_c, r_u = _pooled_log_ratio_differences(rings, x, np.zeros((1, rings.sizes.size), np.int64), pseudocount)
    null = _pooled_log_ratio_differences(rings, x, shifts, pseudocount)[0]
    out.update({"statistic": float(obs[0]), "ratio_covered": float(r_c[0]), "ratio_uncovered": float(r_u[0]),
                "p_value": _shift_p_value(null, float(obs[0]), exact), "n_shifts": int(len(null)),
                "exact": bool(exact), "null": null})
    return out


def _pooled_log_ratio_differences(rings: _RingLayout, x: np.ndarray, shift: np.ndarray, c: float):
    """log pooled ratio covered − uncovered after each row of ring offsets ``shift`` (S, R); and both ratios."""
    rc = rings.ring_of
    g = rings.starts[rc][None, :] + (rings.local[None, :] - shift[:, rc]) % rings.sizes[rc][None, :]
    cov = rings.covered[g].astype(float)
    tc, tu = cov @ x, (1.0 - cov) @ x
    r_c = ((tc[:, 0] + c) / tc[:, 1]) / ((tc[:, 2] + c) / tc[:, 3])
    r_u = ((tu[:, 0] + c) / tu[:, 1]) / ((tu[:, 2] + c) / tu[:, 3])
    return np.log(r_c) - np.log(r_u), r_c, r_u
