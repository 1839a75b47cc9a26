"""Tests of tibspace.io: lazy reading of OME-TIFF / multipage TIFF / folders,
pyramidal OME-TIFF writing, and the one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
from dask.core import flatten
import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings, strategies as st
from skimage.transform import downscale_local_mean

from tibspace.errors import InputError
from tibspace.io import MultiplexImage, check_not_empty, open_image, write_labels_ome_tiff, write_ome_tiff

REAL = Path("/work/shared/data/real")
DCIS = REAL / "dcis_mibi" / "Point2203_pt1072_31606"
MIHC = REAL / "mihc_miniature" / "WD-76845-003_ROI01.ome.tif"
CSM = REAL / "csm_breast_mif" / "ABCM22001_B14_MiniCrop.ome.tif"
needs_real = pytest.mark.skipif(not REAL.exists(), reason="shared real data not mounted")


def _rand(shape, dtype=np.uint16, seed=0):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


def _ome_xml(c, ny, nx, px, unit=None, pyx=None, names=None, z=1, dtype="uint16"):
    """A hand-written minimal OME-XML (so unit handling is tested independently
    of tifffile's writer)."""
    unit_x = f' PhysicalSizeXUnit="{unit}"' if unit else ""
    unit_y = f' PhysicalSizeYUnit="{unit}"' if unit else ""
    pyx = px if pyx is None else pyx
    names = names or [f"m{i}" for i in range(c)]
    chans = "".join(f'<Channel ID="Channel:0:{i}" Name="{n}" SamplesPerPixel="1"/>'
                    for i, n in enumerate(names))
    planes = c * z
    tiffdata = "".join(f'<TiffData IFD="{i}" FirstC="{i % c}" FirstZ="{i // c}" '
                       f'PlaneCount="1"/>' for i in range(planes))
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
            '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
            f'Type="{dtype}" SizeX="{nx}" SizeY="{ny}" SizeC="{c}" SizeZ="{z}" SizeT="1" '
            f'PhysicalSizeX="{px}"{unit_x} PhysicalSizeY="{pyx}"{unit_y}>'
            f"{chans}{tiffdata}</Pixels></Image></OME>")


def _write_raw_ome(path, data, xml):
    with tifffile.TiffWriter(path) as tw:
        for i, plane in enumerate(data.reshape(-1, *data.shape[-2:])):
            tw.write(plane, description=xml.encode() if i == 0 else None, metadata=None,
                     photometric="minisblack")


# --------------------------------------------------------------------------
# write_ome_tiff / open_image round trips
# --------------------------------------------------------------------------


def test_roundtrip_numpy_pyramid(tmp_path):
    data = _rand((3, 300, 250))
    p = tmp_path / "a.ome.tif"
    write_ome_tiff(p, data, ["DAPI", "CD8", "PanCK"], 0.325, tile=64, pyramid_levels=3)
    img = open_image(p)
    assert isinstance(img, MultiplexImage)
    assert img.channel_names == ["DAPI", "CD8", "PanCK"]
    assert img.pixel_size_um == pytest.approx(0.325)
    assert img.dtype == np.uint16 and img.n_channels == 3 and img.shape == (3, 300, 250)
    np.testing.assert_array_equal(img.data.compute(), data)
    assert [lvl.shape for lvl in img.levels] == [(3, 300, 250), (3, 150, 125), (3, 75, 62)]
    # reduced levels are 2x2 block means (independent reference: scikit-image)
    ref1 = np.round(downscale_local_mean(data.astype(float), (1, 2, 2))).astype(np.uint16)
    np.testing.assert_array_equal(img.levels[1].compute(), ref1)
    # the file really is tiled with SubIFDs (what QuPath / napari expect)
    with tifffile.TiffFile(p) as tf:
        assert tf.is_ome and tf.pages[0].is_tiled and tf.pages[0].tilewidth == 64
        assert len(tf.series[0].levels) == 3
    img.close()


def test_auto_pyramid_levels(tmp_path):
    data = np.zeros((1, 2500, 1100), np.uint8)
    data[0, ::7, ::5] = 9
    p = tmp_path / "auto.ome.tif"
    write_ome_tiff(p, data, ["x"], 1.0)
    img = open_image(p)
    # halve until the largest side is < 1024: 2500 -> 1250 -> 625
    assert [lvl.shape[1:] for lvl in img.levels] == [(2500, 1100), (1250, 550), (625, 275)]
    small = tmp_path / "small.ome.tif"
    write_ome_tiff(small, data[:, :1000, :1000], ["x"], 1.0)
    assert len(open_image(small).levels) == 1


def test_roundtrip_2d_and_bool_and_float(tmp_path):
    p = tmp_path / "b.ome.tif"
    mask = np.zeros((40, 33), bool)
    mask[5:9, 3:30] = True
    write_ome_tiff(p, mask, ["mask"], 2.0, tile=16)
    img = open_image(p)
    assert img.shape == (1, 40, 33) and img.dtype == np.uint8
    np.testing.assert_array_equal(img.data[0].compute(), mask.astype(np.uint8))
    f = np.random.default_rng(1).random((2, 20, 50)).astype(np.float32)
    write_ome_tiff(tmp_path / "f.ome.tif", f, ["a", "b"], 0.5, tile=16)
    np.testing.assert_array_equal(open_image(tmp_path / "f.ome.tif").data.compute(), f)


class _TrackingArray:
    """Array-like that records every window dask asks for."""

    def __init__(self, arr):
        self.arr = arr
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.requests = []

    def __getitem__(self, key):
        out = self.arr[key]
        if out.size:  # dask probes with an empty slice for the meta
            self.requests.append(out.size)
        return out


def test_roundtrip_dask_written_band_by_band(tmp_path):
    data = _rand((4, 512, 640), seed=3)
    tracker = _TrackingArray(data)
    arr = da.from_array(tracker, chunks=(1, 64, 64), name="tracked")
    calls = []
    p = tmp_path / "d.ome.tif"
    write_ome_tiff(p, arr, list("abcd"), 0.5, tile=64, pyramid_levels=2,
                   progress=lambda step, done, total: calls.append(
                       (done, total, len(tracker.requests))))
    img = open_image(p)
    np.testing.assert_array_equal(img.data.compute(), data)
    ref1 = np.round(downscale_local_mean(data.astype(float), (1, 2, 2))).astype(np.uint16)
    np.testing.assert_array_equal(img.levels[1].compute(), ref1)
    # never more than one chunk requested at once, and never the whole image
    # materialised: every request is a single (1, 64, 64) chunk, and each is
    # read exactly once (the reduced level is built from the same pass)
    assert max(tracker.requests) == 64 * 64
    assert len(tracker.requests) == 4 * 8 * 10
    assert [f.name for f in tmp_path.iterdir()] == ["d.ome.tif"]  # scratch removed
    # progress: one call per channel band per level, ending at total
    assert calls[-1][0] == calls[-1][1] == 4 * (512 // 64) + 4 * (256 // 64)
    # full-resolution level: when band k has been computed, exactly k bands of
    # 640/64 = 10 chunks have been read: the image is streamed band by band
    assert [c[2] for c in calls[:32]] == [10 * k for k in range(1, 33)]


@settings(max_examples=12, deadline=None)
@given(ny=st.integers(1, 140), nx=st.integers(1, 140), c=st.integers(1, 3),
       tile=st.sampled_from([16, 32, 48]), levels=st.integers(1, 3), as_dask=st.booleans())
def test_roundtrip_any_shape(tmp_path_factory, ny, nx, c, tile, levels, as_dask):
    data = _rand((c, ny, nx), dtype=np.uint8, seed=ny * nx)
    p = tmp_path_factory.mktemp("h") / "h.ome.tif"
    src = da.from_array(data, chunks=(1, 37, 23)) if as_dask else data
    write_ome_tiff(p, src, [f"c{i}" for i in range(c)], 0.7, tile=tile,
                   pyramid_levels=levels)
    img = open_image(p)
    np.testing.assert_array_equal(img.data.compute(), data)
    ref = data
    for lvl, arr in enumerate(img.levels):
        assert arr.shape == (c, ny // 2**lvl, nx // 2**lvl)
        # every level is the 2x2 mean of the one above (skimage as reference)
        np.testing.assert_array_equal(arr.compute(), ref)
        h, w = ref.shape[1] // 2, ref.shape[2] // 2
        ref = np.round(downscale_local_mean(ref[:, :2 * h, :2 * w].astype(float),
                                            (1, 2, 2))).astype(np.uint8)
    # a random window through read_region equals the numpy slice
    y0, x0 = ny // 3, nx // 4
    np.testing.assert_array_equal(img.read_region(None, y0, ny, x0, nx), data[:, y0:, x0:])
    img.close()


def test_labels_roundtrip_exact(tmp_path):
    rng = np.random.default_rng(5)
    lab = rng.integers(0, 3_000_000_000, (300, 270)).astype(np.uint32)
    lab[:, :5] = 0
    p = tmp_path / "lab.ome.tif"
    write_labels_ome_tiff(p, lab, 0.5, tile=64)
    img = open_image(p)
    assert img.channel_names == ["cell_labels"] and img.dtype == np.uint32
    assert img.pixel_size_um == 0.5
    np.testing.assert_array_equal(img.data[0].compute(), lab)
    # zarr and dask inputs give the same file content
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=lab.shape, chunks=(64, 64),
                          dtype=np.uint32)
    z[:] = lab
    for src in (z, da.from_array(lab.astype(np.int64), chunks=100)):
        q = tmp_path / "lab2.ome.tif"
        write_labels_ome_tiff(q, src, 0.5, tile=64)
        np.testing.assert_array_equal(open_image(q).data[0].compute(), lab)
    # reduced levels keep label values (nearest, not mean)
    write_labels_ome_tiff(p, np.kron(np.arange(1, 17, dtype=np.uint32).reshape(4, 4),
                                     np.ones((400, 400), np.uint32)), 1.0)
    img = open_image(p)
    assert len(img.levels) == 2
    assert set(np.unique(img.levels[1].compute())) == set(range(1, 17))


def test_labels_bad_input(tmp_path):
    with pytest.raises(InputError, match="2-D"):
        write_labels_ome_tiff(tmp_path / "l.tif", np.zeros((2, 3, 3), np.uint32), 1.0)
    with pytest.raises(InputError, match="integers"):
        write_labels_ome_tiff(tmp_path / "l.tif", np.zeros((3, 3), np.float32), 1.0)
    with pytest.raises(InputError, match="0..2"):
        write_labels_ome_tiff(tmp_path / "l.tif", -np.ones((3, 3), np.int32), 1.0)
    assert not (tmp_path / "l.tif").exists()


def test_writer_is_atomic(tmp_path):
    p = tmp_path / "x.ome.tif"

    def boom(x):
        raise RuntimeError("disk on fire")

    arr = da.ones((1, 64, 64), chunks=32, dtype=np.uint8).map_blocks(boom, dtype=np.uint8)
    with pytest.raises(RuntimeError):
        write_ome_tiff(p, arr, ["a"], 1.0, tile=32)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# Pixel size and units
# --------------------------------------------------------------------------


@pytest.mark.parametrize("value, unit, expected", [
    (650.0, "nm", 0.65), (0.00065, "mm", 0.65), (6500.0, "Å", 0.65),
    (0.65, "µm", 0.65), (0.000065, "cm", 0.65), (0.65, None, 0.65),
])
def test_ome_units_converted(tmp_path, value, unit, expected):
    data = _rand((2, 20, 30))
    p = tmp_path / "u.ome.tif"
    _write_raw_ome(p, data, _ome_xml(2, 20, 30, value, unit=unit, names=["DNA1", "CD3"]))
    img = open_image(p)
    assert img.pixel_size_um == pytest.approx(expected, rel=1e-9)
    assert img.channel_names == ["DNA1", "CD3"]
    np.testing.assert_array_equal(img.data.compute(), data)


def test_anisotropic_pixels_rejected(tmp_path):
    p = tmp_path / "an.ome.tif"
    _write_raw_ome(p, _rand((1, 10, 10)), _ome_xml(1, 10, 10, 0.5, unit="µm", pyx=0.6))
    with pytest.raises(InputError, match=r"not square .*0\.5 x 0\.6"):
        open_image(p)
    # within 1 % is accepted
    _write_raw_ome(p, _rand((1, 10, 10)), _ome_xml(1, 10, 10, 0.5, unit="µm", pyx=0.503))
    assert open_image(p).pixel_size_um == pytest.approx(0.5)


def test_pixel_size_argument_overrides_and_supplies(tmp_path):
    p = tmp_path / "a.ome.tif"
    write_ome_tiff(p, _rand((1, 10, 10)), ["a"], 0.5)
    with pytest.warns(UserWarning, match="overrides"):
        assert open_image(p, pixel_size_um=0.25).pixel_size_um == 0.25
    for bad in (0, -1, float("nan"), "abc"):
        with pytest.raises(InputError, match="pixel_size_um"):
            open_image(p, pixel_size_um=bad)
    q = tmp_path / "nopx.tif"
    tifffile.imwrite(q, _rand((10, 10)))
    with pytest.raises(InputError, match=r"nopx\.tif: no pixel size .*--pixel-size-um"):
        open_image(q)
    assert open_image(q, pixel_size_um=0.8).pixel_size_um == 0.8


def test_resolution_tags_cm_inch_and_dpi_default(tmp_path):
    q = tmp_path / "cm.tif"
    tifffile.imwrite(q, _rand((10, 10)), resolution=(1e4 / 0.4, 1e4 / 0.4),
                     resolutionunit="CENTIMETER")
    assert open_image(q).pixel_size_um == pytest.approx(0.4)
    tifffile.imwrite(q, _rand((10, 10)), resolution=(25400 / 0.4, 25400 / 0.4),
                     resolutionunit="INCH")
    assert open_image(q).pixel_size_um == pytest.approx(0.4)
    # 72 dpi is a desktop-software default, not a microscope's pixel size
    tifffile.imwrite(q, _rand((10, 10)), resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(InputError, match="no pixel size"):
        open_image(q)


# --------------------------------------------------------------------------
# Multipage TIFF layouts
# --------------------------------------------------------------------------


def test_mibi_pagename_multipage(tmp_path):
    data = _rand((3, 32, 40), dtype=np.uint8)
    names = ["dsDNA", "CD45", "Pan-Keratin"]
    p = tmp_path / "mibi.tiff"
    with tifffile.TiffWriter(p) as tw:
        for plane, name in zip(data, names):
            tw.write(plane, metadata=None, photometric="minisblack",
                     resolution=(1e4 / 0.39, 1e4 / 0.39), resolutionunit="CENTIMETER",
                     extratags=[(285, "s", 0, name, True)])
    img = open_image(p)
    assert img.channel_names == names
    assert img.pixel_size_um == pytest.approx(0.39)
    np.testing.assert_array_equal(img.data.compute(), data)
    assert img.channel_index("pan keratin") == 2


def test_per_page_description_names(tmp_path):
    """Akoya/PerkinElmer XML (<Biomarker> over <Name>) and MIBI JSON descriptions."""
    data = _rand((2, 24, 20), dtype=np.uint8)
    xml = ('<?xml version="1.0" encoding="utf-8"?><PerkinElmer-QPI-ImageDescription>'
           "<Name>{dye}</Name><Biomarker>{marker}</Biomarker>"
           "</PerkinElmer-QPI-ImageDescription>")
    p = tmp_path / "qpi.tif"
    with tifffile.TiffWriter(p) as tw:
        for plane, (dye, marker) in zip(data, [("DAPI", ""), ("Opal 570", "CD8")]):
            tw.write(plane, description=xml.format(dye=dye, marker=marker), metadata=None,
                     photometric="minisblack")
    assert open_image(p, pixel_size_um=0.5).channel_names == ["DAPI", "CD8"]
    q = tmp_path / "mibi_json.tif"
    with tifffile.TiffWriter(q) as tw:
        for plane, name in zip(data, ["dsDNA", "CD20"]):
            tw.write(plane, description='{"channel.mass": 89, "channel.target": "%s"}' % name,
                     metadata=None, photometric="minisblack")
    img = open_image(q, pixel_size_um=0.5)
    assert img.channel_names == ["dsDNA", "CD20"]
    np.testing.assert_array_equal(img.data.compute(), data)


def test_imagej_hyperstack_labels(tmp_path):
    data = _rand((4, 30, 20))
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, data, imagej=True, resolution=(1 / 0.325, 1 / 0.325),
                     metadata={"axes": "CYX", "unit": "um", "Labels": ["DAPI", "CD3", "CD8",
                                                                        "FOXP3"]})
    img = open_image(p)
    assert img.channel_names == ["DAPI", "CD3", "CD8", "FOXP3"]
    assert img.pixel_size_um == pytest.approx(0.325, rel=1e-6)
    np.testing.assert_array_equal(img.data.compute(), data)
    # nm in ImageJ metadata
    tifffile.imwrite(p, data, imagej=True, resolution=(1 / 325, 1 / 325),
                     metadata={"axes": "CYX", "unit": "nm"})
    with pytest.warns(UserWarning, match="no channel names"):
        img = open_image(p)
    assert img.pixel_size_um == pytest.approx(0.325, rel=1e-6)
    assert img.channel_names == ["channel_0", "channel_1", "channel_2", "channel_3"]


def test_zstack_time_rgb_rejected(tmp_path):
    p = tmp_path / "z.tif"
    tifffile.imwrite(p, _rand((5, 2, 16, 16)), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match="has 5 z-planes; .*max projection"):
        open_image(p, pixel_size_um=1)
    tifffile.imwrite(p, _rand((3, 2, 16, 16)), imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(InputError, match="3 time points"):
        open_image(p, pixel_size_um=1)
    tifffile.imwrite(p, _rand((16, 16, 3), dtype=np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="RGB"):
        open_image(p, pixel_size_um=1)
    # multi-sample (non-RGB) pixels: samples are channels
    data = _rand((16, 12, 5), dtype=np.uint8)
    tifffile.imwrite(p, data, photometric="minisblack", planarconfig="contig")
    img = open_image(p, pixel_size_um=1, channel_names=list("abcde"))
    assert img.shape == (5, 16, 12)
    np.testing.assert_array_equal(img.data.compute(), np.moveaxis(data, -1, 0))
    np.testing.assert_array_equal(img.read_region([4, 1], 3, 9, 2, 5),
                                  np.moveaxis(data[3:9, 2:5, [4, 1]], -1, 0))
    # singleton T/Z axes are squeezed
    tifffile.imwrite(p, _rand((1, 1, 2, 16, 16)), imagej=True, metadata={"axes": "TZCYX"})
    assert open_image(p, pixel_size_um=1, channel_names=["a", "b"]).shape == (2, 16, 16)
    q = tmp_path / "z.ome.tif"
    _write_raw_ome(q, _rand((5, 2, 12, 12)), _ome_xml(2, 12, 12, 0.5, unit="µm", z=5))
    with pytest.raises(InputError, match="z.ome.tif: has 5 z-planes"):
        open_image(q)


def test_channel_names_argument_and_lookup(tmp_path):
    p = tmp_path / "a.ome.tif"
    write_ome_tiff(p, _rand((3, 10, 10)), ["NaK-ATPase", "CD8", "CD8"], 0.5)
    with pytest.warns(UserWarning, match="'CD8' occurs more than once"):
        img = open_image(p)
    assert img.channel_names == ["NaK-ATPase", "CD8", "CD8_2"]
    assert img.channel_index("nak_atpase") == 0 and img.channel_index("NAK ATPASE") == 0
    assert img.channel_index("cd8_2") == 2
    with pytest.raises(InputError, match="no channel named 'SPP1'; it has: NaK-ATPase, CD8"):
        img.channel_index("SPP1")
    img2 = open_image(p, channel_names=["a", "b", "c"])
    assert img2.channel_names == ["a", "b", "c"]
    with pytest.raises(InputError, match="2 channel names given but the image has 3"):
        open_image(p, channel_names=["a", "b"])


# --------------------------------------------------------------------------
# Laziness
# --------------------------------------------------------------------------


def _corrupt_tile(path, page_index, tile_index):
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[page_index]
        off, n = page.dataoffsets[tile_index], page.databytecounts[tile_index]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00\xff" * (n // 2))


def test_read_region_reads_only_its_tiles(tmp_path):
    """A window read must decode only the tiles it overlaps: we break one far
    tile on disk; the window still reads, the whole image fails (with an
    InputError, not a zlib traceback)."""
    data = _rand((2, 2048, 2048), dtype=np.uint8)
    p = tmp_path / "big.ome.tif"
    write_ome_tiff(p, data, ["a", "b"], 0.5, tile=256, pyramid_levels=1)
    _corrupt_tile(p, 1, 63)  # channel b, bottom-right tile
    img = open_image(p)
    assert img.data.chunksize == (1, 1024, 1024)
    np.testing.assert_array_equal(img.read_region([1, 0], 10, 200, 5, 300),
                                  data[[1, 0], 10:200, 5:300])
    np.testing.assert_array_equal(img.data[:, :500, :500].compute(), data[:, :500, :500])
    with pytest.raises(InputError, match=r"big\.ome\.tif: cannot decode pixel data"):
        img.read_region([1], 1900, 2048, 1900, 2048)
    with pytest.raises(InputError, match="truncated or corrupt"):
        img.data.compute()


@pytest.fixture(scope="module")
def tile_and_strip_files(tmp_path_factory):
    """The same 3 x 157 x 203 image as a tiled pyramidal OME-TIFF, a strip TIFF
    (7 rows per strip, predictor) and an uncompressed multi-page TIFF."""
    d = tmp_path_factory.mktemp("layouts")
    data = _rand((3, 157, 203), seed=4)
    write_ome_tiff(d / "tiled.ome.tif", data, ["a", "b", "c"], 0.5, tile=32, pyramid_levels=3)
    tifffile.imwrite(d / "strips.tif", data, photometric="minisblack", rowsperstrip=7,
                     compression="zlib", predictor=True, metadata=None)
    tifffile.imwrite(d / "raw.tif", data, photometric="minisblack", metadata=None)
    return d, data


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["tiled.ome.tif", "strips.tif", "raw.tif"]), data_=st.data())
def test_direct_tile_reader_equals_full_decode(tile_and_strip_files, name, data_):
    """read_region decodes only the tiles/strips of a window itself (no zarr): any
    window, any channel subset and order, any pyramid level equals tifffile's full decode."""
    d, data = tile_and_strip_files
    img = open_image(d / name, pixel_size_um=0.5)
    assert img._page_readers and all(r is not None for r in img._page_readers)
    level = data_.draw(st.integers(0, len(img.levels) - 1))
    full = img.levels[level].compute() if level else data
    _, ny, nx = full.shape
    y0 = data_.draw(st.integers(0, ny - 1)); y1 = data_.draw(st.integers(y0 + 1, ny))
    x0 = data_.draw(st.integers(0, nx - 1)); x1 = data_.draw(st.integers(x0 + 1, nx))
    ch = data_.draw(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True))
    got = img.read_region(ch, y0, y1, x0, x1, level=level)
    np.testing.assert_array_equal(got, full[ch, y0:y1, x0:x1])
    np.testing.assert_array_equal(img.read_region(None, y0, y1, x0, x1, level=level),
                                  full[:, y0:y1, x0:x1])
    img.close()


def test_dask_chunks_follow_tiles(tmp_path):
    p = tmp_path / "t.ome.tif"
    write_ome_tiff(p, np.ones((2, 3000, 2100), np.uint8), ["a", "b"], 1.0, tile=256,
                   pyramid_levels=1)
    img = open_image(p)
    # chunks are whole tiles (multiples of 256), about 1024 px, one channel each
    assert img.data.chunks[0] == (1, 1)
    assert all(c % 256 == 0 for c in img.data.chunks[1][:-1])
    assert max(img.data.chunks[1]) == 1024 and max(img.data.chunks[2]) == 1024
    # slicing a window builds a graph touching only the overlapping chunks
    sub = img.data[0, 1100:1200, 50:60]
    graph = sub.__dask_graph__().cull(set(flatten(sub.__dask_keys__())))
    # the source, the one overlapping chunk, and the getitem
    assert len(graph) == 3


# --------------------------------------------------------------------------
# Folders and real data
# --------------------------------------------------------------------------


@needs_real
def test_real_dcis_folder():
    with pytest.raises(InputError, match="Point2203_pt1072_31606: no pixel size"):
        open_image(DCIS)
    img = open_image(DCIS, pixel_size_um=0.39)
    assert img.shape == (41, 1024, 1024) and img.dtype == np.uint8
    assert img.channel_names == sorted(img.channel_names, key=str.lower)
    assert {"CD8", "COLI", "PanKRT", "HH3", "MPO", "SMA", "FAP"} <= set(img.channel_names)
    i = img.channel_index("cd8")
    ref = tifffile.imread(DCIS / "CD8.tif")
    np.testing.assert_array_equal(img.data[i].compute(), ref)
    np.testing.assert_array_equal(img.read_region([i], 300, 420, 7, 99)[0], ref[300:420, 7:99])
    check_not_empty(img)


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="folder holds no .tif"):
        open_image(tmp_path)
    tifffile.imwrite(tmp_path / "CD3.tif", _rand((20, 30)))
    tifffile.imwrite(tmp_path / "CD8.tif", _rand((20, 31)))
    with pytest.raises(InputError, match=r"CD8\.tif: is 20x31 pixels but CD3\.tif is 20x30"):
        open_image(tmp_path, pixel_size_um=1)
    tifffile.imwrite(tmp_path / "CD8.tif", _rand((2, 20, 30)))
    with pytest.raises(InputError, match=r"CD8\.tif: has 2 channels"):
        open_image(tmp_path, pixel_size_um=1)
    a, b = _rand((20, 30), seed=1), _rand((20, 30), seed=2)
    tifffile.imwrite(tmp_path / "CD8.tif", a)
    tifffile.imwrite(tmp_path / "CD3.tif", b)
    tifffile.imwrite(tmp_path / "aSMA.tiff", a)
    (tmp_path / "notes.txt").write_text("x")
    img = open_image(tmp_path, pixel_size_um=1)
    assert img.channel_names == ["aSMA", "CD3", "CD8"]
    np.testing.assert_array_equal(img.data.compute(), np.stack([a, b, a]))


@needs_real
def test_real_mihc_ome():
    with pytest.warns(UserWarning, match="'HEM' occurs more than once"):
        img = open_image(MIHC)
    assert img.shape == (25, 451, 501)
    assert img.pixel_size_um == pytest.approx(0.5022)
    assert img.channel_names.count("HEM") == 1 and "HEM_2" in img.channel_names
    assert img.channel_names.index("HEM_2") > img.channel_names.index("HEM")
    assert {"CD45", "CD8", "CD3", "PANCK", "FOXP3", "KI67"} <= set(img.channel_names)
    ref = tifffile.imread(MIHC)
    np.testing.assert_array_equal(img.data.compute(), ref)
    assert len(img.levels) >= 2 and img.levels[1].shape[0] == 25
    with tifffile.TiffFile(MIHC) as tf:
        np.testing.assert_array_equal(img.levels[1].compute(), tf.series[0].levels[1].asarray())


@needs_real
def test_real_csm_crop():
    with pytest.raises(InputError, match="no pixel size"):
        open_image(CSM)
    img = open_image(CSM, pixel_size_um=0.5)
    assert img.channel_names == ["DAPI", "PDL1", "GZMB", "PD1", "CK-EPCAM", "CD8a", "FOXP3"]
    assert img.shape == (7, 500, 500)
    np.testing.assert_array_equal(img.data.compute(), tifffile.imread(CSM))
    assert img.channel_index("ck_epcam") == 4


@needs_real
def test_real_inform_component_names():
    """PerkinElmer/inForm component TIFF: per-page XML names, pixel size in cm."""
    img = open_image(REAL / "phenoptr_lung_vectra" /
                     "FIHC4__0929309_HP_IM3_2_component_data.tif")
    assert img.shape == (5, 260, 348) and img.dtype == np.float32
    assert sorted(img.channel_names) == ["Alexa 594", "Cy3", "Cy5", "DAPI", "FITC"]
    assert img.pixel_size_um == pytest.approx(1e4 * 213523 / 4294967295)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_missing_and_not_tiff(tmp_path):
    with pytest.raises(InputError, match=r"nope\.tif: no such file"):
        open_image(tmp_path / "nope.tif")
    t = tmp_path / "text.tif"
    t.write_text("Cell ID,x,y\n1,2,3\n")
    with pytest.raises(InputError, match=r"text\.tif: not a TIFF file \(it looks like text\)"):
        open_image(t)
    png = tmp_path / "pic.tif"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(InputError, match=r"not a TIFF file \(it is a PNG image\)"):
        open_image(png)
    e = tmp_path / "empty.tif"
    e.write_bytes(b"")
    with pytest.raises(InputError, match="it is empty"):
        open_image(e)


def test_truncated_and_corrupt_headers(tmp_path):
    p = tmp_path / "t.ome.tif"
    write_ome_tiff(p, _rand((2, 300, 300)), ["a", "b"], 0.5, tile=64, pyramid_levels=1)
    raw = p.read_bytes()
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.ome\.tif: .*truncated"):
        open_image(cut)
    bad = tmp_path / "badifd.tif"
    bad.write_bytes(raw[:4] + b"\xff\xff\xff\x7f" + raw[8:100])  # IFD offset past the end
    with pytest.raises(InputError, match=r"badifd\.tif: .*(truncated|corrupt)"):
        open_image(bad)
    head = tmp_path / "head.tif"
    head.write_bytes(raw[:6])
    with pytest.raises(InputError, match=r"head\.tif: "):
        open_image(head)


def test_check_not_empty(tmp_path):
    p = tmp_path / "zero.ome.tif"
    write_ome_tiff(p, da.zeros((2, 2100, 2100), dtype=np.uint8, chunks=512), ["a", "b"], 1.0)
    img = open_image(p)
    assert len(img.levels) == 3
    with pytest.raises(InputError, match=r"zero\.ome\.tif: every pixel is 0"):
        check_not_empty(img)
    # a single dim pixel vanishes from the mean-downsampled levels but the image
    # is not empty: no false alarm
    data = np.zeros((2, 2100, 2100), np.uint8)
    data[1, 2099, 3] = 1
    write_ome_tiff(p, data, ["a", "b"], 1.0)
    img = open_image(p)
    assert not img.levels[-1].compute().any()
    check_not_empty(img)
    with pytest.raises(InputError, match="every pixel of channels a is 0"):
        check_not_empty(img, channels=[0])
