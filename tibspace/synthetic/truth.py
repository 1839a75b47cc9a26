"""Ground truth of synthetic tissue: the result container, its files and summaries.

:class:`SyntheticTissue` holds the image, labels, truth table, nests, masks and
the ``planted`` summary; :meth:`SyntheticTissue.write` / :func:`load_truth`
round-trip it through files (GeoJSON in QuPath pixel coordinates, labels as
TIFF, ``planted.json``). Distances and coordinates are µm unless named ``_px``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import LineString, Polygon, mapping, shape as shapely_shape
from shapely.ops import substring

from tibspace.errors import InputError
from tibspace.io.qupath import qupath_px_to_um, um_to_qupath_px
from tibspace.synthetic.layout import _arc_geometry, _covered_flags, _signed_distance
from tibspace.synthetic.spec import BARRIER_WIDTH_UM, CHANNELS, MARGIN_UM, PHENOTYPES, SHIELD_RING_UM
from tibspace.synthetic.stains import (
    _CROSSTALK_NEXT, _CROSSTALK_PREV, _GAIN_DN_PER_PHOTON, _PSF_SIGMA_UM, _READ_NOISE_DN)

@dataclass
class SyntheticTissue:
    """A synthetic multiplex image with its ground truth.

    Attributes
    ----------
    image : numpy.ndarray or None
        ``(C, Y, X)`` uint16 image (None when loaded with ``load_image=False``).
    channel_names : list of str
    pixel_size_um : float
    nuclei, cells : numpy.ndarray
        ``(Y, X)`` int32 labels; a cell's nucleus and whole cell share the id.
    truth : pandas.DataFrame
        One row per cell: ``cell_id, x_um, y_um, phenotype, nest_id`` (0 =
        stroma), ``shielded, shield_coverage`` (tumour cells; NaN for others),
        ``true_signed_dist_um`` (negative inside nests), plus ``area_um2`` and
        ``nucleus_area_um2``. ``x_um, y_um`` are the nucleus centroid (pixel
        (row r, col c) centre = (c·px, r·px)).
    nests : list of shapely.Polygon
        Nest outlines in µm; nest_id = index + 1.
    tissue : shapely.Polygon
        Tissue region in µm.
    net_mask, col1_mask : numpy.ndarray
        Planted NET and collagen-I pixel masks (bool).
    planted : dict
        Parameters, seed and realised structure (per-nest barrier arcs and
        coverage, shield fractions, T-cell densities per compartment).
    panel_toml : str
        Panel file whose rules recover the true phenotypes.
    """

    image: Optional[np.ndarray]
    channel_names: list
    pixel_size_um: float
    nuclei: np.ndarray
    cells: np.ndarray
    truth: pd.DataFrame
    nests: list
    tissue: Any
    net_mask: np.ndarray
    col1_mask: np.ndarray
    planted: dict
    panel_toml: str = ""

    def barrier_arcs(self) -> list:
        """Planted barrier-covered arcs per nest (list of shapely LineStrings in
        µm, one list per nest in nest order).

        Examples
        --------
        >>> from tibspace.synthetic import make_tissue
        >>> t = make_tissue((512, 512), n_nests=1, nest_radius_um=(40, 50), barrier_coverage=1.0)
        >>> arcs = t.barrier_arcs()[0]
        >>> round(sum(a.length for a in arcs) / t.nests[0].exterior.length, 6)
        1.0
        """
        out = []
        for nest, info in zip(self.nests, self.planted.get("nests", [])):
            arcs = []
            for s0, s1 in info["covered_intervals_um"]:
                g = _arc_geometry(nest, s0, s1)
                arcs.extend(getattr(g, "geoms", [g]))
            out.append(arcs)
        return out

    def barrier_side(self, x_um, y_um):
        """Signed distance (µm, negative inside) of points to the nearest nest
        outline and whether that nearest boundary point is barrier-covered
        (the rule the generator plants T-cell layouts with).

        Examples
        --------
        >>> from tibspace.synthetic import make_tissue
        >>> t = make_tissue((512, 512), n_nests=1, nest_radius_um=(40, 50), barrier_coverage=1.0)
        >>> c = t.nests[0].centroid
        >>> sd, cov = t.barrier_side([c.x], [c.y])
        >>> bool(sd[0] < 0), bool(cov[0])
        (True, True)
        """
        x = np.asarray(x_um, float)
        y = np.asarray(y_um, float)
        if not self.nests:
            return np.full(x.shape, np.inf), np.zeros(x.shape, bool)
        sd, which, s, _ = _signed_distance(self.nests, x, y)
        ivs = [[tuple(v) for v in n["covered_intervals_um"]] for n in self.planted["nests"]]
        return sd, _covered_flags(self.nests, ivs, which, s)

    def write(self, out_dir: str | os.PathLike, *, image_name: str = "image.ome.tif",
              panel_name: str = "panel.toml", truth_dir: str = ".",
              pyramid: bool = True) -> Path:
        """Write image, panel and ground truth into ``out_dir``.

        Files: ``image_name`` (OME-TIFF with channel names and pixel size),
        ``panel_name`` and, inside ``truth_dir``: ``truth_cells.csv``,
        ``truth_nuclei.tif``, ``truth_cells.tif`` (uint32 labels),
        ``net_mask.tif``, ``col1_mask.tif`` (uint8 0/1), ``truth_nests.geojson``
        (QuPath-style annotations in pixel coordinates) and ``planted.json``.
        All TIFFs are zlib-compressed; every file is written atomically.

        Returns the truth folder.
        """
        from tibspace.io import atomic_path
        from tibspace.io import write_ome_tiff

        out_dir = Path(out_dir)
        tdir = out_dir / truth_dir
        tdir.mkdir(parents=True, exist_ok=True)
        if self.image is not None:
            levels = None if pyramid else 1
            write_ome_tiff(out_dir / image_name, self.image, list(self.channel_names),
                           self.pixel_size_um, pyramid_levels=levels)
        with atomic_path(out_dir / panel_name) as tmp:
            tmp.write_text(self.panel_toml)
        with atomic_path(tdir / "truth_cells.csv") as tmp:
            self.truth.to_csv(tmp, index=False, float_format="%.4f")
        for name, arr in (("truth_nuclei.tif", self.nuclei.astype(np.uint32)),
                          ("truth_cells.tif", self.cells.astype(np.uint32)),
                          ("net_mask.tif", self.net_mask.astype(np.uint8)),
                          ("col1_mask.tif", self.col1_mask.astype(np.uint8))):
            _write_plain_tiff(tdir / name, arr, self.pixel_size_um)
        with atomic_path(tdir / "truth_nests.geojson") as tmp:
            tmp.write_text(json.dumps(_nests_geojson(self), indent=1))
        with atomic_path(tdir / "planted.json") as tmp:
            tmp.write_text(json.dumps(self.planted, indent=1, default=_json_default))
        return tdir


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _write_plain_tiff(path: Path, arr: np.ndarray, pixel_size_um: float) -> None:
    import tifffile

    from tibspace.io import atomic_path

    res = 1e4 / pixel_size_um  # pixels per cm
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, compression="zlib", tile=(512, 512) if min(arr.shape) >= 512
                         else None, resolution=(res, res), resolutionunit="CENTIMETER",
                         metadata=None)


def _nests_geojson(t: SyntheticTissue) -> dict:
    """QuPath-style GeoJSON: coordinates in pixels, pixel (r, c) spanning
    [c, c+1) × [r, r+1) (QuPath's convention), so x_px = x_um / px + 0.5."""
    px = t.pixel_size_um

    def to_px(g):
        return um_to_qupath_px(g, px)

    feats = [{"type": "Feature", "geometry": mapping(to_px(t.tissue)),
              "properties": {"objectType": "annotation", "name": "tissue",
                             "classification": {"name": "Tissue", "color": [200, 200, 200]}}}]
    nest_info = t.planted.get("nests", [])
    for i, nest in enumerate(t.nests):
        info = nest_info[i] if i < len(nest_info) else {}
        feats.append({"type": "Feature", "geometry": mapping(to_px(nest)),
                      "properties": {"objectType": "annotation", "name": f"nest {i + 1}",
                                     "classification": {"name": "Tumor", "color": [200, 0, 0]},
                                     "measurements": {
                                         "nest_id": i + 1, "area_um2": float(nest.area),
                                         "perimeter_um": float(nest.exterior.length),
                                         "barrier_coverage_planted": float(
                                             info.get("barrier_coverage_realised", np.nan))}}})
        for j, (s0, s1) in enumerate(info.get("covered_intervals_um", [])):
            arc = _arc_geometry(nest, s0, s1)
            feats.append({"type": "Feature", "geometry": mapping(to_px(arc)),
                          "properties": {"objectType": "annotation",
                                         "name": f"nest {i + 1} barrier arc {j + 1}",
                                         "classification": {"name": "Barrier",
                                                            "color": [0, 160, 0]},
                                         "measurements": {"nest_id": i + 1,
                                                          "start_um": s0, "end_um": s1}}})
    return {"type": "FeatureCollection", "features": feats}


def load_truth(path: str | os.PathLike, *, load_image: bool = False) -> SyntheticTissue:
    """Read back what :meth:`SyntheticTissue.write` wrote.

    Parameters
    ----------
    path : str or Path
        The output folder, or its truth folder (the one holding
        ``truth_cells.csv``); ``path/truth`` is tried too.
    load_image : bool
        Also read the image (``*.ome.tif`` next to the truth folder).

    Examples
    --------
    >>> import tempfile
    >>> from tibspace.synthetic import make_tissue
    >>> t = make_tissue((512, 512), n_nests=1, nest_radius_um=(40, 50))
    >>> d = tempfile.mkdtemp()
    >>> _ = t.write(d)
    >>> back = load_truth(d)
    >>> bool((back.nuclei == t.nuclei).all()), len(back.truth) == len(t.truth)
    (True, True)
    """
    import tifffile

    path = Path(path)
    cands = [path, path / "truth"]
    tdir = next((c for c in cands if (c / "truth_cells.csv").is_file()), None)
    if tdir is None:
        raise InputError(f"{path}: no truth_cells.csv here or in {path / 'truth'}; "
                         "pass the folder written by SyntheticTissue.write")
    planted = json.loads((tdir / "planted.json").read_text())
    truth = pd.read_csv(tdir / "truth_cells.csv", keep_default_na=False,
                        na_values={c: ["", "nan", "NaN"] for c in (
                            "shield_coverage", "shield_coverage_net", "shield_coverage_col1",
                            "true_signed_dist_um")})
    px = float(planted["parameters"]["pixel_size_um"])
    gj = json.loads((tdir / "truth_nests.geojson").read_text())
    nests, tissue = [], None
    for f in gj["features"]:
        props = f["properties"]
        geom = qupath_px_to_um(shapely_shape(f["geometry"]), px)
        cls = props.get("classification", {}).get("name")
        if cls == "Tumor":
            nests.append((props["measurements"]["nest_id"], geom))
        elif cls == "Tissue":
            tissue = geom
    nests = [g for _, g in sorted(nests, key=lambda t: t[0])]
    image, names = None, list(planted["channel_names"])
    if load_image:
        from tibspace.io import open_image

        root = tdir if list(tdir.glob("*.ome.tif")) else tdir.parent
        files = sorted(root.glob("*.ome.tif"))
        if not files:
            raise InputError(f"{root}: no *.ome.tif image found; write it or use load_image=False")
        with open_image(files[0]) as img:
            image = np.asarray(img.data.compute())
            names = list(img.channel_names)
    panel = ""
    for p in list(tdir.glob("*.toml")) + list(tdir.parent.glob("*.toml")):
        panel = p.read_text()
        break
    return SyntheticTissue(
        image=image, channel_names=names, pixel_size_um=px,
        nuclei=tifffile.imread(tdir / "truth_nuclei.tif").astype(np.int32),
        cells=tifffile.imread(tdir / "truth_cells.tif").astype(np.int32),
        truth=truth, nests=nests, tissue=tissue,
        net_mask=tifffile.imread(tdir / "net_mask.tif").astype(bool),
        col1_mask=tifffile.imread(tdir / "col1_mask.tif").astype(bool),
        planted=planted, panel_toml=panel)


def _truth_table(cells: pd.DataFrame, px: float, nests: list) -> pd.DataFrame:
    x = cells.cx_px.to_numpy() * px
    y = cells.cy_px.to_numpy() * px
    if nests:
        sd, _, _, nest_id = _signed_distance(nests, x, y)
    else:
        sd, nest_id = np.full(len(x), np.inf), np.zeros(len(x), np.int64)
    return pd.DataFrame({
        "cell_id": cells.cell_id.to_numpy().astype(np.int64),
        "x_um": x,
        "y_um": y,
        "phenotype": cells.phenotype.to_numpy().astype(str),
        "nest_id": nest_id.astype(np.int64),
        "shielded": cells.shielded.to_numpy().astype(bool),
        "shield_coverage": cells.shield_coverage.to_numpy(),
        "shield_coverage_net": cells.shield_coverage_net.to_numpy(),
        "shield_coverage_col1": cells.shield_coverage_col1.to_numpy(),
        "shield_type": cells.shield_type.to_numpy().astype(str),
        "true_signed_dist_um": sd,
        "area_um2": cells.cell_px.to_numpy() * px * px,
        "nucleus_area_um2": cells.nucleus_px.to_numpy() * px * px,
    })


def _barrier_coverage_from_cells(nest: Polygon, intervals: list, truth: pd.DataFrame,
                                nest_index: int, *, segment_um: float = 50.0,
                                barrier_width_um: float = BARRIER_WIDTH_UM,
                                barrier_density: float = 400.0,
                                barrier=("SPP1_macrophage", "CAF")) -> dict:
    """Barrier coverage of one nest measured from cells (metrics.md rule) on
    segments aligned with the planted arcs: each planted run and gap is cut
    into ⌈len/segment_um⌉ equal segments, so every segment is wholly planted
    covered or uncovered. A segment is covered when its outer band holds
    barrier cells at ≥ ``barrier_density`` cells/mm² and ≥ 1 cell of each
    barrier type. Cells are assigned to the nearest boundary point of their
    nearest nest (``truth`` must carry ``_which`` and ``_s`` columns)."""
    ring = LineString(nest.exterior.coords)
    P = ring.length
    cuts = []
    if not intervals:
        bounds = [(0.0, P, False)]
    elif len(intervals) == 1 and intervals[0][1] - intervals[0][0] >= P - 1e-9:
        bounds = [(0.0, P, True)]
    else:
        iv = sorted(intervals)
        bounds = []
        for k, (s0, s1) in enumerate(iv):
            nxt = iv[(k + 1) % len(iv)][0] + (P if k + 1 == len(iv) else 0)
            bounds.append((s0, s1, True))
            bounds.append((s1, nxt, False))
    for s0, s1, cv in bounds:
        nseg = max(1, int(math.ceil((s1 - s0) / segment_um - 1e-9)))
        e = np.linspace(s0, s1, nseg + 1)
        cuts += [(a, b, cv) for a, b in zip(e[:-1], e[1:])]
    sel = (truth["_which"] == nest_index) & (truth.true_signed_dist_um > 0) & (
        truth.true_signed_dist_um <= barrier_width_um)
    sub = truth[sel]
    s = sub["_s"].to_numpy()
    ph = sub.phenotype.to_numpy()
    seg_cov, seg_len, planted = [], [], []
    for a, b, cv in cuts:
        ins = ((s >= a % P) & (s < b % P)) if (b % P) > (a % P) else ((s >= a % P) | (s < b % P))
        if b - a >= P - 1e-9:
            ins = np.ones(len(s), bool)
        sa = (a % P)
        seg = substring(ring, sa, min(sa + (b - a), P))
        # band area: polygon swept by offsetting the segment outwards
        area = seg.buffer(barrier_width_um, cap_style="flat").difference(nest).area
        dens = ins.sum() / max(area, 1e-9) * 1e6 if area > 0 else 0.0
        has = [(ph[ins] == t).any() for t in barrier]
        seg_cov.append(bool(dens >= barrier_density and all(has)))
        seg_len.append(b - a)
        planted.append(cv)
    seg_len = np.array(seg_len)
    seg_cov = np.array(seg_cov)
    return {"coverage": float((seg_len * seg_cov).sum() / P),
            "agreement": float((seg_len * (seg_cov == np.array(planted))).sum() / P),
            "n_segments": int(len(seg_len))}


def _planted_summary(truth, cells, nests, intervals, covs, tissue, px, params) -> dict:
    """The ``planted`` dict: parameters, per-nest barrier truth, shield
    fractions, densities per compartment and the CD8 infiltration ratio."""
    sd, which, s, _ = (_signed_distance(nests, truth.x_um.to_numpy(), truth.y_um.to_numpy())
                       if nests else (np.full(len(truth), np.inf), np.full(len(truth), -1),
                                      np.zeros(len(truth)), None))
    nest_info = _nest_truth(truth.assign(_which=which, _s=s), nests, intervals, covs)
    dens = _compartment_densities(truth, sd, nests, tissue)
    ratio = _infiltration_ratio(dens) if nests else None
    tum = truth[truth.phenotype == "tumour"]
    return {
        "generator": "tibspace.synthetic.make_tissue",
        "parameters": params,
        "seed": params["seed"],
        "channel_names": list(CHANNELS),
        "immune_phenotype": params["immune_phenotype"],
        "barrier_excludes_t": params["barrier_excludes_t"],
        "nests": nest_info,
        "barrier_coverage_realised": float(
            sum(n["barrier_coverage_realised"] * n["perimeter_um"] for n in nest_info)
            / max(sum(n["perimeter_um"] for n in nest_info), 1e-9)) if nest_info else None,
        "shield": {"target_fraction": params["shield_coverage"],
                   "realised_fraction": float(tum.shielded.mean()) if len(tum) else None,
                   "n_tumour": int(len(tum)), "n_shielded": int(tum.shielded.sum()),
                   "ring_um": SHIELD_RING_UM,
                   "min_coverage_shielded": float(tum.shield_coverage[tum.shielded].min())
                   if tum.shielded.any() else None,
                   "max_coverage_unshielded": float(tum.shield_coverage[~tum.shielded].max())
                   if (~tum.shielded).any() else None},
        "densities_per_mm2": dens,
        "infiltration_ratio_cd8": ratio,
        "n_cells": int(len(truth)),
        "phenotype_counts": {k: int(v) for k, v in truth.phenotype.value_counts().items()},
        "image": {"gain_dn_per_photon": _GAIN_DN_PER_PHOTON, "read_noise_dn": _READ_NOISE_DN,
                  "psf_sigma_um": _PSF_SIGMA_UM, "crosstalk_next": _CROSSTALK_NEXT,
                  "crosstalk_prev": _CROSSTALK_PREV},
    }


def _nest_truth(tmp: pd.DataFrame, nests, intervals, covs) -> list:
    """Per-nest entries of ``planted["nests"]`` (``tmp`` carries ``_which, _s``)."""
    nest_info = []
    for i, nest in enumerate(nests):
        P = nest.exterior.length
        ivs = intervals[i]
        realised = sum(b - a for a, b in ivs) / P
        meas = _barrier_coverage_from_cells(nest, ivs, tmp, i)
        nest_info.append({
            "nest_id": i + 1, "area_um2": nest.area, "perimeter_um": P,
            "centroid_um": [nest.centroid.x, nest.centroid.y],
            "barrier_coverage_planted": float(covs[i]),
            "barrier_coverage_realised": float(realised),
            "barrier_coverage_from_cells": meas["coverage"],
            "barrier_segment_agreement": meas["agreement"],
            "covered_intervals_um": [[float(a), float(b)] for a, b in ivs],
            "n_tumour": int(((tmp.nest_id == i + 1) & (tmp.phenotype == "tumour")).sum()),
        })
    return nest_info


def _compartment_densities(truth, sd, nests, tissue) -> dict:
    """Cells/mm² of tissue per phenotype in core, inner and outer margin and
    the 50–200 µm stroma, by signed distance ``sd`` to the nests."""
    comp = {"core": (-1e9, -MARGIN_UM), "inner_margin": (-MARGIN_UM, 0.0),
            "outer_margin": (0.0, MARGIN_UM), "stroma_200": (MARGIN_UM, 200.0)}
    dens = {}
    if not nests:
        return dens
    nest_union = shapely.union_all(nests)
    for name, (d0, d1) in comp.items():
        outer = nest_union.buffer(d1) if d1 != 0 else nest_union
        inner = (nest_union.buffer(d0) if d0 != 0 else nest_union) if d0 > -1e8 else Polygon()
        area = outer.difference(inner).intersection(tissue).area
        sel = (sd > d0) & (sd <= d1)
        dens[name] = {ph: float(((truth.phenotype == ph) & sel).sum() / max(area, 1e-9) * 1e6)
                      for ph in PHENOTYPES}
        dens[name]["area_um2"] = float(area)
    return dens


def _infiltration_ratio(t: dict) -> Optional[float]:
    """CD8_T density inside nests (core + inner margin) over outside (outer
    margin + 50–200 µm stroma); None without outside area or CD8 cells."""
    if (t["outer_margin"]["area_um2"] + t["stroma_200"]["area_um2"]) <= 0:
        return None

    def cnt(n):
        return t[n]["CD8_T"] * t[n]["area_um2"]
    inside = (cnt("core") + cnt("inner_margin")) / max(
        t["core"]["area_um2"] + t["inner_margin"]["area_um2"], 1e-9)
    outside = (cnt("outer_margin") + cnt("stroma_200")) / max(
        t["outer_margin"]["area_um2"] + t["stroma_200"]["area_um2"], 1e-9)
    return float(inside / outside) if outside > 0 else None


def panel_toml() -> str:
    """Panel file (docs/architecture.md format) whose rules recover the true
    phenotypes of :func:`make_tissue` images."""
    return """# tibspace panel for tibspace.synthetic images (HCC-like, 12 channels)
# The OME-TIFF carries the pixel size, so [image] is not needed.

[channels]
nuclear = ["DAPI"]
membrane = ["NaKATPase"]

[markers]
HepPar1 = { gate = "otsu" }
CD68 = { gate = "otsu" }
SPP1 = { gate = "otsu" }
aSMA = { gate = "otsu" }
FAP = { gate = "otsu" }
CD3 = { gate = "otsu" }
CD8 = { gate = "otsu" }
MPO = { gate = "otsu" }

[phenotypes]
tumour = "HepPar1+"
SPP1_macrophage = "CD68+ & SPP1+"
CAF = "(aSMA+ | FAP+) & not HepPar1+"
CD8_T = "CD3+ & CD8+"
other_T = "CD3+ & CD8-"
neutrophil = "MPO+"
default = "other"

[roles]
tumour = ["tumour"]
effector_t = ["CD8_T"]
t_cells = ["CD8_T", "other_T"]
barrier = ["SPP1_macrophage", "CAF"]
spp1_macrophage = ["SPP1_macrophage"]
caf = ["CAF"]
neutrophil = ["neutrophil"]

[masks]
net = { channels = ["CitH3"], require = ["MPO"], gate = "otsu", min_object_um2 = 5 }
col1 = { channels = ["COL1"], gate = "otsu", min_object_um2 = 5 }
"""
