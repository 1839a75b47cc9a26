"""PipelineResult → layers, checked against the synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from tibspace.outputs import STRUCTURE_COLOURS, phenotype_colour
from tibspace_napari import _layers
from tibspace_napari._layers import (label_pyramid, polygon_pieces,
                                     positive_cells, result_layers)

from ._synthetic import make_result


@pytest.fixture(scope="module")
def result():
    return make_result(n_cells=3000, pixel_size_um=0.5, seed=3)


@pytest.fixture(scope="module")
def layers(result):
    return {kw["name"]: (d, kw, t) for d, kw, t in result_layers(result)}


def _rgba(rgb, a=1.0):
    return np.array([*(np.asarray(rgb) / 255.0), a])


def test_layer_names_order_and_types(result):
    got = [(kw["name"], t) for _, kw, t in result_layers(result)]
    assert got == [("cells", "labels"), ("NET mask", "labels"), ("exclusion zones", "shapes"),
                   ("tumour nests", "shapes"), ("cells by phenotype", "points"),
                   ("barrier covered", "shapes"), ("barrier gaps", "shapes")]


def test_points_sit_on_their_cells(result, layers):
    """A point's world position falls on the pixel labelled with its cell_id."""
    data, kw, _ = layers["cells by phenotype"]
    _, lkw, _ = layers["cells"]
    px = result.pixel_size_um
    assert kw["scale"] == (1.0, 1.0) and lkw["scale"] == (px, px)
    world = data * np.asarray(kw["scale"])
    rc = np.round(world / np.asarray(lkw["scale"])).astype(int)
    lab = result.labels[rc[:, 0], rc[:, 1]]
    assert np.array_equal(lab, kw["features"]["cell_id"].to_numpy())
    np.testing.assert_allclose(data[:, 0], result.cells["y_um"])
    np.testing.assert_allclose(data[:, 1], result.cells["x_um"])


def test_points_features_and_colours(result, layers):
    data, kw, _ = layers["cells by phenotype"]
    feats = kw["features"]
    for col in ("cell_id", "phenotype", "signed_dist_um", "compartment", "nest_id", "area_um2"):
        assert col in feats
    assert feats["phenotype"].tolist() == result.cells["phenotype"].tolist()
    expected = np.array([_rgba(phenotype_colour(p)) for p in result.cells["phenotype"]])
    np.testing.assert_allclose(kw["face_color"], expected)
    # Dot diameter: a fixed fraction of the median cell's equivalent diameter.
    med = np.median(result.cells["area_um2"])
    assert kw["size"] == pytest.approx(_layers.POINT_SIZE_FRACTION * 2 * np.sqrt(med / np.pi))
    assert kw["units"] == ("um", "um")


def test_cell_labels_features_index_is_cell_id(result, layers):
    data, kw, _ = layers["cells"]
    assert data is result.labels
    assert kw["features"]["index"].tolist() == result.cells["cell_id"].tolist()
    assert kw["metadata"]["tibspace"]["set_after"] == {"contour": 1}


def test_big_tables_get_phenotype_labels_not_points(result):
    lay = {kw["name"]: (d, kw, t) for d, kw, t in result_layers(result, max_points=100)}
    data, kw, kind = lay["cells by phenotype"]
    assert kind == "labels" and kw["scale"] == (result.pixel_size_um,) * 2
    data = np.asarray(data)
    names = kw["features"]["phenotype"].tolist()
    rc = np.round(result.cells[["y_um", "x_um"]].to_numpy() / result.pixel_size_um).astype(int)
    codes = data[rc[:, 0], rc[:, 1]]
    assert [names[c - 1] for c in codes] == result.cells["phenotype"].tolist()
    assert np.all((data == 0) == (result.labels == 0))
    cmap = kw["colormap"]
    for i, n in enumerate(names, start=1):
        np.testing.assert_allclose(cmap.color_dict[i], _rgba(phenotype_colour(n)))


def test_barrier_layers_match_planted_barrier_nests(result, layers):
    """One closed run per nest; covered = planted barrier nests, lengths = perimeters."""
    barrier = result.per_nest["barrier_coverage"].to_numpy() == 1.0
    perim = result.per_nest["perimeter_um"].to_numpy()
    for name, want, key in (("barrier covered", barrier, "barrier_covered"),
                            ("barrier gaps", ~barrier, "barrier_gap")):
        data, kw, kind = layers[name]
        assert kind == "shapes" and kw["shape_type"] == "path"
        assert len(data) == want.sum()
        np.testing.assert_allclose(sorted(kw["features"]["length_um"]), sorted(perim[want]),
                                   rtol=1e-9)
        drawn = [shapely.LineString(d[:, ::-1]).length for d in data]
        np.testing.assert_allclose(sorted(drawn), sorted(perim[want]), rtol=5e-3)
        np.testing.assert_allclose(kw["edge_color"], _rgba(STRUCTURE_COLOURS[key]))
        for path in data:  # closed ring: first vertex == last
            np.testing.assert_allclose(path[0], path[-1], atol=1e-6)


def test_nests_and_zones_cover_true_areas(result, layers):
    for name, polys in (("tumour nests", result.region.nests),
                        ("exclusion zones", result.exclusion_zones)):
        data, kw, _ = layers[name]
        types = np.array(kw["shape_type"])
        fill_area = sum(shapely.Polygon(d[:, ::-1]).area for d, t in zip(data, types)
                        if t == "polygon")
        simple = shapely.simplify(np.asarray(polys, dtype=object), _layers.SIMPLIFY_UM)
        assert fill_area == pytest.approx(sum(p.area for p in simple), rel=1e-9)
        # Simplification moves the outline by ≤ tol, so area by ≤ tol × perimeter.
        bound = _layers.SIMPLIFY_UM * sum(p.length for p in polys)
        assert abs(fill_area - sum(p.area for p in polys)) <= bound
        # Every drawn outline vertex lies on the true outline, within the tolerance.
        outline = shapely.union_all([p.boundary for p in polys])
        for d, t in zip(data, types):
            if t == "path":
                assert shapely.distance(outline, shapely.points(d[:, 1], d[:, 0])).max() < 1e-6
        n_rings = sum(1 + len(p.interiors) for p in polys)
        assert (types == "path").sum() == n_rings
    # The zones are rings (a hole each) yet drawn as hole-free pieces.
    assert all(len(z.interiors) == 1 for z in result.exclusion_zones)
    nests = layers["tumour nests"][1]["features"]
    assert set(nests["nest_id"]) == set(range(1, result.region.n_nests + 1))
    assert "barrier_coverage" in nests and "immune_phenotype" in nests


def test_mask_layer_scale_and_values(result, layers):
    data, kw, _ = layers["NET mask"]
    assert kw["scale"] == (0.5, 0.5)
    assert np.array_equal(np.asarray(data) > 0, result.masks["net"])
    # A half-resolution mask still covers the image's µm extent.
    m = result.masks["net"][::2, ::2]
    (_, kw2, _), = _layers.mask_layers({"net": m}, 0.5, result.image_shape)
    assert kw2["scale"][0] * m.shape[0] == pytest.approx(0.5 * result.image_shape[0])


def test_many_polygons_drawn_as_outlines_only(result):
    (data, kw, _), = [t for t in result_layers(result, max_shapes=10**6)
                      if t[1]["name"] == "tumour nests"]
    assert "polygon" in kw["shape_type"]
    nest = _layers.nest_layer(result.region, max_shapes=10**6)
    few = _layers._polygon_layer(result.region.nests, nest[1]["features"].drop_duplicates(
        "nest_id").drop(columns="part"), "n", (0, 0, 0), 0.1, 1.0, 10**6, max_filled=1)
    assert set(few[1]["shape_type"]) == {"path"} and few[1]["metadata"]["tibspace"]["filled"] is False


def test_too_many_shapes_become_vectors(result):
    lay = {kw["name"]: (d, kw, t) for d, kw, t in result_layers(result, max_shapes=1)}
    data, kw, kind = lay["tumour nests"]
    assert kind == "vectors"
    simple = shapely.simplify(np.asarray(result.region.nests, dtype=object), _layers.SIMPLIFY_UM)
    n_edges = sum(len(r.coords) - 1 for p in simple for r in [p.exterior, *p.interiors])
    assert data.shape == (n_edges, 2, 2)
    # Each vector starts on the nest outline.
    union = shapely.union_all([p.boundary for p in result.region.nests])
    d = shapely.distance(union, shapely.points(data[:, 0, 1], data[:, 0, 0]))
    assert d.max() < 1e-6


def test_gate_preview_counts_and_positions(result):
    data, kw, kind = _layers.gate_preview_layer(result.cells, "CD8", 35.0)
    pos = result.cells["CD8"].to_numpy() > 35.0
    assert kind == "points" and len(data) == pos.sum() == kw["metadata"]["tibspace"]["n_positive"]
    np.testing.assert_allclose(data, result.cells.loc[pos, ["y_um", "x_um"]].to_numpy())
    # Planted: CD8 T cells have CD8 ≈ 60+, others ≈ 5 + Gamma noise.
    is_t = result.cells["phenotype"].to_numpy() == "CD8_T"
    assert np.array_equal(positive_cells(result.cells, "CD8", 35.0)[is_t], np.ones(is_t.sum(), bool))
    data2, kw2, kind2 = _layers.gate_preview_layer(result.cells, "CD8", 35.0, labels=result.labels,
                                                   pixel_size_um=0.5, max_points=10)
    assert kind2 == "labels"
    img = np.asarray(data2)
    ids = np.unique(result.labels[img > 0])
    assert set(ids) == set(result.cells.loc[pos, "cell_id"])


def test_label_pyramid_is_views():
    lab = np.zeros((9000, 5000), np.int32)
    levels = label_pyramid(lab)
    assert all(np.shares_memory(lv, lab) for lv in levels)
    assert [lv.shape for lv in levels][:2] == [(9000, 5000), (4500, 2500)]
    assert label_pyramid(lab[:100, :100]) is not None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-40, 40), st.floats(-40, 40), st.floats(1, 8)),
                min_size=1, max_size=4))
def test_polygon_pieces_preserve_area_and_have_no_holes(holes):
    outer = shapely.Point(0, 0).buffer(60)
    poly = outer.difference(shapely.union_all([shapely.Point(x, y).buffer(r)
                                               for x, y, r in holes]))
    for p in shapely.get_parts(poly):
        pieces = polygon_pieces(p)
        assert all(len(q.interiors) == 0 for q in pieces)
        assert sum(q.area for q in pieces) == pytest.approx(p.area, rel=1e-9)
        assert shapely.union_all(pieces).symmetric_difference(p).area < 1e-6 * p.area


def test_layers_load_into_viewer(make_napari_viewer, result):
    viewer = make_napari_viewer()
    for layer in _layers.create_layers(result_layers(result)):
        viewer.add_layer(layer)
    assert viewer.layers["cells"].contour == 1
    assert [ly.name for ly in viewer.layers] == [n for n in _layers.LAYER_NAMES if n != "Col1 mask"]
    pts = viewer.layers["cells by phenotype"]
    # Hover shows the cell's numbers.
    i = 10
    status = pts.get_status(tuple(pts.data[i]), world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert str(int(result.cells["cell_id"].iat[i])) in text
    assert result.cells["phenotype"].iat[i] in text
    # The cheapest point rendering (see scripts/napari_scale_check.py): colours as one
    # RGBA array, no borders, no antialiasing, no text, no out-of-slice drawing.
    assert pts.antialiasing == 0 and np.all(pts.border_width == 0) and "".join(np.atleast_1d(pts.text.values)) == ""
    assert pts.face_color.shape == (len(result.cells), 4) and pts.out_of_slice_display is False
    assert str(pts.shading) == "none"
    # Labels and points share a world: the layer extents agree (µm).
    ext_l = viewer.layers["cells"].extent.world
    assert ext_l[1][0] == pytest.approx((result.labels.shape[0] - 0.5) * 0.5, abs=0.5)
    assert pts.extent.world[1][0] <= ext_l[1][0] + 1e-9


@pytest.mark.parametrize("module", ["_layers", "_layer_style", "_layer_rasters", "_layer_cells",
                                    "_layer_shapes", "_reader", "_results"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"tibspace_napari.{module}")
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0


def test_nests_are_outlines_only_beside_many_cells(result, monkeypatch):
    """Above FILL_MAX_CELLS cells the nest tint (a per-frame fill cost) is dropped, the numbers stay."""
    def nests():
        (t,) = [t for t in result_layers(result, max_shapes=10**6) if t[1]["name"] == "tumour nests"]
        return t

    data, kw, _ = nests()
    assert "polygon" in kw["shape_type"] and kw["metadata"]["tibspace"]["filled"] is True
    monkeypatch.setattr(_layers, "FILL_MAX_CELLS", len(result.cells) - 1)
    data2, kw2, _ = nests()
    assert set(kw2["shape_type"]) == {"path"} and kw2["metadata"]["tibspace"]["filled"] is False
    outlines = [d for d, t in zip(data, kw["shape_type"]) if t == "path"]
    assert len(data2) == len(outlines) and all(np.array_equal(a, b) for a, b in zip(data2, outlines))
    assert set(kw2["features"]["nest_id"]) == set(range(1, result.region.n_nests + 1))
    assert "barrier_coverage" in kw2["features"]
