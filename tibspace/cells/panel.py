"""The marker panel: channels, gates, phenotype rules, roles, masks, parameters.

A panel is a TOML file (see ``docs/architecture.md``)::

    [image]
    pixel_size_um = 0.5
    [channels]
    nuclear = ["DAPI"]
    [channels.aliases]
    PanCK = ["PanKRT", "pan-cytokeratin"]
    [markers]
    CD3 = { gate = "otsu" }
    CD8 = { gate = 35.0 }
    [phenotypes]
    CD8_T = "CD3+ & CD8+"
    default = "other"

Phenotype rules use markers with a ``+``/``-`` suffix, ``&``/``and``,
``|``/``or``, ``not``/``~``/``!`` and parentheses, with the precedence of
Python (``not`` binds tighter than ``&``, which binds tighter than ``|``).
Rules are parsed by a small recursive-descent parser (never ``eval``).

Every error is a :class:`~tibspace.errors.PanelError` with a one-line message
naming the panel file and the offending entry.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from tibspace.errors import PanelError
from tibspace.io.channels import normalise_name

__all__ = [
    "DEFAULT_PARAMETERS",
    "DEFAULT_ROLES",
    "MarkerSpec",
    "MaskSpec",
    "TableMapping",
    "Panel",
    "Rule",
    "load_panel",
    "parse_rule",
    "rule_markers",
    "normalise_name",
]

#: Every default of ``metrics.md`` (lengths µm, areas µm², densities cells/mm²).
DEFAULT_PARAMETERS: dict[str, Any] = {
    # segmentation
    "cell_expansion_um": 3.0,
    "nucleus_diameter_um": "auto",  # "auto": estimated from the image
    "tile_size_px": 2048,
    # tumour region and compartments
    "tumour_cell_radius_um": 15.0,
    "closing_um": 20.0,
    "min_hole_um2": 1000.0,
    "min_nest_area_um2": 2000.0,
    "margin_um": 50.0,
    # infiltration profile
    "profile_min_um": -200.0,
    "profile_max_um": 200.0,
    "profile_step_um": 20.0,
    # T-cell exclusion
    "outside_band_um": 200.0,
    "desert_density": 50.0,
    "excluded_ratio": 0.5,
    "exclusion_bandwidth_um": 30.0,
    "exclusion_grid_um": 10.0,
    "exclusion_fraction": 0.25,
    "exclusion_min_area_um2": 2500.0,
    "exclusion_zone_alpha": 0.05,
    # tumour immune barrier
    "segment_um": 50.0,
    "barrier_width_um": 50.0,
    "barrier_density": 400.0,
    "colocalization_radii_um": [20.0, 30.0, 50.0],
    "n_shifts": 999,
    # NET / collagen-I shields
    "shield_ring_um": 3.0,
    "shield_min_coverage": 0.5,
    "nest_strip_um": 5.0,
    "contact_um": 12.0,
    "antagonism_tile_um": 50.0,
    "antagonism_radii_um": [20.0, 30.0, 40.0, 50.0],
    # point patterns / neighbourhoods
    "graph_radius_um": 30.0,
    "n_permutations": 999,
    "n_envelope_sim": 99,  # random labellings per cross-L envelope in stats/ (not in metrics.md)
    "seed": 0,
}

#: Which phenotypes play which part in the analyses, when ``[roles]`` is silent.
DEFAULT_ROLES: dict[str, list[str]] = {
    "tumour": ["tumour"],
    "effector_t": ["CD8_T"],
    "t_cells": ["CD8_T", "other_T"],
    "barrier": ["SPP1_macrophage", "CAF"],
    "spp1_macrophage": ["SPP1_macrophage"],
    "caf": ["CAF"],
    "neutrophil": ["neutrophil"],
}

_SECTIONS = ("image", "channels", "markers", "phenotypes", "roles", "masks", "parameters",
             "table")
_GATE_METHODS = ("otsu", "gmm")
_COMPARTMENTS = ("cell", "nucleus")


# --------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------


@dataclass
class MarkerSpec:
    """How one marker is gated: ``gate`` is a number or ``"otsu"``/``"gmm"``;
    ``compartment`` is ``"cell"`` (whole-cell mean) or ``"nucleus"``."""

    name: str
    gate: float | str = "otsu"
    compartment: str = "cell"


@dataclass
class MaskSpec:
    """A pixel mask (shield analysis): pixels above ``gate`` in any of
    ``channels`` (and, if given, above the gate in every ``require`` channel),
    objects smaller than ``min_object_um2`` removed."""

    name: str
    channels: list[str]
    require: list[str] = field(default_factory=list)
    gate: float | str = "otsu"
    min_object_um2: float = 5.0


@dataclass
class TableMapping:
    """Column mapping of an external cell table (``tibspace analyze``).

    ``None`` means "detect automatically".
    """

    cell_id: Optional[str] = None
    x: Optional[str] = None
    y: Optional[str] = None
    units: Optional[str] = None
    pixel_size_um: Optional[float] = None
    phenotype: Optional[str] = None
    phenotype_map: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Rule language
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Panel
# --------------------------------------------------------------------------


@dataclass
class Panel:
    """A marker panel (see the module docstring for the TOML format).

    Examples
    --------
    >>> p = Panel.from_dict({
    ...     "channels": {"nuclear": ["DAPI"], "aliases": {"PanCK": ["PanKRT"]}},
    ...     "markers": {"PanCK": {"gate": "otsu"}, "CD8": {"gate": 30}},
    ...     "phenotypes": {"tumour": "PanCK+", "CD8_T": "CD8+"}})
    >>> p.resolve_channels(["Hoechst", "DAPI", "cd8", "PanKRT"])
    {'DAPI': 1, 'PanCK': 3, 'CD8': 2}
    >>> p.parameters["margin_um"], p.default_phenotype, p.roles["effector_t"]
    (50.0, 'other', ['CD8_T'])
    """

    nuclear: list[str] = field(default_factory=list)
    membrane: list[str] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    markers: dict[str, MarkerSpec] = field(default_factory=dict)
    phenotypes: dict[str, str] = field(default_factory=dict)
    default_phenotype: str = "other"
    roles: dict[str, list[str]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_ROLES))
    masks: dict[str, MaskSpec] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_PARAMETERS))
    table: Optional[TableMapping] = None
    pixel_size_um: Optional[float] = None
    source: Optional[Path] = field(default=None, compare=False)

    # ---- construction -----------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Optional[str | Path] = None) -> "Panel":
        """Build a panel from a TOML-shaped dict (validates everything)."""
        where = str(source) if source is not None else "panel"
        if not isinstance(d, Mapping):
            raise PanelError(f"{where}: expected a table of sections, got {type(d).__name__}")
        unknown = [k for k in d if k not in _SECTIONS]
        if unknown:
            raise PanelError(f"{where}: unknown section [{unknown[0]}]; valid sections are "
                             f"{', '.join('[' + s + ']' for s in _SECTIONS)}")
        for s in _SECTIONS:
            if s in d and not isinstance(d[s], Mapping):
                raise PanelError(f"{where}: [{s}] must be a table (section), got "
                                 f"{_tname(d[s])}")
        image = _only_keys(d.get("image", {}), ("pixel_size_um",), f"{where}: [image]")
        px = image.get("pixel_size_um")
        if px is not None:
            px = _positive(px, f"{where}: [image] pixel_size_um")

        ch = _only_keys(d.get("channels", {}), ("nuclear", "membrane", "aliases"),
                        f"{where}: [channels]")
        nuclear = _str_list(ch.get("nuclear", []), f"{where}: [channels] nuclear")
        membrane = _str_list(ch.get("membrane", []), f"{where}: [channels] membrane")
        aliases_raw = ch.get("aliases", {})
        if not isinstance(aliases_raw, Mapping):
            raise PanelError(f"{where}: [channels.aliases] must be a table of name = [\"other\","
                             f" \"names\"], got {_tname(aliases_raw)}")
        aliases = {str(k): _str_list(v, f"{where}: [channels.aliases] {k}")
                   for k, v in aliases_raw.items()}

        markers = {}
        for name, spec in d.get("markers", {}).items():
            markers[str(name)] = _marker_spec(str(name), spec, f"{where}: [markers] {name}")

        phenotypes: dict[str, str] = {}
        default = "other"
        for name, rule in d.get("phenotypes", {}).items():
            if name == "default":
                if not isinstance(rule, str) or not rule.strip():
                    raise PanelError(f"{where}: [phenotypes] default must be a phenotype name "
                                     f"such as \"other\", got {rule!r}")
                default = rule.strip()
                continue
            if not isinstance(rule, str):
                raise PanelError(f"{where}: [phenotypes] {name} must be a rule string such as "
                                 f"\"CD3+ & CD8+\", got {_tname(rule)}")
            parse_rule(rule, markers, where=f"{where}: [phenotypes] {name}")
            phenotypes[str(name)] = rule

        roles = copy.deepcopy(DEFAULT_ROLES)
        for role, names in d.get("roles", {}).items():
            roles[str(role)] = _str_list(names, f"{where}: [roles] {role}")

        masks = {}
        for name, spec in d.get("masks", {}).items():
            masks[str(name)] = _mask_spec(str(name), spec, f"{where}: [masks] {name}")

        parameters = _parameters(d.get("parameters", {}), where)

        table = None
        if "table" in d:
            table = _table_mapping(d["table"], f"{where}: [table]")
            if (table.units or "").lower() in ("px", "pixel", "pixels") and \
                    table.pixel_size_um is None and px is None:
                raise PanelError(f"{where}: [table] units = \"px\" needs a pixel size; set "
                                 "[table] pixel_size_um = <µm per pixel>")

        return cls(nuclear=nuclear, membrane=membrane, aliases=aliases, markers=markers,
                   phenotypes=phenotypes, default_phenotype=default, roles=roles, masks=masks,
                   parameters=parameters, table=table, pixel_size_um=px,
                   source=Path(source) if source is not None else None)

    # ---- serialisation ----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped dict (parameters include every default used)."""
        d: dict[str, Any] = {}
        if self.pixel_size_um is not None:
            d["image"] = {"pixel_size_um": float(self.pixel_size_um)}
        ch: dict[str, Any] = {"nuclear": list(self.nuclear), "membrane": list(self.membrane)}
        if self.aliases:
            ch["aliases"] = {k: list(v) for k, v in self.aliases.items()}
        d["channels"] = ch
        d["markers"] = {n: {"gate": _gate_out(m.gate), "compartment": m.compartment}
                        for n, m in self.markers.items()}
        d["phenotypes"] = dict(self.phenotypes) | {"default": self.default_phenotype}
        d["roles"] = {k: list(v) for k, v in self.roles.items()}
        if self.masks:
            d["masks"] = {n: {"channels": list(m.channels), "require": list(m.require),
                              "gate": _gate_out(m.gate),
                              "min_object_um2": float(m.min_object_um2)}
                          for n, m in self.masks.items()}
        d["parameters"] = copy.deepcopy(self.parameters)
        if self.table is not None:
            t = self.table
            td = {k: getattr(t, k) for k in ("cell_id", "x", "y", "units", "pixel_size_um",
                                             "phenotype") if getattr(t, k) is not None}
            if t.phenotype_map:
                td["phenotype_map"] = dict(t.phenotype_map)
            d["table"] = td
        return d

    def to_toml(self) -> str:
        """The panel as TOML text; ``load_panel`` of it gives an equal panel.

        Examples
        --------
        >>> p = Panel.from_dict({"markers": {"CD8": {"gate": 35.5}},
        ...                      "phenotypes": {"CD8_T": "CD8+"}})
        >>> Panel.from_dict(tomllib.loads(p.to_toml())) == p
        True
        """
        return _dumps_toml(self.to_dict())

    def with_gates(self, gates: Mapping[str, float]) -> "Panel":
        """A copy whose marker gates are the given numbers (to re-run exactly)."""
        new = copy.deepcopy(self)
        for name, value in gates.items():
            if name in new.markers:
                new.markers[name].gate = float(value)
        return new

    # ---- channels ---------------------------------------------------------

    def channel_roles(self) -> dict[str, str]:
        """Every channel the panel names -> its first role (``nuclear``,
        ``membrane``, ``marker``, ``mask <name>``), in panel order."""
        out: dict[str, str] = {}
        for n in self.nuclear:
            out.setdefault(n, "nuclear")
        for n in self.membrane:
            out.setdefault(n, "membrane")
        for n in self.markers:
            out.setdefault(n, "marker")
        for mname, m in self.masks.items():
            for n in list(m.channels) + list(m.require):
                out.setdefault(n, f"mask {mname}")
        return out

    def _candidates(self, name: str) -> list[str]:
        """``name``, its aliases, and names that list it as an alias (and theirs)."""
        key = normalise_name(name)
        cands = [name]
        for panel_name, alts in self.aliases.items():
            group = [panel_name] + list(alts)
            if any(normalise_name(g) == key for g in group):
                cands.extend(g for g in group if g not in cands)
        return cands

    def _match(self, name: str, channel_names: Sequence[str]) -> Optional[int]:
        norm = [normalise_name(c) for c in channel_names]
        for cand in self._candidates(name):
            if cand in channel_names:  # exact spelling first
                return list(channel_names).index(cand)
            key = normalise_name(cand)
            if key in norm:
                return norm.index(key)
        return None

    def missing_channels(self, channel_names: Sequence[str]) -> dict[str, str]:
        """Panel channels the image lacks (after aliases) -> their role.

        The pipeline uses this to skip analyses whose channels are absent
        (e.g. no SPP1 -> no barrier; no CitH3 -> no NET shield).
        """
        return {n: role for n, role in self.channel_roles().items()
                if self._match(n, list(channel_names)) is None}

    def resolve_channels(self, channel_names: Sequence[str], image_path: Any = None, *,
                         optional_roles: Iterable[str] = ()) -> dict[str, int]:
        """Map every panel channel to its index among ``channel_names``.

        Matching ignores case and ``- _ space / .``; then ``[channels.aliases]``
        are tried in both directions.

        Parameters
        ----------
        channel_names : list of str
            The image's channel names.
        image_path : path, optional
            Only for error messages.
        optional_roles : iterable of str
            Roles (``"marker"``, ``"membrane"``, ``"mask"`` or ``"mask net"``)
            whose missing channels are left out of the result instead of
            raising.

        Raises
        ------
        PanelError
            A required channel is missing; the message lists the image's
            channels.
        """
        names = [str(c) for c in channel_names]
        optional = set(optional_roles)
        out: dict[str, int] = {}
        for n, role in self.channel_roles().items():
            idx = self._match(n, names)
            if idx is not None:
                out[n] = idx
                continue
            if role in optional or role.split(" ")[0] in optional:
                continue
            src = self.source if self.source is not None else "(in memory)"
            img = f"image {image_path}" if image_path is not None else "the image"
            raise PanelError(f"panel {src} names channel {n!r} ({role}) but {img} has none; "
                             f"it has: {', '.join(names)} — add an alias under "
                             "[channels.aliases] or fix the name")
        return out

    def rules_using(self, marker: str) -> list[str]:
        """Phenotypes whose rule uses ``marker`` (to report what a missing
        channel disables)."""
        key = normalise_name(marker)
        return [ph for ph, rule in self.phenotypes.items()
                if any(normalise_name(m) == key for m in rule_markers(rule))]


def load_panel(path: str | Path) -> Panel:
    """Read and validate a panel TOML file.

    Raises
    ------
    PanelError
        Missing file, TOML syntax error (with its line), unknown section or
        key, wrong types, a rule using a marker not in ``[markers]``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "panel.toml"
    >>> _ = f.write_text('[markers]\\nCD8 = { gate = 30 }\\n[phenotypes]\\nCD8_T = "CD8+"\\n')
    >>> load_panel(f).markers["CD8"].gate
    30.0
    """
    path = Path(path)
    if not path.exists():
        raise PanelError(f"{path}: panel file not found; check the path")
    if path.is_dir():
        raise PanelError(f"{path}: is a folder; give the panel .toml file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PanelError(f"{path}: cannot read the panel file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PanelError(f"{path}: the panel file is not UTF-8 text; save it as UTF-8"
                         ) from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PanelError(f"{path}: TOML syntax error: {_first_line(exc)}; fix the panel file"
                         ) from None
    return Panel.from_dict(d, source=path)


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _tname(v: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def _only_keys(d: Any, allowed: Sequence[str], where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise PanelError(f"{where} must be a table, got {_tname(d)}")
    bad = [k for k in d if k not in allowed]
    if bad:
        raise PanelError(f"{where}: unknown key {bad[0]!r}; valid keys are "
                         f"{', '.join(allowed)}")
    return d


def _str_list(v: Any, where: str) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    raise PanelError(f"{where} must be a list of names such as [\"DAPI\"], got {v!r}")


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PanelError(f"{where} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise PanelError(f"{where} must be a finite number, got {v!r}")
    return v


def _positive(v: Any, where: str) -> float:
    v = _number(v, where)
    if v <= 0:
        raise PanelError(f"{where} must be positive, got {v!r}")
    return v


def _gate(v: Any, where: str) -> float | str:
    if isinstance(v, str):
        g = v.strip().lower()
        if g not in _GATE_METHODS:
            raise PanelError(f"{where}: gate = {v!r} is not understood; use a number, "
                             "\"otsu\" or \"gmm\"")
        return g
    return _number(v, f"{where} gate")


def _gate_out(g: float | str) -> float | str:
    return g if isinstance(g, str) else float(g)


def _marker_spec(name: str, spec: Any, where: str) -> MarkerSpec:
    if isinstance(spec, (int, float, str)) and not isinstance(spec, bool):
        return MarkerSpec(name, _gate(spec, where))  # shorthand: CD8 = 35 / "otsu"
    spec = _only_keys(spec, ("gate", "compartment"), where)
    comp = spec.get("compartment", "cell")
    if comp not in _COMPARTMENTS:
        raise PanelError(f"{where}: compartment = {comp!r}; use \"cell\" or \"nucleus\"")
    return MarkerSpec(name, _gate(spec.get("gate", "otsu"), where), comp)


def _mask_spec(name: str, spec: Any, where: str) -> MaskSpec:
    spec = _only_keys(spec, ("channels", "require", "gate", "min_object_um2"), where)
    if "channels" not in spec:
        raise PanelError(f"{where}: needs channels = [\"...\"] (e.g. [\"CitH3\"])")
    chans = _str_list(spec["channels"], f"{where} channels")
    if not chans:
        raise PanelError(f"{where}: channels is empty; name at least one channel")
    min_obj = _number(spec.get("min_object_um2", 5.0), f"{where} min_object_um2")
    if min_obj < 0:
        raise PanelError(f"{where} min_object_um2 must be ≥ 0, got {min_obj}")
    return MaskSpec(name, chans, _str_list(spec.get("require", []), f"{where} require"),
                    _gate(spec.get("gate", "otsu"), where), min_obj)


_INT_PARAMS = {k for k, v in DEFAULT_PARAMETERS.items() if isinstance(v, int)}
_LIST_PARAMS = {k for k, v in DEFAULT_PARAMETERS.items() if isinstance(v, list)}
# may be zero or negative
_SIGNED_PARAMS = {"profile_min_um", "profile_max_um", "seed", "n_envelope_sim"}


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    out = copy.deepcopy(DEFAULT_PARAMETERS)
    for k, v in raw.items():
        w = f"{where}: [parameters] {k}"
        if k not in DEFAULT_PARAMETERS:
            raise PanelError(f"{where}: unknown parameter {k!r} in [parameters]; valid keys are "
                             f"{', '.join(DEFAULT_PARAMETERS)}")
        if k in _LIST_PARAMS:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = [v]
            if not isinstance(v, list) or not v:
                raise PanelError(f"{w} must be a non-empty list of numbers, got {v!r}")
            out[k] = [_positive(x, w) for x in v]
        elif k in _INT_PARAMS:
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    raise PanelError(f"{w} must be an integer, got {v!r}")
            if k not in _SIGNED_PARAMS and v <= 0:
                raise PanelError(f"{w} must be positive, got {v!r}")
            if k in ("seed", "n_envelope_sim") and v < 0:
                raise PanelError(f"{w} must be ≥ 0, got {v!r}")
            out[k] = int(v)
        elif k == "nucleus_diameter_um" and v == "auto":
            out[k] = v
        else:
            out[k] = _number(v, w) if k in _SIGNED_PARAMS else _positive(v, w)
    if out["profile_min_um"] >= out["profile_max_um"]:
        raise PanelError(f"{where}: [parameters] profile_min_um ({out['profile_min_um']}) must "
                         f"be below profile_max_um ({out['profile_max_um']})")
    if out["shield_min_coverage"] > 1 or out["exclusion_fraction"] > 1 or out["exclusion_zone_alpha"] > 1:
        raise PanelError(f"{where}: [parameters] shield_min_coverage, exclusion_fraction and "
                         "exclusion_zone_alpha are fractions in (0, 1]")
    return out


def _table_mapping(raw: Any, where: str) -> TableMapping:
    keys = ("cell_id", "x", "y", "units", "pixel_size_um", "phenotype", "phenotype_map")
    raw = _only_keys(raw, keys, where)
    kw: dict[str, Any] = {}
    for k in ("cell_id", "x", "y", "phenotype", "units"):
        if k in raw:
            if not isinstance(raw[k], str):
                raise PanelError(f"{where} {k} must be a column name (string), got {raw[k]!r}")
            kw[k] = raw[k]
    if "units" in kw:
        u = kw["units"].strip().lower().replace("µ", "u").replace("μ", "u")
        if u not in ("um", "px", "micron", "microns", "pixel", "pixels"):
            raise PanelError(f"{where} units = {kw['units']!r}; use \"um\" or \"px\"")
    if "pixel_size_um" in raw:
        kw["pixel_size_um"] = _positive(raw["pixel_size_um"], f"{where} pixel_size_um")
    if "phenotype_map" in raw:
        pm = raw["phenotype_map"]
        if not isinstance(pm, Mapping) or not all(isinstance(v, str) for v in pm.values()):
            raise PanelError(f"{where} phenotype_map must be a table of \"source label\" = "
                             f"\"tibspace phenotype\", got {pm!r}")
        kw["phenotype_map"] = {str(k): v for k, v in pm.items()}
    return TableMapping(**kw)


# --------------------------------------------------------------------------
# minimal TOML writer (tomllib only reads; the panel needs scalars, lists and
# one level of inline tables)
# --------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _string(k)


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _dumps_toml(d: Mapping[str, Any]) -> str:
    lines: list[str] = ["# tibspace marker panel"]
    for section, body in d.items():
        scalars = {k: v for k, v in body.items() if not (
            isinstance(v, Mapping) and section in ("channels", "table") and k in
            ("aliases",))}
        lines.append("")
        lines.append(f"[{section}]")
        for k, v in scalars.items():
            lines.append(f"{_key(str(k))} = {_value(v)}")
        if section == "channels" and "aliases" in body:
            lines.append("")
            lines.append("[channels.aliases]")
            for k, v in body["aliases"].items():
                lines.append(f"{_key(str(k))} = {_value(v)}")
    return "\n".join(lines) + "\n"
