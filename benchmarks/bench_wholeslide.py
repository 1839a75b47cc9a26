"""Whole slides: a large mosaic image through ``tibspace run`` and 1M-5M-cell tables through ``tibspace analyze``.

Usage::

    python benchmarks/bench_wholeslide.py image --side 32768        # mosaic image, tibspace run
    python benchmarks/bench_wholeslide.py tables --sizes 1000000 3000000 5000000

``image``: a ``side`` x ``side`` x 12-channel tiled OME-TIFF mosaic of
4096² synthetic tiles (``tibspace.synthetic.make_tissue``, two seeds
alternating) is written to a temporary folder, then ``tibspace run`` runs on
it under ``/usr/bin/time -v``; printed: wall, CPU seconds, peak RSS, cells,
Mpx/s and the pipeline's own stage timings (``run_log.json``).

``tables``: clustered synthetic cell tables of each size through
``tibspace analyze`` (every output written), each under ``/usr/bin/time -v``;
printed: wall, CPU, peak RSS per size and the growth exponents
log(t2/t1)/log(n2/n1) of wall and CPU time between consecutive sizes.
Note the machine's load: the numbers compare runs of this script only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIBSPACE = [sys.executable, "-m", "tibspace"]


def timed(cmd: list[str], cwd: Path = ROOT) -> dict:
    """Run ``cmd`` under /usr/bin/time -v (in ``cwd``); wall, CPU seconds and peak RSS (GB)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", p.stderr).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", p.stderr).group(1))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": wall, "cpu_s": user + system, "peak_rss_gb": rss_kb / 1024**2}


def write_mosaic(path: Path, side: int, tile: int = 4096) -> None:
    import numpy as np
    import tifffile

    from tibspace.synthetic import CHANNELS, make_tissue

    bases = [make_tissue(shape=(tile, tile), pixel_size_um=0.5, seed=s, n_nests=8).image for s in (1, 2)]
    n = side // tile

    def blocks():
        for c in range(len(CHANNELS)):
            for ty in range(0, side, 512):
                for tx in range(0, side, 512):
                    base = bases[((ty // tile) + (tx // tile)) % 2]
                    yield base[c, ty % tile: ty % tile + 512, tx % tile: tx % tile + 512]

    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(blocks(), shape=(len(CHANNELS), n * tile, n * tile), dtype=bases[0].dtype, tile=(512, 512),
                 compression="zlib", metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)},
                                               "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})


def bench_image(a) -> None:
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        d = Path(d)
        t0 = time.perf_counter()
        write_mosaic(d / "slide.ome.tif", a.side)
        print(f"mosaic {a.side}² x 12 written in {time.perf_counter() - t0:.0f} s "
              f"({(d / 'slide.ome.tif').stat().st_size / 1e9:.1f} GB)", flush=True)
        panel = ROOT / "sample_data" / "hcc_sample_panel.toml"
        r = timed(TIBSPACE + ["run", str(d / "slide.ome.tif"), "--panel", str(panel), "--out", str(d / "out"),
                              "--quiet"])
        m = json.loads((d / "out" / "metrics.json").read_text())
        stages = json.loads((d / "out" / "run_log.json").read_text())["timings_s"]
        mpx = a.side * a.side / 1e6
        print(f"tibspace run {a.side}²: wall {r['wall_s']:.0f} s, CPU {r['cpu_s']:.0f} s, peak RSS "
              f"{r['peak_rss_gb']:.2f} GB, {m['n_cells']:,} cells, {mpx / stages.get('segmentation', r['wall_s']):.2f} "
              "Mpx/s segmentation")
        print("  stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))


def bench_tables(a) -> None:
    import pandas as pd

    from tibspace.synthetic import make_clustered_cells

    rows = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        d = Path(d)
        for n in a.sizes:
            make_clustered_cells(n, seed=0).to_parquet(d / f"cells_{n}.parquet", index=False)
            (d / "panel.toml").write_text("[parameters]\nseed = 0\n")
            r = timed(TIBSPACE + ["analyze", str(d / f"cells_{n}.parquet"), "--panel", str(d / "panel.toml"),
                                  "--out", str(d / f"out_{n}"), "--quiet"])
            rows.append({"cells": n, **r, "gb_per_million": r["peak_rss_gb"] / (n / 1e6)})
            print(f"{n:>10,} cells: wall {r['wall_s']:7.1f} s  CPU {r['cpu_s']:7.1f} s  peak RSS "
                  f"{r['peak_rss_gb']:5.2f} GB ({rows[-1]['gb_per_million']:.2f} GB per million)", flush=True)
    for p, q in zip(rows, rows[1:]):
        k = math.log(q["cells"] / p["cells"])
        print(f"growth {p['cells']:,} -> {q['cells']:,}: wall exponent {math.log(q['wall_s'] / p['wall_s']) / k:.2f}, "
              f"CPU exponent {math.log(q['cpu_s'] / p['cpu_s']) / k:.2f}")
    print(pd.DataFrame(rows).to_string(index=False))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    i = sub.add_parser("image")
    i.add_argument("--side", type=int, default=32768)
    t = sub.add_parser("tables")
    t.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 5_000_000])
    for p in (i, t):
        p.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"), help="scratch folder (needs space)")
    a = ap.parse_args()
    bench_image(a) if a.what == "image" else bench_tables(a)


if __name__ == "__main__":
    main()
