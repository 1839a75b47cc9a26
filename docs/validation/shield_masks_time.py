"""Time of :func:`tibspace.analyses.shield_masks` on a 3000² px array (best of 3, wall and CPU s).

Usage (from the repository root)::

    PYTHONPATH=. python docs/validation/shield_masks_time.py [3ch | 12ch | all]

The 1000² px generator field (seed 100, 0.6 µm, planted 0.3, no speckles) is
tiled 3 × 3; ``3ch`` keeps CitH3, MPO and COL1 (no autofluorescence test: fewer
than 3 reference channels), ``12ch`` all twelve channels (the test on both
masks). Masks: NET = CitH3 requiring MPO, COL1; ``otsu`` gates; tile 2048.
"""

import sys
import time

import numpy as np

from tibspace.analyses import shield_masks
from tibspace.synthetic import make_tissue

PX = 0.6
SPECS = {"net": {"channels": ["CitH3"], "require": ["MPO"], "gate": "otsu", "min_object_um2": 5.0},
         "col1": {"channels": ["COL1"], "gate": "otsu", "min_object_um2": 5.0}}


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    t = make_tissue((1000, 1000), pixel_size_um=PX, seed=100, n_nests=3, nest_radius_um=(60.0, 100.0),
                    shield_coverage=0.3, immune_phenotype="inflamed")
    names = list(t.channel_names)
    for label, chans in (("3ch", ["CitH3", "MPO", "COL1"]), ("12ch", names)):
        if which not in ("all", label):
            continue
        img = np.ascontiguousarray(np.tile(t.image[[names.index(c) for c in chans]], (1, 3, 3)))
        ci = {c: k for k, c in enumerate(chans)}
        times, cpu = [], []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            masks = shield_masks(img, SPECS, ci, PX, tile_size_px=2048)[0]
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        areas = {k: round(float(v.mean()), 4) for k, v in masks.items()}
        print(f"{label} {img.shape}: best {min(times):.2f} s wall, {min(cpu):.2f} s CPU "
              f"{[round(x, 2) for x in times]} areas {areas}", flush=True)


if __name__ == "__main__":
    main()
