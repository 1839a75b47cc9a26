"""Tissue and tumour regions lie inside the imaged frame: no density counts ground that was never imaged."""

from __future__ import annotations

from pathlib import Path

import pytest
import shapely

import tibspace
from tibspace.pipeline import image_frame

REPO = Path(__file__).resolve().parents[1]


def _check(result):
    frame = image_frame(result.image_shape, result.pixel_size_um)
    m = result.metrics
    assert m["tissue_area_mm2"] <= m["imaged_area_mm2"] + 1e-12
    assert abs(m["imaged_area_mm2"] - frame.area / 1e6) < 1e-9
    assert shapely.difference(result.tissue, frame.buffer(1e-6)).area < 1e-6
    if result.region is not None:
        assert shapely.difference(result.region.union, frame.buffer(1e-6)).area < 1e-6
    for z in result.exclusion_zones:
        assert shapely.difference(z, frame.buffer(1e-6)).area < 1e-6


def test_sample_tissue_inside_the_image():
    _check(tibspace.run_image(REPO / "sample_data" / "hcc_sample.ome.tif", REPO / "sample_data" / "hcc_sample_panel.toml"))


def test_nests_at_the_image_edge_are_clipped(tmp_path):
    from tibspace.synthetic import make_tissue

    t = make_tissue(shape=(900, 900), pixel_size_um=0.5, seed=3, n_nests=2, nest_radius_um=(60, 80))
    t.write(tmp_path / "in")
    r = tibspace.run_image(tmp_path / "in" / "image.ome.tif", tmp_path / "in" / "panel.toml")
    _check(r)


@pytest.mark.parametrize("field", ["Point2203_pt1072_31606", "Point2206_pt1116_31620"])
def test_real_mibi_tissue_inside_the_image(real_data, field):
    r = tibspace.run_image(real_data / "dcis_mibi" / field, REPO / "examples" / "panels" / "dcis_mibi.toml")
    _check(r)
