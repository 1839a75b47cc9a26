"""Writers for everything a run produces: tables, GeoJSON, AnnData, metrics.json.

Every writer goes through :func:`tibspace._fileio.atomic_path`, so a failure
never leaves a half-written file. GeoJSON follows QuPath's conventions
(``properties.objectType``, ``properties.classification = {name, color}``,
``properties.measurements``; coordinates in *pixels* of the image) so that
annotations round-trip through QuPath (field notes: openDVP #6, sopa #112).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import mapping, shape

from ._fileio import atomic_path
from .errors import InputError

# Colours shared by every view of a result (report, GeoJSON, napari) so a
# phenotype or structure looks the same everywhere.
PHENOTYPE_COLOURS = {
    "tumour": (46, 160, 67),
    "SPP1_macrophage": (255, 140, 0),
    "CAF": (160, 82, 45),
    "CD8_T": (220, 20, 160),
    "other_T": (150, 110, 220),
    "neutrophil": (0, 170, 255),
    "other": (150, 150, 150),
}
STRUCTURE_COLOURS = {
    "tumour_nest": (46, 160, 67),
    "barrier_covered": (0, 200, 0),
    "barrier_gap": (230, 0, 0),
    "exclusion_zone": (255, 215, 0),
    "tissue": (120, 120, 120),
}


def phenotype_colour(name: str) -> tuple[int, int, int]:
    """Stable RGB colour for a phenotype (known ones fixed, others hashed)."""
    if name in PHENOTYPE_COLOURS:
        return PHENOTYPE_COLOURS[name]
    h = hashlib.sha1(name.encode()).digest()
    return (64 + h[0] % 192, 64 + h[1] % 192, 64 + h[2] % 192)


# --------------------------------------------------------------------- tables
def write_table(df: pd.DataFrame, path_stem: str | os.PathLike, *, formats: Sequence[str] = ("parquet", "csv")) -> list[Path]:
    """Write ``df`` as ``<stem>.parquet`` and/or ``<stem>.csv`` atomically.

    Geometry columns (shapely objects) are written as WKT text; categoricals
    as strings in CSV.
    """
    stem = Path(path_stem)
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and len(out) and isinstance(out[col].iloc[0], shapely.Geometry):
            out[col] = shapely.to_wkt(out[col].to_numpy(), rounding_precision=4)
        elif out[col].dtype == object and len(out) and isinstance(out[col].iloc[0], (list, tuple, np.ndarray)):
            out[col] = [json.dumps(to_jsonable(v)) for v in out[col]]
    written = []
    for fmt in formats:
        target = stem.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            if fmt == "parquet":
                out.to_parquet(tmp, index=False)
            elif fmt == "csv":
                out.to_csv(tmp, index=False, float_format="%.6g")
            else:
                raise ValueError(f"unknown table format {fmt!r}")
        written.append(target)
    return written


# ----------------------------------------------------------------------- JSON
def to_jsonable(obj):
    """Convert numpy / pandas / shapely values into plain JSON types.

    NaN and ±inf become ``None`` (JSON has no NaN); floats are kept at full
    precision so metrics.json is an exact audit record.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, shapely.Geometry):
        return obj.wkt
    if isinstance(obj, pd.DataFrame):  # column -> list of values (compact, tidy)
        return {str(c): _column_jsonable(obj[c]) for c in obj.columns}
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _column_jsonable(col: pd.Series) -> list:
    """One table column as JSON values; numeric and boolean columns in one
    vectorised step (a whole slide's segment table has ~10^6 values), others
    value by value. Same values as :func:`to_jsonable` on each element."""
    kind = col.dtype.kind if isinstance(col.dtype, np.dtype) else "O"  # not pandas' nullable types
    if kind in "iub":
        return col.to_numpy().tolist()
    if kind == "f":
        arr = col.to_numpy(dtype=float)
        bad = ~np.isfinite(arr)
        if not bad.any():
            return arr.tolist()
        out = arr.astype(object)
        out[bad] = None
        return out.tolist()
    return [to_jsonable(v) for v in col.tolist()]


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as deterministic, indented JSON (sorted keys), atomically."""
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, or of every file in a folder (sorted by name)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    return h.hexdigest()


# -------------------------------------------------------------------- GeoJSON
def um_to_qupath_px(geom, pixel_size_um: float):
    """µm geometry → QuPath pixel coordinates.

    tibspace puts the centre of pixel (row r, col c) at (c·px, r·px) µm
    (skimage centroids × pixel size); QuPath's pixel (r, c) spans
    [c, c+1) × [r, r+1), so its centre is at c + 0.5: ``x_px = x_um / px + 0.5``.
    """
    return shapely.transform(geom, lambda xy: xy / pixel_size_um + 0.5)


def qupath_px_to_um(geom, pixel_size_um: float):
    """Inverse of :func:`um_to_qupath_px`."""
    return shapely.transform(geom, lambda xy: (xy - 0.5) * pixel_size_um)


def geojson_features(geometries: Iterable, *, name: str, object_type: str = "annotation",
                     pixel_size_um: float | None = None, colour: tuple[int, int, int] | None = None,
                     measurements: Sequence[Mapping] | None = None, ids: Sequence | None = None) -> list[dict]:
    """QuPath-style GeoJSON features from shapely geometries given in µm.

    Coordinates are converted to QuPath pixels when ``pixel_size_um`` is
    given (:func:`um_to_qupath_px`); otherwise they stay in µm.
    """
    geoms = list(geometries)
    if pixel_size_um:
        geoms = [um_to_qupath_px(g, pixel_size_um) for g in geoms]
    feats = []
    for i, g in enumerate(geoms):
        if g is None or g.is_empty:
            continue
        props = {
            "objectType": object_type,
            "classification": {"name": name, "color": list(colour or STRUCTURE_COLOURS.get(name, (200, 200, 200)))},
            "isLocked": False,
        }
        if measurements is not None:
            props["measurements"] = {k: v for k, v in to_jsonable(dict(measurements[i])).items()
                                     if isinstance(v, (int, float)) and v is not None}
        feat = {"type": "Feature", "geometry": mapping(g), "properties": props}
        if ids is not None:
            feat["id"] = str(ids[i])
        feats.append(feat)
    return feats


def write_geojson(features: list[dict], path: str | os.PathLike) -> Path:
    """Write a FeatureCollection atomically (coordinates rounded to 1e-3)."""
    fc = {"type": "FeatureCollection", "features": features}
    path = Path(path)
    text = json.dumps(_round_coords(fc), separators=(",", ":"), allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _round_coords(obj):
    if isinstance(obj, dict):
        return {k: _round_coords(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round_coords(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 3)
    return obj


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


# -------------------------------------------------------------------- AnnData
def write_anndata(cells: pd.DataFrame, channel_columns: Sequence[str], path: str | os.PathLike,
                  *, uns: Mapping | None = None) -> Path:
    """Write the cell table as AnnData (``.h5ad``): X = mean intensities per
    channel, obs = every other per-cell column, ``obsm['spatial']`` = (x, y) µm.

    This is what scanpy/squidpy users load (``sq.gr.*`` works on it directly).
    """
    import anndata as ad

    channel_columns = [c for c in channel_columns if c in cells.columns]
    X = cells[channel_columns].to_numpy(dtype=np.float32) if channel_columns else np.zeros((len(cells), 0), np.float32)
    obs_cols = [c for c in cells.columns if c not in channel_columns]
    obs = cells[obs_cols].copy()
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str).astype("category")
    obs.index = cells["cell_id"].astype(str).to_numpy() if "cell_id" in cells else obs.index.astype(str)
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[str(c) for c in channel_columns]))
    adata.obsm["spatial"] = cells[["x_um", "y_um"]].to_numpy(dtype=np.float64)
    if uns:
        adata.uns["tibspace"] = json.dumps(to_jsonable(uns), sort_keys=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
