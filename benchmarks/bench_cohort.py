"""Cohort throughput: a 20-slide synthetic cohort on 2 local Dask workers vs one after another.

Usage: python benchmarks/bench_cohort.py [--patients-per-group 10] [--side-um 2500] [--workers 2]

Both runs analyse the same 20 cell tables (tibspace.synthetic.cohort, one
sample per patient) into fresh folders with the same panel; the script prints
wall time, CPU seconds (this process and its children) and peak RSS of each,
and the wall-time ratio sequential / Dask. Run it on a quiet machine: the
ratio compares using 2 cores against 1.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients-per-group", type=int, default=10)
    ap.add_argument("--side-um", type=float, default=2500.0, help="field side (µm): sets cells per slide")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)

    from tibspace.cohort import read_manifest, run_cohort
    from tibspace.synthetic.cohort import CohortDesign, make_cohort

    panel = ROOT / "sample_data" / "hcc_sample_panel.toml"
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        design = CohortDesign(patients_per_group=a.patients_per_group, samples_per_patient=(1,),
                              nests_per_sample=12, side_um=a.side_um)
        m = make_cohort(d / "in", design, seed=0)
        import pandas as pd

        n_cells = sum(len(pd.read_parquet(d / "in" / t)) for t in m["table"])
        samples = read_manifest(d / "in" / "manifest.csv")
        print(f"cohort: {len(samples)} slides, {n_cells:,} cells in all")
        rows = {}
        for name, sched in (("sequential", "synchronous"), (f"dask {a.workers} workers", None)):
            t0, c0 = time.perf_counter(), _cpu()
            st = run_cohort(samples, panel, d / f"out-{name.split()[0]}", scheduler=sched, n_workers=a.workers,
                            progress=lambda line: None)
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
            assert (st["status"] == "done").all(), st
            rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
            rows[name] = wall
            print(f"{name:>18}: wall {wall:7.1f} s  CPU {cpu:7.1f} s  peak RSS (largest process) {rss:6.0f} MB")
        seq, dask = rows.values()
        print(f"wall-time ratio sequential / dask: x{seq / dask:.2f}")


if __name__ == "__main__":
    main()
