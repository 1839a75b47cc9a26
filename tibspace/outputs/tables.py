"""Cell and result tables as Parquet and CSV, written atomically.

Both formats are written by pyarrow from one Arrow table. Floats keep full
precision in both; missing values are empty CSV fields; geometries are WKT
(4 decimals, µm) and lists / dicts JSON text. Columns keep their names, whose
suffix gives the unit (``x_um`` µm, ``*_per_mm2`` cells/mm²).
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
    written = []
    for fmt, target, table in arrow_files(df, path_stem, formats=formats):
        write_arrow_file(table, fmt, target)
        written.append(target)
    return written


def arrow_files(df: pd.DataFrame, path_stem: str | os.PathLike, *,
                formats: Sequence[str] = ("parquet", "csv")) -> list[tuple[str, Path, object]]:
    """(format, target path, Arrow table) of every file :func:`write_table` writes.

    Everything that reads ``df`` happens here, so :func:`write_arrow_file`
    touches only immutable Arrow data and may run on another thread.
    """
    import pyarrow as pa

    for fmt in formats:
        if fmt not in ("parquet", "csv"):
            raise ValueError(f"unknown table format {fmt!r}")
    stem = Path(path_stem)
    text = _text_columns(df)  # only these columns are converted: no copy of the whole table
    table = pa.Table.from_pandas(df, columns=[c for c in df.columns if c not in text], preserve_index=False)
    for i, col in enumerate(df.columns):
        if col in text:
            table = table.add_column(i, str(col), pa.array(text[col], type=pa.string()))
    return [(fmt, stem.with_suffix(f".{fmt}"), table if fmt == "parquet" else _csv_ready(table, df))
            for fmt in formats]


def write_arrow_file(table, fmt: str, target: Path) -> Path:
    """Write one Arrow table as ``fmt`` ("parquet" or "csv") to ``target`` atomically."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with atomic_path(target) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="needed"))
    return target


def _text_columns(df: pd.DataFrame) -> dict:
    """Geometry columns as WKT and list/array columns as JSON text, by column name."""
    text = {}
    for col in df.columns:
        if df[col].dtype != object or not len(df):
            continue
        first = df[col].iloc[0]
        if isinstance(first, shapely.Geometry):
            text[col] = shapely.to_wkt(df[col].to_numpy(), rounding_precision=4)
        elif isinstance(first, (list, tuple, np.ndarray)):
            text[col] = [json.dumps(to_jsonable(v)) for v in df[col]]
    return text


def _csv_ready(table, df: pd.DataFrame):
    """Arrow table for the CSV writer: categoricals as their values, nested
    values (dicts, lists) as JSON text."""
    import pyarrow as pa

    cols = []
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if pa.types.is_dictionary(t):
            col = col.cast(t.value_type)
        elif pa.types.is_nested(t):
            col = pa.array([None if v is None else json.dumps(to_jsonable(v), sort_keys=True)
                            for v in df[name].tolist()], type=pa.string())
        cols.append(col)
    return pa.table(cols, names=table.column_names)
