"""Whole slides: a large mosaic image through ``tibspace run`` and 1M-5M-cell tables through ``tibspace analyze``.

Usage::

    python benchmarks/bench_wholeslide.py image --sides 8192 16384 32768 [--stage segment|run|both]
    python benchmarks/bench_wholeslide.py image --sides 8192 16384 --stage labels [--roots . /work/main]
    python benchmarks/bench_wholeslide.py tables --sizes 1000000 3000000 5000000

``image``: for each side, a ``side`` x ``side`` x 12-channel tiled pyramidal
OME-TIFF mosaic of 4096² synthetic tiles (``tibspace.synthetic.make_tissue``,
two seeds in a checkerboard) is written to a temporary folder, tile-bounded (a
dask mosaic written one 512-row band of one channel at a time), then
``segment_image`` alone (``--stage segment``, labels written as OME-TIFF)
and/or the whole ``tibspace run`` runs on it under ``/usr/bin/time -v``;
printed: wall, CPU seconds, peak RSS, cells, Mpx/s and the stage timings
(segmentation qc / ``run_log.json``), the load average before and after, and
throughput and peak-RSS ratios against the first side.
``--stage labels``: bring your own masks. ``segment_image`` writes the cell labels
(a tiled pyramidal uint32 OME-TIFF), then the segmentation step of
``tibspace run IMAGE --labels cell_labels.ome.tif`` (``tibspace.pipeline._given_labels``:
read the mask, relabel, measure all 12 channels) runs on it under ``/usr/bin/time -v``,
once per ``--roots`` checkout of tibspace (e.g. this branch and main, for before / after).

``tables``: clustered synthetic cell tables of each size through
``tibspace analyze`` (every output written), each under ``/usr/bin/time -v``,
after one untimed 20k-cell run that puts numba's compiled kernels on the disk cache;
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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIBSPACE = [sys.executable, "-m", "tibspace"]


def timed(cmd: list[str], cwd: Path = ROOT, root: Path = ROOT) -> dict:
    """Run ``cmd`` under /usr/bin/time -v (in ``cwd``, importing tibspace from ``root``); wall,
    CPU seconds and peak RSS (GB)."""
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", p.stderr).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", p.stderr).group(1))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": wall, "cpu_s": user + system, "peak_rss_gb": rss_kb / 1024**2, "stdout": p.stdout}


def mosaic(side: int, tile: int = 4096):
    """A lazy ``(12, side, side)`` dask mosaic of two synthetic 4096² tiles (checkerboard)."""
    import dask.array as da
    import numpy as np

    from tibspace.synthetic import make_tissue

    if side % tile:
        sys.exit(f"--sides must be multiples of {tile}, got {side}")
    bases = [da.from_array(np.ascontiguousarray(
        make_tissue(shape=(tile, tile), pixel_size_um=0.5, seed=s, n_nests=8).image), chunks=(1, 512, 512))
        for s in (1, 2)]
    n = side // tile
    return da.block([[bases[(i + j) % 2] for j in range(n)] for i in range(n)])


def write_mosaic(path: Path, side: int) -> None:
    """The mosaic as a tiled pyramidal OME-TIFF, one 512-row band of one channel at a time."""
    from tibspace.io import write_ome_tiff
    from tibspace.synthetic import CHANNELS

    write_ome_tiff(path, mosaic(side), list(CHANNELS), 0.5)


def run_segment(a) -> None:
    """(Child process) segment_image on the slide with the default scheduler; prints its qc."""
    from tibspace.segment import segment_image

    out = Path(a.out)
    res = segment_image(a.image, "DAPI", "NaKATPase", labels_path=out / "cell_labels.ome.tif", work_dir=out)
    print(json.dumps({"n_cells": int(len(res.cells)), "n_tiles": res.n_tiles,
                      **{k: v for k, v in res.qc.items() if k.startswith("seconds_")}}))


def run_labels(a) -> None:
    """(Child process) the given-labels segmentation step of ``tibspace run --labels``; prints a summary."""
    import inspect

    from tibspace import pipeline
    from tibspace.io import open_image

    img = open_image(a.image)
    kw = {"work_dir": Path(a.out)} if "work_dir" in inspect.signature(pipeline._given_labels).parameters else {}
    t0 = time.perf_counter()
    seg = pipeline._given_labels(img, Path(a.image), a.labels, None, "auto", {"cell_expansion_um": 3.0}, **kw)
    print(json.dumps({"n_cells": int(len(seg.cells)), "n_tiles": int(seg.n_tiles),
                      "seconds": time.perf_counter() - t0, "labels": type(seg.labels).__name__,
                      "tibspace": str(Path(pipeline.__file__).parents[1])}))


def bench_labels(slide: Path, side: int, a, d: Path, row: dict) -> None:
    """Segment to write a cell mask, then time the given-labels step on it per ``--roots`` checkout."""
    mpx = side * side / 1e6
    (d / "seg").mkdir(exist_ok=True)
    r = timed([sys.executable, __file__, "_segment", str(slide), str(d / "seg")])
    mask = d / "seg" / "cell_labels.ome.tif"
    print(f"segment_image {side}² (mask writer): wall {r['wall_s']:.0f} s, peak RSS {r['peak_rss_gb']:.2f} GB, "
          f"mask {mask.stat().st_size / 1e6:.0f} MB", flush=True)
    for root in a.roots:
        load0 = _load()
        (d / "lab").mkdir(exist_ok=True)
        r = timed([sys.executable, __file__, "_labels", str(slide), str(mask), str(d / "lab")], root=Path(root))
        out = json.loads(r.pop("stdout").strip().splitlines()[-1])
        tag = Path(root).resolve().name
        row.update({f"labels_{tag}_{k}": v for k, v in r.items()}, cells=out["n_cells"])
        print(f"given labels {side}² [{out['tibspace']}]: wall {r['wall_s']:.0f} s, CPU {r['cpu_s']:.0f} s, "
              f"peak RSS {r['peak_rss_gb']:.2f} GB, {out['n_cells']:,} cells, {out['n_tiles']} tiles, labels "
              f"{out['labels']}, {mpx / r['wall_s']:.2f} Mpx/s wall; load {load0} -> {_load()}", flush=True)
        shutil.rmtree(d / "lab")
    shutil.rmtree(d / "seg")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def bench_one(side: int, a, d: Path) -> dict:
    slide = d / f"slide_{side}.ome.tif"
    t0 = time.perf_counter()
    write_mosaic(slide, side)
    print(f"mosaic {side}² x 12 written in {time.perf_counter() - t0:.0f} s ({slide.stat().st_size / 1e9:.1f} GB)",
          flush=True)
    mpx = side * side / 1e6
    row = {"side": side, "mpx": mpx}
    if a.stage == "labels":
        bench_labels(slide, side, a, d, row)
    if a.stage in ("segment", "both"):
        (d / "seg").mkdir(exist_ok=True)
        load0 = _load()
        r = timed([sys.executable, __file__, "_segment", str(slide), str(d / "seg")])
        qc = json.loads(r.pop("stdout").strip().splitlines()[-1])
        row.update({f"seg_{k}": v for k, v in r.items()}, cells=qc["n_cells"], seg_load=f"{load0} -> {_load()}")
        print(f"segment_image {side}²: wall {r['wall_s']:.0f} s, CPU {r['cpu_s']:.0f} s, peak RSS "
              f"{r['peak_rss_gb']:.2f} GB, {qc['n_cells']:,} cells in {qc['n_tiles']} tiles, "
              f"{mpx / r['wall_s']:.2f} Mpx/s wall, {mpx / r['cpu_s']:.2f} Mpx per CPU-s; load {row['seg_load']}",
              flush=True)
        print("  stages (s): " + ", ".join(f"{k[8:]} {v:.1f}" for k, v in qc.items() if k.startswith("seconds_")))
        shutil.rmtree(d / "seg")
    if a.stage in ("run", "both"):
        panel = ROOT / "sample_data" / "hcc_sample_panel.toml"
        load0 = _load()
        r = timed(TIBSPACE + ["run", str(slide), "--panel", str(panel), "--out", str(d / f"out_{side}"), "--quiet"])
        r.pop("stdout")
        m = json.loads((d / f"out_{side}" / "metrics.json").read_text())
        stages = json.loads((d / f"out_{side}" / "run_log.json").read_text())["timings_s"]
        row.update({f"run_{k}": v for k, v in r.items()}, cells=m["n_cells"], run_load=f"{load0} -> {_load()}")
        print(f"tibspace run {side}²: wall {r['wall_s']:.0f} s, CPU {r['cpu_s']:.0f} s, peak RSS "
              f"{r['peak_rss_gb']:.2f} GB, {m['n_cells']:,} cells, "
              f"{mpx / stages.get('segmentation', r['wall_s']):.2f} Mpx/s segmentation; load {row['run_load']}",
              flush=True)
        print("  stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    slide.unlink()
    return row


def bench_image(a) -> None:
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        for side in a.sides:
            rows.append(bench_one(side, a, Path(d)))
    base = rows[0]
    for r in rows[1:]:
        for st in ("seg", "run"):
            if f"{st}_wall_s" not in r:
                continue
            thr = (r["mpx"] / r[f"{st}_wall_s"]) / (base["mpx"] / base[f"{st}_wall_s"])
            thr_cpu = (r["mpx"] / r[f"{st}_cpu_s"]) / (base["mpx"] / base[f"{st}_cpu_s"])
            rss = r[f"{st}_peak_rss_gb"] / base[f"{st}_peak_rss_gb"]
            print(f"{st} {r['side']}² vs {base['side']}²: throughput x{thr:.2f} (wall), x{thr_cpu:.2f} (CPU), "
                  f"peak RSS x{rss:.2f} ({r[f'{st}_peak_rss_gb']:.2f} vs {base[f'{st}_peak_rss_gb']:.2f} GB)")
    print(pd.DataFrame(rows).to_string(index=False))


def bench_tables(a) -> None:
    import pandas as pd

    from tibspace.synthetic import make_clustered_cells

    rows = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        d = Path(d)
        # untimed 20k-cell run first: numba compiles its kernels to the disk cache once, not in the first size
        make_clustered_cells(20_000, seed=1).to_parquet(d / "warm.parquet", index=False)
        (d / "panel.toml").write_text("[parameters]\nseed = 0\n")
        timed(TIBSPACE + ["analyze", str(d / "warm.parquet"), "--panel", str(d / "panel.toml"),
                          "--out", str(d / "out_warm"), "--quiet"])
        for n in a.sizes:
            make_clustered_cells(n, seed=0).to_parquet(d / f"cells_{n}.parquet", index=False)
            (d / "panel.toml").write_text("[parameters]\nseed = 0\n")
            r = timed(TIBSPACE + ["analyze", str(d / f"cells_{n}.parquet"), "--panel", str(d / "panel.toml"),
                                  "--out", str(d / f"out_{n}"), "--quiet"])
            r.pop("stdout")
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
    i.add_argument("--sides", type=int, nargs="+", default=[8192, 16384, 32768],
                   help="mosaic sides (multiples of 4096); ratios are against the first")
    i.add_argument("--stage", choices=["segment", "run", "both", "labels"], default="segment",
                   help="segment_image alone, the whole tibspace run, or both (each under /usr/bin/time -v); "
                        "labels: given-labels measurement on a mask written by segment_image")
    i.add_argument("--roots", nargs="+", default=[str(ROOT)],
                   help="--stage labels: tibspace checkouts to time (e.g. this one and main)")
    t = sub.add_parser("tables")
    t.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 5_000_000])
    for p in (i, t):
        p.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"), help="scratch folder (needs space)")
    if len(sys.argv) == 4 and sys.argv[1] == "_segment":
        return run_segment(argparse.Namespace(image=sys.argv[2], out=sys.argv[3]))
    if len(sys.argv) == 5 and sys.argv[1] == "_labels":
        return run_labels(argparse.Namespace(image=sys.argv[2], labels=sys.argv[3], out=sys.argv[4]))
    a = ap.parse_args()
    bench_image(a) if a.what == "image" else bench_tables(a)


if __name__ == "__main__":
    main()
