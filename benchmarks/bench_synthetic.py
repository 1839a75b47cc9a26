"""Time tibspace.synthetic.make_tissue at 2048² and 8192² (12 channels).

Prints wall time, CPU time and peak resident memory per size, plus a
reference in the same process: a plain numpy/scipy pass that only does what
any renderer must (one Gaussian blur + Poisson noise per channel, uint16
output) on the same image size (by default only at ≤ 2048², it is slow), so
the number is comparable across machines.

Run:  python benchmarks/bench_synthetic.py [--sizes 2048 8192] [--nests N]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy import ndimage as ndi

from tibspace.synthetic import make_tissue


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def reference_pass(shape, channels=12, seed=0) -> float:
    """numpy/scipy baseline: blur + Poisson noise + uint16, channel by channel."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    out = np.empty((channels,) + tuple(shape), np.uint16)
    base = rng.uniform(5, 50, shape).astype(np.float32)
    for c in range(channels):
        lam = ndi.gaussian_filter(base, 0.8)
        out[c] = np.minimum(rng.poisson(lam), 65535)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--nests", type=int, default=None,
                    help="nests per image (default: 5 at 2048², 40 at 8192²)")
    ap.add_argument("--reference-max", type=int, default=2048,
                    help="run the numpy/scipy reference only up to this size (it is slow)")
    a = ap.parse_args()
    make_tissue((512, 512), n_nests=1, nest_radius_um=(40, 50))   # numba JIT warm-up
    for n in a.sizes:
        nests = a.nests or (5 if n <= 2048 else 40)
        t0, c0 = time.perf_counter(), time.process_time()
        t = make_tissue((n, n), 0.5, seed=1, n_nests=nests, nest_radius_um=(60, 140))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"make_tissue {n}x{n}x12 px, {nests} nests, {len(t.truth):,} cells: "
              f"{wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {peak_rss_gb():.2f} GB", flush=True)
        del t
        if n <= a.reference_max:
            ref = reference_pass((n, n))
            print(f"  reference numpy/scipy blur+Poisson only, same size: {ref:.1f} s wall",
                  flush=True)


if __name__ == "__main__":
    main()
