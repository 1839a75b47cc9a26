"""Command line: ``tibspace run | analyze | demo | synth``.

A thin shell over :mod:`tibspace.pipeline`. User errors print one line
(``tibspace: error: ...``) and exit with code 2; no partial output is left.
Several inputs make a cohort: one sub-folder per sample plus
``cohort_summary.csv`` with one row per sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tibspace.errors import TibspaceError

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_IMAGE = REPO_ROOT / "sample_data" / "hcc_sample.ome.tif"
SAMPLE_PANEL = REPO_ROOT / "sample_data" / "hcc_sample_panel.toml"


def _progress(args):
    from tibspace.progress import tqdm_progress

    return tqdm_progress(disable=getattr(args, "quiet", False))


def _print_summary(result, out_dir: Path) -> None:
    from tibspace.outputs import summary_lines

    for line in summary_lines(result):
        print(line)
    print(f"  results: {out_dir.resolve()} (open report.html; tables cells.csv, nests.csv; metrics.json)")


def _cohort_row(result) -> dict:
    """One flat row of the key per-sample numbers, for cohort_summary.csv."""
    m = result.metrics
    row = {"sample_id": result.sample_id, "n_cells": m.get("n_cells"),
           "tissue_area_mm2": m.get("tissue_area_mm2"),
           "n_nests": (m.get("tumour_region") or {}).get("n_nests", 0)}
    for ph, n in (m.get("phenotype_counts") or {}).items():
        row[f"n_{ph}"] = n
    for name, res in (m.get("analyses") or {}).items():
        for k, v in (res.get("sample") or {}).items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                row[f"{name}.{k}"] = v
    row["skipped"] = "; ".join(f"{k}: {v}" for k, v in (m.get("skipped") or {}).items())
    return row


def _run_many(inputs, args, one):
    """Run ``one(input, out_dir)`` per input; cohort summary when > 1 input."""
    import pandas as pd

    from tibspace.io import safe_path
    from tibspace.outputs import write_table
    from tibspace.pipeline import unique_sample_ids

    out = Path(args.out)
    rows = []
    ids = unique_sample_ids([Path(i) for i in inputs])
    for inp, sid in zip(inputs, ids):
        target = out if len(inputs) == 1 else safe_path(out, sid)
        result = one(inp, target, sid if len(inputs) > 1 else None)
        _print_summary(result, target)
        rows.append(_cohort_row(result))
    if len(inputs) > 1:
        write_table(pd.DataFrame(rows), out / "cohort_summary", formats=("csv",))
        print(f"cohort summary: {(out / 'cohort_summary.csv').resolve()}")
    return 0


def cmd_run(args) -> int:
    from tibspace.pipeline import run_image

    return _run_many(args.images, args, lambda inp, target, sid: run_image(
        inp, args.panel, out_dir=target, pixel_size_um=args.pixel_size_um, seed=args.seed, sample_id=sid,
        scheduler=args.scheduler, progress=_progress(args), tile_size_px=args.tile_size_px,
        n_workers=args.workers))


def cmd_analyze(args) -> int:
    from tibspace.pipeline import analyze_table

    return _run_many(args.tables, args, lambda inp, target, sid: analyze_table(
        inp, args.panel, out_dir=target, seed=args.seed, progress=_progress(args), sample_id=sid))


def cmd_cohort(args) -> int:
    from tibspace.cohort import run_manifest

    status = run_manifest(args.manifest, args.panel, args.out, scheduler=args.scheduler, n_workers=args.workers,
                          seed=args.seed, force=args.force, by=args.by)
    out = Path(args.out).resolve()
    n_failed = int((status["status"] == "failed").sum())
    print(f"cohort: {len(status) - n_failed} of {len(status)} samples done; report {out / 'cohort_report.html'}; "
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
    if not SAMPLE_IMAGE.exists():
        raise TibspaceError(f"bundled sample not found at {SAMPLE_IMAGE}; run from a clone of the tibspace "
                            f"repository or regenerate it with: python -m tibspace.synthetic --out sample_data --preset sample")
    args.images = [str(SAMPLE_IMAGE)]
    args.panel = str(SAMPLE_PANEL)
    print(f"tibspace demo: analysing the bundled synthetic HCC sample {SAMPLE_IMAGE.name}")
    return cmd_run(args)


def cmd_synth(args) -> int:
    from tibspace.synthetic import make_tissue

    tissue = make_tissue(shape=(args.size, args.size), pixel_size_um=args.pixel_size_um, seed=args.seed,
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tibspace", description=__doc__.splitlines()[0])
    from tibspace import __version__

    p.add_argument("--version", action="version", version=f"tibspace {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, default_out=None):
        sp.add_argument("--out", required=default_out is None, default=default_out, help="output folder")
        sp.add_argument("--seed", type=_SEED, default=None, help="seed of every random step (default: panel's)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="segment, phenotype and analyse multiplex image(s)")
    r.add_argument("images", nargs="+", help="OME-TIFF / named multi-page TIFF / folder of single-channel TIFFs")
    r.add_argument("--panel", required=True, help="marker panel (TOML)")
    r.add_argument("--pixel-size-um", type=_PIXEL, default=None, help="µm per pixel (overrides the file)")
    r.add_argument("--scheduler", type=_scheduler, default=None,
                   help="Dask scheduler address, or threads / processes for a local cluster (default: threads)")
    r.add_argument("--workers", type=_WORKERS, default=2, help="local Dask workers (default 2)")
    r.add_argument("--tile-size-px", type=_TILE, default=None, help="segmentation tile size (default 2048)")
    common(r)
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("analyze", help="geometry, statistics and analyses on existing cell table(s)")
    a.add_argument("tables", nargs="+", help="cell table(s): tibspace, QuPath, inForm/phenoptr, HALO, MCMICRO")
    a.add_argument("--panel", required=True, help="panel (TOML) with roles and a [table] column mapping")
    common(a)
    a.set_defaults(func=cmd_analyze)

    c = sub.add_parser("cohort", help="run a manifest of samples (CSV) on Dask, with resume and cohort tables")
    c.add_argument("manifest", help="CSV: sample_id, image or table, optional labels, patient_id, clinical columns")
    c.add_argument("--panel", required=True, help="marker panel (TOML)")
    c.add_argument("--scheduler", type=_scheduler, default=None,
                   help="Dask scheduler address (default: a local cluster of --workers processes)")
    c.add_argument("--workers", type=_WORKERS, default=None, help="local Dask workers (default: one per core)")
    c.add_argument("--force", action="store_true", help="run every sample again, even if its result is current")
    c.add_argument("--by", default=None, help="manifest column to compare groups by (e.g. response)")
    common(c)
    c.set_defaults(func=cmd_cohort)

    k = sub.add_parser("compare", help="compare groups of a finished cohort (per patient, BH FDR)")
    k.add_argument("folder", help="the cohort's output folder")
    k.add_argument("--by", required=True, help="manifest column with the groups (e.g. response)")
    k.add_argument("--groups", default=None, help="the two groups in order, e.g. R,NR (default: sorted)")
    k.add_argument("--n-boot", type=_ranged(int, 100, 100000, "a number of bootstrap draws"), default=2000,
                   help="bootstrap draws for the effect's confidence interval (default 2000)")
    k.add_argument("--seed", type=_SEED, default=0, help="seed of the bootstrap (default 0)")
    k.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="run the whole pipeline on the bundled sample data")
    d.add_argument("--pixel-size-um", type=_PIXEL, default=None, help=argparse.SUPPRESS)
    d.add_argument("--scheduler", type=_scheduler, default=None,
                   help="Dask scheduler address, or threads / processes (default: threads)")
    d.add_argument("--workers", type=_WORKERS, default=2, help="local Dask workers (default 2)")
    d.add_argument("--tile-size-px", type=_TILE, default=None, help="segmentation tile size (default 2048)")
    common(d, default_out="tibspace-demo-results")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("synth", help="generate synthetic HCC tissue with ground truth")
    s.add_argument("--size", type=int, default=2048, help="image side in pixels")
    s.add_argument("--pixel-size-um", type=float, default=0.5)
    s.add_argument("--barrier-coverage", type=float, default=0.6)
    s.add_argument("--shield-coverage", type=float, default=0.5)
    s.add_argument("--immune-phenotype", choices=["inflamed", "excluded", "desert"], default="excluded")
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
    common(s)
    s.set_defaults(func=cmd_synth, seed=0)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
