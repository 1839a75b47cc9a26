"""Scaling of ``tibspace analyze`` in cells: time, CPU, peak RSS and growth exponents, per stage.

Usage::

    nice -n 10 python benchmarks/bench_analyze_scaling.py --sizes 300000 1000000 2000000
    nice -n 10 python benchmarks/bench_analyze_scaling.py --root /path/to/other/checkout   # compare a tree

Clustered synthetic cell tables (``tibspace.synthetic.make_clustered_cells``,
seed 0) of each size go through ``tibspace analyze`` (every output written)
under ``/usr/bin/time -v``. Printed per size: wall, CPU seconds, peak RSS;
per stage the wall seconds the run log records (``run_log.json``
``timings_s``; stages overlap in threads, so they do not add up to the
wall); and the growth exponents ``log(t2/t1)/log(n2/n1)`` between
consecutive sizes, of the whole run and of every stage. Note the machine's
load: numbers compare runs of this script only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wholeslide import timed  # noqa: E402


def run_sizes(sizes, root: Path, tmp: str, warmup: int = 20_000) -> list[dict]:
    from tibspace.synthetic import make_clustered_cells

    rows = []
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        d = Path(d)
        (d / "panel.toml").write_text("[parameters]\nseed = 0\n")
        if warmup:   # compiles (and caches) the numba kernels, so the first size does not pay for it
            make_clustered_cells(warmup, seed=0).to_parquet(d / "warmup.parquet", index=False)
            timed([sys.executable, "-m", "tibspace", "analyze", str(d / "warmup.parquet"), "--panel",
                   str(d / "panel.toml"), "--out", str(d / "out_warmup"), "--quiet"], cwd=root)
        for n in sizes:
            make_clustered_cells(n, seed=0).to_parquet(d / f"cells_{n}.parquet", index=False)
            r = timed([sys.executable, "-m", "tibspace", "analyze", str(d / f"cells_{n}.parquet"),
                       "--panel", str(d / "panel.toml"), "--out", str(d / f"out_{n}"), "--quiet"], cwd=root)
            stages = json.loads((d / f"out_{n}" / "run_log.json").read_text()).get("timings_s", {})
            rows.append({"cells": n, **r, "stages": stages})
            print(f"{n:>10,} cells: wall {r['wall_s']:7.1f} s  CPU {r['cpu_s']:7.1f} s  peak RSS "
                  f"{r['peak_rss_gb']:5.2f} GB ({r['peak_rss_gb'] / (n / 1e6):.2f} GB per million)", flush=True)
            print("    " + "  ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items())), flush=True)
    return rows


def exponent(t1, t2, n1, n2):
    return math.log(t2 / t1) / math.log(n2 / n1) if t1 > 0 and t2 > 0 else float("nan")


def print_growth(rows) -> None:
    for p, q in zip(rows, rows[1:]):
        n1, n2 = p["cells"], q["cells"]
        print(f"growth {n1:,} -> {n2:,}: wall exponent {exponent(p['wall_s'], q['wall_s'], n1, n2):.2f}, "
              f"CPU exponent {exponent(p['cpu_s'], q['cpu_s'], n1, n2):.2f}")
        for k in sorted(set(p["stages"]) & set(q["stages"])):
            a, b = p["stages"][k], q["stages"][k]
            print(f"    {k:<20} {a:7.1f} s -> {b:7.1f} s  exponent {exponent(a, b, n1, n2):5.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300_000, 1_000_000, 2_000_000])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]),
                    help="checkout whose tibspace runs (default: this one)")
    ap.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"), help="scratch folder (needs space)")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--warmup", type=int, default=20_000, help="cells of an unreported first run (0: none)")
    a = ap.parse_args()
    rows = run_sizes(a.sizes, Path(a.root), a.tmp, a.warmup)
    print_growth(rows)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
