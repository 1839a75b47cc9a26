"""Tile-bounded segmentation: tiles stream their label crops to disk and are pasted as they finish.

The streamed assembly must give exactly the labels and cell table of the
in-memory assembly (every tile's crops held until the end), in every
scheduler; crops must not pile up on disk or in memory; temporary folders
live in the given work folder (a run's scratch folder beside ``--out``) and
go with the run.
"""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest

import tibspace
from tibspace.errors import InputError
from tibspace.io import write_ome_tiff
from tibspace.segment import image as seg_image
from tibspace.segment import segment_image
from tibspace.synthetic import make_tissue


def _write(tmp_path, shape, seed, name="img.ome.tif", n_nests=1):
    t = make_tissue(shape=shape, pixel_size_um=0.5, seed=seed, n_nests=n_nests,
                    nest_radius_um=(40, 80))
    keep = [t.channel_names.index(c) for c in ("DAPI", "NaKATPase", "CD8")]
    path = tmp_path / name
    write_ome_tiff(path, t.image[keep], ["DAPI", "NaKATPase", "CD8"], 0.5)
    return path


def _assert_same(a, b):
    pd.testing.assert_frame_equal(a.cells, b.cells)
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    np.testing.assert_array_equal(np.asarray(a.nuclei), np.asarray(b.nuclei))
    assert a.qc["pixels_claimed_twice"] == b.qc["pixels_claimed_twice"]
    assert a.qc["cells_segmented_in_windows"] == b.qc["cells_segmented_in_windows"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("stream"), (700, 760), 4)


@pytest.fixture(scope="module")
def held(small):
    """The in-memory assembly: in-process tiles return their crops, pasted at the end."""
    mp = pytest.MonkeyPatch()
    mp.setattr(seg_image, "_STREAM_TILES", False)
    try:
        return segment_image(small, "DAPI", "NaKATPase", tile_size_px=256, scheduler="synchronous")
    finally:
        mp.undo()


@pytest.mark.parametrize("scheduler", ["synchronous", None])
def test_streamed_assembly_equals_in_memory_assembly(small, held, scheduler, tmp_path):
    res = segment_image(small, "DAPI", "NaKATPase", tile_size_px=256, scheduler=scheduler,
                        work_dir=tmp_path)
    assert res.n_tiles == 9 and held.n_tiles == 9
    _assert_same(held, res)
    assert list(tmp_path.iterdir()) == []  # crops removed, numpy labels: nothing kept


def test_crops_are_pasted_as_tiles_finish_and_do_not_pile_up(small, held, tmp_path):
    events = []

    def progress(step, done, total):
        crops = [p for p in tmp_path.rglob("*.npy")]
        events.append((step, done, len(crops)))

    res = segment_image(small, "DAPI", "NaKATPase", tile_size_px=256, scheduler="synchronous",
                        work_dir=tmp_path, progress=progress)
    _assert_same(held, res)
    steps = [e[0] for e in events]
    # assembly interleaves with the tiles (not all at the end) ...
    assert steps.index("assemble labels") < max(i for i, s in enumerate(steps) if s == "segment tiles")
    # ... and once a tile is reported done, its crops are already pasted and removed
    assert max(n for s, _, n in events if s == "segment tiles") == 0
    assert [d for s, d, _ in events if s == "assemble labels"] == list(range(1, 10))


def test_zarr_labels_live_in_the_work_folder_and_go_with_the_arrays(small, held, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(seg_image, "_IN_MEMORY_MAX_PX", 0)
    res = segment_image(small, "DAPI", "NaKATPase", tile_size_px=256, scheduler=None,
                        work_dir=tmp_path)
    assert not isinstance(res.labels, np.ndarray)
    _assert_same(held, res)
    (tmp,) = tmp_path.iterdir()
    assert sorted(p.name for p in tmp.iterdir()) == ["cells.zarr", "nuclei.zarr"]
    assert not list(tmp_path.rglob("*.npy"))
    del res
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_failed_segmentation_leaves_no_temp_files(tmp_path):
    path = tmp_path / "in" / "empty.ome.tif"
    path.parent.mkdir()
    write_ome_tiff(path, np.zeros((2, 300, 300), np.uint8), ["DAPI", "CD8"], 0.5)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError):
        segment_image(path, "DAPI", tile_size_px=128, work_dir=work, nucleus_diameter_um=7.0)
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_4096_image_default_tiles_streamed_equals_in_memory(tmp_path, monkeypatch):
    """A 4096² synthetic image at the default tile size (4 tiles of 2048²), two threads."""
    path = _write(tmp_path, (4096, 4096), 3, n_nests=8)
    monkeypatch.setattr(seg_image, "_STREAM_TILES", False)
    a = segment_image(path, "DAPI", "NaKATPase", scheduler="synchronous")
    monkeypatch.setattr(seg_image, "_STREAM_TILES", True)
    b = segment_image(path, "DAPI", "NaKATPase", work_dir=tmp_path)
    assert a.n_tiles == b.n_tiles == 4 and len(a.cells) > 5000
    _assert_same(a, b)


def test_run_scratch_folder_is_beside_out_and_removed(tmp_path, monkeypatch):
    """Zarr labels (large images) live in the run's scratch folder beside ``--out``; after
    the run nothing but ``out`` is left and the result's labels read the written file."""
    monkeypatch.setattr(seg_image, "_IN_MEMORY_MAX_PX", 0)
    seen = []
    real = seg_image.segment_image

    def spy(*args, **kw):
        seen.append(kw.get("work_dir"))
        return real(*args, **kw)

    monkeypatch.setattr("tibspace.segment.segment_image", spy)
    tissue = make_tissue(shape=(500, 500), pixel_size_um=0.5, seed=5, n_nests=1,
                         nest_radius_um=(50, 70))
    tissue.write(tmp_path / "in")
    res = tibspace.run_image(tmp_path / "in" / "image.ome.tif", tmp_path / "in" / "panel.toml",
                             out_dir=tmp_path / "out", seed=0)
    assert seen and seen[0] is not None and seen[0].parent == tmp_path
    assert seen[0].name.startswith(".out.tibspace-work-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    lab = np.asarray(res.labels)
    assert lab.shape == (500, 500) and int(lab.max()) == len(res.cells)


def test_statistics_of_a_large_pyramid_level_are_a_bounded_tiled_sample(tmp_path, monkeypatch):
    """Above the in-process limit the statistics come from strided tile samples of the same
    pyramid level (not of full resolution): same level, nearly the same threshold."""
    from tibspace.segment import tiling

    path = _write(tmp_path, (2048, 2048), 6, n_nests=2)
    whole = segment_image(path, "DAPI", nucleus_diameter_um=7.0, scheduler="synchronous")
    assert whole.parameters["statistics_pyramid_level"] == 1  # 1024² level read at once
    monkeypatch.setattr(tiling, "_STATS_MAX_PX", 0.3e6)
    calls = []
    tiled = segment_image(path, "DAPI", nucleus_diameter_um=7.0, scheduler="synchronous",
                          tile_size_px=512, progress=lambda s, d, n: calls.append((s, d, n)))
    assert tiled.parameters["statistics_pyramid_level"] == 1
    assert ("nuclear statistics", 16, 16) in calls  # one strided sample per tile
    assert tiled.parameters["threshold"] == pytest.approx(whole.parameters["threshold"], rel=0.03)
    assert tiled.parameters["nuclear_channel_scales"][0] == pytest.approx(
        whole.parameters["nuclear_channel_scales"][0], rel=0.03)
    assert abs(len(tiled.cells) - len(whole.cells)) <= 0.01 * len(whole.cells)
