"""Tests of tibspace.measure: per-cell features against scikit-image's regionprops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from tibspace.errors import InputError
from tibspace.cells import SHAPE_COLUMNS, measure_cells, write_cell_table


def _random_labels(rng: np.random.Generator, shape=(90, 110), n=25, grow=5.0,
                   holes=0.05) -> np.ndarray:
    """Touching, irregular labels (with pixel holes) that reach the image border."""
    lab = np.zeros(shape, np.int32)
    ys = rng.integers(0, shape[0], n)
    xs = rng.integers(0, shape[1], n)
    lab[ys, xs] = np.arange(1, n + 1)
    lab = expand_labels(lab, grow).astype(np.int32)
    lab[rng.random(shape) < holes] = 0
    return lab


def _reference(lab: np.ndarray, nuc: np.ndarray, img: np.ndarray, px: float) -> pd.DataFrame:
    props = ["label", "centroid", "area", "perimeter", "eccentricity", "solidity",
             "intensity_mean"]
    cell = pd.DataFrame(regionprops_table(lab, intensity_image=np.moveaxis(img, 0, -1),
                                          properties=props, spacing=(px, px)))
    nucl = pd.DataFrame(regionprops_table(nuc, intensity_image=np.moveaxis(img, 0, -1),
                                          properties=["label", "area", "intensity_mean"],
                                          spacing=(px, px)))
    return cell.merge(nucl, on="label", how="left", suffixes=("", "_nuc"))


def _compare(df: pd.DataFrame, ref: pd.DataFrame, names, offset=(0, 0), px=1.0) -> None:
    assert df["cell_id"].tolist() == ref["label"].tolist()
    np.testing.assert_allclose(df["y_um"], ref["centroid-0"] + offset[0] * px, rtol=0, atol=1e-9)
    np.testing.assert_allclose(df["x_um"], ref["centroid-1"] + offset[1] * px, rtol=0, atol=1e-9)
    np.testing.assert_allclose(df["area_um2"], ref["area"], rtol=1e-12)
    np.testing.assert_allclose(df["perimeter_um"], ref["perimeter"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(df["eccentricity"], ref["eccentricity"], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(df["solidity"], ref["solidity"], rtol=1e-12)
    np.testing.assert_allclose(df["nucleus_area_um2"], ref["area_nuc"].fillna(0.0), rtol=1e-12)
    for k, name in enumerate(names):
        np.testing.assert_allclose(df[name], ref[f"intensity_mean-{k}"], rtol=1e-6)
        np.testing.assert_allclose(df[name + "_nucleus"], ref[f"intensity_mean-{k}_nuc"],
                                   rtol=1e-6)


def test_matches_regionprops_on_touching_irregular_cells():
    rng = np.random.default_rng(0)
    lab = _random_labels(rng)
    nuc = lab.copy()
    nuc[rng.random(lab.shape) < 0.5] = 0  # nuclei: a subset of each cell's pixels
    img = rng.gamma(2.0, 50.0, (3, *lab.shape)).astype(np.float32)
    img[1] = rng.integers(0, 4000, lab.shape)  # integer-valued channel
    px = 0.65
    df = measure_cells(lab, nuc, img, ["DAPI", "CD8", "PanCK"], px)
    assert list(df.columns) == list(SHAPE_COLUMNS) + ["DAPI", "CD8", "PanCK", "DAPI_nucleus",
                                                      "CD8_nucleus", "PanCK_nucleus"]
    _compare(df, _reference(lab, nuc, img, px), ["DAPI", "CD8", "PanCK"], px=px)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 30), grow=st.floats(0.0, 8.0),
       holes=st.sampled_from([0.0, 0.02, 0.2]), oy=st.integers(0, 5000),
       ox=st.integers(0, 5000))
def test_property_equals_regionprops(seed, n, grow, holes, oy, ox):
    """Any labels (single pixels, lines, holes, image-border cells) and offsets."""
    rng = np.random.default_rng(seed)
    lab = _random_labels(rng, shape=(40, 57), n=n, grow=grow, holes=holes)
    if not lab.any():
        lab[3, 4] = 1
    img = rng.normal(100.0, 20.0, (1, *lab.shape))
    df = measure_cells(lab, lab, img, ["c"], 1.0, offset_px=(oy, ox))
    _compare(df, _reference(lab, lab, img, 1.0), ["c"], offset=(oy, ox))


def test_sparse_huge_ids_give_same_rows():
    rng = np.random.default_rng(3)
    lab = _random_labels(rng, n=12)
    img = rng.random((1, *lab.shape))
    big = np.where(lab > 0, lab.astype(np.int64) * 10_000_019 + 7, 0)
    a = measure_cells(lab, lab, img, ["c"], 0.5)
    b = measure_cells(big, big, img, ["c"], 0.5)
    assert b["cell_id"].tolist() == [i * 10_000_019 + 7 for i in a["cell_id"]]
    pd.testing.assert_frame_equal(a.drop(columns="cell_id"), b.drop(columns="cell_id"))


def test_reads_one_channel_at_a_time_and_no_nuclei():
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:9] = 4
    lab[10:18, 10:12] = 9
    calls = []

    class Lazy:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            calls.append(i)
            return np.full((20, 20), 10.0 * (i + 1))

    df = measure_cells(lab, None, Lazy(), ["A", "B"], 2.0)
    assert calls == [0, 1]
    assert df["cell_id"].tolist() == [4, 9]
    assert df["area_um2"].tolist() == [28 * 4.0, 16 * 4.0]
    assert df["A"].tolist() == [10.0, 10.0] and df["B"].tolist() == [20.0, 20.0]
    assert df["nucleus_area_um2"].isna().all() and df["A_nucleus"].isna().all()
    # centroid convention: pixel (row r, col c) centre is at (x, y) = (c, r) * px
    assert df["x_um"].tolist() == [5.0 * 2, 10.5 * 2]
    assert df["y_um"].tolist() == [3.5 * 2, 13.5 * 2]


def test_cell_without_nucleus_pixels_has_nan_nucleus_mean():
    lab = np.zeros((10, 10), np.int32)
    lab[1:4, 1:4] = 1
    lab[5:9, 5:9] = 2
    nuc = np.zeros_like(lab)
    nuc[2, 2] = 1
    img = np.arange(100, dtype=float).reshape(1, 10, 10)
    df = measure_cells(lab, nuc, img, ["D"], 1.0)
    assert df["D_nucleus"].iloc[0] == 22.0 and np.isnan(df["D_nucleus"].iloc[1])
    assert df["nucleus_area_um2"].tolist() == [1.0, 0.0]


def test_empty_labels_give_empty_table_with_columns():
    df = measure_cells(np.zeros((5, 5), np.int32), None, np.zeros((1, 5, 5)), ["D"], 1.0)
    assert len(df) == 0 and "D_nucleus" in df.columns


@pytest.mark.parametrize("kwargs, match", [
    (dict(cell_labels=np.zeros((4, 4, 2), int)), "2-D"),
    (dict(cell_labels=np.full((4, 4), 1.5)), "integer"),
    (dict(cell_labels=-np.ones((4, 4), int)), "negative"),
    (dict(nuclei_labels=np.zeros((3, 4), int)), "shape"),
    (dict(channel_names=["a", "b"]), "channel names"),
    (dict(channel_names=["area_um2"]), "clash"),
    (dict(intensities=np.zeros((1, 5, 4))), "shape"),
    (dict(pixel_size_um=0.0), "pixel_size_um"),
])
def test_bad_input_is_input_error(kwargs, match):
    args = dict(cell_labels=np.ones((4, 4), int), nuclei_labels=None,
                intensities=np.zeros((1, 4, 4)), channel_names=["a"], pixel_size_um=1.0)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        measure_cells(**args)


def test_write_cell_table_round_trip_and_atomic(tmp_path):
    df = pd.DataFrame({"cell_id": [1, 2, 3], "x_um": [0.5, 1.25, 9.0],
                       "CD8": [1.0, np.nan, 3.5]})
    pq, csv = write_cell_table(df, tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_parquet(pq), df)
    pd.testing.assert_frame_equal(pd.read_csv(csv), df)
    # A failing write leaves the previous files untouched and no temp files.
    bad = pd.DataFrame({"cell_id": [1, 2], "x": [object(), object()]})
    with pytest.raises(Exception):
        write_cell_table(bad, tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_parquet(pq), df)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells.csv", "cells.parquet"]
    with pytest.raises(InputError):
        write_cell_table([1, 2], tmp_path)
