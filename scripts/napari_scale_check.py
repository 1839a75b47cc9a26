"""How the tibspace napari plugin scales: adding result layers and redrawing.

Run under a display (headless: Xvfb), e.g.::

    QT_API=pyqt6 QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" \\
        .venv/bin/python scripts/napari_scale_check.py --cells 100000 1000000

For each size it builds a synthetic result (cell table from
:func:`tibspace.synthetic_tables.make_clustered_cells`, a labels image with a
small disc per cell, the planted nests, 50 µm perimeter segments with the
planted barrier flags) and measures, in one napari viewer:

- ``layers_s``: :func:`tibspace_napari._layers.result_layers` (pure function);
- ``add_s``: adding those layers to the viewer and drawing the first frame;
- ``frame_ms``: median time of a pan/zoom step (camera change → slicing →
  rendered frame), over 12 steps at 3 zoom levels, and ``frame_cpu_ms``, the
  CPU time of that step (all threads; robust to other load on the machine);
- the same for a *plain* Points layer holding every cell (nothing else), and
  for the *naive* alternative a peer plugin uses: one Points layer holding
  every cell (napari-spatialdata style) and one Shapes path per perimeter
  segment.

Numbers depend on the GPU (here: Mesa llvmpipe software rendering, so a real
GPU is much faster for both). Printed as a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import pandas as pd
import shapely
from shapely.ops import substring


def _labels_from_cells(cells: pd.DataFrame, px: float, radius_px: int = 3) -> np.ndarray:
    """Disc of ``radius_px`` around each cell centre, value = cell_id (later cells win)."""
    side = float(cells.attrs["side_um"])
    n = int(np.ceil(side / px)) + 1
    lab = np.zeros((n, n), np.int32)
    r0 = np.round(cells["y_um"].to_numpy() / px).astype(np.int64)
    c0 = np.round(cells["x_um"].to_numpy() / px).astype(np.int64)
    ids = cells["cell_id"].to_numpy(np.int32)
    dy, dx = np.mgrid[-radius_px:radius_px + 1, -radius_px:radius_px + 1]
    keep = dy ** 2 + dx ** 2 <= radius_px ** 2
    for oy, ox in zip(dy[keep], dx[keep]):
        lab[np.clip(r0 + oy, 0, n - 1), np.clip(c0 + ox, 0, n - 1)] = ids
    lab[np.clip(r0, 0, n - 1), np.clip(c0, 0, n - 1)] = ids  # centres always own
    return lab


def _segments(polys, barrier, segment_um: float = 50.0) -> pd.DataFrame:
    rows = []
    for i, (p, b) in enumerate(zip(polys, barrier), start=1):
        ring = shapely.LineString(p.exterior.coords)
        k = max(3, int(round(ring.length / segment_um)))
        step = ring.length / k
        rows += [{"nest_id": i, "covered": bool(b) if j % 5 else not b, "assessable": True,
                  "length_um": step, "geometry": substring(ring, j * step, (j + 1) * step)}
                 for j in range(k)]
    return pd.DataFrame(rows)


def make_result(n_cells: int, px: float, seed: int = 0):
    from tibspace.pipeline import PipelineResult
    from tibspace.synthetic import make_clustered_cells, nest_polygons

    cells, nests = make_clustered_cells(n_cells, seed=seed, return_nests=True)
    labels = _labels_from_cells(cells, px)
    polys = nest_polygons(nests, n_vertices=360)
    segs = _segments(polys, nests["barrier"].to_numpy(bool))

    class Region:
        pass

    region = Region()
    region.nests = polys
    cells["area_um2"] = np.pi * (3 * px) ** 2
    return PipelineResult(cells=cells, pixel_size_um=px, image_shape=labels.shape, labels=labels,
                          region=region, segments=segs, exclusion_zones=[],
                          per_nest=pd.DataFrame({"nest_id": np.arange(1, len(polys) + 1)}))


def _settle(app, n: int = 3) -> None:
    for _ in range(n):
        app.processEvents()


def _frame(viewer, app) -> None:
    _settle(app)
    viewer.window._qt_viewer.canvas._scene_canvas.render()


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def measure_redraw(viewer, app, extent_um: float) -> tuple[float, float]:
    """Median ms of a camera step (pan at 3 zoom levels) until a frame is rendered: wall clock and CPU.

    The CPU time (this process, all threads, software GL included) is the
    work a frame costs; unlike the wall clock it does not grow when other
    processes share the cores.
    """
    h, w = viewer.window._qt_viewer.canvas.size
    times, cpu = [], []
    rng = np.random.default_rng(1)
    for zoom_frac in (1.0, 0.1, 0.01):  # whole slide, 10 %, 1 % of the side
        view_um = extent_um * zoom_frac
        _camera(viewer).zoom = min(h, w) / view_um
        for _ in range(4):
            cy, cx = rng.uniform(view_um / 2, extent_um - view_um / 2, 2)
            t0, c0 = time.perf_counter(), time.process_time()
            _camera(viewer).center = (cy, cx)
            _frame(viewer, app)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return 1000.0 * float(np.median(times)), 1000.0 * float(np.median(cpu))


def run_one(n_cells: int, px: float, app, naive: bool) -> list[dict]:
    import napari
    from napari.layers import Layer

    from tibspace_napari._layers import create_layers, result_layers

    t0 = time.perf_counter()
    result = make_result(n_cells, px)
    t_build = time.perf_counter() - t0
    extent = float(result.cells.attrs["side_um"])
    rows = []

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    _settle(app, 10)
    t0 = time.perf_counter()
    tuples = result_layers(result)
    t_layers = time.perf_counter() - t0
    t0 = time.perf_counter()
    for layer in create_layers(tuples):
        viewer.add_layer(layer)
    viewer.reset_view()
    _frame(viewer, app)
    t_add = time.perf_counter() - t0
    kinds = ", ".join(f"{kw['name']}={t}" for _, kw, t in tuples if kw["name"] in
                      ("cells by phenotype", "barrier covered", "barrier gaps", "tumour nests"))
    per_layer = [len(d) for d, kw, t in tuples if t == "shapes"]
    n_shapes = f"{sum(per_layer)} (max {max(per_layer, default=0)}/layer)"
    rows.append({"n_cells": n_cells, "approach": "tibspace", "layers_s": t_layers,
                 "add_s": t_add, **_frame_ms(viewer, app, extent),
                 "n_shapes": n_shapes, "detail": kinds, "build_s": t_build})
    if PER_LAYER:
        costs = per_layer_cost(viewer, app, extent)
        print(f"{n_cells:,} cells, CPU ms/frame each layer adds: "
              + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()), flush=True)
    viewer.close()
    del viewer
    gc.collect()

    if naive:
        rows.append(_plain_points(result, app, extent, n_cells, t_build))
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1400, 900)
        _settle(app, 10)
        t0 = time.perf_counter()
        pts = result.cells[["y_um", "x_um"]].to_numpy()
        segs = [np.asarray(g.coords)[:, ::-1] for g in result.segments["geometry"]]
        t_layers = time.perf_counter() - t0
        t0 = time.perf_counter()
        viewer.add_layer(Layer.create(pts, {"name": "cells", "size": 6.0,
                                            "features": result.cells[["cell_id", "phenotype"]]},
                                      "points"))
        viewer.add_layer(Layer.create(segs, {"name": "segments", "shape_type": "path",
                                             "edge_width": 6.0}, "shapes"))
        viewer.reset_view()
        _frame(viewer, app)
        t_add = time.perf_counter() - t0
        rows.append({"n_cells": n_cells, "approach": "naive points + 1 shape/segment",
                     "layers_s": t_layers, "add_s": t_add,
                     **_frame_ms(viewer, app, extent),
                     "n_shapes": f"{len(segs)} (1 layer)",
                     "detail": "cells=points, segments=shapes", "build_s": t_build})
        viewer.close()
        del viewer
        gc.collect()
    return rows


#: How often each viewer's redraw is measured (``--repeat``); medians are reported.
REPEAT = 1
#: Also measure what each result layer adds to a frame (``--per-layer``).
PER_LAYER = False


def _frame_ms(viewer, app, extent: float) -> dict:
    runs = [measure_redraw(viewer, app, extent) for _ in range(REPEAT)]
    return {"frame_ms": float(np.median([w for w, _ in runs])),
            "frame_cpu_ms": float(np.median([c for _, c in runs]))}


def per_layer_cost(viewer, app, extent: float) -> dict:
    """CPU ms per frame each visible layer adds: all visible minus that one hidden (medians of REPEAT)."""
    base = _frame_ms(viewer, app, extent)["frame_cpu_ms"]
    out = {}
    for layer in [ly for ly in viewer.layers if ly.visible]:
        layer.visible = False
        out[layer.name] = base - _frame_ms(viewer, app, extent)["frame_cpu_ms"]
        layer.visible = True
    return out


def _plain_points(result, app, extent: float, n_cells: int, t_build: float) -> dict:
    """The baseline: one plain Points layer holding every cell, nothing else."""
    import napari
    from napari.layers import Layer

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    _settle(app, 10)
    t0 = time.perf_counter()
    viewer.add_layer(Layer.create(result.cells[["y_um", "x_um"]].to_numpy(), {"name": "cells", "size": 6.0},
                                  "points"))
    viewer.reset_view()
    _frame(viewer, app)
    row = {"n_cells": n_cells, "approach": "plain points", "layers_s": 0.0, "add_s": time.perf_counter() - t0,
           **_frame_ms(viewer, app, extent), "n_shapes": "0", "detail": "cells=points",
           "build_s": t_build}
    viewer.close()
    del viewer
    gc.collect()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--pixel-size-um", type=float, default=2.0,
                    help="labels pixel size (µm); 2 µm keeps a 1M-cell slide at ~330 MB")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive comparison")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each viewer's redraw this many times and report medians (shared machine: >= 5)")
    ap.add_argument("--per-layer", action="store_true", help="also print the CPU ms/frame each result layer adds")
    a = ap.parse_args(argv)
    global REPEAT, PER_LAYER
    REPEAT, PER_LAYER = max(1, a.repeat), a.per_layer

    from qtpy.QtWidgets import QApplication

    import napari  # noqa: F401  (creates the Qt application on first viewer)

    app = QApplication.instance() or QApplication([])
    from tibspace_napari._widget import warm_up_napari

    t0 = time.perf_counter()
    warm_up_napari()
    print(f"napari warm-up (numba JIT of Shapes triangulation + int labels colour mapping, "
          f"once per process; "
          f"the widget does it in its worker while the analysis runs): "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for n in a.cells:
        rows += run_one(n, a.pixel_size_um, app, naive=not a.no_naive)
        print(f"... {n:,} cells done", flush=True)
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(df[["n_cells", "approach", "build_s", "layers_s", "add_s", "frame_ms",
                  "frame_cpu_ms", "n_shapes", "detail"]].round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
