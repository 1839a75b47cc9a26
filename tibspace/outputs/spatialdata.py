"""SpatialData export: one ``<sample_id>.zarr`` a napari-spatialdata or squidpy user opens directly.

Elements, all in one coordinate system ``"global"`` in µm (tibspace's: the
centre of pixel (row r, col c) is at (c·px, r·px)):

- ``images/stains``: the multiplex image (image runs) with the source's pyramid
  (a flat image up to 4096 px stays flat, a larger one gets 2×, 4×, 8× levels), or
  ``images/stains_thumbnail`` when only the overview is kept;
- ``labels/cell_labels``: the cell label image (values = ``cell_id``);
- ``shapes/tumour_nests``, ``shapes/exclusion_zones``: polygons in µm;
- ``tables/cells``: the cells' AnnData (:func:`tibspace.outputs.write_anndata`
  conventions) annotating ``cell_labels`` (``region``/``instance_id``).

Needs the optional ``spatialdata`` package (``pip install tibspace[spatialdata]``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from tibspace.errors import InputError


def _pixel_to_um(px: float):
    from spatialdata.transformations import Scale, Sequence, Translation

    # pixel (r, c) spans [c, c+1) in the array; its centre is at c·px µm
    return Sequence([Translation([-0.5, -0.5], axes=("y", "x")), Scale([px, px], axes=("y", "x"))])


def _scale_factors(image, flat_max_side: int = 4096):
    """The source's own pyramid (factors between its levels), none for a flat image up to
    ``flat_max_side`` px, else 2, 4, 8: a run on the written store then reads the levels a run on the
    source read (segmentation's statistics use the coarsest level that resolves a nucleus)."""
    sides = [int(lv.shape[-1]) for lv in image.levels]
    if len(sides) > 1:
        return [max(1, round(a / b)) for a, b in zip(sides[:-1], sides[1:])]
    return None if max(image.shape[-2:]) <= flat_max_side else [2, 2, 2]


def _shapes(geoms):
    import geopandas as gpd
    from spatialdata.models import ShapesModel

    polys = [g for g in geoms if g is not None and not g.is_empty]
    return ShapesModel.parse(gpd.GeoDataFrame(geometry=polys)) if polys else None


def _table(result, region: str | None):
    import anndata as ad
    from spatialdata.models import TableModel

    from tibspace.outputs.anndata import write_anndata

    tmp = Path(__import__("tempfile").mkdtemp())
    try:
        adata = ad.read_h5ad(write_anndata(result.cells, result.channel_columns, tmp / "c.h5ad",
                                           sample_id=result.sample_id, thumbnail=result.thumbnail,
                                           enrichment=(result.stats or {}).get("neighbourhood_enrichment")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if region is None:
        return TableModel.parse(adata)
    adata.obs["region"] = pd.Categorical([region] * adata.n_obs)
    adata.obs["instance_id"] = result.cells["cell_id"].to_numpy(dtype=np.int64)
    return TableModel.parse(adata, region=region, region_key="region", instance_key="instance_id")


def to_spatialdata(result, *, image=None):
    """The :class:`spatialdata.SpatialData` of a run (``image``: the run's MultiplexImage, optional)."""
    try:
        import spatialdata as sd
        from spatialdata.models import Image2DModel, Labels2DModel
    except ImportError:
        raise InputError("--spatialdata needs the spatialdata package: pip install 'tibspace[spatialdata]'") from None
    px = float(result.pixel_size_um or 1.0)
    images, labels, shapes = {}, {}, {}
    if image is not None:
        images["stains"] = Image2DModel.parse(image.data, dims=("c", "y", "x"), c_coords=list(image.channel_names),
                                              scale_factors=_scale_factors(image), chunks=(1, 1024, 1024),
                                              transformations={"global": _pixel_to_um(px)})
    elif result.thumbnail is not None:
        th = result.thumbnail
        rgb = np.moveaxis(np.asarray(th["rgb"]), -1, 0)
        images["stains_thumbnail"] = Image2DModel.parse(rgb, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                                                        transformations={"global": _pixel_to_um(th["um_per_px"])})
    region = None
    if result.labels is not None:
        labels["cell_labels"] = Labels2DModel.parse(np.asarray(result.labels), dims=("y", "x"), chunks=(1024, 1024),
                                                    transformations={"global": _pixel_to_um(px)})
        region = "cell_labels"
    if result.region is not None:
        s = _shapes(result.region.nests)
        if s is not None:
            shapes["tumour_nests"] = s
    z = _shapes(result.exclusion_zones or [])
    if z is not None:
        shapes["exclusion_zones"] = z
    return sd.SpatialData(images=images, labels=labels, shapes=shapes, tables={"cells": _table(result, region)})


def write_spatialdata(result, path: str | Path, *, image=None) -> Path:
    """Write :func:`to_spatialdata` to ``path`` (a ``.zarr`` folder), replacing it whole."""
    path = Path(path)
    sdata = to_spatialdata(result, image=image)
    tmp = path.with_name(f".{path.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    sdata.write(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path
