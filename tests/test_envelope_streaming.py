"""Random-labelling envelopes stream their neighbour pairs in blocks above ``max_pairs``:
the same numbers as the stored pairs (bit for bit), and as a brute-force count."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tibspace.stats import envelopes, random_labelling_envelope

W = (0, 0, 400, 400)
RADII = [5.0, 10.0, 20.0]
CASES = [("cross_L", "pair", "isotropic"), ("cross_pcf", "pair", "translation"), ("cross_K", "all", "isotropic")]


def _cells(n=1500, seed=7):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x_um": rng.uniform(0, 400, n), "y_um": rng.uniform(0, 400, n),
                         "phenotype": rng.choice(["A", "B", "C"], n, p=[0.3, 0.3, 0.4])})


def _env(stat, pop, ec, **kw):
    return random_labelling_envelope(_cells(), stat, "A", "B", RADII, W, n_sim=19, seed=3, population=pop,
                                     edge_correction=ec, **kw)


@pytest.mark.parametrize("stat,pop,ec", CASES)
def test_below_threshold_numbers_are_those_before_streaming(stat, pop, ec):
    got = _env(stat, pop, ec)
    ref = REFERENCE[f"{stat}-{pop}-{ec}"]
    for col, vals in ref.items():
        assert [float(v).hex() for v in got[col]] == vals, col


@pytest.mark.parametrize("stat,pop,ec", CASES)
def test_streamed_blocks_give_the_stored_numbers_bit_for_bit(stat, pop, ec, monkeypatch):
    stored = _env(stat, pop, ec)
    calls = {"csr": 0, "pairs": 0}
    rows, pairs = envelopes._rows_by_label_side, envelopes._grid_pairs

    def count_rows(*a, **k):
        calls["csr"] += 1
        return rows(*a, **k)

    def count_pairs(*a, **k):
        calls["pairs"] += 1
        return pairs(*a, **k)

    monkeypatch.setattr(envelopes, "_rows_by_label_side", count_rows)
    monkeypatch.setattr(envelopes, "_grid_pairs", count_pairs)
    streamed = _env(stat, pop, ec, max_pairs=400)
    pd.testing.assert_frame_equal(stored, streamed, check_exact=True)
    assert calls["csr"] + calls["pairs"] > 2      # several blocks (per batch), not one stored list


def test_blocks_cover_the_counts_within_budget():
    counts = np.array([3, 0, 5, 1, 9, 0, 0, 2, 4])
    b = envelopes._blocks(counts, 6)
    assert b[0][0] == 0 and b[-1][1] == counts.size
    assert all(p[1] == q[0] for p, q in zip(b, b[1:]))
    assert all(counts[i0:i1].sum() <= 6 or i1 - i0 == 1 for i0, i1 in b)
    assert envelopes._blocks(counts, 1000) == [(0, counts.size)]


@pytest.mark.parametrize("pop", ["pair", "all"])
def test_streamed_envelope_equals_brute_force(pop):
    """No edge correction: cross-K = area · #{(i, j): label a at i, b at j, d <= r} / (n_a n_b)
    for the observed labels and for each of the same seeded permutations."""
    cells = _cells(600, seed=11)
    n_sim, seed = 9, 5
    env = random_labelling_envelope(cells, "cross_K", "A", "B", RADII, W, n_sim=n_sim, seed=seed, population=pop,
                                    edge_correction="none", max_pairs=50)
    ph = cells.phenotype.to_numpy()
    keep = np.isin(ph, ["A", "B"]) if pop == "pair" else np.ones(len(ph), bool)
    x, y = cells.x_um.to_numpy()[keep], cells.y_um.to_numpy()[keep]
    codes = pd.Categorical(ph[keep], categories=sorted(set(ph))).codes.astype(np.int8)
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    n_a, n_b = int((codes == 0).sum()), int((codes == 1).sum())

    def k_of(lab):
        m = d[np.ix_(lab == 0, lab == 1)]
        return np.array([400 * 400 * (m <= r).sum() / (n_a * n_b) for r in RADII])

    rng = np.random.default_rng(seed)
    sims = np.array([k_of(rng.permutation(codes)) for _ in range(n_sim)])
    np.testing.assert_allclose(env["value"], k_of(codes), rtol=1e-12)
    np.testing.assert_allclose(env["mean"], sims.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(env["lo"], sims.min(axis=0), rtol=1e-12)     # k = 1 for n_sim = 9
    np.testing.assert_allclose(env["hi"], sims.max(axis=0), rtol=1e-12)


REFERENCE = {  # the envelope before streaming (commit eb29cb2), float.hex of each value
    'cross_L-pair-isotropic': {
        'value': ['0x1.37b304eb4805cp+2', '0x1.3d035c98be367p+3', '0x1.412bd7c24fc7ep+4'],
        'mean': ['0x1.315e0c4a61990p+2', '0x1.39c33af4527efp+3', '0x1.416f8c551586ep+4'],
        'lo': ['0x1.22d082c7d6a82p+2', '0x1.3136a03eac893p+3', '0x1.3d991a556f01dp+4'],
        'hi': ['0x1.3ed25f9a44ac9p+2', '0x1.43900442f37a5p+3', '0x1.449cee06143c1p+4'],
        'p_value': ['0x1.0000000000000p-1', '0x1.3333333333333p-1', '0x1.0000000000000p+0'],
        'p_global': ['0x1.b333333333333p-1', '0x1.b333333333333p-1', '0x1.b333333333333p-1'],
    },
    'cross_pcf-pair-translation': {
        'value': ['0x1.f5bb299c66006p-1', '0x1.f6ab06a176665p-1', '0x1.06d9b97d9913ap+0'],
        'mean': ['0x1.f814e4791790dp-1', '0x1.fa96b61ccf833p-1', '0x1.0818af9c401e2p+0'],
        'lo': ['0x1.c56a2a93c9bc8p-1', '0x1.dd19311855446p-1', '0x1.f801e8219aca7p-1'],
        'hi': ['0x1.0e8705c3eb9d3p+0', '0x1.078c11f041fc7p+0', '0x1.16cb053d6e6ccp+0'],
        'p_value': ['0x1.ccccccccccccdp-1', '0x1.999999999999ap-1', '0x1.999999999999ap-1'],
        'p_global': ['0x1.0000000000000p+0', '0x1.0000000000000p+0', '0x1.0000000000000p+0'],
    },
    'cross_K-all-isotropic': {
        'value': ['0x1.2a127f48cbea3p+6', '0x1.34526a3cbbfccp+8', '0x1.3c7696e051622p+10'],
        'mean': ['0x1.23b26f63ea6f1p+6', '0x1.31749be432be3p+8', '0x1.3711b6d7e6ed5p+10'],
        'lo': ['0x1.06ca6aa5c3de6p+6', '0x1.184d7b059f178p+8', '0x1.2bd7445a52b76p+10'],
        'hi': ['0x1.5069192d9f450p+6', '0x1.49bc6f9d40ad0p+8', '0x1.434a31834520ap+10'],
        'p_value': ['0x1.6666666666666p-1', '0x1.999999999999ap-1', '0x1.0000000000000p-1'],
        'p_global': ['0x1.199999999999ap-1', '0x1.199999999999ap-1', '0x1.199999999999ap-1'],
    },
}
