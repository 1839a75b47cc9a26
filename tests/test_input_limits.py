"""Inputs checked against what they claim before work starts (issue 13 rows 7-8, issue 12 items 2 and 4).

Decompression bombs (tiny TIFFs declaring 200000² px planes) are refused from
the header in seconds; NaN / ±inf pixels read as background and are reported;
Ionpath MIBItiff pages named ``HH3 (89)`` match a panel saying ``HH3``; a
label mask whose pixel size disagrees with the image's is refused.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bombs import write_bomb_tiff  # noqa: E402

from tibspace.errors import InputError  # noqa: E402
from tibspace.io import open_image, read_label_mask, write_ome_tiff  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PANEL = REPO / "sample_data" / "hcc_sample_panel.toml"


@pytest.mark.parametrize("tile", [None, 1024])
def test_bomb_refused_from_header_by_max_pixels(tmp_path, tile):
    from tibspace.pipeline import run_image

    p = write_bomb_tiff(tmp_path / "bomb.tif", 200000, 200000, tile=tile)
    assert p.stat().st_size < 400_000
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        run_image(p, PANEL)
    msg = str(err.value)
    assert time.perf_counter() - t0 < 20
    assert "bomb.tif" in msg and "200000×200000" in msg and "2e+10" in msg and "--max-pixels" in msg
    assert "\n" not in msg


def test_max_pixels_option_lowers_and_raises_the_limit(tmp_path, monkeypatch):
    p = write_bomb_tiff(tmp_path / "b.tif", 50000, 50000, tile=1024)
    with pytest.raises(InputError, match="limit of 1e\\+09 px"):
        open_image(p, max_pixels=1e9)
    assert open_image(p, max_pixels=5e9).shape == (1, 50000, 50000)  # lazily opened, nothing read
    with pytest.raises(InputError, match="max_pixels must be"):
        open_image(p, max_pixels=-3)


def test_strip_larger_than_memory_refused_whatever_the_limit(tmp_path, monkeypatch):
    import tibspace.io.limits as limits

    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 16 * 2**30)
    p = write_bomb_tiff(tmp_path / "s.tif", 200000, 200000)  # one strip of 80 GB
    with pytest.raises(InputError) as err:
        open_image(p, max_pixels=1e12)
    msg = str(err.value)
    assert "s.tif" in msg and "strips of 200000×200000" in msg and "GiB" in msg and "tiled" in msg
    # a tiled plane of the same size needs 2 tiles' worth at once: accepted
    assert open_image(write_bomb_tiff(tmp_path / "t.tif", 200000, 200000, tile=1024),
                      max_pixels=1e12).shape[1:] == (200000, 200000)


def test_folder_with_one_bomb_channel(tmp_path):
    from tibspace.pipeline import run_image

    d = tmp_path / "folder"
    d.mkdir()
    tifffile.imwrite(d / "DAPI.tif", np.ones((64, 64), np.uint16), resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    write_bomb_tiff(d / "CD8.tif", 200000, 200000, tile=512)
    with pytest.raises(InputError, match="CD8.tif: declares 200000×200000"):
        run_image(d, PANEL)


def test_label_bomb_refused_before_reading(tmp_path):
    p = write_bomb_tiff(tmp_path / "cells.tif", 200000, 200000, dtype=np.uint32)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="label shape 200000x200000 does not match image 64x64"):
        read_label_mask(p, shape=(64, 64), pixel_size_um=0.5)
    assert time.perf_counter() - t0 < 10


# ------------------------------------------------------------------ label pixel size
def _labels(n=64):
    lab = np.zeros((n, n), np.int32)
    lab[10:20, 10:20], lab[30:40, 35:45] = 1, 2
    return lab


@pytest.mark.parametrize("px_cm, ok", [(1e4 / 0.5, True), (1e4 / 0.502, True), (1e4 / 0.51, False),
                                       (1e4 / 1.0, False)])
def test_label_resolution_tags_checked(tmp_path, px_cm, ok):
    p = tmp_path / "cells.tif"
    tifffile.imwrite(p, _labels(), resolution=(px_cm, px_cm), resolutionunit="CENTIMETER")
    if ok:
        lab, ids = read_label_mask(p, shape=(64, 64), pixel_size_um=0.5)
        assert ids.tolist() == [1, 2]
    else:
        with pytest.raises(InputError) as err:
            read_label_mask(p, shape=(64, 64), pixel_size_um=0.5)
        msg = str(err.value)
        assert f"{1e4 / px_cm:.6g} µm" in msg and "0.5 µm" in msg and "cells.tif" in msg


def test_label_ome_physical_size_in_nm(tmp_path):
    p = tmp_path / "cells.ome.tif"
    tifffile.imwrite(p, _labels(), ome=True, metadata={"axes": "YX", "PhysicalSizeX": 500.0,
                                                       "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 500.0,
                                                       "PhysicalSizeYUnit": "nm"})
    assert read_label_mask(p, shape=(64, 64), pixel_size_um=0.5)[1].tolist() == [1, 2]
    with pytest.raises(InputError, match="0.5 µm .*does not match the image's 0.65 µm"):
        read_label_mask(p, shape=(64, 64), pixel_size_um=0.65)


# ------------------------------------------------------------------ NaN / inf pixels
@pytest.fixture(scope="module")
def float_pair(tmp_path_factory):
    """The bundled sample as float32, and the same with a few NaN / ±inf pixels."""
    d = tmp_path_factory.mktemp("nan")
    with open_image(REPO / "sample_data" / "hcc_sample.ome.tif") as img:
        data = np.asarray(img.data[:, :800, :800]).astype(np.float32)
        names = list(img.channel_names)
    write_ome_tiff(d / "clean.ome.tif", data, names, 0.5)
    rng = np.random.default_rng(7)
    bad = data.copy()
    ys, xs = rng.integers(0, 800, 40), rng.integers(0, 800, 40)
    bad[0, ys[:20], xs[:20]] = np.nan     # DAPI: 20 NaN (one inside a nucleus at least)
    bad[0, ys[20:22], xs[20:22]] = np.inf
    bad[7, ys[22:], xs[22:]] = -np.inf    # CD3: 18 -inf
    write_ome_tiff(d / "nan.ome.tif", bad, names, 0.5)
    return d / "clean.ome.tif", d / "nan.ome.tif"


def test_nan_pixels_segment_like_the_clean_image(float_pair):
    from tibspace.segment import segment_image

    clean, nan = float_pair
    counts = []
    for p in (clean, nan):
        with open_image(p) as img:
            region = img.read_region(None, 0, 800, 0, 800)
            assert np.isfinite(region).all()
            counts.append(len(segment_image(img, ["DAPI"], ["NaKATPase"]).cells))
    assert counts[0] > 100
    assert abs(counts[1] - counts[0]) <= 0.01 * counts[0], counts


def test_nan_counts_reported_per_channel(float_pair):
    from tibspace.io.image import check_finite, nonfinite_counts

    _, nan = float_pair
    with open_image(nan) as img:
        counts = nonfinite_counts(img)
        assert counts["DAPI"] == 22 and counts["CD3"] == 18 and counts["CD8"] == 0
        lines = check_finite(img, required=[0])
    assert len(lines) == 2 and "channel DAPI has 22 NaN/infinite pixels" in lines[0]


def test_mostly_nan_channel_is_one_line(tmp_path):
    from tibspace.pipeline import run_image

    data = np.ones((12, 64, 64), np.float32)
    data[0, :, :40] = np.nan
    with open_image(REPO / "sample_data" / "hcc_sample.ome.tif") as img:
        names = list(img.channel_names)
    write_ome_tiff(tmp_path / "m.ome.tif", data, names, 0.5)
    with pytest.raises(InputError, match="channel DAPI has 2560 of 4096 pixels NaN or infinite"):
        run_image(tmp_path / "m.ome.tif", PANEL)


# ------------------------------------------------------------------ MIBItiff and vendor names
def write_mibitiff(path, data, targets, masses, fov_um=400.0):
    """A MIBItiff as Ionpath's writer lays it out: one zlib page per channel (one strip),
    JSON ImageDescription with ``mibi.*`` keys, ``image.type``, ``channel.mass`` and
    ``channel.target``; PageName ``target (mass)``; resolution in cm; software IonpathMIBIv1.0."""
    ny, nx = data.shape[1:]
    res = (nx * 1e4 / fov_um, ny * 1e4 / fov_um)
    with tifffile.TiffWriter(path) as tw:
        for plane, t, m in zip(data, targets, masses):
            desc = {"mibi.run": "20200101_run", "mibi.instrument": "MIBIscope1", "mibi.slide": "1234",
                    "mibi.dwell": 4, "mibi.fov_id": "FOV1", "mibi.fov_name": "R1C1", "mibi.folder": "FOV1",
                    "image.type": "SIMS", "channel.mass": int(m), "channel.target": t}
            tw.write(plane, compression="zlib", resolution=res, resolutionunit="CENTIMETER",
                     description=json.dumps(desc), metadata=None, software="IonpathMIBIv1.0",
                     rowsperstrip=ny, extratags=[(285, "s", 0, f"{t} ({m})".encode(), False),
                                                 (286, "2i", 1, (0, 1), False), (287, "2i", 1, (0, 1), False)])


def test_mibitiff_target_names(tmp_path):
    from tibspace.cells import Panel

    rng = np.random.default_rng(0)
    p = tmp_path / "fov.tif"
    write_mibitiff(p, rng.integers(0, 50, (3, 64, 64)).astype(np.uint16), ["HH3", "CD8", "dsDNA"], [89, 158, 175])
    with tifffile.TiffFile(p) as tf:
        assert tf.pages[0].tags["PageName"].value == "HH3 (89)"
    img = open_image(p)
    assert img.channel_names == ["HH3", "CD8", "dsDNA"] and img.pixel_size_um == pytest.approx(6.25)
    panel = Panel.from_dict({"channels": {"nuclear": ["HH3"]}, "markers": {"CD8": {"gate": 5}},
                             "phenotypes": {"CD8_T": "CD8+"}})
    assert panel.resolve_channels(img.channel_names)["HH3"] == 0


@pytest.mark.parametrize("names, want", [(["HH3 (89)", "CD8 (158)"], 1), (["DAPI", "CD8 (Opal 520)"], 1),
                                         (["DAPI-01", "CD8_Cy5"], 1), (["89Y_HH3", "Yb176_CD8"], 1)])
def test_vendor_suffixes_match_when_unambiguous(names, want):
    from tibspace.cells import Panel

    panel = Panel.from_dict({"channels": {"nuclear": [names[0].split(" ")[0].split("-")[0].split("_")[-1]]},
                             "markers": {"CD8": {"gate": 5}}, "phenotypes": {"CD8_T": "CD8+"}})
    assert panel.resolve_channels(names)["CD8"] == want


def test_vendor_suffix_ambiguity_lists_candidates():
    from tibspace.cells import Panel

    panel = Panel.from_dict({"channels": {"nuclear": ["DAPI"]}, "markers": {"CD8": {"gate": 5}},
                             "phenotypes": {"CD8_T": "CD8+"}})
    with pytest.raises(InputError) as err:
        panel.resolve_channels(["DAPI-01", "DAPI-02", "CD8"])
    assert "'DAPI-01', 'DAPI-02'" in str(err.value) and "\n" not in str(err.value)
