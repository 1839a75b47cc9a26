"""Cohort throughput: a synthetic cohort on local Dask workers vs one sample after another.

Usage::

    python benchmarks/bench_cohort.py [--size realistic|tiny|both] [--slides 20] [--workers 2] [--repeats 3]

Sizes (synthetic cell tables, :mod:`tibspace.synthetic.cohort`, seed 0, one
sample per patient, half responders):

- ``realistic``: ~55,000 cells per slide on a 6.5 × 6.5 mm field (42 mm²,
  about 1,300 cells/mm²) with 40 tumour nests: a whole-slide region of a
  core-facility multiplex scan (the cell count of a 2048²–4096² px field
  segmented at 0.5 µm/px);
- ``tiny``: ~9,000 cells per slide (2.5 mm field, 12 nests), where the
  per-process start-up is a large share of the work.

Each timed run is a fresh ``python`` subprocess (as a user runs
``tibspace cohort``) that runs the samples (:func:`tibspace.cohort.run_cohort`)
and then writes the cohort tables; it reports the two phases' wall times.
The parent measures each run's wall time, its CPU time (the whole process
tree: ``os.wait4`` of the run includes the Dask workers it reaped) and the
peak RSS of the whole process tree (psutil, sampled every 0.1 s) and of its
largest process. Modes alternate (sequential, Dask, sequential, ...) so that
drifting machine load hits both; the load average is printed before each
run. One untimed warm-up sample first makes sure numba's kernels are on the
disk cache, so neither mode pays compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PANEL = ROOT / "sample_data" / "hcc_sample_panel.toml"
SIZES = {"realistic": {"side_um": 6455.0, "nests_per_sample": 40},
         "tiny": {"side_um": 2500.0, "nests_per_sample": 12}}


def _one(mode: str, manifest: str, out: str, workers: int) -> None:
    """The timed child: samples, then cohort tables; prints its phases as JSON."""
    t0 = time.perf_counter()
    from tibspace.cohort import read_manifest, run_cohort, write_cohort_tables

    samples = read_manifest(manifest)
    t1 = time.perf_counter()
    st = run_cohort(samples, PANEL, out, scheduler="synchronous" if mode == "sequential" else None,
                    n_workers=workers, progress=lambda line: None)
    t2 = time.perf_counter()
    write_cohort_tables(samples, out, st)
    t3 = time.perf_counter()
    print(json.dumps({"ok": bool((st["status"] == "done").all()), "startup_s": t1 - t0, "samples_s": t2 - t1,
                      "tables_s": t3 - t2, "median_sample_s": float(st["seconds"].median())}))


def _tree_rss(proc, peak: dict, stop: threading.Event) -> None:
    import psutil

    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [root] + root.children(recursive=True)
            rss = [p.memory_info().rss for p in procs if p.is_running()]
            peak["tree"] = max(peak.get("tree", 0), sum(rss))
            peak["largest"] = max(peak.get("largest", 0), max(rss))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        stop.wait(0.1)


def _timed(mode: str, manifest: Path, out: Path, workers: int) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--one", mode, str(manifest), str(out), str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, text=True)
    peak, stop = {}, threading.Event()
    sampler = threading.Thread(target=_tree_rss, args=(proc, peak, stop), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    phases = json.loads(proc.stdout.read().strip().splitlines()[-1])
    assert proc.returncode == 0 and phases["ok"], (mode, proc.returncode, phases)
    return {"mode": mode, "load": load, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_largest_mb": usage.ru_maxrss / 1024, "peak_tree_mb": peak.get("tree", 0) / 2**20, **phases}


def _cohort(d: Path, size: str, slides: int) -> tuple[Path, int]:
    import pandas as pd

    from tibspace.synthetic.cohort import CohortDesign, make_cohort

    design = CohortDesign(patients_per_group=slides // 2, samples_per_patient=(1,), **SIZES[size])
    m = make_cohort(d / size, design, seed=0)
    return d / size / "manifest.csv", int(sum(len(pd.read_parquet(d / size / t)) for t in m["table"]))


def _warm_up(manifest: Path, d: Path) -> None:
    from tibspace.cohort import read_manifest, run_cohort

    run_cohort(read_manifest(manifest)[:1], PANEL, d / "warm-up", scheduler="synchronous", progress=lambda line: None)


def _report(size: str, n_slides: int, n_cells: int, runs: list[dict], workers: int) -> dict:
    def med(mode, key):
        return statistics.median(r[key] for r in runs if r["mode"] == mode)

    dask = f"dask {workers} workers"
    print(f"\n{size}: {n_slides} slides, {n_cells:,} cells ({n_cells / n_slides:,.0f} per slide), "
          f"{sum(r['mode'] == 'sequential' for r in runs)} repeats per mode")
    for r in runs:
        print(f"  {r['mode']:>16}  load {r['load']:4.1f}  wall {r['wall_s']:6.1f} s (samples {r['samples_s']:6.1f}, "
              f"tables {r['tables_s']:4.1f})  CPU {r['cpu_s']:6.1f} s  peak RSS tree {r['peak_tree_mb']:5.0f} MB, "
              f"largest process {r['max_rss_largest_mb']:4.0f} MB  median sample {r['median_sample_s']:.2f} s")
    seqs = [r for r in runs if r["mode"] == "sequential"]
    dasks = [r for r in runs if r["mode"] == dask]
    paired = [s["wall_s"] / k["wall_s"] for s, k in zip(seqs, dasks)]
    summary = {"size": size, "slides": n_slides, "cells": n_cells,
               **{f"{m}_{k}": med(mode, k) for m, mode in (("seq", "sequential"), ("dask", dask))
                  for k in ("wall_s", "cpu_s", "samples_s", "peak_tree_mb", "median_sample_s")},
               "paired_ratios": paired}
    summary["ratio_wall"] = summary["seq_wall_s"] / summary["dask_wall_s"]
    summary["ratio_samples"] = summary["seq_samples_s"] / summary["dask_samples_s"]
    print(f"  medians: sequential wall {summary['seq_wall_s']:.1f} s, CPU {summary['seq_cpu_s']:.1f} s; "
          f"{dask} wall {summary['dask_wall_s']:.1f} s, CPU {summary['dask_cpu_s']:.1f} s")
    print(f"  wall-time ratio sequential / dask: x{summary['ratio_wall']:.2f} (whole run), "
          f"x{summary['ratio_samples']:.2f} (samples phase); per repeat "
          + ", ".join(f"x{p:.2f}" for p in paired))
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["realistic", "tiny", "both"], default="both")
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the summaries here")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        return _one(a.one[0], a.one[1], a.one[2], int(a.one[3]))
    summaries = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for size in (["tiny", "realistic"] if a.size == "both" else [a.size]):
            manifest, n_cells = _cohort(d, size, a.slides)
            _warm_up(manifest, d)
            runs = []
            for k in range(a.repeats):
                for mode in ("sequential", f"dask {a.workers} workers"):
                    out = d / f"out-{size}-{mode.split()[0]}-{k}"
                    runs.append(_timed(mode.split()[0] if mode == "sequential" else "dask", manifest, out,
                                       a.workers) | {"mode": mode})
            summaries.append(_report(size, a.slides, n_cells, runs, a.workers))
    if a.json:
        Path(a.json).write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
    main()
