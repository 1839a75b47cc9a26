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

:class:`Panel` holds the validated panel; :func:`load_panel` reads the file.
Phenotype rules are in :mod:`tibspace.cells.rules`, section validation in
:mod:`tibspace.cells.panel_checks`, the TOML writer in :mod:`tibspace.cells.toml_io`.
Every error is a :class:`~tibspace.errors.PanelError` with a one-line message
naming the panel file and the offending entry.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from tibspace.errors import PanelError
from tibspace.io.channels import match_vendor_name, normalise_name
from tibspace.cells import panel_checks as _checks
from tibspace.cells.rules import Rule, parse_rule, rule_markers
from tibspace.cells.specs import (DEFAULT_PARAMETERS, DEFAULT_ROLES, MarkerSpec, MaskSpec,
                                  TableMapping)
from tibspace.cells.toml_io import dumps_toml

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
    segmentation: dict[str, Any] = field(default_factory=dict)
    source: Optional[Path] = field(default=None, compare=False)

    @property
    def lineage_conflicts(self) -> str:
        """How a cell satisfying rules of two lineages is named: ``"margin"`` or ``"first"``."""
        return str(self.parameters.get("lineage_conflicts", "margin"))

    # ---- construction -----------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Optional[str | Path] = None) -> "Panel":
        """Build a panel from a TOML-shaped dict (validates everything)."""
        where = str(source) if source is not None else "panel"
        _checks.check_sections(d, where)
        px = _checks.image_section(d, where)
        nuclear, membrane, aliases = _checks.channels_section(d, where)
        markers = _checks.markers_section(d, where)
        phenotypes, default = _checks.phenotypes_section(d, markers, where)
        return cls(nuclear=nuclear, membrane=membrane, aliases=aliases, markers=markers,
                   phenotypes=phenotypes, default_phenotype=default,
                   roles=_checks.roles_section(d, where),
                   masks=_checks.masks_section(d, where),
                   parameters=_checks.parameters(d.get("parameters", {}), where),
                   table=_checks.table_section(d, px, where), pixel_size_um=px,
                   segmentation=_checks.segmentation_section(d, source, where),
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
        d["markers"] = {n: {"gate": _checks.gate_out(m.gate), "compartment": m.compartment}
                        for n, m in self.markers.items()}
        d["phenotypes"] = dict(self.phenotypes) | {"default": self.default_phenotype}
        d["roles"] = {k: list(v) for k, v in self.roles.items()}
        if self.masks:
            d["masks"] = {n: {"channels": list(m.channels), "require": list(m.require),
                              "gate": _checks.gate_out(m.gate),
                              "min_object_um2": float(m.min_object_um2)}
                          for n, m in self.masks.items()}
        d["parameters"] = copy.deepcopy(self.parameters)
        if self.segmentation:
            d["segmentation"] = dict(self.segmentation)
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
        return dumps_toml(self.to_dict())

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
        for cand in self._candidates(name):  # e.g. MIBI "HH3 (89)", "CD8 (Opal 520)": one channel only
            idx = match_vendor_name(cand, channel_names, f"panel {self.source or '(in memory)'}")
            if idx is not None:
                return idx
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

    Parameters
    ----------
    path : str or Path
        The panel (sections ``[markers]``, ``[phenotypes]``, ``[roles]``,
        ``[parameters]``, ...; :class:`Panel` defines each).

    Returns
    -------
    Panel

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
        raise PanelError(f"{path}: TOML syntax error: {_checks.first_line(exc)}; fix the panel file"
                         ) from None
    return Panel.from_dict(d, source=path)
