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

    ``seg`` is a :func:`~tibspace.geometry.perimeter_segments` table (rings
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

    ``sub`` is a :func:`~tibspace.geometry.perimeter_segments` table (rings
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
                     min_band_fraction: float = _MIN_BAND_FRACTION) -> pd.DataFrame:
    """Barrier state along the boundary at sub-segment resolution (sliding window, half maximum).

    Each sub-segment is judged on the window of ``window`` consecutive
    sub-segments centred on it (one perimeter segment long): the window
    *passes* when its outer band holds barrier cells at ≥ ``barrier_density``
    per mm² of tissue and ≥ 1 SPP1 macrophage and ≥ 1 CAF (metrics.md's
    segment rule). A maximal run of passing sub-segments is a barrier; its
    ends are placed where the window density falls below half the run's
    median density (the half-maximum edge: a window centred exactly on the
    end of a uniformly lined arc holds half the lining's density, whatever
    that density is), so the covered length is unbiased instead of
    over-calling by up to a segment at every arc end.

    Parameters
    ----------
    sub : DataFrame
        Sub-segments (``perimeter_segments(..., subdivide=window)``).
    n_barrier, n_macrophage, n_caf : array of int
        Cells of each kind in each sub-segment's outer band.
    band_area_um2 : array of float
        Tissue area of each sub-segment's outer band (µm²).
    barrier_width_um, barrier_density : float
        As in :func:`barrier_analysis`.
    window : int
        Sub-segments per window (odd).

    Returns
    -------
    DataFrame aligned with ``sub``: ``window_density_per_mm2``,
    ``assessable`` (window band ≥ ``min_band_fraction`` of nominal),
    ``passes``, ``covered``.

    Examples
    --------
    >>> from tibspace.tissue import TumourRegion, perimeter_segments
    >>> sub = perimeter_segments(TumourRegion.from_polygons([shapely.box(0, 0, 250, 250)]), 50.0,
    ...                          subdivide=5)                    # 100 sub-segments of 10 µm
    >>> lined = np.zeros(100, int); lined[:40] = 1               # one cell per 10 µm on 0-400 µm
    >>> prof = coverage_profile(sub, lined, lined * (np.arange(100) % 2), lined * (1 - np.arange(100) % 2),
    ...                         np.full(100, 500.0), barrier_width_um=50.0, barrier_density=400.0)
    >>> int(prof["passes"].sum()), int(prof["covered"].sum())   # windows with both types pass; trimmed to 40
    (42, 40)
    """
    if window < 1 or window % 2 == 0:
        raise InputError(f"window={window}: expected an odd number of sub-segments")
    nb = np.asarray(n_barrier, float)
    area = np.asarray(band_area_um2, float)
    length = sub["length_um"].to_numpy(float)
    idx, whole, ring_of = _ring_windows(sub, window // 2)
    wb, wm, wc, wa, wl = (_window_sums(np.asarray(v, float), idx, whole, ring_of)
                          for v in (nb, n_macrophage, n_caf, area, length))
    assessable = wa >= min_band_fraction * wl * float(barrier_width_um)
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = np.where(wa > 0, wb / wa * 1e6, np.nan)
    passes = assessable & (dens >= barrier_density) & (wm >= 1) & (wc >= 1)
    covered = passes.copy()
    for r in np.unique(ring_of[passes]):
        rows = np.flatnonzero(ring_of == r)
        for start, k in circular_runs(passes[rows]):
            run = rows[(start + np.arange(k)) % rows.size]
            covered[run] = dens[run] >= 0.5 * float(np.median(dens[run]))
    return pd.DataFrame({"window_density_per_mm2": dens, "assessable": assessable, "passes": passes,
                         "covered": covered}, index=sub.index)
