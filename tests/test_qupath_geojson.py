"""Every GeoJSON tibspace writes, read back by a reader of QuPath's documented schema.

QuPath (0.4/0.5) imports a FeatureCollection of Features whose ``properties``
carry ``objectType`` (annotation / detection / cell / tile), an optional
``classification`` ``{name: str, color: [r, g, b]}``, ``measurements``
(name → number; QuPath's reader casts every value to a number and rejects
others) and optional ``metadata`` (name → string); geometries must be valid
in pixel coordinates of the image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import shapely
from shapely.geometry import shape

import tibspace

REPO = Path(__file__).resolve().parents[1]
OBJECT_TYPES = {"annotation", "detection", "cell", "tile"}


def read_qupath_geojson(path: Path) -> list[dict]:
    """Parse like QuPath's importer; raise AssertionError on anything it would reject."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection"
    objects = []
    for f in data["features"]:
        assert f["type"] == "Feature"
        g = shape(f["geometry"])
        assert g.is_valid and not g.is_empty, (path.name, shapely.is_valid_reason(g))
        props = f["properties"]
        assert props["objectType"] in OBJECT_TYPES
        cls = props.get("classification")
        if cls is not None:
            assert isinstance(cls["name"], str) and cls["name"]
            assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        for k, v in (props.get("measurements") or {}).items():
            assert isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool), (k, v)
            assert math.isfinite(v)
        for k, v in (props.get("metadata") or {}).items():
            assert isinstance(k, str) and isinstance(v, str), (k, v)
        objects.append({"type": props["objectType"], "class": (cls or {}).get("name"), "geometry": g,
                        "measurements": props.get("measurements") or {}, "metadata": props.get("metadata") or {}})
    return objects


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "out"
    result = tibspace.run_image(REPO / "sample_data" / "hcc_sample.ome.tif",
                                REPO / "sample_data" / "hcc_sample_panel.toml", out_dir=out, seed=0)
    return result, out


def test_every_geojson_reads_as_qupath_objects(demo):
    _, out = demo
    files = sorted(out.glob("*.geojson"))
    assert {f.name for f in files} >= {"nests.geojson", "cells.geojson", "tissue.geojson",
                                       "barrier_segments.geojson", "exclusion_zones.geojson"}
    for f in files:
        assert read_qupath_geojson(f), f.name


def test_cells_are_detections_with_their_phenotype(demo):
    result, out = demo
    cells = read_qupath_geojson(out / "cells.geojson")
    assert len(cells) == len(result.cells) and all(c["type"] == "detection" for c in cells)
    assert sorted(c["class"] for c in cells) == sorted(result.cells["phenotype"].astype(str))
    px = result.pixel_size_um
    first = result.cells.iloc[0]
    p = cells[0]["geometry"]
    assert abs(p.x - (first["x_um"] / px + 0.5)) < 1e-3 and abs(p.y - (first["y_um"] / px + 0.5)) < 1e-3


def test_nest_strings_are_kept_as_metadata(demo):
    result, out = demo
    nests = read_qupath_geojson(out / "nests.geojson")
    assert len(nests) == result.region.n_nests
    calls = [n["metadata"].get("immune_phenotype") for n in nests]
    assert calls == result.per_nest["immune_phenotype"].astype(str).tolist()
