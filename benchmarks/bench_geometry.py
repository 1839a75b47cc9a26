"""Benchmark of tibspace.geometry / profiles on clustered synthetic tables.

Times, for 10k / 100k / 1M cells (``make_clustered_cells``, 8 phenotypes,
~3,000 cells/mm²): tumour region, tissue region, signed distances +
compartments + nest ids (``annotate_cells``), perimeter segments,
``assign_segments``, per-segment band areas and the infiltration profile.
Wall and CPU (process) seconds are both printed: on a shared machine the
CPU time is the fair figure. Each size runs in a fresh subprocess so its peak RSS is its own; the memory
slope (MB per 100k cells) is fitted between the two largest sizes.

Peers measured in the same process, on the same data:
- signed distance: ``shapely.distance(points, boundary)`` + ``contains_xy``
  (on a subsample of 20k points, extrapolated linearly), also the max error;
- assign_segments: ``shapely.STRtree.query_nearest`` (all points);
- tumour region: plain ``shapely.union_all`` of the 15 µm discs followed by
  buffer(+20).buffer(-20) (the textbook recipe; only up to 100k cells).

Usage::

    nice -n 10 python benchmarks/bench_geometry.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(n: int, peers: bool) -> dict:
    import numpy as np
    import shapely

    from tibspace import tissue as geo
    from tibspace.stats import infiltration_profile
    from tibspace.synthetic import make_clustered_cells

    out = {"n_cells": n}
    t0 = time.perf_counter()
    cells = make_clustered_cells(n, seed=0)
    out["make_cells_s"] = time.perf_counter() - t0
    tum = cells[cells["phenotype"] == "tumour"]
    out["n_tumour"] = len(tum)
    base_mb = _peak_mb()

    def timed(name, f):
        t, c = time.perf_counter(), time.process_time()
        r = f()
        out[name + "_s"] = time.perf_counter() - t
        out[name + "_cpu"] = time.process_time() - c
        return r

    reg = timed("tumour_region", lambda: geo.tumour_region_from_cells(tum.x_um, tum.y_um))
    out["n_nests"] = reg.n_nests
    tissue = timed("tissue_region", lambda: geo.tissue_region_from_cells(
        cells.x_um, cells.y_um, grid_um=5.0 if n > 50_000 else None))
    ann = timed("annotate_cells", lambda: geo.annotate_cells(cells, reg))
    seg = timed("perimeter_segments", lambda: geo.perimeter_segments(reg, 50.0))
    out["n_segments"] = len(seg)
    sid = timed("assign_segments", lambda: geo.assign_segments(cells.x_um, cells.y_um, seg))
    timed("segment_band_areas", lambda: geo.segment_band_areas_um2(seg, reg, tissue, 0.0, 50.0))
    # a second band by the same segments (as the barrier analysis does): memoised partition
    timed("segment_band_areas_inner", lambda: geo.segment_band_areas_um2(seg, reg, tissue, -50.0, 0.0))
    timed("profile", lambda: infiltration_profile(ann, reg, tissue))
    steps = ("tumour_region", "tissue_region", "annotate_cells", "perimeter_segments",
             "assign_segments", "segment_band_areas", "segment_band_areas_inner", "profile")
    out["geometry_total_s"] = sum(out[k + "_s"] for k in steps)
    out["geometry_total_cpu"] = sum(out[k + "_cpu"] for k in steps)
    out["peak_rss_mb"] = _peak_mb()
    out["peak_rss_above_table_mb"] = out["peak_rss_mb"] - base_mb

    if peers:
        x = ann.x_um.to_numpy(); y = ann.y_um.to_numpy()
        m = min(n, 20_000)
        sub = np.random.default_rng(0).choice(n, m, replace=False)
        bnd = reg.union.boundary
        t = time.process_time()
        d = shapely.distance(shapely.points(x[sub], y[sub]), bnd)
        shapely.prepare(reg.union)
        ins = shapely.contains_xy(reg.union, x[sub], y[sub])
        ref = np.where(ins, -d, d)
        out["peer_shapely_signed_distance_extrapolated_cpu"] = (time.process_time() - t) * n / m
        out["signed_distance_max_abs_err_um"] = float(
            np.max(np.abs(ref - ann["signed_dist_um"].to_numpy()[sub])))
        geoms = seg["geometry"].to_numpy()
        t = time.process_time()
        _, ref_sid = shapely.STRtree(geoms).query_nearest(shapely.points(x, y), all_matches=False)
        out["peer_strtree_assign_segments_cpu"] = time.process_time() - t
        out["assign_segments_same_id_frac"] = float(np.mean(ref_sid == sid))
        if n <= 100_000:
            t = time.process_time()
            u = shapely.union_all(shapely.buffer(shapely.points(tum.x_um, tum.y_um), 15.0,
                                                 quad_segs=4))
            shapely.buffer(shapely.buffer(u, 20.0, quad_segs=4), -20.0, quad_segs=4)
            out["peer_union_then_closing_cpu"] = time.process_time() - t
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-peers", action="store_true")
    a = ap.parse_args(argv)
    if a.child is not None:
        print(json.dumps(run_one(a.child, not a.no_peers)))
        return
    rows = []
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--child", str(n)] + (["--no-peers"] if a.no_peers else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"\n== {n:,} cells ({r['n_tumour']:,} tumour, {r['n_nests']} nests, "
              f"{r['n_segments']:,} segments) ==")
        print(f"  {'step':<45s} {'wall s':>8s} {'CPU s':>8s}")
        for k, v in r.items():
            if k.endswith("_s"):
                print(f"  {k[:-2]:<45s} {v:8.2f} {r.get(k[:-2] + '_cpu', float('nan')):8.2f}")
            elif k.endswith("_cpu") and k[:-4] + "_s" not in r:
                print(f"  {k[:-4]:<45s} {'':8s} {v:8.2f}")
            elif k.endswith("_cpu"):
                continue
            elif k not in ("n_cells", "n_tumour", "n_nests", "n_segments"):
                print(f"  {k:<45s} {v:10.4g}")
    if len(rows) >= 2:
        a_, b_ = rows[-2], rows[-1]
        slope = (b_["peak_rss_mb"] - a_["peak_rss_mb"]) / ((b_["n_cells"] - a_["n_cells"]) / 1e5)
        print(f"\nmemory slope (peak RSS, {a_['n_cells']:,} -> {b_['n_cells']:,}): "
              f"{slope:.1f} MB per 100k cells")


if __name__ == "__main__":
    main()
