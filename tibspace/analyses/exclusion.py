"""T-cell exclusion: compartment densities, immune phenotype calls and exclusion zones.

Implements ``docs/metrics.md`` "T-cell exclusion" in µm and cells/mm²:

- T-cell densities per TISSUE area of the tumour core (d ≤ −w), inner margin
  (−w < d ≤ 0), outer margin (0 < d ≤ w) and stroma (w < d ≤
  ``outside_band_um``), with exact band areas from polygon buffers of the
  tumour region intersected with the tissue region;
- ``infiltration_ratio`` = density in (d ≤ 0) / density in (0 < d ≤ 200 µm);
- an immune phenotype call (``desert`` / ``excluded`` / ``inflamed``) per
  sample and per nest, with the numbers and the rule that decided it
  (:func:`call_immune_phenotype`);
- exclusion zones: polygons of the margin band −w < d ≤ w where a Gaussian
  kernel T-density map falls below ``exclusion_fraction`` × the stromal T
  density, and the fraction of the tumour perimeter that borders a zone.

Choices that metrics.md leaves open (stated here and in the docstrings):

- "stromal T density" (the zone reference) is the density in the stroma
  compartment w < d ≤ ``outside_band_um``.
- The density map is a *normalised* convolution: Gaussian-smoothed binned
  counts divided by the Gaussian-smoothed tissue fraction of each grid cell,
  so tissue edges and holes do not pull the density down (a plain KDE would
  call every tissue edge an exclusion zone).
- Zones are polygonised from the grid (exact union of grid squares) and then
  clipped to the exact band polygon, so zone edges along d = ±w and the tissue
  border are exact, not staircase.
- Zones must be *significant*: at a few hundred CD8/mm² a 30 µm kernel
  holds ~2 T cells, so "density < 25 % of stroma" fires by chance. A zone
  is kept only if its T-cell count is improbably low against the stroma's,
  area for area. The stromal density is itself a count, so the test is the
  conditional two-Poisson test: with ``n`` T cells in zone area ``A`` and
  ``n_s`` in stromal area ``A_s``, under equal densities
  ``n ~ Binomial(n + n_s, A / (A + A_s))`` and ``p = P(N ≤ n)``
  (< ``zone_alpha``, default 0.05); ``zone_p_value`` is reported per zone.
  (A Poisson test at the stromal density taken as exact called a zone on a
  real DCIS field from 2 stromal T cells.)
- A *desert* sample has no exclusion zones: a zone is a margin where T cells
  stop, and a desert has no T-cell population to stop (the call and zones
  along the whole perimeter at once contradicted each other on real DCIS
  fields); ``zone_note`` says so.
- A boundary point "borders" a zone when it lies within ``bandwidth_um`` of
  it: the map resolves nothing finer than its kernel, and a T-poor inner
  margin whose zone stops a few µm short of the boundary still borders it.

Per-nest numbers use the nearest-nest partition: a cell belongs to the nest
it lies in or, outside, to the nearest nest; band areas are partitioned the
same way (through the perimeter segments' nearest-segment band areas).
This analysis needs only the effector T phenotype(s); see
:func:`can_run_exclusion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.jsonable import to_jsonable as _json
from tibspace.cells import as_phenotype_list as _as_types
from tibspace.cells import phenotype_names as _phenotype_names
from tibspace.analyses.exclusion_map import (DensityMap, _grid_polygons, _merge_disjoint_sides, _rasterize,
                                             t_density_map)

__all__ = ["ExclusionResult", "exclusion_analysis", "call_immune_phenotype", "t_density_map",
           "can_run_exclusion", "COMPARTMENTS"]

#: Compartment names in order of signed distance.
COMPARTMENTS = ("core", "inner_margin", "outer_margin", "stroma")
_BORDER_TOL_UM = 1.0


def can_run_exclusion(panel_or_phenotypes: Any, t_types: Iterable[str] = ("CD8_T",)) -> tuple[bool, str]:
    """Whether the exclusion analysis can run with these phenotypes.

    Parameters
    ----------
    panel_or_phenotypes : Panel, dict, DataFrame or iterable of str
        The phenotypes the panel defines (or a cell table's ``phenotype``).
    t_types : iterable of str
        Effector T phenotypes.

    Returns
    -------
    (bool, str)
        ``(True, "")`` or ``(False, reason)``.

    Examples
    --------
    >>> can_run_exclusion(["tumour", "CD8_T"])
    (True, '')
    >>> can_run_exclusion(["tumour"])[0]
    False
    """
    have = _phenotype_names(panel_or_phenotypes)
    t = [str(x) for x in t_types]
    if not t or not set(t) & have:
        return False, (f"no effector T phenotype ({', '.join(t) or 'none given'}) is defined; "
                       "add e.g. CD8_T = \"CD3+ & CD8+\" and list it under [roles] effector_t")
    return True, ""


# ---------------------------------------------------------------------------
def call_immune_phenotype(t_density_margin: float, t_density_outside: float, infiltration_ratio: float,
                          *, desert_density: float = 50.0, excluded_ratio: float = 0.5
                          ) -> tuple[str, dict]:
    """Immune phenotype from T-cell densities, with the rule that decided it.

    ``desert`` if the T density within ±w of the tumour boundary AND in the
    outside band are both below ``desert_density`` (cells/mm²); else
    ``excluded`` if ``infiltration_ratio < excluded_ratio``; else
    ``inflamed``. ``undetermined`` when the densities are undefined (no
    tissue area).

    Returns
    -------
    call : str
    decision : dict
        The inputs, thresholds and a one-line ``rule``.

    Examples
    --------
    >>> call_immune_phenotype(300.0, 400.0, 0.21)[1]["rule"]
    'excluded: infiltration_ratio 0.21 < excluded_ratio 0.5'
    >>> call_immune_phenotype(10.0, 20.0, 0.1)[0]
    'desert'
    """
    dm, do, r = float(t_density_margin), float(t_density_outside), float(infiltration_ratio)
    decision = {"t_density_margin_per_mm2": dm, "t_density_outside_per_mm2": do,
                "infiltration_ratio": r, "desert_density_per_mm2": float(desert_density),
                "excluded_ratio": float(excluded_ratio)}
    if not (math.isfinite(dm) and math.isfinite(do)):
        call, rule = "undetermined", "undetermined: no tissue area in the margin or the outside band"
    elif dm < desert_density and do < desert_density:
        call = "desert"
        rule = (f"desert: T density {dm:.3g}/mm² within ±w and {do:.3g}/mm² outside are both "
                f"< desert_density {desert_density:g}/mm²")
    elif math.isnan(r):
        call, rule = "undetermined", "undetermined: infiltration_ratio is undefined"
    elif r < excluded_ratio:
        call = "excluded"
        rule = f"excluded: infiltration_ratio {r:.3g} < excluded_ratio {excluded_ratio:g}"
    else:
        call = "inflamed"
        rule = f"inflamed: infiltration_ratio {r:.3g} >= excluded_ratio {excluded_ratio:g}"
    decision["rule"] = rule
    decision["call"] = call
    return call, decision


# ---------------------------------------------------------------------------
@dataclass
class ExclusionResult:
    """Result of :func:`exclusion_analysis` (µm, µm², cells/mm²)."""

    compartments: pd.DataFrame      # compartment, d_min_um, d_max_um, n_t, area_um2, t_density_per_mm2
    per_nest: pd.DataFrame          # nest_id, densities, infiltration_ratio, immune_phenotype, decision, zones
    sample: dict                    # densities, ratio, immune_phenotype, decision, zones summary
    zones: list = field(default_factory=list)          # shapely Polygons (µm)
    zone_table: pd.DataFrame = field(default_factory=pd.DataFrame)  # zone_id, nest_id, area_um2, geometry
    density_map: DensityMap | None = None
    parameters: dict = field(default_factory=dict)

    @property
    def immune_phenotype(self) -> str:
        return self.sample["immune_phenotype"]

    def to_dict(self) -> dict:
        """JSON-safe summary for metrics.json (zone geometries as WKT)."""
        pn = self.per_nest.copy()
        return _json({
            "sample": self.sample,
            "compartments": self.compartments,
            "per_nest": pn,
            "zones": self.zone_table.drop(columns=["geometry"], errors="ignore"),
            "zones_wkt": [z.wkt for z in self.zones],
            "parameters": self.parameters,
        })


# ---------------------------------------------------------------------------
def _check_cells(cells: pd.DataFrame, need=("x_um", "y_um", "phenotype")) -> None:
    if not isinstance(cells, pd.DataFrame):
        raise InputError(f"cells must be a pandas DataFrame (got {type(cells).__name__})")
    miss = [c for c in need if c not in cells.columns]
    if miss:
        raise InputError(f"cell table lacks column(s) {miss}; expected {list(need)} (µm positions, phenotype)")


def _densities(n: dict, a: dict) -> dict:
    with np.errstate(invalid="ignore", divide="ignore"):
        return {k: (n[k] / a[k] * 1e6 if a[k] > 0 else float("nan")) for k in n}


def _summary(counts: dict, areas: dict, desert_density: float, excluded_ratio: float) -> dict:
    """Densities, ratio and call from compartment counts/areas (keys: COMPARTMENTS)."""
    def dens(keys):
        a = sum(areas[k] for k in keys)
        return sum(counts[k] for k in keys) / a * 1e6 if a > 0 else float("nan")

    inside = dens(("core", "inner_margin"))
    outside = dens(("outer_margin", "stroma"))
    margin = dens(("inner_margin", "outer_margin"))
    if math.isfinite(inside) and math.isfinite(outside):
        ratio = inside / outside if outside > 0 else (float("inf") if inside > 0 else float("nan"))
    else:
        ratio = float("nan")
    call, decision = call_immune_phenotype(margin, outside, ratio, desert_density=desert_density,
                                           excluded_ratio=excluded_ratio)
    out = {f"t_density_{k}_per_mm2": v for k, v in _densities(counts, areas).items()}
    out.update({f"n_t_{k}": int(counts[k]) for k in COMPARTMENTS})
    out.update({f"area_{k}_um2": float(areas[k]) for k in COMPARTMENTS})
    out.update({"t_density_inside_per_mm2": inside, "t_density_outside_per_mm2": outside,
                "t_density_margin_per_mm2": margin, "infiltration_ratio": ratio,
                "immune_phenotype": call, "decision": decision})
    return out


def _zone_depletion_p(zones: list, x_um: np.ndarray, y_um: np.ndarray, n_stroma: int, area_stroma_um2: float):
    """T cells in each zone, the number expected at the stromal density, and the
    conditional one-sided p-value of so few against the stroma's count.

    With ``n`` T cells in a zone of area ``A`` and ``n_s`` in the stroma of area
    ``A_s``, equal densities give ``n ~ Binomial(n + n_s, A / (A + A_s))``;
    ``p = P(N ≤ n)``. The stromal density's own uncertainty is in the test: a
    reference of 2 T cells cannot make a zone significant.

    Examples
    --------
    >>> z = [shapely.box(0, 0, 100, 100)]                 # 0.01 mm²
    >>> n, e, p = _zone_depletion_p(z, np.array([50.0]), np.array([50.0]), 500, 1e6)  # 500/mm²
    >>> int(n[0]), float(e[0]), round(float(p[0]), 4)
    (1, 5.0, 0.0411)
    >>> round(float(_zone_depletion_p(z, np.array([]), np.array([]), 2, 1e4)[2][0]), 4)  # 2 cells, 0.01 mm²
    0.25
    """
    from scipy.stats import binom

    counts = np.zeros(len(zones), np.int64)
    if len(x_um):
        tree = shapely.STRtree(np.asarray(zones, dtype=object))
        _, zone_idx = tree.query(shapely.points(x_um, y_um), predicate="within")
        counts = np.bincount(zone_idx, minlength=len(zones))
    area = shapely.area(np.asarray(zones, dtype=object))
    expected = n_stroma / area_stroma_um2 * area
    return counts, expected, binom.cdf(counts, counts + n_stroma, area / (area + area_stroma_um2))


def exclusion_analysis(cells: pd.DataFrame, region, tissue, *, t_types=("CD8_T",), margin_um: float = 50.0,
                       outside_band_um: float = 200.0, desert_density: float = 50.0,
                       excluded_ratio: float = 0.5, bandwidth_um: float = 30.0, grid_um: float = 10.0,
                       exclusion_fraction: float = 0.25, min_zone_area_um2: float = 2500.0,
                       zone_alpha: float = 0.05, progress=None) -> ExclusionResult:
    """T-cell densities by compartment, immune phenotype calls and exclusion zones.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``x_um``, ``y_um``, ``phenotype`` (other columns ignored; the signed
        distance is recomputed from ``region`` so it always matches it).
    region : tibspace.geometry.TumourRegion
        Tumour nests (µm).
    tissue : shapely geometry
        Tissue region (µm); every density is per tissue area.
    t_types : tuple of str
        Effector T phenotypes (default CD8_T).
    margin_um : float
        Margin half-width w (µm).
    outside_band_um : float
        Outer limit of the outside band / stroma compartment (µm).
    desert_density : float
        cells/mm² below which margin and outside band count as T-cell poor.
    excluded_ratio : float
        ``infiltration_ratio`` below which a non-desert tumour is excluded.
    bandwidth_um, grid_um : float
        Gaussian kernel σ and grid step of the density map (µm).
    exclusion_fraction : float
        Zone threshold as a fraction of the stromal T density.
    min_zone_area_um2 : float
        Smallest zone kept (µm²).
    zone_alpha : float
        A zone is kept only when it holds significantly fewer T cells than the
        stroma, area for area: the conditional two-Poisson test
        ``P(N ≤ n | N ~ Binomial(n + n_stroma, A / (A + A_stroma))) < zone_alpha``
        (1 keeps every zone, as metrics.md does). A desert sample has no zones.
    progress : callable, optional

    Returns
    -------
    ExclusionResult

    Raises
    ------
    InputError
        Missing columns, empty ``t_types``, empty tissue.

    Examples
    --------
    >>> from tibspace.tissue import TumourRegion
    >>> rng = np.random.default_rng(0)
    >>> nest = shapely.Point(500, 500).buffer(200)
    >>> x, y = rng.uniform(0, 1000, 3000), rng.uniform(0, 1000, 3000)
    >>> inside = shapely.contains_xy(nest, x, y)
    >>> ph = np.where(inside, "tumour", np.where(rng.random(3000) < 0.3, "CD8_T", "other"))
    >>> cells = pd.DataFrame({"x_um": x, "y_um": y, "phenotype": ph})
    >>> res = exclusion_analysis(cells, TumourRegion.from_polygons([nest]), shapely.box(0, 0, 1000, 1000))
    >>> res.immune_phenotype
    'excluded'
    """
    _check_cells(cells)
    t_types = _as_types(t_types, "t_types")
    w, ob = _check_bands(tissue, margin_um, outside_band_um)
    params = {"t_types": list(t_types), "margin_um": w, "outside_band_um": ob,
              "desert_density": float(desert_density), "excluded_ratio": float(excluded_ratio),
              "bandwidth_um": float(bandwidth_um), "grid_um": float(grid_um),
              "exclusion_fraction": float(exclusion_fraction), "min_zone_area_um2": float(min_zone_area_um2),
              "zone_alpha": float(zone_alpha)}
    report(progress, "exclusion", 0, 4)
    t = _t_cells(cells, region, t_types, w, ob)
    sample, compartments = _sample_compartments(t, region, tissue, w, ob, desert_density, excluded_ratio)
    report(progress, "exclusion", 1, 4)
    per_nest = _per_nest_summaries(t, region, tissue, w, ob, desert_density, excluded_ratio)
    report(progress, "exclusion", 2, 4)
    zones, zone_table, dmap = _zone_step(t, region, tissue, sample, per_nest, params, progress)
    report(progress, "exclusion", 4, 4)
    return ExclusionResult(compartments=compartments, per_nest=per_nest, sample=sample, zones=zones,
                           zone_table=zone_table, density_map=dmap, parameters=params)


def _zone_step(t, region, tissue, sample, per_nest, params, progress):
    """Exclusion zones against the stromal density; adds the zone summary to ``sample``."""
    w, grid_um = params["margin_um"], params["grid_um"]
    stromal = sample["t_density_stroma_per_mm2"]
    threshold = params["exclusion_fraction"] * stromal if math.isfinite(stromal) else float("nan")
    maps, bands = _side_maps(t, region, tissue, w, params["bandwidth_um"], grid_um)
    reference = (int(sample["n_t_stroma"]), float(sample["area_stroma_um2"]))
    zones, zone_n, zone_e, zone_p, zone_note = _zones(t, maps, bands, stromal, threshold, grid_um,
                                                      params["min_zone_area_um2"], params["zone_alpha"],
                                                      reference, sample["immune_phenotype"])
    dmap = _display_map(maps, grid_um)
    report(progress, "exclusion", 3, 4)
    zone_table, per_border, per_len = _zone_borders(zones, zone_n, zone_e, zone_p, region, per_nest)
    sample.update(_zone_summary(region, per_nest, zones, bands, per_border, per_len, stromal, threshold,
                                zone_note))
    return zones, zone_table, dmap


# ---------------------------------------------------------------------------
# steps of exclusion_analysis
def _check_bands(tissue, margin_um, outside_band_um):
    """``(w, outside band)`` in µm, checked; the tissue must be a non-empty area."""
    if tissue is None or tissue.is_empty or tissue.area <= 0:
        raise InputError("tissue region is empty; expected a shapely (Multi)Polygon in µm")
    w = float(margin_um)
    ob = float(outside_band_um)
    if not (w > 0 and ob > w):
        raise InputError(f"margin_um={margin_um}, outside_band_um={outside_band_um}: expected 0 < margin < "
                         "outside band")
    return w, ob


def _zone_summary(region, per_nest, zones, bands, per_border, per_len, stromal, threshold, zone_note):
    """Sample-level zone numbers: count, area, share of the (-w, w] band and of the perimeter."""
    # (-w, w] is the disjoint union of the two side bands: its area without a third overlay
    band_area = float(bands["inside"].area + bands["outside"].area)
    zone_union = shapely.MultiPolygon(zones) if zones else shapely.Polygon()   # parts of one union: disjoint
    total = float(per_len.sum())
    return {
        "n_nests": len(region.nests),
        "stromal_t_density_per_mm2": stromal,
        "zone_threshold_per_mm2": threshold,
        "n_zones": len(zones),
        "zone_area_um2": float(sum(z.area for z in zones)),
        "band_area_um2": band_area,
        "zone_band_fraction": float(zone_union.area / band_area) if band_area > 0 else float("nan"),
        "zone_perimeter_fraction": float(per_border.sum() / total) if total > 0 else float("nan"),
        "zone_note": zone_note,
        "n_per_nest_calls": {c: int(np.sum(per_nest["immune_phenotype"] == c)) if len(region.nests) else 0
                             for c in ("inflamed", "excluded", "desert", "undetermined")},
    }


@dataclass
class _TCells:
    """T cells: positions, signed distance d (µm), nearest nest id, compartment index (−1: beyond)."""

    x: np.ndarray
    y: np.ndarray
    d: np.ndarray
    nest_id: np.ndarray
    comp: np.ndarray


def _t_cells(cells, region, t_types, w, ob) -> _TCells:
    from tibspace import tissue as geo

    x = cells["x_um"].to_numpy(float)
    y = cells["y_um"].to_numpy(float)
    is_t = cells["phenotype"].astype(str).isin(t_types).to_numpy()
    xt, yt = x[is_t], y[is_t]
    d = np.asarray(geo.signed_distance_um(xt, yt, region), float)
    nid = np.asarray(geo.nearest_nest_id(xt, yt, region), np.int64)
    comp = np.full(d.shape, -1, np.int64)
    comp[d <= -w] = 0
    comp[(d > -w) & (d <= 0)] = 1
    comp[(d > 0) & (d <= w)] = 2
    comp[(d > w) & (d <= ob)] = 3
    return _TCells(xt, yt, d, nid, comp)


def _sample_compartments(t: _TCells, region, tissue, w, ob, desert_density, excluded_ratio):
    """Whole-sample summary (exact band areas from buffers of the region) and the compartment table."""
    from tibspace import tissue as geo

    a = geo.band_areas_um2(region, tissue, np.array([-np.inf, -w, 0.0, w, ob]))
    areas = dict(zip(COMPARTMENTS, (float(v) for v in a)))
    counts = {k: int(np.sum(t.comp == i)) for i, k in enumerate(COMPARTMENTS)}
    sample = _summary(counts, areas, desert_density, excluded_ratio)
    bounds = {"core": (-math.inf, -w), "inner_margin": (-w, 0.0), "outer_margin": (0.0, w), "stroma": (w, ob)}
    compartments = pd.DataFrame({
        "compartment": list(COMPARTMENTS),
        "d_min_um": [bounds[k][0] for k in COMPARTMENTS],
        "d_max_um": [bounds[k][1] for k in COMPARTMENTS],
        "n_t": [counts[k] for k in COMPARTMENTS],
        "area_um2": [areas[k] for k in COMPARTMENTS],
        "t_density_per_mm2": [sample[f"t_density_{k}_per_mm2"] for k in COMPARTMENTS],
    })
    return sample, compartments


def _per_nest_summaries(t: _TCells, region, tissue, w, ob, desert_density, excluded_ratio) -> pd.DataFrame:
    """Per-nest summaries over the nearest-nest partition of cells and band areas."""
    from tibspace import tissue as geo

    n_nests = len(region.nests)
    edges = np.array([-np.inf, -w, 0.0, w, ob])
    nest_areas = geo.nest_band_areas_um2(region, tissue, edges) if n_nests else np.zeros((0, 4))
    rows = []
    for k in range(1, n_nests + 1):
        sel = t.nest_id == k
        ck = {name: int(np.sum(t.comp[sel] == i)) for i, name in enumerate(COMPARTMENTS)}
        ak = {name: float(nest_areas[k - 1, i]) for i, name in enumerate(COMPARTMENTS)}
        rows.append({"nest_id": k, **_summary(ck, ak, desert_density, excluded_ratio)})
    return pd.DataFrame(rows)


def _side_maps(t: _TCells, region, tissue, w, bandwidth_um, grid_um):
    """One density map per side of the boundary, and the two margin bands (−w, 0] and (0, w]."""
    from tibspace import tissue as geo

    # tumour ∩ tissue is the clipped sublevel set {d <= 0} the bands below also use (memoised
    # buffers; its parts are disjoint, so no overlay union is needed)
    tumour_t = geo.band_geometry(region, tissue, -math.inf, 0.0)
    stroma_t = shapely.difference(tissue, region.union)
    inside_t = t.d <= 0
    maps = {
        "inside": t_density_map(t.x[inside_t], t.y[inside_t], tumour_t, bandwidth_um=bandwidth_um,
                                grid_um=grid_um, bounds=tissue.bounds),
        "outside": t_density_map(t.x[~inside_t], t.y[~inside_t], stroma_t, bandwidth_um=bandwidth_um,
                                 grid_um=grid_um, bounds=tissue.bounds),
    }
    bands = {"inside": geo.band_geometry(region, tissue, -w, 0.0),
             "outside": geo.band_geometry(region, tissue, 0.0, w)}
    return maps, bands


def _zones(t: _TCells, maps, bands, stromal, threshold, grid_um, min_zone_area_um2, zone_alpha, reference,
           call):
    """Significant low-density zones of the margin band: (zones, n, expected, p, note).

    ``reference`` = (stromal T count, stromal area µm²); ``call`` the sample's immune phenotype.
    """
    zones: list = []
    zone_n = zone_e = zone_p = np.zeros(0)
    if call == "desert":
        return zones, zone_n, zone_e, zone_p, ("no zones: the sample is a desert (too few T cells on both "
                                               "sides of the margin for any to be kept out)")
    if not (math.isfinite(stromal) and stromal > 0):
        return zones, zone_n, zone_e, zone_p, ("no zones: the stromal T density is 0 or undefined "
                                               "(no reference to compare with)")
    pieces = []
    for side, m in maps.items():
        ny, nx = m.density_per_mm2.shape
        bfrac = _rasterize(bands[side], m.x0_um, m.y0_um, grid_um, (ny, nx), oversample=4)
        # dilate by one grid cell so the exact clip below decides the zone edge
        in_band = ndi.binary_dilation(bfrac > 0, structure=np.ones((3, 3), bool))
        dens = np.where(np.isfinite(m.density_per_mm2), m.density_per_mm2, np.inf)
        low = in_band & (dens < threshold) & (m.support_fraction > 0)
        polys = _grid_polygons(low, m.x0_um, m.y0_um, grid_um)
        if polys:
            # 8-connected components never touch, so their MultiPolygon is valid as is
            parts = shapely.get_parts(np.asarray(polys, dtype=object))
            pieces.append(shapely.intersection(shapely.MultiPolygon(list(parts)), bands[side]))
    if pieces:
        zones = [p for p in _merge_disjoint_sides(pieces) if p.area >= min_zone_area_um2]
    if zones:
        zone_n, zone_e, zone_p = _zone_depletion_p(zones, t.x, t.y, *reference)
        keep = zone_p < zone_alpha
        zones = [z for z, k in zip(zones, keep) if k]
        zone_n, zone_e, zone_p = zone_n[keep], zone_e[keep], zone_p[keep]
    return zones, zone_n, zone_e, zone_p, ""


def _display_map(maps, grid_um) -> DensityMap:
    """Combined map for display: each grid cell shows the side holding most of its tissue."""
    fin, fout = maps["inside"].support_fraction, maps["outside"].support_fraction
    return DensityMap(np.where(fin >= fout, maps["inside"].density_per_mm2, maps["outside"].density_per_mm2),
                      maps["inside"].x0_um, maps["inside"].y0_um, float(grid_um), fin + fout)


def _zone_borders(zones, zone_n, zone_e, zone_p, region, per_nest):
    """Zone table, and per nest the perimeter bordering a zone (added to ``per_nest`` in place)."""
    from tibspace import tissue as geo

    nests = list(region.nests)
    n_nests = len(nests)
    zone_union = shapely.MultiPolygon(zones) if zones else shapely.Polygon()
    # 1 µm tolerance: zone edges along the boundary coincide with it up to buffer rounding
    near = shapely.buffer(zone_union, _BORDER_TOL_UM) if zones else zone_union
    if zones:
        rep = shapely.point_on_surface(np.array(zones, dtype=object))
        znest = np.asarray(geo.nearest_nest_id(shapely.get_x(rep), shapely.get_y(rep), region), np.int64)
    else:
        znest = np.zeros(0, np.int64)
    zone_table = pd.DataFrame({"zone_id": np.arange(1, len(zones) + 1), "nest_id": znest,
                               "area_um2": [z.area for z in zones], "n_t_cells": zone_n.astype(np.int64),
                               "expected_t_cells": zone_e, "zone_p_value": zone_p, "geometry": zones})
    bnds = shapely.boundary(np.asarray(nests, dtype=object)) if n_nests else np.zeros(0, object)
    per_len = np.asarray(shapely.length(bnds), float) if n_nests else np.zeros(0)
    per_border = np.zeros(n_nests)
    if zones and n_nests:
        # intersect each boundary only with the (disjoint) parts of the zone buffer it meets
        parts = shapely.get_parts(near)
        bi, pj = shapely.STRtree(parts).query(bnds, predicate="intersects")
        if bi.size:
            np.add.at(per_border, bi, shapely.length(shapely.intersection(bnds[bi], parts[pj])))
    if n_nests:
        per_nest["perimeter_um"] = per_len
        per_nest["perimeter_bordering_zone_um"] = per_border
        with np.errstate(invalid="ignore", divide="ignore"):
            per_nest["zone_perimeter_fraction"] = np.where(per_len > 0, per_border / per_len, np.nan)
        per_nest["n_zones"] = [int(np.sum(znest == k)) for k in range(1, n_nests + 1)]
        per_nest["zone_area_um2"] = [float(zone_table.loc[znest == k, "area_um2"].sum())
                                     for k in range(1, n_nests + 1)]
    return zone_table, per_border, per_len
