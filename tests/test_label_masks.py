"""Bring-your-own-masks readers: each tool's file layout read back exactly; bad masks → one line."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tibspace.errors import InputError
from tibspace.io import read_label_mask, resolve_label_path, detect_label_format, label_source

REAL = Path("/work/shared/data/real/phenoptr_lung_vectra")


def _lab(seed=0, shape=(40, 50)):
    lab = np.zeros(shape, np.int32)
    lab[2:10, 3:12] = 7
    lab[15:25, 20:30] = 3
    lab[30:38, 40:48] = 12
    return lab


def _check(got, lab):
    rel, ids = got
    assert rel.dtype == np.int32 and rel.max() == len(ids) == 3
    assert np.array_equal(ids[rel[lab > 0] - 1], lab[lab > 0]) and np.all(rel[lab == 0] == 0)


def test_deepcell_layouts(tmp_path):
    cell, nuc = _lab(), (_lab() > 0).astype(np.int32) * 0 + _lab()[::-1, ::-1]
    tifffile.imwrite(tmp_path / "img_feature_0.tif", cell)
    tifffile.imwrite(tmp_path / "img_feature_1.tif", nuc)
    _check(read_label_mask(tmp_path / "img_feature_0.tif"), cell)
    _check(read_label_mask(tmp_path / "img_feature_1.tif", nuclei=True), nuc)
    tifffile.imwrite(tmp_path / "two.tif", np.stack([cell, nuc]))
    _check(read_label_mask(tmp_path / "two.tif", fmt="deepcell"), cell)
    _check(read_label_mask(tmp_path / "two.tif", fmt="deepcell", nuclei=True), nuc)
    tifffile.imwrite(tmp_path / "whole_cell.tif", np.stack([cell, nuc], -1)[None])
    _check(read_label_mask(tmp_path / "whole_cell.tif", nuclei=True), nuc)


def test_cellpose_seg_npy_and_masks_tif(tmp_path):
    lab = _lab().astype(np.uint16)
    np.save(tmp_path / "img_seg.npy", {"masks": lab, "outlines": lab * 0, "filename": "img.tif"},
            allow_pickle=True)
    assert detect_label_format(tmp_path / "img_seg.npy") == "cellpose"
    _check(read_label_mask(tmp_path / "img_seg.npy"), lab)
    tifffile.imwrite(tmp_path / "img_cp_masks.tif", lab, compression="zlib")
    _check(read_label_mask(tmp_path / "img_cp_masks.tif"), lab)


class _RunsCode:
    """Unpickling this calls a function: what a hostile _seg.npy would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_cellpose_seg_npy_with_a_real_cellpose_dict(tmp_path):
    # the keys and value types Cellpose 3 writes: arrays, lists of arrays, numpy scalars, None, text
    lab = _lab().astype(np.uint16)
    dat = {"masks": lab, "outlines": lab * 0, "chan_choose": [0, 0], "ismanual": np.zeros(3, bool),
           "filename": "img.tif", "flows": [np.zeros((40, 50, 3), np.uint8), np.zeros((2, 40, 50), np.float32)],
           "est_diam": np.float64(17.5), "diameter": 30.0, "colors": None, "model_path": 0}
    np.save(tmp_path / "img_seg.npy", dat, allow_pickle=True)
    _check(read_label_mask(tmp_path / "img_seg.npy"), lab)
    np.save(tmp_path / "plain_seg.npy", lab)  # a bare label array (no pickle)
    _check(read_label_mask(tmp_path / "plain_seg.npy"), lab)


def test_cellpose_seg_npy_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil_seg.npy", {"masks": _lab(), "x": _RunsCode(marker)}, allow_pickle=True)
    with pytest.raises(InputError, match=r"evil_seg\.npy: refusing to load: .*pathlib.*touch"):
        read_label_mask(tmp_path / "evil_seg.npy")
    assert not marker.exists()
    # np.load would have run it: the test's file really is hostile
    np.load(tmp_path / "evil_seg.npy", allow_pickle=True)
    assert marker.exists()


def test_cellpose_seg_npy_truncated_or_not_npy(tmp_path):
    np.save(tmp_path / "a_seg.npy", {"masks": _lab()}, allow_pickle=True)
    data = (tmp_path / "a_seg.npy").read_bytes()
    (tmp_path / "cut_seg.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut_seg\.npy: unreadable pickled \.npy"):
        read_label_mask(tmp_path / "cut_seg.npy")
    (tmp_path / "txt_seg.npy").write_text("masks")
    with pytest.raises(InputError, match=r"txt_seg\.npy: not a NumPy \.npy file"):
        read_label_mask(tmp_path / "txt_seg.npy")


def test_stardist_float_integer_valued_ok(tmp_path):
    lab = _lab()
    tifffile.imwrite(tmp_path / "sd.tif", lab.astype(np.float32))
    _check(read_label_mask(tmp_path / "sd.tif"), lab)


def test_mcmicro_and_steinbock_folders(tmp_path):
    lab = _lab()
    seg = tmp_path / "run" / "segmentation" / "unmicst-img"
    seg.mkdir(parents=True)
    tifffile.imwrite(seg / "cell.ome.tif", lab, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                                     "PhysicalSizeY": 0.5})
    tifffile.imwrite(seg / "nuclei.ome.tif", lab, ome=True)
    p = resolve_label_path(tmp_path / "run", "img.ome.tif")
    assert p.name == "cell.ome.tif" and detect_label_format(p) == "mcmicro"
    assert resolve_label_path(tmp_path / "run", "img.ome.tif", nuclei=True).name == "nuclei.ome.tif"
    _check(read_label_mask(p, shape=lab.shape, pixel_size_um=0.5), lab)
    with pytest.raises(InputError, match="pixel size"):
        read_label_mask(p, pixel_size_um=0.65)
    m = tmp_path / "stb" / "masks"
    m.mkdir(parents=True)
    tifffile.imwrite(m / "other.tiff", lab[::-1].astype(np.uint16))
    tifffile.imwrite(m / "img.tiff", lab.astype(np.uint16))
    q = resolve_label_path(tmp_path / "stb", "img.ome.tiff")
    assert q == m / "img.tiff"
    _check(read_label_mask(q), lab)


def test_real_inform_binary_seg_map_nucleus_page():
    f = REAL / "FIHC4__0929309_HP_IM3_2_binary_seg_maps.tif"
    ref = tifffile.imread(f)[1]  # the page tests/test_segmentation.py uses as nucleus reference
    rel, ids = read_label_mask(f, nuclei=True)
    assert detect_label_format(f) == "inform"
    assert np.array_equal(ids[rel[ref > 0] - 1], ref[ref > 0]) and len(ids) == len(np.unique(ref)) - 1
    cell, _ = read_label_mask(f)
    assert cell.shape == ref.shape and cell.max() > 0
    assert len(label_source(f)["sha256"]) == 64


@pytest.mark.parametrize("arr,msg", [
    (np.ones((10, 10), np.int32), "does not match"),
    (np.full((40, 50), 0.5, np.float32), "non-integer"),
    (np.zeros((40, 50), np.uint16), "empty"),
    (np.ones((3, 40, 50), np.uint16), "2-D"),
    (np.full((40, 50), -1, np.int32), "non-negative"),
])
def test_bad_masks_one_line(tmp_path, arr, msg):
    tifffile.imwrite(tmp_path / "bad.tif", arr)
    with pytest.raises(InputError, match=msg) as e:
        read_label_mask(tmp_path / "bad.tif", shape=(40, 50))
    assert "\n" not in str(e.value) and "bad.tif" in str(e.value)



def test_labels_round_trip_identical_cell_table(tmp_path, sample_data):
    """Labels written by one run, read back by the next (CLI, with its nuclei): identical cell table."""
    import json

    import pandas as pd

    from tibspace.cli import main
    from tibspace.pipeline import run_image

    img, panel = sample_data / "hcc_sample.ome.tif", sample_data / "hcc_sample_panel.toml"
    a = run_image(img, panel, out_dir=tmp_path / "a", seed=0)
    np.save(tmp_path / "nuc_seg.npy", {"masks": np.asarray(a.nuclei), "outlines": None}, allow_pickle=True)
    rc = main(["run", str(img), "--panel", str(panel), "--out", str(tmp_path / "b"), "--seed", "0", "--quiet",
               "--labels", str(tmp_path / "a" / "cell_labels.ome.tif"), "--nuclei", str(tmp_path / "nuc_seg.npy")])
    assert rc == 0
    ca = pd.read_parquet(tmp_path / "a" / "cells.parquet")
    cb = pd.read_parquet(tmp_path / "b" / "cells.parquet")
    assert np.array_equal(cb["label_id"], cb["cell_id"]) and len(ca) == len(cb) > 100
    pd.testing.assert_frame_equal(ca, cb[ca.columns], check_exact=True)
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    src = m["segmentation"]["labels"]
    assert src["cells"]["format"] == "tiff" and src["nuclei"]["format"] == "cellpose"
    assert len(src["cells"]["sha256"]) == 64


def test_cli_bad_mask_exit_2_one_line(tmp_path, sample_data, capsys):
    from tibspace.cli import main

    tifffile.imwrite(tmp_path / "bad.tif", np.full((40, 50), 0.5, np.float32))
    rc = main(["run", str(sample_data / "hcc_sample.ome.tif"), "--panel", str(sample_data / "hcc_sample_panel.toml"),
               "--out", str(tmp_path / "o"), "--quiet", "--labels", str(tmp_path / "bad.tif")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "bad.tif" in err and "1600x1600" in err


def test_cohort_manifest_labels_column_runs_and_resumes(tmp_path, sample_data):
    """A manifest row with labels runs on them; rerun is cached; a changed mask reruns."""
    import pandas as pd
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    from tibspace.cohort import read_manifest, run_cohort
    from tibspace.io import open_image

    img = open_image(sample_data / "hcc_sample.ome.tif")
    dapi = np.asarray(img.read_region([0], 0, 1600, 0, 1600))[0]
    img.close()
    lab = label(dapi > threshold_otsu(dapi)).astype(np.uint16) * 5  # ids 5, 10, ...: relabelled
    tifffile.imwrite(tmp_path / "nuc_cp_masks.tif", lab)
    (tmp_path / "m.csv").write_text(f"sample_id,image,labels\ns1,{sample_data / 'hcc_sample.ome.tif'},"
                                    "nuc_cp_masks.tif\n")
    panel = sample_data / "hcc_sample_panel.toml"
    run = lambda: run_cohort(read_manifest(tmp_path / "m.csv"), panel, tmp_path / "out",  # noqa: E731
                             scheduler="synchronous", progress=lambda line: None)
    assert run()["status"].tolist() == ["done"]
    cells = pd.read_parquet(tmp_path / "out" / "s1" / "cells.parquet")
    assert len(cells) == int((np.unique(lab) > 0).sum()) and set(cells["label_id"]) <= set(np.unique(lab))
    assert run()["status"].tolist() == ["cached"]
    lab[lab == lab.max()] = 0
    tifffile.imwrite(tmp_path / "nuc_cp_masks.tif", lab)
    assert run()["status"].tolist() == ["done"]
