"""The whole job, one call: image → cells → phenotypes → geometry → analyses → outputs.

The CLI (:mod:`tibspace.cli`), the Python API and the napari plugin all call
:func:`run_image` / :func:`analyze_table`; none of them re-implements a step.

Every analysis that cannot run on the given data (a phenotype the panel does
not define, a channel the panel does not name, no tumour region) is skipped
with its reason recorded in ``metrics["skipped"]``; everything else still runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from tibspace import __version__
from tibspace.errors import InputError, NoTumourRegionError, TibspaceError
from tibspace.progress import report

ProgressFn = Callable[[str, int, int], None]


@dataclass
class PipelineResult:
    """Everything a run computed; :func:`write_outputs` turns it into files."""

    cells: pd.DataFrame
    pixel_size_um: float | None
    image_path: Path | None = None
    image_shape: tuple[int, int] | None = None
    labels: Any = None
    nuclei: Any = None
    gates: dict[str, float] = field(default_factory=dict)
    region: Any = None
    tissue: Any = None
    segments: pd.DataFrame | None = None
    exclusion_zones: list = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    profiles: pd.DataFrame = field(default_factory=pd.DataFrame)
    profiles_by_nest: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_nest: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: dict[str, pd.DataFrame] = field(default_factory=dict)
    analyses: dict[str, Any] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    panel: Any = None
    channel_columns: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None
    thumbnail: dict | None = None   # {"rgb": (Y, X, 3) uint8, "um_per_px": float, "channels": {colour: names}}

    @property
    def sample_id(self) -> str:
        return self.metrics.get("sample_id", "sample")


def _as_panel(panel):
    """A validated :class:`~tibspace.cells.Panel` (parameters within their plausible ranges)."""
    from tibspace.cells import Panel, check_parameter_ranges, load_panel

    if panel is None:
        raise InputError("no marker panel given: pass --panel PANEL.toml (see sample_data/hcc_sample_panel.toml)")
    if not isinstance(panel, Panel):
        panel = load_panel(panel)
    check_parameter_ranges(panel.parameters, where=str(getattr(panel, "source", None) or "panel"))
    return panel


def _sample_id(path: Path) -> str:
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".parquet", ".csv", ".txt", ".tsv"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def unique_sample_ids(paths: list[Path]) -> list[str]:
    """File-safe sample ids from input paths, unique within the list.

    The id is the file name without its image/table suffix; where several
    inputs share it, parent folder names are prepended (``P11/image.ome.tif``
    and ``P12/image.ome.tif`` → ``P11_image``, ``P12_image``) until the ids
    differ; remaining ties get ``_2``, ``_3``.

    Examples
    --------
    >>> unique_sample_ids([Path("P11/image.ome.tif"), Path("P12/image.ome.tif"), Path("a.tif")])
    ['P11_image', 'P12_image', 'a']
    """
    from tibspace.io import safe_name

    resolved = [Path(os.path.abspath(p)) for p in paths]
    ids = [safe_name(_sample_id(p)) for p in resolved]
    depth = [0] * len(ids)
    for _ in range(64):
        counts = {i: ids.count(i) for i in ids}
        clash = [k for k, i in enumerate(ids) if counts[i] > 1]
        if not clash:
            break
        for k in clash:
            parents = resolved[k].parent.parts[1:]
            depth[k] += 1
            if depth[k] <= len(parents):
                ids[k] = safe_name("_".join(parents[-depth[k]:] + (_sample_id(resolved[k]),)))
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}_{seen[i]}")
    return out


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


# ---------------------------------------------------------------------------
def run_image(image_path, panel, *, out_dir=None, pixel_size_um: float | None = None, seed: int | None = None,
              scheduler: str | None = None, progress: ProgressFn | None = None,
              tile_size_px: int | None = None, n_workers: int = 2, sample_id: str | None = None,
              extra_files: Mapping[str, str] | None = None, spatialdata: bool = False) -> PipelineResult:
    """Run the full pipeline on one multiplex image.

    Parameters
    ----------
    image_path : path
        OME-TIFF, named multi-page TIFF, or a folder of single-channel TIFFs.
    panel : path or Panel
        Marker panel (TOML): channel roles, gates, phenotype rules, parameters.
    out_dir : path, optional
        When given, every output file is written there (atomically, via a
        staging folder: a failed run leaves no partial output).
    pixel_size_um : float, optional
        µm per pixel; overrides the file's metadata. Needed when the file has
        none and the panel's ``[image] pixel_size_um`` is not set.
    seed : int, optional
        Seed of every random step (default: the panel's ``seed`` parameter).
    scheduler : str, optional
        Address of a Dask scheduler, or ``"threads"`` (default: a local
        in-process cluster with one thread per worker) / ``"processes"``.
    progress : callable, optional
        ``progress(step, done, total)``; may raise ``Cancelled``.
    sample_id : str, optional
        Name of the sample in the outputs (default: the file name without suffix).
    extra_files : dict, optional
        ``{file name: text}`` written into the same result set (the cohort's run key).
    spatialdata : bool
        Also write ``<sample_id>.zarr`` (SpatialData) into ``out_dir``.

    Returns
    -------
    PipelineResult
    """
    from tibspace.io import open_image
    from tibspace.segment import segment_image

    panel = _as_panel(panel)
    params = panel.parameters
    seed = int(params.get("seed", 0) if seed is None else seed)
    image_path = Path(image_path)
    timings: dict[str, float] = {}
    timer = _Timer(timings)

    with timer("open_image"):
        img = _open_with_panel_pixel_size(image_path, pixel_size_um, panel)
        from tibspace.io import check_not_empty

        check_not_empty(img)
        channel_index = panel.resolve_channels(img.channel_names, image_path)

    names = img.channel_names
    nuclear = [names[channel_index[c]] for c in panel.nuclear]
    membrane = [names[channel_index[c]] for c in panel.membrane]
    tile = int(tile_size_px or params.get("tile_size_px", 2048))
    with timer("segmentation"):
        seg = segment_image(
            img, nuclear, membrane,
            expansion_um=float(params["cell_expansion_um"]),
            nucleus_diameter_um=(None if params["nucleus_diameter_um"] == "auto"
                                 else float(params["nucleus_diameter_um"])),
            tile_size_px=tile, scheduler=scheduler, n_workers=n_workers, progress=progress)
    cells = seg.cells
    if len(cells) == 0:
        raise InputError(f"{image_path}: segmentation found no cells in channel(s) {', '.join(nuclear)}")

    result = analyze_cells(
        cells, panel, pixel_size_um=img.pixel_size_um, labels=seg.labels, image=img,
        channel_index=channel_index, seed=seed, progress=progress, timings=timings)
    result.image_path = image_path
    result.nuclei = seg.nuclei
    with timer("thumbnail"):
        result.thumbnail = _stain_thumbnail(img, panel, channel_index, nuclear)
    result.image_shape = tuple(int(s) for s in img.shape[-2:])
    result.metrics["segmentation"] = dict(seg.parameters) | {"n_cells": int(len(cells)), "n_tiles": int(seg.n_tiles)}
    result.metrics["input"] = {
        "path": str(image_path), "sha256": _checksum(image_path), "channels": list(names),
        "shape_yx": list(result.image_shape), "pixel_size_um": float(img.pixel_size_um),
    }
    result.metrics["sample_id"] = sample_id or _sample_id(image_path)
    if out_dir is not None:
        write_outputs(result, out_dir, progress=progress, extra_files=extra_files, spatialdata=spatialdata)
    return result


def _stain_thumbnail(img, panel, channel_index, nuclear) -> dict:
    """Overview of the stains: nuclei blue, the tumour rule's markers green, the
    effector T rule's markers magenta (for the report and AnnData's ``uns["spatial"]``)."""
    from tibspace.cells import rule_markers
    from tibspace.io import composite_rgb, thumbnail

    def markers_of(role):
        names = []
        for ph in panel.roles.get(role, []):
            rule = panel.phenotypes.get(ph)
            names += [m for m in (rule_markers(rule) if rule else []) if m in channel_index]
        return list(dict.fromkeys(names))

    groups = {"blue": [img.channel_names.index(n) for n in nuclear],
              "green": [channel_index[m] for m in markers_of("tumour")],
              "magenta": [channel_index[m] for m in markers_of("effector_t")]}
    groups = {k: v for k, v in groups.items() if v}
    order = [i for v in groups.values() for i in v]
    stack, um = thumbnail(img, order)
    colours = {"blue": (60, 110, 255), "green": (40, 220, 60), "magenta": (255, 40, 220)}
    # channels of one colour are summed after the composite scales each to its percentile
    rgb = composite_rgb(stack, [colours[k] for k, v in groups.items() for _ in v])
    return {"rgb": rgb, "um_per_px": um,
            "channels": {k: [img.channel_names[i] for i in v] for k, v in groups.items()}}


def _open_with_panel_pixel_size(path: Path, pixel_size_um, panel):
    """Open an image; pixel size from the argument, else the file, else the panel."""
    from tibspace.io import open_image

    if pixel_size_um is not None:
        return open_image(path, pixel_size_um=float(pixel_size_um))
    try:
        return open_image(path)
    except InputError as exc:
        if panel.pixel_size_um and "pixel size" in str(exc).lower():
            return open_image(path, pixel_size_um=float(panel.pixel_size_um))
        raise


def _checksum(path: Path) -> str:
    from tibspace.outputs import file_sha256

    return file_sha256(path)


# ---------------------------------------------------------------------------
def analyze_table(cells, panel, *, out_dir=None, seed: int | None = None,
                  progress: ProgressFn | None = None, sample_id: str | None = None,
                  extra_files: Mapping[str, str] | None = None, spatialdata: bool = False) -> PipelineResult:
    """Run geometry, statistics and analyses on an existing cell table.

    Parameters
    ----------
    cells : path or DataFrame
        tibspace's own ``cells.parquet``/``.csv`` or an export from QuPath,
        inForm/phenoptr, HALO or MCMICRO; the panel's ``[table]`` section maps
        its columns (x, y, phenotype or marker columns, units / pixel size).
    panel : path or Panel
    out_dir : path, optional
        Where to write outputs (atomically).
    seed : int, optional
        Seed of every random step (default: the panel's ``seed``).
    """
    from tibspace.io import read_cell_table, standardise_cell_table

    panel = _as_panel(panel)
    params = panel.parameters
    seed = int(params.get("seed", 0) if seed is None else seed)
    timings: dict[str, float] = {}
    source = None
    if isinstance(cells, (str, os.PathLike)):
        source = Path(cells)
        raw = read_cell_table(source)
    else:
        raw = cells
    std, pixel_size_um, needs_gating = standardise_cell_table(raw, panel, source=source)
    check_coordinates(std, str(source or "cell table"))
    result = analyze_cells(std, panel, pixel_size_um=pixel_size_um, seed=seed, progress=progress,
                           timings=timings, gate=needs_gating)
    if source is not None:
        result.metrics["input"] = {"path": str(source), "sha256": _checksum(source), "n_rows": int(len(raw))}
        result.metrics["sample_id"] = sample_id or _sample_id(source)
    else:
        result.metrics["input"] = {"path": None, "n_rows": int(len(raw))}
        result.metrics["sample_id"] = sample_id or "sample"
    if out_dir is not None:
        write_outputs(result, out_dir, progress=progress, extra_files=extra_files, spatialdata=spatialdata)
    return result


# ---------------------------------------------------------------------------
def analyze_cells(cells: pd.DataFrame, panel, *, pixel_size_um: float | None, labels=None, image=None,
                  channel_index: Mapping[str, int] | None = None, seed: int = 0,
                  progress: ProgressFn | None = None, timings: dict | None = None,
                  gate: bool = True, frame=None) -> PipelineResult:
    """Phenotypes (optional) → geometry → profiles → statistics → the three analyses.

    ``frame`` (a polygon in µm) is the area that was imaged: the tissue and the
    tumour nests are clipped to it, so no area, density or statistics window
    counts ground that was never imaged. Image runs default to the image's
    frame (:func:`image_frame`).

    Two background threads overlap the main thread: the statistics (they need
    only the cells and the tissue window) while the tumour region is built, and
    the exclusion analysis followed by the per-nest profile from the moment the
    cells are annotated. Each thread gets its own copies of the geometries it
    reads (:func:`_thread_copy`): GEOS geometries, prepared or not, are never
    shared between threads. The statistics thread is joined before the barrier
    and shield analyses so that numba kernels never launch from two threads.
    """
    panel = _as_panel(panel)
    run = _Run(panel, seed, progress, timings)
    if frame is None and image is not None and pixel_size_um:
        frame = image_frame(image.shape[-2:], pixel_size_um)
    run.frame = frame
    cells = run.phenotype(cells, image, channel_index, gate)
    result = PipelineResult(cells=cells, pixel_size_um=pixel_size_um, labels=labels, gates=run.gates_used,
                            panel=panel, timings_s=run.timings,
                            channel_columns=[c for c in (list(image.channel_names) if image is not None else [])
                                             if c in cells.columns])
    stats_job = run.tissue_and_statistics(result)
    background = run.tumour_geometry(result, image, channel_index, pixel_size_um)
    run.collect_statistics(result, stats_job)
    run.analyses(result, background)
    return run.finish(result)


MAX_EXTENT_UM = 1e6        # 1 m: no slide is larger
MAX_CELLS_PER_POSITION = 1000


def check_coordinates(cells: pd.DataFrame, where: str) -> None:
    """One-line :class:`InputError` for coordinates no tissue can have.

    Coordinates must be finite, span at most :data:`MAX_EXTENT_UM` and lie
    within that distance of the origin (a table offset by 10¹² µm is a unit or
    export error, and would make every grid astronomically large), and no
    position may hold more than :data:`MAX_CELLS_PER_POSITION` cells (all cells
    at one point make every neighbour search quadratic).
    """
    if not len(cells):
        return
    xy = cells[["x_um", "y_um"]].to_numpy(dtype=float)
    if not np.isfinite(xy).all():
        raise InputError(f"{where}: {int((~np.isfinite(xy)).any(axis=1).sum())} cells have non-finite coordinates")
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    if (hi - lo).max() > MAX_EXTENT_UM or np.abs(xy).max() > MAX_EXTENT_UM:
        raise InputError(f"{where}: cell coordinates reach {np.abs(xy).max():.3g} µm (x {lo[0]:.4g}..{hi[0]:.4g}, "
                         f"y {lo[1]:.4g}..{hi[1]:.4g}); expected µm within {MAX_EXTENT_UM:.0e} µm of the image "
                         "origin: check the units or subtract the offset")
    _, counts = np.unique(np.round(xy, 3), axis=0, return_counts=True)
    if counts.max() > MAX_CELLS_PER_POSITION:
        raise InputError(f"{where}: {int(counts.max())} cells share one position; expected one position per cell "
                         "(check the coordinate columns)")


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


class _Run:
    """The steps of :func:`analyze_cells`, sharing the run's parameters, skips and metrics."""

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
        from tibspace.cells import gate_cells, phenotype_counts

        panel, metrics = self.panel, self.metrics
        if gate:
            report(self.progress, "phenotyping", 0, 1)
            channel_names = list(image.channel_names) if image is not None else None
            with self.timer("phenotyping"):
                channel_of = ({m: channel_names[channel_index[m]] for m in panel.markers}
                              if channel_index is not None and channel_names is not None else None)
                gating = gate_cells(cells, panel, channel_of, seed=self.seed)
            cells = cells.copy()
            cells["phenotype"] = gating.phenotype
            self.gates_used = {m: g.value for m, g in gating.gates.items()}
            metrics["gates"] = {m: g.to_dict() for m, g in gating.gates.items()}
            metrics["warnings"] = list(metrics.get("warnings", [])) + list(gating.warnings)
            report(self.progress, "phenotyping", 1, 1)
        metrics["phenotype_counts"] = phenotype_counts(cells["phenotype"].to_numpy())
        metrics["n_cells"] = int(len(cells))
        self.defined = set(panel.phenotypes) | {panel.default_phenotype} | set(metrics["phenotype_counts"])
        return cells

    # ---- tissue window, and the statistics in a background thread
    def tissue_and_statistics(self, result):
        from concurrent.futures import ThreadPoolExecutor

        from tibspace import tissue as geo

        report(self.progress, "tissue geometry", 0, 1)
        cells = result.cells
        with self.timer("geometry"):
            result.tissue = geo.tissue_region_from_cells(cells["x_um"].to_numpy(dtype=float),
                                                         cells["y_um"].to_numpy(dtype=float))
            if self.frame is not None and result.tissue is not None:
                import shapely

                result.tissue = shapely.intersection(result.tissue, self.frame)
                self.metrics["imaged_area_mm2"] = float(self.frame.area) / 1e6
        self.metrics["tissue_area_mm2"] = float(result.tissue.area) / 1e6 if result.tissue is not None else None
        self.stats_skipped: dict[str, str] = {}
        pool = ThreadPoolExecutor(1, thread_name_prefix="tibspace-statistics")
        job = pool.submit(_statistics_and_nearest, cells, _thread_copy(result.tissue),
                          dict(self.params, _roles=self.roles), self.seed, self.stats_skipped, self.timer)
        pool.shutdown(wait=False)
        return job

    # ---- tumour region, annotation, profiles; exclusion and per-nest profile in the background
    def tumour_geometry(self, result, image, channel_index, pixel_size_um):
        from concurrent.futures import ThreadPoolExecutor

        from tibspace import tissue as geo

        params, cells = self.params, result.cells
        is_tumour = cells["phenotype"].isin(list(self.roles.get("tumour", []))).to_numpy()
        x = cells["x_um"].to_numpy(dtype=float)
        y = cells["y_um"].to_numpy(dtype=float)
        with self.timer("geometry"):
            try:
                result.region = geo.tumour_region_from_cells(
                    x[is_tumour], y[is_tumour],
                    tumour_cell_radius_um=float(params["tumour_cell_radius_um"]),
                    closing_um=float(params["closing_um"]), min_hole_um2=float(params["min_hole_um2"]),
                    min_nest_area_um2=float(params["min_nest_area_um2"]))
            except NoTumourRegionError as exc:
                self.skipped["tumour_geometry"] = str(exc)
            if result.region is not None and result.tissue is not None:
                result.region = _clip_region(result.region, result.tissue, self.skipped)
            if result.region is not None:
                result.region = self._tumour_nests_only(result.region, x, y, is_tumour)
        region = result.region
        if region is None:
            cells = cells.copy()
            cells["signed_dist_um"] = np.nan
            cells["compartment"] = "no_tumour_region"
            cells["nest_id"] = 0
            result.cells = cells
            report(self.progress, "tissue geometry", 1, 1)
            self.steps = []
            return {}
        with self.timer("geometry"):
            cells = geo.annotate_cells(cells, region, margin_um=float(params["margin_um"]))
            segs = geo.perimeter_segments(region, segment_um=float(params["segment_um"]))
            cells["segment_id"] = geo.assign_segments(x, y, segs)
        result.segments = segs
        self.metrics["tumour_region"] = {
            "n_nests": int(region.n_nests),
            "tumour_area_mm2": float(region.union.area) / 1e6,
            "perimeter_um": float(sum(p.length for p in region.nests)),
            "source": region.source,
        }
        report(self.progress, "tissue geometry", 1, 1)
        result.cells = cells

        # The exclusion analysis (numpy, scipy, GEOS: no numba kernels) needs only
        # the annotated cells, so it starts now, beside the infiltration profile
        # and the barrier and shield analyses, on its own copies of the geometries;
        # the per-nest profile follows it in the same thread.
        self.steps = list(_analysis_steps(result, self.panel, params, self.defined, image, channel_index,
                                          pixel_size_um, self.seed, self.progress, self.skipped, self.timer))
        pool = ThreadPoolExecutor(1, thread_name_prefix="tibspace-background")
        own_region, own_tissue = _thread_copy(region), _thread_copy(result.tissue)
        pending = {name: pool.submit(step, None, own_region, own_tissue) for name, step in self.steps
                   if name == "exclusion" and len(self.steps) > 1}

        from tibspace.stats import infiltration_profile

        edges = np.arange(float(params["profile_min_um"]), float(params["profile_max_um"]) + 1e-9,
                          float(params["profile_step_um"]))
        with self.timer("profiles"):
            result.profiles = infiltration_profile(cells, region, result.tissue, edges_um=edges)

        def profiles_by_nest(cells=cells, region=own_region, tissue=own_tissue):
            with self.timer("profiles_by_nest"):
                return infiltration_profile(cells, region, tissue, edges_um=edges, by_nest=True)

        pending["_profiles_by_nest"] = pool.submit(profiles_by_nest)
        pool.shutdown(wait=False)  # no more work; the thread ends with its tasks
        return pending

    def _tumour_nests_only(self, region, x, y, is_tumour):
        """Drop nests that are not made of tumour (:mod:`tibspace.tissue.composition`); reasons to metrics."""
        from tibspace.tissue import filter_nests

        p = self.params
        kept, comp = filter_nests(region, x, y, is_tumour, min_tumour_cells=int(p["min_nest_tumour_cells"]),
                                  min_tumour_density=float(p["min_nest_tumour_density"]),
                                  min_purity=float(p["min_nest_purity"]))
        dropped = comp[~comp["kept"]]
        self.metrics["nest_composition"] = {
            "n_candidates": int(len(comp)), "n_dropped": int(len(dropped)),
            "dropped": dropped[["area_um2", "n_cells", "n_tumour", "purity", "tumour_density_per_mm2",
                                "reason"]].to_dict(orient="list"),
            "purity_kept": comp.loc[comp["kept"], "purity"].tolist()}
        if kept is None:
            self.skipped["tumour_geometry"] = (f"no tumour nest: all {len(comp)} candidate regions fail the nest test "
                                               f"({dropped['reason'].iloc[0]})")
        return kept

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
        analyses: dict[str, Any] = {}
        if result.region is None:
            for name in ("barrier", "shield", "exclusion"):
                self.skipped[name] = "no tumour region: " + self.skipped.get("tumour_geometry", "")
            result.analyses = analyses
            return
        for name, step in self.steps:
            if name in pending:
                continue
            try:
                analyses[name] = step()
            except InputError as exc:  # data the analysis cannot use: say why, keep the rest
                self.skipped[name] = str(exc)
        for name, fut in pending.items():
            if name.startswith("_"):
                continue
            report(self.progress, name, 0, 1)
            try:
                analyses[name] = fut.result()
            except InputError as exc:
                self.skipped[name] = str(exc)
            report(self.progress, name, 1, 1)
        result.profiles_by_nest = pending["_profiles_by_nest"].result()
        # keep the analyses in their fixed order (metrics.json is byte-identical run to run)
        result.analyses = {name: analyses[name] for name, _ in self.steps if name in analyses}

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


def _run_statistics(cells, tissue, params, seed, progress, skipped):
    from tibspace.stats import neighbourhood_enrichment
    from tibspace.stats import cross_l_all_pairs

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


def _analysis_steps(result, panel, params, defined, image, channel_index, pixel_size_um, seed, progress,
                    skipped, timer):
    """Yield ``(name, run)`` for every analysis that can run; record the others in ``skipped``."""
    roles = panel.roles

    def missing_roles(*names):
        return [r for r in names if not (set(roles.get(r, [])) & defined)]

    miss = missing_roles("effector_t")
    if miss:
        skipped["exclusion"] = f"the panel defines no phenotype for role(s) {miss} (e.g. CD8_T = \"CD3+ & CD8+\")"
    else:
        def run_exclusion(progress=progress, region=None, tissue=None):
            from tibspace.analyses import exclusion_analysis

            region = result.region if region is None else region
            tissue = result.tissue if tissue is None else tissue
            with timer("exclusion"):
                ex = exclusion_analysis(
                    result.cells, region, tissue, t_types=tuple(roles["effector_t"]),
                    margin_um=float(params["margin_um"]), outside_band_um=float(params["outside_band_um"]),
                    desert_density=float(params["desert_density"]), excluded_ratio=float(params["excluded_ratio"]),
                    bandwidth_um=float(params["exclusion_bandwidth_um"]), grid_um=float(params["exclusion_grid_um"]),
                    exclusion_fraction=float(params["exclusion_fraction"]),
                    min_zone_area_um2=float(params["exclusion_min_area_um2"]),
                    zone_alpha=float(params["exclusion_zone_alpha"]), progress=progress)
            result.exclusion_zones = list(getattr(ex, "zones", []) or [])
            return ex

        yield "exclusion", run_exclusion

    miss = missing_roles("spp1_macrophage", "caf", "effector_t")
    if miss:
        skipped["barrier"] = (f"the panel defines no phenotype for role(s) {', '.join(miss)} "
                              f"(a TIB needs SPP1+ macrophages and CAFs: add an SPP1 marker and e.g. "
                              f"SPP1_macrophage = \"CD68+ & SPP1+\")")
    else:
        def run_barrier():
            from tibspace.analyses import barrier_analysis

            with timer("barrier"):
                br = barrier_analysis(
                    result.cells, result.region, result.tissue,
                    barrier_types=tuple(roles["barrier"]), macrophage_types=tuple(roles["spp1_macrophage"]),
                    caf_types=tuple(roles["caf"]), t_types=tuple(roles["effector_t"]),
                    segment_um=float(params["segment_um"]), barrier_width_um=float(params["barrier_width_um"]),
                    barrier_density=float(params["barrier_density"]), margin_um=float(params["margin_um"]),
                    colocalization_radii_um=tuple(params["colocalization_radii_um"]),
                    n_shifts=int(params["n_shifts"]), seed=seed,
                    signed_dist_um=result.cells["signed_dist_um"].to_numpy(float), progress=progress)
            result.segments = br.segments
            return br

        yield "barrier", run_barrier

    mask_specs = dict(panel.masks)
    if image is None:
        skipped["shield"] = "needs NET/collagen-I pixel masks from an image (cell-table-only run)"
    elif not mask_specs:
        skipped["shield"] = "the panel has no [masks] section (NET from CitH3, collagen I from COL1)"
    elif missing_roles("tumour", "effector_t"):
        skipped["shield"] = "the panel defines no tumour or effector T phenotype"
    else:
        for name in ("net", "col1"):
            if name not in mask_specs:
                what = "NET (CitH3, optionally requiring MPO)" if name == "net" else "collagen I (COL1)"
                skipped[f"shield_{name}"] = f"the panel has no [masks] {name} entry for {what}: that part of the shield is not measured"

        def run_shield():
            from tibspace.analyses import shield_analysis, shield_masks

            with timer("shield"):
                masks, mask_gates = shield_masks(image, mask_specs, channel_index, pixel_size_um,
                                                 tile_size_px=int(params.get("tile_size_px", 2048)), progress=progress)
                sh = shield_analysis(
                    result.cells, _labels_array(result.labels), masks, pixel_size_um, result.region,
                    tissue=result.tissue,
                    tumour_types=tuple(roles["tumour"]), t_types=tuple(roles["effector_t"]),
                    neutrophil_types=tuple(roles.get("neutrophil", ())),
                    shield_ring_um=float(params["shield_ring_um"]),
                    shield_min_coverage=float(params["shield_min_coverage"]),
                    nest_strip_um=float(params["nest_strip_um"]), contact_um=float(params["contact_um"]),
                    antagonism_tile_um=float(params["antagonism_tile_um"]),
                    antagonism_radii_um=tuple(params["antagonism_radii_um"]), seed=seed, progress=progress)
            result.masks = masks
            result.metrics.setdefault("mask_gates", {}).update(mask_gates)
            per_cell = getattr(sh, "per_cell", None)
            if per_cell is not None and len(per_cell):
                cols = [c for c in per_cell.columns if c != "cell_id"]
                result.cells = result.cells.drop(columns=[c for c in cols if c in result.cells.columns]).merge(
                    per_cell, on="cell_id", how="left")
            return sh

        yield "shield", run_shield


# Tables and geometries that an analysis' dict repeats from another output file:
# metrics.json names the file instead (it holds numbers; 24 MB → ~kB at 1M cells).
_IN_OTHER_FILES = {("barrier", "segments"): "segments.csv",
                   ("exclusion", "zones_wkt"): "exclusion_zones.geojson"}


def _with_file_references(analyses: dict) -> dict:
    for (name, key), file in _IN_OTHER_FILES.items():
        value = analyses.get(name, {}).get(key)
        if value is None:
            continue
        n = len(next(iter(value.values()), [])) if isinstance(value, dict) else len(value)
        analyses[name][key] = {"file": file, "n": int(n)}
    return analyses


def _labels_array(labels):
    if labels is None or isinstance(labels, np.ndarray):
        return labels
    return np.asarray(labels)


def _per_nest_table(result: PipelineResult) -> pd.DataFrame:
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


# ---------------------------------------------------------------------------
def write_outputs(result: PipelineResult, out_dir, *, progress: ProgressFn | None = None,
                  extra_files: Mapping[str, str] | None = None, spatialdata: bool = False) -> list[Path]:
    """Write every output of a run into ``out_dir`` (the CLI's file contract).

    The files form one result set (:func:`tibspace.io.result_set`): written
    into a staging folder and swapped in whole, so ``out_dir`` holds the
    complete previous result or the complete new one, never a mix; files of
    the previous tibspace result are replaced, files tibspace did not write
    are kept. ``spatialdata=True`` adds ``<sample_id>.zarr`` (image, labels,
    nests, zones and the cell table; :mod:`tibspace.outputs.spatialdata`).
    """
    from tibspace.io import MANIFEST, check_free_space, result_set, safe_name, safe_path
    from tibspace.outputs import write_report_files

    out_dir = Path(out_dir)
    check_free_space(out_dir, _output_bytes_estimate(result))
    with result_set(out_dir) as stage:
        write_report_files(result, stage, progress=progress)
        if spatialdata:
            _write_spatialdata(result, stage)
        for name, text in (extra_files or {}).items():
            safe_path(stage, safe_name(name)).write_text(text, encoding="utf-8")
        written = sorted(p.relative_to(stage) for p in stage.rglob("*") if p.is_file())
    result.out_dir = out_dir
    return [out_dir / p for p in written] + [out_dir / MANIFEST]


def _write_spatialdata(result: PipelineResult, folder: Path) -> None:
    from tibspace.io import open_image, safe_name, safe_path
    from tibspace.outputs.spatialdata import write_spatialdata

    image = None
    if result.image_path is not None:
        image = open_image(result.image_path, pixel_size_um=result.pixel_size_um)
    try:
        write_spatialdata(result, safe_path(folder, safe_name(result.sample_id) + ".zarr"), image=image)
    finally:
        if image is not None:
            image.close()


def _output_bytes_estimate(result: PipelineResult) -> int:
    """A generous estimate of what :func:`write_outputs` writes (checked against free space)."""
    cells = result.cells
    n = len(cells) * max(len(cells.columns), 1)
    size = 3 * 12 * n  # Parquet + CSV + h5ad, ~12 bytes a value
    if result.labels is not None:
        size += 4 * int(np.prod(np.shape(result.labels)))
    for m in (result.masks or {}).values():
        size += int(np.prod(np.shape(m)))
    return int(size * 1.5) + (8 << 20)
