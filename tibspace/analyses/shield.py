"""NET / collagen-I shields around tumour cells: coverage, T-cell contact, antagonism.

Neutrophil extracellular traps (NETs: citrullinated histone H3, CitH3, on
MPO-decorated DNA) and collagen-I (COL1) deposits can wrap tumour cells and
keep cytotoxic T cells from touching them. :func:`shield_analysis` measures,
in µm, from boolean pixel masks (:func:`~tibspace.analyses.shield_masks.shield_masks`):

- per tumour cell, the fraction of a thin ring just outside the outline
  covered by NET ∪ COL1 (and each mask alone); cells at or above
  ``shield_min_coverage`` are *shielded*
  (:mod:`tibspace.analyses.shield_rings`);
- per nest, the shielded fraction of cells and of boundary length;
- T-cell contact rates of shielded vs unshielded tumour cells (Fisher's
  exact test), overall and at the nest edge;
- neutrophil/NET vs T-cell antagonism (tile Spearman correlation and
  cross-pair-correlation under random labelling).

Definitions follow ``docs/metrics.md`` ("NET / collagen-I shields"); every
choice that metrics.md leaves open is stated here or in the docstrings below.

Contact (metrics.md): with labels, a T cell touches a tumour cell when their
labels are 8-adjacent (without labels: centroids within ``contact_um``); the
rate is the fraction of tumour cells touched by ≥ 1 T cell, compared shielded
vs unshielded with Fisher's exact test (two-sided; ``contact_rate_ratio`` =
shielded / unshielded rate, < 1 means shields keep T cells off). Shielded
cells sit preferentially at the nest edge, where T cells are, so the raw
comparison is confounded by position: ``sample["contact_edge"]`` repeats it
for tumour cells within ``edge_um`` of the boundary only (an addition to
metrics.md; read this one).

Antagonism: tiles with ≥ 50 % tissue; neutrophil + NET area fraction =
(NET pixels ∪ neutrophil pixels) / tile tissue area (without labels: NET area
+ Σ neutrophil ``area_um2``, or π·5² µm² per neutrophil when that column is
missing); Spearman ρ with the T density (cells/mm²); negative ρ =
antagonism. The cross-pcf of neutrophils → T cells uses random labelling
among neutrophils and T cells (pcf below the envelope = the two avoid each
other).
Requirements: tumour and effector T phenotypes; use :func:`can_run_shield`
first (``shield_analysis`` raises :class:`~tibspace.errors.InputError` for
missing roles or inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.jsonable import to_jsonable as _json
from tibspace.cells import phenotype_names as _phenotype_names
from tibspace.analyses.shield_masks import shield_masks, otsu_gate_log1p
from tibspace.analyses.shield_rings import shield_ring_coverage, nest_shield_fraction

__all__ = ["ShieldResult", "shield_masks", "otsu_gate_log1p", "shield_ring_coverage", "shield_analysis",
           "nest_shield_fraction", "contact_pairs_from_labels", "can_run_shield"]



# ---------------------------------------------------------------------------
# Contacts
def contact_pairs_from_labels(cell_labels: np.ndarray) -> np.ndarray:
    """Unique pairs of touching labels (8-connectivity), shape (n, 2), a < b.

    Examples
    --------
    >>> lab = np.array([[1, 1, 0, 3], [1, 2, 0, 3], [0, 0, 0, 0]])
    >>> contact_pairs_from_labels(lab).tolist()
    [[1, 2]]
    """
    lab = np.asarray(cell_labels)
    pairs = []
    for a, b in ((lab[:, :-1], lab[:, 1:]), (lab[:-1, :], lab[1:, :]),
                 (lab[:-1, :-1], lab[1:, 1:]), (lab[:-1, 1:], lab[1:, :-1])):
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            pa, pb = a[sel].astype(np.int64), b[sel].astype(np.int64)
            pairs.append(np.c_[np.minimum(pa, pb), np.maximum(pa, pb)])
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.vstack(pairs), axis=0)


def _contact_counts(cells: pd.DataFrame, tumour_ids: np.ndarray, t_mask: np.ndarray, labels, contact_um: float):
    """Number of T cells touching each tumour cell (labels) or within contact_um (centroids)."""
    if labels is not None:
        pairs = contact_pairs_from_labels(labels)
        ids = cells["cell_id"].to_numpy(np.int64)
        size = int(max(ids.max() if ids.size else 0, pairs.max() if pairs.size else 0)) + 1
        is_t = np.zeros(size, bool)
        is_t[ids[t_mask]] = True
        cnt = np.zeros(size, np.int64)
        if pairs.size:
            a, b = pairs[:, 0], pairs[:, 1]
            np.add.at(cnt, a[is_t[b]], 1)
            np.add.at(cnt, b[is_t[a]], 1)
        return cnt[np.clip(tumour_ids, 0, size - 1)], "labels adjacent (8-connectivity)"
    from scipy.spatial import cKDTree

    xy = cells[["x_um", "y_um"]].to_numpy(float)
    t_xy = xy[t_mask]
    pos = pd.Index(cells["cell_id"].to_numpy()).get_indexer(tumour_ids)
    if len(t_xy) == 0 or len(pos) == 0:
        return np.zeros(len(tumour_ids), np.int64), f"centroids within {contact_um:g} µm"
    tree = cKDTree(t_xy)
    cnt = tree.query_ball_point(xy[pos], r=contact_um, return_length=True)
    return np.asarray(cnt, np.int64), f"centroids within {contact_um:g} µm"


def _fisher(sh_c: int, sh_n: int, un_c: int, un_n: int) -> dict:
    from scipy.stats import fisher_exact

    n_sh, n_un = sh_c + sh_n, un_c + un_n
    r_sh = sh_c / n_sh if n_sh else float("nan")
    r_un = un_c / n_un if n_un else float("nan")
    if n_sh and n_un:
        odds, p = fisher_exact([[sh_c, sh_n], [un_c, un_n]], alternative="two-sided")
    else:
        odds, p = float("nan"), float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = r_sh / r_un if (n_sh and n_un and r_un > 0) else float("nan")
    return {"n_shielded": int(n_sh), "n_unshielded": int(n_un), "shielded_in_contact": int(sh_c),
            "unshielded_in_contact": int(un_c), "contact_rate_shielded": r_sh, "contact_rate_unshielded": r_un,
            "contact_rate_ratio": ratio, "odds_ratio": float(odds), "fisher_p_two_sided": float(p)}


# ---------------------------------------------------------------------------
# Antagonism
def _tile_sums(mask: np.ndarray, pixel_size_um: float, x0: float, y0: float, tile_um: float, ny_t: int, nx_t: int):
    """Area (µm²) of ``mask`` in each tile of a grid (tile index by pixel centre)."""
    ny, nx = mask.shape
    ty = np.floor((np.arange(ny) * pixel_size_um - y0) / tile_um).astype(np.int64)
    tx = np.floor((np.arange(nx) * pixel_size_um - x0) / tile_um).astype(np.int64)
    out = np.zeros((ny_t, nx_t))
    ry = (ty >= 0) & (ty < ny_t)
    rx = (tx >= 0) & (tx < nx_t)
    if not ry.any() or not rx.any():
        return out
    sub = mask[np.ix_(ry, rx)]
    ty, tx = ty[ry], tx[rx]
    # rows: reduce consecutive runs of equal tile index, then columns
    ystarts = np.flatnonzero(np.r_[True, np.diff(ty) != 0])
    xstarts = np.flatnonzero(np.r_[True, np.diff(tx) != 0])
    s = np.add.reduceat(np.add.reduceat(sub.astype(np.int64), ystarts, axis=0), xstarts, axis=1)
    out[np.ix_(ty[ystarts], tx[xstarts])] = s * pixel_size_um ** 2
    return out


def _relabel(cells: pd.DataFrame, a_types, b_types) -> pd.DataFrame:
    ph = cells["phenotype"].astype(str).to_numpy()
    lab = np.where(np.isin(ph, a_types), "__a__", np.where(np.isin(ph, b_types), "__b__", "__other__"))
    return pd.DataFrame({"x_um": cells["x_um"].to_numpy(float), "y_um": cells["y_um"].to_numpy(float),
                         "phenotype": lab})


# ---------------------------------------------------------------------------
@dataclass
class ShieldResult:
    """Result of :func:`shield_analysis`."""

    per_cell: pd.DataFrame          # tumour cells: cell_id, ring_px, shield_coverage_net/_col1, shield_coverage,
                                    # shielded, n_t_contacts, t_contact
    per_nest: pd.DataFrame          # nest_id, n_tumour, shielded_fraction, mean coverage, boundary_shield_fraction
    sample: dict                    # fractions, contact test, antagonism, notes
    tiles: pd.DataFrame = field(default_factory=pd.DataFrame)         # antagonism tiles
    cross_pcf: pd.DataFrame = field(default_factory=pd.DataFrame)     # neutrophil -> T cross-pcf envelope
    parameters: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe summary for metrics.json (per-cell values left to the cell table)."""
        return _json({"sample": self.sample, "per_nest": self.per_nest, "cross_pcf": self.cross_pcf,
                      "parameters": self.parameters})


def can_run_shield(panel_or_phenotypes: Any, *, tumour_types: Sequence[str] = ("tumour",),
                   t_types: Sequence[str] = ("CD8_T",), masks: Mapping[str, Any] | None = None
                   ) -> tuple[bool, str]:
    """Whether the shield analysis can run (tumour and T phenotypes; masks if given).

    ``masks``: the panel's mask specs (or computed masks); None skips that check.

    Examples
    --------
    >>> can_run_shield(["tumour", "CD8_T"])
    (True, '')
    >>> can_run_shield(["tumour", "CD8_T"], masks={})[0]
    False
    """
    have = _phenotype_names(panel_or_phenotypes)
    for role, types in (("tumour", tumour_types), ("effector_t", t_types)):
        if not set(map(str, types)) & have:
            return False, (f"no phenotype for role {role} ({', '.join(map(str, types)) or 'none given'}) "
                           "is defined in the panel")
    if masks is not None and not ({"net", "col1"} & set(masks)):
        return False, ("the panel has no [masks] net / col1 entry (e.g. net = { channels = [\"CitH3\"], "
                       "require = [\"MPO\"], gate = \"otsu\" })")
    return True, ""


def shield_analysis(cells: pd.DataFrame, cell_labels: np.ndarray | None, masks: Mapping[str, np.ndarray] | None,
                    pixel_size_um: float, region, *, tumour_types=("tumour",), t_types=("CD8_T",),
                    neutrophil_types=("neutrophil",), shield_ring_um: float = 3.0, shield_min_coverage: float = 0.5,
                    nest_strip_um: float = 5.0, contact_um: float = 12.0, antagonism_tile_um: float = 50.0,
                    antagonism_radii_um=(20.0, 30.0, 40.0, 50.0), n_sim: int = 199, seed: int = 0,
                    tissue=None, edge_um: float = 20.0, progress=None) -> ShieldResult:
    """NET / collagen-I shields around tumour cells, T-cell contact and NET–T antagonism.

    Steps: ring coverage, contact test, per-nest table, antagonism tiles,
    cross-pcf; contact, edge-only contact and antagonism as in the module docstring.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``cell_id`` (== label value), ``x_um``, ``y_um``, ``phenotype`` (``area_um2``: neutrophil area without labels).
    cell_labels : int ndarray (Y, X) or None
        Whole-cell labels. None (table-only run): no ring coverage nor shielded/unshielded comparison
        (said in ``sample["notes"]``); contact by centroid distance.
    masks : dict or None
        ``"net"`` and/or ``"col1"`` boolean pixel masks (Y, X).
    pixel_size_um : float
    region : TumourRegion
        Tumour nests (µm): per-nest numbers and boundary strips.
    tumour_types, t_types, neutrophil_types : tuple of str
    shield_ring_um, shield_min_coverage, nest_strip_um, contact_um, edge_um : float
        Ring width outside each tumour cell (µm); ring coverage from which a cell is shielded (also the strip rule
        of :func:`nest_shield_fraction`); outer boundary strip (µm, from the tumour-cell outline with labels);
        centroid contact distance without labels (µm); depth of the nest edge for the edge-only contact test (µm).
    antagonism_tile_um, antagonism_radii_um : float, sequence of float
        Tile side of the antagonism grid; radii of the neutrophil → T cross-pcf (µm).
    n_sim, seed : int
        Random-labelling simulations and seed.
    tissue : shapely geometry, optional
        Window of the tile grid and the pcf; default :func:`tibspace.tissue.tissue_region_from_cells`.
    progress : callable, optional

    Returns
    -------
    ShieldResult
        ``per_cell`` (tumour cells: ``cell_id, ring_px, shield_coverage_net, shield_coverage_col1,
        shield_coverage, shielded, n_t_contacts, t_contact``), ``per_nest``, ``sample``, ``tiles``, ...

    Examples
    --------
    >>> import shapely
    >>> from tibspace.tissue import TumourRegion
    >>> lab = np.zeros((60, 60), np.int32); lab[10:20, 10:20] = 1; lab[10:20, 20:26] = 2
    >>> net = np.zeros((60, 60), bool); net[5:25, 0:10] = True
    >>> cells = pd.DataFrame({"cell_id": [1, 2], "x_um": [14.5, 22.5], "y_um": [14.5, 14.5],
    ...                       "phenotype": ["tumour", "CD8_T"]})
    >>> res = shield_analysis(cells, lab, {"net": net}, 1.0, TumourRegion.from_polygons([shapely.box(8, 8, 22, 22)]),
    ...                       n_sim=9, tissue=shapely.box(0, 0, 60, 60))
    >>> res.per_cell[["cell_id", "t_contact"]].values.tolist()
    [[1, True]]
    """
    cells, labels, masks, shape = _check_inputs(cells, cell_labels, masks, pixel_size_um, tumour_types, t_types)
    params = _parameters(tumour_types, t_types, neutrophil_types, shield_ring_um, shield_min_coverage, nest_strip_um,
                         contact_um, antagonism_tile_um, antagonism_radii_um, n_sim, edge_um, seed, pixel_size_um)
    notes: list[str] = []
    report(progress, "shield", 0, 5)
    roles = _roles(cells, masks, shape, params, notes)
    cov, contact, per_nest, strip, contact_edge, ring_available = _cell_steps(cells, labels, roles, region, params,
                                                                              notes, progress)
    tissue = _tissue_or_default(tissue, cells, notes)
    tiles, pcf, antagonism = _antagonism_steps(cells, roles, labels, tissue, params, notes, progress)
    sample = _sample_summary(cov, roles.tum_ids, ring_available, roles.net, roles.col, strip, masks, contact,
                             contact_edge)
    report(progress, "shield", 5, 5)
    return ShieldResult(per_cell=cov, per_nest=per_nest, sample={**sample, "antagonism": antagonism, "notes": notes},
                        tiles=tiles, cross_pcf=pcf, parameters=params)


@dataclass(frozen=True)
class _Roles:
    """Masks and cell roles that the steps of :func:`shield_analysis` share."""

    net: np.ndarray | None          # NET mask (Y, X) bool, or None
    col: np.ndarray | None          # collagen-I mask, or None
    union: np.ndarray | None        # NET ∪ COL1, None when neither is given
    tum_ids: np.ndarray             # cell_id of the tumour cells (int64)
    is_t: np.ndarray                # per row of ``cells``: effector T cell
    is_neu: np.ndarray              # per row of ``cells``: neutrophil


def _roles(cells, masks: dict, shape, params: dict, notes: list[str]) -> _Roles:
    """The NET / COL1 masks and their union; tumour ids, T and neutrophil rows of ``cells``."""
    net, col = masks.get("net"), masks.get("col1")
    union = _mask_union(net, col, shape, notes)
    ph = cells["phenotype"].astype(str).to_numpy()
    tum_ids = cells["cell_id"].to_numpy(np.int64)[np.isin(ph, params["tumour_types"])]
    return _Roles(net=net, col=col, union=union, tum_ids=tum_ids, is_t=np.isin(ph, params["t_types"]),
                  is_neu=np.isin(ph, params["neutrophil_types"]))


def _antagonism_steps(cells, roles: _Roles, labels, tissue, params: dict, notes, progress):
    """Antagonism tiles, neutrophil → T cross-pcf and their summary (steps 4–5 of :func:`shield_analysis`)."""
    tiles, rho, p_rho, area_method = _antagonism_tiles(cells, roles.is_t, roles.is_neu, labels, roles.net,
                                                       params["pixel_size_um"], tissue,
                                                       float(params["antagonism_tile_um"]), notes)
    report(progress, "shield", 4, 5)
    pcf = _cross_pcf(cells, params["neutrophil_types"], params["t_types"], params["antagonism_radii_um"], tissue,
                     params["n_sim"], params["seed"], notes)
    return tiles, pcf, _antagonism_summary(tiles, params["antagonism_tile_um"], area_method, rho, p_rho, pcf)


def _cell_steps(cells, labels, roles: _Roles, region, params: dict, notes, progress):
    """Ring coverage, contact test and per-nest table (steps 1–3 of :func:`shield_analysis`)."""
    px, min_cov = params["pixel_size_um"], params["shield_min_coverage"]
    net, col, union, tum_ids = roles.net, roles.col, roles.union, roles.tum_ids
    cov, ring_available = _ring_step(labels, union, tum_ids, net, col, px, params["shield_ring_um"], min_cov, notes)
    report(progress, "shield", 1, 5)
    contact = _contact_step(cells, cov, tum_ids, roles.is_t, labels, params["contact_um"], ring_available)
    report(progress, "shield", 2, 5)
    per_nest, strip, contact_edge = _nest_step(cells, cov, tum_ids, labels, union, region, px,
                                               params["nest_strip_um"], min_cov, params["edge_um"], ring_available)
    report(progress, "shield", 3, 5)
    return cov, contact, per_nest, strip, contact_edge, ring_available


def _parameters(tumour_types, t_types, neutrophil_types, ring_um, min_coverage, strip_um, contact_um, tile_um,
                radii_um, n_sim, edge_um, seed, pixel_size_um) -> dict:
    """``ShieldResult.parameters`` (JSON-safe; phenotype names as lists of str)."""
    return {"tumour_types": [str(t) for t in tumour_types], "t_types": [str(t) for t in t_types],
            "neutrophil_types": [str(t) for t in neutrophil_types],
            "shield_ring_um": float(ring_um), "shield_min_coverage": float(min_coverage),
            "nest_strip_um": float(strip_um), "contact_um": float(contact_um),
            "antagonism_tile_um": float(tile_um),
            "antagonism_radii_um": [float(r) for r in radii_um], "n_sim": int(n_sim),
            "edge_um": float(edge_um),
            "seed": int(seed), "pixel_size_um": float(pixel_size_um)}


# ---------------------------------------------------------------------------
# Steps of shield_analysis
def _check_inputs(cells, cell_labels, masks, pixel_size_um, tumour_types, t_types):
    """Validate the inputs; masks as bool arrays of one shape (None when there are none)."""
    if not isinstance(cells, pd.DataFrame):
        raise InputError(f"cells must be a pandas DataFrame (got {type(cells).__name__})")
    miss = [c for c in ("cell_id", "x_um", "y_um", "phenotype") if c not in cells.columns]
    if miss:
        raise InputError(f"cell table lacks column(s) {miss}; expected cell_id, x_um, y_um, phenotype")
    if not pixel_size_um or pixel_size_um <= 0:
        raise InputError(f"pixel_size_um={pixel_size_um}: expected a positive pixel size in µm")
    if not list(tumour_types) or not list(t_types):
        raise InputError("tumour_types and t_types must each list at least one phenotype")
    masks = dict(masks or {})
    labels = None if cell_labels is None else np.asarray(cell_labels)
    shape = None
    for name, m in masks.items():
        m = np.asarray(m, bool)
        masks[name] = m
        if shape is not None and m.shape != shape:
            raise InputError(f"mask {name!r} has shape {m.shape}; expected {shape} like the other masks")
        shape = m.shape
    if labels is not None and shape is not None and labels.shape != shape:
        raise InputError(f"cell_labels has shape {labels.shape} but the masks have {shape}; "
                         "they must come from the same image")
    return cells, labels, masks, shape


def _tissue_or_default(tissue, cells, notes: list[str]):
    """The tissue region for the antagonism grid: given, else derived from the cell positions."""
    if tissue is not None:
        return tissue
    from tibspace import tissue as geo

    notes.append("tissue region for antagonism tiles derived from the cell positions")
    return geo.tissue_region_from_cells(cells["x_um"].to_numpy(float), cells["y_um"].to_numpy(float))


def _antagonism_summary(tiles, tile_um, area_method, rho, p_rho, pcf) -> dict:
    """``sample["antagonism"]``: tile Spearman and the neutrophil → T cross-pcf envelope."""
    have = len(pcf) > 0
    return {
        "n_tiles": int(len(tiles)), "tile_um": float(tile_um), "area_fraction": area_method,
        "spearman_rho": float(rho), "spearman_p": float(p_rho),
        "cross_pcf_r_um": pcf["r_um"].tolist() if have else [],
        "cross_pcf": pcf["value"].tolist() if have else [],
        "cross_pcf_lo": pcf["lo"].tolist() if have else [],
        "cross_pcf_hi": pcf["hi"].tolist() if have else [],
        "cross_pcf_p_value": pcf["p_value"].tolist() if have else [],
        "cross_pcf_p_global": float(pcf["p_global"].iat[0]) if have else float("nan"),
        "interpretation": "negative rho / pcf below the envelope = neutrophils+NETs and T cells avoid each other",
    }


def _mask_union(net, col, shape, notes: list[str]):
    """NET ∪ COL1 (None when neither mask is given); notes which mask is missing."""
    union = None
    if net is not None or col is not None:
        union = np.zeros(shape, bool)
        for m in (net, col):
            if m is not None:
                union |= m
    if net is None:
        notes.append("no NET mask: NET coverage unavailable")
    if col is None:
        notes.append("no collagen-I mask: COL1 coverage unavailable")
    return union


def _ring_step(labels, union, tum_ids, net, col, pixel_size_um, ring_um, min_coverage, notes):
    """Per tumour cell ring coverage and the shielded call; (table, available)."""
    if labels is not None and union is not None:
        cov = shield_ring_coverage(labels, tum_ids, net, col, pixel_size_um, ring_um=ring_um)
        if net is None:
            cov["shield_coverage_net"] = np.nan
        if col is None:
            cov["shield_coverage_col1"] = np.nan
        cov["shielded"] = (cov["shield_coverage"] >= min_coverage).to_numpy()
        return cov, True
    cov = pd.DataFrame({"cell_id": tum_ids, "ring_px": np.zeros(len(tum_ids), np.int64),
                        "shield_coverage_net": np.nan, "shield_coverage_col1": np.nan,
                        "shield_coverage": np.nan, "shielded": False})
    notes.append("per-cell shield coverage unavailable: needs the cell label image and NET/COL1 masks"
                 if labels is None else "per-cell shield coverage unavailable: no NET/COL1 mask")
    return cov, False


def _contact_step(cells, cov, tum_ids, is_t, labels, contact_um, ring_available) -> dict:
    """T-cell contacts per tumour cell (added to ``cov``) and the shielded vs unshielded test."""
    cnt, contact_method = _contact_counts(cells, tum_ids, is_t, labels, float(contact_um))
    cov["n_t_contacts"] = cnt
    cov["t_contact"] = cnt > 0
    sh = cov["shielded"].to_numpy(bool)
    tc = cov["t_contact"].to_numpy(bool)
    measurable = cov["shield_coverage"].notna().to_numpy()
    if ring_available:
        contact = _fisher(int((sh & tc & measurable).sum()), int((sh & ~tc & measurable).sum()),
                          int((~sh & tc & measurable).sum()), int((~sh & ~tc & measurable).sum()))
    else:
        contact = _fisher(0, 0, int(tc.sum()), int((~tc).sum()))
        contact.update({"contact_rate_shielded": float("nan"), "n_shielded": 0,
                        "note": "shielded vs unshielded comparison unavailable without ring coverage"})
    contact["contact_rate_all"] = float(tc.mean()) if tc.size else float("nan")
    contact["method"] = contact_method
    return contact


def _nest_step(cells, cov, tum_ids, labels, union, region, pixel_size_um, strip_um, min_coverage, edge_um,
               ring_available):
    """Per-nest table, boundary strips and the edge-only contact test.

    nest_id stays out of per_cell: the pipeline merges per_cell into the cell
    table, whose nest_id column (nearest nest of EVERY cell) must not be
    overwritten.
    """
    from tibspace import tissue as geo

    sh = cov["shielded"].to_numpy(bool)
    tc = cov["t_contact"].to_numpy(bool)
    measurable = cov["shield_coverage"].notna().to_numpy()
    n_nests = int(getattr(region, "n_nests", len(getattr(region, "nests", []))))
    pos = pd.Index(cells["cell_id"].to_numpy()).get_indexer(tum_ids)
    tx, ty = cells["x_um"].to_numpy(float)[pos], cells["y_um"].to_numpy(float)[pos]
    nid = (np.asarray(geo.nearest_nest_id(tx, ty, region), np.int64) if n_nests and len(tum_ids)
           else np.zeros(len(tum_ids), np.int64))
    if union is not None and n_nests:
        tmask = None
        if labels is not None:
            lut = np.zeros(int(max(labels.max(), tum_ids.max() if tum_ids.size else 0)) + 1, bool)
            lut[tum_ids[tum_ids > 0]] = True
            tmask = lut[labels]
        strip = nest_shield_fraction(region, union, pixel_size_um, strip_um=strip_um,
                                     min_coverage=min_coverage, tumour_mask=tmask)
    else:
        strip = pd.DataFrame({"nest_id": np.arange(1, n_nests + 1), "boundary_shield_fraction": np.nan})
    cvals = cov["shield_coverage"].to_numpy()
    rows = []
    for k in range(1, n_nests + 1):
        m = (nid == k) & measurable
        rows.append({"nest_id": k, "n_tumour": int((nid == k).sum()),
                     "shielded_fraction": float(sh[m].mean()) if m.any() else float("nan"),
                     "mean_shield_coverage": float(cvals[m].mean()) if m.any() else float("nan"),
                     "t_contact_rate": float(tc[nid == k].mean()) if (nid == k).any() else float("nan")})
    per_nest = pd.DataFrame(rows, columns=["nest_id", "n_tumour", "shielded_fraction", "mean_shield_coverage",
                                           "t_contact_rate"])
    per_nest = per_nest.merge(strip, on="nest_id", how="left") if n_nests else per_nest
    contact_edge = {"edge_um": float(edge_um), "note": "needs ring coverage and a tumour region"}
    if ring_available and n_nests and len(tum_ids):
        d_t = np.asarray(geo.signed_distance_um(tx, ty, region), float)
        e = measurable & (d_t > -float(edge_um))
        contact_edge = _fisher(int((sh & tc & e).sum()), int((sh & ~tc & e).sum()),
                               int((~sh & tc & e).sum()), int((~sh & ~tc & e).sum()))
        contact_edge["edge_um"] = float(edge_um)
    return per_nest, strip, contact_edge


def _antagonism_tiles(cells, is_t, is_neu, labels, net, pixel_size_um, tissue, tile, notes):
    """Tile grid: neutrophil + NET area fraction vs T density and their Spearman ρ."""
    import shapely
    from scipy.stats import spearmanr

    minx, miny, maxx, maxy = tissue.bounds
    x0, y0 = math.floor(minx / tile) * tile, math.floor(miny / tile) * tile
    nx_t = max(1, int(math.ceil((maxx - x0) / tile)))
    ny_t = max(1, int(math.ceil((maxy - y0) / tile)))
    gx, gy = np.meshgrid(x0 + np.arange(nx_t) * tile, y0 + np.arange(ny_t) * tile)
    boxes = shapely.box(gx.ravel(), gy.ravel(), gx.ravel() + tile, gy.ravel() + tile)
    t_area = shapely.area(shapely.intersection(boxes, tissue)).reshape(ny_t, nx_t)
    x = cells["x_um"].to_numpy(float)
    y = cells["y_um"].to_numpy(float)

    def per_tile_count(sel, weights=None):
        ix = np.floor((x[sel] - x0) / tile).astype(np.int64)
        iy = np.floor((y[sel] - y0) / tile).astype(np.int64)
        ok = (ix >= 0) & (ix < nx_t) & (iy >= 0) & (iy < ny_t)
        w = None if weights is None else weights[ok]
        return np.bincount(iy[ok] * nx_t + ix[ok], weights=w, minlength=nx_t * ny_t).reshape(ny_t, nx_t)

    n_t_tile = per_tile_count(is_t)
    if labels is not None:
        ids = cells["cell_id"].to_numpy(np.int64)
        size = int(max(labels.max(), ids.max() if ids.size else 0)) + 1
        neu_lut = np.zeros(size, bool)
        neu_lut[ids[is_neu]] = True
        neu_px = neu_lut[labels]
        nn_mask = neu_px | net if net is not None else neu_px
        nn_area = _tile_sums(nn_mask, pixel_size_um, x0, y0, tile, ny_t, nx_t)
        area_method = "pixels of NET mask ∪ neutrophil labels"
    else:
        w = (cells["area_um2"].to_numpy(float)[is_neu] if "area_um2" in cells.columns
             else np.full(int(is_neu.sum()), math.pi * 25.0))
        nn_area = per_tile_count(is_neu, w)
        if net is not None:
            nn_area = nn_area + _tile_sums(net, pixel_size_um, x0, y0, tile, ny_t, nx_t)
        area_method = "NET mask pixels + neutrophil cell areas (no labels)"
    keep = t_area >= 0.5 * tile * tile
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(keep, np.minimum(nn_area / t_area, 1.0), np.nan)
        tdens = np.where(keep, n_t_tile / t_area * 1e6, np.nan)
    tiles = pd.DataFrame({"x0_um": gx.ravel(), "y0_um": gy.ravel(), "tissue_area_um2": t_area.ravel(),
                          "neutrophil_net_area_fraction": frac.ravel(), "t_density_per_mm2": tdens.ravel()})
    tiles = tiles[keep.ravel()].reset_index(drop=True)
    if len(tiles) >= 3 and tiles["neutrophil_net_area_fraction"].nunique() > 1 and \
            tiles["t_density_per_mm2"].nunique() > 1:
        rho, p_rho = spearmanr(tiles["neutrophil_net_area_fraction"], tiles["t_density_per_mm2"])
    else:
        rho, p_rho = float("nan"), float("nan")
        notes.append("antagonism Spearman undefined: fewer than 3 tiles or a constant variable")
    return tiles, rho, p_rho, area_method


def _cross_pcf(cells, neutrophil_types, t_types, radii_um, tissue, n_sim, seed, notes) -> pd.DataFrame:
    """Neutrophil → T cross-pcf with a random-labelling envelope (empty when it cannot run)."""
    try:
        from tibspace.stats import random_labelling_envelope

        return random_labelling_envelope(_relabel(cells, neutrophil_types, t_types), "cross_pcf", "__a__",
                                         "__b__", np.asarray(radii_um, float), tissue, n_sim=n_sim, seed=seed,
                                         outside="drop")
    except InputError as exc:
        notes.append(f"neutrophil-T cross-pcf skipped: {exc}")
        return pd.DataFrame()


def _sample_summary(cov, tum_ids, ring_available, net, col, strip, masks, contact, contact_edge) -> dict:
    """Sample-level shield numbers (antagonism and notes are added by the caller)."""
    sh = cov["shielded"].to_numpy(bool)
    meas = cov["shield_coverage"].notna().to_numpy()
    return {
        "n_tumour": int(len(tum_ids)),
        "ring_coverage_available": bool(ring_available),
        "shielded_fraction": float(sh[meas].mean()) if meas.any() else float("nan"),
        "mean_shield_coverage": float(cov["shield_coverage"].to_numpy()[meas].mean()) if meas.any() else float("nan"),
        "mean_shield_coverage_net": float(np.nanmean(cov["shield_coverage_net"])) if meas.any() and net is not None
        else float("nan"),
        "mean_shield_coverage_col1": float(np.nanmean(cov["shield_coverage_col1"])) if meas.any() and col is not None
        else float("nan"),
        "boundary_shield_fraction": (float(strip["shielded_length_um"].sum() / strip["sampled_length_um"].sum())
                                     if "sampled_length_um" in strip and strip["sampled_length_um"].sum() > 0
                                     else float("nan")),
        "mask_area_fraction": {k: float(np.asarray(v).mean()) for k, v in masks.items()},
        "contact": contact,
        "contact_edge": contact_edge,
    }
