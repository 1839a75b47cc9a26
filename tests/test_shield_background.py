"""Shield masks on an uneven background: the background removed at a physical scale before automatic
gates recovers planted shields that a raw-intensity gate loses; tiling stays exact."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from _shield_uneven import add_uneven_background
from tibspace.analyses import shield_analysis, shield_masks
from tibspace.analyses.shield_background import estimate_background, flatten
from tibspace.synthetic import tissue as syn
from tibspace.tissue import TumourRegion

PX = 0.6
SPECS = {"net": {"channels": ["CitH3"], "require": ["MPO"], "gate": "otsu", "min_object_um2": 5.0},
         "col1": {"channels": ["COL1"], "gate": "otsu", "min_object_um2": 5.0}}


@pytest.fixture(scope="module")
def uneven():
    """Planted 0.3 shields under a ramp of 1.5 × the mean stain signal, blotches and speckle."""
    t = syn.make_tissue((800, 800), pixel_size_um=PX, seed=21, n_nests=1, nest_radius_um=(110.0, 130.0),
                        shield_coverage=0.3, immune_phenotype="inflamed")
    return t, add_uneven_background(t, 3)


def _scores(t, masks):
    neu_ids = t.truth.loc[t.truth.phenotype == "neutrophil", "cell_id"].to_numpy()
    neu = ndi.binary_dilation(np.isin(t.cells, neu_ids), iterations=2)
    out = {}
    for name, ref in (("net", t.net_mask), ("col1", t.col1_mask)):
        m = masks[name] & ~neu if name == "net" else masks[name]
        ref = ref & ~neu if name == "net" else ref
        out[name] = ((m & ndi.binary_dilation(ref, iterations=2)).sum() / max(m.sum(), 1),
                     (ref & ndi.binary_dilation(m, iterations=2)).sum() / max(ref.sum(), 1))
    return out


def test_uneven_background_masks_and_shields_recovered(uneven):
    t, img = uneven
    ci = {c: k for k, c in enumerate(t.channel_names)}
    masks, _ = shield_masks(img, SPECS, ci, PX, tile_size_px=300)
    for name, (precision, recall) in _scores(t, masks).items():
        assert precision > 0.95 and recall > 0.85, (name, precision, recall)
    res = shield_analysis(t.truth, t.cells, masks, PX, TumourRegion.from_polygons(t.nests), tissue=t.tissue,
                          n_sim=9)
    tr = t.truth[t.truth.phenotype == "tumour"].set_index("cell_id")
    pc = res.per_cell.set_index("cell_id")
    assert res.sample["shielded_fraction"] == pytest.approx(tr["shielded"].mean(), abs=0.07)
    assert (pc["shielded"] == tr["shielded"].reindex(pc.index)).mean() >= 0.9
    # the raw-intensity gate (background_um=0) loses the shields on this background
    raw, _ = shield_masks(img, SPECS, ci, PX, tile_size_px=300, background_um=0)
    assert min(r for _, r in _scores(t, raw).values()) < 0.5


def test_background_masks_identical_for_any_tile_size(uneven):
    _, img = uneven
    sub = img[:, :420, :380]
    ci = {"MPO": 9, "CitH3": 10, "COL1": 11}
    ref, g_ref = shield_masks(sub, SPECS, ci, PX, tile_size_px=4096)
    for tile in (37, 128):
        got, g = shield_masks(sub, SPECS, ci, PX, tile_size_px=tile)
        assert g == g_ref
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])


def test_background_of_a_ramp_is_removed_exactly():
    yy, xx = np.mgrid[0:320, 0:280]
    ramp = 0.3 * xx + 0.2 * yy + 40.0
    bg = estimate_background(ramp, None, 1, 0.5, 20.0, quantile=0.5)      # 40-pixel blocks
    flat = flatten(ramp, bg, np.arange(320), np.arange(280))
    # away from the outer ring of blocks (where the 3 x 3 median sees clamped neighbours) a plane stays
    # a plane: the block medians sit at the block centres and the mesh is bilinear
    np.testing.assert_allclose(flat[60:260, 60:220], bg.level, atol=1e-9)
