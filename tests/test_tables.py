import numpy as np
import pandas as pd
import pytest

from tibspace.errors import InputError
from tibspace.io import read_cell_table, standardise_cell_table


class _Map:  # a [table] mapping as the panel provides it
    def __init__(self, **kw):
        for k in ("cell_id", "x", "y", "units", "pixel_size_um", "phenotype", "phenotype_map"):
            setattr(self, k, kw.get(k))


class _Panel:
    def __init__(self, **kw):
        self.table = _Map(**kw)


def test_phenoptr_set4_is_read_in_micrometres(real_data):
    path = real_data / "phenoptr_lung_vectra" / "Set4_cell_seg_data.csv"
    raw = read_cell_table(path)
    cells, px, needs_gating = standardise_cell_table(raw, _Panel(phenotype_map={"CK+": "tumour", "CD8+": "CD8_T"}),
                                                     source=path)
    assert len(cells) == 6072 and not needs_gating and px is None
    assert np.array_equal(cells["x_um"], raw["Cell X Position"]) and np.array_equal(cells["cell_id"], raw["Cell ID"])
    assert (cells["phenotype"] == "tumour").sum() == 2257 and (cells["phenotype"] == "CD8_T").sum() == 228
    assert (cells["phenotype"] == "CD68+").sum() == 417  # unmapped labels are kept
    assert "Tissue Category" in cells.columns  # input columns kept for the audit trail


def test_mcmicro_pixels_need_a_pixel_size(real_data):
    path = real_data / "scimap_exemplar001" / "exemplar-001_cells_with_scimap_phenotype.csv"
    raw = read_cell_table(path)
    with pytest.raises(InputError, match="pixels but no pixel size"):
        standardise_cell_table(raw, source=path)
    cells, px, _ = standardise_cell_table(raw, _Panel(pixel_size_um=0.65), source=path)
    assert px == 0.65
    np.testing.assert_allclose(cells["x_um"], raw["X_centroid"] * 0.65)
    np.testing.assert_allclose(cells["y_um"], raw["Y_centroid"] * 0.65)
    assert cells["cell_id"].tolist() == raw["CellID"].tolist()


def test_qupath_and_halo_exports(tmp_path):
    q = pd.DataFrame({"Image": ["a"] * 3, "Class": ["Tumor", "CD8", "Tumor"],
                      "Centroid X µm": [1.0, 2.0, 3.0], "Centroid Y µm": [4.0, 5.0, 6.0]})
    q.to_csv(tmp_path / "q.tsv", sep="\t", index=False)
    cells, _, gate = standardise_cell_table(read_cell_table(tmp_path / "q.tsv"))
    assert cells["phenotype"].tolist() == ["Tumor", "CD8", "Tumor"] and not gate
    assert cells["cell_id"].tolist() == [1, 2, 3]
    h = pd.DataFrame({"Object Id": [0, 1], "XMin": [0, 10], "XMax": [4, 20], "YMin": [2, 2], "YMax": [6, 8],
                      "CD8": [1.0, 9.0]})
    cells, px, gate = standardise_cell_table(h, _Panel(pixel_size_um=0.5))
    assert cells["x_um"].tolist() == [1.0, 7.5] and cells["y_um"].tolist() == [2.0, 2.5]
    assert gate  # no phenotype column: the panel's gates must assign phenotypes


@pytest.mark.parametrize("bad, match", [
    (pd.DataFrame(), "empty"),
    (pd.DataFrame({"x_um": [1.0, np.nan], "y_um": [1.0, 2.0]}), "missing or non-numeric coordinates"),
    (pd.DataFrame({"cell_id": [1, 1], "x_um": [1.0, 2.0], "y_um": [1.0, 2.0]}), "duplicate cell ids"),
    (pd.DataFrame({"a": [1.0], "b": [2.0]}), "no x/y coordinate columns"),
    (pd.DataFrame({"x": [1.0], "y": [2.0]}), "µm or pixels"),
])
def test_bad_tables_get_specific_errors(bad, match):
    with pytest.raises(InputError, match=match):
        standardise_cell_table(bad, source="t.csv")


def test_mapping_names_a_missing_column():
    with pytest.raises(InputError, match="'Xpos' is not a column"):
        standardise_cell_table(pd.DataFrame({"x_um": [1.0], "y_um": [1.0]}), _Panel(x="Xpos", y="y_um", units="um"))


def test_unreadable_and_unknown_files(tmp_path):
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(InputError, match="unknown cell-table format"):
        read_cell_table(tmp_path / "t.xlsx")
    with pytest.raises(InputError, match="not found"):
        read_cell_table(tmp_path / "nope.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="bad.parquet: could not read"):
        read_cell_table(tmp_path / "bad.parquet")
