"""Barrier coverage along nest boundaries, at sub-segment resolution.

A boundary ring is a circular sequence of sub-segments (rows of a
:func:`tibspace.tissue.perimeter_segments` table, rings contiguous, positions
0..n-1 in order). :func:`coverage_profile` judges each sub-segment on a
sliding window with the metrics.md segment rule and trims every barrier run
to its half-maximum ends; :func:`circular_runs` and :func:`_runs_table` turn
the per-sub-segment state into covered runs and gaps (µm, with geometries).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from tibspace.errors import InputError

__all__ = ["circular_runs", "coverage_profile"]

# a band with less tissue than this fraction of its nominal area is not assessable
_MIN_BAND_FRACTION = 0.25
# sub-segments per perimeter segment for the coverage profile (10 µm at 50 µm segments)
_COVERAGE_SUBDIVIDE = 5
# a gap inside a lined run: consecutive barrier cells more than this many local spacings apart
_VOID_SPACINGS = 5.0


def circular_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a circular boolean sequence.

    Returns ``(start, length)`` pairs; a run that wraps past the last element
    into index 0 is one run (its start is near the end). An all-True ring is
    one run of full length starting at 0.

    Examples
    --------
    >>> circular_runs(np.array([1, 1, 0, 0, 1, 0, 1, 1], bool))
    [(4, 1), (6, 4)]
    >>> circular_runs(np.ones(3, bool)), circular_runs(np.zeros(3, bool))
    ([(0, 3)], [])
    """
    b = np.asarray(flags, bool)
    n = b.size
    if n == 0 or not b.any():
        return []
    if b.all():
        return [(0, n)]
    f = int(np.flatnonzero(~b)[0])           # rotate so the sequence starts with a False
    r = np.roll(b, -f).astype(np.int8)
    edges = np.diff(np.r_[0, r, 0])
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return sorted(((int(s + f) % n, int(e - s)) for s, e in zip(starts, ends)))


def _crosstab_band(seg_of: np.ndarray, sel: np.ndarray, n_seg: int) -> np.ndarray:
    return np.bincount(seg_of[sel], minlength=n_seg).astype(np.int64)


def _runs_table(seg: pd.DataFrame, state: np.ndarray, want: int):
    """Circular runs of ``state == want`` per ring (a run ends at any other state).

    ``seg`` is a :func:`~tibspace.tissue.perimeter_segments` table (rings
    contiguous, positions 0..n-1 in order). Returns (table: nest_id, ring,
    start_um (arc position of the run's start along its ring), n_subsegments,
    length_um; list of LineStrings through the run's pieces), runs ordered by
    nest, ring and start. Vectorised over all rings (a whole slide has ~10^5
    sub-segments).
    """
    cols = ["nest_id", "ring", "start_um", "n_subsegments", "length_um"]
    n = len(seg)
    flags = np.asarray(state) == want
    if n == 0 or not flags.any():
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(cols, ["int64", "int64", "float64",
                                                                          "int64", "float64"])}), []
    nest = seg["nest_id"].to_numpy(np.int64)
    ring = seg["ring"].to_numpy(np.int64)
    pos = seg["position"].to_numpy(np.int64)
    key = nest * 100_000 + ring
    rs = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    size = np.diff(np.r_[rs, n])
    ring_of = np.repeat(np.arange(rs.size), size)
    first_row = rs[ring_of]
    prev = first_row + (pos - 1) % size[ring_of]
    whole = np.bincount(ring_of, weights=flags, minlength=rs.size) == size   # all of the ring
    is_start = flags & np.where(whole[ring_of], pos == 0, ~flags[prev])
    starts = np.flatnonzero(is_start)
    # run of each flagged row: the last start at or before it in its ring, or (a run that
    # wraps past the ring start) the ring's last start
    last = np.maximum.accumulate(np.where(is_start, np.arange(n), -1))
    ring_last = np.full(rs.size, -1)
    np.maximum.at(ring_last, ring_of[starts], starts)
    owner = np.where(last >= first_row, last, ring_last[ring_of])
    run_of_start = np.full(n, -1)
    run_of_start[starts] = np.arange(starts.size)
    rows = np.flatnonzero(flags)
    run = run_of_start[owner[rows]]
    offset = (pos[rows] - pos[owner[rows]]) % size[ring_of[rows]]
    lengths = seg["length_um"].to_numpy(float)
    table = pd.DataFrame({"nest_id": nest[starts], "ring": ring[starts],
                          "start_um": seg["start_um"].to_numpy(float)[starts],
                          "n_subsegments": np.bincount(run, minlength=starts.size).astype(np.int64),
                          "length_um": np.bincount(run, weights=lengths[rows], minlength=starts.size)})
    # one line per run: the pieces' vertices in run order, dropping each later piece's
    # first vertex (it repeats the previous piece's last)
    order = np.lexsort((offset, run))
    rows, run, offset = rows[order], run[order], offset[order]
    coords, vidx = shapely.get_coordinates(np.asarray(seg["geometry"].to_numpy(), dtype=object)[rows],
                                           return_index=True)
    vfirst = np.r_[True, vidx[1:] != vidx[:-1]]
    keep = ~vfirst | (offset[vidx] == 0)
    lines = shapely.linestrings(coords[keep], indices=run[vidx[keep]])
    return table, list(lines)


def _ring_windows(sub: pd.DataFrame, half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the circular window of ``2 * half + 1`` sub-segments centred on each row.

    ``sub`` is a :func:`~tibspace.tissue.perimeter_segments` table (rings
    contiguous, positions 0..n-1 in order). Returns ``(idx, whole, ring_of)``:
    ``idx`` (N, 2 half + 1); ``whole`` flags rows of rings shorter than a
    window, whose window is the whole ring (their ``idx`` rows repeat
    indices and must not be used); ``ring_of`` the ring number of each row.
    """
    ring_key = sub["nest_id"].to_numpy(np.int64) * 100_000 + sub["ring"].to_numpy(np.int64)
    n = len(sub)
    starts = np.flatnonzero(np.r_[True, ring_key[1:] != ring_key[:-1]])
    sizes = np.diff(np.r_[starts, n])
    ring_of = np.repeat(np.arange(len(starts)), sizes)
    pos = sub["position"].to_numpy(np.int64)
    off = np.arange(-half, half + 1)
    idx = starts[ring_of][:, None] + (pos[:, None] + off[None, :]) % sizes[ring_of][:, None]
    return idx, sizes[ring_of] < 2 * half + 1, ring_of


def _window_sums(values: np.ndarray, idx: np.ndarray, whole: np.ndarray, ring_of: np.ndarray) -> np.ndarray:
    out = values[idx].sum(axis=1)
    if whole.any():
        tot = np.bincount(ring_of, weights=values)
        out[whole] = tot[ring_of[whole]]
    return out


def coverage_profile(sub: pd.DataFrame, n_barrier, n_macrophage, n_caf, band_area_um2, *,
                     barrier_width_um: float, barrier_density: float, window: int = _COVERAGE_SUBDIVIDE,
                     min_band_fraction: float = _MIN_BAND_FRACTION, cell_sub=None, cell_arc_um=None,
                     void_spacings: float = _VOID_SPACINGS) -> pd.DataFrame:
    """Barrier state along the boundary at sub-segment resolution.

    1. Each sub-segment is judged on the window of ``window`` consecutive
       sub-segments centred on it (one perimeter segment long): it *passes*
       when the window's outer band holds barrier cells at ≥
       ``barrier_density`` per mm² of tissue.
    2. A maximal run of passing sub-segments is a barrier candidate; it is a
       barrier when it holds ≥ 1 SPP1 macrophage and ≥ 1 CAF (the TIB
       co-occurrence, judged on the lined arc rather than on every window,
       so a randomly mixed lining is not cut wherever a window happens to
       hold one type).
    3. The run's two ends are trimmed inward to where the window density
       reaches half the run's plateau (median without the partial windows at
       its ends; the half-maximum edge: a window
       centred on the end of a uniformly lined arc holds half the lining's
       density). Dips inside a run are not trimmed; a ring-long run has no
       ends.
    4. Short gaps inside a run, which a one-segment window bridges, are
       found from the barrier cells themselves (``cell_sub``,
       ``cell_arc_um``). Positions along the run are measured in cumulative
       outer-band area (so concave stretches, with less band per µm of arc,
       do not read as gaps); with λ the run's barrier cells per µm² of band,
       two consecutive cells more than ``void_spacings`` / λ apart bound a
       gap from half a spacing (0.5 / λ) after the first to half a spacing
       before the second; sub-segments whose centre lies in it are
       uncovered. Projected onto the boundary a lining several cells deep is
       close to a Poisson sequence, where a spacing exceeds k mean spacings
       with probability e^−k: k = 5 loses ≈ k e^−k = 3 % of a full lining
       to chance voids and finds gaps longer than ≈ 3 mean spacings (≈ 26 µm
       at one cell per 9 µm of arc; shorter for sparser background in the
       gap).

    Parameters
    ----------
    sub : DataFrame
        Sub-segments (``perimeter_segments(..., subdivide=window)``).
    n_barrier, n_macrophage, n_caf : array of int
        Cells of each kind in each sub-segment's outer band.
    band_area_um2 : array of float
        Tissue area of each sub-segment's outer band (µm²).
    barrier_width_um, barrier_density : float
        As in :func:`~tibspace.analyses.barrier_analysis`.
    window : int
        Sub-segments per window (odd).
    min_band_fraction : float
        A window is assessable when its band holds ≥ this fraction of its
        nominal area (length × ``barrier_width_um``).
    cell_sub, cell_arc_um : arrays, optional
        Sub-segment row and arc position along its ring (µm, the same
        origin as ``sub["start_um"]``) of every barrier cell in the outer
        band. Without them step 4 is skipped.
    void_spacings : float
        Gap threshold in local cell spacings (step 4).

    Returns
    -------
    DataFrame aligned with ``sub``: ``window_density_per_mm2``,
    ``assessable``, ``passes``, ``covered``.

    Examples
    --------
    >>> from tibspace.tissue import TumourRegion, perimeter_segments
    >>> sub = perimeter_segments(TumourRegion.from_polygons([shapely.box(0, 0, 250, 250)]), 50.0,
    ...                          subdivide=5)                    # 100 sub-segments of 10 µm
    >>> lined = np.zeros(100, int); lined[:40] = 1               # one cell per 10 µm on 0-400 µm
    >>> prof = coverage_profile(sub, lined, lined * (np.arange(100) % 2), lined * (1 - np.arange(100) % 2),
    ...                         np.full(100, 500.0), barrier_width_um=50.0, barrier_density=400.0)
    >>> int(prof["passes"].sum()), int(prof["covered"].sum())   # windows that pass; trimmed to 40
    (44, 40)
    >>> arc = np.delete(np.arange(40) * 10.0 + 5.0, range(18, 24))   # six cells missing: a 60 µm gap
    >>> prof = coverage_profile(sub, lined, lined * (np.arange(100) % 2), lined * (1 - np.arange(100) % 2),
    ...                         np.full(100, 500.0), barrier_width_um=50.0, barrier_density=400.0,
    ...                         cell_sub=(arc // 10).astype(int), cell_arc_um=arc)
    >>> int(prof["covered"].sum())
    34
    """
    if window < 1 or window % 2 == 0:
        raise InputError(f"window={window}: expected an odd number of sub-segments")
    nb = np.asarray(n_barrier, float)
    area = np.asarray(band_area_um2, float)
    length = sub["length_um"].to_numpy(float)
    idx, whole, ring_of = _ring_windows(sub, window // 2)
    wb, wa, wl = (_window_sums(np.asarray(v, float), idx, whole, ring_of) for v in (nb, area, length))
    assessable = wa >= min_band_fraction * wl * float(barrier_width_um)
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = np.where(wa > 0, wb / wa * 1e6, np.nan)
    passes = assessable & (dens >= barrier_density)
    covered = np.zeros(len(sub), bool)
    nm, nc = np.asarray(n_macrophage, float), np.asarray(n_caf, float)
    cells_by_sub = _cells_by_sub(cell_sub, cell_arc_um, len(sub))
    for r in np.unique(ring_of[passes]):
        rows = np.flatnonzero(ring_of == r)
        for start, k in circular_runs(passes[rows]):
            run = rows[(start + np.arange(k)) % rows.size]
            if nm[run].sum() < 1 or nc[run].sum() < 1:
                continue
            run = _trim_ends(run, dens, k == rows.size, window)
            covered[run] = True
            if cells_by_sub is not None and run.size:
                covered[_void_rows(sub, run, rows, area, cells_by_sub, void_spacings)] = False
    return pd.DataFrame({"window_density_per_mm2": dens, "assessable": assessable, "passes": passes,
                         "covered": covered}, index=sub.index)


def _trim_ends(run: np.ndarray, dens: np.ndarray, whole_ring: bool, window: int) -> np.ndarray:
    """Drop the rows at both ends of a run whose window density is below half the run's plateau.

    The plateau is the median window density without the ``window − 1``
    rows at each end, where windows only partly overlap the lining (the
    whole run when it is too short to have a plateau).
    """
    if whole_ring:
        return run
    dr = dens[run]
    ramp = window - 1
    core = dr[ramp:dr.size - ramp] if dr.size > 2 * ramp else dr
    ok = dr >= 0.5 * float(np.median(core))
    if not ok.any():
        return run[:0]
    good = np.flatnonzero(ok)
    return run[good[0]:good[-1] + 1]


def _cells_by_sub(cell_sub, cell_arc_um, n_sub):
    """Arc positions of the barrier cells grouped by sub-segment (CSR: order, offsets)."""
    if cell_sub is None or cell_arc_um is None:
        return None
    cs = np.asarray(cell_sub, np.int64)
    arc = np.asarray(cell_arc_um, float)
    order = np.argsort(cs, kind="stable")
    offsets = np.r_[0, np.cumsum(np.bincount(cs, minlength=n_sub))]
    return arc[order], offsets


def _void_rows(sub, run, ring_rows, area, cells_by_sub, void_spacings) -> np.ndarray:
    """Rows of ``run`` whose centre lies in a void between consecutive barrier cells.

    Positions are measured in cumulative band area along the run (µm²), not
    arc length: a concave stretch of boundary has less outer band per µm of
    arc and so fewer cells at the same lining density, which must not read
    as a gap. Within a sub-segment, area is spread evenly along its arc.
    """
    arc_sorted, offsets = cells_by_sub
    start = sub["start_um"].to_numpy(float)
    length = sub["length_um"].to_numpy(float)
    a_run = np.asarray(area, float)[run]
    cum = np.r_[0.0, np.cumsum(a_run)]
    total = float(cum[-1])
    whole = run.size == ring_rows.size
    pos = []
    for j, i in enumerate(run):
        arc = arc_sorted[offsets[i]:offsets[i + 1]]
        frac = np.clip((arc - start[i]) / length[i], 0.0, 1.0)
        pos.append(cum[j] + frac * a_run[j])
    u = np.sort(np.concatenate(pos)) if pos else np.zeros(0)
    if u.size < 2 or total <= 0:
        return run[:0]
    lam = u.size / total                             # cells per µm² of band
    if whole:
        u = np.r_[u, u[0] + total]                   # the spacing across the ring start
    gaps = np.flatnonzero(np.diff(u) > void_spacings / lam)
    if gaps.size == 0:
        return run[:0]
    centre = cum[:-1] + 0.5 * a_run
    void = np.zeros(run.size, bool)
    for g in gaps:
        lo, hi = u[g] + 0.5 / lam, u[g + 1] - 0.5 / lam
        void |= ((centre - lo) % total) < (hi - lo) if whole else (centre > lo) & (centre < hi)
    return run[void]
