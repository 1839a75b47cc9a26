"""AnnData export of a cell table (``obsm['spatial']`` in µm) for scanpy/squidpy users.
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


# -------------------------------------------------------------------- AnnData
def write_anndata(cells: pd.DataFrame, channel_columns: Sequence[str], path: str | os.PathLike,
                  *, uns: Mapping | None = None) -> Path:
    """Write the cell table as AnnData (``.h5ad``): X = mean intensities per
    channel, obs = every other per-cell column, ``obsm['spatial']`` = (x, y) µm.

    This is what scanpy/squidpy users load (``sq.gr.*`` works on it directly).
    """
    import anndata as ad

    channel_columns = [c for c in channel_columns if c in cells.columns]
    X = cells[channel_columns].to_numpy(dtype=np.float32) if channel_columns else np.zeros((len(cells), 0), np.float32)
    obs_cols = [c for c in cells.columns if c not in channel_columns]
    obs = cells[obs_cols].copy()
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str).astype("category")
    obs.index = cells["cell_id"].astype(str).to_numpy() if "cell_id" in cells else obs.index.astype(str)
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[str(c) for c in channel_columns]))
    adata.obsm["spatial"] = cells[["x_um", "y_um"]].to_numpy(dtype=np.float64)
    if uns:
        adata.uns["tibspace"] = json.dumps(to_jsonable(uns), sort_keys=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
