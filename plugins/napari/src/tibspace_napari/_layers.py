"""PipelineResult → napari layers (pure functions, no viewer needed).

Every function returns napari *LayerDataTuples* ``(data, kwargs, layer_type)``
that ``viewer._add_layer_from_data(*t)`` (or an npe2 reader) turns into layers.
Nothing here analyses anything: the numbers and geometries all come from the
:class:`tibspace.pipeline.PipelineResult`.

Coordinates
-----------
One world in micrometres, (row, col) = (y, x):

- raster layers (cell labels, masks) keep their pixels and get
  ``scale=(px, px)``, so pixel (r, c) sits at (r * px, c * px) µm;
- vector layers (points, shapes, vectors) hold µm coordinates with scale 1:
  a cell at ``(x_um, y_um)`` is the point ``(y_um, x_um)``, exactly on its
  pixels (the cell table's convention, see docs/architecture.md).

Scale
-----
napari draws labels layers of any size cheaply (and these use strided
multiscale views, which cost no memory), but Points layers slow down beyond
~100k points and Shapes layers beyond a few thousand shapes (napari #7945,
napari-spatialdata #213/#372). So:

- ``n_cells <= max_points``: a Points layer "cells by phenotype";
  above: a labels layer of the same name whose values are phenotype codes
  (a lazy look-up of the cell labels), coloured per phenotype;
- geometry comes merged (the barrier analysis' covered/gap runs are one
  path each) and is simplified to :data:`SIMPLIFY_UM` (1 µm, below a cell);
  filled polygons (napari triangulates them in Python) are drawn only up to
  :data:`MAX_FILLED` pieces (and nests up to :data:`FILL_MAX_CELLS` cells),
  outlines beyond; if more than ``max_shapes``
  shapes remain, a Vectors layer (one line per outline edge, drawn in one
  GPU call) replaces the Shapes layer.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import shapely

from tibspace.outputs import STRUCTURE_COLOURS, phenotype_colour

__all__ = [
    "MAX_POINTS", "MAX_SHAPES", "FILL_MAX_CELLS", "LAYER_NAMES", "FEATURE_COLUMNS",
    "phenotype_rgba", "cell_labels_layer", "phenotype_points_layer", "phenotype_labels_layer",
    "cell_layers", "nest_polygons", "polygon_pieces", "nest_layer", "barrier_layers",
    "exclusion_layer", "mask_layers", "result_layers", "create_layers", "gate_preview_layer",
    "positive_cells", "label_pyramid",
]

#: Above this many cells, phenotypes are drawn as a labels layer, not points.
MAX_POINTS = 100_000
#: Above this many shapes in one layer, outlines are drawn as a Vectors layer.
MAX_SHAPES = 5_000

#: Above this many filled polygon pieces in a layer, only outlines are drawn.
MAX_FILLED = 500
#: Above this many cells the nests are drawn as outlines only: their 6 % tint costs
#: ~12 ms CPU per frame on software OpenGL whatever the cell count (as much as ~10k
#: points; scripts/napari_scale_check.py --per-layer), and with this many tumour
#: dots the nests already show. Hover over an outline still gives the nest's numbers.
FILL_MAX_CELLS = 50_000
#: Outlines are simplified to this tolerance (µm) for display (sub-cell).
SIMPLIFY_UM = 1.0

#: Dot diameter as a fraction of the median cell's equivalent diameter (the
#: stain stays visible around each dot).
POINT_SIZE_FRACTION = 0.6

#: Names of the layers :func:`result_layers` makes (bottom to top).
LAYER_NAMES = ("cells", "NET mask", "Col1 mask", "exclusion zones", "tumour nests",
               "cells by phenotype", "barrier covered", "barrier gaps")

#: Cell-table columns shown on hover (those present in the table).
FEATURE_COLUMNS = ("cell_id", "phenotype", "signed_dist_um", "compartment", "nest_id",
                   "segment_id", "shield_coverage", "shielded", "t_contact", "area_um2")

#: Per-nest numbers shown on hover over a nest (those present), in order.
NEST_FEATURES = ("nest_id", "area_um2", "perimeter_um", "immune_phenotype", "infiltration_ratio",
                 "barrier_coverage", "n_gaps", "largest_gap_um", "macrophage_caf_ratio",
                 "link_p_value", "zone_perimeter_fraction", "shielded_fraction",
                 "boundary_shield_fraction", "t_contact_rate")

#: Colours of the NET / collagen-I mask layers (RGB 0-255).
MASK_COLOURS = {"net": (190, 60, 255), "col1": (120, 200, 255)}
_MASK_NAMES = {"net": "NET mask", "col1": "Col1 mask"}
_TRANSPARENT = np.zeros(4)


def _rgba(rgb: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    return np.array([rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0, alpha])


def phenotype_rgba(phenotypes: Iterable[str]) -> dict[str, np.ndarray]:
    """RGBA (0–1) colour of each phenotype, shared with tibspace's reports/GeoJSON.

    Examples
    --------
    >>> phenotype_rgba(["tumour"])["tumour"].round(2).tolist()
    [0.18, 0.63, 0.26, 1.0]
    """
    return {str(p): _rgba(phenotype_colour(str(p))) for p in phenotypes}


def label_pyramid(labels: Any, max_side: int = 4096, min_side: int = 512) -> Any:
    """Strided views ``labels[::2**k, ::2**k]`` as a napari multiscale list.

    Numpy strided views cost no memory; napari then draws the level that fits
    the screen instead of downsampling a huge array on every redraw. Arrays
    with sides <= ``max_side`` are returned unchanged.

    Examples
    --------
    >>> levels = label_pyramid(np.zeros((5000, 3000), np.int32))
    >>> [lv.shape for lv in levels]
    [(5000, 3000), (2500, 1500), (1250, 750)]
    """
    if max(labels.shape) <= max_side:
        return labels
    levels = [labels]
    f = 2
    while min(labels.shape) // f >= min_side:
        levels.append(labels[::f, ::f])
        f *= 2
    return levels


def _is_multiscale(data: Any) -> bool:
    return isinstance(data, list)


def _features(cells: pd.DataFrame, index: bool = False) -> pd.DataFrame:
    cols = [c for c in FEATURE_COLUMNS if c in cells.columns]
    feats = cells[cols].reset_index(drop=True).copy()
    if "phenotype" in feats:
        feats["phenotype"] = feats["phenotype"].astype(str)
    if index:
        # napari Labels look features up by the "index" column (= label value).
        feats.insert(0, "index", cells["cell_id"].to_numpy())
    return feats


def cell_labels_layer(labels: Any, cells: pd.DataFrame, pixel_size_um: float) -> tuple:
    """Labels layer "cells": cell outlines (values = ``cell_id``), features on hover.

    Drawn as thin white contours so the stains stay visible underneath.

    Examples
    --------
    >>> lab = np.zeros((20, 20), np.int32); lab[2:6, 2:6] = 1
    >>> cells = pd.DataFrame({"cell_id": [1], "x_um": [1.75], "y_um": [1.75],
    ...                       "phenotype": ["tumour"]})
    >>> data, kw, kind = cell_labels_layer(lab, cells, 0.5)
    >>> kind, kw["name"], kw["scale"], kw["features"]["index"].tolist()
    ('labels', 'cells', (0.5, 0.5), [1])
    """
    from napari.utils.colormaps import DirectLabelColormap

    px = float(pixel_size_um)
    data = label_pyramid(labels)
    cmap = DirectLabelColormap(color_dict={None: np.array([1.0, 1.0, 1.0, 1.0]),
                                           0: _TRANSPARENT})
    kwargs = {"name": "cells", "scale": (px, px), "features": _features(cells, index=True),
              "colormap": cmap, "opacity": 0.35, "blending": "translucent",
              "multiscale": _is_multiscale(data), "visible": False,
              # Not a constructor argument: create_layers() sets it afterwards.
              "metadata": {"tibspace": {"kind": "cells", "set_after": {"contour": 1}}}}
    return data, kwargs, "labels"


def _point_size_um(cells: pd.DataFrame) -> float:
    # Slightly smaller than a typical cell so neighbours stay distinct.
    if "area_um2" in cells and len(cells):
        area = float(np.nanmedian(cells["area_um2"].to_numpy(dtype=float)))
        if np.isfinite(area) and area > 0:
            return POINT_SIZE_FRACTION * 2.0 * np.sqrt(area / np.pi)
    return 8.0


def phenotype_points_layer(cells: pd.DataFrame) -> tuple:
    """Points layer "cells by phenotype": one dot per cell at ``(y_um, x_um)``, scale 1.

    Examples
    --------
    >>> cells = pd.DataFrame({"cell_id": [1, 2], "x_um": [10.0, 20.0], "y_um": [5.0, 7.5],
    ...                       "phenotype": ["tumour", "CD8_T"]})
    >>> data, kw, kind = phenotype_points_layer(cells)
    >>> kind, data.tolist(), kw["features"]["phenotype"].tolist()
    ('points', [[5.0, 10.0], [7.5, 20.0]], ['tumour', 'CD8_T'])
    """
    pts = cells[["y_um", "x_um"]].to_numpy(dtype=np.float64)
    ph = cells["phenotype"].astype(str).to_numpy()
    table = phenotype_rgba(pd.unique(ph))
    colours = np.array([table[p] for p in ph]).reshape(len(ph), 4)
    kwargs = {"name": "cells by phenotype", "scale": (1.0, 1.0), "size": _point_size_um(cells),
              # one RGBA per point, no border, no antialiasing ramp: the cheapest
              # fragment shader (measured ~15 % faster per frame at 100k points)
              "face_color": colours, "border_width": 0.0, "antialiasing": 0.0, "features": _features(cells),
              "opacity": 0.85, "blending": "translucent",
              "metadata": {"tibspace": {"kind": "phenotype",
                                        "colours": {k: v.tolist() for k, v in table.items()}}}}
    return pts, kwargs, "points"


def _lookup(labels: Any, lut: np.ndarray) -> Any:
    """Lazy ``lut[labels]`` over a (multiscale) labels array (dask, per block)."""
    import dask.array as da

    def one(level: Any) -> Any:
        arr = level if isinstance(level, da.Array) else da.from_array(level, chunks=2048)
        return arr.map_blocks(lambda b: lut[np.clip(b, 0, lut.size - 1)], dtype=lut.dtype)

    if _is_multiscale(labels):
        return [one(lv) for lv in labels]
    if max(labels.shape) <= 4096:
        return lut[np.clip(np.asarray(labels), 0, lut.size - 1)]
    return one(labels)


def _phenotype_codes(cells: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    names = sorted(pd.unique(cells["phenotype"].astype(str)))
    lut = np.zeros(int(cells["cell_id"].max()) + 1 if len(cells) else 1, dtype=np.uint8)
    code = pd.Categorical(cells["phenotype"].astype(str), categories=names).codes + 1
    lut[cells["cell_id"].to_numpy()] = code
    return lut, names


def phenotype_labels_layer(labels: Any, cells: pd.DataFrame, pixel_size_um: float) -> tuple:
    """Labels layer "cells by phenotype" for big slides: value = phenotype code.

    The code image is a lazy look-up ``lut[cell_labels]`` (no copy of the
    slide); a :class:`~napari.utils.colormaps.DirectLabelColormap` gives each
    code its phenotype colour and hovering shows the phenotype name.
    """
    from napari.utils.colormaps import DirectLabelColormap

    px = float(pixel_size_um)
    lut, names = _phenotype_codes(cells)
    rgba = phenotype_rgba(names)
    cmap = DirectLabelColormap(color_dict={0: _TRANSPARENT, None: _TRANSPARENT,
                                           **{i + 1: rgba[n] for i, n in enumerate(names)}})
    data = _lookup(label_pyramid(labels), lut)
    feats = pd.DataFrame({"index": np.arange(1, len(names) + 1), "phenotype": names})
    kwargs = {"name": "cells by phenotype", "scale": (px, px), "colormap": cmap,
              "features": feats, "opacity": 0.7, "blending": "translucent",
              "multiscale": _is_multiscale(data),
              "metadata": {"tibspace": {"kind": "phenotype",
                                        "colours": {k: v.tolist() for k, v in rgba.items()}}}}
    return data, kwargs, "labels"


def cell_layers(cells: pd.DataFrame, labels: Any, pixel_size_um: float, *,
                max_points: int = MAX_POINTS) -> list[tuple]:
    """Cell outlines (if labels) + phenotype layer (points or labels, by size)."""
    out = []
    if labels is not None:
        out.append(cell_labels_layer(labels, cells, pixel_size_um))
    if len(cells) <= max_points or labels is None:
        # Without labels there is no raster alternative; points it is.
        out.append(phenotype_points_layer(cells))
    else:
        out.append(phenotype_labels_layer(labels, cells, pixel_size_um))
    return out


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


def mask_layers(masks: Optional[dict], pixel_size_um: float,
                image_shape: Optional[Sequence[int]] = None) -> list[tuple]:
    """Labels layers "NET mask" and "Col1 mask" (value 1 = in mask).

    A mask at another resolution than the image (e.g. computed on a pyramid
    level) is scaled so it covers the same µm extent.
    """
    from napari.utils.colormaps import DirectLabelColormap

    out = []
    for key in ("net", "col1"):
        m = (masks or {}).get(key)
        if m is None:
            continue
        px = float(pixel_size_um)
        sy = sx = px
        if image_shape is not None:
            sy = px * image_shape[0] / m.shape[0]
            sx = px * image_shape[1] / m.shape[1]
        data = label_pyramid(m.view(np.uint8) if m.dtype == bool else m)
        cmap = DirectLabelColormap(color_dict={0: _TRANSPARENT, None: _rgba(MASK_COLOURS[key])})
        out.append((data, {"name": _MASK_NAMES[key], "scale": (sy, sx), "colormap": cmap,
                           "opacity": 0.6, "blending": "translucent",
                           "multiscale": _is_multiscale(data),
                           "metadata": {"tibspace": {"kind": key}}}, "labels"))
    return out


def _with_units(tuples: list[tuple]) -> list[tuple]:
    for _, kwargs, _ in tuples:
        kwargs.setdefault("units", ("um", "um"))
    return tuples


def result_layers(result: Any, *, max_points: int = MAX_POINTS,
                  max_shapes: int = MAX_SHAPES) -> list[tuple]:
    """All result layers of a ``PipelineResult``, bottom to top.

    Parameters
    ----------
    result : tibspace.pipeline.PipelineResult
        Uses ``cells``, ``labels``, ``pixel_size_um``, ``image_shape``,
        ``masks``, ``exclusion_zones``, ``region``, ``per_nest`` and the
        barrier analysis' ``runs`` (``analyses["barrier"]``).
    max_points : int
        Above this many cells, phenotypes are a labels layer (needs ``labels``).
    max_shapes : int
        Above this many shapes in a layer, outlines become a Vectors layer.

    Returns
    -------
    list of LayerDataTuple
        Named as in :data:`LAYER_NAMES` (layers with nothing to show omitted).
    """
    px = float(result.pixel_size_um)
    labels = getattr(result, "labels", None)
    cells = result.cells
    cl = cell_layers(cells, labels, px, max_points=max_points)
    out: list[tuple] = []
    if labels is not None:
        out.append(cl.pop(0))
    out += mask_layers(getattr(result, "masks", None), px, getattr(result, "image_shape", None))
    for t in (exclusion_layer(getattr(result, "exclusion_zones", None), max_shapes=max_shapes),
              nest_layer(getattr(result, "region", None), getattr(result, "per_nest", None),
                         max_shapes=max_shapes, filled=len(cells) <= FILL_MAX_CELLS)):
        if t is not None:
            out.append(t)
    out += cl
    barrier = (getattr(result, "analyses", None) or {}).get("barrier")
    out += barrier_layers(getattr(barrier, "runs", None), max_shapes=max_shapes)
    return _with_units(out)


def create_layers(tuples: Iterable[tuple]) -> list:
    """napari layers from LayerDataTuples, applying post-creation settings.

    Some display settings (labels ``contour``) are not constructor arguments;
    they travel in ``metadata["tibspace"]["set_after"]``.
    """
    from napari.layers import Layer

    out = []
    for data, kwargs, kind in tuples:
        layer = Layer.create(data, kwargs, kind)
        for attr, value in kwargs.get("metadata", {}).get("tibspace", {}).get("set_after",
                                                                                {}).items():
            setattr(layer, attr, value)
        out.append(layer)
    return out


# ---------------------------------------------------------------- gate preview
def positive_cells(cells: pd.DataFrame, column: str, gate: float) -> np.ndarray:
    """Boolean per cell: ``cells[column] > gate`` (tibspace's positivity rule).

    Examples
    --------
    >>> positive_cells(pd.DataFrame({"CD8": [1.0, 5.0, 9.0]}), "CD8", 5.0).tolist()
    [False, False, True]
    """
    from tibspace.cells import Gate, positivity

    g = Gate(column, column, "manual", float(gate), 0, len(cells))
    return positivity(cells, {column: g})[column].to_numpy(dtype=bool)


def gate_preview_layer(cells: pd.DataFrame, column: str, gate: float, *,
                       labels: Any = None, pixel_size_um: float = 1.0,
                       max_points: int = MAX_POINTS) -> tuple:
    """Layer "gate preview" showing the cells above ``gate`` for one marker column.

    Points (yellow rings at the positive cells) for up to ``max_points``
    cells, else a labels layer (positive cells filled yellow, lazy look-up).
    The layer's ``metadata["tibspace"]["n_positive"]`` is the count.
    """
    pos = positive_cells(cells, column, gate)
    meta = {"tibspace": {"kind": "gate", "column": column, "gate": float(gate),
                         "n_positive": int(pos.sum())}}
    if len(cells) <= max_points or labels is None:
        pts = cells.loc[pos, ["y_um", "x_um"]].to_numpy(dtype=np.float64).reshape(-1, 2)
        kwargs = {"name": "gate preview", "scale": (1.0, 1.0),
                  "size": _point_size_um(cells) * 1.4, "face_color": _TRANSPARENT,
                  "border_color": "yellow", "border_width": 0.2,
                  "border_width_is_relative": True, "metadata": meta}
        return _with_units([(pts, kwargs, "points")])[0]
    from napari.utils.colormaps import DirectLabelColormap

    lut = np.zeros(int(cells["cell_id"].max()) + 1, dtype=np.uint8)
    lut[cells["cell_id"].to_numpy()[pos]] = 1
    meta["tibspace"]["lut"] = lut
    data = _lookup(label_pyramid(labels), lut)
    cmap = DirectLabelColormap(color_dict={0: _TRANSPARENT, None: _rgba((255, 255, 0))})
    return _with_units([(data, {"name": "gate preview", "scale": (pixel_size_um, pixel_size_um),
                                "colormap": cmap, "opacity": 0.6,
                                "multiscale": _is_multiscale(data), "metadata": meta},
                         "labels")])[0]
