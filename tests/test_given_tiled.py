"""Given label masks measured tile by tile equal the whole-image measurement, in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
import tifffile

from tibspace.errors import InputError
from tibspace.io import open_image, read_label_mask, write_ome_tiff
from tibspace.io.label_tiles import LabelPlane, open_label_plane, scan_label_plane
from tibspace.segment import segment_from_label_files, segment_from_labels
from tibspace.segment import given_tiled
from tibspace.synthetic import make_tissue

TIFF_TILE = 16    # TIFF tile side: smaller than the cell spacing, so cells cross TIFF tiles
MEASURE_TILE = 64  # measurement tile side: cells cross tile cores too


@pytest.fixture(scope="module")
def tissue(tmp_path_factory):
    """A 512² synthetic image with its cell / nucleus masks as tiled TIFFs of sparse ids."""
    d = tmp_path_factory.mktemp("given_tiled")
    t = make_tissue((512, 512), seed=3, n_nests=1, nest_radius_um=(50, 60))
    t.write(d)
    sparse = lambda lab: np.where(lab > 0, lab.astype(np.int64) * 7 + 1000, 0).astype(np.uint32)  # noqa: E731
    tifffile.imwrite(d / "cells.tif", sparse(t.cells), tile=(TIFF_TILE, TIFF_TILE), compression="zlib")
    tifffile.imwrite(d / "nuclei.tif", sparse(t.nuclei), tile=(TIFF_TILE, TIFF_TILE))
    return d, t


def _whole(img, cells_path, nuclei_path=None):
    """Today's whole-image path: read the masks whole, measure on the whole image."""
    cells, ids = read_label_mask(cells_path, shape=(512, 512))
    nuc = read_label_mask(nuclei_path, shape=(512, 512))[0] if nuclei_path else None
    return segment_from_labels(img, cells, nuc, label_ids=ids)


@pytest.mark.parametrize("with_nuclei", [False, True])
def test_tiled_equals_whole_image_measurement(tissue, with_nuclei):
    d, t = tissue
    nuc = d / "nuclei.tif" if with_nuclei else None
    img = open_image(d / "image.ome.tif")
    try:
        plane = open_label_plane(d / "cells.tif", shape=(512, 512))
        assert plane is not None and plane._array.chunks == (TIFF_TILE, TIFF_TILE)  # read by window
        plane.close()
        whole = _whole(img, d / "cells.tif", nuc)
        tiled = segment_from_label_files(img, d / "cells.tif", nuc, tile_size_px=MEASURE_TILE)
    finally:
        img.close()
    assert tiled.n_tiles == 64 and len(tiled.cells) == int((np.unique(t.cells) > 0).sum()) > 100
    # every cell measured once, the same numbers to the bit, ids and original ids as before
    pd.testing.assert_frame_equal(tiled.cells, whole.cells, check_exact=True)
    assert np.array_equal(tiled.cells["label_id"], np.unique(t.cells[t.cells > 0]) * 7 + 1000)
    assert np.array_equal(tiled.labels, whole.labels) and tiled.labels.dtype == np.int32
    assert np.array_equal(tiled.nuclei, whole.nuclei)
    assert tiled.parameters["nuclei_source"] == whole.parameters["nuclei_source"]


def test_cells_crossing_tiles_are_measured_whole(tissue):
    """Cells whose box crosses a measurement-tile border exist, and keep their whole area."""
    d, t = tissue
    cells = t.cells
    ids, area = np.unique(cells[cells > 0], return_counts=True)
    img = open_image(d / "image.ome.tif")
    try:
        tiled = segment_from_label_files(img, d / "cells.tif", tile_size_px=MEASURE_TILE)
    finally:
        img.close()
    index = scan_label_plane(LabelPlane.of_array(d / "c", cells), MEASURE_TILE)
    b = index.boxes
    crossing = ((b[:, 0] // MEASURE_TILE) != ((b[:, 1] - 1) // MEASURE_TILE)) | \
               ((b[:, 2] // MEASURE_TILE) != ((b[:, 3] - 1) // MEASURE_TILE))
    assert crossing.sum() > 50
    px2 = 0.5 * 0.5
    assert np.array_equal(tiled.cells["area_um2"].to_numpy(), area * px2)


def test_nuclei_npy_with_tiled_cells_and_zarr_labels(tissue, tmp_path, monkeypatch):
    """A nucleus mask read whole joins a tiled cell mask; above the in-memory size the labels are zarr."""
    d, t = tissue
    np.save(tmp_path / "nuc_seg.npy", {"masks": t.nuclei.astype(np.int32)}, allow_pickle=True)
    monkeypatch.setattr(given_tiled, "_IN_MEMORY_MAX_PX", 0)
    img = open_image(d / "image.ome.tif")
    try:
        whole = _whole(img, d / "cells.tif", tmp_path / "nuc_seg.npy")
        tiled = segment_from_label_files(img, d / "cells.tif", tmp_path / "nuc_seg.npy",
                                         tile_size_px=100, work_dir=tmp_path)
    finally:
        img.close()
    assert not isinstance(tiled.labels, np.ndarray) and not isinstance(tiled.nuclei, np.ndarray)
    pd.testing.assert_frame_equal(tiled.cells, whole.cells, check_exact=True)
    assert np.array_equal(np.asarray(tiled.labels), whole.labels)
    assert np.array_equal(np.asarray(tiled.nuclei), whole.nuclei)


def _mosaic(d, t, n):
    """An ``n × n`` mosaic of the tissue's image and cells (ids offset per copy), tiled TIFFs."""
    img = np.tile(t.image, (1, n, n))
    m = t.cells.max() + 1
    cells = np.block([[np.where(t.cells > 0, t.cells + m * (i * n + j), 0) for j in range(n)]
                      for i in range(n)]).astype(np.uint32)
    write_ome_tiff(d / f"image{n}.ome.tif", img, list(t.channel_names), t.pixel_size_um)
    tifffile.imwrite(d / f"cells{n}.tif", cells, tile=(64, 64))
    return d / f"image{n}.ome.tif", d / f"cells{n}.tif", cells.nbytes


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_mask(tissue, tmp_path, monkeypatch):
    """Peak traced memory at a fixed 128 px tile: 16× the mask pixels, under 1.5× the memory;
    the whole-image path grows with the mask."""
    d, t = tissue
    monkeypatch.setattr(given_tiled, "_IN_MEMORY_MAX_PX", 0)  # labels to zarr, as on a slide
    peaks, whole_peaks, sizes = [], [], []
    for n in (1, 4):
        image, cells, nbytes = _mosaic(tmp_path, t, n)
        img = open_image(image)
        try:
            run = lambda: segment_from_label_files(img, cells, tile_size_px=128,  # noqa: E731
                                                   work_dir=tmp_path)
            run()  # numba compiled, caches warm
            peaks.append(_peak_bytes(run))
            whole_peaks.append(_peak_bytes(lambda: _whole_any(img, cells)))
        finally:
            img.close()
        sizes.append(nbytes)
    print(f"peak traced MB, tiled {[p / 1e6 for p in peaks]}, whole {[p / 1e6 for p in whole_peaks]}")
    assert sizes[1] == 16 * sizes[0]
    assert peaks[1] < 1.5 * peaks[0], peaks
    # the tiled peak grows by less than a quarter of what the uint32 mask grows by
    assert peaks[1] - peaks[0] < 0.25 * (sizes[1] - sizes[0]), (peaks, sizes)
    assert whole_peaks[1] > 8 * whole_peaks[0] and whole_peaks[1] > 4 * peaks[1], (whole_peaks, peaks)


def test_nuclei_alone_are_grown_window_by_window_as_on_the_whole_image(tissue):
    """A nucleus mask alone: cells grown per window (halo = expansion) equal the whole-image expansion."""
    d, t = tissue
    img = open_image(d / "image.ome.tif")
    try:
        nuc, ids = read_label_mask(d / "nuclei.tif", nuclei=True, shape=(512, 512))
        whole = segment_from_labels(img, None, nuc, label_ids=ids)
        tiled = segment_from_label_files(img, None, d / "nuclei.tif", tile_size_px=MEASURE_TILE)
    finally:
        img.close()
    assert tiled.n_tiles == 64 and tiled.parameters["cells_source"] == "expanded from nuclei"
    assert tiled.parameters["expansion_um"] == 3.0 and len(tiled.cells) > 100
    pd.testing.assert_frame_equal(tiled.cells, whole.cells, check_exact=True)
    assert np.array_equal(tiled.labels, whole.labels) and np.array_equal(tiled.nuclei, whole.nuclei)
    # cells really grew past their nuclei, across the 64 px tile seams too
    assert (tiled.labels > 0).sum() > 1.3 * (tiled.nuclei > 0).sum()


def test_nuclei_alone_memory_does_not_grow_with_the_mask(tissue, tmp_path, monkeypatch):
    """As for cell masks: 16x the nucleus-mask pixels, under 1.5x the peak traced memory."""
    d, t = tissue
    monkeypatch.setattr(given_tiled, "_IN_MEMORY_MAX_PX", 0)
    peaks = []
    for n in (1, 4):
        image, mask, _ = _mosaic(tmp_path, t, n)
        img = open_image(image)
        try:
            run = lambda: segment_from_label_files(img, None, mask, tile_size_px=128,  # noqa: E731
                                                   work_dir=tmp_path)
            run()
            peaks.append(_peak_bytes(run))
        finally:
            img.close()
    assert peaks[1] < 1.5 * peaks[0], peaks


def _whole_any(img, cells_path):
    shape = tuple(int(v) for v in img.shape[-2:])
    cells, ids = read_label_mask(cells_path, shape=shape)
    return segment_from_labels(img, cells, None, label_ids=ids)


@pytest.mark.parametrize("arr,msg", [
    (np.ones((10, 10), np.int32), "label shape 10x10 does not match image 40x50"),
    (np.full((40, 50), 0.5, np.float32), "non-integer"),
    (np.zeros((40, 50), np.uint16), "empty"),
    (np.full((40, 50), -1, np.int32), "non-negative"),
    (np.ones((40, 50), bool), "boolean"),
])
def test_bad_tiled_masks_one_line(tmp_path, arr, msg):
    tifffile.imwrite(tmp_path / "bad.tif", arr, tile=(16, 16))
    with pytest.raises(InputError, match=msg) as e:
        plane = open_label_plane(tmp_path / "bad.tif", shape=(40, 50))
        scan_label_plane(plane, 64)
    assert "\n" not in str(e.value) and "bad.tif" in str(e.value)


def test_pixel_size_checked_from_the_header(tmp_path):
    lab = np.zeros((64, 64), np.uint16)
    lab[5:9, 5:9] = 3
    tifffile.imwrite(tmp_path / "l.tif", lab, tile=(16, 16), resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    with pytest.raises(InputError, match="label pixel size 1 µm"):
        open_label_plane(tmp_path / "l.tif", shape=(64, 64), pixel_size_um=0.5)
    assert open_label_plane(tmp_path / "l.tif", shape=(64, 64), pixel_size_um=1.0) is not None


def test_masks_read_whole_where_they_must_be(tmp_path):
    """.npy, stacks (DeepCell 2-channel) and inForm maps stay on the whole-image reader."""
    lab = np.zeros((40, 50), np.int32)
    lab[2:10, 3:12] = 7
    np.save(tmp_path / "m_seg.npy", {"masks": lab}, allow_pickle=True)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([lab, lab]))
    tifffile.imwrite(tmp_path / "plain.tif", lab)  # stripped: read by window
    assert open_label_plane(tmp_path / "m_seg.npy") is None
    assert open_label_plane(tmp_path / "stack.tif") is None
    plane = open_label_plane(tmp_path / "plain.tif")
    assert plane is not None and np.array_equal(plane.read(0, 40, 0, 50), lab)
    index = scan_label_plane(plane, 64)
    assert index.ids.tolist() == [7] and index.boxes.tolist() == [[2, 10, 3, 12]]
    plane.close()


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_one_strip_uncompressed_mask_is_memory_mapped_by_window(tmp_path, monkeypatch, byteorder):
    """An uncompressed one-strip TIFF (tifffile.imwrite's default) with a strip above the chunk
    limit is read through a memory map; a compressed one that large is read whole."""
    from tibspace.io import label_tiles

    lab = np.zeros((40, 50), np.uint32)
    lab[2:10, 3:12] = 70000
    lab[30:38, 40:48] = 5
    tifffile.imwrite(tmp_path / "one.tif", lab, byteorder=byteorder)
    tifffile.imwrite(tmp_path / "z.tif", lab, compression="zlib", rowsperstrip=40)
    monkeypatch.setattr(label_tiles, "MAX_CHUNK_PX", 100)
    plane = open_label_plane(tmp_path / "one.tif", shape=(40, 50))
    assert isinstance(plane._array, label_tiles._Contiguous)
    assert np.array_equal(plane.read(1, 33, 4, 45), lab[1:33, 4:45])
    index = scan_label_plane(plane, 64)
    assert index.ids.tolist() == [5, 70000] and index.boxes.tolist() == [[30, 38, 40, 48], [2, 10, 3, 12]]
    plane.close()
    assert open_label_plane(tmp_path / "z.tif", shape=(40, 50)) is None


def test_run_image_with_a_tiled_mask_writes_its_labels(tissue, tmp_path, monkeypatch):
    """``run_image(labels=tiled TIFF)``: cell table of the whole-image path, cell_labels.ome.tif relabelled."""
    from tibspace.pipeline import run_image

    d, t = tissue
    np.save(tmp_path / "cells_seg.npy", {"masks": tifffile.imread(d / "cells.tif")}, allow_pickle=True)
    a = run_image(d / "image.ome.tif", d / "panel.toml", out_dir=tmp_path / "a", labels=tmp_path / "cells_seg.npy",
                  seed=0)
    monkeypatch.setattr(given_tiled, "_IN_MEMORY_MAX_PX", 0)
    b = run_image(d / "image.ome.tif", d / "panel.toml", out_dir=tmp_path / "b", labels=d / "cells.tif",
                  seed=0, tile_size_px=MEASURE_TILE)
    assert a.metrics["segmentation"]["n_tiles"] == 1 and b.metrics["segmentation"]["n_tiles"] == 64
    ca = pd.read_parquet(tmp_path / "a" / "cells.parquet")
    cb = pd.read_parquet(tmp_path / "b" / "cells.parquet")
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)
    la = tifffile.imread(tmp_path / "a" / "cell_labels.ome.tif", level=0)
    lb = tifffile.imread(tmp_path / "b" / "cell_labels.ome.tif", level=0)
    assert np.array_equal(la, lb) and lb.max() == len(cb)
