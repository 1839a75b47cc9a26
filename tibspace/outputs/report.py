"""Turn a :class:`~tibspace.pipeline.PipelineResult` into the output folder.

File contract (``tibspace run`` / ``tibspace analyze`` / napari Export):

==============================  ==============================================
``cells.parquet``, ``cells.csv``  one row per cell (intensities, phenotype,
                                  ``signed_dist_um``, ``compartment``,
                                  ``nest_id``, ``segment_id``, shield columns,
                                  ``dist_to_<phenotype>_um``)
``cell_labels.ome.tif``         uint32 labels == ``cell_id`` (image runs)
``metrics.json``                every number, parameter, gate, skip reason,
                                version and input checksum (deterministic)
``gates.csv``                   gate per marker: method, value, % positive
``panel_used.toml``             the panel with every gate frozen to its
                                value: re-running with it reproduces the run
``profiles.csv``                infiltration profile (tidy), and
                                ``profiles_by_nest.csv``
``nests.csv``                   one row per nest, every analysis' numbers
``segments.csv``                perimeter segments (barrier columns)
``stats/*.csv``                 tidy statistics (statistic, type pair,
                                ``r_um``, value, envelope)
``*.geojson``                   nests, barrier covered/gap segments,
                                exclusion zones, tissue (QuPath-compatible,
                                pixel coordinates)
``net_mask.ome.tif`` ...        NET / collagen-I pixel masks (image runs)
``cells.h5ad``                  AnnData for scanpy/squidpy users
``report.html``, ``*.png``      figures and the key numbers
==============================  ==============================================
"""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
import pandas as pd

from tibspace.outputs.anndata import write_anndata
from tibspace.outputs.geojson import geojson_features, write_cell_detections, write_geojson
from tibspace.outputs.metrics import write_json
from tibspace.outputs.background import BackgroundWriter, join_all
from tibspace.outputs.tables import arrow_files, write_arrow_file, write_table
from tibspace.io import safe_name, safe_path
from tibspace.progress import report


def summary_lines(result) -> list[str]:
    """The key numbers of a run, one per line (terminal summary and report)."""
    m = result.metrics
    lines = [f"sample {m.get('sample_id', '?')}: {m.get('n_cells', len(result.cells)):,} cells"]
    counts = m.get("phenotype_counts", {})
    if counts:
        lines.append("  phenotypes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    if m.get("tissue_area_mm2") is not None:
        lines.append(f"  tissue area: {m['tissue_area_mm2']:.3f} mm²")
    tr = m.get("tumour_region")
    if tr:
        lines.append(f"  tumour nests: {tr['n_nests']} (tumour area {tr['tumour_area_mm2']:.3f} mm², "
                     f"perimeter {tr['perimeter_um']:.0f} µm)")
    an = m.get("analyses", {})

    def r3(v):
        if v is None:
            return "n/a"
        return (f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}") if isinstance(v, float) else str(v)

    ex = (an.get("exclusion") or {}).get("sample", {})
    if ex:
        lines.append(f"  immune phenotype: {ex.get('immune_phenotype')} (infiltration ratio "
                     f"{r3(ex.get('infiltration_ratio'))}; {(ex.get('decision') or {}).get('rule', '')}); "
                     f"exclusion zones border {r3(ex.get('zone_perimeter_fraction'))} of the tumour perimeter")
    br = (an.get("barrier") or {}).get("sample", {})
    if br:
        link = br.get("link") or {}
        lines.append(f"  barrier coverage: {r3(br.get('barrier_coverage'))} of {r3(br.get('perimeter_um'))} µm "
                     f"perimeter; {br.get('n_gaps')} gaps (largest {r3(br.get('largest_gap_um'))} µm); "
                     f"barrier→exclusion link p = {r3(link.get('p_value'))}")
    sh = (an.get("shield") or {}).get("sample", {})
    if sh:
        c = sh.get("contact") or {}
        lines.append(f"  shielded tumour cells: {r3(sh.get('shielded_fraction'))} (mean ring coverage "
                     f"{r3(sh.get('mean_shield_coverage'))}); T-contact rate shielded {r3(c.get('contact_rate_shielded'))}"
                     f" vs unshielded {r3(c.get('contact_rate_unshielded'))} (Fisher p {r3(c.get('fisher_p_two_sided'))})")
    for name, why in (m.get("skipped") or {}).items():
        lines.append(f"  skipped {name}: {why}")
    for text in m.get("warnings") or []:
        lines.append(f"  warning: {text}")
    return lines


def _frozen_panel(result):
    """The panel with every automatic gate replaced by the value it produced."""
    return None if result.panel is None else result.panel.with_gates(result.gates or {})


def _fig_png(draw, size=(7, 4.5), target: str = "axes") -> bytes:
    """PNG bytes of a figure drawn by ``draw(ax)`` (or ``draw(fig)`` with ``target="figure"``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    draw(fig if target == "figure" else fig.add_subplot(111))
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report_files(result, folder, *, progress=None) -> None:
    """Write every output file of ``result`` into ``folder`` (see module docstring).

    The big files whose writing releases the GIL (the cell tables,
    ``cells.geojson``, the structure GeoJSON) are written on threads of their
    own (:mod:`tibspace.outputs.background`) while this thread writes
    AnnData, the figures and the report; the last step is reported once
    every file is written.
    """
    folder = Path(folder)
    steps = [_write_cells, _write_images, _write_tables, _write_geometries, _write_anndata, _write_metrics,
             _write_figures, _write_report]
    report(progress, "writing outputs", 0, len(steps))
    figures: dict[str, bytes] = {}
    writers: list = []
    try:
        for k, step in enumerate(steps, start=1):
            writers += step(result, folder, figures) or []
            if k < len(steps):
                report(progress, "writing outputs", k, len(steps))
    except BaseException:
        join_all(writers, quiet=True)  # no thread keeps writing into a folder that is being discarded
        raise
    join_all(writers)
    report(progress, "writing outputs", len(steps), len(steps))


_DETECTION_COLUMNS = ("cell_id", "x_um", "y_um", "phenotype", "area_um2", "signed_dist_um")


def _write_cells(result, folder, figures):
    """cells.parquet, cells.csv and cells.geojson, each on a thread of its own.

    Each thread owns its input: the Arrow tables (immutable, built here) and a
    deep copy of the few columns ``cells.geojson`` needs (pandas frames carry
    caches that are not safe to share between threads).
    """
    cells = result.cells
    own = cells[[c for c in _DETECTION_COLUMNS if c in cells.columns]].copy(deep=True)
    files = arrow_files(cells, folder / "cells")  # everything that can fail on bad input, before any thread
    writers = [BackgroundWriter("cells-geojson", write_cell_detections, own, folder / "cells.geojson",
                                pixel_size_um=result.pixel_size_um)]
    return writers + [BackgroundWriter(f"cells-{fmt}", write_arrow_file, table, fmt, target)
                      for fmt, target, table in files]


def _write_images(result, folder, figures):
    from tibspace.io import write_labels_ome_tiff

    px = result.pixel_size_um
    if result.labels is not None:
        write_labels_ome_tiff(folder / "cell_labels.ome.tif", result.labels, px)
    for name, mask in (result.masks or {}).items():
        write_labels_ome_tiff(safe_path(folder, f"{safe_name(name)}_mask.ome.tif"),
                              np.asarray(mask).astype(np.uint8), px)


def _write_tables(result, folder, figures):
    from tibspace.io import atomic_path

    gates = result.metrics.get("gates", {})
    if gates:
        write_table(pd.DataFrame(list(gates.values())), folder / "gates", formats=("csv",))
    frozen = _frozen_panel(result)
    if frozen is not None:
        with atomic_path(folder / "panel_used.toml") as tmp:
            tmp.write_text(frozen.to_toml(), encoding="utf-8")
    for name, df in (("profiles", result.profiles), ("profiles_by_nest", result.profiles_by_nest),
                     ("nests", result.per_nest), ("segments", result.segments)):
        if df is not None and len(df):
            write_table(df, folder / name, formats=("csv",))
    for name, df in (result.stats or {}).items():
        write_table(df, safe_path(folder, "stats", safe_name(name)), formats=("csv",))
    for name, res in (result.analyses or {}).items():
        for tname, df in (getattr(res, "tables", lambda: {})() or {}).items():
            write_table(df, safe_path(folder, "stats", safe_name(f"{name}_{tname}")), formats=("csv",))


def _write_geometries(result, folder, figures):
    """QuPath-compatible GeoJSON (pixel coordinates when the pixel size is known), on a thread.

    The thread gets private copies of the geometries (:func:`_geometry_copy`)
    and of the plain-Python measurement records, read here.
    """
    jobs = []  # (file name, geometries, feature keywords)
    if result.region is not None:
        pn = result.per_nest.to_dict(orient="records") if len(result.per_nest) else None
        ids = [f"nest-{i}" for i in range(1, result.region.n_nests + 1)]
        jobs.append(("nests.geojson", [(list(result.region.nests), dict(name="tumour_nest", measurements=pn,
                                                                          ids=ids))]))
    if result.tissue is not None:
        jobs.append(("tissue.geojson", [([result.tissue], dict(name="tissue"))]))
    br = (result.analyses or {}).get("barrier")
    if br is not None:  # one feature per covered run / gap, with its nest and length, as measured
        parts, runs = [], br.runs
        for flag, key in ((True, "barrier_covered"), (False, "barrier_gap")):
            sel = runs[runs["covered"] == flag] if len(runs) else runs
            if len(sel):
                meas = sel[["nest_id", "ring", "start_um", "length_um"]].to_dict(orient="records")
                parts.append((list(sel["geometry"]), dict(name=key, measurements=meas)))
        jobs.append(("barrier_segments.geojson", parts))
    if result.exclusion_zones:
        jobs.append(("exclusion_zones.geojson", [(list(result.exclusion_zones), dict(name="exclusion_zone"))]))
    own = [(name, [(_geometry_copy(geoms), _thread_copy(kw)) for geoms, kw in parts]) for name, parts in jobs]
    return [BackgroundWriter("geojson", _geometry_files, own, folder, result.pixel_size_um)]


def _geometry_files(jobs, folder: Path, pixel_size_um) -> None:
    """Write the GeoJSON files of :func:`_write_geometries` (runs on its thread)."""
    for name, parts in jobs:
        feats = []
        for geoms, kw in parts:
            feats += geojson_features(geoms, pixel_size_um=pixel_size_um, geometry_text=True, **kw)
        write_geojson(feats, folder / name)


def _geometry_copy(geoms) -> list:
    """Private, bit-identical copies of ``geoms`` for another thread, by one vectorised
    WKB round trip (pickling them one by one took 2 s of the GIL for ~9,000 geometries)."""
    import shapely

    arr = np.asarray(list(geoms), dtype=object)
    return list(shapely.from_wkb(shapely.to_wkb(arr, include_srid=True))) if len(arr) else []


def _thread_copy(obj):
    """A private copy of plain records for another thread."""
    import pickle

    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _write_anndata(result, folder, figures):
    write_anndata(result.cells, result.channel_columns, folder / "cells.h5ad",
                  uns={"sample_id": result.sample_id, "pixel_size_um": result.pixel_size_um},
                  sample_id=result.sample_id, thumbnail=result.thumbnail,
                  enrichment=(result.stats or {}).get("neighbourhood_enrichment"))


def _write_metrics(result, folder, figures):
    write_json(result.metrics, folder / "metrics.json")
    write_json({"timings_s": result.timings_s}, folder / "run_log.json")


def _write_figures(result, folder, figures):
    """The three stand-alone PNGs (also shown in the report)."""
    from tibspace.io import atomic_path
    from tibspace.outputs.plotting import plot_barrier_coverage, plot_infiltration_profile, plot_overview

    pngs = {
        ("overview", "overview.png"): (lambda ax: plot_overview(result, ax), (8, 8)),
        ("profile", "infiltration_profile.png"): (lambda ax: plot_infiltration_profile(result.profiles, ax),
                                                  (7, 4.5)),
        ("barrier", "barrier_coverage.png"): (lambda ax: plot_barrier_coverage(result.per_nest, ax), (7, 4.5)),
    }
    for (key, name), (draw, size) in pngs.items():
        figures[key] = _fig_png(draw, size)
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(figures[key])


def _write_report(result, folder, figures):
    from tibspace.io import atomic_path
    from tibspace.outputs.plotting import plot_cross_l, plot_enrichment, plot_shields, plot_stain_overlay
    from tibspace.outputs.report_html import render

    stats = result.stats or {}
    extra = {
        "stain": (lambda ax: plot_stain_overlay(result, ax), (8, 8)) if result.thumbnail is not None else None,
        "shield": (lambda fig: plot_shields(result, fig.subplots(1, 2)), (10, 3.6), "figure")
        if "shield" in (result.analyses or {}) else None,
        "enrichment": (lambda ax: plot_enrichment(stats.get("neighbourhood_enrichment"), ax), (6, 5))
        if "neighbourhood_enrichment" in stats else None,
        "cross_l": (lambda ax: plot_cross_l(stats.get("cross_L"), ax), (6, 4.5)) if "cross_L" in stats else None,
    }
    shown = dict(figures)
    for name, spec in extra.items():
        if spec is not None:
            shown[name] = _fig_png(*spec)
    with atomic_path(folder / "report.html") as tmp:
        tmp.write_text(render(result, shown), encoding="utf-8")
