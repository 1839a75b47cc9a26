"""Cell layers: cell labels, cells by phenotype (points or labels) and the gate preview.

Points hold µm coordinates ``(y_um, x_um)`` with scale 1; labels layers keep
the label pixels with ``scale=(px, px)``. Above ``max_points`` cells, points
become a labels layer of codes looked up lazily from the cell labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ._layer_rasters import _is_multiscale, _lookup, label_pyramid
from ._layer_style import (
    _TRANSPARENT,
    FEATURE_COLUMNS,
    MAX_POINTS,
    POINT_SIZE_FRACTION,
    _rgba,
    _with_units,
    phenotype_rgba,
)


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
