"""QuPath-compatible GeoJSON.

Features follow QuPath's conventions (``properties.objectType``,
``properties.classification = {name, color}``, ``properties.measurements``;
coordinates in *pixels* of the image, :mod:`tibspace.io.qupath`) so that
annotations round-trip through QuPath. Every writer is atomic.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import shape

from tibspace.errors import InputError
from tibspace.io import UNCLASSIFIED, atomic_path
from tibspace.io.qupath import qupath_px_to_um, um_to_qupath_px
from tibspace.jsonable import to_jsonable
from tibspace.outputs.colours import STRUCTURE_COLOURS


GRID = 1e-3  # coordinate grid of the written files (QuPath pixels, or µm without a pixel size)


def geojson_features(geometries: Iterable, *, name: str, object_type: str = "annotation",
                     pixel_size_um: float | None = None, colour: tuple[int, int, int] | None = None,
                     measurements: Sequence[Mapping] | None = None, ids: Sequence | None = None,
                     geometry_text: bool = False) -> list[dict]:
    """QuPath-style GeoJSON features from shapely geometries given in µm.

    Coordinates are converted to QuPath pixels when ``pixel_size_um`` is
    given (:func:`um_to_qupath_px`; otherwise they stay in µm) and snapped to a
    grid of :data:`GRID` with GEOS's precision reducer, which keeps every
    geometry valid (plain rounding of coordinates can make rings cross).
    Numeric measurements go to ``properties.measurements`` (QuPath reads only
    numbers there); text and boolean values go to ``properties.metadata`` as
    strings, where QuPath keeps them. ``geometry_text=True`` keeps each
    ``geometry`` as the GeoJSON text GEOS wrote (a :class:`GeometryText`),
    which :func:`write_geojson` copies into the file as is, instead of a dict.
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
    # GEOS writes the GeoJSON of every geometry in one call (shapely's mapping() walks coordinates in Python)
    shapes = np.full(len(out), None, dtype=object)
    valid = np.array([g is not None and not g.is_empty for g in out], dtype=bool)
    if valid.any():
        texts = shapely.to_geojson(out[valid])
        shapes[valid] = [GeometryText(t) for t in texts] if geometry_text else [json.loads(t) for t in texts]
    feats = []
    for i in np.flatnonzero(valid):
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
        feat = {"type": "Feature", "geometry": shapes[i], "properties": props}
        if ids is not None:
            feat["id"] = str(ids[i])
        feats.append(feat)
    return feats


class GeometryText(str):
    """A geometry's GeoJSON text, written into a file verbatim by :func:`write_geojson`."""


def _split_measurements(values: Mapping) -> tuple[dict, dict]:
    """(numeric measurements, text metadata) of one feature; NaN and None are dropped."""
    numeric, text = {}, {}
    for k, v in values.items():
        t = type(v)  # plain Python values (a DataFrame's records) skip the generic conversion
        if t is float:
            v = v if math.isfinite(v) else None
        elif t not in (int, bool, str) and v is not None:
            v = to_jsonable(v)
        k = str(k)
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
    path = Path(path)
    text = '{"type":"FeatureCollection","features":[' + ",".join(map(_feature_text, features)) + "]}"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _feature_text(feature: Mapping) -> str:
    """Compact JSON of one feature, a :class:`GeometryText` geometry copied verbatim."""
    def dump(v):
        return v if isinstance(v, GeometryText) else json.dumps(v, separators=(",", ":"), allow_nan=False)
    return "{" + ",".join(json.dumps(str(k)) + ":" + dump(v) for k, v in feature.items()) + "}"


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
    attached, rounded to 3 decimals (``NaN`` left out). Coordinates follow
    :func:`um_to_qupath_px`, rounded to :data:`GRID`. The text is assembled
    column-wise by Arrow's string kernels (no Python loop over cells).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from tibspace.outputs.colours import phenotype_colour

    n = len(cells)
    ph = cells["phenotype"].astype(str).to_numpy() if "phenotype" in cells else np.full(n, "cell")
    inverse, names = pd.factorize(ph, sort=True)  # hashing, not a sort of a million strings
    # an unclassified cell (an empty QuPath class read back) carries no classification, as in QuPath
    classes = pa.array(["" if nm == UNCLASSIFIED else
                        '"classification":' + json.dumps({"name": nm, "color": list(phenotype_colour(nm))}) + ","
                        for nm in names], pa.string())
    measurements = [c for c in measurements if c in cells and np.issubdtype(cells[c].dtype, np.number)]
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b'{"type":"FeatureCollection","features":[')
            for start in range(0, n, _CELL_BLOCK):  # text of one block at a time: memory bounded by the block
                rows = slice(start, min(start + _CELL_BLOCK, n))
                feats = _detection_text(cells.iloc[rows], classes.take(pa.array(inverse[rows].astype(np.int64))),
                                        measurements, pixel_size_um, start)
                fh.write(b"," if start else b"")
                fh.write(_joined_utf8(feats))
            fh.write(b"]}")
    return path


_CELL_BLOCK = 262_144  # cells per block of GeoJSON text (~50 MB of text)


def _joined_utf8(feats) -> memoryview:
    """The strings of ``feats`` joined by ``","``, as UTF-8 bytes.

    Each string of ``feats`` ends with the separator (:func:`_detection_text`),
    so the joined text is the array's own data buffer minus the last byte: no
    join, no Python ``str`` and no re-encoding of ~50 MB of text per block.
    """
    import pyarrow as pa

    if len(feats) == 0:
        return memoryview(b"")
    if feats.null_count:  # as a join would: a null feature fails loudly rather than vanishing
        raise ValueError(f"{feats.null_count} cells have no GeoJSON text (non-finite coordinates?)")
    if isinstance(feats, pa.ChunkedArray):
        feats = feats.combine_chunks()
    width = np.int64 if pa.types.is_large_string(feats.type) else np.int32
    offsets = np.frombuffer(feats.buffers()[1], dtype=width)[feats.offset:feats.offset + len(feats) + 1]
    return memoryview(feats.buffers()[2])[int(offsets[0]):int(offsets[-1]) - 1]


def _detection_text(block: pd.DataFrame, cls, measurements: Sequence[str], pixel_size_um, offset: int):
    """One Arrow string per cell of ``block``: its detection Feature and a trailing ``","``
    (see :func:`write_cell_detections`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(block)
    xy = block[["x_um", "y_um"]].to_numpy(dtype=float)
    if pixel_size_um:
        xy = xy / float(pixel_size_um) + 0.5
    x, y = (_decimal_text(xy[:, k]) for k in (0, 1))
    ids = pc.cast(pa.array(block["cell_id"].to_numpy() if "cell_id" in block
                           else np.arange(offset + 1, offset + n + 1)), pa.string())
    pieces = [pc.binary_join_element_wise(f'"{c}":', _decimal_text(block[c].to_numpy(dtype=float)), "")
              for c in measurements]
    meas = (pc.binary_join_element_wise(*pieces, ",", null_handling="skip") if len(pieces) > 1
            else pc.fill_null(pieces[0], "") if pieces else pa.array(np.full(n, "", dtype=object), pa.string()))
    return pc.binary_join_element_wise(
        '{"type":"Feature","id":"cell-', ids, '","geometry":{"type":"Point","coordinates":[', x, ",", y,
        ']},"properties":{"objectType":"detection",', cls, '"measurements":{', meas, "}}},", "")


def _decimal_text(values: np.ndarray):
    """Arrow strings of ``values`` rounded to 3 decimals (shortest form); null where not finite."""
    import pyarrow as pa
    import pyarrow.compute as pc

    v = np.round(np.asarray(values, dtype=float), 3)
    v = v + 0.0  # no "-0"
    return pc.cast(pa.array(v, mask=~np.isfinite(v)), pa.string())
