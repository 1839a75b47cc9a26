"""Bring your own cell table: read exports of other tools into tibspace's schema.

Recognised without configuration (columns are looked up case-insensitively):

=========================  ==========================================  ========
tool                       x / y columns                               units
=========================  ==========================================  ========
tibspace                   ``x_um``, ``y_um``                          µm
QuPath (measurement TSV)   ``Centroid X µm``, ``Centroid Y µm``        µm
QuPath, no pixel size      ``Centroid X px``, ``Centroid Y px``        px
inForm / phenoptr          ``Cell X Position``, ``Cell Y Position``    µm [#]_
MCMICRO / scimap           ``X_centroid``, ``Y_centroid``              px
HALO                       ``XMin``/``XMax``, ``YMin``/``YMax``        px
=========================  ==========================================  ========

.. [#] inForm writes µm when the image has a pixel size; say ``units = "px"``
   in the panel's ``[table]`` section otherwise.

QuPath's *Measure › Export measurements* (0.3, 0.4, 0.5) writes one row per
object with the columns ``Image``, [``Object ID`` (0.4+, a UUID), ``Object
type`` (0.5)], ``Name``, ``Class`` (0.3/0.4) or ``Classification`` (0.5),
``Parent``, ``ROI``, ``Centroid X µm``/``Centroid Y µm`` (``px`` when the
image has no pixel size; the µ is U+00B5, files are UTF-8 or, from old
Windows installs, Latin-1), then the measurement list. Its intensity
measurements ``<Compartment>: <channel>: Mean`` (and the older
``<Compartment>: <channel> mean``) become tibspace channel columns: ``Cell``
→ ``<channel>`` (the whole-cell mean the gates use), ``Nucleus`` →
``<channel>_nucleus``, ``Cytoplasm``/``Membrane`` → ``<channel>_cytoplasm``/
``<channel>_membrane``. An empty class is an unclassified object
(:data:`UNCLASSIFIED`); a table whose class column is empty throughout is
phenotyped by the panel's gates. Derived classes keep QuPath's spelling
(``CD3: CD8``); map them with ``phenotype_map``.

Panel markers are found among the table's channel columns with the same
matching as image channels (case, ``- _ space / .`` ignored, then
``[channels.aliases]``), so a panel's ``PanCK`` gates a table's ``PanKRT``.

The panel's ``[table]`` section overrides any of this: ``cell_id``, ``x``,
``y``, ``units`` (``"um"``/``"px"``), ``pixel_size_um``, ``phenotype`` and
``phenotype_map`` (source label → tibspace phenotype). Pixel coordinates need
a pixel size; tibspace never assumes 1 µm/px.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tibspace.errors import InputError

UNCLASSIFIED = "unclassified"
"""Phenotype of a cell whose class cell is empty (QuPath's unclassified objects)."""

_XY_CANDIDATES = [  # keys as :func:`_key` spells them
    ("x_um", "y_um", "um"),
    ("centroid x um", "centroid y um", "um"),
    ("cell x position", "cell y position", "um"),
    ("x_centroid", "y_centroid", "px"),
    ("centroid x px", "centroid y px", "px"),
    ("x", "y", None),
]
_ID_CANDIDATES = ["cell_id", "cell id", "cellid", "object id", "object_id", "id"]
_PHENOTYPE_CANDIDATES = ["phenotype", "class", "classification", "cell type", "cell_type", "celltype"]
_QUPATH_INTENSITY = re.compile(r"^(cell|nucleus|cytoplasm|membrane):\s*(.+?)(?::\s*|\s+)mean$", re.IGNORECASE)
_COMPARTMENT_SUFFIX = {"cell": "", "nucleus": "_nucleus", "cytoplasm": "_cytoplasm", "membrane": "_membrane"}
_MISSING_LABELS = {"", "nan", "none", "null", "<na>"}


def _key(column) -> str:
    """A column name for matching: stripped, lower case, µm (micro sign or Greek mu) as ``um``."""
    return str(column).strip().lower().replace("\u03bc", "\u00b5").replace("\u00b5m", "um")


def read_cell_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a cell table (Parquet, CSV, TSV or inForm/QuPath ``.txt``) by its extension.

    Parameters
    ----------
    path : str or Path
        The table; ``.parquet``, ``.csv`` (comma), ``.tsv`` / ``.txt`` (tab; the
        separator is sniffed when that gives one column). Text is UTF-8 (with or
        without a byte-order mark), else Latin-1.

    Returns
    -------
    pandas.DataFrame
        The columns as stored (no renaming: :func:`standardise_cell_table` maps them).

    Raises
    ------
    InputError
        Missing file, unknown extension, unreadable content (one line naming the file).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "cells.csv"
    >>> _ = f.write_text("Cell X Position,Cell Y Position,Phenotype\\n10,20,CD8\\n")
    >>> read_cell_table(f).columns.tolist()
    ['Cell X Position', 'Cell Y Position', 'Phenotype']
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: cell table not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".tsv", ".txt", ".csv"):
            df = _read_text_table(path, "\t" if suffix != ".csv" else ",")
        else:
            raise InputError(f"{path}: unknown cell-table format {suffix!r}; expected .parquet, .csv, .tsv or .txt")
    except InputError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many kinds; say which file
        raise InputError(f"{path}: could not read the cell table ({type(exc).__name__}: {exc})") from None
    if len(df.columns) == 1 and suffix != ".parquet":  # wrong separator guess
        df = _read_text_table(path, None)
    return df


def _read_text_table(path: Path, sep: str | None) -> pd.DataFrame:
    """UTF-8 (with or without a byte-order mark), else Latin-1 (older QuPath on Windows writes µ as 0xB5)."""
    kw = {"engine": "python"} if sep is None else {"low_memory": False}
    try:
        return pd.read_csv(path, sep=sep, encoding="utf-8-sig", **kw)
    except UnicodeDecodeError:
        return pd.read_csv(path, sep=sep, encoding="latin-1", **kw)


def _find(columns, wanted: str | None, candidates, *, what: str, source) -> str | None:
    lower = {_key(c): c for c in columns}
    if wanted is not None:
        if wanted in columns:
            return wanted
        if _key(wanted) in lower:
            return lower[_key(wanted)]
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
    out = _marker_columns(_qupath_channel_columns(out), panel, name)
    ph = _phenotypes(raw[phcol], get("phenotype_map") or {}) if phcol is not None else None
    needs_gating = ph is None
    if ph is not None:
        out["phenotype"] = ph
    out = out.loc[:, ~out.columns.duplicated(keep="last")]
    return out.reset_index(drop=True), (float(px) if px else None), needs_gating


def _phenotypes(labels: pd.Series, pmap) -> np.ndarray | None:
    """Stripped labels; empty ones :data:`UNCLASSIFIED`; ``pmap`` applied. None when every label is empty."""
    text = labels.astype(object).where(labels.notna(), "").astype(str).str.strip()
    missing = text.str.lower().isin(_MISSING_LABELS).to_numpy()
    if missing.all():
        return None
    ph = np.where(missing, UNCLASSIFIED, text.to_numpy(dtype=object)).astype(object)
    if pmap:
        ph = np.array([pmap.get(v, v) for v in ph], dtype=object)
    return ph


def _qupath_channel_columns(cells: pd.DataFrame) -> pd.DataFrame:
    """Add ``<channel>[_nucleus|_cytoplasm|_membrane]`` columns from QuPath's ``<Compartment>: <channel>: Mean``."""
    new = {}
    for c in cells.columns:
        m = _QUPATH_INTENSITY.match(str(c).strip())
        if m is None:
            continue
        target = m.group(2).strip() + _COMPARTMENT_SUFFIX[m.group(1).lower()]
        if target not in cells.columns and target not in new:
            new[target] = pd.to_numeric(cells[c], errors="coerce").to_numpy(dtype=float)
    return cells.assign(**new) if new else cells


def _marker_columns(cells: pd.DataFrame, panel, name: str) -> pd.DataFrame:
    """Each panel marker's intensity under the marker's own name, found through the panel's channel matching.

    A marker column the table already has is kept; otherwise the table column
    the panel's matching (case, punctuation, ``[channels.aliases]``) finds is
    copied, with its ``_nucleus`` etc. companions.
    """
    markers = list(getattr(panel, "markers", None) or [])
    missing = [m for m in markers if m not in cells.columns]
    if not missing or not hasattr(panel, "resolve_channels"):
        return cells
    base = [str(c) for c in cells.columns if not str(c).endswith(tuple(s for s in _COMPARTMENT_SUFFIX.values() if s))]
    found = panel.resolve_channels(base, name, optional_roles=("nuclear", "membrane", "marker", "mask"))
    new = {}
    for m in missing:
        if m not in found:
            continue
        col = base[found[m]]
        new[m] = cells[col].to_numpy()
        for suffix in (s for s in _COMPARTMENT_SUFFIX.values() if s):
            if col + suffix in cells.columns and m + suffix not in cells.columns:
                new[m + suffix] = cells[col + suffix].to_numpy()
    return cells.assign(**new) if new else cells


def check_table_classes(phenotypes, panel, source=None) -> list[str]:
    """The table's classes against the panel's roles: raise when none maps, else warnings (one line).

    A class maps when a role lists it; classes the panel defines (its
    phenotype rules and default) are known; any other class is reported.

    Raises
    ------
    InputError
        No class of the table is a phenotype any panel role uses (every analysis
        would be skipped); the message lists the classes found and the roles.

    Returns
    -------
    list of str
        One warning naming the classes that map to no role (empty when all map).
    """
    name = source or "cell table"
    roles = {r: list(v) for r, v in (getattr(panel, "roles", None) or {}).items()}
    used = {p for v in roles.values() for p in v}
    known = used | set(getattr(panel, "phenotypes", None) or {}) | {getattr(panel, "default_phenotype", "other")}
    counts = pd.Series(np.asarray(phenotypes, dtype=object)).value_counts()
    classes = [str(c) for c in counts.index if c != UNCLASSIFIED]
    unmapped = [c for c in classes if c not in known]
    if any(c in used for c in classes) and not unmapped:
        return []
    found = "; ".join(f"{c!r} ({int(counts[c]):,})" for c in counts.index)
    role_text = "; ".join(f"{r} = {', '.join(v)}" for r, v in roles.items() if v)
    first = (unmapped or classes or [UNCLASSIFIED])[0]
    hint = f"[table] phenotype_map = {{ {first!r} = \"<phenotype>\" }}".replace("'", '"')
    if not any(c in used for c in classes):
        raise InputError(f"{name}: no class in the table is a phenotype of the panel's roles, so no analysis "
                         f"could run; classes found: {found}; panel roles: {role_text}; map them in the panel "
                         f"with {hint}")
    return [f"{name}: {len(unmapped)} of {len(classes)} classes are in no panel role and count as other cells: "
            f"{', '.join(repr(c) for c in unmapped)} (classes found: {found}; panel roles: {role_text}; "
            f"map them with {hint})"]


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
        lower = {_key(c): c for c in cols}
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
