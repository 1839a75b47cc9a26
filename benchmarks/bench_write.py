"""Writing every output of a run vs the library floor for the same data.

Usage: python benchmarks/bench_write.py [--cells 1000000] [--repeats 3]

Builds a clustered synthetic cell table, analyses it once (envelopes off, 99
shifts: the analysis is not what is timed), then times, alternating, median of
``--repeats``:
(a) ``tibspace.write_outputs`` (every file: tables, GeoJSON, AnnData,
    metrics.json, figures, report), with the time of each writing step;
(b) the floor: pyarrow Parquet + CSV of the cell table, anndata h5ad of the
    same cells, and ``json.dumps`` of metrics.json's numbers.
It prints both, their ratio (target ≤ 2) and the size of metrics.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def floor(result, d: Path) -> float:
    import anndata as ad
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from tibspace.jsonable import to_jsonable

    t0 = time.perf_counter()
    cells = result.cells
    plain = cells[[c for c in cells.columns if cells[c].dtype != object or c == "phenotype"]]
    table = pa.Table.from_pandas(plain, preserve_index=False)
    pq.write_table(table, d / "floor.parquet")
    pacsv.write_csv(table, d / "floor.csv")
    chans = [c for c in result.channel_columns if c in cells]
    a = ad.AnnData(X=cells[chans].to_numpy(np.float32) if chans else np.zeros((len(cells), 0), np.float32))
    a.obsm["spatial"] = cells[["x_um", "y_um"]].to_numpy()
    a.write_h5ad(d / "floor.h5ad")
    (d / "floor.json").write_text(json.dumps(to_jsonable(result.metrics), sort_keys=True))
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import tibspace
    from tibspace.cells import Panel
    from tibspace.synthetic import make_clustered_cells

    cells = make_clustered_cells(a.cells, seed=0)
    panel = Panel.from_dict({"parameters": {"n_envelope_sim": 0, "n_shifts": 99}})
    t0 = time.perf_counter()
    result = tibspace.analyze_table(cells, panel, seed=0)
    print(f"{a.cells:,} cells analysed in {time.perf_counter() - t0:.1f} s (not timed below)")
    ours, base, steps = [], [], {}
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            marks = []
            t0 = time.perf_counter()
            tibspace.write_outputs(result, Path(d) / "out",
                                   progress=lambda s, k, n: marks.append((k, time.perf_counter())))
            ours.append(time.perf_counter() - t0)
            last = t0
            for k, t in marks:
                steps.setdefault(k, []).append(t - last)
                last = t
            size = (Path(d) / "out" / "metrics.json").stat().st_size
        with tempfile.TemporaryDirectory() as d:
            base.append(floor(result, Path(d)))
    mo, mb = statistics.median(ours), statistics.median(base)
    print(f"write_outputs: median {mo:.1f} s ({', '.join(f'{x:.1f}' for x in ours)})")
    print("  per step (median s, step k ends at report k/8): "
          + ", ".join(f"{k}: {statistics.median(v):.2f}" for k, v in sorted(steps.items()) if k))
    print(f"library floor: median {mb:.1f} s ({', '.join(f'{x:.1f}' for x in base)})")
    print(f"ratio: x{mo / mb:.2f}; metrics.json {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
