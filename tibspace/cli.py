"""Command line: tibspace run | analyze | cohort | compare | demo | synth.

A thin shell over tibspace.pipeline. User errors print one line
("tibspace: error: ...") and exit with code 2; no partial output is left.
Several inputs make a cohort: one sub-folder per sample plus
cohort_summary.csv with one row per sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tibspace.errors import TibspaceError
from tibspace.heap import bound_heap

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_IMAGE = REPO_ROOT / "sample_data" / "hcc_sample.ome.tif"
SAMPLE_PANEL = REPO_ROOT / "sample_data" / "hcc_sample_panel.toml"

DESCRIPTION = """Tumour immune barriers, NET/collagen-I shields and T-cell exclusion from
multiplex tissue images (OME-TIFF, named TIFFs, folders of single-channel TIFFs)
or cell tables, in physical units. Errors are one line, exit code 2."""

EXAMPLES = """examples:
  tibspace demo --out results/demo                      # the bundled synthetic HCC sample
  tibspace run slide.ome.tif --panel panel.toml --out results/slide
  tibspace run a.ome.tif b.ome.tif --panel panel.toml --out results/  # one folder per slide
  tibspace analyze qupath_export.tsv --panel panel.toml --out results/table
  tibspace cohort manifest.csv --panel panel.toml --out results/cohort --by response
  tibspace compare results/cohort --by response --groups R,NR
  tibspace synth --out synthetic/ --size 2048 --barrier-coverage 0.5

Definitions of every number: docs/metrics.md; outputs: README.md."""


def _sample_paths() -> tuple[Path, Path]:
    """The bundled sample: from the repository checkout, else a per-user copy
    generated once by the deterministic generator (installed wheels)."""
    if SAMPLE_IMAGE.exists() and SAMPLE_PANEL.exists():
        return SAMPLE_IMAGE, SAMPLE_PANEL
    import os

    cache = Path(os.environ.get("TIBSPACE_CACHE", Path.home() / ".cache" / "tibspace")) / "sample_data"
    image, panel = cache / SAMPLE_IMAGE.name, cache / SAMPLE_PANEL.name
    if not (image.exists() and panel.exists()):
        from tibspace.synthetic.tissue import make_sample

        print(f"tibspace demo: generating the bundled sample into {cache} (first run only)", flush=True)
        make_sample(cache)
    return image, panel


def _progress(args):
    from tibspace.progress import tqdm_progress

    return tqdm_progress(disable=getattr(args, "quiet", False))


def _print_summary(result, out_dir: Path) -> None:
    from tibspace.outputs import summary_lines

    for line in summary_lines(result):
        print(line)
    print(f"  results: {out_dir.resolve()} (open report.html; tables cells.csv, nests.csv; metrics.json)")


def _cohort_row(result) -> dict:
    """One flat row of every per-sample number (nested results flattened with dots)."""
    from tibspace.cohort import sample_row

    return {"sample_id": result.sample_id, **sample_row(result.metrics)}


def _run_many(items, args, one):
    """Run ``one(input, out_dir, sample_id)`` per ``(input, sample_id)``; a cohort summary when > 1."""
    import pandas as pd

    from tibspace.io import safe_path
    from tibspace.outputs import write_table

    out = Path(args.out)
    rows = []
    for inp, sid in items:
        target = out if len(items) == 1 else safe_path(out, sid)
        result = one(inp, target, sid if len(items) > 1 else None)
        _print_summary(result, target)
        rows.append(_cohort_row(result))
    if len(items) > 1:
        write_table(pd.DataFrame(rows), out / "cohort_summary", formats=("csv",))
        print(f"cohort summary: {(out / 'cohort_summary.csv').resolve()}")
    return 0


def _path_items(paths):
    from tibspace.pipeline import unique_sample_ids

    return list(zip(paths, unique_sample_ids([Path(p) for p in paths])))


def _table_items(paths):
    """One item per sample: a table covering several images (QuPath ``Image``,
    inForm ``Sample Name``, HALO ``Image Location``) is split by image."""
    from tibspace.io import read_cell_table, safe_name
    from tibspace.io.multi import split_by_image

    items = []
    for path, sid in _path_items(paths):
        parts = split_by_image(read_cell_table(path))
        if list(parts) == [""]:
            items.append((path, sid))
        else:
            print(f"{path}: {len(parts)} images in one table; analysed as {len(parts)} samples", flush=True)
            items += [(df, safe_name(f"{sid}_{name}")) for name, df in parts.items()]
    return items


def cmd_run(args) -> int:
    from tibspace.pipeline import run_image

    return _run_many(_path_items(args.images), args, lambda inp, target, sid: run_image(
        inp, args.panel, out_dir=target, pixel_size_um=args.pixel_size_um, seed=args.seed, sample_id=sid,
        scheduler=args.scheduler, progress=_progress(args), tile_size_px=args.tile_size_px,
        spatialdata=args.spatialdata, n_workers=args.workers, pdf=args.pdf,
        labels=args.labels, nuclei=args.nuclei, labels_format=args.labels_format, max_pixels=args.max_pixels))


def cmd_analyze(args) -> int:
    from tibspace.pipeline import analyze_table

    items = _table_items(args.tables)
    return _run_many(items, args, lambda inp, target, sid: analyze_table(
        inp, args.panel, out_dir=target, seed=args.seed, progress=_progress(args),
        sample_id=sid, spatialdata=args.spatialdata, pdf=args.pdf))


def cmd_cohort(args) -> int:
    from tibspace.cohort import run_manifest

    status = run_manifest(args.manifest, args.panel, args.out, scheduler=args.scheduler, n_workers=args.workers,
                          seed=args.seed, force=args.force, by=args.by, spatialdata=args.spatialdata,
                          max_pixels=args.max_pixels, pdf=args.pdf)
    out = Path(args.out).resolve()
    n_failed = int((status["status"] == "failed").sum())
    pdf = f" and {out / 'cohort_report.pdf'}" if args.pdf and (out / "cohort_report.pdf").exists() else ""
    print(f"cohort: {len(status) - n_failed} of {len(status)} samples done; report {out / 'cohort_report.html'}{pdf}; "
          f"status {out / 'cohort_status.csv'}")
    return 1 if n_failed else 0


def cmd_compare(args) -> int:
    from tibspace.cohort import compare_cohort

    groups = [g.strip() for g in args.groups.split(",")] if args.groups else None
    table = compare_cohort(args.folder, by=args.by, groups=groups, n_boot=args.n_boot, seed=args.seed or 0)
    tested = table[table["q_value"].notna()]
    print(f"compared {len(tested)} metrics by {args.by}; q < 0.05: {int((tested['q_value'] < 0.05).sum())}")
    for _, r in tested.head(10).iterrows():
        print(f"  {r['metric']}: q = {r['q_value']:.3g} (p = {r['p_value']:.3g})")
    print(f"table: {Path(args.folder).resolve() / ('compare_' + args.by + '.csv')}")
    return 0


def cmd_demo(args) -> int:
    image, panel = _sample_paths()
    args.images = [str(image)]
    args.panel = str(panel)
    args.labels = args.nuclei = None  # the demo segments its own image
    args.labels_format = "auto"
    print(f"tibspace demo: analysing the bundled synthetic HCC sample {image.name}")
    return cmd_run(args)


def cmd_synth(args) -> int:
    from tibspace.synthetic import make_tissue

    # as many nests as the default 5 per 1 mm² field, at least one
    side_um = args.size * args.pixel_size_um
    n_nests = args.n_nests or max(1, min(5, int((side_um / 1024.0) ** 2 * 5)))
    radius = (min(60.0, side_um / 8), max(min(60.0, side_um / 8), min(140.0, side_um / 7)))
    tissue = make_tissue(shape=(args.size, args.size), pixel_size_um=args.pixel_size_um, seed=args.seed,
                         n_nests=n_nests, nest_radius_um=radius,
                         barrier_coverage=args.barrier_coverage, shield_coverage=args.shield_coverage,
                         immune_phenotype=args.immune_phenotype, progress=_progress(args),
                         absent_markers=tuple(args.absent_marker),
                         illumination_gradient=args.illumination_gradient,
                         autofluorescence=args.autofluorescence,
                         af_speckles_per_mm2=args.af_speckles_per_mm2, t_layout=args.t_layout,
                         barrier_arcs=args.barrier_arcs, barrier_gap_um=args.barrier_gap_um,
                         scattered_tumour_cells=args.scattered_tumour_cells,
                         nest_shape=args.nest_shape, edge_nests=args.edge_nests)
    tissue.write(args.out)
    print(f"synthetic tissue written to {Path(args.out).resolve()}")
    return 0


def _ranged(kind, lo, hi, what):
    """argparse type: a number of ``kind`` in [lo, hi], else one line naming the option and the range."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (lo <= v <= hi) or v != v:
            raise argparse.ArgumentTypeError(f"expected {what} in [{lo:g}, {hi:g}], got {text}")
        return v
    return parse


def _scheduler(text):
    """argparse type: threads / processes / a Dask address (tcp://, tls://, ucx://, inproc://)."""
    if text in ("threads", "processes", "synchronous") or text.split("://", 1)[0] in ("tcp", "tls", "ucx", "inproc", "ws", "wss") \
            and "://" in text and text.split("://", 1)[1]:
        return text
    raise argparse.ArgumentTypeError(f"expected threads, processes, synchronous or a Dask scheduler address such as "
                                     f"tcp://host:8786, got {text!r}")


_SEED = _ranged(int, 0, 2**32 - 1, "an integer seed")
_PIXEL = _ranged(float, 1e-3, 100.0, "µm per pixel")
_WORKERS = _ranged(int, 1, 1024, "a number of workers")
_TILE = _ranged(int, 256, 65536, "a tile size in pixels")


def _whole_pixels(text: str) -> int:
    """``2e10`` or ``20000000000`` as an int (ValueError for nan/inf/junk)."""
    import math

    v = float(text)
    if not math.isfinite(v):
        raise ValueError(text)
    return int(v)


def _image_limits(sp) -> None:
    """``--max-pixels`` on the commands that read images (run, cohort, demo)."""
    from tibspace.io import MAX_PIXELS

    if sp.prog.split()[-1] in ("run", "cohort", "demo"):
        sp.add_argument("--max-pixels", type=_ranged(_whole_pixels, 1, 1e15, "a number of pixels"),
                        default=MAX_PIXELS, help=f"refuse images whose planes declare more pixels (Y×X) than this, "
                        f"before reading them (default {MAX_PIXELS:.0e}: a whole glass slide at 0.3 µm/px)")


def build_parser() -> argparse.ArgumentParser:
    """The ``tibspace`` command line: one sub-command per job (run, analyze, cohort, compare, demo, synth)."""
    p = argparse.ArgumentParser(prog="tibspace", description=DESCRIPTION, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from tibspace import __version__

    p.add_argument("--version", action="version", version=f"tibspace {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_analyze, _add_cohort, _add_compare, _add_demo, _add_synth):
        add(sub)
    return p


def _add_common(sp, default_out=None):
    """--out, --seed, --quiet (and --spatialdata where the command writes a sample's outputs)."""
    sp.add_argument("--out", required=default_out is None, default=default_out, help="output folder")
    sp.add_argument("--seed", type=_SEED, default=None,
                    help="seed of every random step (default: the panel's seed parameter, 0 if unset)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    _image_limits(sp)
    if sp.prog.split()[-1] in ("run", "analyze", "cohort", "demo"):
        sp.add_argument("--spatialdata", action="store_true",
                        help="also write <sample_id>.zarr (SpatialData: image, labels, nests, zones, cell table)")
    if sp.prog.split()[-1] in ("run", "analyze", "demo"):
        sp.add_argument("--pdf", action="store_true",
                        help="also print report.pdf with a headless Chromium (a one-line note if none is found)")
    elif sp.prog.split()[-1] == "cohort":
        sp.add_argument("--pdf", action="store_true",
                        help="also print cohort_report.pdf and each sample's report.pdf with a headless Chromium "
                             "(samples already done get theirs without a rerun; a one-line note if none is found)")


def _add_local_dask(sp, scheduler_help):
    """--scheduler, --workers (default 2) and --tile-size-px of an image run."""
    sp.add_argument("--scheduler", type=_scheduler, default=None, help=scheduler_help)
    sp.add_argument("--workers", type=_WORKERS, default=2, help="local Dask workers (default 2)")
    sp.add_argument("--tile-size-px", type=_TILE, default=None, help="segmentation tile size (default 2048)")


def _add_run(sub):
    r = sub.add_parser("run", help="segment, phenotype and analyse multiplex image(s)")
    r.add_argument("images", nargs="+", help="OME-TIFF / named multi-page TIFF / folder of single-channel TIFFs / OME-Zarr / "
                   "SpatialData .zarr (STORE.zarr::IMAGE names one of several images)")
    r.add_argument("--panel", required=True, help="marker panel (TOML)")
    r.add_argument("--pixel-size-um", type=_PIXEL, default=None, help="µm per pixel (overrides the file)")
    _add_local_dask(r, "Dask scheduler address, or threads / processes for a local cluster (default: threads)")
    r.add_argument("--labels", default=None, help="cell label mask (or MCMICRO/steinbock run folder): skip segmentation")
    r.add_argument("--nuclei", default=None, help="nucleus label mask (with or without --labels)")
    r.add_argument("--labels-format", default="auto",
                   choices=["auto", "deepcell", "cellpose", "stardist", "qupath", "inform", "mcmicro",
                            "steinbock", "tiff"], help="layout of the label files (default: detected)")
    _add_common(r)
    r.set_defaults(func=cmd_run)


def _add_analyze(sub):
    a = sub.add_parser("analyze", help="geometry, statistics and analyses on existing cell table(s)")
    a.add_argument("tables", nargs="+", help="cell table(s): tibspace, QuPath, inForm/phenoptr, HALO, MCMICRO")
    a.add_argument("--panel", required=True, help="panel (TOML) with roles and a [table] column mapping")
    _add_common(a)
    a.set_defaults(func=cmd_analyze)


def _add_cohort(sub):
    c = sub.add_parser("cohort", help="run a manifest of samples (CSV) on Dask, with resume and cohort tables")
    c.add_argument("manifest", help="CSV: sample_id, image or table, optional labels, patient_id, clinical columns")
    c.add_argument("--panel", required=True, help="marker panel (TOML)")
    c.add_argument("--scheduler", type=_scheduler, default=None,
                   help="Dask scheduler address (default: a local cluster of --workers processes)")
    c.add_argument("--workers", type=_WORKERS, default=None, help="local Dask workers (default: one per core)")
    c.add_argument("--force", action="store_true", help="run every sample again, even if its result is current")
    c.add_argument("--by", default=None, help="manifest column to compare groups by (e.g. response)")
    _add_common(c)
    c.set_defaults(func=cmd_cohort)


def _add_compare(sub):
    k = sub.add_parser("compare", help="compare groups of a finished cohort (per patient, BH FDR)")
    k.add_argument("folder", help="the cohort's output folder")
    k.add_argument("--by", required=True, help="manifest column with the groups (e.g. response)")
    k.add_argument("--groups", default=None, help="the two groups in order, e.g. R,NR (default: sorted)")
    k.add_argument("--n-boot", type=_ranged(int, 100, 100000, "a number of bootstrap draws"), default=2000,
                   help="bootstrap draws for the effect's confidence interval (default 2000)")
    k.add_argument("--seed", type=_SEED, default=0, help="seed of the bootstrap (default 0)")
    k.set_defaults(func=cmd_compare)


def _add_demo(sub):
    d = sub.add_parser("demo", help="run the whole pipeline on the bundled sample data")
    d.add_argument("--pixel-size-um", type=_PIXEL, default=None, help=argparse.SUPPRESS)
    _add_local_dask(d, "Dask scheduler address, or threads / processes (default: threads)")
    _add_common(d, default_out="tibspace-demo-results")
    d.set_defaults(func=cmd_demo)


def _add_synth(sub):
    s = sub.add_parser("synth", help="generate synthetic HCC tissue with ground truth")
    s.add_argument("--size", type=_ranged(int, 512, 32768, "an image side in pixels"), default=2048,
                   help="image side in pixels (default 2048)")
    s.add_argument("--pixel-size-um", type=_PIXEL, default=0.5, help="µm per pixel (default 0.5)")
    s.add_argument("--barrier-coverage", type=_ranged(float, 0.0, 1.0, "a fraction"), default=0.6,
                   help="planted fraction of each nest boundary lined by the barrier (default 0.6)")
    s.add_argument("--shield-coverage", type=_ranged(float, 0.0, 1.0, "a fraction"), default=0.5,
                   help="planted fraction of tumour cells wrapped by NET/collagen-I (default 0.5)")
    s.add_argument("--immune-phenotype", choices=["inflamed", "excluded", "desert"], default="excluded",
                   help="planted T-cell pattern (default excluded)")
    s.add_argument("--n-nests", type=_ranged(int, 1, 200, "a number of nests"), default=None,
                   help="tumour nests to plant (default: 5 per mm² of field, fewer on small images)")
    w = s.add_argument_group("wider world (defaults: the standard generator; truth in planted.json 'world')")
    w.add_argument("--absent-marker", action="append", default=[], metavar="CHANNEL",
                   help="channel with no positive cell, background only (repeatable)")
    w.add_argument("--illumination-gradient", type=float, default=0.0,
                   help="far side of the field is 1+G times brighter than the near side (default 0)")
    w.add_argument("--autofluorescence", type=float, default=1.0,
                   help="multiplier of tissue autofluorescence in every channel (default 1)")
    w.add_argument("--af-speckles-per-mm2", type=float, default=0.0,
                   help="bright autofluorescent granules per mm² of tissue (default 0)")
    w.add_argument("--t-layout", choices=["piled", "held", "spread", "indifferent"], default=None,
                   help="T cells relative to barrier arcs: piled 0-50 µm outside, held 50-150 µm "
                        "away, spread through stroma, indifferent (null); replaces the immune phenotype")
    w.add_argument("--barrier-arcs", type=int, default=None, help="covered arcs per nest (default 1-3)")
    w.add_argument("--barrier-gap-um", type=float, default=None,
                   help="minimum gap between arcs in µm (default 50)")
    w.add_argument("--scattered-tumour-cells", type=int, default=0,
                   help="isolated tumour cells in stroma, >= 50 µm from nests (default 0)")
    w.add_argument("--nest-shape", choices=["blob", "irregular", "trabecular"], default="blob",
                   help="nest outlines: smooth blobs, lobulated, or thin cords (default blob)")
    w.add_argument("--edge-nests", type=int, default=0,
                   help="how many nests are cut by the image frame (default 0)")
    _add_common(s)
    s.set_defaults(func=cmd_synth, seed=0)


def kernels_compiled() -> bool:
    """Whether numba's on-disk cache holds tibspace's compiled kernels (``*.nbi`` index files) already.

    Asks numba where it keeps each kernel module's cache: beside the source
    (``__pycache__``) when that is writable, else ``NUMBA_CACHE_DIR`` or the
    user cache (``~/.cache/numba``), as for a read-only installed package.
    """
    import importlib

    for module in ("tibspace.tissue._cellarea", "tibspace.stats._kernels"):
        try:
            mod = importlib.import_module(module)
            kernel = next(v for v in vars(mod).values() if getattr(v, "_cache", None) is not None
                          and hasattr(v._cache, "_cache_path"))
            if any(Path(kernel._cache._cache_path).glob(f"{Path(mod.__file__).stem}.*.nbi")):
                return True
        except Exception:  # noqa: BLE001 - numba internals: a hint only, never an error
            continue
    return False


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    bound_heap()
    if args.command in ("run", "analyze", "cohort", "demo") and not kernels_compiled():
        print("tibspace: compiling numerical kernels (first run only; about 1-2 minutes, then cached)",
              file=sys.stderr, flush=True)
    if getattr(args, "seed", None) is None and args.command == "synth":
        args.seed = 0
    try:
        return int(args.func(args) or 0)
    except TibspaceError as exc:
        print(f"tibspace: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # full disk, read-only folder, vanished file: one line, exit 2
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"tibspace: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tibspace: interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
