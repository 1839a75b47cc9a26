"""Lineage conflicts: a cell that satisfies the rules of two unrelated phenotypes.

Ordered rules name a cell by the first rule it satisfies. That order is the
panel author's intent where rules share a marker (``Treg = CD3+ & FOXP3+``
listed before ``CD4_T = CD3+ & CD4+``: the subset first). Where two satisfied
rules share no positive marker (``tumour = HepPar1+`` and ``CD8_T = CD3+ &
CD8+``), the cell carries two lineages at once: in tissue that is almost
always signal spilled from a neighbour into a small cell's whole-cell mean (a
T cell inside a tumour nest reads HepPar1 just above its gate, while its CD3
and CD8 stand far above theirs), or a doublet. Such a cell takes the rule
whose markers stand more clearly above their gates.

*Margin* of a marker in a cell: ``(log1p(v) − log1p(g)) / s``, the distance
above the gate ``g`` in units of the negative cells' noise ``s`` (1.4826 ×
MAD of log1p intensities of the cells at or below the gate; the same log1p
scale as the automatic gates). A rule's margin follows its formula:
``M+`` → margin, ``M-`` → −margin, ``not`` → −, ``&`` → min, ``|`` → max, so
it is positive exactly where the rule holds. Rules are grouped into
*lineages* (rules linked by a shared positive marker); within a lineage the
first satisfied rule wins as before; between lineages the highest margin wins
(ties: the earlier rule).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from tibspace.cells.rules import parse_rule
from tibspace.io.channels import normalise_name

__all__ = ["marker_margins", "rule_lineages", "resolve_lineage_conflicts"]


def marker_margins(cells: pd.DataFrame, gates: Mapping) -> dict[str, np.ndarray]:
    """Per marker, each cell's distance above its gate in units of the negatives' noise.

    Examples
    --------
    >>> from types import SimpleNamespace as G
    >>> cells = pd.DataFrame({"CD8": [1.0, 2.0, 3.0, 2.0, 100.0]})
    >>> m = marker_margins(cells, {"CD8": G(column="CD8", value=5.0)})["CD8"]
    >>> bool(m[4] > 5 > 0 > m[0])
    True
    """
    out = {}
    for name, g in gates.items():
        v = np.log1p(np.clip(cells[g.column].to_numpy(np.float64), 0.0, None))
        gate = np.log1p(max(float(g.value), 0.0))
        neg = v[np.isfinite(v) & (v <= gate)]
        s = 1.4826 * float(np.median(np.abs(neg - np.median(neg)))) if neg.size >= 3 else 0.0
        if not s > 0:
            fin = v[np.isfinite(v)]
            s = float(np.subtract(*np.percentile(fin, [75, 25]))) / 1.349 if fin.size else 0.0
        out[name] = (v - gate) / (s if s > 0 else 1.0)
    return out


def _margin(node: tuple, env: Mapping[str, np.ndarray]) -> np.ndarray:
    op = node[0]
    if op == "lit":
        m = _lookup(env, node[1])
        return m if node[2] else -m
    if op == "not":
        return -_margin(node[1], env)
    a, b = _margin(node[1], env), _margin(node[2], env)
    return np.minimum(a, b) if op == "and" else np.maximum(a, b)


def _lookup(env: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name in env:
        return env[name]
    key = normalise_name(name)
    return next(v for k, v in env.items() if normalise_name(k) == key)


def _positive_markers(node: tuple, polarity: bool = True) -> set[str]:
    op = node[0]
    if op == "lit":
        return {normalise_name(node[1])} if node[2] == polarity else set()
    if op == "not":
        return _positive_markers(node[1], not polarity)
    return _positive_markers(node[1], polarity) | _positive_markers(node[2], polarity)


def rule_lineages(rules: Mapping[str, str]) -> list[int]:
    """Lineage index per rule (in order): rules linked by a shared positive marker share one.

    Examples
    --------
    >>> rule_lineages({"tumour": "HepPar1+", "Treg": "CD3+ & FOXP3+", "CD4_T": "CD3+ & CD4+",
    ...                "CAF": "(aSMA+ | FAP+) & not HepPar1+"})
    [0, 1, 1, 2]
    """
    pos = [_positive_markers(parse_rule(t).tree) for t in rules.values()]
    parent = list(range(len(pos)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(pos)):
        for j in range(i):
            if pos[i] & pos[j]:
                parent[root(i)] = root(j)
    roots = [root(i) for i in range(len(pos))]
    order = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [order[r] for r in roots]


def resolve_lineage_conflicts(hits: np.ndarray, rules: Mapping[str, str],
                              margins: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The rule that names each cell, and whether a lineage conflict decided it.

    Parameters
    ----------
    hits : bool array (n_cells, n_rules)
        Which rules each cell satisfies (columns in rule order).
    rules : mapping
        Ordered ``phenotype -> rule``.
    margins : mapping
        :func:`marker_margins`.

    Returns
    -------
    winner : int array (n_cells,)
        Rule index per cell, −1 for none.
    resolved : bool array (n_cells,)
        True where the winner is not the first satisfied rule.

    Examples
    --------
    >>> rules = {"tumour": "HepPar1+", "CD8_T": "CD3+ & CD8+"}
    >>> hits = np.array([[True, True], [True, True], [True, False]])
    >>> m = {"HepPar1": np.array([0.2, 9.0, 9.0]), "CD3": np.array([6.0, 6.0, -3.0]),
    ...      "CD8": np.array([5.0, 5.0, -3.0])}
    >>> w, r = resolve_lineage_conflicts(hits, rules, m)
    >>> w.tolist(), r.tolist()
    ([1, 0, 0], [True, False, False])
    """
    n, k = hits.shape
    first = np.where(hits.any(axis=1), np.argmax(hits, axis=1), -1)
    winner = first.copy()
    lineage = np.asarray(rule_lineages(rules))
    multi = np.flatnonzero((hits.sum(axis=1) >= 2))
    if multi.size == 0 or len(set(lineage.tolist())) < 2:
        return winner, np.zeros(n, bool)
    sub = hits[multi]
    env = {m: np.asarray(v)[multi] for m, v in margins.items()}
    trees = [parse_rule(t).tree for t in rules.values()]
    best = np.full(multi.size, -np.inf)
    best_rule = first[multi].copy()
    for lin in dict.fromkeys(lineage.tolist()):
        cols = np.flatnonzero(lineage == lin)
        lin_hits = sub[:, cols]
        has = lin_hits.any(axis=1)
        if not has.any():
            continue
        lead = cols[np.argmax(lin_hits, axis=1)]          # the lineage's first satisfied rule
        score = np.full(multi.size, -np.inf)
        for c in np.unique(lead[has]):
            sel = has & (lead == c)
            score[sel] = _margin(trees[c], {m: v[sel] for m, v in env.items()})
        better = has & ((score > best) | ((score == best) & (lead < best_rule)))
        best[better], best_rule[better] = score[better], lead[better]
    winner[multi] = best_rule
    return winner, winner != first
