"""Cell and result tables as Parquet and CSV, written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import shapely

from tibspace.io import atomic_path
from tibspace.jsonable import to_jsonable


# --------------------------------------------------------------------- tables
def write_table(df: pd.DataFrame, path_stem: str | os.PathLike, *, formats: Sequence[str] = ("parquet", "csv")) -> list[Path]:
    """Write ``df`` as ``<stem>.parquet`` and/or ``<stem>.csv`` atomically.

    Geometry columns (shapely objects) are written as WKT text; categoricals
    as strings in CSV.
    """
    stem = Path(path_stem)
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and len(out) and isinstance(out[col].iloc[0], shapely.Geometry):
            out[col] = shapely.to_wkt(out[col].to_numpy(), rounding_precision=4)
        elif out[col].dtype == object and len(out) and isinstance(out[col].iloc[0], (list, tuple, np.ndarray)):
            out[col] = [json.dumps(to_jsonable(v)) for v in out[col]]
    written = []
    for fmt in formats:
        target = stem.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            if fmt == "parquet":
                out.to_parquet(tmp, index=False)
            elif fmt == "csv":
                out.to_csv(tmp, index=False, float_format="%.6g")
            else:
                raise ValueError(f"unknown table format {fmt!r}")
        written.append(target)
    return written
