"""Tissue region in µm: the area covered by cells (discs around every cell,
closed, small holes filled; vector or raster method) or by a boolean tissue mask.
Coordinates are µm, x to the right, y down, origin top-left.
"""

from __future__ import annotations

import numpy as np
import shapely

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.tissue.nests import (
    _check_params,
    _even_odd,
    _sorted_oriented_parts,
    _union_of_discs,
    _xy,
    mask_to_geometry,
)

#: Above this many cells :func:`tissue_region_from_cells` rasterises by default.
TISSUE_VECTOR_MAX_CELLS = 20_000


def tissue_region_from_cells(x_um, y_um, *, radius_um: float = 25.0, closing_um: float = 50.0,
                             min_hole_um2: float = 10000.0, grid_um: float | None = None,
                             progress=None):
    """Tissue region (µm geometry) covered by cells: discs of ``radius_um``
    around every cell, closed by ``closing_um``, holes < ``min_hole_um2`` filled.

    Two exact-up-to-discretisation methods:

    - vector (default up to ``TISSUE_VECTOR_MAX_CELLS`` = 20,000 cells): union
      of polygonal discs of radius ``radius_um + closing_um`` (16-gons,
      ≤ 1.5 µm from the true circle at 75 µm), eroded by ``closing_um``;
    - raster (default above that, or whenever ``grid_um`` is given; 5 µm by
      default): cell positions snapped to a ``grid_um`` grid, dilated with a
      Euclidean distance transform, outlined by marching squares and eroded
      as above. Boundary within about ``grid_um`` of the vector result
      (< 1 % area difference at 4 µm in the tests); memory ~ 20 bytes per
      grid node of the cells' bounding box (1M cells at 3,000/mm²: ~270 MB).

    Examples
    --------
    >>> xy = np.random.default_rng(0).uniform(0, 500, (2000, 2))
    >>> t = tissue_region_from_cells(xy[:, 0], xy[:, 1])
    >>> 1.1 < t.area / (500 * 500) < 1.25   # discs reach ~25 µm past the outermost cells
    True
    """
    x, y = _xy(x_um, y_um, "cell x_um/y_um")
    _check_params(radius_um=radius_um, closing_um=closing_um, min_hole_um2=min_hole_um2)
    if x.size == 0:
        return shapely.MultiPolygon()
    R = radius_um + closing_um
    report(progress, "tissue region", 0, 1)
    if grid_um is None and x.size <= TISSUE_VECTOR_MAX_CELLS:
        grown = _union_of_discs(x, y, R, 4)
    else:
        g = 5.0 if grid_um is None else float(grid_um)
        if not (np.isfinite(g) and g > 0):
            raise InputError(f"grid_um={grid_um}: expected a positive grid spacing in µm")
        grown = _raster_discs(x, y, R, g)
    closed = shapely.buffer(grown, -closing_um, quad_segs=4) if closing_um > 0 else grown
    parts = _sorted_oriented_parts(closed, min_hole_um2, 0.0)
    report(progress, "tissue region", 1, 1)
    return shapely.MultiPolygon(parts)


def _raster_discs(x, y, R, g):
    """Union of discs radius R around points via an EDT on a grid of spacing g (µm)."""
    from scipy import ndimage
    from skimage.measure import find_contours

    pad = R + 2 * g
    x0, y0 = x.min() - pad, y.min() - pad
    nx = int(np.ceil((x.max() + pad - x0) / g)) + 1
    ny = int(np.ceil((y.max() + pad - y0) / g)) + 1
    seeds = np.ones((ny, nx), dtype=bool)
    seeds[np.rint((y - y0) / g).astype(np.intp), np.rint((x - x0) / g).astype(np.intp)] = False
    dist = ndimage.distance_transform_edt(seeds, sampling=g).astype(np.float32)
    del seeds
    f = dist - R  # negative inside the union; contour at 0
    rings = [shapely.Polygon(np.c_[x0 + c[:, 1] * g, y0 + c[:, 0] * g])
             for c in find_contours(f, 0.0) if len(c) >= 4]
    # contours never cross: the even-odd rule gives the region (holes included)
    return _even_odd(rings)


def tissue_region_from_mask(mask, pixel_size_um: float, *, closing_um: float = 50.0,
                            min_hole_um2: float = 10000.0, origin_um=(0.0, 0.0), quad_segs: int = 8):
    """Tissue region (µm geometry) from a (Y, X) boolean tissue mask: polygonised,
    closed by ``closing_um``, holes < ``min_hole_um2`` filled.

    Examples
    --------
    >>> m = np.zeros((100, 100), bool); m[10:90, 10:90] = True
    >>> round(tissue_region_from_mask(m, 2.0).area / 1e4, 2)
    2.56
    """
    _check_params(closing_um=closing_um, min_hole_um2=min_hole_um2)
    geom = mask_to_geometry(mask, pixel_size_um, origin_um)
    if geom.is_empty:
        return shapely.MultiPolygon()
    if closing_um > 0:
        geom = shapely.buffer(shapely.buffer(geom, closing_um, quad_segs=quad_segs), -closing_um,
                              quad_segs=quad_segs)
    return shapely.MultiPolygon(_sorted_oriented_parts(geom, min_hole_um2, 0.0))
