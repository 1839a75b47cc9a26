"""Synthetic HCC-like multiplex tissue with planted ground truth.

:func:`make_tissue` renders a 12-channel multiplex image of liver-cancer-like
tissue (tumour nests in stroma) together with everything a test needs to know
about it: nucleus and whole-cell labels, the true phenotype and position of
every cell, the nest outlines, the planted barrier arcs (SPP1+ macrophages and
CAFs lining a chosen fraction of each nest's perimeter), the planted NET /
collagen-I shields around tumour cells (as pixel masks) and the T-cell
placement of the chosen immune phenotype.

Everything is planned in micrometres and converted to pixels with
``pixel_size_um``. The steps live in their own modules: :mod:`.layout`
(tissue, nests, barrier arcs), :mod:`.cells` (placement and phenotypes),
:mod:`.raster` (label images), :mod:`.masks` (NET / collagen-I),
:mod:`.stains` (channels, autofluorescence, PSF, noise), :mod:`.truth`
(container, files, summaries). Pixel noise comes from a counter-based hash
of ``(seed, channel, row, column)``, so the result does not depend on tiling
or on the number of threads.

Channels (this order): ``DAPI, NaKATPase, HepPar1, CD68, SPP1, aSMA, FAP, CD3,
CD8, MPO, CitH3, COL1``. True phenotypes: ``tumour`` (HepPar1+),
``SPP1_macrophage`` (CD68+ SPP1+), ``CAF`` (aSMA+ and/or FAP+), ``CD8_T``
(CD3+ CD8+), ``other_T`` (CD3+ CD8-), ``neutrophil`` (MPO+), ``other``.

Planted design (the knobs of :func:`make_tissue`; sizes in µm):

- nests: irregular non-overlapping blobs, ≥ 120 µm apart so that their 50 µm
  barrier bands never touch;
- barrier (``barrier_coverage``): the covered fraction of each nest's
  perimeter has its 0–50 µm outer band lined with SPP1 macrophages and CAFs,
  one per 12.5 µm of arc, alternating types so every 50 µm of covered arc
  holds both; the rest of the band holds only the stromal background of
  barrier cells (a third of the 60 + 60 cells/mm² of stroma);
- shields (``shield_coverage``): shielded tumour cells have NET (CitH3 + MPO)
  and/or collagen-I painted on ≥ 70 % of a 3 µm ring outside the cell
  outline, unshielded ones < 20 %; shielded cells come in patches and favour
  the nest boundary;
- T cells (``immune_phenotype``; CD8_T : other_T = 3 : 1): inflamed = same
  density inside nests as in stroma; excluded = dense in stroma and outer
  margin (1.5–2×), a few in the inner margin, almost none in the core
  (infiltration ratio < 0.2); desert = ``t_density_per_mm2`` (default 10)
  everywhere. ``barrier_excludes_t``: T cells enter the inner margin only
  along uncovered arcs and accumulate in the outer band of covered arcs;
- ``shields_block_t``: probability that a T cell touching a shielded tumour
  cell (centroids within :data:`SHIELD_BLOCK_REACH_UM`) is removed, drawn
  from its own random stream, so the rest of the tissue is identical for
  any value.

Run ``python -m tibspace.synthetic --out DIR --preset sample`` to regenerate
the bundled ``sample_data``.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import numpy as np

from tibspace.errors import InputError
from tibspace.progress import report
from tibspace.synthetic.cells import _block_contacts, _place_cells
from tibspace.synthetic.layout import (
    _covered_intervals,
    _frame_intervals,
    _place_nests,
    _subtract_intervals,
    _tissue_polygon,
)
from tibspace.synthetic.masks import _plant_masks
from tibspace.synthetic.raster import _render_labels
from tibspace.synthetic.spec import (  # noqa: F401 (module-path names kept for callers)
    BARRIER_WIDTH_UM,
    CHANNELS,
    IMMUNE_PHENOTYPES,
    MARGIN_UM,
    PHENOTYPES,
    SHIELD_BLOCK_REACH_UM,
    SHIELD_RING_UM,
)
from tibspace.synthetic.stains import _render_image
from tibspace.synthetic.truth import (
    SyntheticTissue,
    _planted_summary,
    _truth_table,
    load_truth,
    panel_toml,
)
from tibspace.synthetic.world import World, world_rng, world_truth

__all__ = ["CHANNELS", "PHENOTYPES", "SyntheticTissue", "make_tissue", "load_truth",
           "make_sample", "SAMPLE_PRESET"]


def _check_args(shape, pixel_size_um, n_nests, nest_radius_um, barrier_coverage,
                shield_coverage, immune_phenotype, cell_density, t_density, noise,
                shields_block_t=0.0):
    if len(shape) != 2 or min(shape) < 64:
        raise InputError(f"make_tissue: shape must be (rows, cols) with both >= 64, got {shape}")
    if not (pixel_size_um > 0):
        raise InputError(f"make_tissue: pixel_size_um must be > 0, got {pixel_size_um}")
    if n_nests < 0:
        raise InputError(f"make_tissue: n_nests must be >= 0, got {n_nests}")
    lo, hi = nest_radius_um
    if not (0 < lo <= hi):
        raise InputError(f"make_tissue: nest_radius_um must be (min, max) with 0 < min <= max, "
                         f"got {nest_radius_um}")
    covs = np.atleast_1d(np.asarray(barrier_coverage, float))
    if covs.size not in (1, n_nests) or np.any((covs < 0) | (covs > 1)):
        raise InputError(f"make_tissue: barrier_coverage must be a float in [0, 1] or a list of "
                         f"{n_nests} such floats (one per nest), got {barrier_coverage}")
    if not (0 <= shield_coverage <= 1):
        raise InputError(f"make_tissue: shield_coverage must be in [0, 1], got {shield_coverage}")
    if immune_phenotype not in IMMUNE_PHENOTYPES:
        raise InputError(f"make_tissue: immune_phenotype must be one of {IMMUNE_PHENOTYPES}, "
                         f"got {immune_phenotype!r}")
    if cell_density < 0 or (t_density is not None and t_density < 0) or noise < 0:
        raise InputError("make_tissue: cell_density, t_density_per_mm2 and noise must be >= 0")
    if not (0 <= shields_block_t <= 1):
        raise InputError(f"make_tissue: shields_block_t must be in [0, 1], got {shields_block_t}")
    return np.broadcast_to(covs, (n_nests,)).astype(float) if n_nests else covs[:0]


def make_tissue(shape: Sequence[int] = (2048, 2048), pixel_size_um: float = 0.5, seed: int = 0,
                *, n_nests: int = 5, nest_radius_um: tuple = (60.0, 140.0),
                cell_density: float = 1500.0, barrier_coverage: float | Sequence[float] = 0.6,
                shield_coverage: float = 0.5, immune_phenotype: str = "excluded",
                barrier_excludes_t: bool = False, t_density_per_mm2: Optional[float] = None,
                shields_block_t: float = 0.0, noise: float = 1.0,
                absent_markers: Sequence[str] = (), illumination_gradient: float = 0.0,
                autofluorescence: float = 1.0, af_speckles_per_mm2: float = 0.0,
                t_layout: Optional[str] = None, barrier_arcs: Optional[int] = None,
                barrier_gap_um: Optional[float] = None, scattered_tumour_cells: int = 0,
                nest_shape: str = "blob", cord_width_um: tuple = (24.0, 36.0), edge_nests: int = 0,
                progress=None) -> SyntheticTissue:
    """Render a synthetic HCC-like multiplex image with planted ground truth.

    Sizes are in µm; the module docstring says what each knob plants ("Planted design").

    Parameters
    ----------
    shape : (rows, cols)
        Image size in pixels (both ≥ 64).
    pixel_size_um : float
        µm per pixel.
    seed : int
        Seed of every random step; same arguments ⇒ identical output.
    n_nests : int
        Number of tumour nests.
    nest_radius_um : (min, max)
        Range of nest radii (µm).
    cell_density : float
        Target density of ``other`` stromal cells (cells/mm² of stroma) before the
        hard-core thinning of nuclei; realised: ``planted["densities_per_mm2"]``.
    barrier_coverage : float or list of float
        Fraction in [0, 1] of each nest's perimeter lined with barrier cells
        (one value for all nests, or one per nest).
    shield_coverage : float
        Fraction in [0, 1] of tumour cells planted as NET / collagen-I shielded.
    immune_phenotype : {"inflamed", "excluded", "desert"}
        T-cell placement.
    barrier_excludes_t : bool
        If True, T cells enter the inner margin only along uncovered arcs.
    t_density_per_mm2 : float, optional
        Stromal T-cell density; default 500 (inflamed, excluded), 10 (desert).
    shields_block_t : float
        Probability in [0, 1] that a T cell touching a shielded tumour cell is removed.
    noise : float
        Multiplier of shot and read noise (0 = noiseless, still quantised).
    absent_markers, illumination_gradient, autofluorescence, af_speckles_per_mm2, \
t_layout, barrier_arcs, barrier_gap_um, scattered_tumour_cells, nest_shape, \
cord_width_um, edge_nests
        The wider world, each defined by :class:`tibspace.synthetic.world.World`;
        the defaults plant none of it; what a knob planted is in ``planted["world"]``.
    progress : callable, optional
        ``progress(step, done, total)``.

    Returns
    -------
    SyntheticTissue

    Examples
    --------
    >>> t = make_tissue((512, 512), n_nests=1, nest_radius_um=(50, 60), seed=1)
    >>> t.image.shape, t.image.dtype.name, t.channel_names[0]
    ((12, 512, 512), 'uint16', 'DAPI')
    >>> bool((t.truth.phenotype == "tumour").any())
    True
    """
    shape = tuple(int(s) for s in shape)
    covs = _check_args(shape, pixel_size_um, n_nests, nest_radius_um, barrier_coverage,
                       shield_coverage, immune_phenotype, cell_density, t_density_per_mm2,
                       noise, shields_block_t)
    world = World(tuple(absent_markers), float(illumination_gradient), float(autofluorescence),
                  float(af_speckles_per_mm2), t_layout, barrier_arcs, barrier_gap_um,
                  int(scattered_tumour_cells), nest_shape, tuple(cord_width_um),
                  int(edge_nests)).check(n_nests)
    args = dict(shape=list(shape), pixel_size_um=float(pixel_size_um), seed=int(seed),
                n_nests=n_nests, nest_radius_um=list(nest_radius_um), cell_density=cell_density,
                barrier_coverage=[float(c) for c in covs], shield_coverage=shield_coverage,
                immune_phenotype=immune_phenotype, barrier_excludes_t=bool(barrier_excludes_t),
                t_density_per_mm2=t_density_per_mm2, shields_block_t=float(shields_block_t), noise=noise)
    return _render(shape, nest_radius_um, covs, world, args, progress)


def _render(shape, nest_radius_um, covs, world, args, progress) -> SyntheticTissue:
    """The steps of :func:`make_tissue` on its checked arguments ``args``.

    Layout, cells, label images, shield masks, stains, truth; one random
    stream per step, all spawned from ``args["seed"]``.
    """
    px, seed, noise = args["pixel_size_um"], args["seed"], args["noise"]
    ss = np.random.SeedSequence(seed)
    rngs = [np.random.default_rng(s) for s in ss.spawn(8)]
    total = 6
    report(progress, "synthetic tissue", 0, total)
    tissue, nests, intervals, frame_ivs, widths = _layout(shape, px, args["n_nests"],
                                                          nest_radius_um, covs, world, rngs)
    cells = _cells(tissue, nests, intervals, px, rngs, args, world)
    report(progress, "synthetic tissue", 1, total)
    nuclei, cell_lab, qn, cells = _render_labels(cells, shape, px, rngs[3])
    report(progress, "synthetic tissue", 2, total)
    net_mask, col1_mask, cells = _plant_masks(cells, cell_lab, nests, tissue, shape, px,
                                              rngs[4])   # shields and stromal NET / collagen
    report(progress, "synthetic tissue", 3, total)
    image, extras = _render_image(cells, nuclei, cell_lab, qn, net_mask, col1_mask, tissue,
                                  shape, px, int(ss.generate_state(1)[0]), rngs[5], noise,
                                  world, world_rng(seed, 1))
    del qn
    report(progress, "synthetic tissue", 4, total)
    truth = _truth_table(cells, px, nests)
    planted = _planted_summary(truth, cells, nests, intervals, covs, tissue, px, args)
    if not world.is_default():
        planted["world"] = world_truth(world, truth, cells, nests, intervals, frame_ivs, widths,
                                       extras, args["t_density_per_mm2"])
    report(progress, "synthetic tissue", total, total)
    return SyntheticTissue(image=image, channel_names=list(CHANNELS), pixel_size_um=px,
                           nuclei=nuclei, cells=cell_lab, truth=truth, nests=nests,
                           tissue=tissue, net_mask=net_mask, col1_mask=col1_mask,
                           planted=planted, panel_toml=panel_toml())


def _cells(tissue, nests, intervals, px, rngs, args, world):
    """Planted cells (phenotypes, positions, shields), after the optional shield blocking of T cells.

    ``args`` are the checked arguments of :func:`make_tissue` (its ``planted["parameters"]``).
    """
    cells = _place_cells(tissue, nests, intervals, px, rngs[2], cell_density=args["cell_density"],
                         shield_coverage=args["shield_coverage"],
                         immune_phenotype=args["immune_phenotype"],
                         barrier_excludes_t=args["barrier_excludes_t"],
                         t_density=args["t_density_per_mm2"], t_layout=world.t_layout,
                         scattered=world.scattered_tumour_cells,
                         scatter_rng=world_rng(args["seed"], 0))
    if args["shields_block_t"] > 0:
        cells = _block_contacts(cells, args["shields_block_t"], rngs[6])
    return cells


def _layout(shape, px, n_nests, nest_radius_um, covs, world, rngs):
    """Tissue, nests, covered intervals, frame intervals (edge nests) and cord widths."""
    H, W = shape
    tissue = _tissue_polygon(W * px, H * px, rngs[0])
    widths: list = []
    nests = _place_nests(tissue, n_nests, nest_radius_um, rngs[0],
                         clearance_um=2 * BARRIER_WIDTH_UM + 20, shape=world.nest_shape,
                         cord_width_um=world.cord_width_um, n_edge=world.edge_nests,
                         widths=widths)
    intervals = [_covered_intervals(n.exterior.length, c, rngs[1], world.barrier_arcs,
                                    world.barrier_gap_um) for n, c in zip(nests, covs)]
    frame_ivs: list = []
    if world.edge_nests:
        frame_ivs = [_frame_intervals(n, tissue) for n in nests]
        intervals = [_subtract_intervals(iv, fr, n.exterior.length)
                     for iv, fr, n in zip(intervals, frame_ivs, nests)]
    return tissue, nests, intervals, frame_ivs, widths


SAMPLE_PRESET = dict(shape=(1600, 1600), pixel_size_um=0.5, seed=7, n_nests=4,
                     nest_radius_um=(75.0, 105.0), barrier_coverage=[0.2, 0.5, 0.8, 1.0],
                     shield_coverage=0.5, immune_phenotype="excluded",
                     barrier_excludes_t=True, t_density_per_mm2=700.0)


def make_sample(out_dir: str | os.PathLike, progress=None) -> SyntheticTissue:
    """Regenerate the bundled sample (``sample_data``) into ``out_dir``."""
    t = make_tissue(**SAMPLE_PRESET, progress=progress)
    t.write(out_dir, image_name="hcc_sample.ome.tif", panel_name="hcc_sample_panel.toml",
            truth_dir="truth", pyramid=False)
    return t


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tibspace.synthetic",
                                 description="Write a synthetic HCC multiplex image + truth.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--preset", choices=["sample"], default=None,
                    help="'sample': the bundled sample_data")
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    ap.add_argument("--pixel-size-um", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-nests", type=int, default=5)
    ap.add_argument("--barrier-coverage", type=float, nargs="+", default=[0.6])
    ap.add_argument("--shield-coverage", type=float, default=0.5)
    ap.add_argument("--immune-phenotype", choices=IMMUNE_PHENOTYPES, default="excluded")
    ap.add_argument("--barrier-excludes-t", action="store_true")
    a = ap.parse_args(argv)
    if a.preset == "sample":
        make_sample(a.out)
        return 0
    cov = a.barrier_coverage[0] if len(a.barrier_coverage) == 1 else a.barrier_coverage
    t = make_tissue(tuple(a.shape), a.pixel_size_um, a.seed, n_nests=a.n_nests,
                    barrier_coverage=cov, shield_coverage=a.shield_coverage,
                    immune_phenotype=a.immune_phenotype,
                    barrier_excludes_t=a.barrier_excludes_t)
    t.write(a.out)
    return 0
