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

The layers are built in :mod:`._layer_cells` (cell labels, phenotypes, gate
preview), :mod:`._layer_rasters` (label pyramids, NET / collagen-I masks),
:mod:`._layer_shapes` (nests, barrier runs, exclusion zones) and
:mod:`._layer_style` (limits, names, colours); this module assembles them and
re-exports their names.

Examples
--------
>>> from tibspace_napari._layers import LAYER_NAMES, phenotype_rgba
>>> LAYER_NAMES[0], phenotype_rgba(["tumour"])["tumour"].shape
('cells', (4,))
"""

from __future__ import annotations

from typing import Any, Iterable

from ._layer_cells import (  # noqa: F401
    cell_labels_layer,
    cell_layers,
    gate_preview_layer,
    phenotype_labels_layer,
    phenotype_points_layer,
    positive_cells,
)
from ._layer_rasters import label_pyramid, mask_layers  # noqa: F401
from ._layer_shapes import (  # noqa: F401
    _polygon_layer,
    barrier_layers,
    exclusion_layer,
    nest_layer,
    nest_polygons,
    polygon_pieces,
)
from ._layer_style import (  # noqa: F401
    FEATURE_COLUMNS,
    FILL_MAX_CELLS,
    LAYER_NAMES,
    MASK_COLOURS,
    MAX_FILLED,
    MAX_POINTS,
    MAX_SHAPES,
    NEST_FEATURES,
    POINT_SIZE_FRACTION,
    SIMPLIFY_UM,
    _with_units,
    phenotype_rgba,
)

__all__ = [
    "MAX_POINTS", "MAX_SHAPES", "FILL_MAX_CELLS", "LAYER_NAMES", "FEATURE_COLUMNS",
    "phenotype_rgba", "cell_labels_layer", "phenotype_points_layer", "phenotype_labels_layer",
    "cell_layers", "nest_polygons", "polygon_pieces", "nest_layer", "barrier_layers",
    "exclusion_layer", "mask_layers", "result_layers", "create_layers", "gate_preview_layer",
    "positive_cells", "label_pyramid",
]


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
