"""QuPath *Export measurements* tables (0.3, 0.4, 0.5) read with their real column names.

Layouts from QuPath's measurement-table code: 0.3 writes ``Image, Name, Class,
Parent, ROI, Centroid X µm, Centroid Y µm`` (``px`` without a pixel size), 0.4
adds ``Object ID`` (a UUID), 0.5 adds ``Object type`` and renames ``Class`` to
``Classification``; the µ is U+00B5; the measurement list follows
(``Nucleus: Area``, ``Cell: CD8: Mean``; 0.3's cell detection wrote
``Cell: CD8 mean``). Unclassified objects have an empty class cell.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tibspace.cells import Panel, gate_cells
from tibspace.cli import main
from tibspace.errors import InputError
from tibspace.io import UNCLASSIFIED, check_table_classes, read_cell_table, standardise_cell_table

X = [10.5, 20.25, 30.0, 41.75]
Y = [5.0, 6.5, 7.25, 80.0]
CLASSES = ["Tumor", "CD3: CD8", "", "Tumor"]
CD8 = [1.5, 42.0, 3.0, 2.0]
DAPI = [30.0, 31.0, 29.0, 33.0]
UUIDS = ["6f1c9a52-0d7e-4a7a-9a51-0c1f3c2a8a01", "0b8b5d0e-4a55-4a43-8f0c-0d3ef8f9b702",
         "c2a5e4f1-7f0e-4b6f-9f65-3e1d2c4b5a03", "9d3c2b1a-8e7f-4c6d-a5b4-1f2e3d4c5b04"]


def _write(path, header, rows, encoding="utf-8"):
    text = "\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)
    path.write_bytes(text.encode(encoding))
    return path


def qupath_03(path, *, px=False, encoding="utf-8"):
    unit = "px" if px else "\u00b5m"
    header = ["Image", "Name", "Class", "Parent", "ROI", f"Centroid X {unit}", f"Centroid Y {unit}",
              "Nucleus: Area", "Nucleus: DAPI mean", "Cell: CD8 mean", "Cytoplasm: CD8 mean"]
    rows = [["s.ome.tif", "", c, "Annotation", "Polygon", x, y, 22.5, d, v, v / 2]
            for x, y, c, v, d in zip(X, Y, CLASSES, CD8, DAPI)]
    return _write(path, header, rows, encoding)


def qupath_04(path):
    header = ["Image", "Object ID", "Name", "Class", "Parent", "ROI", "Centroid X \u00b5m", "Centroid Y \u00b5m",
              "Nucleus: Area \u00b5m^2", "Nucleus: DAPI: Mean", "Cell: CD8: Mean", "Cytoplasm: CD8: Mean",
              "Membrane: CD8: Mean"]
    rows = [["s.ome.tif", u, "", c, "Annotation", "Polygon", x, y, 22.5, d, v, v / 2, v / 3]
            for u, x, y, c, v, d in zip(UUIDS, X, Y, CLASSES, CD8, DAPI)]
    return _write(path, header, rows)


def qupath_05(path, classes=CLASSES, channel="CD8"):
    header = ["Image", "Object ID", "Object type", "Name", "Classification", "Parent", "ROI",
              "Centroid X \u00b5m", "Centroid Y \u00b5m", "Nucleus: Area \u00b5m^2", "Nucleus: DAPI: Mean",
              f"Cell: {channel}: Mean", f"Nucleus: {channel}: Mean"]
    rows = [["s.ome.tif", u, "Cell", "", c, "Annotation", "Polygon", x, y, 22.5, d, v, v * 1.1]
            for u, x, y, c, v, d in zip(UUIDS, X, Y, classes, CD8, DAPI)]
    return _write(path, header, rows)


@pytest.mark.parametrize("write", [qupath_03, qupath_04, qupath_05], ids=["0.3", "0.4", "0.5"])
def test_each_version_gives_coordinates_classes_and_intensities(tmp_path, write):
    path = write(tmp_path / "export.tsv")
    cells, px, gate = standardise_cell_table(read_cell_table(path), source=path)
    assert cells["x_um"].tolist() == X and cells["y_um"].tolist() == Y and px is None
    assert cells["phenotype"].tolist() == ["Tumor", "CD3: CD8", UNCLASSIFIED, "Tumor"] and not gate
    assert "nan" not in set(cells["phenotype"])
    assert cells["CD8"].tolist() == CD8 and cells["DAPI_nucleus"].tolist() == DAPI
    assert cells["cell_id"].tolist() == [1, 2, 3, 4]  # UUID object ids are not integers
    if write is not qupath_05:
        assert cells["CD8_cytoplasm"].tolist() == [v / 2 for v in CD8]


def test_03_pixel_table_in_latin1_needs_and_uses_a_pixel_size(tmp_path):
    path = qupath_03(tmp_path / "export.txt", px=True, encoding="latin-1")
    raw = read_cell_table(path)
    assert "Centroid X px" in raw.columns
    with pytest.raises(InputError, match="pixels but no pixel size"):
        standardise_cell_table(raw, source=path)
    panel = Panel.from_dict({"table": {"pixel_size_um": 0.5}})
    cells, px, _ = standardise_cell_table(raw, panel, source=path)
    assert px == 0.5 and cells["x_um"].tolist() == [x * 0.5 for x in X]
    latin = qupath_03(tmp_path / "latin.tsv", encoding="latin-1")  # µ written as the single byte 0xB5
    assert b"\xb5m" in latin.read_bytes()
    assert standardise_cell_table(read_cell_table(latin))[0]["x_um"].tolist() == X


def test_an_unclassified_export_is_gated_from_its_intensity_columns(tmp_path):
    path = qupath_05(tmp_path / "export.tsv", classes=["", "", "", ""])
    panel = Panel.from_dict({"markers": {"CD8": {"gate": 10.0}}, "phenotypes": {"CD8_T": "CD8+"}})
    cells, _, gate = standardise_cell_table(read_cell_table(path), panel, source=path)
    assert gate and "phenotype" not in cells.columns
    g = gate_cells(cells, panel)
    assert g.phenotype.tolist() == ["other", "CD8_T", "other", "other"]
    assert g.gates["CD8"].column == "CD8"


def test_panel_aliases_apply_to_table_marker_names(tmp_path):
    path = qupath_05(tmp_path / "export.tsv", classes=["", "", "", ""], channel="CD8a")
    panel = Panel.from_dict({"channels": {"aliases": {"CD8": ["CD8a"]}},
                             "markers": {"CD8": {"gate": 10.0, "compartment": "nucleus"}},
                             "phenotypes": {"CD8_T": "CD8+"}})
    cells, _, _ = standardise_cell_table(read_cell_table(path), panel, source=path)
    assert cells["CD8"].tolist() == CD8
    np.testing.assert_allclose(cells["CD8_nucleus"], np.array(CD8) * 1.1, rtol=1e-12)
    assert gate_cells(cells, panel).phenotype.tolist() == ["other", "CD8_T", "other", "other"]


def test_unmapped_classes_one_line_error_when_nothing_maps(tmp_path):
    path = qupath_05(tmp_path / "export.tsv")
    cells, _, _ = standardise_cell_table(read_cell_table(path), source=path)
    with pytest.raises(InputError) as exc:
        check_table_classes(cells["phenotype"], Panel.from_dict({}), path)
    msg = str(exc.value)
    assert "\n" not in msg and "'Tumor' (2)" in msg and "'CD3: CD8' (1)" in msg and "'unclassified' (1)" in msg
    assert "tumour = tumour" in msg and "effector_t = CD8_T" in msg and 'phenotype_map = { "Tumor"' in msg


def test_some_unmapped_classes_are_one_warning():
    panel = Panel.from_dict({"table": {"phenotype_map": {"Tumor": "tumour"}}})
    cells, _, _ = standardise_cell_table(pd.DataFrame({"Class": CLASSES, "Centroid X µm": X, "Centroid Y µm": Y}),
                                         panel)
    assert cells["phenotype"].tolist() == ["tumour", "CD3: CD8", UNCLASSIFIED, "tumour"]
    (warning,) = check_table_classes(cells["phenotype"], panel, "t.tsv")
    assert warning.startswith("t.tsv: 1 of 2 classes are in no panel role") and "'CD3: CD8'" in warning
    assert check_table_classes(["tumour", "CD8_T", "other", UNCLASSIFIED], panel) == []


def test_cli_exits_2_with_the_class_list(tmp_path, capsys):
    path = qupath_05(tmp_path / "export.tsv")
    panel = tmp_path / "p.toml"
    panel.write_text("[parameters]\nseed = 0\n")
    code = main(["analyze", str(path), "--panel", str(panel), "--out", str(tmp_path / "out"), "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if "compiling" not in line]
    assert code == 2 and len(err) == 1 and "classes found" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_cell_detections_round_trip_through_the_qupath_reader(tmp_path):
    from tests.test_qupath_geojson import read_qupath_geojson
    from tibspace.outputs.geojson import write_cell_detections

    path = qupath_05(tmp_path / "export.tsv")
    cells, _, _ = standardise_cell_table(read_cell_table(path), source=path)
    out = write_cell_detections(cells, tmp_path / "cells.geojson", pixel_size_um=0.5)
    objs = read_qupath_geojson(out)
    assert [o["class"] for o in objs] == ["Tumor", "CD3: CD8", None, "Tumor"]  # unclassified: no classification
    assert [o["type"] for o in objs] == ["detection"] * 4
    xy = np.array([[o["geometry"].x, o["geometry"].y] for o in objs])
    np.testing.assert_allclose(xy, np.c_[X, Y] / 0.5 + 0.5, atol=1e-3)
    assert json.loads(out.read_text())["features"][2]["properties"].get("classification") is None


def test_no_tumour_region_is_said_once():
    from tibspace.pipeline import analyze_table

    rng = np.random.default_rng(0)
    n = 300
    cells = pd.DataFrame({"Class": np.where(np.arange(n) % 2, "CD8_T", "other"),
                          "Centroid X µm": rng.uniform(0, 500, n), "Centroid Y µm": rng.uniform(0, 500, n)})
    m = analyze_table(cells, Panel.from_dict({"parameters": {"n_envelope_sim": 0}}), seed=0).metrics
    for name in ("barrier", "shield", "exclusion"):
        assert m["skipped"][name].count("no tumour region") == 1, m["skipped"][name]
        assert "0 tumour cells" in m["skipped"][name]
