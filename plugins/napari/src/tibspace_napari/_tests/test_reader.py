"""The reader on every supported layout, real data included; opening is lazy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tibspace.errors import InputError
from tibspace.io import write_ome_tiff
from tibspace_napari._reader import (contrast_limits, marker_colormap, napari_get_reader,
                                     read_image)

REAL = Path("/work/shared/data/real")
MIBI = REAL / "dcis_mibi" / "Point2203_pt1072_31606"
MIHC = REAL / "mihc_miniature" / "WD-76845-003_ROI01.ome.tif"


def _by_name(layers):
    return {kw["name"]: (d, kw, t) for d, kw, t in layers}


def _level0(data):
    return np.asarray(data[0] if isinstance(data, list) else data)


def test_ome_tiff_channels_colours_scale_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (4, 64, 80), dtype=np.uint16)
    names = ["DAPI", "HepPar1", "CD8", "Ki67"]
    write_ome_tiff(tmp_path / "a.ome.tif", data, names, 0.325, tile=32)
    reader = napari_get_reader(str(tmp_path / "a.ome.tif"))
    assert callable(reader)
    layers = reader(str(tmp_path / "a.ome.tif"))
    assert [kw["name"] for _, kw, _ in layers] == names
    assert [kw["colormap"] for _, kw, _ in layers][:3] == ["blue", "green", "magenta"]
    for i, (d, kw, kind) in enumerate(layers):
        assert kind == "image" and kw["blending"] == "additive"
        assert kw["scale"] == (0.325, 0.325)
        assert kw["multiscale"] is False
        assert np.array_equal(_level0(d), data[i])
        lo, hi = kw["contrast_limits"]
        assert (lo, hi) == tuple(np.percentile(data[i].astype(float), [1, 99.5]))
        assert kw["metadata"]["tibspace"]["pixel_size_um"] == 0.325


def test_pyramidal_ome_tiff_is_multiscale_and_contrast_from_coarsest(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (2, 2304, 2304), dtype=np.uint8)
    write_ome_tiff(tmp_path / "p.ome.tif", data, ["DAPI", "PanCK"], 0.5, tile=256)
    layers = _by_name(read_image(tmp_path / "p.ome.tif"))
    d, kw, _ = layers["PanCK"]
    assert kw["multiscale"] is True and isinstance(d, list) and len(d) >= 2
    shapes = [lv.shape for lv in d]
    assert shapes[0] == (2304, 2304) and all(a[0] > b[0] for a, b in zip(shapes, shapes[1:]))
    assert np.array_equal(np.asarray(d[0][100:110, 2000:2010]), data[1, 100:110, 2000:2010])
    coarse = np.asarray(d[-1], dtype=float)
    assert kw["contrast_limits"] == tuple(np.percentile(coarse, [1, 99.5]))


def test_imagej_hyperstack_with_labels(tmp_path):
    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.8, 1 / 0.8),
                     metadata={"axes": "CYX", "Labels": ["Hoechst", "CD3", "SPP1"],
                               "unit": "um"})
    layers = read_image(tmp_path / "ij.tif")
    assert [kw["name"] for _, kw, _ in layers] == ["Hoechst", "CD3", "SPP1"]
    assert [kw["colormap"] for _, kw, _ in layers] == ["blue", "red", "cyan"]
    assert layers[0][1]["scale"] == pytest.approx((0.8, 0.8))
    assert np.array_equal(_level0(layers[2][0]), data[2])


def test_folder_of_single_channel_tiffs(tmp_path):
    folder = tmp_path / "slide"
    folder.mkdir()
    chans = {"DAPI": 1, "CD8": 2, "COL1": 3}
    for name, v in chans.items():
        tifffile.imwrite(folder / f"{name}.tif", np.full((16, 24), v, np.uint8),
                         resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert callable(napari_get_reader(str(folder)))
    layers = _by_name(read_image(folder))
    assert set(layers) == set(chans)
    for name, v in chans.items():
        d, kw, _ = layers[name]
        assert np.all(_level0(d) == v)
        assert kw["scale"] == pytest.approx((0.5, 0.5))
    assert layers["COL1"][1]["colormap"] == "gray"


def test_real_mibi_folder_without_pixel_size_opens_in_pixels():
    with pytest.warns(UserWarning, match="no pixel size"):
        layers = read_image(MIBI)
    by = _by_name(layers)
    stems = sorted(p.stem for p in MIBI.glob("*.tif"))
    assert sorted(by) == stems and len(stems) == 41
    d, kw, _ = by["CD8"]
    assert kw["scale"] == (1.0, 1.0) and kw["metadata"]["tibspace"]["pixel_size_um"] is None
    assert np.array_equal(_level0(d), tifffile.imread(MIBI / "CD8.tif"))
    assert by["HH3"][1]["colormap"] == "blue" and by["PanKRT"][1]["colormap"] == "green"
    visible = {n for n, (_, kw, _) in by.items() if kw["visible"]}
    # A 41-plex is not blended all at once; nuclear, tumour and CD8 are shown.
    assert len(visible) <= 6 and {"HH3", "PanKRT", "CD8", "CD68", "SMA", "COLI"} == visible


def test_real_mihc_ome_tiff():
    layers = read_image(MIHC)
    by = _by_name(layers)
    assert len(layers) == 25 and "HEM_2" in by
    d, kw, _ = by["CD8"]
    assert kw["scale"] == pytest.approx((0.5022, 0.5022))
    with tifffile.TiffFile(MIHC) as tf:
        names = [kw["name"] for _, kw, _ in layers]
        ref = tf.series[0].levels[0].asarray()[names.index("CD8")]
    assert np.array_equal(_level0(d), ref)
    assert by["PANCK"][1]["colormap"] == "green" and by["PANCK"][1]["visible"]


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


def test_opening_is_lazy(tmp_path):
    """Opening a 4 × 4096² pyramidal slide reads well under 5 % of its bytes."""
    rng = np.random.default_rng(2)
    data = rng.integers(0, 255, (4, 4096, 4096), dtype=np.uint8)  # incompressible
    path = tmp_path / "big.ome.tif"
    write_ome_tiff(path, data, ["DAPI", "HepPar1", "CD8", "SPP1"], 0.5, tile=512,
                   compression=None)
    del data
    size = os.path.getsize(path)
    before = _rchar()
    layers = read_image(path)
    read = _rchar() - before
    assert len(layers) == 4 and layers[0][1]["multiscale"]
    assert read < 0.05 * size, f"opening read {read:,} of {size:,} bytes"
    # Touching one full-resolution tile reads about one tile, not the file.
    before = _rchar()
    np.asarray(layers[2][0][0][0:512, 0:512])
    assert _rchar() - before < 0.05 * size


def test_not_a_tiff_is_rejected(tmp_path):
    assert napari_get_reader(str(tmp_path / "table.csv")) is None
    assert napari_get_reader(str(tmp_path / "missing.tif")) is None
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert napari_get_reader(str(empty)) is None
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff at all")
    with pytest.raises(InputError, match="bad.tif"):
        read_image(bad)


def test_marker_colormaps_and_contrast():
    assert marker_colormap("Hoechst 33342")[0] == "blue"
    assert marker_colormap("pan-cytokeratin")[0] == "green"
    assert marker_colormap("CD8a")[0] == "magenta"
    assert marker_colormap("SPP1")[0] == "cyan"
    assert marker_colormap("aSMA")[0] == "bop orange"
    assert marker_colormap("FOO")[1] is None
    zeros = np.zeros((1, 50, 50))
    assert contrast_limits(zeros, 0) == (0.0, 1.0)
    sparse = np.zeros((1, 100, 100))
    sparse[0, 0, :5] = 7  # ion counts: 99.5th percentile is 0, max is not
    assert contrast_limits(sparse, 0) == (0.0, 7.0)


def test_viewer_open_uses_plugin(make_napari_viewer, tmp_path):
    write_ome_tiff(tmp_path / "v.ome.tif", np.ones((2, 32, 32), np.uint8) * 9,
                   ["DAPI", "CD8"], 0.5)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "v.ome.tif"), plugin="tibspace-napari")
    assert [ly.name for ly in viewer.layers] == ["DAPI", "CD8"]
    assert tuple(viewer.layers["CD8"].scale) == (0.5, 0.5)
    assert viewer.layers["CD8"].blending == "additive"
