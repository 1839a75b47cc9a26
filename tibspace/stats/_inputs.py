"""Validation of the inputs every statistic shares: coordinate arrays (µm),
cell tables with a phenotype column, and a content hash of coordinates.

Every check raises a one-line :class:`tibspace.errors.InputError` naming the
argument and what was expected.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from tibspace.errors import InputError


def _xy_digest(x, y):
    """Content hash (SHA-256) of float64 coordinate arrays."""
    h = hashlib.sha256(np.int64(x.size).tobytes())
    h.update(np.ascontiguousarray(x, dtype=np.float64))
    h.update(np.ascontiguousarray(y, dtype=np.float64))
    return h.digest()


def _as_xy(x, y, name="points"):
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"{name}: x and y have different lengths ({x.size} vs {y.size})")
    if x.size == 0:
        raise InputError(f"{name}: no points given; expected at least one cell")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        bad = int(np.sum(~(np.isfinite(x) & np.isfinite(y))))
        raise InputError(f"{name}: {bad} coordinates are NaN/inf; drop or fix those cells first")
    return x, y


def _table_xy_types(cells, phenotype_col, types):
    if not isinstance(cells, pd.DataFrame):
        raise InputError("cells: expected a pandas DataFrame with x_um, y_um and a phenotype column")
    if len(cells) == 0:
        raise InputError("cells: the table is empty; expected at least one cell")
    for c in ("x_um", "y_um", phenotype_col):
        if c not in cells.columns:
            raise InputError(f"cells: column {c!r} is missing (have {list(cells.columns)[:12]}); "
                             "rename or pass phenotype_col=")
    if "cell_id" in cells.columns and cells["cell_id"].duplicated().any():
        n = int(cells["cell_id"].duplicated().sum())
        raise InputError(f"cells: column 'cell_id' has {n} duplicated ids; cell ids must be unique")
    x, y = _as_xy(cells["x_um"].to_numpy(), cells["y_um"].to_numpy(), "cells x_um/y_um")
    ph = cells[phenotype_col]
    # factorize once (fast for millions of rows), then map the few uniques;
    # missing values get code -1, which spares a separate isna pass
    raw, uniq = pd.factorize(ph, sort=False)
    if (raw < 0).any():
        raise InputError(f"cells: column {phenotype_col!r} has {int(ph.isna().sum())} missing phenotypes; "
                         "fill them (e.g. 'other') first")
    uniq_s = [str(u) for u in uniq]
    if types is None:
        if isinstance(ph.dtype, pd.CategoricalDtype):
            present = set(uniq_s)
            types = [str(t) for t in ph.cat.categories if str(t) in present]
        else:
            types = sorted(set(uniq_s))
    else:
        types = [str(t) for t in types]
        missing = [t for t in types if t not in set(uniq_s)]
        if missing:
            raise InputError(f"cells: phenotypes {missing} not found in column {phenotype_col!r} "
                             f"(have {sorted(set(uniq_s))[:12]})")
    lut = {t: i for i, t in enumerate(types)}
    lut_arr = np.array([lut.get(u, -1) for u in uniq_s], dtype=np.int64)
    codes = lut_arr[raw]
    return x, y, codes, types
