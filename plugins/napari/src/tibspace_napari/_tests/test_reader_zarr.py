"""The *.zarr reader: OME-Zarr images, SpatialData stores and tibspace's own ``<sample_id>.zarr``
open as the same layers as a TIFF (names, colours, scale in µm, pixels); other zarr folders get None."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tibspace.io import open_image, write_ome_tiff
from tibspace_napari._reader import read_image
from tibspace_napari._reader_zarr import napari_get_zarr_reader, read_zarr, zarr_image_elements

from ._synthetic import make_result

NAMES = ["DAPI", "HepPar1", "CD8"]


def _pixels(seed=0, shape=(3, 96, 128)):
    return np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)


def _ome_zarr(path: Path, data: np.ndarray, names, px_um: float, n_levels: int = 3) -> list:
    """An NGFF 0.4 OME-Zarr written by ome-zarr-py (tibspace writes OME-Zarr only inside SpatialData)."""
    from ome_zarr.writer import write_multiscale
    import zarr

    levels = [data]
    for _ in range(n_levels - 1):
        levels.append(levels[-1][:, ::2, ::2])
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    transforms = [[{"type": "scale", "scale": [1.0, px_um * 2 ** k, px_um * 2 ** k]}] for k in range(n_levels)]
    write_multiscale(levels, root, axes=axes, coordinate_transformations=transforms,
                     storage_options={"chunks": (1, 32, 32)})
    root.attrs["omero"] = {"channels": [{"label": n} for n in names]}
    return levels


def _sdata(path: Path, images: dict, px: float = 0.5, table: bool = True) -> None:
    import anndata as ad
    import spatialdata as sd
    from spatialdata.models import Image2DModel, TableModel
    from spatialdata.transformations import Scale

    els = {k: Image2DModel.parse(v, dims=("c", "y", "x"), c_coords=[f"{k}{i}" for i in range(v.shape[0])],
                                 transformations={"global": Scale([px, px], axes=("y", "x"))})
           for k, v in images.items()}
    tables = {"t": TableModel.parse(ad.AnnData(np.zeros((1, 1))))} if table else {}
    sd.SpatialData(images=els, tables=tables).write(path)


def _level0(data):
    return np.asarray(data[0] if isinstance(data, list) else data)


def test_ome_zarr_gives_the_layers_of_the_same_image_as_tiff(tmp_path):
    data = _pixels()
    levels = _ome_zarr(tmp_path / "img.ome.zarr", data, NAMES, 0.325)
    reader = napari_get_zarr_reader(str(tmp_path / "img.ome.zarr") + "/")
    assert callable(reader)
    layers = reader(str(tmp_path / "img.ome.zarr"))
    write_ome_tiff(tmp_path / "img.ome.tif", data, NAMES, 0.325)
    tiff = read_image(tmp_path / "img.ome.tif")
    assert [kw["name"] for _, kw, _ in layers] == NAMES
    for (d, kw, kind), (_, tkw, tkind) in zip(layers, tiff):
        assert kind == tkind == "image"
        for key in ("name", "colormap", "blending", "scale", "units", "visible"):
            assert kw[key] == tkw[key], key
    assert [kw["colormap"] for _, kw, _ in layers] == ["blue", "green", "magenta"]
    for i, (d, kw, _) in enumerate(layers):
        assert kw["scale"] == pytest.approx((0.325, 0.325)) and kw["units"] == ("um", "um")
        assert kw["multiscale"] is True and [lv.shape for lv in d] == [lv.shape[1:] for lv in levels]
        assert np.array_equal(np.asarray(d[0]), data[i])
        assert np.array_equal(np.asarray(d[2]), levels[2][i])
        assert kw["contrast_limits"] == tuple(np.percentile(levels[2][i].astype(float), [1, 99.5]))
        meta = kw["metadata"]["tibspace"]
        assert meta["pixel_size_um"] == pytest.approx(0.325) and meta["path"] == str(tmp_path / "img.ome.zarr")


def test_spatialdata_store_gives_every_image_and_names_the_element(tmp_path):
    a, b = _pixels(1, (2, 40, 50)), _pixels(2, (3, 30, 60))
    store = tmp_path / "s.zarr"
    _sdata(store, {"he": a, "ifx": b}, px=0.5)
    assert zarr_image_elements(store) == ["he", "ifx"]
    layers = read_zarr(store)
    assert [kw["name"] for _, kw, _ in layers] == ["he0 (he)", "he1 (he)", "ifx0 (ifx)", "ifx1 (ifx)",
                                                   "ifx2 (ifx)"]
    by = {kw["name"]: (d, kw) for d, kw, _ in layers}
    d, kw = by["ifx2 (ifx)"]
    assert np.array_equal(_level0(d), b[2]) and kw["scale"] == (0.5, 0.5)
    # the layer's image is the element's address, which `tibspace run` and the dock open
    path = kw["metadata"]["tibspace"]["path"]
    assert path == f"{store}::ifx" and open_image(path).channel_names == ["ifx0", "ifx1", "ifx2"]
    one = napari_get_zarr_reader(f"{store}::he")(f"{store}::he")
    assert [kw["name"] for _, kw, _ in one] == ["he0", "he1"]
    assert np.array_equal(_level0(one[1][0]), a[1])


def test_spatialdata_without_a_length_unit_opens_in_pixels(tmp_path):
    _sdata(tmp_path / "s.zarr", {"ifx": _pixels(3, (2, 20, 20))}, table=False)
    with pytest.warns(UserWarning, match="no pixel size"):
        layers = read_zarr(tmp_path / "s.zarr")
    _, kw, _ = layers[0]
    assert kw["scale"] == (1.0, 1.0) and "units" not in kw
    assert kw["metadata"]["tibspace"]["pixel_size_um"] is None


def test_a_tibspace_result_store_opens_as_stains_and_cell_labels(tmp_path):
    from tibspace.outputs.spatialdata import write_spatialdata

    result = make_result(n_cells=600, pixel_size_um=0.5, seed=5)
    ny, nx = result.labels.shape
    stains = _pixels(4, (3, ny, nx))
    write_ome_tiff(tmp_path / "src.ome.tif", stains, NAMES, 0.5)
    img = open_image(tmp_path / "src.ome.tif")
    store = write_spatialdata(result, tmp_path / "synthetic.zarr", image=img)
    img.close()
    layers = read_zarr(store)
    assert [(kw["name"], kind) for _, kw, kind in layers] == [(n, "image") for n in NAMES] + [
        ("cell_labels", "labels")]
    for i, (d, kw, _) in enumerate(layers[:3]):
        assert np.array_equal(_level0(d), stains[i]) and kw["scale"] == (0.5, 0.5)
        assert kw["metadata"]["tibspace"]["path"] == str(store)   # one image: the store itself
    d, kw, _ = layers[3]
    assert kw["scale"] == (0.5, 0.5) and kw["visible"] is False
    assert np.array_equal(_level0(d), result.labels)


def test_a_table_run_store_shows_its_thumbnail_in_rgb_and_labels_on_their_own_grid(tmp_path):
    from tibspace.outputs.spatialdata import write_spatialdata

    result = make_result(n_cells=600, pixel_size_um=0.5, seed=6)
    ny, nx = result.labels.shape
    rgb = np.random.default_rng(7).integers(0, 255, (ny // 4, nx // 4, 3), dtype=np.uint8)
    result.thumbnail = {"rgb": rgb, "um_per_px": 2.0}
    store = write_spatialdata(result, tmp_path / "synthetic.zarr")
    layers = read_zarr(store)
    assert [(kw["name"], kind) for _, kw, kind in layers] == [("stains_thumbnail", "image"),
                                                             ("cell_labels", "labels")]
    (d, kw, _), (lab, lkw, _) = layers
    assert kw["rgb"] is True and kw["scale"] == (2.0, 2.0) and np.array_equal(_level0(d), rgb)
    assert lkw["scale"] == (0.5, 0.5) and np.array_equal(_level0(lab), result.labels)


def test_zarr_folders_without_a_readable_image_are_left_to_other_readers(tmp_path):
    (tmp_path / "bare.zarr").mkdir()
    group = tmp_path / "group.zarr"
    group.mkdir()
    (group / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / ".zattrs").write_text("{not json")
    for path in ("bare.zarr", "group.zarr", "broken.zarr", "missing.zarr", "a.ome.tif"):
        assert napari_get_zarr_reader(str(tmp_path / path)) is None, path
    assert napari_get_zarr_reader([str(tmp_path / "bare.zarr"), str(tmp_path / "group.zarr")]) is None
    _sdata(tmp_path / "s.zarr", {"he": _pixels(5, (2, 20, 20))})
    assert napari_get_zarr_reader(f"{tmp_path / 's.zarr'}::nope") is None


def test_viewer_opens_a_zarr_store_with_the_plugin(make_napari_viewer, tmp_path):
    data = _pixels(6, (2, 64, 64))
    _ome_zarr(tmp_path / "v.ome.zarr", data, ["DAPI", "CD8"], 0.5, n_levels=2)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "v.ome.zarr"), plugin="tibspace-napari")
    assert [ly.name for ly in viewer.layers] == ["DAPI", "CD8"]
    assert tuple(viewer.layers["CD8"].scale) == (0.5, 0.5)
    assert viewer.layers["CD8"].multiscale and viewer.layers["CD8"].blending == "additive"
    assert np.array_equal(np.asarray(viewer.layers["CD8"].data[0]), data[1])
