"""The phenotype rule language: tokenizer, recursive-descent parser, evaluator.

A rule names markers with a ``+``/``-`` suffix and combines them with
``&``/``and``, ``|``/``or``, ``not``/``~``/``!`` and parentheses, with the
precedence of Python (``not`` binds tighter than ``&``, which binds tighter
than ``|``). A parsed :class:`Rule` maps ``{marker: bool array}`` to a bool
array (one entry per cell). Rules are never passed to ``eval``.

Errors are :class:`~tibspace.errors.PanelError` with the 1-based character
position of the fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from tibspace.errors import PanelError
from tibspace.io.channels import normalise_name

__all__ = ["Rule", "parse_rule", "rule_markers"]

# name characters of a marker; '-' is allowed inside names (HLA-DR), a
# trailing '-' is the negative sign.
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-/:]+")
_KEYWORDS = {"not": "NOT", "and": "AND", "or": "OR"}


class _RuleSyntax(Exception):
    def __init__(self, msg: str, pos: int):
        super().__init__(msg)
        self.msg = msg
        self.pos = pos


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    """Tokens ``(kind, value, position)``; kinds LIT, AND, OR, NOT, LP, RP, END."""
    toks: list[tuple[str, Any, int]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "&|()~!":
            kind = {"&": "AND", "|": "OR", "(": "LP", ")": "RP", "~": "NOT", "!": "NOT"}[ch]
            # tolerate the doubled C forms && and ||
            if ch in "&|" and i + 1 < n and text[i + 1] == ch:
                i += 1
            toks.append((kind, ch, i))
            i += 1
            continue
        m = _NAME_CHARS.match(text, i)
        if not m:
            raise _RuleSyntax(f"unexpected character {ch!r}", i)
        word = m.group(0)
        end = m.end()
        if word.lower() in _KEYWORDS and not (end < n and text[end] == "+"):
            toks.append((_KEYWORDS[word.lower()], word, i))
            i = end
            continue
        if end < n and text[end] == "+":
            toks.append(("LIT", (word, True), i))
            i = end + 1
        elif word.endswith("-") and len(word) > 1:
            toks.append(("LIT", (word[:-1], False), i))
            i = end
        else:
            raise _RuleSyntax(f"marker {word!r} needs a + or - sign (e.g. {word}+)", i)
    toks.append(("END", None, n))
    return toks


class _Parser:
    """Recursive descent: or_expr := and_expr (OR and_expr)*;
    and_expr := not_expr (AND not_expr)*; not_expr := NOT not_expr | atom;
    atom := LIT | '(' or_expr ')'."""

    def __init__(self, toks: list[tuple[str, Any, int]]):
        self.toks = toks
        self.i = 0

    def peek(self) -> tuple[str, Any, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, Any, int]:
        t = self.toks[self.i]
        self.i += 1
        return t

    def parse(self) -> tuple:
        node = self.or_expr()
        kind, val, pos = self.peek()
        if kind != "END":
            raise _RuleSyntax(f"unexpected {val!r}" if kind != "LIT" else
                              f"unexpected marker {val[0]!r} (missing & or |?)", pos)
        return node

    def or_expr(self) -> tuple:
        node = self.and_expr()
        while self.peek()[0] == "OR":
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> tuple:
        node = self.not_expr()
        while self.peek()[0] == "AND":
            self.take()
            node = ("and", node, self.not_expr())
        return node

    def not_expr(self) -> tuple:
        if self.peek()[0] == "NOT":
            self.take()
            return ("not", self.not_expr())
        return self.atom()

    def atom(self) -> tuple:
        kind, val, pos = self.take()
        if kind == "LIT":
            return ("lit", val[0], val[1])
        if kind == "LP":
            node = self.or_expr()
            k2, v2, p2 = self.take()
            if k2 != "RP":
                raise _RuleSyntax("missing ')'" if k2 == "END" else f"expected ')' but found "
                                  f"{v2 if k2 != 'LIT' else v2[0]!r}", p2)
            return node
        if kind == "END":
            raise _RuleSyntax("rule ends too early (a marker is missing)", pos)
        raise _RuleSyntax(f"expected a marker such as CD8+ but found {val!r}", pos)


def _lits(node: tuple) -> Iterable[str]:
    if node[0] == "lit":
        yield node[1]
    else:
        for child in node[1:]:
            yield from _lits(child)


def _lookup(env: Mapping[str, Any], name: str, text: str) -> np.ndarray:
    if name in env:
        return np.asarray(env[name], dtype=bool)
    key = normalise_name(name)
    for k, v in env.items():
        if normalise_name(k) == key:
            return np.asarray(v, dtype=bool)
    raise PanelError(f"phenotype rule {text!r} uses marker {name!r} but no positivity was "
                     f"computed for it; markers gated: {', '.join(map(str, env)) or 'none'}")


def _evaluate(node: tuple, env: Mapping[str, Any], text: str) -> np.ndarray:
    op = node[0]
    if op == "lit":
        v = _lookup(env, node[1], text)
        return v if node[2] else ~v
    if op == "not":
        return ~_evaluate(node[1], env, text)
    a = _evaluate(node[1], env, text)
    b = _evaluate(node[2], env, text)
    return (a & b) if op == "and" else (a | b)


@dataclass(frozen=True)
class Rule:
    """A parsed phenotype rule; call it with ``{marker: bool array}``.

    Examples
    --------
    >>> r = parse_rule("CD3+ & not CD8+ | FOXP3+")
    >>> sorted(r.markers)
    ['CD3', 'CD8', 'FOXP3']
    >>> r({"CD3": [1, 1, 0], "CD8": [0, 1, 0], "FOXP3": [0, 0, 1]}).tolist()
    [True, False, True]
    """

    text: str
    tree: tuple = field(repr=False)

    @property
    def markers(self) -> set[str]:
        return set(_lits(self.tree))

    def __call__(self, positivity: Mapping[str, Any]) -> np.ndarray:
        return _evaluate(self.tree, positivity, self.text)


def parse_rule(text: str, markers: Optional[Iterable[str]] = None,
               where: str = "") -> Rule:
    """Parse a phenotype rule such as ``"(aSMA+ | FAP+) & not HepPar1+"``.

    Parameters
    ----------
    text : str
        The rule.
    markers : iterable of str, optional
        Known marker names; a rule using another marker is a
        :class:`PanelError`. Names match case-insensitively, ignoring
        ``- _ space / .``.
    where : str
        Prefix for error messages (e.g. the panel file and phenotype).

    Returns
    -------
    Rule
        Callable mapping ``{marker: bool array}`` to a bool array.

    Raises
    ------
    PanelError
        Syntax error (with the 1-based character position) or unknown marker.

    Examples
    --------
    >>> parse_rule("CD3+ & CD8-")({"CD3": [True, True], "CD8": [True, False]}).tolist()
    [False, True]
    >>> parse_rule("CD3+ & & CD8+")
    Traceback (most recent call last):
    ...
    tibspace.errors.PanelError: phenotype rule 'CD3+ & & CD8+': expected a marker such as CD8+ but found '&' at character 8
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(text, str):
        raise PanelError(f"{prefix}phenotype rule must be a string such as \"CD3+ & CD8+\", "
                         f"got {text!r}")
    try:
        tree = _Parser(_tokenize(text)).parse()
    except _RuleSyntax as exc:
        raise PanelError(f"{prefix}phenotype rule {text!r}: {exc.msg} at character "
                         f"{exc.pos + 1}") from None
    rule = Rule(text, tree)
    if markers is not None:
        known = {normalise_name(m) for m in markers}
        for m in sorted(rule.markers):
            if normalise_name(m) not in known:
                raise PanelError(f"{prefix}phenotype rule {text!r} uses marker {m!r}, which is "
                                 f"not in [markers] ({', '.join(markers) or 'empty'}); add "
                                 f"{m} = {{ gate = \"otsu\" }} under [markers]")
    return rule


def rule_markers(text: str) -> set[str]:
    """The marker names a rule uses (as written).

    Examples
    --------
    >>> sorted(rule_markers("(aSMA+ | FAP+) & not HepPar1+"))
    ['FAP', 'HepPar1', 'aSMA']
    """
    return parse_rule(text).markers

