"""Tumour immune barriers (TIB): SPP1+ macrophages and CAFs lining tumour nests.

Implements ``docs/metrics.md`` "Tumour immune barrier"; lengths in µm, areas
in µm², densities in cells per mm² of tissue, signed distance d > 0 outside
the tumour. Each nest boundary ring is cut into perimeter segments of
``segment_um`` (:func:`tibspace.tissue.perimeter_segments`) and every cell
goes to its nearest segment. Per segment, nest and sample:

- coverage: a segment's outer band (0 < d ≤ ``barrier_width_um``) is lined
  when it holds barrier cells at ≥ ``barrier_density`` and ≥ 1 SPP1+
  macrophage and ≥ 1 CAF; coverage is measured along the boundary at
  sub-segment resolution (:mod:`tibspace.analyses.barrier_coverage`) and
  ``barrier_coverage`` = covered / assessable length;
- gaps (maximal circular runs of uncovered boundary), thickness (90th
  percentile of d of a covered segment's barrier cells), composition
  (macrophage : CAF), macrophage–CAF colocalisation (cross-L, random
  labelling);
- the barrier → exclusion link (:mod:`tibspace.analyses.barrier_link`).

Conventions beyond metrics.md:

- a segment whose outer band holds < 25 % of its nominal tissue area (a nest
  at the tissue edge) is not assessable: neither covered nor a gap (it ends a
  gap run); ``perimeter_um`` is still the full boundary length;
- the per-segment T-cell ratio uses +0.5 on both counts,
  ``((n_in+0.5)/A_in) / ((n_out+0.5)/A_out)``, because a 50 µm band often
  holds 0–3 T cells; segments with < 25 % of the nominal inner or outer band
  area get NaN and are left out of the link;
- the link pools the counts and areas over covered and over uncovered
  segments (:func:`~tibspace.analyses.barrier_link.pooled_ratio_shift_test`);
  its inner band stops ``link_guard_um`` (10 µm) inside the outline and its
  outer band reaches ``outside_band_um`` (200 µm), so T cells kept off a
  barrier at any distance up to 200 µm still count as outside;
- thickness is capped at ``barrier_width_um`` (only band cells count).

Needs SPP1 macrophage, CAF and effector T phenotypes (:func:`can_run_barrier`).
A sample without barrier cells is a valid result (coverage 0), not an error.
Measurements behind these choices: ``docs/validation/barrier.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
import shapely

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.jsonable import to_jsonable as _json
from tibspace.cells import as_phenotype_list as _as_types
from tibspace.cells import phenotype_names as _phenotype_names
from tibspace.analyses.barrier_coverage import (_COVERAGE_SUBDIVIDE, _MIN_BAND_FRACTION, _crosstab_band,
                                                _runs_table, circular_runs, coverage_profile)
from tibspace.analyses.barrier_link import (_LinkBands, _masked_medians, circular_shift_test,
                                           pooled_ratio_shift_test)

__all__ = ["BarrierResult", "barrier_analysis", "circular_runs", "circular_shift_test",
           "can_run_barrier", "coverage_profile"]


def can_run_barrier(panel_or_phenotypes: Any, *, macrophage_types: Iterable[str] = ("SPP1_macrophage",),
                    caf_types: Iterable[str] = ("CAF",), t_types: Iterable[str] = ("CD8_T",)
                    ) -> tuple[bool, str]:
    """Whether the barrier analysis can run with these phenotypes.

    Examples
    --------
    >>> can_run_barrier(["tumour", "SPP1_macrophage", "CAF", "CD8_T"])
    (True, '')
    >>> ok, why = can_run_barrier(["tumour", "CAF", "CD8_T"]); ok
    False
    """
    have = _phenotype_names(panel_or_phenotypes)
    for role, types, hint in (("spp1_macrophage", macrophage_types, "SPP1_macrophage = \"CD68+ & SPP1+\""),
                              ("caf", caf_types, "CAF = \"(aSMA+ | FAP+) & not HepPar1+\""),
                              ("effector_t", t_types, "CD8_T = \"CD3+ & CD8+\"")):
        t = [str(x) for x in types]
        if not set(t) & have:
            return False, (f"no phenotype for role {role} ({', '.join(t) or 'none given'}) is defined; "
                           f"a TIB needs SPP1+ macrophages, CAFs and T cells: add e.g. {hint}")
    return True, ""


# ---------------------------------------------------------------------------
@dataclass
class BarrierResult:
    """Result of :func:`barrier_analysis` (µm, µm², cells/mm²).

    Attributes
    ----------
    segments : DataFrame
        One row per perimeter segment: ``segment_id, nest_id, ring, position,
        length_um, geometry, n_barrier, n_macrophage, n_caf, outer_area_um2,
        barrier_density_per_mm2, assessable, covered, thickness_um,
        n_t_inner, n_t_outer, inner_area_um2, t_inner_density,
        t_outer_density, t_ratio``.
    per_nest : DataFrame
        One row per nest (coverage, gaps, thickness, composition, link).
    sample : dict
        Whole-sample numbers (coverage, gaps, composition, colocalisation, link).
    colocalization : DataFrame
        Cross-L macrophage → CAF envelope table.
    covered_geometry, gap_geometry : shapely MultiLineString
        Covered runs and gap runs along the boundary (µm).
    gaps : DataFrame
        ``nest_id, ring, start_um, n_subsegments, length_um`` per gap run.
    runs : DataFrame
        Covered and gap runs for display / export: the ``gaps`` columns plus
        ``covered`` (bool) and ``geometry``.
    parameters : dict
    """

    segments: pd.DataFrame
    per_nest: pd.DataFrame
    sample: dict
    colocalization: pd.DataFrame = field(default_factory=pd.DataFrame)
    covered_geometry: Any = None
    gap_geometry: Any = None
    gaps: pd.DataFrame = field(default_factory=pd.DataFrame)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    parameters: dict = field(default_factory=dict)

    @property
    def barrier_coverage(self) -> float:
        """Covered / assessable boundary length over all nests."""
        return self.sample["barrier_coverage"]

    def to_dict(self) -> dict:
        """JSON-safe summary for metrics.json (geometries left out; see outputs for GeoJSON)."""
        seg = self.segments.drop(columns=["geometry"], errors="ignore")
        return _json({
            "sample": self.sample,
            "per_nest": self.per_nest,
            "segments": seg,
            "gaps": self.gaps,
            "colocalization": self.colocalization,
            "parameters": self.parameters,
        })


#: progress steps of :func:`barrier_analysis`
_N_STEPS = 6


def barrier_analysis(cells: pd.DataFrame, region, tissue, *, barrier_types=("SPP1_macrophage", "CAF"),
                     macrophage_types=("SPP1_macrophage",), caf_types=("CAF",), t_types=("CD8_T",),
                     segment_um: float = 50.0, barrier_width_um: float = 50.0, barrier_density: float = 400.0,
                     margin_um: float = 50.0, outside_band_um: float = 200.0, link_guard_um: float = 10.0,
                     colocalization_radii_um=(20.0, 30.0, 50.0), n_shifts: int = 999,
                     n_sim: int = 199, seed: int = 0, signed_dist_um=None, progress=None) -> BarrierResult:
    """SPP1+ macrophage / CAF barriers along tumour nest boundaries.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``x_um``, ``y_um``, ``phenotype``.
    region : tibspace.tissue.TumourRegion
        Tumour nests; the perimeter segments are always cut from it.
    tissue : shapely geometry
        Tissue region (µm); densities are per tissue area.
    barrier_types, macrophage_types, caf_types, t_types : tuple of str
        Phenotype roles (barrier cells; SPP1 macrophages; CAFs; effector T).
    segment_um, barrier_width_um, barrier_density : float
        Perimeter segment arc length (µm); width w of the outer band 0 < d ≤ w that must
        hold the barrier (µm); barrier-cell density a covered band needs (cells/mm² of tissue).
    margin_um, link_guard_um, outside_band_um : float
        Link T-cell bands (µm): inner −``margin_um`` < d ≤ −``link_guard_um``,
        outer 0 < d ≤ ``outside_band_um`` (why: :class:`_LinkBands`).
    colocalization_radii_um : sequence of float
        Radii of the macrophage → CAF cross-L (µm).
    n_shifts, n_sim, seed : int
        Link-test circular shifts (≥ 999 recommended); colocalisation-envelope simulations; seed.
    signed_dist_um : array of float, optional
        Signed distance of every cell to ``region``'s boundary (µm) when already
        computed (:func:`~tibspace.tissue.annotate_cells`), else computed here.
    progress : callable, optional

    Returns
    -------
    BarrierResult

    Raises
    ------
    InputError
        Missing columns, an empty role list, a non-positive length, empty tissue.

    Examples
    --------
    >>> from tibspace.tissue import TumourRegion
    >>> rng = np.random.default_rng(0)
    >>> region = TumourRegion.from_polygons([shapely.Point(400, 400).buffer(150)])
    >>> ang = np.linspace(0.05, np.pi - 0.05, 40); r = 150 + rng.uniform(2, 45, 40)   # half lined
    >>> x = np.r_[400 + r * np.cos(ang), rng.uniform(0, 800, 1500)]
    >>> y = np.r_[400 + r * np.sin(ang), rng.uniform(0, 800, 1500)]
    >>> ph = np.r_[np.where(np.arange(40) % 2, "CAF", "SPP1_macrophage"),
    ...            rng.choice(["other", "CD8_T"], 1500, p=[0.9, 0.1])]
    >>> cells = pd.DataFrame({"x_um": x, "y_um": y, "phenotype": ph})
    >>> res = barrier_analysis(cells, region, shapely.box(0, 0, 800, 800), n_sim=19, n_shifts=99)
    >>> round(res.barrier_coverage, 1), res.sample["n_gaps"]
    (0.5, 1)
    """
    types, params, lb = _prepare(cells, tissue, barrier_types, macrophage_types, caf_types, t_types, segment_um,
                                 barrier_width_um, barrier_density, margin_um, outside_band_um, link_guard_um,
                                 colocalization_radii_um, n_shifts, n_sim, seed)
    bw, mw = float(barrier_width_um), lb.inner_um
    report(progress, "barrier", 0, _N_STEPS)
    seg, sub, parent = _boundary_segments(region, float(segment_um))
    c = _assign_cells(cells, region, sub, parent, types, max(bw, mw, lb.outer_um), signed_dist_um)
    report(progress, "barrier", 1, _N_STEPS)
    areas = _band_areas(sub, parent, len(seg), region, tissue, bw, lb)
    report(progress, "barrier", 2, _N_STEPS)
    seg, prof = _segment_table(seg, sub, parent, c, areas, bw, lb, float(barrier_density))
    report(progress, "barrier", 3, _N_STEPS)
    runs, gap_runs, covered_geometry, gap_geometry = _coverage_runs(sub, prof)
    link = _link(seg, n_shifts, seed)
    report(progress, "barrier", 4, _N_STEPS)
    per_nest = _per_nest_table(seg, sub, prof, gap_runs, region.n_nests, n_shifts, seed)
    report(progress, "barrier", 5, _N_STEPS)
    coloc, coloc_note = _colocalization(c, colocalization_radii_um, tissue, n_sim, seed)
    sample = _sample_summary(seg, sub, prof, gap_runs, region.n_nests, coloc, coloc_note, link)
    report(progress, "barrier", _N_STEPS, _N_STEPS)
    return BarrierResult(segments=seg, per_nest=per_nest, sample=sample, colocalization=coloc,
                         covered_geometry=covered_geometry, gap_geometry=gap_geometry, gaps=gap_runs,
                         runs=runs, parameters=params)


# ---------------------------------------------------------------------------
# steps of barrier_analysis
def _prepare(cells, tissue, barrier_types, macrophage_types, caf_types, t_types, segment_um, barrier_width_um,
             barrier_density, margin_um, outside_band_um, link_guard_um, colocalization_radii_um, n_shifts, n_sim,
             seed):
    """Checked role lists, the recorded parameters and the link's T-cell bands of :func:`barrier_analysis`."""
    types = _check_inputs(cells, tissue, barrier_types, macrophage_types, caf_types, t_types,
                          segment_um=segment_um, barrier_width_um=barrier_width_um, margin_um=margin_um,
                          outside_band_um=outside_band_um)
    lb = _LinkBands.of(margin_um, outside_band_um, link_guard_um)
    params = _parameters(types, segment_um, barrier_width_um, barrier_density, margin_um,
                         colocalization_radii_um, n_shifts, n_sim, seed)
    params.update(outside_band_um=lb.outer_um, link_guard_um=lb.guard_um)
    return types, params, lb


def _parameters(types, segment_um, barrier_width_um, barrier_density, margin_um, colocalization_radii_um,
                n_shifts, n_sim, seed) -> dict:
    """The parameters recorded with a result: role lists, lengths (µm), density (cells/mm²), counts."""
    return {**types, "segment_um": float(segment_um), "barrier_width_um": float(barrier_width_um),
            "barrier_density": float(barrier_density), "margin_um": float(margin_um),
            "colocalization_radii_um": [float(r) for r in colocalization_radii_um],
            "n_shifts": int(n_shifts), "n_sim": int(n_sim), "seed": int(seed),
            "min_band_fraction": _MIN_BAND_FRACTION, "t_ratio_pseudocount": 0.5}


def _boundary_segments(region, segment_um: float):
    """Perimeter segments of ``region``, their sub-segments and each sub-segment's segment.

    Returns
    -------
    seg, sub : DataFrame
        :func:`~tibspace.tissue.perimeter_segments` tables at ``segment_um``
        and subdivided ``_COVERAGE_SUBDIVIDE`` times (index 0..n−1).
    parent : int array (len(sub),)
        Row of ``seg`` holding each sub-segment. Every segment is
        ``_COVERAGE_SUBDIVIDE`` consecutive sub-segments (rows in the same
        order), so a cell's nearest segment is the parent of its nearest
        sub-segment and a segment's band area is the sum of its sub-segments'.
    """
    from tibspace import tissue as geo

    seg = geo.perimeter_segments(region, segment_um=segment_um).reset_index(drop=True)
    sub = geo.perimeter_segments(region, segment_um=segment_um,
                                 subdivide=_COVERAGE_SUBDIVIDE).reset_index(drop=True)
    return seg, sub, np.arange(len(sub)) // _COVERAGE_SUBDIVIDE


def _check_inputs(cells, tissue, barrier_types, macrophage_types, caf_types, t_types, **lengths) -> dict:
    """Validate the cell table, role lists, lengths and tissue; return the role lists."""
    if not isinstance(cells, pd.DataFrame):
        raise InputError(f"cells must be a pandas DataFrame (got {type(cells).__name__})")
    miss = [c for c in ("x_um", "y_um", "phenotype") if c not in cells.columns]
    if miss:
        raise InputError(f"cell table lacks column(s) {miss}; expected x_um, y_um (µm) and phenotype")
    types = {"barrier_types": _as_types(barrier_types, "barrier_types"),
             "macrophage_types": _as_types(macrophage_types, "macrophage_types"),
             "caf_types": _as_types(caf_types, "caf_types"),
             "t_types": _as_types(t_types, "t_types")}
    for name, v in lengths.items():
        if not (np.isfinite(v) and v > 0):
            raise InputError(f"{name}={v}: expected a positive length in µm")
    if tissue is None or tissue.is_empty:
        raise InputError("tissue region is empty; expected a shapely (Multi)Polygon in µm")
    return types


@dataclass
class _Cells:
    """The role cells of a table, with distances and sub-segment assignment.

    ``x, y, is_mac, is_caf`` cover every cell (for the colocalisation); the
    other arrays cover only role cells (barrier, macrophage, CAF, T), the rest
    can fall in no band. ``sub_of`` / ``sid``: nearest sub-segment / segment
    of cells within reach of the boundary, −1 otherwise.
    """

    x: np.ndarray
    y: np.ndarray
    is_mac: np.ndarray
    is_caf: np.ndarray
    d: np.ndarray
    sub_of: np.ndarray
    sid: np.ndarray
    bar: np.ndarray
    mac: np.ndarray
    caf: np.ndarray
    t: np.ndarray


def _assign_cells(cells, region, sub, parent, types, reach, signed_dist_um) -> _Cells:
    """Role cells of ``cells`` with their signed distance d (µm) and nearest (sub-)segment.

    Cells with |d| ≤ ``reach`` (µm) are assigned to their nearest row of ``sub``
    and, through ``parent``, to its segment; the others get −1 (see :class:`_Cells`).
    """
    from tibspace import tissue as geo

    x = cells["x_um"].to_numpy(float)
    y = cells["y_um"].to_numpy(float)
    ph = cells["phenotype"].astype(str).to_numpy()
    is_bar = np.isin(ph, types["barrier_types"])
    is_mac = np.isin(ph, types["macrophage_types"])
    is_caf = np.isin(ph, types["caf_types"])
    is_t = np.isin(ph, types["t_types"])
    use = is_bar | is_t | is_mac | is_caf
    xu, yu = x[use], y[use]
    if signed_dist_um is None:
        d = np.asarray(geo.signed_distance_um(xu, yu, region), float)
    else:
        d = np.asarray(signed_dist_um, float)
        if d.shape != (len(cells),):
            raise InputError(f"signed_dist_um has shape {d.shape}; expected one value per cell ({len(cells)})")
        d = d[use]
    near = np.abs(d) <= reach
    n_sub = len(sub)
    sub_of = np.full(d.shape, -1, np.int64)
    if n_sub and near.any():
        sub_of[near] = np.asarray(geo.assign_segments(xu[near], yu[near], sub), np.int64)
    sid = np.where(sub_of >= 0, parent[np.maximum(sub_of, 0)] if n_sub else -1, -1)
    return _Cells(x=x, y=y, is_mac=is_mac, is_caf=is_caf, d=d, sub_of=sub_of, sid=sid,
                  bar=is_bar[use], mac=is_mac[use], caf=is_caf[use], t=is_t[use])


def _band_areas(sub, parent, n_seg, region, tissue, bw, lb: _LinkBands) -> dict:
    """Tissue area of the barrier band per sub-segment, and of the barrier / T bands per segment."""
    from tibspace import tissue as geo

    if len(sub):
        sub_area = geo.segment_band_areas_um2(sub, region, tissue, 0.0, bw)
        sub_t_outer = (sub_area if lb.outer_um == bw
                       else geo.segment_band_areas_um2(sub, region, tissue, 0.0, lb.outer_um))
        sub_t_inner = geo.segment_band_areas_um2(sub, region, tissue, -lb.inner_um, -lb.guard_um)
    else:
        sub_area = sub_t_outer = sub_t_inner = np.zeros(0)
    outer, t_outer, t_inner = (np.bincount(parent, weights=a, minlength=n_seg)
                               for a in (sub_area, sub_t_outer, sub_t_inner))
    return {"sub": sub_area, "outer": outer, "t_outer": t_outer, "t_inner": t_inner}


def _segment_table(seg, sub, parent, c: _Cells, areas, bw, lb: _LinkBands, barrier_density):
    """Per-segment counts, densities, coverage, thickness and T ratio; the sub-segment profile."""
    n_seg, n_sub = len(seg), len(sub)
    sid, d = c.sid, c.d
    in_bar_band = (sid >= 0) & (d > 0) & (d <= bw)
    n_bar = _crosstab_band(sid, in_bar_band & c.bar, n_seg)
    n_mac = _crosstab_band(sid, in_bar_band & c.mac, n_seg)
    n_caf = _crosstab_band(sid, in_bar_band & c.caf, n_seg)
    n_t_in = _crosstab_band(sid, (sid >= 0) & (d > -lb.inner_um) & (d <= -lb.guard_um) & c.t, n_seg)
    n_t_out = _crosstab_band(sid, (sid >= 0) & (d > 0) & (d <= lb.outer_um) & c.t, n_seg)
    length = seg["length_um"].to_numpy(float)
    outer_area, t_outer_area, t_inner_area = areas["outer"], areas["t_outer"], areas["t_inner"]
    nominal_bar = length * bw
    nominal_in, nominal_out = length * (lb.inner_um - lb.guard_um), length * lb.outer_um
    assessable = outer_area >= _MIN_BAND_FRACTION * nominal_bar
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = np.where(outer_area > 0, n_bar / outer_area * 1e6, np.nan)
        t_ok = (t_inner_area >= _MIN_BAND_FRACTION * nominal_in) & (t_outer_area >= _MIN_BAND_FRACTION * nominal_out)
        t_in_dens = np.where(t_inner_area > 0, n_t_in / t_inner_area * 1e6, np.nan)
        t_out_dens = np.where(t_outer_area > 0, n_t_out / t_outer_area * 1e6, np.nan)
        t_ratio = np.where(assessable & t_ok,
                           ((n_t_in + 0.5) / t_inner_area) / ((n_t_out + 0.5) / t_outer_area), np.nan)

    sub_of = c.sub_of
    in_band_any = (sub_of >= 0) & (d > 0) & (d <= bw) & (c.bar | c.mac | c.caf)
    prof = coverage_profile(sub, _crosstab_band(sub_of, in_band_any & c.bar, n_sub),
                            _crosstab_band(sub_of, in_band_any & c.mac, n_sub),
                            _crosstab_band(sub_of, in_band_any & c.caf, n_sub), areas["sub"],
                            barrier_width_um=bw, barrier_density=barrier_density, window=_COVERAGE_SUBDIVIDE)
    sub_len = sub["length_um"].to_numpy(float)
    sub_cov = prof["covered"].to_numpy(bool)
    # a segment (for the link test and the segment table) is covered when most of its length is
    covered = assessable & (np.bincount(parent, weights=sub_len * sub_cov, minlength=n_seg)
                            >= 0.5 * length)
    thick = _thickness(sid, d, in_bar_band & c.bar, covered, n_seg)
    seg = seg.assign(n_barrier=n_bar, n_macrophage=n_mac, n_caf=n_caf, outer_area_um2=outer_area,
                     barrier_density_per_mm2=dens, assessable=assessable, covered=covered,
                     thickness_um=thick, n_t_inner=n_t_in, n_t_outer=n_t_out, inner_area_um2=t_inner_area,
                     t_outer_area_um2=t_outer_area,
                     t_inner_density=t_in_dens, t_outer_density=t_out_dens, t_ratio=t_ratio)
    return seg, prof


def _thickness(sid, d, sel, covered, n_seg) -> np.ndarray:
    """90th percentile of d of the selected (barrier band) cells of each covered segment."""
    thick = np.full(n_seg, np.nan)
    if sel.any():
        s_sid, s_d = sid[sel], d[sel]
        o = np.lexsort((s_d, s_sid))
        s_sid, s_d = s_sid[o], s_d[o]
        bounds = np.flatnonzero(np.diff(np.r_[-1, s_sid, n_seg + 1]))
        for a, b in zip(bounds[:-1], bounds[1:]):
            k = s_sid[a]
            if covered[k]:
                thick[k] = float(np.percentile(s_d[a:b], 90))
    return thick


def _coverage_runs(sub, prof):
    """Covered runs and gaps (state 1 covered, 0 uncovered-assessable, −1 not assessable)."""
    sub_cov = prof["covered"].to_numpy(bool)
    sub_ok = prof["assessable"].to_numpy(bool)
    state = np.where(~sub_ok, -1, np.where(sub_cov, 1, 0)).astype(np.int8)
    cov_runs, cov_lines = _runs_table(sub, state, 1)
    gap_runs, gap_lines = _runs_table(sub, state, 0)
    covered_geometry = shapely.MultiLineString(cov_lines) if cov_lines else shapely.MultiLineString()
    gap_geometry = shapely.MultiLineString(gap_lines) if gap_lines else shapely.MultiLineString()
    runs = pd.concat([cov_runs.assign(covered=True, geometry=pd.Series(cov_lines, dtype=object)),
                      gap_runs.assign(covered=False, geometry=pd.Series(gap_lines, dtype=object))],
                     ignore_index=True)
    return runs, gap_runs, covered_geometry, gap_geometry


def _ring_keys(seg):
    """One integer per boundary ring of a segment table: nest_id * 100 000 + ring."""
    return seg["nest_id"].to_numpy(np.int64) * 100_000 + seg["ring"].to_numpy(np.int64)


def _link(seg, n_shifts, seed, mask=None) -> dict:
    """Pooled-ratio circular-shift link test over the assessable segments (all, or those in ``mask``)."""
    m = np.isfinite(seg["t_ratio"].to_numpy(float))
    if mask is not None:
        m &= np.asarray(mask, bool)
    col = lambda k: seg[k].to_numpy(float)[m]
    return pooled_ratio_shift_test(col("n_t_inner"), col("inner_area_um2"), col("n_t_outer"),
                                   col("t_outer_area_um2"), seg["covered"].to_numpy(bool)[m], _ring_keys(seg)[m],
                                   seg["position"].to_numpy(np.int64)[m], n_shifts=n_shifts, seed=seed)


def _per_nest_table(seg, sub, prof, gap_runs, n_nests, n_shifts, seed) -> pd.DataFrame:
    """One row per nest 1..n_nests: coverage, gaps, thickness, composition and link.

    Lengths in µm; composition counts the band cells of covered segments; the
    link test runs within the nest with seed ``seed + nest_id``.
    """
    length = seg["length_um"].to_numpy(float)
    covered = seg["covered"].to_numpy(bool)
    thick = seg["thickness_um"].to_numpy(float)
    n_mac, n_caf = seg["n_macrophage"].to_numpy(), seg["n_caf"].to_numpy()
    sub_len = sub["length_um"].to_numpy(float)
    sub_ok = prof["assessable"].to_numpy(bool)
    sub_cov = prof["covered"].to_numpy(bool)
    sub_nest = sub["nest_id"].to_numpy()
    rows = []
    for k in np.arange(1, n_nests + 1):
        m = seg["nest_id"].to_numpy() == k
        ms = sub_nest == k
        L = float(length[m].sum())
        La = float(sub_len[ms & sub_ok].sum())
        Lc = float(sub_len[ms & sub_cov].sum())
        g = gap_runs[gap_runs["nest_id"] == k]["length_um"].to_numpy(float)
        lk = _link(seg, n_shifts, seed + int(k), mask=m)
        nm = int(n_mac[m & covered].sum())
        nc = int(n_caf[m & covered].sum())
        rows.append({
            "nest_id": int(k), "perimeter_um": L, "assessable_perimeter_um": La,
            "n_segments": int(m.sum()), "n_covered_segments": int((m & covered).sum()),
            "barrier_coverage": Lc / La if La > 0 else float("nan"),
            "covered_length_um": Lc, "n_gaps": int(len(g)), "gap_lengths_um": [float(v) for v in g],
            "largest_gap_um": float(g.max()) if len(g) else 0.0,
            "mean_thickness_um": float(np.nanmean(thick[m & covered])) if (m & covered).any() else float("nan"),
            "n_macrophage_barrier": nm, "n_caf_barrier": nc,
            "macrophage_caf_ratio": nm / nc if nc > 0 else float("nan"),
            "link_t_ratio_covered": lk["ratio_covered"],
            "link_t_ratio_uncovered": lk["ratio_uncovered"],
            "link_difference": lk["statistic"], "link_p_value": lk["p_value"],
            "link_exact": lk["exact"],
        })
    return pd.DataFrame(rows)


def _colocalization(c: _Cells, radii_um, tissue, n_sim, seed):
    """Cross-L macrophage → CAF envelope under random labelling (table, note when skipped)."""
    radii = np.asarray(radii_um, float)
    try:
        lab = np.where(c.is_mac, "__mac__", np.where(c.is_caf, "__caf__", "__other__"))
        tab = pd.DataFrame({"x_um": c.x, "y_um": c.y, "phenotype": lab})
        from tibspace.stats import random_labelling_envelope

        coloc = random_labelling_envelope(tab, "cross_L", "__mac__", "__caf__", radii, tissue, n_sim=n_sim,
                                          seed=seed, outside="drop")
        coloc.insert(1, "L_minus_r_um", coloc["value"] - coloc["r_um"])
        return coloc, ""
    except InputError as exc:
        return pd.DataFrame(), f"colocalisation skipped: {exc}"


def _sample_summary(seg, sub, prof, gap_runs, n_nests, coloc, coloc_note, link) -> dict:
    """Whole-sample numbers: coverage over all nests, gaps, thickness, composition, colocalisation, link."""
    length = seg["length_um"].to_numpy(float)
    covered = seg["covered"].to_numpy(bool)
    thick = seg["thickness_um"].to_numpy(float)
    n_mac, n_caf = seg["n_macrophage"].to_numpy(), seg["n_caf"].to_numpy()
    sub_len = sub["length_um"].to_numpy(float)
    La = float(sub_len[prof["assessable"].to_numpy(bool)].sum())
    Lc = float(sub_len[prof["covered"].to_numpy(bool)].sum())
    g_all = gap_runs["length_um"].to_numpy(float)
    nm_c, nc_c = int(n_mac[covered].sum()), int(n_caf[covered].sum())
    return {
        "n_nests": int(n_nests), "n_segments": int(len(seg)),
        "perimeter_um": float(length.sum()), "assessable_perimeter_um": La,
        "covered_length_um": Lc, "barrier_coverage": Lc / La if La > 0 else float("nan"),
        "n_gaps": int(len(g_all)), "largest_gap_um": float(g_all.max()) if len(g_all) else 0.0,
        "median_gap_um": float(np.median(g_all)) if len(g_all) else 0.0,
        "mean_thickness_um": float(np.nanmean(thick[covered])) if covered.any() else float("nan"),
        "n_macrophage_barrier": nm_c, "n_caf_barrier": nc_c,
        "macrophage_caf_ratio": nm_c / nc_c if nc_c > 0 else float("nan"),
        "n_macrophage_band": int(n_mac.sum()), "n_caf_band": int(n_caf.sum()),
        "colocalization": _coloc_summary(coloc, coloc_note),
        "link": _link_summary(link),
    }


def _coloc_summary(coloc, note) -> dict:
    """The colocalisation envelope as lists per radius, with its global p and the skip note."""
    return {
        "statistic": "cross_L SPP1_macrophage -> CAF, random labelling among macrophages and CAFs",
        "r_um": coloc["r_um"].tolist() if len(coloc) else [],
        "L_um": coloc["value"].tolist() if len(coloc) else [],
        "envelope_lo_um": coloc["lo"].tolist() if len(coloc) else [],
        "envelope_hi_um": coloc["hi"].tolist() if len(coloc) else [],
        "p_value": coloc["p_value"].tolist() if len(coloc) else [],
        "p_global": float(coloc["p_global"].iat[0]) if len(coloc) else float("nan"),
        "note": note,
    }


def _link_summary(link) -> dict:
    """The link test result with the definitions of its statistic, null and alternative."""
    return {
        "statistic": "log pooled t_ratio(covered segments) - log pooled t_ratio(uncovered segments)",
        "t_ratio": ("pooled over a set of segments: ((sum n_T inner + 0.5) / sum inner area) / "
                    "((sum n_T outer + 0.5) / sum outer area); inner -margin_um < d <= -link_guard_um, "
                    "outer 0 < d <= outside_band_um"),
        "alternative": "less: covered segments have a LOWER pooled T inner/outer density ratio",
        "difference": link["statistic"], "p_value": link["p_value"],
        "t_ratio_covered": link["ratio_covered"],
        "t_ratio_uncovered": link["ratio_uncovered"],
        "n_covered": link["n_covered"], "n_uncovered": link["n_uncovered"],
        "n_shifts": link["n_shifts"], "exact": link["exact"],
        "n_informative_rings": link["n_informative_rings"],
        "null": "covered labels rotated along each boundary ring by independent uniform offsets",
        "note": ("" if link["n_informative_rings"] else
                 "no boundary ring has both covered and uncovered segments: the within-ring shift test "
                 "has no power here (compare nests with per_nest barrier_coverage instead)"),
    }
