"""Shape layers: tumour nests, barrier covered / gap runs and exclusion zones.

Coordinates are µm ``(y, x)`` with scale 1. Outlines are simplified to
:data:`SIMPLIFY_UM`; polygons with holes are drawn as hole-free pieces;
beyond ``max_shapes`` shapes a Vectors layer (one line per edge) replaces
the Shapes layer.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import shapely
from tibspace.outputs import STRUCTURE_COLOURS

from ._layer_style import (
    _TRANSPARENT,
    MAX_FILLED,
    MAX_SHAPES,
    NEST_FEATURES,
    SIMPLIFY_UM,
    _rgba,
)


# ---------------------------------------------------------------- geometry
def _yx(coords: np.ndarray) -> np.ndarray:
    return np.asarray(coords, dtype=np.float64)[:, :2][:, ::-1].copy()


def nest_polygons(region: Any) -> tuple[list[shapely.Polygon], np.ndarray]:
    """The nests of a tumour region as polygons and their ``nest_id``.

    Accepts the pipeline's ``TumourRegion`` (``.nests``: GeoDataFrame-like with
    ``nest_id`` and ``geometry``, or a list of polygons), a DataFrame with a
    ``geometry`` column, a list of polygons, or one (Multi)Polygon.
    """
    if region is None:
        return [], np.zeros(0, dtype=np.int64)
    obj = region
    for attr in ("nests", "polygons", "geometry"):
        if not isinstance(obj, (pd.DataFrame, shapely.Geometry, list, tuple, np.ndarray)) \
                and hasattr(obj, attr):
            obj = getattr(obj, attr)
            break
    if isinstance(obj, pd.DataFrame):
        geoms = list(obj["geometry"])
        ids = obj["nest_id"].to_numpy() if "nest_id" in obj else np.arange(1, len(geoms) + 1)
    elif isinstance(obj, shapely.Geometry):
        geoms = list(shapely.get_parts(obj))
        ids = np.arange(1, len(geoms) + 1)
    else:
        geoms = list(obj)
        ids = np.arange(1, len(geoms) + 1)
    polys, pid = [], []
    for g, i in zip(geoms, ids):
        for p in shapely.get_parts(g):
            if isinstance(p, shapely.Polygon) and not p.is_empty:
                polys.append(p)
                pid.append(i)
    return polys, np.asarray(pid, dtype=np.int64)


def _outline_vectors(geoms: Sequence[shapely.Geometry]) -> np.ndarray:
    """Every edge of every outline as a napari vector ``[[y, x], [dy, dx]]``."""
    rings = []
    for g in geoms:
        b = shapely.boundary(g) if isinstance(g, shapely.Polygon) else g
        rings.extend(shapely.get_parts(b))
    vecs = []
    for r in rings:
        yx = _yx(shapely.get_coordinates(r))
        if len(yx) > 1:
            vecs.append(np.stack([yx[:-1], np.diff(yx, axis=0)], axis=1))
    return np.concatenate(vecs) if vecs else np.zeros((0, 2, 2))


def _vectors_layer(geoms, name: str, rgb: Sequence[int], width_um: float) -> tuple:
    kwargs = {"name": name, "edge_color": _rgba(rgb), "edge_width": width_um, "length": 1.0,
              "vector_style": "line", "scale": (1.0, 1.0),
              "metadata": {"tibspace": {"kind": name, "n_shapes": len(geoms)}}}
    return _outline_vectors(geoms), kwargs, "vectors"


def polygon_pieces(poly: shapely.Polygon) -> list[shapely.Polygon]:
    """Split a polygon with holes into hole-free pieces covering the same area.

    napari polygons cannot have holes; cutting the polygon along a vertical
    line through every hole opens each hole into the pieces' outlines.

    Examples
    --------
    >>> ring = shapely.Polygon([(0, 0), (10, 0), (10, 10), (0, 10)],
    ...                        [[(4, 4), (6, 4), (6, 6), (4, 6)]])
    >>> pieces = polygon_pieces(ring)
    >>> all(len(p.interiors) == 0 for p in pieces), sum(p.area for p in pieces)
    (True, 96.0)
    """
    if len(poly.interiors) == 0:
        return [poly]
    x0, y0, x1, y1 = poly.bounds
    cuts = sorted({shapely.Polygon(r).representative_point().x for r in poly.interiors})
    xs = [x0 - 1.0, *cuts, x1 + 1.0]
    boxes = shapely.box(np.array(xs[:-1]), y0 - 1.0, np.array(xs[1:]), y1 + 1.0)
    pieces = []
    for part in shapely.get_parts(shapely.intersection(poly, boxes)):
        for p in shapely.get_parts(part):
            if isinstance(p, shapely.Polygon) and p.area > 0:
                pieces.extend(polygon_pieces(p) if len(p.interiors) else [p])
    return pieces


def _polygon_layer(polys: list[shapely.Polygon], features: pd.DataFrame, name: str,
                   rgb: Sequence[int], face_alpha: float, width_um: float,
                   max_shapes: int, simplify_um: float = SIMPLIFY_UM,
                   max_filled: int = MAX_FILLED) -> tuple:
    """Filled polygons (hole-free pieces, no edge) + their outlines (paths), one layer.

    Outlines are simplified to ``simplify_um`` (napari triangulates filled
    polygons in Python, at a cost that grows ~quadratically with vertices).
    With more than ``max_filled`` filled pieces only the outlines are drawn;
    with more than ``max_shapes`` shapes, a Vectors layer is used.
    """
    if simplify_um > 0:
        polys = [p if s.is_empty or not isinstance(s, shapely.Polygon) else s
                 for p, s in zip(polys, shapely.simplify(np.asarray(polys, dtype=object),
                                                         simplify_um))]
    pieces = [polygon_pieces(p) for p in polys]
    rings = [[p.exterior, *p.interiors] for p in polys]
    n_fill = sum(len(a) for a in pieces)
    filled = n_fill <= max_filled
    n_shapes = sum(len(b) for b in rings) + (n_fill if filled else 0)
    if n_shapes > max_shapes:
        return _vectors_layer(polys, name, rgb, width_um)
    data, types, widths, edges, faces, rows = [], [], [], [], [], []
    edge, face, clear = _rgba(rgb), _rgba(rgb, face_alpha), _TRANSPARENT
    for i, (pcs, rgs) in enumerate(zip(pieces, rings)):
        for p in (pcs if filled else []):
            data.append(_yx(shapely.get_coordinates(p.exterior))[:-1])
            types.append("polygon"); widths.append(0.0); edges.append(clear); faces.append(face)
            rows.append(i)
        for r in rgs:
            data.append(_yx(shapely.get_coordinates(r)))
            types.append("path"); widths.append(width_um); edges.append(edge); faces.append(clear)
            rows.append(i)
    feats = features.reset_index(drop=True).iloc[rows].reset_index(drop=True)
    feats.insert(len(feats.columns), "part", np.where(np.array(types) == "polygon", "area",
                                                      "outline"))
    kwargs = {"name": name, "shape_type": types, "scale": (1.0, 1.0),
              "edge_color": np.array(edges).reshape(-1, 4),
              "face_color": np.array(faces).reshape(-1, 4), "edge_width": widths,
              "features": feats, "opacity": 1.0, "blending": "translucent",
              "metadata": {"tibspace": {"kind": name, "n_polygons": len(polys),
                                        "filled": filled, "simplify_um": simplify_um}}}
    return data, kwargs, "shapes"


def nest_layer(region: Any, per_nest: Optional[pd.DataFrame] = None, *,
               max_shapes: int = MAX_SHAPES, width_um: float = 3.0, filled: bool = True) -> Optional[tuple]:
    """Shapes layer "tumour nests": filled nests with outlines, per-nest numbers on hover.

    Nests with holes are drawn as hole-free pieces (:func:`polygon_pieces`)
    plus every ring as an outline; the numbers come from ``per_nest``
    (joined on ``nest_id``). ``filled=False``: outlines only.
    """
    polys, ids = nest_polygons(region)
    if not polys:
        return None
    feats = pd.DataFrame({"nest_id": ids,
                          "area_um2": shapely.area(np.asarray(polys, dtype=object))})
    if per_nest is not None and "nest_id" in per_nest:
        cols = [c for c in NEST_FEATURES if c in per_nest.columns and c != "area_um2"]
        feats = feats.merge(per_nest[cols], on="nest_id", how="left")
    return _polygon_layer(polys, feats, "tumour nests", STRUCTURE_COLOURS["tumour_nest"],
                          0.06, width_um, max_shapes, max_filled=MAX_FILLED if filled else 0)


def _path_layer(runs: pd.DataFrame, name: str, rgb: Sequence[int], width_um: float,
                max_shapes: int) -> tuple:
    geoms = list(shapely.simplify(np.asarray(list(runs["geometry"]), dtype=object), SIMPLIFY_UM))
    if len(geoms) > max_shapes:
        return _vectors_layer(geoms, name, rgb, width_um)
    data = [_yx(shapely.get_coordinates(g)) for g in geoms]
    kwargs = {"name": name, "shape_type": "path", "scale": (1.0, 1.0),
              "edge_color": _rgba(rgb), "edge_width": width_um,
              "features": runs.drop(columns="geometry").reset_index(drop=True),
              "blending": "translucent", "metadata": {"tibspace": {"kind": name}}}
    return data, kwargs, "shapes"


def barrier_layers(runs: Optional[pd.DataFrame], *, max_shapes: int = MAX_SHAPES,
                   width_um: float = 6.0) -> list[tuple]:
    """Paths "barrier covered" (blue) and "barrier gaps" (red) along nest boundaries.

    ``runs`` is the barrier analysis' own run table
    (:attr:`tibspace.barrier.BarrierResult.runs`: ``nest_id``, ``covered``,
    ``length_um``, ``geometry`` ...), so what is drawn is exactly what was
    measured (10 µm resolution); boundary that is not assessable (outside the
    tissue) is in neither table and is not drawn.
    """
    if runs is None or len(runs) == 0 or "geometry" not in runs or "covered" not in runs:
        return []
    out = []
    for covered, name, key in ((True, "barrier covered", "barrier_covered"),
                               (False, "barrier gaps", "barrier_gap")):
        sel = runs[runs["covered"].astype(bool) == covered]
        if len(sel):
            out.append(_path_layer(sel, name, STRUCTURE_COLOURS[key], width_um, max_shapes))
    return out


def exclusion_layer(zones: Optional[Sequence[shapely.Geometry]], *,
                    max_shapes: int = MAX_SHAPES, width_um: float = 2.0) -> Optional[tuple]:
    """Shapes layer "exclusion zones": polygons where T cells are missing."""
    polys = [p for z in (zones or []) for p in shapely.get_parts(z)
             if isinstance(p, shapely.Polygon) and not p.is_empty]
    if not polys:
        return None
    feats = pd.DataFrame({"zone": np.arange(1, len(polys) + 1),
                          "area_um2": shapely.area(np.asarray(polys, dtype=object))})
    return _polygon_layer(polys, feats, "exclusion zones", STRUCTURE_COLOURS["exclusion_zone"],
                          0.25, width_um, max_shapes)
