"""Tumour nests in µm: :class:`TumourRegion` and its construction from tumour
cells (union of discs, closed) or from a label/boolean mask (polygonised).

Conventions (``docs/metrics.md``)
---------------------------------
- Coordinates are µm, x to the right, y down, origin top-left.
- Ring orientation: every polygon is oriented with its exterior ring
  counter-clockwise *in the (x, y) number plane* (positive signed area,
  ``shapely.orient_polygons`` default) and holes clockwise. With y pointing
  down on screen the exterior therefore runs clockwise as displayed. Either
  way the tumour lies on the LEFT of the direction of travel in (x, y)
  numbers.
- Nests are disjoint and sorted by the y then x of their bounding box's
  top-left corner; ``nest_id = index + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

from tibspace.errors import InputError, NoTumourRegionError
from tibspace.progress import report


@dataclass
class TumourRegion:
    """Tumour nests (µm polygons) and how they were made.

    Attributes
    ----------
    nests : list of shapely.Polygon
        One polygon per nest, oriented (exterior counter-clockwise in (x, y)
        numbers, holes clockwise); ``nest_id = index + 1``. Sorted by the
        y then x of each nest's top-left bounding-box corner (reading order).
    union : shapely.Geometry
        The union of the nests (a MultiPolygon; nests are disjoint).
    source : str
        ``"cells"`` or ``"mask"``.
    parameters : dict
        Every parameter used to build the region (echoed into results).
    """

    nests: list
    union: object
    source: str
    parameters: dict = field(default_factory=dict)

    @property
    def n_nests(self) -> int:
        return len(self.nests)

    def nest_ids(self) -> np.ndarray:
        """Nest ids 1..n (int64)."""
        return np.arange(1, self.n_nests + 1, dtype=np.int64)

    @property
    def area_um2(self) -> float:
        return float(shapely.area(self.union))

    @property
    def perimeter_um(self) -> float:
        return float(shapely.length(self.union))

    @classmethod
    def from_polygons(cls, polygons, source: str = "polygons", parameters: dict | None = None):
        """Wrap given polygons (µm) as a region: oriented, sorted, unioned.

        Overlapping polygons are merged first, so nests are always disjoint.

        Examples
        --------
        >>> r = TumourRegion.from_polygons([shapely.Point(0, 0).buffer(10)])
        >>> r.n_nests, r.nest_ids().tolist()
        (1, [1])
        """
        geoms = [g for g in np.atleast_1d(np.asarray(polygons, dtype=object)) if g is not None]
        merged = shapely.union_all(geoms) if geoms else shapely.Polygon()
        nests = _sorted_oriented_parts(merged)
        return cls(nests=nests, union=shapely.MultiPolygon(nests), source=source,
                   parameters=dict(parameters or {}))


def _xy(x_um, y_um, what: str = "x_um/y_um"):
    x = np.asarray(x_um, dtype=float).ravel()
    y = np.asarray(y_um, dtype=float).ravel()
    if x.shape != y.shape:
        raise InputError(f"{what}: x has {x.size} values but y has {y.size}; pass coordinate "
                         "arrays of equal length")
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise InputError(f"{what}: {int(bad.sum())} of {x.size} coordinates are NaN/inf; "
                         "drop or fix those cells before computing geometry")
    return x, y


def _geom(region):
    """The geometry of a TumourRegion or a shapely geometry."""
    if isinstance(region, TumourRegion):
        return region.union
    if region is None or not isinstance(region, shapely.Geometry):
        raise InputError(f"region: expected a TumourRegion or a shapely geometry, got "
                         f"{type(region).__name__}")
    return region


def _polygons_of(region) -> list:
    if isinstance(region, TumourRegion):
        return list(region.nests)
    g = _geom(region)
    return [p for p in shapely.get_parts(g) if isinstance(p, shapely.Polygon) and not p.is_empty]


def _fill_small_holes(poly, min_hole_um2: float):
    holes = [r for r in poly.interiors if shapely.area(shapely.Polygon(r)) >= min_hole_um2]
    if len(holes) == len(poly.interiors):
        return poly
    return shapely.Polygon(poly.exterior, holes)


def _sorted_oriented_parts(geom, min_hole_um2: float = 0.0, min_area_um2: float = 0.0):
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, shapely.Polygon) and not p.is_empty]
    parts = [_fill_small_holes(p, min_hole_um2) if min_hole_um2 > 0 else p for p in parts]
    parts = [p for p in parts if p.area >= min_area_um2 and p.area > 0]
    if not parts:
        return []
    parts = list(shapely.orient_polygons(np.asarray(parts, dtype=object)))
    b = shapely.bounds(np.asarray(parts, dtype=object))
    order = np.lexsort((b[:, 0], b[:, 1]))
    return [parts[i] for i in order]


def _union_of_discs(x, y, radius_um: float, quad_segs: int):
    """Union of discs of ``radius_um`` around points (GEOS cascaded union)."""
    return shapely.union_all(shapely.buffer(shapely.points(x, y), radius_um, quad_segs=quad_segs))


def _close_fill_filter(closed, min_hole_um2, min_nest_area_um2):
    return _sorted_oriented_parts(closed, min_hole_um2, min_nest_area_um2)


def _check_params(**kw):
    for k, v in kw.items():
        if not np.isfinite(v) or v < 0:
            raise InputError(f"{k}={v}: expected a finite number >= 0 (µm or µm²)")


def tumour_region_from_cells(x_um, y_um, *, tumour_cell_radius_um: float = 15.0,
                             closing_um: float = 20.0, min_hole_um2: float = 1000.0,
                             min_nest_area_um2: float = 2000.0, quad_segs: int = 4,
                             progress=None) -> TumourRegion:
    """Tumour nests from tumour-cell positions (``metrics.md``).

    The region is the union of discs of ``tumour_cell_radius_um`` around the
    tumour cells, closed by ``closing_um`` (dilate then erode), holes smaller
    than ``min_hole_um2`` filled, and components smaller than
    ``min_nest_area_um2`` dropped. The closing is computed as the union of
    discs of radius ``r + c`` eroded by ``c`` (identical to dilating the union
    of r-discs by c, but one union instead of two).

    Parameters
    ----------
    x_um, y_um : array_like
        Positions of the TUMOUR cells only (µm).
    quad_segs : int
        Segments per quarter circle of each disc (4: the polygonal disc
        deviates from the true circle by <= R(1 - cos(π/16)) ≈ 0.7 µm for
        R = 35 µm).

    Raises
    ------
    NoTumourRegionError
        No tumour cells, or no component survives the area filter.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = rng.uniform(0, 2 * np.pi, 400); r = 150 * np.sqrt(rng.random(400))
    >>> reg = tumour_region_from_cells(r * np.cos(t), r * np.sin(t))
    >>> reg.n_nests
    1
    """
    x, y = _xy(x_um, y_um, "tumour cell x_um/y_um")
    _check_params(tumour_cell_radius_um=tumour_cell_radius_um, closing_um=closing_um,
                  min_hole_um2=min_hole_um2, min_nest_area_um2=min_nest_area_um2)
    params = dict(tumour_cell_radius_um=float(tumour_cell_radius_um), closing_um=float(closing_um),
                  min_hole_um2=float(min_hole_um2), min_nest_area_um2=float(min_nest_area_um2),
                  quad_segs=int(quad_segs), n_tumour_cells=int(x.size))
    if x.size == 0:
        raise NoTumourRegionError("no tumour region: 0 tumour cells in the table; check the tumour "
                                  "phenotype names ([roles] tumour in the panel)")
    report(progress, "tumour region", 0, 2)
    grown = _union_of_discs(x, y, tumour_cell_radius_um + closing_um, quad_segs)
    closed = shapely.buffer(grown, -closing_um, quad_segs=quad_segs) if closing_um > 0 else grown
    report(progress, "tumour region", 1, 2)
    nests = _close_fill_filter(closed, min_hole_um2, min_nest_area_um2)
    report(progress, "tumour region", 2, 2)
    if not nests:
        parts = shapely.get_parts(closed)
        amax = float(shapely.area(parts).max()) if len(parts) else 0.0
        raise NoTumourRegionError(
            f"no tumour region: {x.size} tumour cells gave {len(parts)} components, all smaller "
            f"than min_nest_area_um2={min_nest_area_um2:g} (largest {amax:.0f} µm²); lower "
            "min_nest_area_um2 or check the tumour phenotype")
    return TumourRegion(nests=nests, union=shapely.MultiPolygon(nests), source="cells",
                        parameters=params)


def _even_odd(rings):
    """Region bounded by non-crossing closed rings (even-odd rule).

    A ring inside an odd number of other rings bounds a hole; nesting of any
    depth (islands in holes) is handled level by level.
    """
    if not rings:
        return shapely.MultiPolygon()
    rings = np.asarray(rings, dtype=object)
    tree = shapely.STRtree(rings)
    probe = shapely.get_point(shapely.get_exterior_ring(rings), 0)
    src, tgt = tree.query(probe, predicate="within")
    keep = src != tgt
    depth = np.bincount(src[keep], minlength=len(rings))
    geom = shapely.MultiPolygon()
    for dlev in range(int(depth.max()) + 1):
        lev = shapely.union_all(rings[depth == dlev])
        geom = shapely.union(geom, lev) if dlev % 2 == 0 else shapely.difference(geom, lev)
    return geom


def mask_to_geometry(mask, pixel_size_um: float, origin_um=(0.0, 0.0)):
    """Polygons (µm) of the True pixels of a (Y, X) mask, by marching squares.

    Pixel (row r, col c) has its centre at ``(x, y) = origin + (c, r) *
    pixel_size_um``; the outline runs half-way between True and False pixel
    centres (``skimage.measure.find_contours`` at level 0.5), so a large
    object's area equals its pixel count × pixel area to within the
    chamfered corners (1/8 px² per convex corner).

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[2:6, 3:8] = True
    >>> g = mask_to_geometry(m, 0.5)
    >>> round(g.area, 3)   # 20 px * 0.25 µm² minus 4 chamfers of 1/8 px²
    4.875
    """
    from skimage.measure import find_contours

    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask: expected a 2-D (Y, X) array, got shape {m.shape}")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise InputError(f"pixel_size_um={pixel_size_um}: expected a positive number of µm per pixel")
    m = np.pad(m.astype(bool), 1)
    if not m.any():
        return shapely.MultiPolygon()
    contours = find_contours(m.astype(np.uint8), 0.5)
    rings = []
    for c in contours:
        if len(c) < 4:
            continue
        xy = np.c_[origin_um[0] + (c[:, 1] - 1) * pixel_size_um,
                   origin_um[1] + (c[:, 0] - 1) * pixel_size_um]
        rings.append(shapely.Polygon(xy))
    if not rings:
        return shapely.MultiPolygon()
    return _even_odd(rings)


def tumour_region_from_mask(mask, pixel_size_um: float, *, closing_um: float = 20.0,
                            min_hole_um2: float = 1000.0, min_nest_area_um2: float = 2000.0,
                            origin_um=(0.0, 0.0), quad_segs: int = 8) -> TumourRegion:
    """Tumour nests from a (Y, X) boolean tumour-marker mask.

    The mask is polygonised (:func:`mask_to_geometry`), closed by
    ``closing_um`` (buffer(+c) then buffer(-c)), holes < ``min_hole_um2``
    filled, components < ``min_nest_area_um2`` dropped.

    Examples
    --------
    >>> m = np.zeros((200, 200), bool); m[50:150, 50:150] = True
    >>> reg = tumour_region_from_mask(m, 1.0)
    >>> reg.n_nests, round(reg.area_um2 / 1e4, 2)
    (1, 1.0)
    """
    _check_params(closing_um=closing_um, min_hole_um2=min_hole_um2,
                  min_nest_area_um2=min_nest_area_um2)
    geom = mask_to_geometry(mask, pixel_size_um, origin_um)
    params = dict(closing_um=float(closing_um), min_hole_um2=float(min_hole_um2),
                  min_nest_area_um2=float(min_nest_area_um2), pixel_size_um=float(pixel_size_um),
                  origin_um=tuple(map(float, origin_um)), quad_segs=int(quad_segs))
    if geom.is_empty:
        raise NoTumourRegionError("no tumour region: the tumour mask has 0 positive pixels; check "
                                  "the tumour channel gate")
    if closing_um > 0:
        geom = shapely.buffer(shapely.buffer(geom, closing_um, quad_segs=quad_segs), -closing_um,
                              quad_segs=quad_segs)
    nests = _close_fill_filter(geom, min_hole_um2, min_nest_area_um2)
    if not nests:
        parts = shapely.get_parts(geom)
        amax = float(shapely.area(parts).max()) if len(parts) else 0.0
        raise NoTumourRegionError(
            f"no tumour region: the tumour mask gave {len(parts)} components, all smaller than "
            f"min_nest_area_um2={min_nest_area_um2:g} (largest {amax:.0f} µm²)")
    return TumourRegion(nests=nests, union=shapely.MultiPolygon(nests), source="mask",
                        parameters=params)
