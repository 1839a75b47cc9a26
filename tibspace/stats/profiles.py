"""Infiltration profiles: phenotype densities in signed-distance bands around
the tumour boundary (``metrics.md``: "Infiltration profile").

Density of phenotype P in band (lo, hi] = number of P cells with
``lo < signed_dist_um <= hi`` / tissue area of that band (exact polygon
buffers intersected with the tissue region; never image area), reported in
cells/mm².
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tibspace.errors import InputError
from tibspace.tissue import (TumourRegion, _check_edges, annotate_cells, band_areas_um2, nest_band_areas_um2)
from tibspace.progress import report

__all__ = ["infiltration_profile", "DEFAULT_EDGES_UM", "band_index"]

#: Default band edges: -200 ... +200 µm in 20 µm steps (20 bands).
DEFAULT_EDGES_UM = np.arange(-200.0, 200.0 + 1e-9, 20.0)


def band_index(signed_dist_um, edges_um) -> np.ndarray:
    """Index i of the band ``edges[i] < d <= edges[i+1]`` of each distance;
    -1 outside the edges' range or NaN.

    Examples
    --------
    >>> band_index([-20, -19.9, 0, 0.1, 25], [-20, 0, 20]).tolist()
    [-1, 0, 0, 1, -1]
    """
    e = np.asarray(edges_um, dtype=float)
    d = np.asarray(signed_dist_um, dtype=float)
    i = np.searchsorted(e, d, side="left") - 1
    i[(i < 0) | (i >= e.size - 1) | np.isnan(d)] = -1
    return i


def infiltration_profile(cells: pd.DataFrame, region: TumourRegion, tissue, *, edges_um=None,
                         phenotype_col: str = "phenotype", phenotypes=None, by_nest: bool = False,
                         sample_id=None, margin_um: float = 50.0, spacing_um: float = 10.0,
                         progress=None) -> pd.DataFrame:
    """Density (cells/mm² of tissue) of each phenotype in signed-distance bands.

    Parameters
    ----------
    cells : DataFrame
        Cell table with ``x_um``, ``y_um`` and ``phenotype_col``; if it has
        ``signed_dist_um`` (and, for ``by_nest``, ``nest_id``) these are used,
        otherwise they are computed from ``region``.
    region : TumourRegion
        Tumour nests.
    tissue : shapely geometry
        Tissue region; band areas are clipped to it.
    edges_um : array_like, optional
        Band edges (µm, increasing; ±inf allowed). Default -200..200 step 20.
    phenotypes : list of str, optional
        Phenotypes to report (default: all in the table, sorted). Every
        (band, phenotype) pair gets a row, zeros included.
    by_nest : bool
        Per nest: a cell belongs to its nearest nest (``nest_id``); a band's
        area for nest k is the part of the band whose nearest nest boundary is
        nest k's (nearest-boundary partition, see
        :func:`tibspace.tissue.nest_band_areas_um2`). Inside a nest the
        nearest boundary is always its own, so per-nest distances equal the
        global signed distance; per-nest areas sum to the global band areas.
    sample_id : optional
        If given, a leading ``sample_id`` column.

    Returns
    -------
    DataFrame with columns [``sample_id``], [``nest_id``], ``band_lo_um``,
    ``band_hi_um``, ``band_mid_um``, ``phenotype``, ``count``, ``area_um2``,
    ``density_per_mm2`` (NaN where the band has no tissue area). Cells with
    distances outside the edges are not counted. Cells are counted by their
    distance even if they lie outside the tissue polygon (a tissue region
    built from the cells contains all of them).

    Examples
    --------
    >>> import shapely
    >>> reg = TumourRegion.from_polygons([shapely.box(0, 0, 100, 100)])
    >>> cells = pd.DataFrame({"x_um": [20.0, 110.0], "y_um": [50.0, 50.0],
    ...                       "phenotype": ["tumour", "CD8_T"]})
    >>> p = infiltration_profile(cells, reg, shapely.box(-500, -500, 600, 600), edges_um=[-50, 0, 50])
    >>> p[["band_lo_um", "phenotype", "count"]].values.tolist()
    [[-50.0, 'CD8_T', 0], [-50.0, 'tumour', 1], [0.0, 'CD8_T', 1], [0.0, 'tumour', 0]]
    """
    e = _check_edges(DEFAULT_EDGES_UM if edges_um is None else edges_um)
    if phenotype_col not in cells.columns:
        raise InputError(f"cell table: phenotype column '{phenotype_col}' missing; pass "
                         "phenotype_col= or gate the cells first")
    need_nest = by_nest and "nest_id" not in cells.columns
    if "signed_dist_um" not in cells.columns or need_nest:
        cells = annotate_cells(cells, region, margin_um=margin_um)
    d = cells["signed_dist_um"].to_numpy(dtype=float)
    ph = cells[phenotype_col].astype(str).to_numpy()
    if phenotypes is None:
        phenotypes = sorted(pd.unique(ph))
    phenotypes = [str(p) for p in phenotypes]
    bi = band_index(d, e)
    pcode = pd.Categorical(ph, categories=phenotypes).codes
    ok = (bi >= 0) & (pcode >= 0)
    report(progress, "infiltration profile", 0, 2)
    if not by_nest:
        out = _global_profile(bi, pcode, ok, phenotypes, region, tissue, e)
    else:
        out = _nest_profile(cells, bi, pcode, ok, phenotypes, region, tissue, e, spacing_um)
    report(progress, "infiltration profile", 2, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["density_per_mm2"] = np.where(out["area_um2"] > 0,
                                          out["count"] / out["area_um2"] * 1e6, np.nan)
    if sample_id is not None:
        out.insert(0, "sample_id", sample_id)
    return out


def _band_columns(e, npn, repeat=1):
    """band_lo_um, band_hi_um, band_mid_um of every (band, phenotype) row, ``repeat`` times."""
    lo, hi = e[:-1], e[1:]
    with np.errstate(invalid="ignore"):
        mid = np.where(np.isfinite(lo) & np.isfinite(hi), (lo + hi) / 2, np.nan)
    return {"band_lo_um": np.tile(np.repeat(lo, npn), repeat), "band_hi_um": np.tile(np.repeat(hi, npn), repeat),
            "band_mid_um": np.tile(np.repeat(mid, npn), repeat)}


def _global_profile(bi, pcode, ok, phenotypes, region, tissue, e) -> pd.DataFrame:
    """Counts and tissue areas per (band, phenotype) over the whole region."""
    nb, npn = e.size - 1, len(phenotypes)
    counts = np.bincount(bi[ok] * npn + pcode[ok], minlength=nb * npn).reshape(nb, npn)
    areas = band_areas_um2(region, tissue, e)
    return pd.DataFrame({**_band_columns(e, npn), "phenotype": np.tile(phenotypes, nb),
                         "count": counts.ravel().astype(np.int64), "area_um2": np.repeat(areas, npn)})


def _nest_profile(cells, bi, pcode, ok, phenotypes, region, tissue, e, spacing_um) -> pd.DataFrame:
    """Counts and tissue areas per (nest, band, phenotype); a cell belongs to its nearest nest."""
    if not isinstance(region, TumourRegion):
        raise InputError("infiltration_profile(by_nest=True): region must be a TumourRegion")
    nb, npn = e.size - 1, len(phenotypes)
    nn = region.n_nests
    nid = cells["nest_id"].to_numpy(dtype=np.int64)
    ok = ok & (nid >= 1) & (nid <= nn)
    flat = ((nid[ok] - 1) * nb + bi[ok]) * npn + pcode[ok]
    counts = np.bincount(flat, minlength=nn * nb * npn).reshape(nn, nb, npn)
    areas = nest_band_areas_um2(region, tissue, e, spacing_um=spacing_um)   # (nn, nb)
    return pd.DataFrame({"nest_id": np.repeat(region.nest_ids(), nb * npn), **_band_columns(e, npn, nn),
                         "phenotype": np.tile(phenotypes, nn * nb),
                         "count": counts.ravel().astype(np.int64), "area_um2": np.repeat(areas.ravel(), npn)})
