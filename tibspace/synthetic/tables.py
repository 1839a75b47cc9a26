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
    n_uni = n_cells - n_clu
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

    # Immune clusters: Gaussian blobs centred in stroma (> 150 µm from nests).
    xs, ys, cs = [x], [y], [code]
    if n_clu:
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
        xs.append(xc); ys.append(yc)
        cs.append(rng.choice(len(DEFAULT_PHENOTYPES), size=n_clu, p=_P_CLUSTER))
    x = np.concatenate(xs); y = np.concatenate(ys); code = np.concatenate(cs)

    # Spatially sorted (row-major in 500 µm strips), like a segmentation's label order.
    order = np.lexsort((x, np.floor(y / 500.0)))
    x, y, code = x[order], y[order], code[order]

    names = _phenotype_names(n_phenotypes)
    k = len(DEFAULT_PHENOTYPES)
    if n_phenotypes < k:
        lut = np.array(list(DEFAULT_PHENOTYPES[: n_phenotypes - 1]) + ["other"] * (k - n_phenotypes + 1),
                       dtype=object)
        pheno = lut[code]
    else:
        pheno = np.array(DEFAULT_PHENOTYPES, dtype=object)[code]
        if n_phenotypes > k:
            extra = np.array(["other"] + names[k:], dtype=object)
            other = pheno == "other"
            pheno[other] = extra[rng.integers(0, len(extra), int(other.sum()))]

    cells = pd.DataFrame({"cell_id": np.arange(1, n_cells + 1, dtype=np.int64),
                          "x_um": x, "y_um": y, "phenotype": pheno.astype(str)})
    cells.attrs["side_um"] = side
    if return_nests:
        return cells, nests
    return cells


# ---------------------------------------------------------------------------
#: T-cell layouts of :func:`make_barrier_table` (where T cells stopped by a barrier go).
T_LAYOUTS = ("piled", "held", "spread", "independent")


def _harmonic_nest(cx: float, cy: float, radius: float, rng: np.random.Generator, n_vertices: int = 360):
    """Irregular nest r(θ) = R (1 + Σ a_k cos(kθ + φ_k)), k = 2..5, with concavities."""
    import shapely

    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0.0, 0.13) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return shapely.Polygon(np.c_[cx + radius * r * np.cos(theta), cy + radius * r * np.sin(theta)])


def _gap_intervals(perimeter: float, coverage: float, rng: np.random.Generator, min_gap_um: float):
    """Covered arc intervals (start, end) in [0, P) with the planted coverage and ≥ 1 gap ≥ min_gap_um."""
    if coverage >= 1.0:
        return [(0.0, perimeter)]
    if coverage <= 0.0:
        return []
    total_gap = (1.0 - coverage) * perimeter
    n_arcs = int(rng.integers(1, 5))
    n_arcs = max(1, min(n_arcs, int(total_gap // min_gap_um)))
    # gaps: min_gap_um each plus a random share of the rest; arcs: random shares of the covered length
    gaps = min_gap_um + (total_gap - n_arcs * min_gap_um) * rng.dirichlet(np.ones(n_arcs))
    arcs = coverage * perimeter * rng.dirichlet(np.full(n_arcs, 2.0))
    s = rng.uniform(0, perimeter)
    out = []
    for a, g in zip(arcs, gaps):
        out.append((s, s + a))
        s += a + g
    return out


def _arc_position(nests, x, y):
    """Nearest nest (index), signed distance (µm, > 0 outside) and arc position along its exterior."""
    import shapely

    polys = np.asarray(nests, dtype=object)
    rings = shapely.get_exterior_ring(polys)
    pts = shapely.points(x, y)
    dist = np.stack([shapely.distance(r, pts) for r in rings])     # (n_nests, n)
    which = np.argmin(dist, axis=0)
    d = dist[which, np.arange(len(x))]
    inside = shapely.contains_xy(shapely.union_all(polys), x, y)
    s = shapely.line_locate_point(rings[which], pts)
    return which, np.where(inside, -d, d), s


def _in_arcs(s, intervals, perimeter):
    out = np.zeros(s.shape, bool)
    for a, b in intervals:
        out |= ((s - a) % perimeter) < (b - a)
    return out


def _thin_hardcore(xy: np.ndarray, r_um: float) -> np.ndarray:
    """Greedy sequential thinning: keep points at least ``r_um`` from every kept point."""
    tree = cKDTree(xy)
    keep = np.ones(len(xy), bool)
    for i, nb in enumerate(tree.query_ball_point(xy, r_um)):
        if keep[i]:
            for j in nb:
                if j > i:
                    keep[j] = False
    return keep


def make_barrier_table(seed: int = 0, *, t_layout: str = "piled", n_nests: int = 6,
                       coverage=None, min_gap_um: float = 20.0, lining_per_mm2: float = 3000.0,
                       lining_depth_um: float = 45.0, t_stroma_per_mm2: float = 400.0,
                       background_per_mm2: float = 1500.0):
    """Cell table with planted barrier arcs (short gaps) and T cells in a chosen layout.

    Nests are irregular harmonic blobs (radius 140–230 µm, concave in
    places) on a 3-column grid of 800 µm pitch. Each nest gets a planted
    coverage (``coverage``: one value per nest; default drawn from {0, 1}
    and U(0.3, 0.95)) laid out as 1–4 arcs separated by gaps of at least
    ``min_gap_um`` arc length. A covered arc's 0–``lining_depth_um`` outer
    band is lined with SPP1 macrophages and CAFs (Poisson candidates at
    ``lining_per_mm2`` thinned to a 9 µm hard core, types 1:1); the stroma
    holds a background of ~100 barrier cells/mm² and ``background_per_mm2``
    other cells. Tumour cells fill the nests.

    T cells (``CD8_T``) sit in the stroma at ``t_stroma_per_mm2``. Where the
    boundary is *blocked* the tumour side holds 5 % of that density (else
    80 %) and, by ``t_layout``, the stopped T cells

    - ``piled``: pile up at 2× in the 0–50 µm outer band;
    - ``held``: are held 50–150 µm away (0–50 µm band at 10 %, 50–150 µm at 2×);
    - ``spread``: spread through the stroma (outside density unchanged);
    - ``independent``: as ``piled``, but the blocked arcs are the barrier
      arcs rotated by an independent random offset per nest (T placement
      independent of the barrier: the null).

    Blocked means the cell's nearest boundary point lies on a covered arc.

    Returns
    -------
    cells : DataFrame (``x_um, y_um, phenotype``)
    truth : dict
        ``nests`` (shapely Polygons, µm), ``tissue`` (box), ``intervals``
        (per nest: covered arc intervals along the exterior, µm),
        ``coverage`` (planted covered fraction per nest), ``t_layout``.

    Examples
    --------
    >>> cells, truth = make_barrier_table(0, n_nests=2, coverage=[1.0, 0.5])
    >>> [round(c, 2) for c in truth["coverage"]], bool((cells["phenotype"] == "CD8_T").sum() > 100)
    ([1.0, 0.5], True)
    """
    import shapely

    if t_layout not in T_LAYOUTS:
        raise InputError(f"t_layout={t_layout!r}: expected one of {', '.join(T_LAYOUTS)}")
    rng = np.random.default_rng(seed)
    ncol = 3
    nrow = int(np.ceil(n_nests / ncol))
    pitch = 800.0
    tissue = shapely.box(0, 0, ncol * pitch, nrow * pitch)
    nests = [_harmonic_nest(pitch * (i % ncol + 0.5) + rng.uniform(-40, 40),
                            pitch * (i // ncol + 0.5) + rng.uniform(-40, 40), rng.uniform(140, 230), rng)
             for i in range(n_nests)]
    if coverage is None:
        coverage = [float(rng.choice([0.0, 1.0])) if rng.random() < 0.4 else float(rng.uniform(0.3, 0.95))
                    for _ in range(n_nests)]
    coverage = [float(c) for c in coverage]
    perims = [float(n.exterior.length) for n in nests]
    intervals = [_gap_intervals(P, c, rng, min_gap_um) for P, c in zip(perims, coverage)]
    planted = [float(min(1.0, sum(b - a for a, b in iv) / P)) for iv, P in zip(intervals, perims)]
    if t_layout == "independent":
        blocked = []
        for iv, P in zip(intervals, perims):
            off = rng.uniform(0, P)
            blocked.append([(a + off, b + off) for a, b in iv])
    else:
        blocked = intervals
    area = tissue.area / 1e6

    def poisson(density):
        n = rng.poisson(density * area)
        return rng.uniform(0, ncol * pitch, n), rng.uniform(0, nrow * pitch, n)

    # lining: candidates in the band, hard core, kept where the nearest boundary point is covered
    x, y = poisson(lining_per_mm2)
    which, d, s = _arc_position(nests, x, y)
    band = (d > 0) & (d <= lining_depth_um)
    x, y, which, s = x[band], y[band], which[band], s[band]
    keep = _thin_hardcore(np.c_[x, y], 9.0)
    cov = np.array([_in_arcs(s[i:i + 1], intervals[which[i]], perims[which[i]])[0] for i in range(len(s))],
                   bool) if len(s) else np.zeros(0, bool)
    keep &= cov
    lx, ly = x[keep], y[keep]
    lph = np.where(rng.random(len(lx)) < 0.5, "SPP1_macrophage", "CAF")

    # background: other / barrier cells in stroma, tumour cells in nests
    bx, by = poisson(background_per_mm2 + 100.0)
    _, bd, _ = _arc_position(nests, bx, by)
    u = rng.random(len(bx)) * (background_per_mm2 + 100.0)
    bph = np.where(bd <= 0, "tumour",
                   np.where(u < 30.0, "SPP1_macrophage", np.where(u < 100.0, "CAF", "other")))

    # T cells by thinning a Poisson process of 2× the stromal density
    tx, ty = poisson(2.0 * t_stroma_per_mm2)
    tw, td, ts = _arc_position(nests, tx, ty)
    blk = np.zeros(len(tx), bool)
    for k in range(n_nests):
        m = tw == k
        blk[m] = _in_arcs(ts[m], blocked[k], perims[k])
    rel = np.where(td <= 0, np.where(blk, 0.05, 0.8), 1.0)
    if t_layout in ("piled", "independent"):
        rel = np.where(blk & (td > 0) & (td <= 50), 2.0, rel)
    elif t_layout == "held":
        rel = np.where(blk & (td > 0) & (td <= 50), 0.1, rel)
        rel = np.where(blk & (td > 50) & (td <= 150), 2.0, rel)
    tk = rng.random(len(tx)) * 2.0 < rel
    cells = pd.DataFrame({"x_um": np.r_[lx, bx, tx[tk]], "y_um": np.r_[ly, by, ty[tk]],
                          "phenotype": np.r_[lph, bph, np.full(int(tk.sum()), "CD8_T")]})
    truth = {"nests": nests, "tissue": tissue, "intervals": intervals, "coverage": planted,
             "t_layout": t_layout}
    return cells, truth
