"""The whole job, one call: image → cells → phenotypes → geometry → analyses → outputs.

The CLI (:mod:`tibspace.cli`), the Python API and the napari plugin all call
:func:`run_image` / :func:`analyze_table`; none of them re-implements a step.

Every analysis that cannot run on the given data (a phenotype the panel does
not define, a channel the panel does not name, no tumour region) is skipped
with its reason recorded in ``metrics["skipped"]``; everything else still runs.
"""

from __future__ import annotations

import contextlib

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from tibspace.errors import InputError
from tibspace.io.limits import MAX_PIXELS
from tibspace.run_steps import (_IN_OTHER_FILES, _Run, _Timer, _clip_region, _per_nest_table,  # noqa: F401
                                _thread_copy, _with_file_references, image_frame)

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
    from tibspace.io import split_element

    path, element = split_element(path)
    name = path.name.rstrip("/")
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr", ".parquet", ".csv", ".txt", ".tsv"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    return f"{name}_{element}" if element else name


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


# ---------------------------------------------------------------------------
def run_image(image_path, panel, *, out_dir=None, pixel_size_um: float | None = None, seed: int | None = None,
              scheduler: str | None = None, progress: ProgressFn | None = None,
              tile_size_px: int | None = None, n_workers: int = 2, sample_id: str | None = None,
              extra_files: Mapping[str, str] | None = None, spatialdata: bool = False,
              labels=None, nuclei=None, labels_format: str = "auto",
              max_pixels: int | None = MAX_PIXELS, pdf: bool = False) -> PipelineResult:
    """Run the full pipeline on one multiplex image.

    Parameters
    ----------
    image_path : path
        OME-TIFF, named multi-page TIFF, or a folder of single-channel TIFFs.
    panel : path or Panel
        Marker panel (TOML): channel roles, gates, phenotype rules, parameters.
    out_dir : path, optional
        Where every output file is written (atomically: a failed run leaves no partial output).
    pixel_size_um : float, optional
        µm per pixel, over the file's metadata (needed without it and without the panel's).
    seed : int, optional
        Seed of every random step (default: the panel's ``seed`` parameter).
    scheduler, tile_size_px, n_workers : str; int, optional; int
        Where the tiles run (:func:`tibspace.segment.scheduler.start_scheduler`), tile side
        (default: the panel's ``tile_size_px``, 2048) and workers of a local cluster.
    progress : callable, optional
        ``progress(step, done, total)``; may raise ``Cancelled``.
    sample_id : str, optional
        Name of the sample in the outputs (default: the file name without suffix).
    extra_files : dict, optional
        ``{file name: text}`` written into the same result set (the cohort's run key).
    spatialdata, pdf : bool
        Also write ``<sample_id>.zarr`` (SpatialData) into ``out_dir``; also print
        ``report.pdf`` with a headless Chromium (a one-line note without one).
    labels, nuclei : path, optional
        Bring your own masks: cell / nucleus label files (or an MCMICRO / steinbock run
        folder) used instead of segmentation (:func:`tibspace.io.read_label_mask`).
    labels_format : str
        Layout of the label files (default: detected from name and content).
    max_pixels : int, optional
        Refuse an image (or label mask) whose planes declare more pixels (Y·X) than this
        (:mod:`tibspace.io.limits`; default 2·10¹⁰, a slide at 0.3 µm/px); ``None``: no limit.

    Returns
    -------
    PipelineResult

    Examples
    --------
    >>> import tempfile; from tibspace.synthetic import make_tissue
    >>> d = tempfile.mkdtemp(); _ = make_tissue((512, 512), n_nests=1, nest_radius_um=(50, 60)).write(d)
    >>> r = run_image(f"{d}/image.ome.tif", f"{d}/panel.toml")
    >>> len(r.cells) > 100, sorted(r.analyses)
    (True, ['barrier', 'exclusion', 'shield'])
    """
    panel = _as_panel(panel)
    params = panel.parameters
    seed = int(params.get("seed", 0) if seed is None else seed)
    image_path, timings = Path(image_path), {}
    timer = _Timer(timings)
    with timer("open_image"):
        img, channel_index = _open_for_run(image_path, pixel_size_um, panel, max_pixels)
    nuclear, membrane = _roles(img, panel, channel_index)
    tile = int(tile_size_px or params.get("tile_size_px", 2048))
    with _work_folder(out_dir) as work:
        with timer("segmentation"):
            seg = _segment(img, image_path, nuclear, membrane, params, labels, nuclei, labels_format,
                           tile=tile, scheduler=scheduler, n_workers=n_workers, progress=progress,
                           work_dir=work, segmentation=panel.segmentation)
        result = analyze_cells(
            seg.cells, panel, pixel_size_um=img.pixel_size_um, labels=seg.labels, image=img,
            channel_index=channel_index, seed=seed, progress=progress, timings=timings)
        with timer("thumbnail"):
            result.thumbnail = _stain_thumbnail(img, panel, channel_index, nuclear)
        _record_image_run(result, img, image_path, seg, sample_id)
        if out_dir is not None:
            write_outputs(result, out_dir, progress=progress, extra_files=extra_files, spatialdata=spatialdata,
                          pdf=pdf)
            _labels_from_outputs(result, out_dir)
    return result


def _work_folder(out_dir):
    """Folder of the temporary tile crops and zarr label images: beside ``out_dir``, gone with the run."""
    from tibspace.io import work_folder

    return work_folder(out_dir) if out_dir is not None else contextlib.nullcontext(None)


def _open_for_run(image_path: Path, pixel_size_um, panel, max_pixels=MAX_PIXELS):
    """The image (pixel size from the call, the file or the panel; declared size and finite
    pixels checked by :func:`_open_checked`) and the panel's channel indices."""
    from tibspace.io import check_not_empty

    img = _open_checked(image_path, pixel_size_um, panel, max_pixels)
    check_not_empty(img)
    return img, panel.resolve_channels(img.channel_names, image_path)


def _segment(img, image_path, nuclear, membrane, params, labels, nuclei, labels_format, *, tile,
             scheduler, n_workers, progress, work_dir, segmentation=None):
    """Cells of the image: the given label masks when there are any, else :func:`segment_image`.

    Refuses (:class:`InputError`) a segmentation that found no cells.
    """
    from tibspace.segment import segment_image

    seg = (_given_labels(img, image_path, labels, nuclei, labels_format, params, tile=tile,
                         work_dir=work_dir, progress=progress)
           if labels is not None or nuclei is not None else None)
    seg = seg or segment_image(
        img, nuclear, membrane,
        expansion_um=float(params["cell_expansion_um"]),
        nucleus_diameter_um=(None if params["nucleus_diameter_um"] == "auto"
                             else float(params["nucleus_diameter_um"])),
        tile_size_px=tile, scheduler=scheduler, n_workers=n_workers, progress=progress,
        work_dir=work_dir, method=(segmentation or {}).get("method", "classical"),
        backend_options={k: v for k, v in (segmentation or {}).items() if k != "method"})
    if len(seg.cells) == 0:
        raise InputError(f"{image_path}: segmentation found no cells in channel(s) {', '.join(nuclear)}")
    return seg


def _roles(img, panel, channel_index) -> tuple[list[str], list[str]]:
    """The image's names of the panel's nuclear and membrane channels."""
    names = img.channel_names
    return ([names[channel_index[c]] for c in panel.nuclear],
            [names[channel_index[c]] for c in panel.membrane])


def _record_image_run(result, img, image_path: Path, seg, sample_id) -> None:
    """The image-side fields of a result: path, nuclei, shape; segmentation and input metrics; sample id."""
    result.image_path = image_path
    result.nuclei = seg.nuclei
    result.image_shape = tuple(int(s) for s in img.shape[-2:])
    result.metrics["segmentation"] = dict(seg.parameters) | {"n_cells": int(len(seg.cells)),
                                                             "n_tiles": int(seg.n_tiles)}
    result.metrics["input"] = {
        "path": str(image_path), "sha256": _checksum(image_path), "channels": list(img.channel_names),
        "shape_yx": list(result.image_shape), "pixel_size_um": float(img.pixel_size_um),
    }
    result.metrics["sample_id"] = sample_id or _sample_id(image_path)


def _labels_from_outputs(result, out_dir) -> None:
    """Label images held in the run's scratch folder (zarr, large images) are about to go:
    the cell labels are read lazily from the written ``cell_labels.ome.tif`` instead."""
    if result.labels is not None and not isinstance(result.labels, np.ndarray):
        import tifffile
        import zarr

        store = tifffile.imread(Path(out_dir) / "cell_labels.ome.tif", aszarr=True, level=0)
        result.labels = zarr.open(store, mode="r")
    if result.nuclei is not None and not isinstance(result.nuclei, np.ndarray):
        result.nuclei = None


def _stain_thumbnail(img, panel, channel_index, nuclear) -> dict:
    """Overview of the stains: nuclei blue, the tumour rule's markers green, the
    effector T rule's markers magenta (for the report and AnnData's ``uns["spatial"]``)."""
    from tibspace.cells import rule_markers
    from tibspace.io import composite_rgb, thumbnail

    def markers_of(role):
        names = []
        for ph in panel.roles.get(role, []):
            rule = panel.phenotypes.get(ph)
            names += [m for m in sorted(rule_markers(rule) if rule else []) if m in channel_index]
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


def _open_checked(path: Path, pixel_size_um, panel, max_pixels=MAX_PIXELS):
    """Open an image for a run: the declared size within ``max_pixels`` (checked before any
    pixel is read), then NaN / ±inf pixels counted per channel (float images; warnings
    for metrics.json, an error when a channel the panel names is mostly non-finite)."""
    from tibspace.io.image import check_finite

    img = _open_with_panel_pixel_size(path, pixel_size_um, panel, max_pixels)
    try:
        try:
            required = sorted(set(panel.resolve_channels(img.channel_names, path).values()))
        except InputError:
            required = []  # reported by the run's own resolve_channels call
        check_finite(img, required)
    except BaseException:
        img.close()
        raise
    return img


def _open_with_panel_pixel_size(path: Path, pixel_size_um, panel, max_pixels=None):
    """Open an image; pixel size from the argument, else the file, else the panel."""
    from tibspace.io import open_image

    if pixel_size_um is not None:
        return open_image(path, pixel_size_um=float(pixel_size_um), max_pixels=max_pixels)
    try:
        return open_image(path, max_pixels=max_pixels)
    except InputError as exc:
        if panel.pixel_size_um and "pixel size" in str(exc).lower():
            return open_image(path, pixel_size_um=float(panel.pixel_size_um), max_pixels=max_pixels)
        raise


def _checksum(path: Path) -> str:
    from tibspace.io import split_element
    from tibspace.outputs import file_sha256

    return file_sha256(split_element(path)[0])


# ---------------------------------------------------------------------------
def analyze_table(cells, panel, *, out_dir=None, seed: int | None = None,
                  progress: ProgressFn | None = None, sample_id: str | None = None,
                  extra_files: Mapping[str, str] | None = None, spatialdata: bool = False,
                  pdf: bool = False) -> PipelineResult:
    """Run geometry, statistics and analyses on an existing cell table.

    Parameters
    ----------
    cells : path or DataFrame
        tibspace's own ``cells.parquet``/``.csv`` or an export from QuPath,
        inForm/phenoptr, HALO or MCMICRO; the panel's ``[table]`` section maps
        its columns (x, y, phenotype or marker columns, units / pixel size).
    panel : path or Panel
        Marker panel (TOML): phenotype rules or gates, ``[table]`` mapping, parameters.
    out_dir : path, optional
        Where to write outputs (atomically).
    seed : int, optional
        Seed of every random step (default: the panel's ``seed``).
    progress : callable, optional
        ``progress(step, done, total)``; may raise ``Cancelled``.
    sample_id : str, optional
        Name of the sample in the outputs (default: the file name without suffix).
    extra_files, spatialdata, pdf
        As in :func:`run_image`: ``{file name: text}`` written into the same result
        set; also write ``<sample_id>.zarr``; also print ``report.pdf``.

    Returns
    -------
    PipelineResult

    Examples
    --------
    >>> from tibspace.cells import Panel
    >>> from tibspace.synthetic import make_clustered_cells
    >>> panel = Panel.from_dict({"parameters": {"n_envelope_sim": 0}})
    >>> r = analyze_table(make_clustered_cells(2000, seed=0), panel)
    >>> len(r.cells), sorted(r.analyses), r.region.n_nests > 0
    (2000, ['barrier', 'exclusion'], True)
    """
    from tibspace.io import check_table_classes, read_cell_table, standardise_cell_table

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
    class_warnings = [] if needs_gating else check_table_classes(std["phenotype"], panel, source)
    result = analyze_cells(std, panel, pixel_size_um=pixel_size_um, seed=seed, progress=progress,
                           timings=timings, gate=needs_gating)
    if class_warnings:
        result.metrics["warnings"] = class_warnings + list(result.metrics.get("warnings", []))
    if source is not None:
        result.metrics["input"] = {"path": str(source), "sha256": _checksum(source), "n_rows": int(len(raw))}
        result.metrics["sample_id"] = sample_id or _sample_id(source)
    else:
        result.metrics["input"] = {"path": None, "n_rows": int(len(raw))}
        result.metrics["sample_id"] = sample_id or "sample"
    if out_dir is not None:
        write_outputs(result, out_dir, progress=progress, extra_files=extra_files, spatialdata=spatialdata,
                      pdf=pdf)
    return result


# ---------------------------------------------------------------------------
def _given_labels(img, image_path, labels, nuclei, fmt, params, *, tile=2048, work_dir=None,
                  progress=None):
    """Segmentation result from user masks (``--labels`` / ``--nuclei``):
    :func:`tibspace.segment.segment_from_label_files`."""
    from tibspace.io import resolve_label_path
    from tibspace.segment import segment_from_label_files

    paths = {key: resolve_label_path(path, Path(image_path).name, nuclei=key == "nuclei")
             for key, path in (("cells", labels), ("nuclei", nuclei)) if path is not None}
    return segment_from_label_files(img, paths.get("cells"), paths.get("nuclei"), fmt=fmt,
                                    expansion_um=float(params["cell_expansion_um"]),
                                    tile_size_px=tile, work_dir=work_dir, progress=progress)


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
    if image is not None and getattr(image, "warnings", None):  # e.g. NaN pixels (check_finite)
        run.metrics["warnings"] = list(run.metrics.get("warnings", [])) + list(image.warnings)
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


# ---------------------------------------------------------------------------
def write_outputs(result: PipelineResult, out_dir, *, progress: ProgressFn | None = None,
                  extra_files: Mapping[str, str] | None = None, spatialdata: bool = False,
                  pdf: bool = False) -> list[Path]:
    """Write every output of a run into ``out_dir`` (the CLI's file contract).

    The files form one result set (:func:`tibspace.io.result_set`): written
    into a staging folder and swapped in whole, so ``out_dir`` holds the
    complete previous result or the complete new one, never a mix; files of
    the previous tibspace result are replaced, files tibspace did not write
    are kept. ``spatialdata=True`` adds ``<sample_id>.zarr`` (image, labels,
    nests, zones and the cell table; :mod:`tibspace.outputs.spatialdata`); ``pdf=True``
    adds ``report.pdf`` printed by a headless Chromium (:mod:`tibspace.outputs.report_pdf`;
    without a browser a one-line note on stderr instead).

    Parameters
    ----------
    result : PipelineResult
        What :func:`run_image` or :func:`analyze_table` returned.
    out_dir : path
        The result folder (created if needed).
    progress : callable, optional
        ``progress(step, done, total)``.
    extra_files : dict, optional
        ``{file name: text}`` written into the same result set.
    spatialdata, pdf : bool
        Also write ``<sample_id>.zarr``; also print ``report.pdf``.

    Returns
    -------
    list of Path
        The files written.

    Examples
    --------
    >>> import tempfile; from tibspace.cells import Panel; from tibspace.synthetic import make_clustered_cells
    >>> r = analyze_table(make_clustered_cells(2000, seed=0), Panel.from_dict({"parameters": {"n_envelope_sim": 0}}))
    >>> names = {p.name for p in write_outputs(r, tempfile.mkdtemp())}
    >>> {"cells.parquet", "metrics.json", "nests.geojson", "report.html"} <= names
    True
    """
    from tibspace.io import MANIFEST, check_free_space, result_set, safe_name, safe_path
    from tibspace.outputs import write_report_files

    out_dir = Path(out_dir)
    check_free_space(out_dir, _output_bytes_estimate(result))
    with result_set(out_dir) as stage:
        write_report_files(result, stage, progress=progress)
        if spatialdata:
            _write_spatialdata(result, stage)
        if pdf:
            from tibspace.outputs.report_pdf import print_pdf

            note = print_pdf(stage / "report.html", stage / "report.pdf")
            if note:
                print(note, file=sys.stderr, flush=True)
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
