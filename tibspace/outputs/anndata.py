"""AnnData export of a cell table, in scverse conventions.

- ``X``: mean intensity per channel (cells × channels, float32); ``var_names`` the channels.
- ``obs``: every other per-cell column with a real dtype: numbers stay
  numbers, text becomes categorical (missing stays missing, never ``'nan'``),
  yes/no columns become ``bool`` (a cell the analysis does not apply to, e.g.
  ``shielded`` of a T cell, is ``False``), plus ``sample_id``.
- ``obsm["spatial"]``: (x, y) in µm.
- ``uns["spatial"][sample_id]``: the stain thumbnail (or a blank canvas for
  table runs) with ``scalefactors`` so that ``squidpy.pl.spatial_scatter``
  works without arguments; ``tissue_hires_scalef`` = thumbnail pixels per µm.
- ``uns["phenotype_colors"]``: the colours the report and napari use.
- ``uns["phenotype_nhood_enrichment"]``: tibspace's enrichment in squidpy's
  layout (``zscore``, ``count``; categories in ``obs["phenotype"]`` order), so
  ``squidpy.pl.nhood_enrichment(adata, cluster_key="phenotype")`` plots it.
- ``uns["tibspace"]``: the run's provenance (JSON text).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tibspace.io import atomic_path
from tibspace.jsonable import to_jsonable
from tibspace.outputs.colours import phenotype_colour


def _typed_obs(obs: pd.DataFrame) -> pd.DataFrame:
    for c in obs.columns:
        col = obs[c]
        if col.dtype != object:
            continue
        kind = pd.api.types.infer_dtype(col, skipna=True)  # C-level type scan; "empty" when all missing
        if kind == "boolean":
            obs[c] = col.where(col.notna(), False).astype(bool)
        elif kind == "string":  # text already (phenotype): no conversion of a million values
            obs[c] = pd.Categorical(col)
        else:
            obs[c] = pd.Categorical(col.where(col.isna(), col.astype(str)))
    return obs


def _cell_names(cell_id: pd.Series) -> np.ndarray:
    """``cell_id`` as text (obs names), by Arrow's cast for integers (4x pandas' ``astype(str)``)."""
    if not np.issubdtype(cell_id.dtype, np.integer):
        return cell_id.astype(str).to_numpy()
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(cell_id.to_numpy()), pa.string()).to_numpy(zero_copy_only=False)


def _spatial_uns(xy: np.ndarray, thumbnail: Mapping | None, spot_um: float) -> dict:
    if thumbnail is not None:
        img = np.asarray(thumbnail["rgb"])
        scale = 1.0 / float(thumbnail["um_per_px"])
    else:  # a light canvas over the cells' extent, 1 px per 2 µm at most 2048 px
        extent = float(np.nanmax(xy)) if len(xy) else 1.0
        scale = min(0.5, 2048.0 / max(extent, 1.0))
        side = int(np.ceil(extent * scale)) + 1
        img = np.full((side, side, 3), 245, np.uint8)
    return {"images": {"hires": img},
            "scalefactors": {"tissue_hires_scalef": scale, "spot_diameter_fullres": float(spot_um)},
            "metadata": {"units": "µm"}}


def _enrichment_uns(enrichment: pd.DataFrame | None, categories) -> dict | None:
    if enrichment is None or not len(enrichment):
        return None
    idx = {c: k for k, c in enumerate(categories)}
    K = len(categories)
    z, n = np.full((K, K), np.nan), np.zeros((K, K))
    for a, b, cnt, zs in enrichment[["type_a", "type_b", "count", "zscore"]].itertuples(index=False):
        if a in idx and b in idx:
            z[idx[a], idx[b]], n[idx[a], idx[b]] = zs, cnt
    return {"zscore": z, "count": n}


def write_anndata(cells: pd.DataFrame, channel_columns: Sequence[str], path: str | os.PathLike,
                  *, uns: Mapping | None = None, sample_id: str = "sample", thumbnail: Mapping | None = None,
                  enrichment: pd.DataFrame | None = None, spot_um: float = 10.0) -> Path:
    """Write the cell table as AnnData (``.h5ad``), see the module docstring.

    Examples
    --------
    >>> import tempfile, pathlib, anndata
    >>> cells = pd.DataFrame({"cell_id": [1, 2], "x_um": [0., 5.], "y_um": [1., 2.], "CD8": [3., 4.],
    ...                       "phenotype": ["tumour", "CD8_T"], "shielded": [True, np.nan]})
    >>> p = write_anndata(cells, ["CD8"], pathlib.Path(tempfile.mkdtemp()) / "c.h5ad", sample_id="s1")
    >>> a = anndata.read_h5ad(p)
    >>> a.obs["shielded"].tolist(), a.obs["sample_id"].tolist(), list(a.uns["spatial"])
    ([True, False], ['s1', 's1'], ['s1'])
    """
    import anndata as ad

    channel_columns = [c for c in channel_columns if c in cells.columns]
    X = cells[channel_columns].to_numpy(dtype=np.float32) if channel_columns else np.zeros((len(cells), 0), np.float32)
    # a new frame of the same (not copied) columns: _typed_obs replaces columns, never edits them in place
    obs = _typed_obs(pd.DataFrame({c: cells[c] for c in cells.columns if c not in channel_columns},
                                  index=cells.index, copy=False))
    obs["sample_id"] = pd.Categorical.from_codes(np.zeros(len(obs), np.int8), [str(sample_id)])
    obs.index = _cell_names(cells["cell_id"]) if "cell_id" in cells else obs.index.astype(str)
    var = pd.DataFrame(index=[str(c) for c in channel_columns])
    if "cell_id" in cells and np.issubdtype(cells["cell_id"].dtype, np.integer) and cells["cell_id"].is_unique:
        # unique integers give unique names: skip anndata's check of a million strings (0.2 s)
        with ad.settings.override(check_uniqueness=False):
            adata = ad.AnnData(X=X, obs=obs, var=var)
    else:  # anndata checks, and warns of repeated names
        adata = ad.AnnData(X=X, obs=obs, var=var)
    xy = cells[["x_um", "y_um"]].to_numpy(dtype=np.float64)
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {str(sample_id): _spatial_uns(xy, thumbnail, spot_um)}
    if "phenotype" in obs and isinstance(obs["phenotype"].dtype, pd.CategoricalDtype):
        cats = list(obs["phenotype"].cat.categories)
        adata.uns["phenotype_colors"] = ["#%02x%02x%02x" % phenotype_colour(c) for c in cats]
        ne = _enrichment_uns(enrichment, cats)
        if ne is not None:
            adata.uns["phenotype_nhood_enrichment"] = ne
    if uns:
        adata.uns["tibspace"] = json.dumps(to_jsonable(uns), sort_keys=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
