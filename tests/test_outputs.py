import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from tibspace.io import atomic_path, result_set
from tibspace.jsonable import to_jsonable
from tibspace.outputs import (geojson_features, read_geojson_annotations, write_anndata, write_geojson,
                              write_json, write_table)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_result_set_keeps_no_partial_run(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with result_set(out) as stage:
            (stage / "cells.csv").write_text("x")
            raise RuntimeError("fail half-way")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with result_set(out) as stage:
        (stage / "stats").mkdir()
        (stage / "stats" / "a.csv").write_text("ok")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "stats", "stats/a.csv", "tibspace_manifest.json"]
    assert list(tmp_path.iterdir()) == [out]  # no staging folder left beside it


def test_table_roundtrip_parquet_and_csv(tmp_path):
    df = pd.DataFrame({"cell_id": [1, 2], "x_um": [0.5, 1.25], "phenotype": ["tumour", "CD8_T"],
                       "geometry": [shapely.Point(0, 0), shapely.LineString([(0, 0), (1, 1)])]})
    write_table(df, tmp_path / "cells")
    back = pd.read_parquet(tmp_path / "cells.parquet")
    assert back["x_um"].tolist() == [0.5, 1.25] and back["phenotype"].tolist() == ["tumour", "CD8_T"]
    assert shapely.from_wkt(back["geometry"]).tolist()[1].equals(df["geometry"][1])
    assert pd.read_csv(tmp_path / "cells.csv")["cell_id"].tolist() == [1, 2]


def test_json_is_deterministic_and_nan_safe(tmp_path):
    obj = {"b": np.float32(1.5), "a": [np.int64(3), float("nan"), np.inf], "c": np.array([1, 2]), "d": np.bool_(True)}
    write_json(obj, tmp_path / "m.json")
    first = (tmp_path / "m.json").read_bytes()
    write_json(dict(reversed(list(obj.items()))), tmp_path / "m.json")
    assert (tmp_path / "m.json").read_bytes() == first
    assert json.loads(first) == {"a": [3, None, None], "b": 1.5, "c": [1, 2], "d": True}


@settings(max_examples=25, deadline=None)
@given(st.floats(0.1, 2.0), st.floats(0, 500), st.floats(0, 500), st.floats(5, 200))
def test_geojson_roundtrip_in_pixels(tmp_path_factory, px, cx, cy, r):
    """µm → QuPath pixel GeoJSON → µm gives back the same polygon (to 1e-3 px rounding)."""
    d = tmp_path_factory.mktemp("g")
    poly = shapely.Point(cx, cy).buffer(r, quad_segs=8)
    feats = geojson_features([poly], name="tumour_nest", pixel_size_um=px, measurements=[{"area_um2": poly.area}])
    assert feats[0]["properties"]["objectType"] == "annotation"
    assert feats[0]["properties"]["classification"]["name"] == "tumour_nest"
    write_geojson(feats, d / "n.geojson")
    [(cls, back)] = read_geojson_annotations(d / "n.geojson", pixel_size_um=px)
    assert cls == "tumour_nest"
    assert shapely.hausdorff_distance(back, poly) <= 1e-3 * px * 1.5 + 1e-9


def test_anndata_roundtrip(tmp_path):
    import anndata as ad

    df = pd.DataFrame({"cell_id": [1, 2, 3], "x_um": [1.0, 2.0, 3.0], "y_um": [3.0, 2.0, 1.0],
                       "CD8": [0.1, 5.0, 2.0], "DAPI": [9.0, 8.0, 7.0], "phenotype": ["a", "b", "a"]})
    write_anndata(df, ["CD8", "DAPI"], tmp_path / "c.h5ad", uns={"seed": 0})
    a = ad.read_h5ad(tmp_path / "c.h5ad")
    assert list(a.var_names) == ["CD8", "DAPI"]
    np.testing.assert_allclose(a.X, df[["CD8", "DAPI"]].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.obsm["spatial"], df[["x_um", "y_um"]].to_numpy())
    assert a.obs["phenotype"].astype(str).tolist() == ["a", "b", "a"]


def test_to_jsonable_geometry_and_frames():
    assert to_jsonable(shapely.Point(1, 2)) == "POINT (1 2)"
    assert to_jsonable(pd.DataFrame({"a": [1, 2]})) == {"a": [1, 2]}


def test_atomic_output_has_normal_permissions(tmp_path):
    import os
    import stat

    with atomic_path(tmp_path / "m.json") as tmp:
        tmp.write_text("{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_dataframe_to_jsonable_matches_value_by_value():
    """Numeric/bool columns take a vectorised path: same JSON as converting each value."""
    rng = np.random.default_rng(0)
    n = 50
    df = pd.DataFrame({"f": rng.random(n), "nan": np.where(rng.random(n) < 0.3, np.nan, 1.5),
                       "inf": np.r_[np.inf, -np.inf, np.zeros(n - 2)], "i": rng.integers(-5, 5, n),
                       "u": np.arange(n, dtype=np.uint8), "b": rng.random(n) < 0.5, "s": ["x"] * n,
                       "nullable": pd.array([1, None] * (n // 2), dtype="Int64"),
                       "cat": pd.Categorical(["a", "b"] * (n // 2)), "lists": [[1.0, np.nan]] * n})
    got = to_jsonable(df)
    want = {str(k): [to_jsonable(v) for v in vals] for k, vals in df.to_dict(orient="list").items()}
    assert json.dumps(got, sort_keys=True, allow_nan=False) == json.dumps(want, sort_keys=True, allow_nan=False)
    assert got["nan"].count(None) == int(df["nan"].isna().sum()) and got["inf"][:2] == [None, None]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50)), min_size=3, max_size=12),
       st.floats(0.3, 1.1), st.floats(0, 1e-3))
def test_written_geojson_geometries_are_valid_after_rounding(tmp_path_factory, pts, px, eps):
    """Near-degenerate polygons (slivers thinner than the 1e-3 px grid) stay valid once written."""
    poly = shapely.make_valid(shapely.Polygon(pts + [(pts[0][0] + eps, pts[0][1] + eps)]))
    path = tmp_path_factory.mktemp("gj") / "x.geojson"
    write_geojson(geojson_features([poly], name="exclusion_zone", pixel_size_um=px), path)
    for f in json.loads(path.read_text())["features"]:
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid, shapely.is_valid_reason(g)


def test_qupath_measurements_numeric_text_in_metadata(tmp_path):
    feats = geojson_features([shapely.box(0, 0, 10, 10)], name="tumour_nest", pixel_size_um=0.5,
                             measurements=[{"coverage": 0.5, "link_exact": True, "immune_phenotype": "excluded",
                                            "p": float("nan"), "n": np.int64(3)}])
    props = feats[0]["properties"]
    assert props["measurements"] == {"coverage": 0.5, "n": 3}
    assert props["metadata"] == {"link_exact": "true", "immune_phenotype": "excluded"}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in props["measurements"].values())


def test_write_table_keeps_column_order_and_text_columns(tmp_path):
    """Geometry and list columns become WKT / JSON text in place; the frame is not modified."""
    import json as _json

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import shapely

    from tibspace.outputs.tables import write_table

    df = pd.DataFrame({"a": [1.5, np.nan], "geometry": [shapely.Point(0, 1), shapely.box(0, 0, 1, 1)],
                       "phenotype": pd.Categorical(["CD8_T", "tumour"]), "ids": [[1, 2], [3]], "z": [1, 2]})
    before = df.copy()
    write_table(df, tmp_path / "t")
    pd.testing.assert_frame_equal(df, before)
    back = pq.read_table(tmp_path / "t.parquet").to_pandas()
    assert list(back.columns) == list(df.columns)
    assert back["geometry"].tolist() == ["POINT (0 1)", "POLYGON ((1 0, 1 1, 0 1, 0 0, 1 0))"]
    assert [_json.loads(v) for v in back["ids"]] == [[1, 2], [3]]
    csv = pacsv.read_csv(tmp_path / "t.csv").to_pandas()
    assert list(csv.columns) == list(df.columns) and csv["phenotype"].tolist() == ["CD8_T", "tumour"]
    assert np.isnan(csv["a"][1]) and csv["z"].tolist() == [1, 2]


@pytest.mark.parametrize("block", [1, 7, 1000])
def test_cell_detections_written_in_blocks_are_one_document(tmp_path, monkeypatch, block):
    """Cells are written one block of rows at a time (bounded memory); the file does not depend on it."""
    import tibspace.outputs.geojson as gj

    rng = np.random.default_rng(3)
    n = 23
    cells = pd.DataFrame({"x_um": rng.uniform(0, 100, n), "y_um": rng.uniform(0, 100, n),
                          "phenotype": rng.choice(["tumour", "CD8_T", "other"], n),
                          "area_um2": rng.uniform(20, 80, n), "signed_dist_um": rng.normal(0, 30, n)})
    cells.loc[[2, 11], "signed_dist_um"] = np.nan
    gj.write_cell_detections(cells, tmp_path / "whole.geojson", pixel_size_um=0.5)
    monkeypatch.setattr(gj, "_CELL_BLOCK", block)
    gj.write_cell_detections(cells, tmp_path / "blocks.geojson", pixel_size_um=0.5)
    text = (tmp_path / "blocks.geojson").read_bytes()
    assert text == (tmp_path / "whole.geojson").read_bytes()
    feats = json.loads(text)["features"]
    assert [f["id"] for f in feats] == [f"cell-{i}" for i in range(1, n + 1)]
    assert [f["geometry"]["coordinates"][0] for f in feats] == list(np.round(cells["x_um"] / 0.5 + 0.5, 3))
    assert "signed_dist_um" not in feats[2]["properties"]["measurements"]
    assert feats[3]["properties"]["measurements"]["area_um2"] == round(cells["area_um2"][3], 3)


def test_geometry_text_features_write_the_same_file(tmp_path):
    """Features keeping GEOS's geometry text give the same bytes as features holding parsed geometries."""
    polys = [shapely.Point(10, 10).buffer(5), shapely.box(0, 0, 3, 4), shapely.LineString([(0, 0), (1.23456, 7)])]
    meas = [{"area_um2": 78.5, "flag": True, "call": "excluded", "nan": float("nan"), "k": np.int64(3)},
            {"area_um2": np.float64(12.0), "none": None}, {}]
    for kw in ({}, {"ids": ["a", "b", "c"]}):
        parsed = geojson_features(polys, name="tumour_nest", pixel_size_um=0.5, measurements=meas, **kw)
        text = geojson_features(polys, name="tumour_nest", pixel_size_um=0.5, measurements=meas,
                                geometry_text=True, **kw)
        write_geojson(parsed, tmp_path / "parsed.geojson")
        write_geojson(text, tmp_path / "text.geojson")
        assert (tmp_path / "text.geojson").read_bytes() == (tmp_path / "parsed.geojson").read_bytes()
        fc = json.loads((tmp_path / "text.geojson").read_text())
        assert json.dumps(fc, separators=(",", ":")) == (tmp_path / "text.geojson").read_text()
        assert fc["features"][0]["properties"]["measurements"] == {"area_um2": 78.5, "k": 3}
        assert fc["features"][0]["properties"]["metadata"] == {"flag": "true", "call": "excluded"}


@pytest.mark.parametrize("writer", ["write_cell_detections", "write_arrow_file", "_geometry_files", "write_anndata"])
def test_cell_detections_thread_error_leaves_the_previous_result(tmp_path, monkeypatch, writer):
    """The cell tables, cells.geojson and the structure GeoJSON are written on threads of their own:
    a failure of any of them, or of the calling thread while they run (AnnData), fails the write,
    --out keeps the old set and no thread writes on into the discarded staging folder."""
    import tibspace
    import tibspace.outputs.report as rep
    from tibspace.cells import Panel
    from tibspace.synthetic import make_clustered_cells

    r = tibspace.analyze_table(make_clustered_cells(1500, seed=1), Panel.from_dict({"parameters": {"n_envelope_sim": 0}}))
    out = tmp_path / "out"
    tibspace.write_outputs(r, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full_disk(*args, **kw):
        for a in args:
            if isinstance(a, Path) and not a.is_dir():
                a.write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rep, writer, full_disk)
    with pytest.raises(OSError, match="No space left"):
        tibspace.write_outputs(r, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
