"""Phenotyping: per-marker gates and boolean phenotype rules.

Gates are data: each gate is computed once, recorded with how it was obtained, written out with the
results, and can be fed back as a manual value to reproduce a run exactly.

A gate lives on the raw intensity scale of the per-cell mean intensity
column it applies to (so a pathologist can read it off the image); automatic
gates are found on ``log1p`` intensities, where positive and negative
populations of fluorescence/ion-count data are closer to normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tibspace.errors import InputError, PanelError
from tibspace.io.channels import normalise_name
from tibspace.cells.rules import parse_rule
from tibspace.cells.conflicts import marker_margins
from tibspace.cells.presence import NONE, GateDecision, clip_low_tail, decide_gate

GATE_METHODS = ("otsu", "gmm")


@dataclass(frozen=True)
class Gate:
    """One marker's gate and how it was obtained (the audit trail).

    ``decision`` says whether an automatic method found a positive population
    (:mod:`tibspace.cells.presence`); ``evidence`` holds the numbers behind it
    (candidate gate, BIC difference, fold above/below, cells tested).
    """

    marker: str
    column: str
    method: str  # "manual" | "otsu" | "gmm"
    value: float
    n_positive: int
    n_cells: int
    decision: str = ""
    evidence: dict = field(default_factory=dict, compare=False)

    @property
    def fraction_positive(self) -> float:
        return self.n_positive / self.n_cells if self.n_cells else float("nan")

    def to_dict(self) -> dict:
        nan = float("nan")
        ev = self.evidence
        return {
            "marker": self.marker,
            "column": self.column,
            "method": self.method,
            "value": float(self.value),
            "n_positive": int(self.n_positive),
            "n_cells": int(self.n_cells),
            "fraction_positive": float(self.fraction_positive),
            "decision": self.decision,
            "percent_positive": 100.0 * float(self.fraction_positive),
            "candidate_value": float(ev.get("candidate_value", nan)),
            "delta_bic": float(ev.get("delta_bic", nan)),
            "fold_above_below": float(ev.get("fold_above_below", nan)),
            "n_tested": int(ev.get("n_tested", 0)),
        }


def auto_gate(values, method: str = "otsu", *, marker: str = "marker", seed: int = 0) -> float:
    """Automatic positivity gate for one marker's per-cell intensities.

    Parameters
    ----------
    values : array_like
        Per-cell mean intensities (raw scale, ≥ 0).
    method : {"otsu", "gmm"}
        ``"otsu"``: Otsu's threshold on ``log1p(values)``.
        ``"gmm"``: two-component Gaussian mixture on ``log1p(values)``; the
        gate is where the posterior of the brighter component reaches 0.5
        between the two means.
    marker : str
        Name used in error messages.
    seed : int
        Seed of the mixture fit's initialisation.

    Returns
    -------
    float
        The gate on the raw intensity scale (``expm1`` of the log gate).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v = np.concatenate([rng.lognormal(1, 0.3, 900), rng.lognormal(4, 0.3, 100)])
    >>> 3 < auto_gate(v, "otsu") < 30
    True
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        raise InputError(f"cannot gate marker {marker!r}: fewer than 2 cells with finite intensities")
    lv = np.log1p(np.clip(v, 0, None))
    lo, hi = float(lv.min()), float(lv.max())
    if hi - lo < 1e-9:
        raise InputError(
            f"cannot gate marker {marker!r} automatically: every cell has the same intensity "
            f"({float(v[0]):.4g}); set a manual gate = <number> for it in the panel [markers]")
    if method == "otsu":
        from skimage.filters import threshold_otsu

        t = float(threshold_otsu(lv, nbins=512))
    elif method == "gmm":
        from sklearn.mixture import GaussianMixture

        x = lv.reshape(-1, 1)
        if x.shape[0] > 200_000:  # a seeded subsample keeps the fit fast and bounded
            x = x[np.random.default_rng(seed).choice(x.shape[0], 200_000, replace=False)]
        gm = GaussianMixture(2, random_state=seed).fit(x)
        order = np.argsort(gm.means_.ravel())
        m_lo, m_hi = gm.means_.ravel()[order]
        grid = np.linspace(m_lo, m_hi, 2001).reshape(-1, 1)
        post_hi = gm.predict_proba(grid)[:, order[1]]
        above = np.nonzero(post_hi >= 0.5)[0]
        t = float(grid[above[0], 0]) if above.size else float((m_lo + m_hi) / 2)
    else:
        raise PanelError(f"unknown gate method {method!r} for marker {marker!r}; use a number, "
                         f"'otsu' or 'gmm'")
    return float(np.expm1(t))


def auto_gate_decision(values, method: str = "otsu", *, marker: str = "marker",
                       seed: int = 0) -> GateDecision:
    """Automatic gate for per-cell intensities that knows when there is nothing to gate.

    The dimmest 1 % of cells are raised to the first percentile (a few blank
    cells must not be the "negative" side of a log-scale split), the
    ``method`` gate (:func:`auto_gate`) is the candidate, and
    :func:`~tibspace.cells.presence.decide_gate` keeps it only if the marker
    has a positive population; otherwise the gate goes above the negatives.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> d = auto_gate_decision(rng.lognormal(1.5, 0.3, 2000), "otsu")
    >>> d.decision, bool(np.mean(rng.lognormal(1.5, 0.3, 2000) > d.value) < 0.01)
    ('no positive population', True)
    """
    v = np.asarray(values, dtype=np.float64)
    v = clip_low_tail(np.clip(v[np.isfinite(v)], 0, None))
    return decide_gate(v, auto_gate(v, method, marker=marker, seed=seed), seed=seed)


def marker_column(cells: pd.DataFrame, marker: str, channel: str, compartment: str = "cell") -> str:
    """Name of the cell-table column a marker's gate applies to.

    ``compartment="cell"`` uses the whole-cell mean (column named after the
    channel); ``"nucleus"`` uses ``<channel>_nucleus``.
    """
    col = channel if compartment == "cell" else f"{channel}_nucleus"
    if col not in cells.columns:
        raise InputError(
            f"marker {marker!r}: the cell table has no column {col!r} "
            f"(compartment={compartment!r}); columns are: {', '.join(map(str, cells.columns[:40]))}")
    return col


def compute_gates(cells: pd.DataFrame, markers: Mapping, channel_of: Mapping[str, str] | None = None,
                  *, seed: int = 0) -> dict[str, Gate]:
    """Compute one :class:`Gate` per marker spec.

    Parameters
    ----------
    cells : DataFrame
        Cell table with one mean-intensity column per channel.
    markers : mapping of str to MarkerSpec
        ``spec.gate`` is a number (manual), ``"otsu"`` or ``"gmm"``;
        ``spec.compartment`` is ``"cell"`` or ``"nucleus"``.
    channel_of : mapping, optional
        Marker name → channel (column) name in ``cells`` (after alias
        resolution). Defaults to the marker name itself.
    seed : int
        Seed for mixture fits.
    """
    gates: dict[str, Gate] = {}
    for name, spec in markers.items():
        channel = (channel_of or {}).get(name, name)
        col = marker_column(cells, name, channel, getattr(spec, "compartment", "cell"))
        vals = cells[col].to_numpy(dtype=np.float64)
        g = spec.gate
        finite = vals[np.isfinite(vals)]
        evidence: dict = {}
        if isinstance(g, (int, float)) and not isinstance(g, bool):
            method, value, decision = "manual", float(g), "manual gate"
        elif finite.size and np.ptp(finite) == 0:
            # A blank channel (e.g. a marker absent from this field) means "nobody
            # positive", not a failed run: one empty field must not stop a cohort.
            method, value = f"{g} (constant intensity: no cell positive)", float(finite[0])
            decision = NONE
        else:
            d = auto_gate_decision(vals, str(g), marker=name, seed=seed)
            method, value, decision, evidence = str(g), d.value, d.decision, d.evidence()
        gates[name] = Gate(name, col, method, value, int(np.count_nonzero(vals > value)),
                           int(vals.size), decision, evidence)
    return gates


def positivity(cells: pd.DataFrame, gates: Mapping[str, Gate]) -> pd.DataFrame:
    """Boolean table: one ``<marker>`` column, True where intensity > gate."""
    return pd.DataFrame({m: cells[g.column].to_numpy() > g.value for m, g in gates.items()},
                        index=cells.index)


def assign_phenotypes(pos: pd.DataFrame, rules: Mapping[str, str], default: str = "other",
                      margins: Mapping[str, np.ndarray] | None = None, *, return_resolved: bool = False):
    """Apply ordered boolean rules; the first rule a cell satisfies names it.

    With ``margins`` (:func:`tibspace.cells.conflicts.marker_margins`), a cell
    satisfying rules of two lineages (rules that share no positive marker) takes
    the one whose markers stand more clearly above their gates
    (:mod:`tibspace.cells.conflicts`).

    Parameters
    ----------
    pos : DataFrame
        Marker positivity (from :func:`positivity`).
    rules : mapping of str to str
        Ordered ``phenotype -> rule`` (e.g. ``"CD3+ & CD8+"``).
    default : str
        Phenotype of cells that match no rule.
    margins : mapping, optional
        Per-marker margins above the gate; None: first match only.
    return_resolved : bool
        Also return the phenotype the first match gave and a mask of the cells a conflict decided.

    Examples
    --------
    >>> pos = pd.DataFrame({"CD3": [True, True, False], "CD8": [True, False, False]})
    >>> assign_phenotypes(pos, {"CD8_T": "CD3+ & CD8+", "other_T": "CD3+ & CD8-"}).tolist()
    ['CD8_T', 'other_T', 'other']
    """
    from tibspace.cells.conflicts import resolve_lineage_conflicts

    n = len(pos)
    env = {m: pos[m].to_numpy(dtype=bool) for m in pos.columns}
    names = list(rules)
    hits = np.zeros((n, len(names)), bool)
    for k, rule in enumerate(rules.values()):
        hits[:, k] = np.asarray(parse_rule(rule)(env), dtype=bool)
    first = np.where(hits.any(axis=1), np.argmax(hits, axis=1) if names else -1, -1)
    winner, resolved = (first, np.zeros(n, bool)) if margins is None or not names else \
        resolve_lineage_conflicts(hits, rules, margins)
    label = np.array([*names, default], dtype=object)
    out = label[winner]                       # -1 -> default
    if return_resolved:
        return out, label[first], resolved
    return out


@dataclass
class GatingResult:
    """Phenotypes plus the gates that produced them and warnings about the run.

    ``warnings`` are one-line messages (a gate outside its marker's intensity
    range, a rule no cell can satisfy, a role with zero cells); the pipeline
    puts them in ``metrics.json["warnings"]``.
    """

    phenotype: np.ndarray
    positivity: pd.DataFrame
    gates: dict[str, Gate] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lineage_conflicts: dict = field(default_factory=dict)

    def gates_frame(self) -> pd.DataFrame:
        return pd.DataFrame([g.to_dict() for g in self.gates.values()])

    def counts(self) -> dict[str, int]:
        return phenotype_counts(self.phenotype)


def gate_cells(cells: pd.DataFrame, panel, channel_of: Mapping[str, str] | None = None,
               *, seed: int = 0) -> GatingResult:
    """Gate every panel marker and assign phenotypes by the panel's rules.

    Parameters
    ----------
    cells : DataFrame
        Cell table (mean intensity per channel).
    panel : tibspace.cells.Panel
        Supplies ``markers``, ordered ``phenotypes`` rules,
        ``default_phenotype`` and ``roles``.
    channel_of : mapping, optional
        Marker → channel column name (from ``Panel.resolve_channels``).
    seed : int
        Seed for mixture-model gates.

    Returns
    -------
    GatingResult
        Phenotype per cell, positivity per marker, the gates and warnings.

    Examples
    --------
    >>> import pandas as pd
    >>> from tibspace.cells import Panel
    >>> panel = Panel.from_dict({"markers": {"CD8": {"gate": 30}}, "phenotypes": {"CD8_T": "CD8+"}})
    >>> g = gate_cells(pd.DataFrame({"CD8": [5.0, 50.0, 80.0]}), panel)
    >>> g.phenotype.tolist(), g.gates["CD8"].value
    (['other', 'CD8_T', 'CD8_T'], 30.0)
    """
    if len(cells) == 0:
        raise InputError("cannot phenotype an empty cell table (0 cells were found)")
    gates = compute_gates(cells, panel.markers, channel_of, seed=seed)
    pos = positivity(cells, gates)
    margins = marker_margins(cells, gates) if panel.lineage_conflicts == "margin" else None
    ph, first, resolved = assign_phenotypes(pos, panel.phenotypes, panel.default_phenotype, margins,
                                            return_resolved=True)
    warnings = (gate_range_warnings(cells, gates) + unsatisfiable_rule_warnings(panel.phenotypes)
                + empty_role_warnings(panel, phenotype_counts(ph)))
    return GatingResult(ph, pos, gates, warnings, conflicts_summary(first, ph, resolved, panel.lineage_conflicts))


def conflicts_summary(first: np.ndarray, phenotype: np.ndarray, resolved: np.ndarray, rule: str) -> dict:
    """What lineage-conflict resolution changed: the rule, the cell count, and counts per change."""
    pairs = pd.Series([f"{a} -> {b}" for a, b in zip(first[resolved], phenotype[resolved])], dtype=object)
    return {"rule": rule, "n_cells": int(resolved.sum()),
            "changes": {k: int(v) for k, v in pairs.value_counts().sort_index().items()}}


def gate_range_warnings(cells: pd.DataFrame, gates: Mapping[str, Gate]) -> list[str]:
    """A gate below every cell or at/above every cell of its column (all or none
    positive), except where "no positive population" was the decision."""
    out = []
    for m, g in gates.items():
        v = cells[g.column].to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        if not v.size or g.decision == NONE:
            continue
        lo, hi = float(v.min()), float(v.max())
        if g.value < lo or g.value >= hi:
            out.append(f"marker {m}: {g.method} gate {g.value:.6g} is outside the intensity range "
                       f"of column {g.column!r} ({lo:.6g}..{hi:.6g}); "
                       f"{'every' if g.value < lo else 'no'} cell is {m}+")
    return out


def unsatisfiable_rule_warnings(rules: Mapping[str, str], max_markers: int = 16) -> list[str]:
    """Rules false for every combination of their markers (e.g. ``CD3+ & CD3-``)."""
    out = []
    for name, text in rules.items():
        rule = parse_rule(text)
        keys = sorted({normalise_name(m) for m in rule.markers})
        if len(keys) > max_markers:
            continue
        combos = np.array(list(product([False, True], repeat=len(keys))), dtype=bool).reshape(-1, len(keys))
        env = {k: combos[:, i] for i, k in enumerate(keys)}
        if not np.asarray(rule(env), dtype=bool).any():
            out.append(f"phenotype {name}: rule {text!r} can never be true (no combination of "
                       f"{', '.join(sorted(rule.markers))} satisfies it); 0 cells")
    return out


def empty_role_warnings(panel, counts: Mapping[str, int]) -> list[str]:
    """Roles whose phenotypes the panel defines but that got zero cells."""
    defined = set(panel.phenotypes) | {panel.default_phenotype}
    out = []
    for role, names in panel.roles.items():
        mine = [p for p in names if p in defined]
        if mine and sum(int(counts.get(p, 0)) for p in mine) == 0:
            out.append(f"role {role} ({', '.join(mine)}): 0 cells after gating; analyses "
                       f"using it have nothing to measure")
    return out


def gate_values(gates: Mapping[str, Gate]) -> dict[str, float]:
    """``marker -> gate value``: the numbers to put back in a panel to re-run exactly."""
    return {m: float(g.value) for m, g in gates.items()}


def phenotype_counts(phenotypes: Sequence[str]) -> dict[str, int]:
    vals, cnt = np.unique(np.asarray(phenotypes, dtype=str), return_counts=True)
    return {str(v): int(c) for v, c in zip(vals, cnt)}


def phenotype_names(panel_or_phenotypes) -> set[str]:
    """Phenotype names defined by a panel, present in a cell table, or listed.

    Accepts a :class:`~tibspace.panel.Panel` (its rules), a DataFrame (its
    ``phenotype`` column), a mapping (its keys) or any iterable of names.
    """
    obj = panel_or_phenotypes
    for attr in ("phenotypes", "phenotype_names"):
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
            break
    if isinstance(obj, pd.DataFrame):
        obj = obj["phenotype"].unique()
    if isinstance(obj, Mapping):
        obj = obj.keys()
    return {str(p) for p in obj}


def as_phenotype_list(types, what: str) -> list[str]:
    """A phenotype or list of phenotypes as a non-empty list of names (for analysis arguments)."""
    if isinstance(types, str):
        types = (types,)
    names = [str(x) for x in types]
    if not names:
        raise InputError(f"{what} is empty; list at least one phenotype (e.g. ('CD8_T',))")
    return names
