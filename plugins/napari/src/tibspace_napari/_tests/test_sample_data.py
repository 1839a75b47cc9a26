"""File › Open Sample › tibspace: the bundled HCC sample."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tibspace.errors import InputError
from tibspace_napari import _sample_data
from tibspace_napari._sample_data import make_sample_data, sample_paths


def test_sample_layers_match_the_file():
    image, panel = sample_paths()
    layers = make_sample_data()
    with tifffile.TiffFile(image) as tf:
        ref = tf.series[0].levels[0].asarray()
        px = float(tf.ome_metadata.split('PhysicalSizeX="')[1].split('"')[0])
    assert len(layers) == ref.shape[0]
    names = [kw["name"] for _, kw, _ in layers]
    for marker in ("DAPI", "HepPar1", "CD8", "SPP1", "CitH3", "COL1"):
        assert marker in names
    for i, (d, kw, kind) in enumerate(layers):
        assert kind == "image" and kw["scale"] == pytest.approx((px, px))
        assert kw["metadata"]["tibspace"]["panel"] == str(panel)
        lvl0 = d[0] if isinstance(d, list) else d
        assert np.array_equal(np.asarray(lvl0[::97, ::89]), ref[i, ::97, ::89])
    cmaps = {kw["name"]: kw["colormap"] for _, kw, _ in layers}
    assert (cmaps["DAPI"], cmaps["HepPar1"], cmaps["CD8"]) == ("blue", "green", "magenta")


def test_open_sample_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("tibspace-napari", "hcc_sample")
    assert "HepPar1" in viewer.layers and viewer.layers["DAPI"].visible


def test_missing_sample_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_sample_data, "_candidates", lambda: [tmp_path / "nowhere"])
    with pytest.raises(InputError, match="sample image not found.*--preset sample"):
        sample_paths()
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "hcc_sample.ome.tif").write_bytes(b"")
    with pytest.raises(InputError, match="hcc_sample_panel.toml"):
        sample_paths()
