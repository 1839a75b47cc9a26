"""Bring your own cell table: read exports of other tools into tibspace's schema.

Recognised without configuration (columns are looked up case-insensitively):

=========================  ==========================================  ========
tool                       x / y columns                               units
=========================  ==========================================  ========
tibspace                   ``x_um``, ``y_um``                          µm
QuPath (measurement TSV)   ``Centroid X µm``, ``Centroid Y µm``        µm
inForm / phenoptr          ``Cell X Position``, ``Cell Y Position``    µm [#]_
MCMICRO / scimap           ``X_centroid``, ``Y_centroid``              px
HALO                       ``XMin``/``XMax``, ``YMin``/``YMax``        px
=========================  ==========================================  ========

.. [#] inForm writes µm when the image has a pixel size; say ``units = "px"``
   in the panel's ``[table]`` section otherwise.

The panel's ``[table]`` section overrides any of this: ``cell_id``, ``x``,
``y``, ``units`` (``"um"``/``"px"``), ``pixel_size_um``, ``phenotype`` and
``phenotype_map`` (source label → tibspace phenotype). Pixel coordinates need
a pixel size; tibspace never assumes 1 µm/px.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from tibspace.errors import InputError

_XY_CANDIDATES = [
    ("x_um", "y_um", "um"),
    ("centroid x µm", "centroid y µm", "um"),
    ("centroid x um", "centroid y um", "um"),
    ("cell x position", "cell y position", "um"),
    ("x_centroid", "y_centroid", "px"),
    ("centroid x px", "centroid y px", "px"),
    ("x", "y", None),
]
_ID_CANDIDATES = ["cell_id", "cell id", "cellid", "object id", "object_id", "id"]
_PHENOTYPE_CANDIDATES = ["phenotype", "class", "classification", "cell type", "cell_type", "celltype"]


def read_cell_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a cell table (Parquet, CSV, TSV or inForm/QuPath ``.txt``) by its extension."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: cell table not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t", low_memory=False)
        elif suffix == ".csv":
            df = pd.read_csv(path, low_memory=False)
        else:
            raise InputError(f"{path}: unknown cell-table format {suffix!r}; expected .parquet, .csv, .tsv or .txt")
    except InputError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many kinds; say which file
        raise InputError(f"{path}: could not read the cell table ({type(exc).__name__}: {exc})") from None
    if len(df.columns) == 1 and suffix != ".parquet":  # wrong separator guess
        df = pd.read_csv(path, sep=None, engine="python")
    return df


def _find(columns, wanted: str | None, candidates, *, what: str, source) -> str | None:
    lower = {str(c).strip().lower(): c for c in columns}
    if wanted is not None:
        if wanted in columns:
            return wanted
        if wanted.strip().lower() in lower:
            return lower[wanted.strip().lower()]
        raise InputError(f"{source or 'cell table'}: the panel's [table] {what} = {wanted!r} is not a column; "
                         f"columns are: {', '.join(map(str, list(columns)[:40]))}")
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def standardise_cell_table(raw: pd.DataFrame, panel=None, *, source=None) -> tuple[pd.DataFrame, float | None, bool]:
    """Map an external cell table onto tibspace's columns.

    Parameters
    ----------
    raw : DataFrame
        The table as read.
    panel : Panel, optional
        Its ``table`` mapping (if any) overrides auto-detection.
    source : path, optional
        Used in error messages.

    Returns
    -------
    cells : DataFrame
        Columns ``cell_id``, ``x_um``, ``y_um``, ``phenotype`` (when the
        table has one) plus every input column (kept, for the audit trail).
    pixel_size_um : float or None
        From the mapping, when pixel coordinates were converted.
    needs_gating : bool
        True when the table has no phenotype column, so the panel's gates
        and rules must assign phenotypes from intensity columns.

    Examples
    --------
    >>> t = pd.DataFrame({"Cell ID": [1, 2], "Cell X Position": [10.0, 20.0],
    ...                   "Cell Y Position": [5.0, 6.0], "Phenotype": ["CK+", "CD8+"]})
    >>> cells, px, gate = standardise_cell_table(t)
    >>> cells[["cell_id", "x_um", "y_um", "phenotype"]].values.tolist()
    [[1, 10.0, 5.0, 'CK+'], [2, 20.0, 6.0, 'CD8+']]
    """
    name = source or "cell table"
    if raw is None or len(raw) == 0:
        raise InputError(f"{name}: the cell table is empty (0 rows)")
    m = getattr(panel, "table", None) if panel is not None else None
    get = (lambda k, d=None: getattr(m, k, None) if m is not None and getattr(m, k, None) is not None else d)
    cols = list(raw.columns)
    raw, xcol, ycol, units = _xy_columns(raw, get, source)
    px = get("pixel_size_um") or getattr(panel, "pixel_size_um", None)
    x, y = _coordinates_um(raw, xcol, ycol, units, px, name)
    phcol = _find(cols, get("phenotype"), _PHENOTYPE_CANDIDATES, what="phenotype", source=source)
    ids = _cell_ids(raw, _find(cols, get("cell_id"), _ID_CANDIDATES, what="cell_id", source=source), name)

    out = raw.drop(columns=[c for c in ("cell_id", "x_um", "y_um", "phenotype") if c in raw.columns and c != phcol])
    out.insert(0, "cell_id", ids)
    out["x_um"] = x
    out["y_um"] = y
    needs_gating = phcol is None
    if phcol is not None:
        ph = raw[phcol].astype(str).str.strip()
        pmap = get("phenotype_map") or {}
        if pmap:
            ph = ph.map(lambda v: pmap.get(v, v))
        out["phenotype"] = ph.to_numpy(dtype=object)
    out = out.loc[:, ~out.columns.duplicated(keep="last")]
    return out.reset_index(drop=True), (float(px) if px else None), needs_gating


def _xy_columns(raw: pd.DataFrame, get, source) -> tuple[pd.DataFrame, str, str, str]:
    """(table, x column, y column, units) from the panel mapping or the known layouts.

    A HALO table gains ``_x``/``_y`` columns: the centre of each cell's box, in pixels.
    """
    name = source or "cell table"
    cols = list(raw.columns)
    xcol = _find(cols, get("x"), [], what="x", source=source) if get("x") else None
    ycol = _find(cols, get("y"), [], what="y", source=source) if get("y") else None
    units = get("units")
    if xcol is None or ycol is None:
        lower = {str(c).strip().lower(): c for c in cols}
        for cx, cy, u in _XY_CANDIDATES:
            if cx in lower and cy in lower:
                xcol, ycol = lower[cx], lower[cy]
                units = units or u
                break
        else:
            if {"xmin", "xmax", "ymin", "ymax"} <= set(lower):  # HALO: box centre, pixels
                raw = raw.assign(_x=(raw[lower["xmin"]] + raw[lower["xmax"]]) / 2,
                                 _y=(raw[lower["ymin"]] + raw[lower["ymax"]]) / 2)
                xcol, ycol, units = "_x", "_y", units or "px"
    if xcol is None or ycol is None:
        raise InputError(f"{name}: no x/y coordinate columns found (looked for x_um/y_um, 'Centroid X µm', "
                         f"'Cell X Position', X_centroid, XMin/XMax); set [table] x = ..., y = ... in the panel")
    if units is None:
        raise InputError(f"{name}: cannot tell whether columns {xcol!r}/{ycol!r} are in µm or pixels; "
                         f"set [table] units = \"um\" or \"px\" (with pixel_size_um) in the panel")
    return raw, xcol, ycol, str(units).lower().replace("µ", "u")


def _coordinates_um(raw: pd.DataFrame, xcol: str, ycol: str, units: str, px, name: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """x and y in µm; pixel coordinates are multiplied by ``px`` (µm per pixel)."""
    x = pd.to_numeric(raw[xcol], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(raw[ycol], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise InputError(f"{name}: {int(bad.sum())} of {len(x)} rows have missing or non-numeric coordinates "
                         f"in {xcol!r}/{ycol!r} (first at row {int(np.argmax(bad))}); remove or fix them")
    if units in ("px", "pixel", "pixels"):
        if not px:
            raise InputError(f"{name}: coordinates {xcol!r}/{ycol!r} are in pixels but no pixel size is known; "
                             f"set [table] pixel_size_um = <µm per pixel> in the panel")
        return x * float(px), y * float(px)
    if units not in ("um", "micron", "microns", "micrometer", "micrometre"):
        raise InputError(f"{name}: [table] units = {units!r} is not understood; use \"um\" or \"px\"")
    return x, y


def _cell_ids(raw: pd.DataFrame, idcol: str | None, name: str) -> np.ndarray:
    """The table's integer ids when unique, else 1..n."""
    if idcol is None:
        return np.arange(1, len(raw) + 1)
    ids = raw[idcol].to_numpy()
    if pd.Series(ids).duplicated().any():
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise InputError(f"{name}: duplicate cell ids in column {idcol!r} (e.g. {dup!r}); cell ids must be unique "
                         f"(for a multi-image table, analyse one image at a time)")
    if not np.issubdtype(np.asarray(ids).dtype, np.integer):
        return np.arange(1, len(raw) + 1)
    return ids
