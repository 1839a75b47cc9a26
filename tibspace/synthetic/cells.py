"""Cell placement of synthetic tissue (µm): positions, phenotypes, morphology.

Tumour cells fill each nest on a jittered hexagonal lattice; barrier cells
(SPP1 macrophages, CAFs) line the planted arcs; T cells follow the immune
phenotype's density by signed distance to the nests; neutrophils, sparse
barrier-type cells and ``other`` cells fill the stroma. A hard-core thinning in
priority order keeps nuclei from overlapping.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import Polygon

from tibspace.synthetic.layout import _boundary_frame, _covered_flags, _signed_distance
from tibspace.synthetic.spec import BARRIER_WIDTH_UM, MARGIN_UM, SHIELD_BLOCK_REACH_UM
from tibspace.synthetic.world import scattered_tumour, t_layout_fn

# cell morphology per phenotype: nucleus equivalent diameter (µm, mean, sd),
# aspect ratio range, harmonic irregularity amplitude, cytoplasm expansion (µm)
_MORPH = {
    "tumour": dict(d=(10.5, 0.8), aspect=(1.0, 1.35), irr=0.05, lobes=0.0, exp=4.5),
    "SPP1_macrophage": dict(d=(8.0, 0.6), aspect=(1.1, 1.5), irr=0.09, lobes=0.0, exp=4.0),
    "CAF": dict(d=(7.2, 0.6), aspect=(2.0, 3.0), irr=0.04, lobes=0.0, exp=2.5),
    "CD8_T": dict(d=(6.0, 0.4), aspect=(1.0, 1.2), irr=0.04, lobes=0.0, exp=2.0),
    "other_T": dict(d=(6.0, 0.4), aspect=(1.0, 1.2), irr=0.04, lobes=0.0, exp=2.0),
    "neutrophil": dict(d=(7.5, 0.5), aspect=(1.0, 1.3), irr=0.04, lobes=0.16, exp=2.5),
    "other": dict(d=(7.5, 0.7), aspect=(1.1, 2.0), irr=0.06, lobes=0.0, exp=2.5),
}



def _t_density_fn(immune_phenotype: str, rho: float, link: bool):
    """Return f(d, covered) -> T density (cells/mm²) by signed distance d."""

    def f(d, covered):
        d = np.asarray(d, float)
        out = np.full(d.shape, rho)
        outer = (d > 0) & (d <= MARGIN_UM)
        inner = (d <= 0) & (d > -MARGIN_UM)
        core = d <= -MARGIN_UM
        if immune_phenotype == "excluded":
            out[outer] = 1.5 * rho
            out[inner] = 0.12 * rho
            out[core] = 0.01 * rho
            if link:
                # T cells pile up outside covered arcs and enter a shallow
                # (30 µm) strip of the inner margin only along uncovered arcs
                shallow = d > -30.0
                out[outer & covered] = 2.0 * rho
                out[outer & ~covered] = 1.2 * rho
                out[inner & covered] = 0.0
                out[inner & ~covered & shallow] = 0.45 * rho
                out[inner & ~covered & ~shallow] = 0.05 * rho
        else:
            if link:
                out[inner & covered] = 0.0
                out[outer & covered] = 1.5 * rho
        return out

    return f


_LATTICE_SPACING_UM = 14.0   # tumour nuclei centre spacing (hexagonal, jittered 1.6 µm)
_P_PAIR = 0.35               # fraction of T cells with a touching companion


def _place_cells(tissue, nests, intervals, px, rng, *, cell_density, shield_coverage,
                 immune_phenotype, barrier_excludes_t, t_density, t_layout=None,
                 scattered: int = 0, scatter_rng=None) -> pd.DataFrame:
    """All cells in µm with phenotype, nest, shield plan. Priority order of
    the hard-core thinning: tumour lattice (and ``scattered`` isolated tumour
    cells, drawn from ``scatter_rng``) > barrier lining > T > neutrophil >
    stromal background. The steps draw from ``rng`` in this fixed order.
    ``t_layout`` (see :class:`tibspace.synthetic.world.World`) replaces the
    immune phenotype's T-cell rule."""
    if t_density is None:
        t_density = 10.0 if immune_phenotype == "desert" else 500.0
    if t_layout is None:
        tfn = _t_density_fn(immune_phenotype, t_density, barrier_excludes_t)
    else:
        tfn = t_layout_fn(t_layout, t_density)
    nest_union = shapely.union_all(nests) if nests else Polygon()
    stroma = tissue.difference(nest_union)
    tum = _tumour_lattice(nests, rng)
    bar = _barrier_lining(nests, intervals, rng)
    tcells, tum = _t_cells(stroma, nests, intervals, tum, tfn, t_density, rng,
                           strict=t_layout is not None)
    _plan_shields(tum, shield_coverage, rng)
    neu = _neutrophils(tum, nests, stroma, rng)
    strom = _stromal_background(stroma, nests, cell_density, rng)
    parts = [tum.drop(columns=["sd"], errors="ignore"), bar, tcells, neu, strom]
    if scattered:
        parts.append(scattered_tumour(stroma, nests, scattered, scatter_rng))
    allc = pd.concat(parts, ignore_index=True)
    if scattered:
        allc["scattered"] = allc["scattered"].eq(True)
    allc["shield_type"] = allc["shield_type"].fillna("none") if "shield_type" in allc else "none"
    allc["near_net"] = allc["near_net"].eq(True) if "near_net" in allc else False
    if "orient" not in allc:
        allc["orient"] = np.nan
    return _settle(allc, tissue, rng)


def _settle(allc: pd.DataFrame, tissue, rng) -> pd.DataFrame:
    """Keep cells inside the tissue, draw their morphology and thin overlaps
    in priority order."""
    ins = shapely.contains_xy(tissue, allc.x.to_numpy(), allc.y.to_numpy())
    allc = allc[ins].reset_index(drop=True)
    allc = _morphology(allc, rng)
    allc = allc.sort_values("prio", kind="stable").reset_index(drop=True)
    keep = _hardcore_thin(allc[["x", "y"]].to_numpy(), allc.r_um.to_numpy())
    return allc[keep].reset_index(drop=True)


def _tumour_lattice(nests, rng) -> pd.DataFrame:
    """Tumour nuclei on a jittered hexagonal lattice 4 µm inside each nest."""
    parts = []
    for i, nest in enumerate(nests):
        xy = _hex_lattice(nest.buffer(-4.0), _LATTICE_SPACING_UM, 1.6, rng)
        parts.append(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "phenotype": "tumour",
                                   "prio": 0, "nest": i + 1}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"x": [], "y": [], "phenotype": [], "prio": [], "nest": []})


def _barrier_lining(nests, intervals, rng) -> Optional[pd.DataFrame]:
    """Barrier cells in covered arcs: one per 12.5 µm of arc, alternating
    SPP1_macrophage / CAF, 5–47 µm outside the boundary (skewed inwards)."""
    bar = []
    for nest, ivs in zip(nests, intervals):
        for s0, s1 in ivs:
            n_slots = max(int(round((s1 - s0) / 12.5)), 1)
            step = (s1 - s0) / n_slots
            s = s0 + (np.arange(n_slots) + rng.uniform(0.15, 0.85, n_slots)) * step
            depth = 5.0 + 42.0 * rng.beta(1.3, 2.0, n_slots)
            p, nrm = _boundary_frame(nest, s)
            xy = p + nrm * depth[:, None]
            start = int(rng.integers(0, 2))
            ph = np.where((np.arange(n_slots) + start) % 2 == 0, "SPP1_macrophage", "CAF")
            tang = np.arctan2(nrm[:, 0], -nrm[:, 1])  # tangent direction for CAF orientation
            bar.append(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "phenotype": ph, "prio": 1,
                                     "nest": 0, "orient": tang}))
    return pd.concat(bar, ignore_index=True) if bar else None


def _t_cells(stroma, nests, intervals, tum, tfn, t_density, rng, strict: bool = False):
    """T cells (CD8_T : other_T = 3 : 1): in stroma by thinning a Poisson
    process to ``tfn``, inside nests by converting lattice points. Returns the
    T cells and the remaining tumour cells (with their signed distance ``sd``).
    ``strict`` (the world's T layouts, up to 4ρ): candidates at 4ρ and no
    touching companion where ``tfn`` is 0."""
    lam_max = max((4.0 if strict else 2.0) * t_density, 1e-9)
    cand = _poisson_in(stroma, lam_max, rng)
    sd, which, s, _ = _signed_distance(nests, cand[:, 0], cand[:, 1]) if nests else (
        np.full(len(cand), np.inf), np.zeros(len(cand), int), np.zeros(len(cand)), None)
    covered = _covered_flags(nests, intervals, which, s)
    # T cells often sit in small clusters: a third of them get a touching
    # companion (6–7 µm away), so nuclei touch and segmentation is not trivial.
    keep = rng.uniform(0, lam_max, len(cand)) < tfn(sd, covered) / (1 + _P_PAIR)
    par = cand[keep]
    pair = rng.uniform(size=len(par)) < _P_PAIR
    ang = rng.uniform(0, 2 * np.pi, pair.sum())
    dist = rng.uniform(5.8, 6.8, pair.sum())
    comp = par[pair] + np.c_[np.cos(ang), np.sin(ang)] * dist[:, None]
    comp = comp[shapely.contains_xy(stroma, comp[:, 0], comp[:, 1])]
    if strict and nests and len(comp):
        sd_c, which_c, s_c, _ = _signed_distance(nests, comp[:, 0], comp[:, 1])
        comp = comp[tfn(sd_c, _covered_flags(nests, intervals, which_c, s_c)) > 0]
    par = np.vstack([par, comp])
    tcells = pd.DataFrame({"x": par[:, 0], "y": par[:, 1], "prio": 2, "nest": 0})
    if len(tum):
        lattice_density = 2 / (math.sqrt(3) * _LATTICE_SPACING_UM ** 2) * 1e6
        sd_t, which_t, s_t, _ = _signed_distance(nests, tum.x.to_numpy(), tum.y.to_numpy())
        cov_t = _covered_flags(nests, intervals, which_t, s_t)
        conv = rng.uniform(size=len(tum)) < tfn(sd_t, cov_t) / lattice_density
        tum["sd"] = sd_t
        tin = tum[conv].copy()
        tum = tum[~conv].copy()
        tcells = pd.concat([tcells, tin[["x", "y", "nest"]].assign(prio=2)], ignore_index=True)
    tcells["phenotype"] = np.where(rng.uniform(size=len(tcells)) < 0.75, "CD8_T", "other_T")
    return tcells, tum


def _plan_shields(tum: pd.DataFrame, shield_coverage: float, rng) -> None:
    """Set ``tum.shield_type`` (in place): patches from a smooth random field
    plus a preference for the 14 µm next to the boundary; type by a second field."""
    tum["shield_type"] = "none"
    if not len(tum) or shield_coverage <= 0:
        return
    f1 = _smooth_field(tum.x.to_numpy(), tum.y.to_numpy(), 35.0, rng)
    f2 = _smooth_field(tum.x.to_numpy(), tum.y.to_numpy(), 35.0, rng)
    score = f1 + 1.0 * (tum.sd.to_numpy() > -14.0)
    n_sh = int(round(shield_coverage * len(tum)))
    order = np.argsort(-score, kind="stable")
    sel = np.zeros(len(tum), bool)
    sel[order[:n_sh]] = True
    typ = np.where(f2 > 0.35, "net", np.where(f2 < -0.35, "col1", "both"))
    tum.loc[sel, "shield_type"] = typ[sel]


def _neutrophils(tum, nests, stroma, rng) -> pd.DataFrame:
    """Neutrophils 7–20 µm outside NET-shielded boundary tumour cells, plus a
    stromal background of 30 cells/mm²."""
    neu = []
    if len(tum):
        nb = tum[(tum.shield_type.isin(["net", "both"])) & (tum.sd > -14.0)]
        pick = nb[rng.uniform(size=len(nb)) < 0.35]
        if len(pick):
            _, which_p, s_p, _ = _signed_distance(nests, pick.x.to_numpy(), pick.y.to_numpy())
            for i, nest in enumerate(nests):
                sel = which_p == i
                if not sel.any():
                    continue
                p, nrm = _boundary_frame(nest, s_p[sel])
                depth = rng.uniform(7.0, 20.0, sel.sum())
                xy = p + nrm * depth[:, None]
                neu.append(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "near_net": True}))
    bg = _poisson_in(stroma, 30.0, rng)
    neu.append(pd.DataFrame({"x": bg[:, 0], "y": bg[:, 1], "near_net": False}))
    return pd.concat(neu, ignore_index=True).assign(phenotype="neutrophil", prio=3, nest=0)


def _stromal_background(stroma, nests, cell_density, rng) -> pd.DataFrame:
    """``other`` cells at ``cell_density``·1.12 (before thinning) and sparse
    CAFs and SPP1 macrophages (60 /mm² each, a third of that in barrier bands)."""
    oth = _poisson_in(stroma, cell_density * 1.12, rng)
    caf = _poisson_in(stroma, 60.0, rng)
    mac = _poisson_in(stroma, 60.0, rng)
    if nests:
        # the 0–50 µm band off the planted arcs keeps only ~40 barrier cells/mm²
        caf, mac = (xy[(_signed_distance(nests, xy[:, 0], xy[:, 1])[0] > BARRIER_WIDTH_UM)
                       | (rng.uniform(size=len(xy)) < 1 / 3)] for xy in (caf, mac))
    return pd.concat([
        pd.DataFrame({"x": caf[:, 0], "y": caf[:, 1], "phenotype": "CAF"}),
        pd.DataFrame({"x": mac[:, 0], "y": mac[:, 1], "phenotype": "SPP1_macrophage"}),
        pd.DataFrame({"x": oth[:, 0], "y": oth[:, 1], "phenotype": "other"}),
    ], ignore_index=True).assign(prio=4, nest=0)


def _block_contacts(cells: pd.DataFrame, p_block: float, rng) -> pd.DataFrame:
    """Remove each T cell touching a planned-shielded tumour cell with probability ``p_block``."""
    from scipy.spatial import cKDTree

    sh = (cells["phenotype"] == "tumour").to_numpy() & (cells["shield_type"] != "none").to_numpy()
    is_t = cells["phenotype"].isin(["CD8_T", "other_T"]).to_numpy()
    u = rng.uniform(size=len(cells))  # one draw per cell: independent of which cells are T
    if not sh.any() or not is_t.any():
        return cells
    xy = cells[["x", "y"]].to_numpy()
    d, _ = cKDTree(xy[sh]).query(xy[is_t], distance_upper_bound=SHIELD_BLOCK_REACH_UM)
    drop = np.zeros(len(cells), bool)
    drop[np.flatnonzero(is_t)[np.isfinite(d)]] = True
    drop &= u < p_block
    return cells[~drop].reset_index(drop=True)


def _poisson_in(poly, density_per_mm2: float, rng) -> np.ndarray:
    """Homogeneous Poisson points (µm) in a polygon."""
    minx, miny, maxx, maxy = poly.bounds
    n = rng.poisson(density_per_mm2 * (maxx - minx) * (maxy - miny) / 1e6)
    x = rng.uniform(minx, maxx, n)
    y = rng.uniform(miny, maxy, n)
    keep = shapely.contains_xy(poly, x, y)
    return np.c_[x[keep], y[keep]]


def _hex_lattice(poly, spacing: float, jitter: float, rng) -> np.ndarray:
    minx, miny, maxx, maxy = poly.bounds
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    R = 0.5 * math.hypot(maxx - minx, maxy - miny) + spacing
    n = int(R / spacing) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    x = (i + 0.5 * (j % 2)) * spacing
    y = j * spacing * math.sqrt(3) / 2
    ang = rng.uniform(0, np.pi)
    ca, sa = math.cos(ang), math.sin(ang)
    px_ = cx + ca * x.ravel() - sa * y.ravel() + rng.uniform(0, spacing)
    py_ = cy + sa * x.ravel() + ca * y.ravel() + rng.uniform(0, spacing)
    px_ += rng.normal(0, jitter, px_.shape)
    py_ += rng.normal(0, jitter, py_.shape)
    keep = shapely.contains_xy(poly, px_, py_)
    return np.c_[px_[keep], py_[keep]]


def _hardcore_thin(xy: np.ndarray, radius: np.ndarray, factor: float = 0.88) -> np.ndarray:
    """Keep-mask: drop a point when a point earlier in the array (higher
    priority) lies closer than factor·(r_i + r_j)."""
    if len(xy) < 2:
        return np.ones(len(xy), bool)
    tree = cKDTree(xy)
    pairs = tree.query_pairs(factor * 2 * radius.max(), output_type="ndarray")
    if len(pairs) == 0:
        return np.ones(len(xy), bool)
    i, j = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(xy[i] - xy[j], axis=1)
    bad = d < factor * (radius[i] + radius[j])
    i, j = i[bad], j[bad]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keep = np.ones(len(xy), bool)
    # greedy in priority order: drop hi unless lo was itself dropped earlier
    order = np.lexsort((hi, lo))
    for a, b in zip(lo[order], hi[order]):
        if keep[a]:
            keep[b] = False
    return keep


def _smooth_field(x, y, scale_um, rng, n_waves: int = 24):
    """Smooth zero-mean unit-variance random field (random Fourier features)."""
    k = rng.normal(0, 1.0 / scale_um, (n_waves, 2))
    ph = rng.uniform(0, 2 * np.pi, n_waves)
    v = np.cos(np.outer(x, k[:, 0]) + np.outer(y, k[:, 1]) + ph).sum(1)
    return v * math.sqrt(2.0 / n_waves)


def _morphology(cells: pd.DataFrame, rng) -> pd.DataFrame:
    n = len(cells)
    d = np.empty(n)
    aspect = np.empty(n)
    irr = np.empty(n)
    lobes = np.empty(n)
    exp = np.empty(n)
    for ph, m in _MORPH.items():
        sel = (cells.phenotype == ph).to_numpy()
        k = int(sel.sum())
        if not k:
            continue
        d[sel] = np.clip(rng.normal(m["d"][0], m["d"][1], k), m["d"][0] * 0.8, m["d"][0] * 1.2)
        aspect[sel] = rng.uniform(*m["aspect"], k)
        irr[sel] = m["irr"]
        lobes[sel] = m["lobes"]
        exp[sel] = m["exp"]
    orient = cells["orient"].to_numpy(float)
    orient = np.where(np.isnan(orient), rng.uniform(0, np.pi, n), orient)
    cells = cells.assign(d_um=d, aspect=aspect, irr=irr, lobes=lobes, exp_um=exp, orient=orient,
                         r_um=d / 2)
    return cells
