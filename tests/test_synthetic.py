"""Tests of the synthetic HCC tissue generator (tibspace.synthetic).

Every planted property is checked against an independent measurement:
label centroids (scikit-image regionprops), ring coverage (scipy EDT brute
force), band densities (shapely polygons), a classical watershed baseline
(scikit-image) for segmentability and Otsu gating for phenotype recovery.
"""

from __future__ import annotations

import json
import math
import tomllib

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings, strategies as st
from scipy import ndimage as ndi
from skimage import feature, filters, measure, segmentation

from tibspace.errors import InputError
from tibspace.analyses import shield_ring_coverage
from tibspace.synthetic import CHANNELS, PHENOTYPES, SAMPLE_PRESET, load_truth, make_tissue
from tibspace.synthetic.layout import _covered_intervals
from tibspace.synthetic.stains import _polygon_mask

PX = 0.5


@pytest.fixture(scope="module")
def small():
    return make_tissue((640, 640), PX, seed=3, n_nests=1, nest_radius_um=(70, 80),
                       barrier_coverage=0.5, shield_coverage=0.5)


@pytest.fixture(scope="module")
def five_nests():
    """One nest per barrier-coverage knob, T cells stopped by the barrier."""
    return make_tissue((1400, 1400), PX, seed=11, n_nests=5, nest_radius_um=(50, 62),
                       barrier_coverage=[0.0, 0.25, 0.5, 0.75, 1.0], shield_coverage=0.4,
                       immune_phenotype="excluded", barrier_excludes_t=True,
                       t_density_per_mm2=1000)


# --------------------------------------------------------------------- basics
def test_image_properties(small):
    t = small
    assert t.image.shape == (12, 640, 640)
    assert t.image.dtype == np.uint16
    assert list(t.channel_names) == list(CHANNELS)
    assert t.pixel_size_um == PX
    assert t.nuclei.dtype == np.int32 and t.cells.dtype == np.int32
    assert set(t.truth.phenotype) <= set(PHENOTYPES)
    assert {"tumour", "SPP1_macrophage", "CAF", "CD8_T", "other"} <= set(t.truth.phenotype)
    # noise: the same scene without noise differs by the expected shot-noise SD
    clean = make_tissue((640, 640), PX, seed=3, n_nests=1, nest_radius_um=(70, 80),
                        barrier_coverage=0.5, shield_coverage=0.5, noise=0.0)
    assert (clean.nuclei == t.nuclei).all()
    diff = t.image[0].astype(float) - clean.image[0]
    lam = clean.image[0].astype(float)
    sel = lam > 10          # away from the clip at 0
    z = diff[sel] / np.sqrt(0.12 * lam[sel] + 0.7 ** 2)
    assert sel.sum() > 10_000
    assert 0.9 < z.std() < 1.1          # noise present with the documented variance
    assert abs(z.mean()) < 0.03


def test_determinism():
    kw = dict(n_nests=1, nest_radius_um=(50, 60))
    a = make_tissue((512, 512), PX, seed=5, **kw)
    b = make_tissue((512, 512), PX, seed=5, **kw)
    c = make_tissue((512, 512), PX, seed=6, **kw)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.nuclei, b.nuclei) and np.array_equal(a.cells, b.cells)
    assert np.array_equal(a.net_mask, b.net_mask) and np.array_equal(a.col1_mask, b.col1_mask)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert a.planted == b.planted
    assert not np.array_equal(a.image, c.image)
    assert len(a.truth) != len(c.truth) or not np.allclose(a.truth.x_um, c.truth.x_um)


def test_tiling_and_threads_do_not_change_the_image(monkeypatch):
    """Counter-based noise + overlapping tiles: output independent of tile size."""
    import tibspace.synthetic.raster as synth

    kw = dict(n_nests=1, nest_radius_um=(50, 60), seed=9)
    a = make_tissue((700, 700), PX, **kw)
    monkeypatch.setattr(synth, "_TILE", 192)
    b = make_tissue((700, 700), PX, **kw)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.cells, b.cells)


def test_bad_arguments_raise_input_error():
    with pytest.raises(InputError, match="immune_phenotype"):
        make_tissue((256, 256), immune_phenotype="hot")
    with pytest.raises(InputError, match="barrier_coverage"):
        make_tissue((256, 256), n_nests=2, barrier_coverage=[0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="could not place"):
        make_tissue((256, 256), n_nests=6, nest_radius_um=(100, 120))


# --------------------------------------------------------- truth consistency
def test_truth_matches_labels(small):
    t = small
    props = measure.regionprops(t.nuclei)
    assert [p.label for p in props] == t.truth.cell_id.tolist()
    cen = np.array([p.centroid for p in props])           # (row, col)
    np.testing.assert_allclose(t.truth.y_um, cen[:, 0] * PX, atol=1e-6)
    np.testing.assert_allclose(t.truth.x_um, cen[:, 1] * PX, atol=1e-6)
    # a nucleus lies inside its own cell; cells only add cytoplasm
    nz = t.nuclei > 0
    assert (t.cells[nz] == t.nuclei[nz]).all()
    assert set(np.unique(t.cells)) == set(np.unique(t.nuclei))
    area = np.bincount(t.cells.ravel())[1:] * PX * PX
    np.testing.assert_allclose(t.truth.area_um2, area)


def test_nests_contain_their_tumour_cells(five_nests):
    t = five_nests
    tum = t.truth[t.truth.phenotype == "tumour"]
    assert (tum.nest_id > 0).all()
    for i, nest in enumerate(t.nests):
        sel = tum[tum.nest_id == i + 1]
        assert len(sel) > 20
        assert shapely.contains_xy(nest, sel.x_um, sel.y_um).all()
        d = shapely.distance(nest.exterior, shapely.points(sel.x_um, sel.y_um))
        np.testing.assert_allclose(-d, sel.true_signed_dist_um, atol=1e-9)
    assert shapely.contains_xy(t.tissue, t.truth.x_um, t.truth.y_um).all()
    # nests do not overlap and keep their 50 µm bands apart
    for i in range(len(t.nests)):
        for j in range(i + 1, len(t.nests)):
            assert t.nests[i].distance(t.nests[j]) >= 100


# ------------------------------------------------------------------ barrier
def test_barrier_coverage_realised(five_nests):
    t = five_nests
    knobs = [0.0, 0.25, 0.5, 0.75, 1.0]
    for knob, info in zip(knobs, t.planted["nests"]):
        assert abs(info["barrier_coverage_realised"] - knob) <= 0.03
        assert abs(info["barrier_coverage_from_cells"] - knob) <= 0.03
        total = sum(b - a for a, b in info["covered_intervals_um"])
        assert total == pytest.approx(knob * info["perimeter_um"], abs=1e-6)
    for knob, nest, arcs in zip(knobs, t.nests, t.barrier_arcs()):
        length = sum(a.length for a in arcs)
        assert length == pytest.approx(knob * nest.exterior.length, rel=1e-6, abs=1e-6)
        # arcs lie on the nest outline
        for a in arcs:
            assert nest.exterior.distance(a) < 1e-9 and a.hausdorff_distance(
                a.intersection(nest.exterior.buffer(1e-6))) < 1e-6


def test_barrier_band_density_independent(five_nests):
    """Band densities recomputed with shapely areas, independent of the
    generator's own bookkeeping: covered arcs ≥ 800, uncovered < 300 cells/mm²."""
    t = five_nests
    bar = t.truth[t.truth.phenotype.isin(["SPP1_macrophage", "CAF"])]
    pts = shapely.points(bar.x_um, bar.y_um)
    for i, (nest, info) in enumerate(zip(t.nests, t.planted["nests"])):
        band = nest.buffer(50).difference(nest)
        ring = shapely.LineString(nest.exterior.coords)
        P = ring.length
        in_band = shapely.contains(band, pts)
        s = shapely.line_locate_point(ring, pts)
        cov_pts = np.zeros(len(bar), bool)
        cov_area = 0.0
        for a, b in info["covered_intervals_um"]:
            pieces = [(a, min(b, P))] + ([(0.0, b - P)] if b > P else [])
            for lo, hi in pieces:
                cov_pts |= (s >= lo) & (s < hi)
                arc = shapely.ops.substring(ring, lo, hi)
                cov_area += arc.buffer(50, cap_style="flat").intersection(band).area
        unc_area = band.area - cov_area
        n_cov = (in_band & cov_pts).sum()
        n_unc = (in_band & ~cov_pts).sum()
        if cov_area > 5000:
            dens = n_cov / cov_area * 1e6
            assert 800 <= dens <= 2000, (i, dens)
            types = set(bar.phenotype[in_band & cov_pts])
            assert types == {"SPP1_macrophage", "CAF"}
        if unc_area > 5000:
            assert n_unc / unc_area * 1e6 < 300, i


# ------------------------------------------------------------------- shields
def _ring_coverage_bruteforce(cells, cid, mask, ring_px):
    sl = ndi.find_objects((cells == cid).astype(np.int32))[0]
    pad = int(math.ceil(ring_px)) + 2
    ys = slice(max(sl[0].start - pad, 0), sl[0].stop + pad)
    xs = slice(max(sl[1].start - pad, 0), sl[1].stop + pad)
    sub = cells[ys, xs] == cid
    d = ndi.distance_transform_edt(~sub)
    ring = (d > 0) & (d <= ring_px + 1e-9)
    return mask[ys, xs][ring].mean() if ring.any() else np.nan


def test_shields_planted_and_measured(small, five_nests):
    for t in (small, five_nests):
        tum = t.truth[t.truth.phenotype == "tumour"]
        knob = t.planted["parameters"]["shield_coverage"]
        assert abs(tum.shielded.mean() - knob) <= 0.06
        assert (tum.shield_coverage[tum.shielded] >= 0.7).all()
        assert (tum.shield_coverage[~tum.shielded] < 0.2).all()
        assert t.truth.shielded[t.truth.phenotype != "tumour"].sum() == 0
        # boundary tumour cells are preferred
        edge = tum.true_signed_dist_um > -14
        assert tum.shielded[edge].mean() > tum.shielded[~edge].mean()
    # independent brute-force ring (EDT) on a sample of cells
    t = small
    tum = t.truth[t.truth.phenotype == "tumour"].iloc[::7]
    union = t.net_mask | t.col1_mask
    for cid, cov in zip(tum.cell_id, tum.shield_coverage):
        assert _ring_coverage_bruteforce(t.cells, cid, union, 3.0 / PX) == pytest.approx(cov)
    # NETs sit near neutrophils and shields: both masks are non-empty and the
    # neutrophils lie closer to NET pixels than other stromal cells do
    assert t.net_mask.any() and t.col1_mask.any()
    d_net = ndi.distance_transform_edt(~five_nests.net_mask) * PX
    tr = five_nests.truth
    r = np.rint(tr.y_um / PX).astype(int), np.rint(tr.x_um / PX).astype(int)
    dn = d_net[r]
    assert np.median(dn[tr.phenotype == "neutrophil"]) < np.median(dn[tr.phenotype == "other"])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 4.0))
def test_shield_ring_coverage_matches_edt(seed, ring_px):
    rng = np.random.default_rng(seed)
    lab = np.zeros((48, 48), np.int32)
    for k, (cy, cx) in enumerate(rng.uniform(8, 40, (4, 2)), start=1):
        yy, xx = np.mgrid[:48, :48]
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(9, 40)) & (lab == 0)] = k
    mask = rng.uniform(size=lab.shape) < 0.5
    ids = np.unique(lab[lab > 0])
    # the analysis' ring measure (also used for the generator's truth) vs an EDT brute force
    got = shield_ring_coverage(lab, ids, mask, None, 1.0, ring_um=ring_px)["shield_coverage"].to_numpy()
    want = [_ring_coverage_bruteforce(lab, i, mask, ring_px) for i in ids]
    np.testing.assert_allclose(got, want)


@settings(max_examples=60, deadline=None)
@given(st.floats(100, 2000), st.floats(0, 1), st.integers(0, 1000))
def test_covered_intervals_total_length(P, cov, seed):
    iv = _covered_intervals(P, cov, np.random.default_rng(seed))
    total = sum(b - a for a, b in iv)
    assert total == pytest.approx(cov * P, abs=1e-6)
    for a, b in iv:
        assert 0 <= a < P + 1e-9 and b >= a and b <= a + P + 1e-9
    # runs are disjoint on the circle
    marks = np.linspace(0, P, 4000, endpoint=False)
    hits = np.zeros(marks.shape, int)
    for a, b in iv:
        hits += ((marks >= a) & (marks < b)) | ((b > P) & (marks < b - P))
    assert hits.max(initial=0) <= 1


# ----------------------------------------------------------------- T cells
def _density(truth, tissue, nests, phen, d0, d1):
    u = shapely.union_all(nests)
    outer = u.buffer(d1) if d1 != 0 else u
    inner = (u.buffer(d0) if d0 != 0 else u) if d0 > -1e8 else shapely.Polygon()
    area = outer.difference(inner).intersection(tissue).area
    d = truth.true_signed_dist_um
    n = (truth.phenotype.isin(phen) & (d > d0) & (d <= d1)).sum()
    return n / area * 1e6


@pytest.mark.parametrize("phenotype", ["inflamed", "excluded", "desert"])
def test_t_cells_follow_immune_phenotype(phenotype):
    t = make_tissue((1600, 1600), PX, seed=21, n_nests=2, nest_radius_um=(100, 120),
                    immune_phenotype=phenotype,
                    t_density_per_mm2=None if phenotype == "desert" else 800.0)
    tr = t.truth
    T = ["CD8_T", "other_T"]
    inside = _density(tr, t.tissue, t.nests, T, -1e9, 0)
    outside = _density(tr, t.tissue, t.nests, T, 0, 200)
    if phenotype == "desert":
        assert _density(tr, t.tissue, t.nests, T, -1e9, 1e9) < 20
        assert inside < 20 and outside < 20
    elif phenotype == "excluded":
        assert outside > 600
        assert inside / outside < 0.2
        assert t.planted["infiltration_ratio_cd8"] < 0.2
    else:
        assert outside > 600
        assert 0.7 < inside / outside < 1.4
    n8, no = (tr.phenotype == "CD8_T").sum(), (tr.phenotype == "other_T").sum()
    if phenotype != "desert":
        assert 2.2 < n8 / max(no, 1) < 4.2


def _t_by_arc(t):
    """T-cell counts (inner band, outer band) next to covered / uncovered arcs."""
    tr = t.truth[t.truth.phenotype.isin(["CD8_T", "other_T"])]
    pts = shapely.points(tr.x_um, tr.y_um)
    dist = np.array([shapely.distance(n.exterior, pts) for n in t.nests])
    nearest = dist.argmin(0)
    out = {"covered": [0, 0], "uncovered": [0, 0]}
    for k, (nest, info) in enumerate(zip(t.nests, t.planted["nests"])):
        ring = shapely.LineString(nest.exterior.coords)
        P = ring.length
        d = np.where(shapely.contains(nest, pts), -1, 1) * dist[k]
        near = (np.abs(d) <= 50) & (nearest == k)
        s = shapely.line_locate_point(ring, pts)
        cov = np.zeros(len(tr), bool)
        for a, b in info["covered_intervals_um"]:
            cov |= ((s >= a) & (s < b)) | ((b > P) & (s < b - P))
        for key, sel in (("covered", cov), ("uncovered", ~cov)):
            out[key][0] += int((near & sel & (d <= 0)).sum())
            out[key][1] += int((near & sel & (d > 0)).sum())
    return out


def test_barrier_excludes_t(five_nests):
    """With barrier_excludes_t, no T cell enters the inner margin behind a
    covered arc; without it, T placement ignores the barrier."""
    kw = dict(n_nests=1, nest_radius_um=(100, 115), barrier_coverage=0.5,
              immune_phenotype="inflamed", t_density_per_mm2=1500.0)
    linked = _t_by_arc(make_tissue((900, 900), PX, seed=8, barrier_excludes_t=True, **kw))
    free = _t_by_arc(make_tissue((900, 900), PX, seed=8, barrier_excludes_t=False, **kw))
    assert linked["covered"][0] == 0 and linked["covered"][1] > 30
    assert linked["uncovered"][0] >= 8
    assert free["covered"][0] >= 8 and free["uncovered"][0] >= 8
    # inner/outer count ratio: 0 behind covered arcs, ~0.6 elsewhere (band areas differ)
    assert linked["uncovered"][0] / linked["uncovered"][1] > 0.3   # areas: inner band < outer
    # excluded sample: still nothing behind covered arcs, a few T elsewhere
    ex = _t_by_arc(five_nests)
    assert ex["covered"][0] == 0 and ex["covered"][1] > 50
    assert ex["uncovered"][0] >= 3


# ---------------------------------------------------------- round trip + panel
def test_write_and_load_truth(tmp_path, small):
    from tibspace.io import open_image

    tdir = small.write(tmp_path, image_name="img.ome.tif", panel_name="panel.toml",
                       truth_dir="truth")
    assert tdir == tmp_path / "truth"
    back = load_truth(tmp_path, load_image=True)
    assert np.array_equal(back.image, small.image)
    assert back.channel_names == list(CHANNELS)
    assert back.pixel_size_um == PX
    for k in ("nuclei", "cells", "net_mask", "col1_mask"):
        assert np.array_equal(getattr(back, k), getattr(small, k)), k
    pd.testing.assert_frame_equal(back.truth, small.truth, check_exact=False, atol=1e-4)
    assert len(back.nests) == len(small.nests)
    for a, b in zip(back.nests, small.nests):
        assert a.symmetric_difference(b).area < 1e-6 * b.area
    assert back.tissue.symmetric_difference(small.tissue).area < 1e-6 * small.tissue.area
    np.testing.assert_allclose(back.planted["nests"][0]["covered_intervals_um"],
                               small.planted["nests"][0]["covered_intervals_um"])
    img = open_image(tmp_path / "img.ome.tif")
    assert img.pixel_size_um == pytest.approx(PX)
    assert list(img.channel_names) == list(CHANNELS)
    img.close()


def test_panel_toml_rules(small, tmp_path):
    from tibspace.cells import load_panel

    (tmp_path / "p.toml").write_text(small.panel_toml)
    parsed = load_panel(tmp_path / "p.toml")
    assert parsed.resolve_channels(list(CHANNELS))["CD8"] == CHANNELS.index("CD8")
    panel = tomllib.loads(small.panel_toml)
    assert panel["phenotypes"]["tumour"] == "HepPar1+"
    assert panel["phenotypes"]["SPP1_macrophage"] == "CD68+ & SPP1+"
    assert panel["phenotypes"]["CAF"] == "(aSMA+ | FAP+) & not HepPar1+"
    assert panel["phenotypes"]["CD8_T"] == "CD3+ & CD8+"
    assert panel["phenotypes"]["other_T"] == "CD3+ & CD8-"
    assert panel["phenotypes"]["neutrophil"] == "MPO+"
    assert panel["masks"]["net"]["require"] == ["MPO"]
    assert "image" not in panel
    assert set(panel["markers"]) <= set(CHANNELS)


# ------------------------------------------------- segmentability + gating
def _watershed_nuclei(dapi, px):
    """A plain classical baseline: Otsu mask + smoothed-intensity watershed."""
    img = dapi.astype(float)
    sm = filters.gaussian(img, 0.5 / px, preserve_range=True)
    mask = ndi.binary_fill_holes(np.log1p(sm) > filters.threshold_otsu(np.log1p(sm)))
    sm2 = filters.gaussian(img, 1.5 / px, preserve_range=True)
    peaks = feature.peak_local_max(sm2, min_distance=int(2.5 / px), labels=measure.label(mask),
                                   exclude_border=False)
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-sm, markers, mask=mask)


def _object_f1(pred, true, iou_min=0.5):
    both = (pred > 0) & (true > 0)
    pairs, inter = np.unique(np.c_[pred[both], true[both]], axis=0, return_counts=True)
    ap, at = np.bincount(pred.ravel()), np.bincount(true.ravel())
    iou = inter / (ap[pairs[:, 0]] + at[pairs[:, 1]] - inter)
    tp = int((iou > iou_min).sum())   # IoU > 0.5 matches are one-to-one
    return 2 * tp / ((ap[1:] > 0).sum() + (at[1:] > 0).sum())


def _otsu_gating(image, cell_labels):
    ids = np.arange(1, cell_labels.max() + 1)
    mean = {c: ndi.mean(image[i].astype(float), cell_labels, ids) for i, c in enumerate(CHANNELS)}
    pos = {m: np.log1p(mean[m]) > filters.threshold_otsu(np.log1p(mean[m]))
           for m in ("HepPar1", "CD68", "SPP1", "aSMA", "FAP", "CD3", "CD8", "MPO")}
    rules = [("tumour", pos["HepPar1"]), ("SPP1_macrophage", pos["CD68"] & pos["SPP1"]),
             ("CAF", (pos["aSMA"] | pos["FAP"]) & ~pos["HepPar1"]),
             ("CD8_T", pos["CD3"] & pos["CD8"]), ("other_T", pos["CD3"] & ~pos["CD8"]),
             ("neutrophil", pos["MPO"])]
    out = np.full(len(ids), "other", object)
    done = np.zeros(len(ids), bool)
    for name, hit in rules:
        out[hit & ~done] = name
        done |= hit
    return pd.Series(out, index=ids)


def test_baseline_segmentation_and_gating_reach_targets():
    """A decent classical pipeline must reach nucleus F1 ≥ 0.9 (IoU 0.5) and
    phenotype accuracy ≥ 0.95, but the data should not be trivial."""
    t = make_tissue((768, 768), PX, seed=4, n_nests=1, nest_radius_um=(80, 95),
                    barrier_coverage=0.6, immune_phenotype="inflamed")
    pred = _watershed_nuclei(t.image[0], PX)
    f1 = _object_f1(pred, t.nuclei)
    assert f1 >= 0.9
    # many nuclei touch another nucleus (the hard part of segmentation)
    grown = ndi.grey_dilation(t.nuclei, size=3)
    touching = np.unique(t.nuclei[(grown != t.nuclei) & (t.nuclei > 0) & (grown > 0)])
    assert len(touching) / len(t.truth) > 0.05
    # gating on true whole-cell means
    ph = _otsu_gating(t.image, t.cells)
    truth = t.truth.set_index("cell_id").phenotype
    acc = (ph.loc[truth.index] == truth).mean()
    assert acc >= 0.95
    # gating on baseline-segmented cells, matched by nucleus centroid
    cells = segmentation.expand_labels(pred, int(2 / PX))
    ph2 = _otsu_gating(t.image, cells)
    cen = np.array([p.centroid for p in measure.regionprops(pred)]) * PX
    from scipy.spatial import cKDTree
    d, i = cKDTree(t.truth[["y_um", "x_um"]].to_numpy()).query(cen)
    ok = d < 3
    acc2 = (ph2.to_numpy()[ok] == t.truth.phenotype.to_numpy()[i[ok]]).mean()
    assert acc2 >= 0.95


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 40))
def test_polygon_mask_matches_shapely(seed, n_vertices):
    """Scanline tissue rasterisation == shapely point-in-polygon on pixel centres."""
    rng = np.random.default_rng(seed)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
    r = rng.uniform(5, 30, n_vertices)
    xy = np.c_[32 + r * np.cos(ang), 30 + r * np.sin(ang)] + rng.uniform(-0.3, 0.3, 2)
    poly = shapely.Polygon(xy)
    if not poly.is_valid or poly.area < 1:
        return
    ext = shapely.get_coordinates(poly.exterior)
    y0, x0 = int(rng.integers(0, 20)), int(rng.integers(0, 20))
    got = _polygon_mask(ext, y0, 64, x0, 70)
    yy, xx = np.mgrid[y0:64, x0:70]
    want = shapely.contains_xy(poly, xx.astype(float), yy.astype(float))
    on_edge = shapely.distance(poly.exterior, shapely.points(xx, yy)) < 1e-9
    assert (got == want)[~on_edge].all()


@pytest.mark.slow
def test_sample_data_matches_preset(sample_data):
    """The bundled sample is exactly what the documented command regenerates."""
    if not (sample_data / "hcc_sample.ome.tif").is_file():
        pytest.fail(f"{sample_data}/hcc_sample.ome.tif missing: run "
                    "python -m tibspace.synthetic --out sample_data --preset sample")
    saved = load_truth(sample_data, load_image=True)
    fresh = make_tissue(**SAMPLE_PRESET)
    assert saved.image.shape == (12, 1600, 1600) and saved.pixel_size_um == 0.5
    pd.testing.assert_frame_equal(saved.truth, fresh.truth, check_exact=False, atol=1e-3)
    assert (saved.nuclei == fresh.nuclei).mean() > 0.9999
    assert (saved.cells == fresh.cells).mean() > 0.9999
    assert np.abs(saved.image.astype(int) - fresh.image).mean() < 0.01
    assert [n["barrier_coverage_planted"] for n in saved.planted["nests"]] == [0.2, 0.5, 0.8, 1.0]
    size = sum(f.stat().st_size for f in sample_data.rglob("*") if f.is_file())
    assert size <= 20 * 1024 ** 2


# ------------------------------------------------------- the wider world (issue 11 item 7)
SEEDS = range(10)
_W_KNOBS = dict(absent_markers=(), illumination_gradient=0.0, autofluorescence=1.0,
                af_speckles_per_mm2=0.0, t_layout=None, barrier_arcs=None, barrier_gap_um=None,
                scattered_tumour_cells=0, nest_shape="blob", cord_width_um=(24.0, 36.0),
                edge_nests=0)


def _cell_means(t, channel):
    """Per-cell mean DN of ``channel`` over the whole-cell label (index = cell_id - 1)."""
    c = list(t.channel_names).index(channel)
    ids = t.truth.cell_id.to_numpy()
    return np.asarray(ndi.mean(t.image[c].astype(float), t.cells, ids))


def _background(t):
    """Tissue pixels ≥ 3 px from every cell and off the NET / collagen masks."""
    H, W = t.cells.shape
    tis = _polygon_mask(shapely.get_coordinates(t.tissue.exterior) / t.pixel_size_um, 0, H, 0, W)
    near = ndi.binary_dilation(t.cells > 0, iterations=3) | t.net_mask | t.col1_mask
    return tis & ~near


def test_world_knobs_at_defaults_change_nothing():
    kw = dict(n_nests=1, nest_radius_um=(30, 35), seed=4)
    a = make_tissue((448, 448), PX, **kw)
    b = make_tissue((448, 448), PX, **kw, **_W_KNOBS)
    assert np.array_equal(a.image, b.image) and a.planted == b.planted
    assert "world" not in a.planted
    pd.testing.assert_frame_equal(a.truth, b.truth)


@pytest.mark.parametrize("seed", SEEDS)
def test_absent_marker_has_only_background(seed):
    kw = dict(n_nests=1, nest_radius_um=(40, 50), seed=seed, immune_phenotype="inflamed",
              t_density_per_mm2=800)
    t = make_tissue((512, 512), PX, absent_markers=("CD8",), **kw)
    ref = make_tissue((512, 512), PX, **kw)
    assert t.planted["world"]["absent_markers"] == ["CD8"]
    ph = t.truth.phenotype.to_numpy()
    assert (ph == "CD8_T").sum() >= 5          # the population is there, its stain is not
    cd8, cd8_ref = _cell_means(t, "CD8"), _cell_means(ref, "CD8")
    other = ph == "other"
    # with the marker: CD8_T cells far above the rest; absent: same distribution as the rest
    assert np.median(cd8_ref[ph == "CD8_T"]) > 5 * np.median(cd8_ref[other])
    assert np.median(cd8[ph == "CD8_T"]) < 1.25 * np.median(cd8[other])
    assert cd8.max() < 1.5 * np.quantile(cd8[other], 0.99)
    # channels not next to CD8 (crosstalk neighbours) untouched; CD3 still marks the T cells
    keep = [c for c in range(12) if c not in (7, 8, 9)]
    assert np.array_equal(t.image[keep], ref.image[keep])
    cd3 = _cell_means(t, "CD3")
    assert np.median(cd3[ph == "CD8_T"]) > 5 * np.median(cd3[other])


@pytest.mark.parametrize("seed", SEEDS)
def test_illumination_gradient_scales_background(seed):
    from tibspace.synthetic.world import illumination_at

    t = make_tissue((512, 512), PX, seed=seed, n_nests=1, nest_radius_um=(40, 50),
                    illumination_gradient=1.0)
    info = t.planted["world"]["illumination"]
    assert info["factor"] == pytest.approx(2.0)
    bg = _background(t)
    yy, xx = np.nonzero(bg)
    f = illumination_at(info, xx * PX, yy * PX)
    lo, hi = f < np.quantile(f, 0.2), f > np.quantile(f, 0.8)
    img = t.image[2:].astype(float).sum(0)[yy, xx]   # channels without nuclear/membrane spill
    measured = img[hi].mean() / img[lo].mean()
    planted = f[hi].mean() / f[lo].mean()
    assert planted > 1.4
    assert measured == pytest.approx(planted, rel=0.15)


def test_autofluorescence_scale_and_speckles():
    kw = dict(seed=2, n_nests=1, nest_radius_um=(40, 50))
    a = make_tissue((512, 512), PX, **kw)
    b = make_tissue((512, 512), PX, autofluorescence=3.0, af_speckles_per_mm2=400.0, **kw)
    bg = _background(a) & _background(b)
    ratio = b.image[2:, bg].astype(float).mean() / a.image[2:, bg].astype(float).mean()
    assert ratio == pytest.approx(3.0, rel=0.1)
    af = b.planted["world"]["autofluorescence"]
    assert af["scale"] == 3.0 and af["n_speckles"] == len(af["speckles_um"]) >= 10
    # every speckle off the cells is bright in every channel
    n_checked = 0
    for x, y, r, photons in af["speckles_um"]:
        r_px, c_px = int(round(y / PX)), int(round(x / PX))
        if b.cells[r_px, c_px] or not bg[max(r_px - 8, 0):r_px + 8, max(c_px - 8, 0):c_px + 8].any():
            continue
        n_checked += 1
        for c in range(12):
            assert b.image[c, r_px, c_px] > 3 * np.median(b.image[c, bg])
    assert n_checked >= 5


def _t_by_zone(layout, seeds=SEEDS, rho=600.0):
    """T-cell counts and areas (µm², from a 2 µm grid) per zone, pooled over seeds."""
    zones = {"in_cov": (-48.0, -2.0, True), "in_unc": (-48.0, -2.0, False),
             "near_cov": (2.0, 48.0, True), "held_cov": (52.0, 148.0, True),
             "far": (160.0, 1e9, None)}
    n = dict.fromkeys(zones, 0)
    area = dict.fromkeys(zones, 0.0)
    for seed in seeds:
        t = make_tissue((768, 768), PX, seed=seed, n_nests=1, nest_radius_um=(45, 55),
                        barrier_coverage=0.5, t_density_per_mm2=rho, t_layout=layout)
        assert t.planted["world"]["t_layout"]["layout"] == layout
        tc = t.truth[t.truth.phenotype.isin(["CD8_T", "other_T"])]
        sd, cov = t.barrier_side(tc.x_um, tc.y_um)
        g = np.arange(1.0, 384.0, 2.0)
        gx, gy = np.meshgrid(g, g)
        ins = shapely.contains_xy(t.tissue, gx.ravel(), gy.ravel())
        gsd, gcov = t.barrier_side(gx.ravel()[ins], gy.ravel()[ins])
        for k, (d0, d1, c) in zones.items():
            sel = (sd > d0) & (sd <= d1) & ((cov == c) if c is not None else True)
            gsel = (gsd > d0) & (gsd <= d1) & ((gcov == c) if c is not None else True)
            n[k] += int(sel.sum())
            area[k] += gsel.sum() * 4.0
    dens = {k: n[k] / max(area[k], 1e-9) * 1e6 for k in zones}
    return n, dens


def test_t_layout_piled():
    n, d = _t_by_zone("piled")
    assert d["near_cov"] > 2.0 * d["far"]
    assert n["in_cov"] == 0


def test_t_layout_held():
    n, d = _t_by_zone("held")
    assert n["near_cov"] == 0 and n["in_cov"] == 0
    assert d["held_cov"] > 1.4 * d["far"]


def test_t_layout_spread():
    n, d = _t_by_zone("spread", rho=1500.0)
    assert n["in_cov"] == 0 and n["in_unc"] > 0
    assert 0.5 < d["near_cov"] / d["far"] < 1.5


def test_t_layout_indifferent_is_the_null():
    n, d = _t_by_zone("indifferent", rho=1500.0)
    assert n["in_cov"] > 0 and n["in_unc"] > 0
    assert 0.5 < d["in_cov"] / d["in_unc"] < 2.0
    assert 0.5 < d["near_cov"] / d["far"] < 1.5


@settings(max_examples=200, deadline=None)
@given(P=st.floats(150, 3000), cov=st.floats(0.05, 0.97), k=st.integers(1, 6),
       gap=st.floats(20, 80), seed=st.integers(0, 2 ** 31))
def test_covered_intervals_gaps_are_at_least_requested(P, cov, k, gap, seed):
    from tibspace.synthetic.layout import _gaps

    ivs = _covered_intervals(P, cov, np.random.default_rng(seed), k, gap)
    assert 1 <= len(ivs) <= k
    gaps = _gaps(ivs, P)
    assert len(gaps) == len(ivs)
    assert min(b - a for a, b in gaps) >= gap - 1e-6
    assert sum(b - a for a, b in ivs) + sum(b - a for a, b in gaps) == pytest.approx(P)


@pytest.mark.parametrize("seed", SEEDS)
def test_short_barrier_gaps_planted(seed):
    t = make_tissue((512, 512), PX, seed=seed, n_nests=1, nest_radius_um=(45, 50),
                    barrier_coverage=0.78, barrier_arcs=3, barrier_gap_um=20.0)
    nest = t.planted["world"]["nests"][0]
    assert len(t.planted["nests"][0]["covered_intervals_um"]) == 3
    assert len(nest["gap_lengths_um"]) == 3
    assert min(nest["gap_lengths_um"]) >= 20.0 - 1e-6
    assert max(nest["gap_lengths_um"]) < 40.0        # short gaps, as asked for
    # the lining follows the arcs: barrier cells sit along covered arcs, not gaps
    bar = t.truth[t.truth.phenotype.isin(["SPP1_macrophage", "CAF"])]
    sd, cov = t.barrier_side(bar.x_um, bar.y_um)
    band = (sd > 0) & (sd <= 50)
    assert cov[band].mean() > 0.9


@pytest.mark.parametrize("seed", SEEDS)
def test_scattered_tumour_cells_are_isolated(seed):
    from scipy.spatial import cKDTree

    t = make_tissue((512, 512), PX, seed=seed, n_nests=1, nest_radius_um=(35, 40),
                    scattered_tumour_cells=6)
    sc = t.planted["world"]["scattered_tumour_cells"]
    assert sc["n_placed"] == 6 and len(sc["cell_ids"]) == 6
    tr = t.truth.set_index("cell_id")
    cells = tr.loc[sc["cell_ids"]]
    assert (cells.phenotype == "tumour").all() and (cells.nest_id == 0).all()
    assert (cells.true_signed_dist_um >= 50.0 - 2.0).all()
    tum = tr[tr.phenotype == "tumour"]
    d, _ = cKDTree(tum[["x_um", "y_um"]].to_numpy()).query(cells[["x_um", "y_um"]].to_numpy(), k=2)
    assert d[:, 1].min() >= 40.0 - 2.0           # no tumour cell near another: no nest
    hep = _cell_means(t, "HepPar1")
    idx = np.searchsorted(t.truth.cell_id.to_numpy(), sc["cell_ids"])
    other = t.truth.phenotype.to_numpy() == "other"
    assert hep[idx].min() > 5 * np.median(hep[other])   # they are HepPar1+ in the image


def test_irregular_nests_are_lobulated():
    sol = {"blob": [], "irregular": []}
    for shape in sol:
        for seed in SEEDS:
            t = make_tissue((512, 512), PX, seed=seed, n_nests=1, nest_radius_um=(40, 50),
                            nest_shape=shape)
            solidity = t.nests[0].area / t.nests[0].convex_hull.area
            if shape != "blob":      # blob is the default world: no planted["world"]
                n = t.planted["world"]["nests"][0]
                assert n["shape"] == shape and n["solidity"] == pytest.approx(solidity)
            sol[shape].append(solidity)
    assert min(sol["blob"]) > 0.98
    assert np.mean(sol["irregular"]) < 0.92 and max(sol["irregular"]) < 0.98


@pytest.mark.parametrize("seed", SEEDS)
def test_trabecular_cords_have_the_planted_width(seed):
    t = make_tissue((1024, 1024), PX, seed=seed, n_nests=1, nest_radius_um=(40, 50),
                    nest_shape="trabecular", cord_width_um=(24.0, 36.0), barrier_coverage=0.5)
    w = t.planted["world"]["nests"][0]["cord_width_um"]
    assert 24.0 <= w <= 36.0
    nest = t.nests[0]
    inscribed = 2 * shapely.maximum_inscribed_circle(nest).length
    assert w * 0.9 <= inscribed <= w * 1.35        # a bend may widen the cord locally
    assert nest.area / nest.length == pytest.approx(w / 2, rel=0.2)
    tum = t.truth[(t.truth.phenotype == "tumour") & (t.truth.nest_id == 1)]
    assert len(tum) >= 10


@pytest.mark.parametrize("seed", SEEDS)
def test_edge_nests_touch_the_frame(seed):
    from tibspace.synthetic.layout import _in_intervals

    t = make_tissue((768, 768), PX, seed=seed, n_nests=2, nest_radius_um=(45, 55),
                    edge_nests=1, barrier_coverage=0.6)
    info = t.planted["world"]["nests"]
    assert info[0]["touches_frame"] and not info[1]["touches_frame"]
    W = H = 768 * PX
    minx, miny, maxx, maxy = t.nests[0].bounds
    assert min(minx, miny, W - maxx, H - maxy) <= 1.2
    assert min(t.nests[1].bounds[:2]) > 50 and max(t.nests[1].bounds[2:]) < W - 50
    # no barrier planted along the frame part
    P = t.nests[0].exterior.length
    s = np.arange(0, P, 0.5)
    on_frame = _in_intervals(s, [tuple(v) for v in info[0]["frame_intervals_um"]], P)
    covered = _in_intervals(s, [tuple(v) for v in t.planted["nests"][0]["covered_intervals_um"]], P)
    assert on_frame.sum() * 0.5 > 20 and not (on_frame & covered).any()
    # the image shows the cut nest: HepPar1+ tumour cells run up to the frame
    tum = t.truth[(t.truth.nest_id == 1) & (t.truth.phenotype == "tumour")]
    edge = np.minimum.reduce([tum.x_um, tum.y_um, W - tum.x_um, H - tum.y_um])
    assert (edge < 12).sum() >= 1
    yy, xx = np.mgrid[0:768, 0:768] * PX
    strip = (np.minimum.reduce([xx, yy, W - xx, H - yy]) < 6) & shapely.contains_xy(
        t.nests[0], xx, yy)
    assert strip.sum() > 100
    assert t.image[2][strip].mean() > 3 * np.median(t.image[2][_background(t)])


def test_world_truth_round_trips(tmp_path):
    t = make_tissue((512, 512), PX, seed=1, n_nests=1, nest_radius_um=(40, 50),
                    scattered_tumour_cells=3, illumination_gradient=0.5, t_layout="held")
    t.write(tmp_path)
    back = load_truth(tmp_path)
    assert back.planted["world"] == json.loads(json.dumps(t.planted["world"]))


def test_world_bad_knobs_raise_input_error():
    for kw, word in ((dict(absent_markers=("CD99",)), "absent_markers"),
                     (dict(t_layout="sideways"), "t_layout"),
                     (dict(nest_shape="star"), "nest_shape"),
                     (dict(edge_nests=3), "edge_nests"),
                     (dict(illumination_gradient=-1), "illumination_gradient")):
        with pytest.raises(InputError, match=word):
            make_tissue((256, 256), n_nests=1, nest_radius_um=(30, 35), **kw)
