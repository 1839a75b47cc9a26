"""Plain JSON values from numpy / pandas / shapely objects (metrics.json, result dicts).

NaN and ±inf become ``None`` (JSON has no NaN); floats keep full precision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import shapely


# ----------------------------------------------------------------------- JSON
def to_jsonable(obj):
    """Convert numpy / pandas / shapely values into plain JSON types.

    NaN and ±inf become ``None`` (JSON has no NaN); floats are kept at full
    precision so metrics.json is an exact audit record.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, shapely.Geometry):
        return obj.wkt
    if isinstance(obj, pd.DataFrame):  # column -> list of values (compact, tidy)
        return {str(c): _column_jsonable(obj[c]) for c in obj.columns}
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _column_jsonable(col: pd.Series) -> list:
    """One table column as JSON values; numeric and boolean columns in one
    vectorised step (a whole slide's segment table has ~10^6 values), others
    value by value. Same values as :func:`to_jsonable` on each element."""
    kind = col.dtype.kind if isinstance(col.dtype, np.dtype) else "O"  # not pandas' nullable types
    if kind in "iub":
        return col.to_numpy().tolist()
    if kind == "f":
        arr = col.to_numpy(dtype=float)
        bad = ~np.isfinite(arr)
        if not bad.any():
            return arr.tolist()
        out = arr.astype(object)
        out[bad] = None
        return out.tolist()
    return [to_jsonable(v) for v in col.tolist()]
