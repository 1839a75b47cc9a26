"""The steps of one analysis run (:func:`tibspace.pipeline.analyze_cells`).

Phenotypes → tissue window and statistics (background thread) → tumour nests
(clipped to the imaged frame, tested for being tumour), annotation, profiles,
exclusion and per-nest profile (background thread) → barrier and shield
(:mod:`tibspace.run_analyses`) → metrics. Each background thread gets its own
copies of the geometries it reads (:func:`_thread_copy`); see the concurrency
rule in docs/architecture.md.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from tibspace import __version__
from tibspace.errors import InputError, NoTumourRegionError
from tibspace.progress import report
from tibspace.run_analyses import _analysis_steps


class _Timer:
    def __init__(self, timings: dict):
        self.timings = timings

    def __call__(self, name: str):
        timings = self.timings

        class _T:
            def __enter__(self_inner):
                self_inner.t0 = time.perf_counter()

            def __exit__(self_inner, *exc):
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - self_inner.t0

        return _T()



def _clip_region(region, tissue, skipped):
    """The nests clipped to the tissue (which is clipped to the imaged frame); None if nothing is left."""
    import shapely

    from tibspace.tissue import TumourRegion

    clipped = shapely.intersection(np.asarray(region.nests, dtype=object), tissue)
    min_area = float(region.parameters.get("min_nest_area_um2", 0.0))
    parts = [p for p in shapely.get_parts(clipped) if p.geom_type == "Polygon" and p.area >= min_area]
    if not parts:
        skipped["tumour_geometry"] = "no tumour nest is left inside the imaged tissue"
        return None
    if len(parts) == region.n_nests and all(abs(a.area - b.area) < 1e-9 * max(b.area, 1) for a, b in
                                            zip(sorted(parts, key=lambda g: g.area), sorted(region.nests, key=lambda g: g.area))):
        return region  # nothing clipped: keep the region as built
    return TumourRegion.from_polygons(parts, source=region.source, parameters=region.parameters)


def image_frame(shape_yx, pixel_size_um: float):
    """The imaged area of a ``(Y, X)`` image in µm (pixel (r, c) is centred at (c·px, r·px)).

    Examples
    --------
    >>> image_frame((10, 20), 0.5).bounds
    (-0.25, -0.25, 9.75, 4.75)
    """
    import shapely

    ny, nx = (int(v) for v in shape_yx)
    h = pixel_size_um / 2
    return shapely.box(-h, -h, nx * pixel_size_um - h, ny * pixel_size_um - h)


def _thread_copy(obj):
    """A private copy of a geometry (or an object holding geometries) for another thread."""
    import pickle

    return None if obj is None else pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


class _TumourSteps:
    """The tumour-geometry step of a :class:`_Run` (nests, annotation, profiles, background thread).

    A mixin: uses the run's ``params``, ``panel``, ``defined``, ``seed``,
    ``progress``, ``skipped``, ``metrics`` and ``timer``; sets ``steps``.
    """

    # ---- tumour region, annotation, profiles; exclusion and per-nest profile in the background
    def tumour_geometry(self, result, image, channel_index, pixel_size_um):
        x, y, is_tumour = _positions_and_tumour(result.cells, self.roles)
        with self.timer("geometry"):
            result.region = self._tumour_region(result.tissue, x, y, is_tumour)
        if result.region is None:
            return self._no_tumour_region(result)
        with self.timer("geometry"):
            result.cells, result.segments = _annotate(result.cells, result.region, x, y, self.params)
        self.metrics["tumour_region"] = _region_summary(result.region)
        report(self.progress, "tissue geometry", 1, 1)
        self.steps = list(_analysis_steps(result, self.panel, self.params, self.defined, image, channel_index,
                                          pixel_size_um, self.seed, self.progress, self.skipped, self.timer))
        return self._profiles_and_background(result)

    def _tumour_region(self, tissue, x, y, is_tumour):
        """Nests from the tumour cells, clipped to the tissue, tumour nests only (None: skipped)."""
        try:
            region = _tumour_region_from_params(x[is_tumour], y[is_tumour], self.params)
        except NoTumourRegionError as exc:
            self.skipped["tumour_geometry"] = str(exc)
            return None
        if tissue is not None:
            region = _clip_region(region, tissue, self.skipped)
        if region is not None:
            region = _tumour_nests_only(region, x, y, is_tumour, self.params, self.metrics, self.skipped)
        return region

    def _no_tumour_region(self, result):
        cells = result.cells.copy()
        cells["signed_dist_um"] = np.nan
        cells["compartment"] = "no_tumour_region"
        cells["nest_id"] = 0
        result.cells = cells
        report(self.progress, "tissue geometry", 1, 1)
        self.steps = []
        return {}

    def _profiles_and_background(self, result):
        """The infiltration profile here; exclusion, then the per-nest profile, in one background thread.

        The exclusion analysis (numpy, scipy, GEOS: no numba kernels) needs only the
        annotated cells, so it starts first, beside the infiltration profile and the
        barrier and shield analyses, on its own copies of the geometries.
        """
        from concurrent.futures import ThreadPoolExecutor

        from tibspace.stats import infiltration_profile

        cells, region = result.cells, result.region
        pool = ThreadPoolExecutor(1, thread_name_prefix="tibspace-background")
        own_region, own_tissue = _thread_copy(region), _thread_copy(result.tissue)
        pending = {name: pool.submit(step, None, own_region, own_tissue) for name, step in self.steps
                   if name == "exclusion" and len(self.steps) > 1}
        edges = _profile_edges(self.params)
        with self.timer("profiles"):
            result.profiles = infiltration_profile(cells, region, result.tissue, edges_um=edges)

        def profiles_by_nest(cells=cells, region=own_region, tissue=own_tissue):
            with self.timer("profiles_by_nest"):
                return infiltration_profile(cells, region, tissue, edges_um=edges, by_nest=True)

        pending["_profiles_by_nest"] = pool.submit(profiles_by_nest)
        pool.shutdown(wait=False)  # no more work; the thread ends with its tasks
        return pending


class _Run(_TumourSteps):
    """The steps of :func:`analyze_cells`, sharing the run's parameters, skips and metrics.

    Outline (called in this order by :func:`tibspace.pipeline.analyze_cells`):
    :meth:`phenotype` → :meth:`tissue_and_statistics` (statistics start in a
    thread) → :meth:`tumour_geometry` (nests, annotation, profiles; exclusion
    and per-nest profile start in a thread) → :meth:`collect_statistics` →
    :meth:`analyses` → :meth:`finish`.
    """

    def __init__(self, panel, seed, progress, timings):
        self.panel = panel
        self.params = dict(panel.parameters)
        self.roles = panel.roles
        self.seed = int(seed)
        self.progress = progress
        self.timings = {} if timings is None else timings
        self.timer = _Timer(self.timings)
        self.skipped: dict[str, str] = {}
        self.metrics: dict[str, Any] = {"tibspace_version": __version__, "seed": int(seed)}
        self.gates_used: dict[str, float] = {}
        self.defined: set[str] = set()

    # ---- phenotypes
    def phenotype(self, cells, image, channel_index, gate):
        from tibspace.cells import phenotype_counts

        if gate:
            cells = self._gate(cells, image, channel_index)
        self.metrics["phenotype_counts"] = phenotype_counts(cells["phenotype"].to_numpy())
        self.metrics["n_cells"] = int(len(cells))
        self.defined = (set(self.panel.phenotypes) | {self.panel.default_phenotype}
                        | set(self.metrics["phenotype_counts"]))
        return cells

    def _gate(self, cells, image, channel_index):
        report(self.progress, "phenotyping", 0, 1)
        with self.timer("phenotyping"):
            gating = _gate_cells(cells, self.panel, image, channel_index, self.seed)
        cells = cells.copy()
        cells["phenotype"] = gating.phenotype
        self.gates_used = {m: g.value for m, g in gating.gates.items()}
        self.metrics["gates"] = {m: g.to_dict() for m, g in gating.gates.items()}
        self.metrics["lineage_conflicts"] = gating.lineage_conflicts
        self.metrics["warnings"] = list(self.metrics.get("warnings", [])) + list(gating.warnings)
        report(self.progress, "phenotyping", 1, 1)
        return cells

    # ---- tissue window, and the statistics in a background thread
    def tissue_and_statistics(self, result):
        report(self.progress, "tissue geometry", 0, 1)
        with self.timer("geometry"):
            result.tissue = _tissue_window(result.cells, self.frame, self.metrics)
        self.metrics["tissue_area_mm2"] = float(result.tissue.area) / 1e6 if result.tissue is not None else None
        self.stats_skipped: dict[str, str] = {}
        return _in_thread("tibspace-statistics", _statistics_and_nearest, result.cells,
                          _thread_copy(result.tissue), dict(self.params, _roles=self.roles), self.seed,
                          self.stats_skipped, self.timer)

    # ---- statistics from their thread
    def collect_statistics(self, result, job):
        report(self.progress, "statistics", 0, 1)
        result.stats, stat_metrics, nearest = job.result()
        report(self.progress, "statistics", 1, 1)
        self.skipped.update(self.stats_skipped)
        self.metrics["statistics"] = stat_metrics
        if nearest is not None:
            cells = result.cells.copy()
            for c in nearest.columns:
                cells[c] = nearest[c].to_numpy()
            result.cells = cells

    # ---- the three analyses
    def analyses(self, result, pending):
        if result.region is None:
            why = self.skipped.get("tumour_geometry", "")
            why = why if why.startswith("no tumour") else f"no tumour region: {why}".rstrip(": ")
            for name in ("barrier", "shield", "exclusion"):
                self.skipped[name] = why
            result.analyses = {}
            return
        analyses: dict[str, Any] = {}
        for name, step in self.steps:
            if name not in pending:
                self._keep(analyses, name, step)
        for name, fut in pending.items():
            if not name.startswith("_"):
                report(self.progress, name, 0, 1)
                self._keep(analyses, name, fut.result)
                report(self.progress, name, 1, 1)
        result.profiles_by_nest = pending["_profiles_by_nest"].result()
        # keep the analyses in their fixed order (metrics.json is byte-identical run to run)
        result.analyses = {name: analyses[name] for name, _ in self.steps if name in analyses}

    def _keep(self, analyses, name, step):
        """``analyses[name] = step()``; data the analysis cannot use: say why, keep the rest."""
        try:
            analyses[name] = step()
        except InputError as exc:
            self.skipped[name] = str(exc)

    def finish(self, result):
        metrics = self.metrics
        result.per_nest = _per_nest_table(result)
        metrics.update(result.metrics)  # e.g. mask gates recorded by the shield step
        metrics["analyses"] = _with_file_references({k: v.to_dict() for k, v in result.analyses.items()})
        metrics["skipped"] = self.skipped
        metrics["parameters"] = self.params
        metrics["panel"] = self.panel.to_dict()
        result.metrics = metrics
        return result


def _gate_cells(cells, panel, image, channel_index, seed):
    """Gate the panel's markers (channel names from the image when known)."""
    from tibspace.cells import gate_cells

    channel_names = list(image.channel_names) if image is not None else None
    channel_of = ({m: channel_names[channel_index[m]] for m in panel.markers}
                  if channel_index is not None and channel_names is not None else None)
    return gate_cells(cells, panel, channel_of, seed=seed)


def _tissue_window(cells, frame, metrics):
    """The tissue covered by the cells, clipped to the imaged ``frame`` (its area to metrics)."""
    from tibspace import tissue as geo

    tissue = geo.tissue_region_from_cells(cells["x_um"].to_numpy(dtype=float),
                                          cells["y_um"].to_numpy(dtype=float))
    if frame is not None and tissue is not None:
        import shapely

        tissue = shapely.intersection(tissue, frame)
        metrics["imaged_area_mm2"] = float(frame.area) / 1e6
    return tissue


def _in_thread(name, fn, *args):
    """``fn(*args)`` started in its own one-worker thread pool; returns the future."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix=name)
    job = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return job


def _positions_and_tumour(cells, roles):
    """(x_um, y_um, is_tumour) arrays of the cells."""
    is_tumour = cells["phenotype"].isin(list(roles.get("tumour", []))).to_numpy()
    return cells["x_um"].to_numpy(dtype=float), cells["y_um"].to_numpy(dtype=float), is_tumour


def _tumour_region_from_params(x, y, params):
    from tibspace import tissue as geo

    return geo.tumour_region_from_cells(
        x, y, tumour_cell_radius_um=float(params["tumour_cell_radius_um"]),
        closing_um=float(params["closing_um"]), min_hole_um2=float(params["min_hole_um2"]),
        min_nest_area_um2=float(params["min_nest_area_um2"]))


def _tumour_nests_only(region, x, y, is_tumour, params, metrics, skipped):
    """Drop nests that are not made of tumour (:mod:`tibspace.tissue.composition`); reasons to metrics."""
    from tibspace.tissue import filter_nests

    p = params
    kept, comp = filter_nests(region, x, y, is_tumour, min_tumour_cells=int(p["min_nest_tumour_cells"]),
                              min_tumour_density=float(p["min_nest_tumour_density"]),
                              min_purity=float(p["min_nest_purity"]))
    dropped = comp[~comp["kept"]]
    metrics["nest_composition"] = {
        "n_candidates": int(len(comp)), "n_dropped": int(len(dropped)),
        "dropped": dropped[["area_um2", "n_cells", "n_tumour", "purity", "tumour_density_per_mm2",
                            "reason"]].to_dict(orient="list"),
        "purity_kept": comp.loc[comp["kept"], "purity"].tolist()}
    if kept is None:
        skipped["tumour_geometry"] = (f"no tumour nest: all {len(comp)} candidate regions fail the nest test "
                                      f"({dropped['reason'].iloc[0]})")
    return kept


def _annotate(cells, region, x, y, params):
    """Cells with signed distance, compartment, nest and segment ids; and the perimeter segments."""
    from tibspace import tissue as geo

    cells = geo.annotate_cells(cells, region, margin_um=float(params["margin_um"]))
    segs = geo.perimeter_segments(region, segment_um=float(params["segment_um"]))
    cells["segment_id"] = geo.assign_segments(x, y, segs)
    return cells, segs


def _region_summary(region):
    return {
        "n_nests": int(region.n_nests),
        "tumour_area_mm2": float(region.union.area) / 1e6,
        "perimeter_um": float(sum(p.length for p in region.nests)),
        "source": region.source,
    }


def _profile_edges(params):
    """Band edges (µm) of the infiltration profiles."""
    return np.arange(float(params["profile_min_um"]), float(params["profile_max_um"]) + 1e-9,
                     float(params["profile_step_um"]))


def _run_statistics(cells, tissue, params, seed, progress, skipped):
    from tibspace.stats import cross_l_all_pairs, neighbourhood_enrichment

    stats: dict[str, pd.DataFrame] = {}
    out: dict[str, Any] = {}
    n_types = cells["phenotype"].nunique()
    if len(cells) < 2 or n_types < 2:
        skipped["statistics"] = f"needs ≥ 2 cells of ≥ 2 phenotypes (have {len(cells)} cells, {n_types} phenotypes)"
        return stats, out
    report(progress, "neighbourhood enrichment", 0, 1)
    ne = neighbourhood_enrichment(cells, method="exact", radius_um=float(params["graph_radius_um"]), seed=seed)
    stats["neighbourhood_enrichment"] = ne.to_frame()
    out["neighbourhood_enrichment"] = {"graph": "radius", "radius_um": float(params["graph_radius_um"]),
                                       "method": "exact permutation moments"}
    report(progress, "neighbourhood enrichment", 1, 1)
    radii = np.arange(5.0, 100.0 + 1e-9, 5.0)
    window = tissue
    try:
        cross = cross_l_all_pairs(cells, radii, window, edge_correction="isotropic", outside="drop",
                                  progress=progress)
        cross = _with_envelopes(cross, cells, radii, window, params, seed, progress)
        stats["cross_L"] = cross
        out["cross_L"] = {"radii_um": radii.tolist(), "edge_correction": "isotropic", "window": "tissue region",
                          "envelope": f"random labelling among the pair's cells ({int(params.get('n_envelope_sim', 99))} "
                                      "permutations, pointwise); "
                                      "computed for the role pairs in key_pairs, NaN for the other pairs",
                          "key_pairs": sorted({f"{a}->{b}" for a, b in _key_pairs(cells, params)})}
    except InputError as exc:
        skipped["cross_L"] = str(exc)
    return stats, out


def _key_pairs(cells, params):
    """The type pairs whose spatial relation the analyses are about (present in the table)."""
    roles = params.get("_roles", {})
    present = set(cells["phenotype"].astype(str))
    pairs = []
    for ra, rb in (("tumour", "effector_t"), ("spp1_macrophage", "caf"), ("neutrophil", "effector_t"),
                   ("barrier", "effector_t")):
        for a in roles.get(ra, []):
            for b in roles.get(rb, []):
                if a in present and b in present and a != b:
                    pairs.append((a, b))
    return list(dict.fromkeys(pairs))


def _with_envelopes(cross, cells, radii, window, params, seed, progress):
    """Add random-labelling envelope columns (lo, hi, p_value) to the cross-L table for the key pairs."""
    from tibspace.stats import random_labelling_envelope

    cross = cross.copy()
    for col in ("envelope_lo", "envelope_hi", "p_value"):
        cross[col] = np.nan
    n_sim = int(params.get("n_envelope_sim", 99))
    pairs = _key_pairs(cells, params) if n_sim > 0 else []  # 0 = no envelopes (fastest)
    for k, (a, b) in enumerate(pairs):
        report(progress, "cross-L envelopes", k, len(pairs))
        env = random_labelling_envelope(cells, "cross_L", a, b, radii, window,
                                        n_sim=n_sim, seed=seed,
                                        outside="drop")
        sel = (cross["type_a"] == a) & (cross["type_b"] == b)
        idx = cross.index[sel]
        order = np.searchsorted(radii, cross.loc[idx, "r_um"].to_numpy())
        cross.loc[idx, "envelope_lo"] = env["lo"].to_numpy()[order]
        cross.loc[idx, "envelope_hi"] = env["hi"].to_numpy()[order]
        cross.loc[idx, "p_value"] = env["p_value"].to_numpy()[order]
    report(progress, "cross-L envelopes", len(pairs), len(pairs))
    return cross


def _statistics_and_nearest(cells, tissue, params, seed, skipped, timer):
    """Statistics tables and metrics, and each cell's nearest distance to every
    phenotype (a frame aligned with ``cells``, None for < 2 cells).

    Runs in a background thread: no progress callbacks from here (the caller
    reports), skips go to the caller's ``skipped``."""
    from tibspace.stats import nearest_distance_to_phenotypes

    with timer("statistics"):
        stats, stat_metrics = _run_statistics(cells, tissue, params, seed, None, skipped)
    with timer("nearest_distances"):
        nearest = nearest_distance_to_phenotypes(cells) if len(cells) >= 2 else None
    return stats, stat_metrics, nearest


# Tables and geometries that an analysis' dict repeats from another output file:
# metrics.json names the file instead (it holds numbers; 24 MB → ~kB at 1M cells).
_IN_OTHER_FILES = {("barrier", "segments"): "segments.csv",
                   ("exclusion", "zones_wkt"): "exclusion_zones.geojson"}


def _with_file_references(analyses: dict) -> dict:
    # Every analysis' per-nest table is a set of columns of nests.csv (_per_nest_table).
    for name, value in analyses.items():
        pn = value.get("per_nest") if isinstance(value, dict) else None
        if isinstance(pn, dict) and "nest_id" in pn:
            analyses[name]["per_nest"] = {"file": "nests.csv", "n": int(len(pn["nest_id"])),
                                          "columns": sorted(pn)}
    for (name, key), file in _IN_OTHER_FILES.items():
        value = analyses.get(name, {}).get(key)
        if value is None:
            continue
        n = len(next(iter(value.values()), [])) if isinstance(value, dict) else len(value)
        analyses[name][key] = {"file": file, "n": int(n)}
    return analyses


def _per_nest_table(result) -> pd.DataFrame:
    """One row per nest joining the geometry with every analysis' per-nest numbers."""
    if result.region is None:
        return pd.DataFrame()
    nests = result.region.nests
    base = pd.DataFrame({
        "nest_id": np.arange(1, len(nests) + 1),
        "area_um2": [p.area for p in nests],
        "perimeter_um": [p.length for p in nests],
        "centroid_x_um": [p.centroid.x for p in nests],
        "centroid_y_um": [p.centroid.y for p in nests],
    })
    for name, res in result.analyses.items():
        pn = getattr(res, "per_nest", None)
        if isinstance(pn, pd.DataFrame) and "nest_id" in pn:
            keep = [c for c in pn.columns if c == "nest_id" or c not in base.columns]
            base = base.merge(pn[keep], on="nest_id", how="left")
    return base
