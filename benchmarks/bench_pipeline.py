"""Whole analysis pipeline on large cell tables vs the geometry/statistics core.

For each size (default 10k, 100k, 1M cells; clustered synthetic tissue with
8 phenotypes) this script times, in one process and on the same table:

(a) the geometry/statistics "full set" of the scaling target: tumour region,
    signed distances + compartments, infiltration profile, cross-L for all
    64 type pairs at 50 radii up to 100 µm with isotropic edge correction,
    and exact neighbourhood-enrichment z-scores;
(b) ``tibspace.analyze_table`` — everything ``tibspace analyze`` computes
    (the above plus perimeter segments, barrier analysis with 999 circular
    shifts and colocalisation envelopes, exclusion analysis with zones,
    nearest distances to every phenotype), without writing files;
(c) writing all output files of (b).

It prints seconds, the ratio (b)/(a) (target ≤ 2 at 1M cells) and peak RSS.

Usage: python benchmarks/bench_pipeline.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def full_set(cells, params):
    from tibspace import tissue as geo
    from tibspace.stats import neighbourhood_enrichment
    from tibspace.stats import cross_l_all_pairs
    from tibspace.stats import infiltration_profile

    tum = cells["phenotype"].to_numpy() == "tumour"
    x, y = cells["x_um"].to_numpy(), cells["y_um"].to_numpy()
    region = geo.tumour_region_from_cells(x[tum], y[tum])
    tissue = geo.tissue_region_from_cells(x, y)
    annotated = geo.annotate_cells(cells, region, margin_um=50.0)
    infiltration_profile(annotated, region, tissue, edges_um=np.arange(-200, 201, 20.0))
    cross_l_all_pairs(annotated, np.linspace(2, 100, 50), tissue, edge_correction="isotropic")
    neighbourhood_enrichment(annotated, method="exact", radius_um=30.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import tibspace
    from tibspace.cells import Panel
    from tibspace.synthetic import make_clustered_cells

    panel = Panel.from_dict({})
    print(f"{'cells':>9} {'full set s':>10} {'pipeline s':>10} {'ratio':>6} {'write s':>8} {'peak RSS GB':>11}")
    for n in args.sizes:
        cells = make_clustered_cells(n, seed=args.seed)
        t0 = time.perf_counter()
        full_set(cells, panel.parameters)
        t_core = time.perf_counter() - t0
        # (b) starts cold: no buffers or partitions memoised by (a) (fair comparison)
        from tibspace.tissue import clear_geometry_cache

        clear_geometry_cache()
        t0 = time.perf_counter()
        result = tibspace.analyze_table(cells, panel, seed=args.seed)
        t_pipe = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            tibspace.write_outputs(result, d)
            t_write = time.perf_counter() - t0
        print(f"{n:>9,} {t_core:>10.1f} {t_pipe:>10.1f} {t_pipe / t_core:>6.2f} {t_write:>8.1f} {peak_rss_gb():>11.2f}",
              flush=True)
        print("   pipeline stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings_s.items()))


if __name__ == "__main__":
    main()
