"""The wider synthetic world: situations of real tissue the default generator avoids.

:class:`World` holds the knobs of :func:`tibspace.synthetic.make_tissue` that
plant them: absent markers, illumination gradient and autofluorescence,
T-cell layouts relative to barrier arcs, short gaps between arcs, scattered
tumour cells, irregular and trabecular nests, nests cut by the image edge.
Every knob's default reproduces today's output bit for bit: a knob at its
default draws no random number. The realised truth of every knob used goes to
``planted["world"]`` (absent when all knobs are at their defaults).

Distances in µm; "covered" is decided at the nearest boundary point of the
nearest nest (as the barrier lining is planted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pandas as pd
import shapely

from tibspace.errors import InputError
from tibspace.synthetic.spec import CHANNELS, MARGIN_UM

#: T-cell layouts relative to barrier arcs (``t_layout``).
T_LAYOUTS = ("piled", "held", "spread", "indifferent")
#: Nest shapes (``nest_shape``).
NEST_SHAPES = ("blob", "irregular", "trabecular")
#: ``piled``: T cells pile up in this band outside covered arcs (µm).
PILED_BAND_UM = (0.0, 50.0)
#: ``held``: T cells are held in this band outside covered arcs, none nearer (µm).
HELD_BAND_UM = (50.0, 150.0)
#: Scattered tumour cells: at least this far from every nest outline (µm) ...
SCATTER_MIN_NEST_DIST_UM = 50.0
#: ... and from each other (centre to centre, µm), so they never form a nest.
SCATTER_MIN_SPACING_UM = 40.0
#: Autofluorescent speckles: radius range (µm) and mean photons at the centre.
SPECKLE_RADIUS_UM = (0.8, 1.6)
SPECKLE_PHOTONS = 700.0


@dataclass(frozen=True)
class World:
    """Knobs of the wider synthetic world (defaults: today's generator).

    Attributes
    ----------
    absent_markers : tuple of str
        Channels with no positive population: no cell carries the marker and
        no crosstalk reaches the channel; it holds autofluorescence and noise
        only. Phenotypes in the truth are unchanged (a CD8_T cell stays CD8_T;
        its CD8 stain failed).
    illumination_gradient : float
        Illumination multiplies every photon by ``1 + g·t``, ``t`` in [0, 1]
        running linearly across the field along a random direction: the far
        side is ``1 + g`` times brighter than the near side. 0: flat.
    autofluorescence : float
        Multiplier of the tissue autofluorescence of every channel (1: today).
    af_speckles_per_mm2 : float
        Bright autofluorescent granules (lipofuscin-like, radius
        :data:`SPECKLE_RADIUS_UM`) per mm² of tissue, in every channel.
    t_layout : {None, "piled", "held", "spread", "indifferent"}
        T-cell placement relative to barrier arcs (replaces the immune
        phenotype's rule). Base profile: ρ in stroma, 0.3ρ in the inner 50 µm
        of nests, 0.05ρ in the core. ``indifferent``: the base profile (no
        dependence on arcs: the null). ``spread``: base profile, none inside a
        nest where the boundary is covered. ``piled``: as spread, plus 4ρ in
        the 0–50 µm band outside covered arcs. ``held``: as spread, none in
        0–50 µm outside covered arcs, 2ρ in 50–150 µm.
    barrier_arcs : int, optional
        Number of covered arcs per nest (default: 1–3 at random).
    barrier_gap_um : float, optional
        Minimum gap between arcs (default 50 µm). The gaps share the
        uncovered length ``(1 - coverage)·P``, so high coverage with several
        arcs gives short gaps (down to 20 µm); when the uncovered length is
        shorter than one gap, coverage is lowered to fit one gap.
    scattered_tumour_cells : int
        Isolated tumour cells in stroma, ≥ :data:`SCATTER_MIN_NEST_DIST_UM`
        from nests and ≥ :data:`SCATTER_MIN_SPACING_UM` from each other.
    nest_shape : {"blob", "irregular", "trabecular"}
        blob: smooth radial blobs (today). irregular: lobulated radial
        outlines (harmonics 2–10, up to ~3× the amplitude). trabecular: thin
        winding cords of width ``cord_width_um`` and length 4× the drawn radius.
    cord_width_um : (min, max)
        Width range of trabecular cords (µm).
    edge_nests : int
        How many of the nests are cut by the image frame (their outline runs
        along the tissue edge 1.1 µm inside the frame; no barrier is planted
        on that part).
    """

    absent_markers: tuple = ()
    illumination_gradient: float = 0.0
    autofluorescence: float = 1.0
    af_speckles_per_mm2: float = 0.0
    t_layout: Optional[str] = None
    barrier_arcs: Optional[int] = None
    barrier_gap_um: Optional[float] = None
    scattered_tumour_cells: int = 0
    nest_shape: str = "blob"
    cord_width_um: tuple = (24.0, 36.0)
    edge_nests: int = 0

    def is_default(self) -> bool:
        return self == World()

    def params(self) -> dict:
        d = asdict(self)
        d["absent_markers"] = list(self.absent_markers)
        d["cord_width_um"] = [float(v) for v in self.cord_width_um]
        return d

    def check(self, n_nests: int) -> "World":
        """Validate; one-line :class:`InputError` naming the knob."""
        bad = [m for m in self.absent_markers if m not in CHANNELS or m == "DAPI"]
        if bad:
            raise InputError(f"make_tissue: absent_markers must name channels of {CHANNELS[1:]}, "
                             f"got {bad}")
        for name, lo, hi in (("illumination_gradient", 0.0, 20.0), ("autofluorescence", 0.0, 50.0),
                             ("af_speckles_per_mm2", 0.0, 5000.0)):
            v = getattr(self, name)
            if not (lo <= v <= hi):
                raise InputError(f"make_tissue: {name} must be in [{lo}, {hi}], got {v}")
        if self.t_layout is not None and self.t_layout not in T_LAYOUTS:
            raise InputError(f"make_tissue: t_layout must be one of {T_LAYOUTS}, "
                             f"got {self.t_layout!r}")
        if self.barrier_arcs is not None and not (1 <= self.barrier_arcs <= 50):
            raise InputError(f"make_tissue: barrier_arcs must be in 1..50, got {self.barrier_arcs}")
        if self.barrier_gap_um is not None and not (1.0 <= self.barrier_gap_um <= 1000.0):
            raise InputError(f"make_tissue: barrier_gap_um must be in [1, 1000] µm, "
                             f"got {self.barrier_gap_um}")
        if not (0 <= self.scattered_tumour_cells <= 100000):
            raise InputError(f"make_tissue: scattered_tumour_cells must be in 0..100000, "
                             f"got {self.scattered_tumour_cells}")
        if self.nest_shape not in NEST_SHAPES:
            raise InputError(f"make_tissue: nest_shape must be one of {NEST_SHAPES}, "
                             f"got {self.nest_shape!r}")
        lo, hi = self.cord_width_um
        if not (10.0 <= lo <= hi <= 200.0):
            raise InputError(f"make_tissue: cord_width_um must be (min, max) with "
                             f"10 <= min <= max <= 200, got {self.cord_width_um}")
        if not (0 <= self.edge_nests <= n_nests):
            raise InputError(f"make_tissue: edge_nests must be in 0..n_nests ({n_nests}), "
                             f"got {self.edge_nests}")
        return self


def world_rng(seed: int, k: int) -> np.random.Generator:
    """Random stream ``k`` of the world knobs, apart from the default streams."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1000 + k,)))


def t_layout_fn(layout: str, rho: float):
    """f(d, covered) -> T density (cells/mm²) of ``layout`` by signed distance d."""

    def f(d, covered):
        d = np.asarray(d, float)
        out = np.full(d.shape, float(rho))
        out[(d <= 0) & (d > -MARGIN_UM)] = 0.3 * rho
        out[d <= -MARGIN_UM] = 0.05 * rho
        if layout == "indifferent":
            return out
        out[(d <= 0) & covered] = 0.0
        near = (d > PILED_BAND_UM[0]) & (d <= PILED_BAND_UM[1]) & covered
        if layout == "piled":
            out[near] = 4.0 * rho
        elif layout == "held":
            out[(d > 0) & (d <= HELD_BAND_UM[0]) & covered] = 0.0
            out[(d > HELD_BAND_UM[0]) & (d <= HELD_BAND_UM[1]) & covered] = 2.0 * rho
        return out

    return f


def scattered_tumour(stroma, nests, n: int, rng) -> pd.DataFrame:
    """``n`` isolated tumour cells (dart throwing) in stroma, ≥ 10 µm inside the
    tissue, ≥ :data:`SCATTER_MIN_NEST_DIST_UM` from nests and
    :data:`SCATTER_MIN_SPACING_UM` apart; fewer if they do not fit."""
    free = stroma.buffer(-10.0)
    if nests:
        free = free.difference(shapely.union_all(nests).buffer(SCATTER_MIN_NEST_DIST_UM))
    pts: list = []
    if n and not free.is_empty:
        minx, miny, maxx, maxy = free.bounds
        for _ in range(200):
            cand = np.c_[rng.uniform(minx, maxx, 4 * n), rng.uniform(miny, maxy, 4 * n)]
            cand = cand[shapely.contains_xy(free, cand[:, 0], cand[:, 1])]
            for p in cand:
                if len(pts) == n:
                    break
                if not pts or np.min(np.hypot(*(np.asarray(pts) - p).T)) >= SCATTER_MIN_SPACING_UM:
                    pts.append(p)
            if len(pts) == n:
                break
    xy = np.asarray(pts, float).reshape(-1, 2)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "phenotype": "tumour", "prio": 0,
                         "nest": 0, "shield_type": "none", "scattered": True})


def illumination(shape, px: float, g: float, rng) -> dict:
    """Planted illumination field ``1 + g·clip(((x, y) - origin)·u / span, 0, 1)``."""
    H, W = shape
    ang = float(rng.uniform(0, 2 * np.pi))
    u = np.array([np.cos(ang), np.sin(ang)])
    corners = np.array([[0, 0], [W * px, 0], [0, H * px], [W * px, H * px]], float)
    proj = corners @ u
    origin = corners[int(np.argmin(proj))]
    return {"gradient": float(g), "factor": float(1 + g), "direction": u.tolist(),
            "origin_um": origin.tolist(), "span_um": float(proj.max() - proj.min()),
            "formula": "1 + gradient * clip(((x, y) - origin_um) . direction / span_um, 0, 1)"}


def illumination_at(info: dict, x_um, y_um) -> np.ndarray:
    """Value of the planted illumination field at points (µm)."""
    u = np.asarray(info["direction"])
    o = np.asarray(info["origin_um"])
    t = ((np.asarray(x_um) - o[0]) * u[0] + (np.asarray(y_um) - o[1]) * u[1]) / info["span_um"]
    return 1.0 + info["gradient"] * np.clip(t, 0.0, 1.0)


def speckles(tissue, density: float, rng) -> np.ndarray:
    """Autofluorescent granules (x, y, radius µm, brightness photons) in tissue."""
    from tibspace.synthetic.cells import _poisson_in

    xy = _poisson_in(tissue, density, rng)
    r = rng.uniform(*SPECKLE_RADIUS_UM, len(xy))
    b = SPECKLE_PHOTONS * np.exp(rng.normal(-0.08, 0.4, len(xy)))
    return np.c_[xy, r, b]


def speckle_map(spk: np.ndarray, shape, px: float) -> np.ndarray:
    """Photon map (H, W) of the speckles: flat disks of their brightness."""
    from tibspace.synthetic.raster import _disk_patch

    H, W = shape
    out = np.zeros(shape, np.float32)
    for x, y, r, b in spk:
        cy, cx, rr = y / px, x / px, r / px
        box, disk = _disk_patch(cy, cx, rr, (H, W))
        if disk is not None:
            out[box] = np.maximum(out[box], np.where(disk, b, 0.0))
    return out


def world_truth(world: World, truth: pd.DataFrame, cells: pd.DataFrame, nests: list,
                intervals: list, frame_ivs: list, widths: list, extras: dict,
                t_density: Optional[float]) -> dict:
    """``planted["world"]``: the knobs and what each planted (µm, cell ids)."""
    from tibspace.synthetic.layout import _gaps, _subtract_intervals

    spk = extras.get("speckles", np.zeros((0, 4)))
    out = {"parameters": world.params(), "absent_markers": list(world.absent_markers),
           "illumination": extras.get("illumination"),
           "autofluorescence": {"scale": float(world.autofluorescence),
                                "speckles_per_mm2": float(world.af_speckles_per_mm2),
                                "n_speckles": int(len(spk)),
                                "speckles_um": [[float(v) for v in row] for row in spk]}}
    if world.t_layout is not None:
        out["t_layout"] = {"layout": world.t_layout,
                           "t_density_per_mm2": float(500.0 if t_density is None else t_density),
                           "piled_band_um": list(PILED_BAND_UM),
                           "held_band_um": list(HELD_BAND_UM),
                           "covered_by": "nearest boundary point of the nearest nest"}
    sc = cells.get("scattered")
    ids = cells.cell_id[sc.to_numpy(bool)].astype(int).tolist() if sc is not None else []
    out["scattered_tumour_cells"] = {"n_requested": int(world.scattered_tumour_cells),
                                     "n_placed": len(ids), "cell_ids": ids,
                                     "min_dist_to_nest_um": SCATTER_MIN_NEST_DIST_UM,
                                     "min_spacing_um": SCATTER_MIN_SPACING_UM}
    per = []
    for i, nest in enumerate(nests):
        P = nest.exterior.length
        gaps = _gaps(intervals[i], P) if intervals[i] else []
        if frame_ivs and frame_ivs[i]:   # the frame part is no gap between arcs
            gaps = _subtract_intervals(gaps, frame_ivs[i], P)
        per.append({"nest_id": i + 1, "shape": world.nest_shape,
                    "cord_width_um": widths[i] if widths else None,
                    "solidity": float(nest.area / nest.convex_hull.area),
                    "touches_frame": bool(frame_ivs[i]) if frame_ivs else False,
                    "frame_intervals_um": [[float(a), float(b)] for a, b in (
                        frame_ivs[i] if frame_ivs else [])],
                    "gap_intervals_um": [[float(a), float(b)] for a, b in gaps],
                    "gap_lengths_um": [float(b - a) for a, b in gaps]})
    out["nests"] = per
    return out
