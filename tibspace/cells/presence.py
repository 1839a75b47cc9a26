"""Does a marker have a positive population at all? The test behind every automatic gate.

An automatic threshold (Otsu, a two-component mixture) always splits, even a
marker no cell expresses: it then lands inside the negative population, whose
upper part (cross-talk from a neighbouring channel, spill from bright
neighbours) becomes "positive". :func:`decide_gate` first asks whether a
positive population exists, on ``log1p`` of the per-cell mean intensities:

- evidence of two populations: BIC of a 1- minus a 2-component Gaussian
  mixture (``delta_bic``; > :data:`MIN_DELTA_BIC` is "very strong" evidence,
  Kass & Raftery 1995);
- and a real dynamic range: the median raw intensity of the cells above the
  candidate gate is at least :data:`MIN_FOLD` times that of the cells below
  (``fold``). Channel cross-talk gives folds of 1.4-1.65, stained populations
  2.0-21 (see ``docs/validation/cells.md``).

When either fails, the gate goes above the negative population: median +
:data:`TAIL_K` × MAD (scaled to σ) of the log intensities of the cells the
mixture puts in its brighter component (all cells if one component fits): a
Gaussian negative population has 0.003 % of cells above it, and the heavier
tails of uneven background stay below 1 %. Gates are returned
on the raw intensity scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GateDecision", "decide_gate", "FOUND", "NONE", "MIN_DELTA_BIC", "MIN_FOLD", "TAIL_K",
           "MIN_CELLS"]

FOUND = "positive population found"
NONE = "no positive population"
TOO_FEW = "too few cells to test (candidate gate kept)"

#: BIC(1 component) − BIC(2 components) above which two populations are accepted.
MIN_DELTA_BIC = 10.0
#: Least ratio of median intensity above / below the gate for a stained population.
MIN_FOLD = 1.8
#: Gate above a negative population: median + TAIL_K·σ (σ = 1.4826·MAD) of its log intensities.
TAIL_K = 4.0
#: Fewer finite cells than this: no test, the candidate gate is kept.
MIN_CELLS = 20
#: Cells used for the mixture fits (seeded subsample beyond it).
_FIT_CELLS = 20_000
#: Share of the dimmest cells raised to the first percentile before gating, so a few blank
#: (zero) cells do not become the "negative population" of a log-scale threshold.
LOW_CLIP_QUANTILE = 0.01


@dataclass(frozen=True)
class GateDecision:
    """An automatic gate with the evidence for it (raw intensity scale)."""

    value: float
    decision: str
    candidate: float
    delta_bic: float
    fold: float
    n: int

    def evidence(self) -> dict:
        return {"decision": self.decision, "candidate_value": float(self.candidate),
                "delta_bic": float(self.delta_bic), "fold_above_below": float(self.fold),
                "n_tested": int(self.n)}


def clip_low_tail(values: np.ndarray) -> np.ndarray:
    """Values below the :data:`LOW_CLIP_QUANTILE` quantile raised to it."""
    if values.size == 0:
        return values
    return np.maximum(values, np.quantile(values, LOW_CLIP_QUANTILE))


def _fit_subsample(x: np.ndarray, seed: int) -> np.ndarray:
    if x.size > _FIT_CELLS:
        x = x[np.random.default_rng(seed).choice(x.size, _FIT_CELLS, replace=False)]
    return x.reshape(-1, 1)


def _mixtures(x: np.ndarray, seed: int):
    """(BIC1 − BIC2, the 2-component fit) on log intensities."""
    from sklearn.mixture import GaussianMixture

    xs = _fit_subsample(x, seed)
    if np.ptp(xs) < 1e-9:
        return 0.0, None
    g1 = GaussianMixture(1, random_state=seed).fit(xs)
    g2 = GaussianMixture(2, random_state=seed).fit(xs)
    return float(g1.bic(xs) - g2.bic(xs)), g2


def _fold(v: np.ndarray, gate: float) -> float:
    """Median intensity above the gate over median below (inf if below is 0)."""
    above = v > gate
    if not above.any() or above.all():
        return float("nan")
    hi, lo = float(np.median(v[above])), float(np.median(v[~above]))
    return hi / lo if lo > 0 else float("inf")


def _negative_upper_tail(x: np.ndarray, g2, delta_bic: float) -> float:
    """Log gate above the brightest negative sub-population (see module docstring)."""
    part = x
    if g2 is not None and delta_bic > MIN_DELTA_BIC:
        top = int(np.argmax(g2.means_.ravel()))
        member = g2.predict(x.reshape(-1, 1)) == top
        if member.sum() >= 3:
            part = x[member]
    med = float(np.median(part))
    sigma = 1.4826 * float(np.median(np.abs(part - med)))
    return med + TAIL_K * sigma


def decide_gate(values, candidate: float, *, seed: int = 0) -> GateDecision:
    """Keep an automatic gate if the marker has a positive population, else move it above the negatives.

    Parameters
    ----------
    values : array_like
        Per-cell mean intensities (raw scale); non-finite values are ignored.
    candidate : float
        The gate of the automatic method (Otsu or mixture), raw scale.
    seed : int
        Seed of the mixture fits and of the subsample beyond 20,000 cells.

    Returns
    -------
    GateDecision
        ``value`` is ``candidate`` when a positive population is found (or there
        are fewer than :data:`MIN_CELLS` cells), otherwise the upper tail of the
        negative population (never below ``candidate``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> neg = rng.lognormal(1.5, 0.3, 950)
    >>> d = decide_gate(np.r_[neg, rng.lognormal(4, 0.3, 50)], 10.0)
    >>> d.decision, d.value
    ('positive population found', 10.0)
    >>> spill = np.r_[neg, rng.lognormal(2.0, 0.2, 150)]   # a dim shoulder, nobody stained
    >>> d = decide_gate(spill, 5.5)
    >>> d.decision, round(100 * float(np.mean(spill > d.value)), 1) <= 1.0
    ('no positive population', True)
    """
    v = np.asarray(values, dtype=np.float64)
    v = np.clip(v[np.isfinite(v)], 0, None)
    if v.size < MIN_CELLS:
        return GateDecision(float(candidate), TOO_FEW, float(candidate), float("nan"),
                            _fold(v, candidate), int(v.size))
    x = np.log1p(v)
    delta_bic, g2 = _mixtures(x, seed)
    fold = _fold(v, candidate)
    if delta_bic > MIN_DELTA_BIC and fold >= MIN_FOLD:
        return GateDecision(float(candidate), FOUND, float(candidate), delta_bic, fold, int(v.size))
    tail = float(np.expm1(_negative_upper_tail(x, g2, delta_bic)))
    return GateDecision(max(tail, float(candidate)), NONE, float(candidate), delta_bic, fold,
                        int(v.size))
