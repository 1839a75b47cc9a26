"""Synthetic cell tables with planted spatial structure (for tests and benchmarks).

:func:`make_clustered_cells` builds a cell table (``cell_id``, ``x_um``,
``y_um``, ``phenotype``) of any size at a tissue-like density
(~3,000 cells/mm², so 1M cells cover ~330 mm²) with:

- tumour nests: irregular, non-overlapping blobs (radius 120–450 µm) filled
  mostly with ``tumour`` cells, covering ~30 % of the area;
- a barrier in the 0–50 µm outer rim of half the nests ("barrier nests"):
  ``SPP1_macrophage`` and ``CAF`` enriched there, ``CD8_T`` depleted inside
  those nests (planted exclusion); the other nests are inflamed;
- stroma: CAFs, T cells, neutrophils, other cells;
- immune clusters (TLS-like Gaussian blobs, σ = 40 µm) of T and B cells in
  the stroma.

Positions are in µm (x right, y down, origin top-left). The ground truth
(nest centres, radii, shape harmonics, barrier flags) is returned on request.
Unlike :mod:`tibspace.synthetic` (images), this module makes tables only, so
it scales to millions of cells in seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from tibspace.errors import InputError

#: Phenotype names used by :func:`make_clustered_cells` (default 8 types).
DEFAULT_PHENOTYPES = ("tumour", "CD8_T", "other_T", "SPP1_macrophage", "CAF",
                      "neutrophil", "B_cell", "other")

#: Target mean cell density (cells/mm²) of the synthetic tables.
DENSITY_PER_MM2 = 3000.0

# Phenotype probabilities per zone, in DEFAULT_PHENOTYPES order
# (tumour, CD8_T, other_T, SPP1_macrophage, CAF, neutrophil, B_cell, other).
_P_INSIDE_BARRIER = [0.90, 0.005, 0.015, 0.01, 0.01, 0.02, 0.005, 0.035]
_P_INSIDE_INFLAMED = [0.80, 0.08, 0.04, 0.01, 0.01, 0.02, 0.005, 0.035]
_P_RIM_BARRIER = [0.0, 0.03, 0.05, 0.30, 0.35, 0.05, 0.02, 0.20]
_P_STROMA = [0.0, 0.10, 0.10, 0.04, 0.20, 0.06, 0.05, 0.45]
_P_CLUSTER = [0.0, 0.20, 0.35, 0.02, 0.02, 0.02, 0.35, 0.04]
_RIM_UM = 50.0
_CLUSTER_SIGMA_UM = 40.0
_N_HARMONICS = 3


def _nest_layout(side_um: float, rng: np.random.Generator, tumour_fraction: float = 0.38):
    """Place non-overlapping irregular nests until ~tumour_fraction of the area is covered."""
    target = tumour_fraction * side_um * side_um
    rmin, rmax = 120.0, 450.0
    margin = 40.0
    cx, cy, rr = [], [], []
    area = 0.0
    tries = 0
    # Draw candidates in batches; accept those whose bounding disc (radius*1.25,
    # the largest the harmonics can reach, plus a stroma gap) clears all
    # accepted ones. Small images get at least one nest.
    while area < target and tries < 200:
        tries += 1
        m = 256
        r = rng.uniform(rmin, rmax, m)
        r = np.minimum(r, 0.3 * side_um)
        x = rng.uniform(0, side_um, m)
        y = rng.uniform(0, side_um, m)
        if len(cx):
            # Vectorised pre-filter against nests accepted in earlier batches.
            ax, ay, ar = np.asarray(cx), np.asarray(cy), np.asarray(rr)
            d = np.hypot(ax[None, :] - x[:, None], ay[None, :] - y[:, None])
            ok = ~np.any(d < 1.25 * (r[:, None] + ar[None, :]) + margin, axis=1)
            x, y, r = x[ok], y[ok], r[ok]
        n_before = len(cx)
        for i in range(len(x)):
            if len(cx) > n_before:
                d = np.hypot(np.asarray(cx[n_before:]) - x[i], np.asarray(cy[n_before:]) - y[i])
                if np.any(d < 1.25 * (r[i] + np.asarray(rr[n_before:])) + margin):
                    continue
            cx.append(x[i]); cy.append(y[i]); rr.append(r[i])
            area += np.pi * r[i] ** 2
            if area >= target:
                break
    n = len(cx)
    amp = rng.uniform(0.0, 0.08, (n, _N_HARMONICS))   # sum of amplitudes <= 0.24
    phase = rng.uniform(0, 2 * np.pi, (n, _N_HARMONICS))
    barrier = rng.random(n) < 0.5
    return pd.DataFrame({
        "nest": np.arange(1, n + 1), "x_um": np.asarray(cx, float), "y_um": np.asarray(cy, float),
        "radius_um": np.asarray(rr, float), "barrier": barrier,
        **{f"amp{k + 2}": amp[:, k] for k in range(_N_HARMONICS)},
        **{f"phase{k + 2}": phase[:, k] for k in range(_N_HARMONICS)},
    })


def nest_radius_um(nests: pd.DataFrame, index: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Boundary radius of nest ``nests.iloc[index]`` in direction ``theta`` (radians).

    r(θ) = R · (1 + Σ_k a_k cos(k θ + φ_k)), k = 2..4.
    """
    r = np.ones_like(theta, dtype=float)
    for k in range(_N_HARMONICS):
        a = nests[f"amp{k + 2}"].to_numpy()[index]
        p = nests[f"phase{k + 2}"].to_numpy()[index]
        r += a * np.cos((k + 2) * theta + p)
    return nests["radius_um"].to_numpy()[index] * r


def nest_polygons(nests: pd.DataFrame, n_vertices: int = 720):
    """The planted nests as shapely polygons (µm), for ground-truth comparisons."""
    import shapely

    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    polys = []
    for i in range(len(nests)):
        r = nest_radius_um(nests, np.full(theta.shape, i), theta)
        polys.append(shapely.Polygon(np.c_[nests["x_um"].iat[i] + r * np.cos(theta),
                                            nests["y_um"].iat[i] + r * np.sin(theta)]))
    return polys


def _radial_signed_dist(x, y, nests: pd.DataFrame, tree: cKDTree, k: int = 3):
    """Approximate signed distance (radial, µm) to the nearest nest and its index."""
    k = min(k, len(nests))
    _, idx = tree.query(np.c_[x, y], k=k)
    idx = idx.reshape(len(x), k)
    best = np.full(len(x), np.inf)
    best_i = np.zeros(len(x), dtype=np.int64)
    for j in range(k):
        i = idx[:, j]
        dx = x - nests["x_um"].to_numpy()[i]
        dy = y - nests["y_um"].to_numpy()[i]
        d = np.hypot(dx, dy) - nest_radius_um(nests, i, np.arctan2(dy, dx))
        better = d < best
        best[better] = d[better]
        best_i[better] = i[better]
    return best, best_i


def _phenotype_names(n_phenotypes: int) -> list[str]:
    if n_phenotypes < 2:
        raise InputError(f"n_phenotypes={n_phenotypes}: expected at least 2 (tumour + other); "
                         "pass n_phenotypes >= 2")
    if n_phenotypes <= len(DEFAULT_PHENOTYPES):
        return list(DEFAULT_PHENOTYPES[: n_phenotypes - 1]) + ["other"]
    return list(DEFAULT_PHENOTYPES) + [f"type_{k}" for k in range(len(DEFAULT_PHENOTYPES) + 1,
                                                                 n_phenotypes + 1)]


def make_clustered_cells(n_cells: int, seed: int = 0, n_phenotypes: int = 8, *,
                         density_per_mm2: float = DENSITY_PER_MM2, cluster_fraction: float = 0.08,
                         return_nests: bool = False):
    """A synthetic cell table with tumour nests, barriers, stroma and immune clusters.

    Parameters
    ----------
    n_cells : int
        Exact number of cells (rows).
    seed : int
        Seed of ``numpy.random.default_rng``; same arguments ⇒ identical table.
    n_phenotypes : int
        Number of phenotype labels (default 8: ``tumour, CD8_T, other_T,
        SPP1_macrophage, CAF, neutrophil, B_cell, other``). Fewer: the last
        types are merged into ``other``; more: ``other`` cells are split evenly
        into ``other, type_9, type_10, ...``.
    density_per_mm2 : float
        Mean cell density; the image is a square of side sqrt(n / density).
    cluster_fraction : float
        Fraction of cells placed in TLS-like immune clusters in the stroma.
    return_nests : bool
        Also return the planted nests (DataFrame: ``nest, x_um, y_um,
        radius_um, barrier, amp2..4, phase2..4``; use :func:`nest_polygons`).

    Returns
    -------
    cells : pandas.DataFrame
        ``cell_id`` (1..n), ``x_um``, ``y_um``, ``phenotype`` (str), sorted by
        ``cell_id``; ``cells.attrs["side_um"]`` is the image side (µm).

    Examples
    --------
    >>> cells = make_clustered_cells(5000, seed=1)
    >>> len(cells), sorted(cells["phenotype"].unique())[:3]
    (5000, ['B_cell', 'CAF', 'CD8_T'])
    """
    n_cells = int(n_cells)
    if n_cells < 1:
        raise InputError(f"n_cells={n_cells}: expected a positive number of cells")
    rng = np.random.default_rng(seed)
    side = float(np.sqrt(n_cells / density_per_mm2) * 1000.0)
    nests = _nest_layout(side, rng)
    tree = cKDTree(nests[["x_um", "y_um"]].to_numpy())
    n_clu = int(round(cluster_fraction * n_cells)) if len(nests) else 0
    x, y, code = _zone_cells(n_cells - n_clu, side, nests, tree, rng)
    if n_clu:
        xc, yc, cc = _immune_clusters(n_clu, side, nests, tree, rng)
        x, y, code = np.concatenate([x, xc]), np.concatenate([y, yc]), np.concatenate([code, cc])
    # Spatially sorted (row-major in 500 µm strips), like a segmentation's label order.
    order = np.lexsort((x, np.floor(y / 500.0)))
    x, y, code = x[order], y[order], code[order]
    pheno = _phenotype_labels(code, n_phenotypes, rng)
    cells = pd.DataFrame({"cell_id": np.arange(1, n_cells + 1, dtype=np.int64),
                          "x_um": x, "y_um": y, "phenotype": pheno.astype(str)})
    cells.attrs["side_um"] = side
    if return_nests:
        return cells, nests
    return cells


def _zone_cells(n_uni, side, nests, tree, rng):
    """Uniform positions; phenotype codes drawn with the probabilities of their zone
    (barrier nest, inflamed nest, barrier rim, stroma)."""
    x = rng.uniform(0, side, n_uni)
    y = rng.uniform(0, side, n_uni)
    d, ni = _radial_signed_dist(x, y, nests, tree)
    barrier = nests["barrier"].to_numpy()[ni]

    zone = np.full(n_uni, 3, dtype=np.int8)                     # stroma
    zone[(d > 0) & (d <= _RIM_UM) & barrier] = 2                # barrier rim
    zone[(d <= 0) & ~barrier] = 1                               # inflamed nest
    zone[(d <= 0) & barrier] = 0                                # barrier nest
    probs = np.array([_P_INSIDE_BARRIER, _P_INSIDE_INFLAMED, _P_RIM_BARRIER, _P_STROMA])
    code = np.empty(n_uni, dtype=np.int64)
    for z in range(4):
        sel = zone == z
        code[sel] = rng.choice(len(DEFAULT_PHENOTYPES), size=int(sel.sum()), p=probs[z])
    return x, y, code


def _immune_clusters(n_clu, side, nests, tree, rng):
    """Immune clusters: Gaussian blobs (σ = 40 µm) centred in stroma (> 150 µm from nests)."""
    n_cent = max(1, n_clu // 400)
    cand = rng.uniform(0, side, (20 * n_cent + 50, 2))
    dc, _ = _radial_signed_dist(cand[:, 0], cand[:, 1], nests, tree)
    cand = cand[dc > 150.0]
    if len(cand) == 0:
        cand = rng.uniform(0, side, (n_cent, 2))
    cent = cand[:n_cent]
    which = rng.integers(0, len(cent), n_clu)
    xc = np.clip(cent[which, 0] + rng.normal(0, _CLUSTER_SIGMA_UM, n_clu), 0, side)
    yc = np.clip(cent[which, 1] + rng.normal(0, _CLUSTER_SIGMA_UM, n_clu), 0, side)
    return xc, yc, rng.choice(len(DEFAULT_PHENOTYPES), size=n_clu, p=_P_CLUSTER)


def _phenotype_labels(code, n_phenotypes, rng):
    """Phenotype names of the codes: fewer types merge into ``other``, more split ``other``."""
    names = _phenotype_names(n_phenotypes)
    k = len(DEFAULT_PHENOTYPES)
    if n_phenotypes < k:
        lut = np.array(list(DEFAULT_PHENOTYPES[: n_phenotypes - 1]) + ["other"] * (k - n_phenotypes + 1),
                       dtype=object)
        return lut[code]
    pheno = np.array(DEFAULT_PHENOTYPES, dtype=object)[code]
    if n_phenotypes > k:
        extra = np.array(["other"] + names[k:], dtype=object)
        other = pheno == "other"
        pheno[other] = extra[rng.integers(0, len(extra), int(other.sum()))]
    return pheno
