"""Autofluorescence rejection and stain-presence decisions for the shield masks.

Autofluorescence signature. Autofluorescent granules (lipofuscin, red cells,
elastin) are bright in every channel, stains only in their own (a NET over a
tumour cell also lights DAPI and the cell's two or three markers, a fibre
its neighbour's cross-talk). A candidate mask pixel is therefore rejected
when it is above the noise floor of at least :data:`AF_FRACTION` of the
*reference* channels: all image channels the mask does not use (its own and
co-required channels excluded), or the channels a spec declares under
``autofluorescence`` (an AF / empty reference channel). The floor of a
reference channel is measured on its own data: ``median + 5 σ`` of its
background-flattened tissue sample (:func:`~tibspace.analyses.shield_masks.otsu_gate_log1p`'s
floor) on the section (:func:`section_grid`: tissue against glass), so no
intensity or size of the granules enters the rule. Implicit reference sets
smaller than :data:`AF_MIN_CHANNELS` are not tested (with one or two other
channels, a NET on collagen looks like a granule).

A granule may lie on a stain. The granules' spectrum is measured on the
data: the median excess over background, per channel, of the mask's
candidate samples that carry the signature (:func:`with_spectrum`). A
flagged pixel is kept when, for one of the mask's own channels, its value
minus the granule's share (spectrum × amplitude, the amplitude being the
median over reference channels of excess / spectrum) is still above the
gate (:func:`af_points`).

Presence decision. A channel with an automatic gate is ``"positive"`` when
the mask it built holds pixels whose median lies at least the gate's own
floor (5 σ) above the background median; otherwise ``"absent"`` and the mask
is emptied. Noise that passes the floor forms small clusters grown around
one pixel just above it (median below 5 σ); a stain's mask lies above the
floor by construction. Numbers behind the decision are recorded
(:func:`decision_entry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tibspace.analyses.shield_background import background_at_points

__all__ = ["AF_FRACTION", "AF_MIN_CHANNELS", "AfReference", "af_need", "af_points", "decision_entry",
           "section_grid", "POSITIVE", "ABSENT", "MANUAL"]

#: Smoothing (µm) of the summed channels before the tissue / glass split: larger than a cell, so the split
#: separates the section from glass, not nuclei from cytoplasm.
SECTION_SMOOTH_UM = 10.0
#: Glass is at most this fraction of the section's median summed intensity (else: all section).
GLASS_MAX_RATIO = 0.5

#: Least number of signature samples to measure the granules' spectrum from.
MIN_SPECTRUM_SAMPLES = 50

#: Share of the reference channels a pixel must be bright in to be autofluorescence.
AF_FRACTION = 0.75
#: Least number of implicit reference channels for the test (declared channels: any number).
AF_MIN_CHANNELS = 3
#: Noise floor (σ above the median) that a reference channel's pixel must clear, and that a mask's median
#: pixel must clear for its channel to be ``positive``.
FLOOR_SD = 5.0

POSITIVE = "positive"
ABSENT = "absent"
MANUAL = "manual gate"


@dataclass(frozen=True)
class AfReference:
    """The reference channels of one mask and the granules' spectrum.

    ``channels`` = ((channel index, floor, Background or None, background median), ...); ``need`` = least
    number of them a pixel must be above its floor in to count as autofluorescence. ``scales`` = the
    granules' median excess over background per reference channel and ``own`` = ((channel, Background or
    None, gate, the granules' excess in that channel), ...) for the mask's own channels (empty: granule
    pixels are dropped whatever they hold, see :func:`af_points`).
    """

    channels: tuple
    need: int
    names: tuple
    scales: tuple = ()
    own: tuple = ()
    n_spectrum: int = 0

    def evidence(self) -> dict:
        return {"reference_channels": list(self.names), "min_bright_channels": int(self.need),
                "spectrum_samples": int(self.n_spectrum),
                "spectrum_own": [float(s) for *_, s in self.own] if self.own else None}


def with_spectrum(ref: AfReference, excess: np.ndarray, own_excess: list, own: list) -> AfReference:
    """``ref`` with the granules' spectrum measured on the sample grid.

    ``excess`` (n_ref, n): excess over background of each reference channel at the mask's candidate samples;
    ``own_excess``: the own channels' excess over their background median there (same order as ``own`` =
    [(channel, Background or None, gate)]). The spectrum is the median over the candidates that carry the signature (at least
    ``ref.need`` reference channels above their floor) of each channel's excess; fewer than
    :data:`MIN_SPECTRUM_SAMPLES` such candidates: no spectrum (granule pixels are dropped).
    """
    floors = np.array([f - m for _, f, _, m in ref.channels])[:, None]
    hit = (excess > floors).sum(axis=0) >= ref.need
    n = int(hit.sum())
    if n < MIN_SPECTRUM_SAMPLES:
        return AfReference(ref.channels, ref.need, ref.names, n_spectrum=n)
    scales = np.median(excess[:, hit], axis=1)
    if np.any(scales <= 0):
        return AfReference(ref.channels, ref.need, ref.names, n_spectrum=n)
    own_t = tuple((c, bg, float(g), float(np.median(v[hit]))) for (c, bg, g), v in zip(own, own_excess))
    return AfReference(ref.channels, ref.need, ref.names, tuple(float(x) for x in scales), own_t, n)


def section_grid(total: np.ndarray, grid_step_um: float) -> np.ndarray:
    """The section (tissue, not glass) on the strided grid from the summed channels ``total``.

    Otsu on log1p of the sum smoothed by :data:`SECTION_SMOOTH_UM`; the dark side counts as glass only when
    its median is below :data:`GLASS_MAX_RATIO` of the bright side's and it holds 3-95 % of the grid (a
    field of tissue has no glass: every pixel is section).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> tissue = rng.poisson(40, (100, 100)).astype(float); tissue[:, :30] = rng.poisson(4, (100, 30))
    >>> g = section_grid(tissue, 1.0)
    >>> bool(g[:, 40:].all()), bool(g[:, :20].any())
    (True, False)
    >>> bool(section_grid(rng.poisson(40, (100, 100)).astype(float), 1.0).all())    # all tissue
    True
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    sm = ndi.gaussian_filter(np.asarray(total, np.float64), SECTION_SMOOTH_UM / max(grid_step_um, 1e-9) / 2.0)
    lt = np.log1p(np.clip(sm, 0, None))
    if np.ptp(lt) == 0:
        return np.ones(lt.shape, bool)
    m = lt > threshold_otsu(lt)
    if not (0.05 <= m.mean() <= 0.97) or np.median(sm[~m]) > GLASS_MAX_RATIO * np.median(sm[m]):
        return np.ones(lt.shape, bool)
    return m


def af_need(n_ref: int, declared: bool) -> int:
    """Least number of bright reference channels for an AF pixel; 0 = no test.

    Examples
    --------
    >>> af_need(10, False), af_need(11, False), af_need(2, False), af_need(1, True)
    (8, 9, 0, 1)
    """
    if n_ref == 0 or (not declared and n_ref < AF_MIN_CHANNELS):
        return 0
    return int(math.ceil(AF_FRACTION * n_ref - 1e-9))


def af_points(read, ref: AfReference, ys: np.ndarray, xs: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """Bool per point ``(ys, xs)`` (tile coordinates; tile origin ``y0, x0``): autofluorescence to drop.

    A point carries the signature when at least ``ref.need`` reference channels are above their floor.
    With a measured spectrum, such a point is kept when a stain remains under the granule: for some own
    channel, its value minus the granule's share (its spectrum entry × the granule's amplitude, the
    median over reference channels of excess / spectrum) is still above the gate. ``read(c)`` returns
    channel ``c`` on the tile (raw).
    """
    excess = np.empty((len(ref.channels), len(ys)))
    for k, (c, _, bg, med) in enumerate(ref.channels):
        excess[k] = _flat_points(read(c), bg, ys, xs, y0, x0) - med
    floors = np.array([f - m for _, f, _, m in ref.channels])[:, None]
    hit = (excess > floors).sum(axis=0) >= ref.need
    if not ref.own or not hit.any():
        return hit
    i = np.nonzero(hit)[0]
    amp = np.median(excess[:, i] / np.array(ref.scales)[:, None], axis=0)
    stain = np.zeros(len(i), bool)
    for c, bg, gate, s in ref.own:
        stain |= _flat_points(read(c), bg, ys[i], xs[i], y0, x0) - s * amp > gate
    hit[i[stain]] = False
    return hit


def _flat_points(tile: np.ndarray, bg, ys, xs, y0: int, x0: int) -> np.ndarray:
    v = np.asarray(tile)[ys, xs].astype(np.float64)
    return v if bg is None else v - background_at_points(bg, ys + y0, xs + x0) + bg.level


def decision_entry(gate: float, stats: tuple | None, mask_values: np.ndarray | None, area_fraction: float,
                   method: str, required: bool = False) -> dict:
    """The recorded gate of one mask channel: value, method, decision, evidence, area_fraction.

    ``stats`` = (split, median, σ) of the channel's flattened tissue sample (None for a numeric gate);
    ``mask_values`` = the channel's flattened values at the mask's pixels of the sample grid. A
    co-required channel (``required``) only has to show signal within reach of the mask's pixels, not on
    them: it is ``positive`` when the mask is not empty (its median is recorded, not tested).

    Examples
    --------
    >>> e = decision_entry(12.0, (3.0, 5.0, 1.4), np.array([]), 0.0, "otsu")
    >>> e["decision"], e["evidence"]["median_sd_above_background"]
    ('absent', None)
    >>> decision_entry(40.0, (40.0, 5.0, 1.4), np.array([90.0, 100.0, 200.0]), 0.03, "otsu")["decision"]
    'positive'
    """
    if stats is None:
        return {"value": float(gate), "method": "manual", "decision": MANUAL, "evidence": {},
                "area_fraction": float(area_fraction)}
    split, med, sd = stats
    snr = float((np.median(mask_values) - med) / sd) if mask_values is not None and mask_values.size else None
    decision = POSITIVE if snr is not None and (required or snr >= FLOOR_SD) else ABSENT
    evidence = {"split": float(split) if np.isfinite(split) else None, "background_median": float(med),
                "noise_sd": float(sd), "floor": float(med + FLOOR_SD * sd),
                "set_by": "split" if np.isfinite(split) and split >= med + FLOOR_SD * sd else "noise floor",
                "median_sd_above_background": snr,
                "n_mask_samples": int(mask_values.size) if mask_values is not None else 0}
    return {"value": float(gate), "method": method, "decision": decision, "evidence": evidence,
            "area_fraction": float(area_fraction)}
