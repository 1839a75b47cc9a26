"""A PipelineResult built from tibspace's synthetic ground truth (no pipeline run).

Cells and nests come from :func:`tibspace.synthetic_tables.make_clustered_cells`
(planted nests, barrier flags). Labels are seeds at the cells expanded by
``skimage.segmentation.expand_labels``; cell positions are then re-measured
as label centroids × pixel size (the cell table's convention). Segments cut
each planted nest outline into 50 µm pieces whose ``covered`` flag is the
planted barrier flag; exclusion zones are the 50 µm inner rim of barrier
nests (where CD8 T cells were planted depleted). Every number is real.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi
from shapely.ops import substring
from skimage.segmentation import expand_labels

from tibspace.pipeline import PipelineResult
from tibspace.synthetic import make_clustered_cells, nest_polygons


class Region:
    """Minimal stand-in for geometry.TumourRegion: ``nests`` (list of polygons)."""

    def __init__(self, nests):
        self.nests = list(nests)
        self.union = shapely.union_all(self.nests)
        self.n_nests = len(self.nests)


def segments_of(nests: list, covered: np.ndarray, segment_um: float = 50.0) -> pd.DataFrame:
    rows = []
    for i, (p, cov) in enumerate(zip(nests, covered), start=1):
        ring = shapely.LineString(p.exterior.coords)
        n = len(cov) if np.ndim(cov) else max(3, int(round(ring.length / segment_um)))
        step = ring.length / n
        for k in range(n):
            rows.append({"nest_id": i, "segment_id": len(rows) + 1,
                         "covered": bool(cov[k] if np.ndim(cov) else cov),
                         "geometry": substring(ring, k * step, (k + 1) * step)})
    return pd.DataFrame(rows)


def make_result(n_cells: int = 3000, pixel_size_um: float = 0.5, seed: int = 3) -> PipelineResult:
    cells, nests = make_clustered_cells(n_cells, seed=seed, return_nests=True)
    side = cells.attrs["side_um"]
    ny = nx = int(np.ceil(side / pixel_size_um)) + 1
    r = np.clip(np.round(cells["y_um"].to_numpy() / pixel_size_um).astype(int), 0, ny - 1)
    c = np.clip(np.round(cells["x_um"].to_numpy() / pixel_size_um).astype(int), 0, nx - 1)
    # One seed per pixel: cells sharing a pixel keep the first.
    _, first = np.unique(r * nx + c, return_index=True)
    keep = np.sort(first)
    cells = cells.iloc[keep].reset_index(drop=True)
    cells["cell_id"] = np.arange(1, len(cells) + 1)
    seeds = np.zeros((ny, nx), np.int32)
    seeds[r[keep], c[keep]] = cells["cell_id"].to_numpy()
    labels = expand_labels(seeds, distance=int(round(4.0 / pixel_size_um)))
    ids = cells["cell_id"].to_numpy()
    cy, cx = (np.asarray(v) for v in zip(*ndi.center_of_mass(labels > 0, labels, ids)))
    area = ndi.sum(np.ones_like(labels), labels, ids) * pixel_size_um ** 2
    cells["x_um"] = cx * pixel_size_um
    cells["y_um"] = cy * pixel_size_um
    cells["area_um2"] = area
    rng = np.random.default_rng(seed)
    cells["CD8"] = np.where(cells["phenotype"] == "CD8_T", 60.0, 5.0) + rng.gamma(2.0, 3.0, len(cells))

    polys = nest_polygons(nests, n_vertices=180)
    region = Region(polys)
    inside = shapely.contains_xy(region.union, cells["x_um"].to_numpy(), cells["y_um"].to_numpy())
    cells["nest_id"] = 0
    for i, p in enumerate(polys, start=1):
        cells.loc[shapely.contains_xy(p, cells["x_um"].to_numpy(), cells["y_um"].to_numpy()),
                  "nest_id"] = i
    d = shapely.distance(region.union.boundary,
                         shapely.points(cells["x_um"].to_numpy(), cells["y_um"].to_numpy()))
    cells["signed_dist_um"] = np.where(inside, -d, d)
    cells["compartment"] = np.select(
        [cells["signed_dist_um"] <= -50, cells["signed_dist_um"] <= 0,
         cells["signed_dist_um"] <= 50], ["core", "inner_margin", "outer_margin"], "stroma")

    barrier = nests["barrier"].to_numpy(dtype=bool)
    segs = segments_of(polys, barrier)
    # the barrier analysis' run table: each nest wholly covered or wholly a gap (one closed run)
    runs = pd.DataFrame({"nest_id": np.arange(1, len(polys) + 1), "ring": 0, "start_um": 0.0,
                         "n_subsegments": [max(1, int(round(p.length / 10.0))) for p in polys],
                         "length_um": [p.exterior.length for p in polys], "covered": barrier,
                         "geometry": [shapely.LineString(p.exterior.coords) for p in polys]})
    zones = [p.difference(p.buffer(-50.0)) for p, b in zip(polys, barrier) if b]
    # NET mask: discs (r = 6 µm) around neutrophils.
    net = np.zeros((ny, nx), bool)
    neu = cells["phenotype"] == "neutrophil"
    net[np.round(cells.loc[neu, "y_um"] / pixel_size_um).astype(int),
        np.round(cells.loc[neu, "x_um"] / pixel_size_um).astype(int)] = True
    net = ndi.binary_dilation(net, iterations=int(6 / pixel_size_um))
    per_nest = pd.DataFrame({"nest_id": np.arange(1, len(polys) + 1),
                             "area_um2": [p.area for p in polys],
                             "perimeter_um": [p.length for p in polys],
                             "barrier_coverage": barrier.astype(float),
                             "immune_phenotype": np.where(barrier, "excluded", "inflamed")})
    metrics = {"sample_id": "synthetic", "n_cells": int(len(cells)),
               "gates": {"CD8": {"column": "CD8", "value": 35.0}},
               "tumour_region": {"n_nests": len(polys), "tumour_area_mm2": region.union.area / 1e6,
                                 "perimeter_um": float(sum(p.length for p in polys))}}
    return PipelineResult(cells=cells, pixel_size_um=pixel_size_um, image_shape=(ny, nx),
                          labels=labels, gates={"CD8": 35.0}, region=region, segments=segs,
                          exclusion_zones=zones, masks={"net": net}, per_nest=per_nest,
                          metrics=metrics, channel_columns=["CD8"],
                          analyses={"barrier": SimpleNamespace(runs=runs)})
