"""Barrier coverage along nest boundaries, at sub-segment resolution.

A boundary ring is a circular sequence of sub-segments (rows of a
:func:`tibspace.tissue.perimeter_segments` table, rings contiguous, positions
0..n-1 in order). :func:`coverage_profile` judges each sub-segment on a
sliding window with the metrics.md density rule, keeps runs holding both cell
types, and places gaps and run ends from the barrier cells' spacings along the
outline (stray cells dropped) or, on sparse rings, at half-maximum;
:func:`circular_runs` and :func:`_runs_table` turn
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
# probability that a gapless lined run shows a gap between barrier cells by chance
_GAP_ALPHA = 0.05
# fewest cell spacings in a run for the spacing gap rule
_MIN_SPACINGS = 8
# Gaussian smoothing (µm of arc) of the outline along which barrier cells are placed
_OUTLINE_SMOOTH_UM = 10.0


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
                     min_band_fraction: float = _MIN_BAND_FRACTION, cell_sub=None, cell_arc_um=None,
                     sub_arc_um=None, ring_arc_um=None, gap_alpha: float = _GAP_ALPHA) -> pd.DataFrame:
    """Barrier state along the boundary at sub-segment resolution.

    1. A sub-segment *passes* when the window of ``window`` sub-segments
       centred on it (one segment long) holds barrier cells at ≥
       ``barrier_density`` per mm² of its outer band's tissue.
    2. A maximal run of passing sub-segments is a barrier when it holds ≥ 1
       SPP1 macrophage and ≥ 1 CAF (co-occurrence judged on the lined run).
    3. The run's ends are trimmed to where the window density reaches half
       the run's plateau (:func:`_trim_ends`).
    4. Gaps come from the barrier cells' spacings along the ring
       (:func:`_spacing_gap_rows`): gaps shorter than a window, which it
       bridges, and lining ends, half a spacing beyond the last lining cell
       (a stray barrier-type cell past an arc's end is not lining).

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
        A window is assessable when its band holds ≥ this fraction of length × ``barrier_width_um``.
    cell_sub, cell_arc_um : arrays, optional
        Sub-segment row and position along its ring (µm) of every barrier
        cell in the outer band; without them step 4 is skipped.
    sub_arc_um, ring_arc_um : arrays, optional
        The frame of ``cell_arc_um``: position of each sub-segment's centre
        and its ring's length (:func:`outline_positions`; NaN: no gap
        rule on that ring); default the arc along the ring (``start_um``).
    gap_alpha : float
        Probability that a gapless run of the sample's lining shows a gap by chance (step 4).

    Returns
    -------
    DataFrame aligned with ``sub``: ``window_density_per_mm2``, ``assessable``, ``passes``, ``covered``.

    Examples
    --------
    >>> from tibspace.tissue import TumourRegion, perimeter_segments
    >>> sub = perimeter_segments(TumourRegion.from_polygons([shapely.box(0, 0, 250, 250)]), 50.0,
    ...                          subdivide=5)                    # 100 sub-segments of 10 µm
    >>> lined = np.zeros(100, int); lined[:40] = 1               # one cell per 10 µm on 0-400 µm
    >>> mac, caf = lined * (np.arange(100) % 2), lined * (1 - np.arange(100) % 2)
    >>> prof = coverage_profile(sub, lined, mac, caf, np.full(100, 500.0), barrier_width_um=50.0,
    ...                         barrier_density=400.0)
    >>> int(prof["passes"].sum()), int(prof["covered"].sum())   # windows that pass; trimmed to 40
    (44, 40)
    >>> arc = np.delete(np.arange(40) * 10.0 + 5.0, [20, 21])    # two cells missing: a 20 µm gap
    >>> prof = coverage_profile(sub, np.bincount((arc // 10).astype(int), minlength=100), mac, caf,
    ...                         np.full(100, 500.0), barrier_width_um=50.0, barrier_density=400.0,
    ...                         cell_sub=(arc // 10).astype(int), cell_arc_um=arc)
    >>> int(prof["covered"].sum()), np.flatnonzero(~prof["covered"].to_numpy()[:40]).tolist()
    (38, [20, 21])
    """
    if window < 1 or window % 2 == 0:
        raise InputError(f"window={window}: expected an odd number of sub-segments")
    idx, ring_of, dens, assessable = _window_density(sub, n_barrier, band_area_um2, window, min_band_fraction,
                                                     barrier_width_um)
    passes = assessable & (dens >= barrier_density)
    by_spacing = np.zeros(ring_of.max() + 1 if ring_of.size else 0, bool)
    if cell_sub is not None and cell_arc_um is not None:
        cell_sub, cell_arc_um = np.asarray(cell_sub, np.int64), np.asarray(cell_arc_um, float)
        ok = np.isfinite(cell_arc_um)
        by_spacing = np.bincount(ring_of[cell_sub[ok]], minlength=by_spacing.size) > _MIN_SPACINGS
    covered = _lined_runs(passes, ring_of, dens, np.asarray(n_macrophage, float), np.asarray(n_caf, float),
                          window, by_spacing)
    if by_spacing.any():
        covered &= ~_gap_step(covered, sub, idx, ring_of, cell_sub, cell_arc_um, sub_arc_um, ring_arc_um, gap_alpha)
    return pd.DataFrame({"window_density_per_mm2": dens, "assessable": assessable, "passes": passes,
                         "covered": covered}, index=sub.index)


def _gap_step(covered, sub, idx, ring_of, cell_sub, cell_arc_um, sub_arc_um, ring_arc_um, gap_alpha):
    """Step 4: rows of ``covered`` that the barrier cells' spacings put in a gap."""
    length = sub["length_um"].to_numpy(float)
    if sub_arc_um is None or ring_arc_um is None:
        sub_arc_um = sub["start_um"].to_numpy(float) + 0.5 * length
        ring_arc_um = np.bincount(ring_of, weights=length)[ring_of]
    near = covered[idx].any(axis=1)
    return _spacing_gap_rows(covered, ring_of, np.asarray(sub_arc_um, float), np.asarray(ring_arc_um, float),
                             cell_sub, cell_arc_um, gap_alpha, near)


def _window_density(sub, n_barrier, band_area_um2, window, min_band_fraction, barrier_width_um):
    """Step 1: each sub-segment's window (``window`` rows centred on it) and its barrier density.

    Returns the window row indices, each row's ring, the density (cells/mm² of band tissue; NaN
    where the band is empty) and whether the window is assessable.
    """
    area = np.asarray(band_area_um2, float)
    length = sub["length_um"].to_numpy(float)
    idx, whole, ring_of = _ring_windows(sub, window // 2)
    wb, wa, wl = (_window_sums(np.asarray(v, float), idx, whole, ring_of) for v in (n_barrier, area, length))
    assessable = wa >= min_band_fraction * wl * float(barrier_width_um)
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = np.where(wa > 0, wb / wa * 1e6, np.nan)
    return idx, ring_of, dens, assessable


def _lined_runs(passes, ring_of, dens, n_mac, n_caf, window, by_spacing) -> np.ndarray:
    """Sub-segments of passing runs that hold both cell types (step 2), ends trimmed (step 3).

    Runs on rings flagged in ``by_spacing`` keep their ends: the spacing
    rule (step 4) places them half a spacing beyond the last cell.
    """
    covered = np.zeros(passes.size, bool)
    for rows in _ring_rows(ring_of, passes):
        keep_ends = bool(by_spacing[ring_of[rows[0]]])
        for start, k in circular_runs(passes[rows]):
            run = rows[(start + np.arange(k)) % rows.size]
            if n_mac[run].sum() >= 1 and n_caf[run].sum() >= 1:
                covered[run if keep_ends else _trim_ends(run, dens, k == rows.size, window)] = True
    return covered


def _trim_ends(run: np.ndarray, dens: np.ndarray, whole_ring: bool, window: int) -> np.ndarray:
    """The rows of ``run`` from the first to the last whose window density is ≥ half the plateau.

    The plateau is the median window density without the ``window − 1``
    rows at each end, whose windows only partly overlap the lining, when at
    least ``window`` rows remain (else the whole run's median). Dips inside
    the run are kept (short gaps are step 4's); a ring-long run has no ends.
    """
    if whole_ring:
        return run
    dr = dens[run]
    ramp = window - 1
    core = dr[ramp:dr.size - ramp] if dr.size - 2 * ramp >= window else dr
    good = np.flatnonzero(dr >= 0.5 * float(np.median(core)))
    return run[good[0]:good[-1] + 1] if good.size else run[:0]


def _spacing_gap_rows(covered, ring_of, centre_um, ring_um, cell_sub, cell_pos, alpha, near) -> np.ndarray:
    """Covered sub-segments lying in a gap between consecutive lining cells (step 4).

    Along each ring holding a covered sub-segment, the band's barrier cells
    at positions u_1 < … < u_n (circular) give spacings g_i = u_i+1 − u_i.
    The lining's spacings are modelled as gamma distributed with one shape κ
    per sample and each ring's own scale, both fitted to the spacings inside
    lined stretches only (:func:`_lining_fit`: the spacings across gaps
    would widen the fit and hide the shorter gaps). A spacing above the
    threshold τ that n spacings of a gapless lining all stay below with
    probability 1 − ``alpha`` is a gap. A cell whose spacings on both sides
    exceed τ_s (:func:`_stray_threshold`, on the sample's median spacing; a
    lining end has one lining spacing) is a stray (a stromal barrier-type cell past an arc's end or
    inside a gap), not lining: it is dropped and its two spacings merge
    (:func:`_drop_strays`).
    Each gap runs from half a mean spacing after u_i to half a mean spacing
    before u_i+1 (length g_i − mean, unbiased between two evenly lined
    arcs); covered sub-segments whose centre lies in it are flagged. Rings
    with fewer than ``_MIN_SPACINGS`` spacings are left as they are. The
    shortest gap found is ≈ τ − mean: ≈ (ln(n / alpha) − 1) mean spacings on
    a Poisson lining, ≈ 1.2 on a lining as regular as the generator's (κ ≈ 7).
    """
    flagged = np.zeros(covered.size, bool)
    rings = [r for r in _ring_cells(covered, ring_of, centre_um, ring_um, cell_sub, cell_pos, near)
             if r[3].size >= _MIN_SPACINGS]
    if not rings:
        return flagged
    kappa, medians = _lining_fit([g for *_, g in rings], alpha)
    # strays are judged against the sample's lining spacing (geometric mean of the rings' medians,
    # weighted by spacings): on a sparsely lined ring a few strays inflate the ring's own median
    n_sp = np.array([g.size for *_, g in rings], float)
    sample_median = float(np.exp(np.sum(n_sp * np.log(medians)) / n_sp.sum()))
    for (rows, centre, u, g), median in zip(rings, medians):
        L = float(ring_um[rows[0]])
        mean, tau = _gap_threshold(median, g.size, kappa, alpha)
        u, g = _drop_strays(u, g, _stray_threshold(sample_median, int((g > tau).sum()), kappa, alpha), L)
        for i in np.flatnonzero(g > tau):
            lo, hi = u[i] + 0.5 * mean, u[i] + g[i] - 0.5 * mean
            inside = ((centre > lo) & (centre < hi)) | ((centre + L > lo) & (centre + L < hi))
            flagged[rows[inside & covered[rows]]] = True
    return flagged


def _lining_fit(spacings: list, alpha: float, n_iter: int = 5) -> tuple[float, list]:
    """Gamma shape κ (one per sample) and median spacing (per ring) of the lining, gaps left out.

    Starts from all spacings of each ring (``spacings``: one array per ring)
    and refits on the spacings ≤ each ring's threshold τ
    (:func:`_gap_threshold`) until the set of kept spacings stops changing.
    Leaving out spacings above τ removes only a share ≈ alpha / n of a
    gapless lining's own spacings, so the fit is not narrowed by it.
    """
    keep = [np.ones(g.size, bool) for g in spacings]
    for _ in range(n_iter):
        medians = [float(np.median(g[k])) for g, k in zip(spacings, keep)]
        kappa = _lining_shape(np.concatenate([g[k] / m for g, k, m in zip(spacings, keep, medians)]))
        new = [g <= _gap_threshold(m, g.size, kappa, alpha)[1] for g, m in zip(spacings, medians)]
        new = [n if n.sum() >= 3 else k for n, k in zip(new, keep)]
        if all(np.array_equal(n, k) for n, k in zip(new, keep)):
            break
        keep = new
    return kappa, medians


def _drop_strays(u: np.ndarray, g: np.ndarray, tau: float, ring_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell positions and circular spacings without the cells whose spacings on both sides exceed ``tau``.

    Such a cell is no part of a lining; left in, it would extend an arc's
    end by up to τ or split a gap in two shorter ones. Kept as they are
    when fewer than two cells would remain.
    """
    stray = (g > tau) & (np.roll(g, 1) > tau)
    if not stray.any() or (~stray).sum() < 2:
        return u, g
    u = u[~stray]
    return u, np.diff(np.r_[u, u[0] + ring_um])


def _ring_cells(covered, ring_of, centre_um, ring_um, cell_sub, cell_pos, near):
    """Per ring with a covered row: rows, row centres, sorted cell positions, circular spacings (µm).

    ``centre_um`` / ``ring_um``: position of each sub-segment's centre along
    its ring and the ring's length (NaN: the ring is skipped); ``cell_pos``
    the cells' positions in the same frame (0 ≤ position < ring length).
    """
    ring_cell = ring_of[cell_sub]
    ok = np.isfinite(cell_pos) & near[cell_sub]
    order = np.lexsort((cell_pos, ring_cell))
    order = order[ok[order]]
    rc, pos = ring_cell[order], cell_pos[order]
    for rows in _ring_rows(ring_of, covered):
        L = float(ring_um[rows[0]])
        centre = centre_um[rows]
        if not (np.isfinite(L) and np.isfinite(centre).all()):
            continue
        r = ring_of[rows[0]]
        u = pos[np.searchsorted(rc, r):np.searchsorted(rc, r, "right")] % L
        u = np.sort(u)
        yield rows, centre, u, (np.diff(np.r_[u, u[0] + L]) if u.size else u)


def _ring_rows(ring_of: np.ndarray, flags: np.ndarray):
    """Row indices of each ring (rings contiguous) holding a flagged row."""
    n = ring_of.size
    first = np.flatnonzero(np.r_[True, ring_of[1:] != ring_of[:-1]]) if n else np.zeros(0, int)
    ends = np.r_[first[1:], n]
    for a, b in zip(first, ends):
        if flags[a:b].any():
            yield np.arange(a, b)


def _lining_shape(spacings_rel: np.ndarray) -> float:
    """Gamma shape κ whose lower / upper quartile ratio is that of ``spacings_rel``."""
    from scipy.stats import gamma

    q1, q3 = np.percentile(spacings_rel, [25, 75])
    ks = np.geomspace(0.3, 300.0, 200)
    ratio = gamma.ppf(0.25, ks) / gamma.ppf(0.75, ks)          # increasing in κ
    return float(np.exp(np.interp(q1 / q3, ratio, np.log(ks)))) if q3 > 0 else 1.0


def _gap_threshold(median_um: float, n: int, kappa: float, alpha: float) -> tuple[float, float]:
    """Mean spacing and threshold τ (µm) of a gamma(κ) lining whose spacings have this median.

    n independent spacings all stay ≤ τ with probability 1 − ``alpha``.
    """
    from scipy.stats import gamma

    theta = median_um / float(gamma.ppf(0.5, kappa))
    return kappa * theta, float(gamma.ppf((1.0 - alpha) ** (1.0 / n), kappa)) * theta


def _stray_threshold(median_um: float, n_gaps: int, kappa: float, alpha: float) -> float:
    """Spacing τ_s (µm) beyond which a cell next to a gap is taken for a stray, not a lining end.

    A lining end cell has a gap on one side and one lining spacing on the
    other; that spacing exceeds τ_s with probability ``alpha`` / (2 n_gaps),
    so all of a ring's 2 n_gaps ends stay with probability ≈ 1 − ``alpha``.
    A cell inside the lining needs both its spacings above τ_s (probability
    ≈ (alpha / 2 n_gaps)²). A stromal barrier-type cell 25–35 µm past an
    arc's end (2–3 mean spacings, below τ) is beyond τ_s.
    """
    from scipy.stats import gamma

    theta = median_um / float(gamma.ppf(0.5, kappa))
    return float(gamma.ppf(1.0 - alpha / max(2 * n_gaps, 2), kappa)) * theta


def outline_positions(region, sub: pd.DataFrame, cell_sub, x_um, y_um, smooth_um: float = _OUTLINE_SMOOTH_UM):
    """Positions along each nest's smoothed outline of sub-segment centres and of cells.

    The frame is the nest's exterior resampled every ≈ 1 µm and smoothed with
    a Gaussian of ``smooth_um`` (µm of arc): on the scalloped outline of a
    tumour region, nearest-point projection bunches cells at convex corners
    and skips concave ones, so their spacings along it do not reflect the
    lining. Positions run in the direction of the ring's sub-segments.

    Returns
    -------
    sub_pos, ring_len : float arrays (len(sub),)
        Position (µm from the frame's start) of each sub-segment's centre and
        the frame's length; NaN on holes.
    cell_pos : float array
        Position of each cell (``cell_sub``: its sub-segment row; ``x_um,
        y_um``); NaN for cells of holes.
    """
    from scipy.ndimage import gaussian_filter1d

    n = len(sub)
    sub_pos, ring_len = np.full(n, np.nan), np.full(n, np.nan)
    cell_sub = np.asarray(cell_sub, np.int64)
    cell_pos = np.full(cell_sub.size, np.nan)
    if n == 0:
        return sub_pos, ring_len, cell_pos
    nest = sub["nest_id"].to_numpy(np.int64)
    outer = sub["ring"].to_numpy(np.int64) == 0
    mids = shapely.line_interpolate_point(np.asarray(sub["geometry"].to_numpy(), dtype=object), 0.5,
                                          normalized=True)
    pts = shapely.points(np.asarray(x_um, float), np.asarray(y_um, float))
    cell_nest = np.where(outer[cell_sub], nest[cell_sub], -1) if cell_sub.size else cell_sub
    order = np.argsort(cell_nest, kind="stable")
    for nid, poly in zip(region.nest_ids(), region.nests):
        rows = np.flatnonzero(outer & (nest == nid))
        if rows.size < 3:
            continue
        ring = shapely.LineString(poly.exterior.coords)
        m = max(int(ring.length), 16)
        xy = shapely.get_coordinates(shapely.line_interpolate_point(ring, np.arange(m) * ring.length / m))
        xy = gaussian_filter1d(xy, smooth_um * m / ring.length, axis=0, mode="wrap")
        line = shapely.LineString(np.r_[xy, xy[:1]])
        L = float(line.length)
        p = shapely.line_locate_point(line, mids[rows])
        step = (np.diff(np.r_[p, p[0]]) + 0.5 * L) % L - 0.5 * L
        sign = 1.0 if np.median(step) >= 0 else -1.0
        sub_pos[rows], ring_len[rows] = (sign * p) % L, L
        mine = order[np.searchsorted(cell_nest[order], nid):np.searchsorted(cell_nest[order], nid, "right")]
        cell_pos[mine] = (sign * shapely.line_locate_point(line, pts[mine])) % L
    return sub_pos, ring_len, cell_pos
