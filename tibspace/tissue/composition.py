"""Which tumour nests are tumour: cell composition of each nest, and the test a nest must pass.

A nest is the union of discs around tumour cells, so a few scattered tumour
cells in stroma can make one. Each nest is therefore checked against the cells
inside it:

- ``n_tumour`` ≥ ``min_nest_tumour_cells`` (default 10): a nest is a group of
  tumour cells, not one or two;
- tumour-cell density = ``n_tumour`` / nest area ≥ ``min_nest_tumour_density``
  (default 1,200 cells/mm²), nest area in µm²;
- purity = ``n_tumour`` / all cells inside ≥ ``min_nest_purity`` (default
  0.2).
Nests failing any test are dropped, each with its reason. The densities and
purities behind the defaults, measured on real and synthetic tissues, are in
``docs/validation/tissue.md``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely


def nest_composition(region, x_um, y_um, is_tumour) -> pd.DataFrame:
    """Per nest: ``nest_id, area_um2, n_cells, n_tumour, purity, tumour_density_per_mm2``.

    Examples
    --------
    >>> from tibspace.tissue import TumourRegion
    >>> r = TumourRegion.from_polygons([shapely.box(0, 0, 100, 100)])
    >>> x = np.array([10., 20., 30., 500.]); y = np.array([10., 10., 10., 10.])
    >>> nest_composition(r, x, y, np.array([True, True, False, True]))[["n_cells", "n_tumour", "purity"]].values.tolist()
    [[3.0, 2.0, 0.6666666666666666]]
    """
    x, y, tum = (np.asarray(v) for v in (x_um, y_um, is_tumour))
    rows = []
    for k, nest in enumerate(region.nests, start=1):
        inside = shapely.contains_xy(shapely.from_wkb(shapely.to_wkb(nest)), x, y)  # a private copy: contains_xy prepares
        n, nt = int(inside.sum()), int((inside & tum).sum())
        rows.append((k, float(nest.area), n, nt, nt / n if n else 0.0, nt / nest.area * 1e6 if nest.area else 0.0))
    return pd.DataFrame(rows, columns=["nest_id", "area_um2", "n_cells", "n_tumour", "purity",
                                       "tumour_density_per_mm2"]).astype({"n_cells": float, "n_tumour": float})


def filter_nests(region, x_um, y_um, is_tumour, *, min_tumour_cells: int = 10, min_tumour_density: float = 1200.0,
                 min_purity: float = 0.2):
    """(region of the nests that pass, composition table with ``kept`` and ``reason``).

    The region is returned unchanged when every nest passes, and None when none does.
    """
    from tibspace.tissue.nests import TumourRegion

    comp = nest_composition(region, x_um, y_um, is_tumour)
    reasons = []
    for r in comp.itertuples():
        why = []
        if r.n_tumour < min_tumour_cells:
            why.append(f"{int(r.n_tumour)} tumour cells < {min_tumour_cells}")
        if r.tumour_density_per_mm2 < min_tumour_density:
            why.append(f"tumour density {r.tumour_density_per_mm2:.0f}/mm² < {min_tumour_density:g}")
        if r.purity < min_purity:
            why.append(f"purity {r.purity:.2f} < {min_purity:g}")
        reasons.append("; ".join(why))
    comp["kept"] = [not w for w in reasons]
    comp["reason"] = reasons
    if comp["kept"].all():
        return region, comp
    keep = [n for n, ok in zip(region.nests, comp["kept"]) if ok]
    if not keep:
        return None, comp
    return TumourRegion.from_polygons(keep, source=region.source, parameters=region.parameters), comp
