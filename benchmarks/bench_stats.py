"""Benchmark: tibspace point-pattern / neighbourhood statistics vs squidpy on the same data.

Clustered synthetic tables (``make_clustered_cells``, 8 phenotypes,
~3,000 cells/mm²) of 10k, 100k and 1M cells, written once to Parquet. Each
step runs in its own child process on the same table, so its peak memory is
measured cleanly: peak RSS (``ru_maxrss``) minus the RSS after the table was
loaded and the libraries warmed up (this includes numba-allocated arrays,
which tracemalloc would miss). Steps:

- neighbourhood enrichment: tibspace exact moments (radius 30 µm; graph-free)
  vs squidpy ``spatial_neighbors(radius=30)`` + ``nhood_enrichment(n_perms=1000)``
  (squidpy's graph is built before its timed step; our exact step includes
  finding the neighbours). Also tibspace's own Monte-Carlo (1000 perms) ≤ 100k;
- co-occurrence with the same distance steps (0, 10, …, 100 µm);
- Ripley L per phenotype: tibspace ``ripley_l`` (isotropic edge correction)
  vs squidpy ``ripley(mode="L", n_simulations=1)`` (no edge correction);
- tibspace cross-L for all 64 ordered pairs × 50 radii ≤ 100 µm with edge
  correction (no peer does this at 1M).

Run (heavy: 15–30 min on a busy 2-core machine; nice it)::

    nice -n 10 python benchmarks/bench_stats.py [--sizes 10000 100000 1000000] [--no-squidpy]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

RADII = np.linspace(2.0, 100.0, 50)
STEPS = np.linspace(0.0, 100.0, 11)


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _adata(cells):
    import anndata as ad
    import pandas as pd
    adata = ad.AnnData(obs=pd.DataFrame({"phenotype": pd.Categorical(cells.phenotype)},
                                        index=cells.cell_id.astype(str)))
    adata.obsm["spatial"] = cells[["x_um", "y_um"]].to_numpy()
    return adata


def child(step, table, n_perms):
    """Run one step in this (fresh) process; print a JSON line."""
    warnings.filterwarnings("ignore")
    import pandas as pd
    from tibspace import stats as nb
    from tibspace import stats as pp
    cells = pd.read_parquet(table)
    win = (cells.x_um.min(), cells.y_um.min(), cells.x_um.max(), cells.y_um.max())
    small = cells.iloc[:2000]
    sw = (small.x_um.min(), small.y_um.min(), small.x_um.max(), small.y_um.max())
    extra = {}
    if step.startswith("sq_"):
        import logging
        import squidpy as sq
        logging.getLogger("squidpy").setLevel(logging.ERROR)
        adata = _adata(cells)
        if step in ("sq_nhood", "sq_cooc"):
            sq.gr.spatial_neighbors(adata, coord_type="generic", radius=30.0, delaunay=False)
        # warm squidpy's numba kernels on a tiny table
        wa = _adata(small)
        sq.gr.spatial_neighbors(wa, coord_type="generic", radius=30.0, delaunay=False)
        sq.gr.nhood_enrichment(wa, cluster_key="phenotype", n_perms=2, seed=0, show_progress_bar=False)
        sq.gr.co_occurrence(wa, cluster_key="phenotype", interval=STEPS, show_progress_bar=False)
        fns = {
            "sq_graph": lambda: sq.gr.spatial_neighbors(adata, coord_type="generic", radius=30.0, delaunay=False),
            "sq_nhood": lambda: sq.gr.nhood_enrichment(adata, cluster_key="phenotype", n_perms=n_perms, seed=0,
                                                       show_progress_bar=False, copy=True),
            "sq_cooc": lambda: sq.gr.co_occurrence(adata, cluster_key="phenotype", interval=STEPS, copy=True,
                                                   show_progress_bar=False),
            "sq_ripley": lambda: sq.gr.ripley(adata, cluster_key="phenotype", mode="L", max_dist=100.0,
                                              n_steps=50, n_simulations=1, seed=0, copy=True),
        }
    else:
        # warm tibspace's numba kernels (cached on disk; this only loads them)
        nb.neighbourhood_enrichment(small, radius_um=30)
        g = nb.spatial_graph(small.x_um, small.y_um, radius_um=30.0)
        nb.neighbourhood_enrichment(small, graph=g, method="permutation", n_perm=4)
        nb.co_occurrence(small, STEPS)
        pp.cross_l_all_pairs(small, RADII[:5], sw)
        pp.cross_l_all_pairs(small, RADII[:5], sw, edge_correction="translation")

        def perm():
            gg = nb.spatial_graph(cells.x_um, cells.y_um, radius_um=30.0)
            return nb.neighbourhood_enrichment(cells, graph=gg, method="permutation", n_perm=n_perms)

        types = sorted(cells.phenotype.unique())
        fns = {
            "nhood_exact": lambda: nb.neighbourhood_enrichment(cells, radius_um=30.0),
            "graph": lambda: nb.spatial_graph(cells.x_um, cells.y_um, radius_um=30.0),
            "nhood_perm": perm,
            "cooc": lambda: nb.co_occurrence(cells, STEPS),
            "ripley": lambda: [pp.ripley_l(cells.x_um[cells.phenotype == t], cells.y_um[cells.phenotype == t],
                                           RADII, win) for t in types],
            "crossL_iso": lambda: pp.cross_l_all_pairs(cells, RADII, win, edge_correction="isotropic"),
            "crossL_trans": lambda: pp.cross_l_all_pairs(cells, RADII, win, edge_correction="translation"),
        }
    base = _rss_mb()
    t0 = time.perf_counter()
    out = fns[step]()
    sec = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if step == "sq_nhood":
        ne = nb.neighbourhood_enrichment(cells, radius_um=30.0)
        extra["counts_identical"] = bool(np.array_equal(np.asarray(out[1]), ne.counts))
        extra["max_abs_dz"] = float(np.nanmax(np.abs(np.asarray(out[0]) - ne.zscore)))
        extra["max_abs_z"] = float(np.nanmax(np.abs(ne.zscore)))
    if step == "sq_cooc":
        df = nb.co_occurrence(cells, STEPS)
        cats = list(adata.obs.phenotype.cat.categories)
        occ, _ = out
        ours = np.zeros_like(occ)
        for r in df.itertuples():
            ours[cats.index(r.type_b), cats.index(r.type_a), int(round(r.r_max_um / 10)) - 1] = r.value
        extra["max_abs_diff_vs_ours"] = float(np.nanmax(np.abs(np.nan_to_num(ours) - occ)))
    print(json.dumps({"seconds": sec, "peak_mb": max(peak - base, 0.0), **extra}))


def run_child(step, table, n_perms, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", step, "--table", table, "--n-perms", str(n_perms)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["?"])[-1]
        if "MemoryError" in p.stderr or p.returncode in (-9, 137):
            err = "out of memory (" + err + ")"
        return {"error": err}
    return json.loads(lines[-1])


LABELS = {
    "nhood_exact": "tibspace nhood exact (radius 30, incl. pairs)",
    "graph": "tibspace spatial_graph radius 30",
    "nhood_perm": "tibspace nhood Monte-Carlo (graph + perms)",
    "cooc": "tibspace co_occurrence (0..100 µm, 10 steps)",
    "ripley": "tibspace ripley_l, 8 phenotypes (isotropic)",
    "crossL_iso": "tibspace cross-L 64 pairs x 50 r (isotropic)",
    "crossL_trans": "tibspace cross-L 64 pairs x 50 r (translation)",
    "sq_graph": "squidpy spatial_neighbors radius 30",
    "sq_nhood": "squidpy nhood_enrichment (perms)",
    "sq_cooc": "squidpy co_occurrence (same steps)",
    "sq_ripley": "squidpy ripley L (1 simulation)",
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--no-squidpy", action="store_true")
    ap.add_argument("--n-perms", type=int, default=1000)
    ap.add_argument("--squidpy-nhood-max", type=int, default=1_000_000)
    ap.add_argument("--squidpy-cooc-max", type=int, default=100_000)
    ap.add_argument("--squidpy-ripley-max", type=int, default=10_000)
    ap.add_argument("--perm-max", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--child")
    ap.add_argument("--table")
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.table, args.n_perms)
        return
    import psutil
    from tibspace.synthetic import make_clustered_cells
    avail = psutil.virtual_memory().available
    print(f"cores: {psutil.cpu_count()}, available memory: {avail / 2**30:.1f} GB, "
          f"load avg: {', '.join(f'{v:.1f}' for v in psutil.getloadavg())}", flush=True)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            cells = make_clustered_cells(n, seed=0)
            table = os.path.join(tmp, f"cells_{n}.parquet")
            cells.to_parquet(table)
            w, h = cells.x_um.max() - cells.x_um.min(), cells.y_um.max() - cells.y_um.min()
            print(f"\n== {n:,} cells, window {w:.0f} x {h:.0f} µm, {cells.phenotype.nunique()} phenotypes ==",
                  flush=True)
            steps = ["nhood_exact", "graph", "cooc", "ripley", "crossL_iso", "crossL_trans"]
            if n <= args.perm_max:
                steps.insert(2, "nhood_perm")
            if not args.no_squidpy:
                steps += ["sq_graph"]
                steps += ["sq_nhood"] if n <= args.squidpy_nhood_max else []
                steps += ["sq_cooc"] if n <= args.squidpy_cooc_max else []
                nmax = int(cells.phenotype.value_counts().max())
                need = nmax * (nmax - 1) / 2 * (8 + 50)     # pdist float64 + 50 boolean masks per pair
                if n <= args.squidpy_ripley_max and need < 0.5 * avail:
                    steps += ["sq_ripley"]
                else:
                    print(f"  squidpy ripley L: skipped: would need {need / 2**30:.0f} GB "
                          f"(pdist of the largest phenotype, {nmax:,} cells, x 50 radii)", flush=True)
                if n > args.squidpy_cooc_max:
                    print(f"  squidpy co_occurrence: skipped: O(n²) pair loop, ~{140 * (n / 1e5) ** 2 / 3600:.0f} h "
                          "extrapolated from 140 s at 100k", flush=True)
            r = {}
            for step in steps:
                out = run_child(step, table, args.n_perms, args.timeout)
                if "error" in out:
                    print(f"  {LABELS[step]:<48s} FAILED: {out['error']}", flush=True)
                    continue
                r[step] = out
                more = {k: v for k, v in out.items() if k not in ("seconds", "peak_mb")}
                print(f"  {LABELS[step]:<48s} {out['seconds']:9.2f} s   peak +{out['peak_mb']:8.1f} MB"
                      + (f"   {more}" if more else ""), flush=True)
            for a, b, what in [("sq_nhood", "nhood_exact", "nhood enrichment (squidpy perms / tibspace exact)"),
                               ("sq_cooc", "cooc", "co-occurrence (squidpy / tibspace)"),
                               ("sq_ripley", "ripley", "ripley L (squidpy / tibspace)")]:
                if a in r and b in r:
                    print(f"  speed-up {what}: {r[a]['seconds'] / r[b]['seconds']:.0f}x; "
                          f"memory {r[a]['peak_mb']:.0f} vs {r[b]['peak_mb']:.0f} MB", flush=True)
            res[n] = r
    sizes = sorted(res)
    if len(sizes) >= 2:
        print("\nmemory growth of tibspace (peak RSS above the loaded table):")
        for key in ("nhood_exact", "cooc", "crossL_iso", "graph"):
            pts = [(n, res[n][key]["peak_mb"]) for n in sizes if key in res[n]]
            if len(pts) >= 2:
                ns = np.array([p[0] for p in pts], float)
                mb = np.array([p[1] for p in pts], float)
                slope = np.polyfit(ns, mb, 1)[0] * 2**20
                expo = (math.log(max(mb[-1], 1e-3)) - math.log(max(mb[-2], 1e-3))) / math.log(ns[-1] / ns[-2])
                print(f"  {key:<12s} " + ", ".join(f"{int(a):,}: {b:.0f} MB" for a, b in pts)
                      + f"  -> slope {slope:.0f} bytes/cell, log-log exponent (last two sizes) {expo:.2f}")


if __name__ == "__main__":
    main()
