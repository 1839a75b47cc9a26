"""QuPath-compatible GeoJSON.

Features follow QuPath's conventions (``properties.objectType``,
``properties.classification = {name, color}``, ``properties.measurements``;
coordinates in *pixels* of the image, :mod:`tibspace.io.qupath`) so that
annotations round-trip through QuPath. Every writer is atomic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import mapping, shape

from tibspace.errors import InputError
from tibspace.io import UNCLASSIFIED, atomic_path
from tibspace.io.qupath import qupath_px_to_um, um_to_qupath_px
from tibspace.jsonable import to_jsonable
from tibspace.outputs.colours import STRUCTURE_COLOURS


GRID = 1e-3  # coordinate grid of the written files (QuPath pixels, or µm without a pixel size)


def geojson_features(geometries: Iterable, *, name: str, object_type: str = "annotation",
                     pixel_size_um: float | None = None, colour: tuple[int, int, int] | None = None,
                     measurements: Sequence[Mapping] | None = None, ids: Sequence | None = None) -> list[dict]:
    """QuPath-style GeoJSON features from shapely geometries given in µm.

    Coordinates are converted to QuPath pixels when ``pixel_size_um`` is
    given (:func:`um_to_qupath_px`; otherwise they stay in µm) and snapped to a
    grid of :data:`GRID` with GEOS's precision reducer, which keeps every
    geometry valid (plain rounding of coordinates can make rings cross).
    Numeric measurements go to ``properties.measurements`` (QuPath reads only
    numbers there); text and boolean values go to ``properties.metadata`` as
    strings, where QuPath keeps them.
    """
    geoms = np.asarray(list(geometries), dtype=object)
    keep = np.array([g is not None and not g.is_empty for g in geoms], dtype=bool)
    out = np.full(len(geoms), None, dtype=object)
    if keep.any():
        g = geoms[keep]
        if pixel_size_um:
            g = np.asarray(um_to_qupath_px(g, pixel_size_um), dtype=object)
        g = shapely.set_precision(shapely.make_valid(g), GRID)  # the reducer needs valid input
        # exact decimal coordinates in the text (the grid values carry float noise)
        out[keep] = shapely.transform(g, lambda xy: np.round(xy, 3))
    feats = []
    for i, g in enumerate(out):
        if g is None or g.is_empty:
            continue
        props = {
            "objectType": object_type,
            "classification": {"name": name, "color": list(colour or STRUCTURE_COLOURS.get(name, (200, 200, 200)))},
            "isLocked": False,
        }
        if measurements is not None:
            numeric, text = _split_measurements(measurements[i])
            props["measurements"] = numeric
            if text:
                props["metadata"] = text
        feat = {"type": "Feature", "geometry": mapping(g), "properties": props}
        if ids is not None:
            feat["id"] = str(ids[i])
        feats.append(feat)
    return feats


def _split_measurements(values: Mapping) -> tuple[dict, dict]:
    """(numeric measurements, text metadata) of one feature; NaN and None are dropped."""
    numeric, text = {}, {}
    for k, v in to_jsonable(dict(values)).items():
        if v is None:
            continue
        if isinstance(v, bool):
            text[k] = str(v).lower()
        elif isinstance(v, (int, float)):
            numeric[k] = v
        elif isinstance(v, str):
            text[k] = v
    return numeric, text


def write_geojson(features: list[dict], path: str | os.PathLike) -> Path:
    """Write a FeatureCollection atomically (coordinates as given by :func:`geojson_features`)."""
    fc = {"type": "FeatureCollection", "features": features}
    path = Path(path)
    text = json.dumps(fc, separators=(",", ":"), allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_geojson_annotations(path: str | os.PathLike, *, pixel_size_um: float | None = None,
                             classification: str | None = None) -> list[tuple[str | None, shapely.Geometry]]:
    """Read (classification name, geometry in µm) pairs from a QuPath GeoJSON export.

    Accepts a FeatureCollection, a list of features or a single feature.
    ``pixel_size_um`` converts QuPath's pixel coordinates to µm.
    ``classification`` keeps only features of that class (case-insensitive).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable GeoJSON file ({exc})") from None
    feats = data.get("features", [data]) if isinstance(data, dict) else data
    out = []
    for f in feats:
        if not isinstance(f, dict) or "geometry" not in f:
            continue
        cls = ((f.get("properties") or {}).get("classification") or {}).get("name")
        if classification is not None and (cls or "").lower() != classification.lower():
            continue
        g = shape(f["geometry"])
        if pixel_size_um:
            g = qupath_px_to_um(g, pixel_size_um)
        out.append((cls, g))
    return out


def write_cell_detections(cells, path: str | os.PathLike, *, pixel_size_um: float | None,
                          measurements: Sequence[str] = ("area_um2", "signed_dist_um")) -> Path:
    """Every cell as a QuPath *detection* (a point at its centroid) classified by phenotype.

    QuPath 0.4+ imports the file with *File › Import objects from file*; the
    classification carries the phenotype (and its colour), so phenotypes can
    be reviewed on the image. ``measurements`` that exist and are numeric are
    attached (``NaN`` left out). Coordinates follow :func:`um_to_qupath_px`.
    Written as text in one vectorised pass (a million cells in seconds).
    """
    from tibspace.outputs.colours import phenotype_colour

    xy = cells[["x_um", "y_um"]].to_numpy(dtype=float)
    if pixel_size_um:
        xy = xy / float(pixel_size_um) + 0.5
    xs, ys = (np.char.mod("%.3f", xy[:, k]) for k in (0, 1))
    ph = cells["phenotype"].astype(str).to_numpy() if "phenotype" in cells else np.full(len(cells), "cell")
    names, inverse = np.unique(ph, return_inverse=True)
    # an unclassified cell (an empty QuPath class read back) carries no classification, as in QuPath
    cls = np.array(["" if n == UNCLASSIFIED else
                    '"classification":' + json.dumps({"name": n, "color": list(phenotype_colour(n))}) + ","
                    for n in names], dtype=object)[inverse]
    ids = cells["cell_id"].astype(str).to_numpy() if "cell_id" in cells else np.arange(1, len(cells) + 1).astype(str)
    meas_cols = [c for c in measurements if c in cells and np.issubdtype(cells[c].dtype, np.number)]
    parts = []
    for c in meas_cols:
        v = cells[c].to_numpy(dtype=float)
        txt = np.char.mod(f'"{c}":%.6g', v).astype(object)
        txt[~np.isfinite(v)] = ""
        parts.append(txt)
    meas = [",".join(p for p in row if p) for row in zip(*parts)] if parts else [""] * len(cells)
    feats = [f'{{"type":"Feature","id":"cell-{i}","geometry":{{"type":"Point","coordinates":[{x},{y}]}},'
             f'"properties":{{"objectType":"detection",{c}"measurements":{{{m}}}}}}}'
             for i, x, y, c, m in zip(ids, xs, ys, cls, meas)]
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write('{"type":"FeatureCollection","features":[')
            fh.write(",".join(feats))
            fh.write("]}")
    return path
