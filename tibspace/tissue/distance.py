"""Signed distance to the tumour boundary (µm), nearest nest and compartments.

Conventions (``docs/metrics.md``)
---------------------------------
- Coordinates are µm, x to the right, y down, origin top-left.
- Signed distance ``d`` to the tumour boundary: negative inside the tumour
  region, positive outside (QuPath convention); exact Euclidean distance to
  the polygon boundary (exterior rings and holes), by the certified search
  of :mod:`tibspace.tissue._segindex` on boundaries densified to <= 10 µm
  segments.
- Compartments with margin half-width ``w``: core ``d <= -w``, inner margin
  ``-w < d <= 0``, outer margin ``0 < d <= w``, stroma ``d > w``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.tissue._segindex import _SegmentIndex
from tibspace.tissue.nests import TumourRegion, _geom, _polygons_of, _xy

#: Compartment names in order of increasing signed distance.
COMPARTMENTS = ("core", "inner_margin", "outer_margin", "stroma")


def nearest_boundary(x_um, y_um, region, *, labels=None):
    """Exact distance (µm) to the boundary of ``region`` and the label of the
    nearest nest (index into its polygons, or ``labels[index]``).

    Examples
    --------
    >>> d, i = nearest_boundary([0.0, 30.0], [0.0, 0.0], shapely.box(-10, -10, 10, 10))
    >>> d.tolist(), i.tolist()
    ([10.0, 20.0], [0, 0])
    """
    x, y = _xy(x_um, y_um)
    polys = _polygons_of(region)
    if x.size == 0:
        return np.empty(0), np.empty(0, dtype=np.int64)
    idx = _SegmentIndex.from_polygons(polys, labels=labels)
    d, s = idx.query(x, y)
    return d, idx.labels[s]


def signed_distance_um(x_um, y_um, region, *, progress=None) -> np.ndarray:
    """Exact signed Euclidean distance (µm) to the boundary of ``region``.

    Negative inside, positive outside, 0 on the boundary (QuPath convention).
    ``region`` is a :class:`TumourRegion` or a shapely (Multi)Polygon.
    Exact to floating point (see module docstring for the certified
    KD-tree search); inside test by ``shapely.contains_xy`` on the prepared
    geometry. Empty input gives an empty array.

    Parameters
    ----------
    x_um, y_um : array_like
        Point coordinates (µm).
    region : TumourRegion or shapely (Multi)Polygon
        The tumour region (µm).
    progress : callable, optional
        ``progress(step, done, total)``.

    Returns
    -------
    numpy.ndarray
        float64 signed distance per point (µm).

    Examples
    --------
    >>> sq = shapely.box(0, 0, 100, 100)
    >>> signed_distance_um([50, 150, 100], [50, 50, 30], sq).tolist()
    [-50.0, 50.0, 0.0]
    """
    x, y = _xy(x_um, y_um)
    g = _geom(region)
    if x.size == 0:
        return np.empty(0)
    if g.is_empty:
        raise InputError("region: the tumour region is empty; signed distance is undefined")
    report(progress, "signed distance", 0, 2)
    d, _ = nearest_boundary(x, y, region)
    report(progress, "signed distance", 1, 2)
    shapely.prepare(g)
    inside = shapely.contains_xy(g, x, y)
    report(progress, "signed distance", 2, 2)
    return np.where(inside & (d > 0), -d, d)


def nearest_nest_id(x_um, y_um, region: TumourRegion) -> np.ndarray:
    """Id (1..n) of the nest whose boundary is nearest to each point (int64).

    Inside a nest this is always that nest. Empty input -> empty array.

    Examples
    --------
    >>> reg = TumourRegion.from_polygons([shapely.box(0, 0, 10, 10), shapely.box(100, 0, 110, 10)])
    >>> nearest_nest_id([5, 90], [5, 5], reg).tolist()
    [1, 2]
    """
    x, y = _xy(x_um, y_um)
    if not isinstance(region, TumourRegion):
        region = TumourRegion.from_polygons(_polygons_of(region))
    if x.size == 0 or region.n_nests == 0:
        return np.zeros(x.size, dtype=np.int64)
    _, lab = nearest_boundary(x, y, region)
    return lab.astype(np.int64) + 1


def assign_compartments(signed_dist_um, margin_um: float = 50.0) -> pd.Categorical:
    """Compartment of each signed distance: ``core`` (d <= -w), ``inner_margin``
    (-w < d <= 0), ``outer_margin`` (0 < d <= w), ``stroma`` (d > w).

    NaN distances give a missing value.

    Examples
    --------
    >>> list(assign_compartments([-50, -10, 0, 0.1, 50, 51]))
    ['core', 'inner_margin', 'inner_margin', 'outer_margin', 'outer_margin', 'stroma']
    """
    d = np.asarray(signed_dist_um, dtype=float).ravel()
    if not (np.isfinite(margin_um) and margin_um > 0):
        raise InputError(f"margin_um={margin_um}: expected a positive number of µm")
    codes = np.searchsorted(np.array([-margin_um, 0.0, margin_um]), d, side="left")
    codes = np.where(np.isnan(d), -1, codes)
    return pd.Categorical.from_codes(codes, categories=list(COMPARTMENTS), ordered=True)


def annotate_cells(cells: pd.DataFrame, region: TumourRegion | None, *, margin_um: float = 50.0,
                   x_col: str = "x_um", y_col: str = "y_um", progress=None) -> pd.DataFrame:
    """A copy of ``cells`` with ``signed_dist_um``, ``compartment`` and ``nest_id``.

    ``nest_id`` is the nearest nest (1..n); with ``region=None`` (no tumour)
    distances are NaN, compartments missing and ``nest_id`` 0.

    Examples
    --------
    >>> reg = TumourRegion.from_polygons([shapely.box(0, 0, 200, 200)])
    >>> c = pd.DataFrame({"x_um": [100.0, 210.0], "y_um": [100.0, 100.0]})
    >>> annotate_cells(c, reg)[["signed_dist_um", "compartment", "nest_id"]].values.tolist()
    [[-100.0, 'core', 1], [10.0, 'outer_margin', 1]]
    """
    for col in (x_col, y_col):
        if col not in cells.columns:
            raise InputError(f"cell table: column '{col}' missing (have {list(cells.columns)[:8]}...); "
                             "pass a table with µm positions x_um/y_um")
    out = cells.copy()
    x, y = _xy(out[x_col].to_numpy(), out[y_col].to_numpy(), f"columns {x_col}/{y_col}")
    if region is None or (isinstance(region, TumourRegion) and region.n_nests == 0):
        out["signed_dist_um"] = np.full(len(out), np.nan)
        out["compartment"] = assign_compartments(out["signed_dist_um"], margin_um)
        out["nest_id"] = np.zeros(len(out), dtype=np.int64)
        return out
    if not isinstance(region, TumourRegion):
        region = TumourRegion.from_polygons(_polygons_of(region))
    if len(out) == 0:
        out["signed_dist_um"] = np.empty(0)
        out["compartment"] = assign_compartments(np.empty(0), margin_um)
        out["nest_id"] = np.empty(0, dtype=np.int64)
        return out
    report(progress, "annotate cells", 0, 2)
    d, lab = nearest_boundary(x, y, region)
    g = region.union
    shapely.prepare(g)
    inside = shapely.contains_xy(g, x, y)
    report(progress, "annotate cells", 1, 2)
    out["signed_dist_um"] = np.where(inside & (d > 0), -d, d)
    out["compartment"] = assign_compartments(out["signed_dist_um"].to_numpy(), margin_um)
    out["nest_id"] = lab.astype(np.int64) + 1
    report(progress, "annotate cells", 2, 2)
    return out
