"""Neighbourhood statistics against squidpy, brute force, exhaustive
enumeration and real data (scimap exemplar-001, phenoptr Set4)."""

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from tibspace.errors import InputError
from tibspace.stats import (NeighbourhoodEnrichment, co_occurrence, counts_within, join_count_moments, mixing_score, nearest_distance_to_phenotypes, neighbourhood_enrichment, spatial_graph)

REAL = Path("/work/shared/data/real")
if not REAL.exists():  # CI: shared/ sits beside the clone
    REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def _clustered(n, seed=0):
    """Clustered multi-type table (own generator: independent of other modules)."""
    rng = np.random.default_rng(seed)
    side = math.sqrt(n / 3000) * 1000
    centres = rng.uniform(0, side, (max(5, n // 40), 2))
    ctype = rng.integers(0, 5, len(centres))
    pick = rng.integers(0, len(centres), n)
    xy = centres[pick] + rng.normal(0, 25, (n, 2))
    own = rng.random(n) < 0.8
    t = np.where(own, ctype[pick], rng.integers(0, 5, n))
    names = np.array(["tumour", "CD8_T", "CAF", "SPP1_macrophage", "other"])
    return pd.DataFrame({"cell_id": np.arange(n), "x_um": xy[:, 0], "y_um": xy[:, 1], "phenotype": names[t]})


@pytest.fixture(scope="module")
def squidpy_run():
    warnings.filterwarnings("ignore")
    anndata = pytest.importorskip("anndata")
    sq = pytest.importorskip("squidpy")
    cells = _clustered(1500, seed=3)
    # squidpy's co_occurrence casts coordinates to float32; on a 1/8 µm grid
    # every squared distance below 80² is exact in float32 too, so both
    # tools must count exactly the same pairs.
    cells[["x_um", "y_um"]] = np.round(cells[["x_um", "y_um"]] * 8) / 8
    adata = anndata.AnnData(obs=pd.DataFrame({"phenotype": pd.Categorical(cells.phenotype)},
                                             index=cells.cell_id.astype(str)))
    adata.obsm["spatial"] = cells[["x_um", "y_um"]].to_numpy()
    sq.gr.spatial_neighbors(adata, coord_type="generic", radius=30.0, delaunay=False)
    sq.gr.nhood_enrichment(adata, cluster_key="phenotype", seed=0, n_perms=1000, show_progress_bar=False,
                           n_jobs=1)
    iv = np.array([5.0, 20.0, 40.0, 60.0, 80.0])
    occ, _ = sq.gr.co_occurrence(adata, cluster_key="phenotype", interval=iv, copy=True,
                                 show_progress_bar=False)
    return cells, adata, iv, occ


def test_radius_graph_and_counts_identical_to_squidpy(squidpy_run):
    cells, adata, _, _ = squidpy_run
    g = spatial_graph(cells.x_um, cells.y_um, radius_um=30.0)
    A = adata.obsp["spatial_connectivities"]
    assert ((A != 0) != (g != 0)).nnz == 0 and g.nnz > 5000
    res = adata.uns["phenotype_nhood_enrichment"]
    ne = neighbourhood_enrichment(cells, radius_um=30.0)             # graph-free path
    ne_g = neighbourhood_enrichment(cells, graph=A)                  # squidpy's own graph
    assert ne.categories == list(adata.obs.phenotype.cat.categories)
    np.testing.assert_array_equal(ne.counts, res["count"])
    np.testing.assert_array_equal(ne_g.counts, res["count"])
    np.testing.assert_allclose(ne_g.zscore, ne.zscore, rtol=1e-12)


def _mc_bound(z, n_perm, c=5.0):
    # Monte-Carlo z uses the sample mean (error sd/sqrt(N)) and sample sd
    # (relative error ~ sqrt((kurt-1)/(4N)) ~ sqrt(1/(2N)) for near-normal
    # counts), so z_mc - z_exact ~ N(0, (1 + z²/2)/N). c = 5 keeps the
    # family-wise false-alarm rate over 25 entries below 1e-5.
    return c * np.sqrt((1 + z * z / 2) / n_perm)


def test_exact_zscores_agree_with_squidpy_and_our_monte_carlo(squidpy_run):
    cells, adata, _, _ = squidpy_run
    ne = neighbourhood_enrichment(cells, radius_um=30.0)
    z_sq = adata.uns["phenotype_nhood_enrichment"]["zscore"]
    assert np.all(np.abs(z_sq - ne.zscore) <= _mc_bound(ne.zscore, 1000))
    mc = neighbourhood_enrichment(cells, radius_um=30.0, method="permutation", n_perm=1000, seed=1)
    assert mc.method == "permutation" and mc.n_perm == 1000
    assert np.all(np.abs(mc.zscore - ne.zscore) <= _mc_bound(ne.zscore, 1000))
    np.testing.assert_array_equal(mc.counts, ne.counts)
    # planted structure: same-type clustering -> strongly positive diagonal
    assert np.all(np.diag(ne.zscore) > 5)
    df = ne.to_frame()
    assert list(df.columns) == ["type_a", "type_b", "count", "expected", "sd", "zscore"] and len(df) == 25


def _tiny_graph():
    edges = [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 5), (5, 6), (6, 3), (1, 5), (0, 6)]
    n = 7
    i = np.array([e[0] for e in edges] + [e[1] for e in edges])
    j = np.array([e[1] for e in edges] + [e[0] for e in edges])
    return sp.csr_matrix((np.ones(i.size), (i, j)), shape=(n, n)), i, j


def test_exact_moments_equal_enumeration_of_all_permutations():
    g, i, j = _tiny_graph()
    labels0 = np.array([0, 0, 0, 1, 1, 2, 2])
    K = 3
    counts = []
    for perm in itertools.permutations(range(7)):
        lab = labels0[list(perm)]
        counts.append(np.bincount(lab[i] * K + lab[j], minlength=K * K).reshape(K, K))
    counts = np.array(counts, dtype=np.float64)
    deg = np.diff(g.indptr)
    mean, var = join_count_moments(np.bincount(labels0), g.nnz, float((deg ** 2).sum()))
    np.testing.assert_allclose(mean, counts.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(var, counts.var(axis=0), rtol=0, atol=1e-10)
    # and through the public function with a given graph
    cells = pd.DataFrame({"x_um": np.arange(7.0), "y_um": np.zeros(7), "phenotype": np.array(["a", "b", "c"])[labels0]})
    ne = neighbourhood_enrichment(cells, graph=g)
    np.testing.assert_allclose(ne.expected, counts.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(ne.sd, counts.std(axis=0), atol=1e-10)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(30, 120), k=st.integers(2, 5))
def test_permutation_zscores_have_mean_zero(seed, n, k):
    """Under random labelling the exact-moment z of each count has mean 0, sd 1."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    g = spatial_graph(x, y, method="knn", k=3)
    lab = rng.integers(0, k, n)
    sizes = np.bincount(lab, minlength=k)
    deg = np.diff(g.indptr)
    mean, var = join_count_moments(sizes, g.nnz, float((deg ** 2).sum()))
    rows = np.repeat(np.arange(n), deg)
    N = 3000
    zs = []
    for _ in range(N):
        p = rng.permutation(lab)
        c = np.bincount(p[rows] * k + p[g.indices], minlength=k * k).reshape(k, k)
        zs.append(np.where(var > 0, (c - mean) / np.sqrt(np.where(var > 0, var, 1)), 0.0))
    zs = np.array(zs)
    ok = var > 0
    assert np.all(np.abs(zs.mean(axis=0)[ok]) < 5 / math.sqrt(N))
    assert np.all(np.abs(zs.std(axis=0)[ok] - 1) < 0.1)


def test_single_phenotype_gives_explicit_result():
    rng = np.random.default_rng(0)
    cells = pd.DataFrame({"x_um": rng.uniform(0, 100, 50), "y_um": rng.uniform(0, 100, 50), "phenotype": "tumour"})
    ne = neighbourhood_enrichment(cells, radius_um=20)
    assert ne.categories == ["tumour"]
    assert ne.expected[0, 0] == ne.counts[0, 0] and ne.sd[0, 0] == 0 and np.isnan(ne.zscore[0, 0])


def test_co_occurrence_matches_squidpy(squidpy_run):
    cells, adata, iv, occ = squidpy_run
    df = co_occurrence(cells, iv)
    cats = list(adata.obs.phenotype.cat.categories)
    ours = np.full(occ.shape, np.nan)
    rk = {r: k for k, r in enumerate(iv[1:])}
    for r in df.itertuples():
        # squidpy's occ[i, c, k] = p(i | c) / p(i): first axis = type_b, second = conditioning type_a
        ours[cats.index(r.type_b), cats.index(r.type_a), rk[r.r_max_um]] = r.value
    np.testing.assert_allclose(np.nan_to_num(ours), occ, rtol=1e-10, atol=1e-12)


def test_co_occurrence_interval_mode_matches_brute_force():
    cells = _clustered(400, seed=5)
    iv = np.array([0.0, 10.0, 30.0, 50.0])
    df = co_occurrence(cells, iv, mode="interval")
    xy = cells[["x_um", "y_um"]].to_numpy()
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, -1)
    cats = sorted(cells.phenotype.unique())
    lab = cells.phenotype.map({c: i for i, c in enumerate(cats)}).to_numpy()
    K = len(cats)
    for k in range(3):
        m = (d > iv[k]) & (d <= iv[k + 1])
        ii, jj = np.nonzero(m)
        n = np.bincount(lab[ii] * K + lab[jj], minlength=K * K).reshape(K, K).astype(float)
        p = n.sum(axis=1) / n.sum()
        ref = (n / n.sum(axis=1, keepdims=True)) / p[None, :]
        sub = df[df.r_max_um == iv[k + 1]]
        for r in sub.itertuples():
            assert r.count == n[cats.index(r.type_a), cats.index(r.type_b)]
            np.testing.assert_allclose(r.value, ref[cats.index(r.type_a), cats.index(r.type_b)], rtol=1e-12)
        assert (sub.r_min_um == iv[k]).all()


def test_nearest_distance_real_exemplar_matches_brute_force():
    path = REAL / "scimap_exemplar001" / "exemplar-001_cells_with_scimap_phenotype.csv"
    if not path.exists():
        pytest.fail(f"real data missing: {path}")
    raw = pd.read_csv(path)
    # pixel size is not recorded for this table: distances are in pixels, the
    # comparison is unit-free
    cells = pd.DataFrame({"cell_id": raw.CellID, "x_um": raw.X_centroid, "y_um": raw.Y_centroid,
                          "phenotype": raw.phenotype})
    got = nearest_distance_to_phenotypes(cells)
    assert len(got) == 11201
    xy = cells[["x_um", "y_um"]].to_numpy()
    ph = cells.phenotype.to_numpy()
    for t in sorted(set(ph)):
        tgt = np.flatnonzero(ph == t)
        ref = np.empty(len(xy))
        for s in range(0, len(xy), 2000):       # brute force in chunks
            d = np.hypot(xy[s:s + 2000, None, 0] - xy[None, tgt, 0], xy[s:s + 2000, None, 1] - xy[None, tgt, 1])
            d[np.arange(s, min(s + 2000, len(xy)))[:, None] == tgt[None, :]] = np.inf   # not itself
            ref[s:s + 2000] = d.min(axis=1)
        ref[~np.isfinite(ref)] = np.nan
        np.testing.assert_allclose(got[f"dist_to_{t}_um"].to_numpy(), ref, rtol=1e-12, atol=1e-9)


def test_counts_within_tissue_category_real_set4_matches_brute_force():
    path = REAL / "phenoptr_lung_vectra" / "Set4_cell_seg_data.csv"
    if not path.exists():
        pytest.fail(f"real data missing: {path}")
    raw = pd.read_csv(path)
    cells = pd.DataFrame({"cell_id": raw["Cell ID"], "x_um": raw["Cell X Position"],
                          "y_um": raw["Cell Y Position"], "phenotype": raw["Phenotype"],
                          "Tissue Category": raw["Tissue Category"]})
    xy = cells[["x_um", "y_um"]].to_numpy()
    checked = 0
    for a, b, cat, r in [("CD8+", "CK+", "Tumor", 25.0), ("CK+", "CD68+", "Stroma", 30.0),
                         ("CD68+", "CD68+", "Tumor", 40.0), ("FoxP3+", "CD8+", None, 20.0)]:
        got = counts_within(cells, a, b, r, category_col="Tissue Category" if cat else None, category=cat)
        incat = (cells["Tissue Category"] == cat).to_numpy() if cat else np.ones(len(cells), bool)
        ia = np.flatnonzero((cells.phenotype == a).to_numpy() & incat)
        ib = np.flatnonzero((cells.phenotype == b).to_numpy() & incat)
        d = np.hypot(xy[ia, None, 0] - xy[None, ib, 0], xy[ia, None, 1] - xy[None, ib, 1])
        ref = ((d <= r) & (ia[:, None] != ib[None, :])).sum(axis=1)
        np.testing.assert_array_equal(got, ref)
        checked += ref.sum()
    assert checked > 100
    # per-cell own category (category_col without category)
    got = counts_within(cells, "CD8+", "CK+", 25.0, category_col="Tissue Category")
    ia = np.flatnonzero(cells.phenotype == "CD8+")
    ib = np.flatnonzero(cells.phenotype == "CK+")
    cat = cells["Tissue Category"].to_numpy()
    d = np.hypot(xy[ia, None, 0] - xy[None, ib, 0], xy[ia, None, 1] - xy[None, ib, 1])
    np.testing.assert_array_equal(got, ((d <= 25) & (cat[ia, None] == cat[None, ib])).sum(axis=1))


def test_mixing_score_matches_brute_force():
    cells = _clustered(800, seed=9)
    xy = cells[["x_um", "y_um"]].to_numpy()
    im = cells.phenotype.isin(["CD8_T", "SPP1_macrophage"]).to_numpy()
    tu = (cells.phenotype == "tumour").to_numpy()
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    n_it = (d[np.ix_(im, tu)] <= 30).sum()
    n_ii = ((d[np.ix_(im, im)] <= 30).sum() - im.sum()) / 2
    got = mixing_score(cells, immune_types=["CD8_T", "SPP1_macrophage"], tumour_types=["tumour"], radius_um=30)
    assert got == pytest.approx(n_it / n_ii, rel=1e-12)


def test_knn_and_delaunay_graphs():
    from scipy.spatial import Delaunay
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 100, 300), rng.uniform(0, 100, 300)
    g = spatial_graph(x, y, method="knn", k=5)
    assert (g != g.T).nnz == 0 and g.diagonal().sum() == 0
    assert np.diff(g.indptr).min() >= 5
    from scipy.spatial import cKDTree
    _, idx = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=6)
    for i in range(0, 300, 37):
        assert set(idx[i, 1:]) <= set(g.indices[g.indptr[i]:g.indptr[i + 1]])
    gd = spatial_graph(x, y, method="delaunay")
    tri = Delaunay(np.c_[x, y])
    ref = set()
    for s in tri.simplices:
        for a, b in ((0, 1), (1, 2), (0, 2)):
            ref.add((min(s[a], s[b]), max(s[a], s[b])))
    gi, gj = sp.triu(gd).nonzero()
    assert set(zip(gi.tolist(), gj.tolist())) == ref
    gm = spatial_graph(x, y, method="delaunay", max_edge_um=8.0, weights="distance")
    assert gm.data.max() <= 8.0 and gm.nnz < gd.nnz


@pytest.mark.parametrize("call,match", [
    (lambda: neighbourhood_enrichment(pd.DataFrame(columns=["x_um", "y_um", "phenotype"])), "empty"),
    (lambda: neighbourhood_enrichment(pd.DataFrame({"x_um": [1.0, np.nan], "y_um": [1.0, 2.0],
                                                    "phenotype": ["a", "b"]})), "NaN"),
    (lambda: neighbourhood_enrichment(pd.DataFrame({"cell_id": [3, 3], "x_um": [1.0, 2.0], "y_um": [1.0, 2.0],
                                                    "phenotype": ["a", "b"]})), "duplicated"),
    (lambda: neighbourhood_enrichment(pd.DataFrame({"x_um": [1.0, 2.0], "y_um": [1.0, 2.0],
                                                    "phenotype": ["a", "b"]}), radius_um=-1), "positive"),
    (lambda: neighbourhood_enrichment(pd.DataFrame({"x_um": [1.0, 2.0], "y_um": [1.0, 2.0], "phenotype": ["a", "b"]}),
                                      graph=sp.csr_matrix(np.array([[0, 1], [0, 0]]))), "symmetric"),
    (lambda: counts_within(pd.DataFrame({"x_um": [1.0], "y_um": [1.0], "phenotype": ["a"]}), "a", "zz", 5), "zz"),
    (lambda: co_occurrence(pd.DataFrame({"x_um": [1.0], "y_um": [1.0], "phenotype": ["a"]}), [5, 3]), "increasing"),
    (lambda: nearest_distance_to_phenotypes(pd.DataFrame({"x_um": [1.0], "y": [1.0], "phenotype": ["a"]})), "y_um"),
])
def test_bad_input_raises_input_error(call, match):
    with pytest.raises(InputError, match=match):
        call()
