"""OME-Zarr images and SpatialData stores as inputs (tibspace.io.zarr_image via open_image / run / cohort)."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from tibspace.errors import InputError
from tibspace.io import open_image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "hcc_sample.ome.tif"
PANEL = REPO / "sample_data" / "hcc_sample_panel.toml"


def _pixels(seed=0, shape=(3, 96, 128)):
    return np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)


def _ome_zarr(path: Path, data: np.ndarray, names, px_um: float, unit="micrometer", n_levels=3):
    """An NGFF 0.4 OME-Zarr written with ome-zarr-py (the reference writer)."""
    ome_zarr_writer = pytest.importorskip("ome_zarr.writer")
    import zarr

    levels = [data]
    for _ in range(n_levels - 1):
        levels.append(levels[-1][:, ::2, ::2])
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": unit},
            {"name": "x", "type": "space", "unit": unit}]
    transforms = [[{"type": "scale", "scale": [1.0, px_um * 2 ** k, px_um * 2 ** k]}] for k in range(n_levels)]
    ome_zarr_writer.write_multiscale(levels, root, axes=axes, coordinate_transformations=transforms,
                                     storage_options={"chunks": (1, 32, 32)})
    root.attrs["omero"] = {"channels": [{"label": n} for n in names]}
    return levels


def test_ome_zarr_opens_lazily_with_names_pixel_size_and_levels(tmp_path):
    data = _pixels()
    levels = _ome_zarr(tmp_path / "img.ome.zarr", data, ["DAPI", "CD3", "CD8"], 0.325, unit="micrometer")
    img = open_image(tmp_path / "img.ome.zarr")
    assert img.channel_names == ["DAPI", "CD3", "CD8"]
    assert img.pixel_size_um == pytest.approx(0.325)
    assert [lv.shape for lv in img.levels] == [lv.shape for lv in levels]
    assert all(isinstance(lv, da.Array) for lv in img.levels)          # lazy
    np.testing.assert_array_equal(img.read_region([2], 10, 40, 5, 70), data[2:3, 10:40, 5:70])
    np.testing.assert_array_equal(np.asarray(img.levels[2]), levels[2])


def test_ome_zarr_units_convert_and_unknown_units_need_a_pixel_size(tmp_path):
    _ome_zarr(tmp_path / "nm.zarr", _pixels(1), ["a", "b", "c"], 650.0, unit="nanometer")
    assert open_image(tmp_path / "nm.zarr").pixel_size_um == pytest.approx(0.65)
    _ome_zarr(tmp_path / "px.zarr", _pixels(2), ["a", "b", "c"], 1.0, unit="pixel")
    with pytest.raises(InputError, match="no pixel size"):
        open_image(tmp_path / "px.zarr")
    assert open_image(tmp_path / "px.zarr", pixel_size_um=0.5).pixel_size_um == 0.5


def test_ome_zarr_refuses_z_stacks_in_one_line(tmp_path):
    pytest.importorskip("ome_zarr.writer")
    from ome_zarr.writer import write_image
    import zarr

    root = zarr.open_group(str(tmp_path / "z.zarr"), mode="w", zarr_format=2)
    write_image(np.zeros((2, 4, 32, 32), np.uint8), root, axes="czyx", scaler=None)
    with pytest.raises(InputError, match="axis 'z' has 4 planes") as e:
        open_image(tmp_path / "z.zarr")
    assert "\n" not in str(e.value)


def _sdata(path: Path, images: dict, px: float = 0.5, table: bool = True):
    sd = pytest.importorskip("spatialdata")
    import anndata as ad
    from spatialdata.models import Image2DModel, TableModel
    from spatialdata.transformations import Scale

    els = {k: Image2DModel.parse(v, dims=("c", "y", "x"), c_coords=[f"m{i}" for i in range(v.shape[0])],
                                 transformations={"global": Scale([px, px], axes=("y", "x"))})
           for k, v in images.items()}
    tables = {"t": TableModel.parse(ad.AnnData(np.zeros((1, 1))))} if table else {}
    sd.SpatialData(images=els, tables=tables).write(path)


def test_spatialdata_with_several_images_names_them_and_opens_the_named_one(tmp_path):
    a, b = _pixels(3, (2, 40, 50)), _pixels(4, (4, 30, 60))
    _sdata(tmp_path / "s.zarr", {"he": a, "ifx": b})
    with pytest.raises(InputError) as e:
        open_image(tmp_path / "s.zarr")
    msg = str(e.value)
    assert "2 images (he, ifx)" in msg and "s.zarr::he" in msg and "\n" not in msg
    img = open_image(f"{tmp_path / 's.zarr'}::ifx")
    assert img.channel_names == ["m0", "m1", "m2", "m3"] and img.pixel_size_um == 0.5
    np.testing.assert_array_equal(np.asarray(img.data), b)
    with pytest.raises(InputError, match="no image element 'dapi'; it has: he, ifx"):
        open_image(f"{tmp_path / 's.zarr'}::dapi")


def test_spatialdata_without_table_needs_a_pixel_size(tmp_path):
    # SpatialData writes no length unit: only tibspace's own stores (with tables) are taken as µm
    _sdata(tmp_path / "s.zarr", {"ifx": _pixels(5, (2, 20, 20))}, table=False)
    with pytest.raises(InputError, match="no pixel size"):
        open_image(tmp_path / "s.zarr")


def test_a_zarr_folder_is_never_reported_as_a_folder_without_tiffs(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    (tmp_path / "empty.zarr" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                                   "attributes": {}}))
    with pytest.raises(InputError) as e:
        open_image(tmp_path / "empty.zarr")
    assert "no .tif" not in str(e.value) and "multiscales" in str(e.value)
    (tmp_path / "bare.zarr").mkdir()
    with pytest.raises(InputError) as e:
        open_image(tmp_path / "bare.zarr")
    assert "no .tif" not in str(e.value)
    with pytest.raises(InputError, match="not one"):
        open_image(f"{SAMPLE}::stains")


def test_sample_ids_and_manifest_accept_zarr_stores(tmp_path):
    from tibspace.cohort.manifest import read_manifest
    from tibspace.pipeline import unique_sample_ids

    assert unique_sample_ids([Path("a/P1.ome.zarr"), Path("b/s.zarr::ifx")]) == ["P1", "s_ifx"]
    _sdata(tmp_path / "s.zarr", {"he": _pixels(6, (2, 20, 20)), "ifx": _pixels(7, (2, 20, 20))})
    (tmp_path / "m.csv").write_text("sample_id,image\nA,s.zarr::ifx\nB,s.zarr\n")
    samples = read_manifest(tmp_path / "m.csv")
    assert str(samples[0].image) == f"{(tmp_path / 's.zarr').resolve()}::ifx"
    assert samples[1].image == (tmp_path / "s.zarr").resolve()
    (tmp_path / "bad.csv").write_text("sample_id,image\nA,missing.zarr::ifx\n")
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "bad.csv")


def test_a_tibspace_spatialdata_store_round_trips_to_the_same_cells(tmp_path):
    pytest.importorskip("spatialdata")
    from tibspace.cli import main

    assert main(["run", str(SAMPLE), "--panel", str(PANEL), "--out", str(tmp_path / "a"),
                 "--spatialdata", "--quiet"]) == 0
    store = tmp_path / "a" / "hcc_sample.zarr"
    assert main(["run", str(store), "--panel", str(PANEL), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    a = pd.read_parquet(tmp_path / "a" / "cells.parquet")
    b = pd.read_parquet(tmp_path / "b" / "cells.parquet")
    assert len(a) > 1000
    pd.testing.assert_frame_equal(a, b)
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert mb["sample_id"] == ma["sample_id"] == "hcc_sample"
    assert mb["input"]["channels"] == ma["input"]["channels"]
    assert mb["input"]["pixel_size_um"] == ma["input"]["pixel_size_um"] == 0.5
