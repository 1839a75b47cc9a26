"""Validation of the panel's TOML sections into typed values.

Each helper takes the raw TOML value and ``where`` (file and entry, for the
message) and returns the checked value or raises a one-line
:class:`~tibspace.errors.PanelError` saying what was expected.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

from tibspace.errors import PanelError
from tibspace.cells.rules import parse_rule
from tibspace.cells.specs import DEFAULT_PARAMETERS, DEFAULT_ROLES, MarkerSpec, MaskSpec, TableMapping

SECTIONS = ("image", "channels", "markers", "phenotypes", "roles", "masks", "parameters",
            "table", "segmentation")
# [segmentation]: the method and its options (tibspace.segment.backends checks which
# method reads which; a relative model path is relative to the panel file)
_SEGMENTATION_KEYS = ("method", "model", "flow_threshold", "cellprob_threshold")
_GATE_METHODS = ("otsu", "gmm")
_COMPARTMENTS = ("cell", "nucleus")


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def tname(v: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def only_keys(d: Any, allowed: Sequence[str], where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise PanelError(f"{where} must be a table, got {tname(d)}")
    bad = [k for k in d if k not in allowed]
    if bad:
        raise PanelError(f"{where}: unknown key {bad[0]!r}; valid keys are "
                         f"{', '.join(allowed)}")
    return d


def str_list(v: Any, where: str) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    raise PanelError(f"{where} must be a list of names such as [\"DAPI\"], got {v!r}")


def number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PanelError(f"{where} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise PanelError(f"{where} must be a finite number, got {v!r}")
    return v


def positive(v: Any, where: str) -> float:
    v = number(v, where)
    if v <= 0:
        raise PanelError(f"{where} must be positive, got {v!r}")
    return v


def gate(v: Any, where: str) -> float | str:
    if isinstance(v, str):
        g = v.strip().lower()
        if g not in _GATE_METHODS:
            raise PanelError(f"{where}: gate = {v!r} is not understood; use a number, "
                             "\"otsu\" or \"gmm\"")
        return g
    return number(v, f"{where} gate")


def gate_out(g: float | str) -> float | str:
    return g if isinstance(g, str) else float(g)


def marker_spec(name: str, spec: Any, where: str) -> MarkerSpec:
    if isinstance(spec, (int, float, str)) and not isinstance(spec, bool):
        return MarkerSpec(name, gate(spec, where))  # shorthand: CD8 = 35 / "otsu"
    spec = only_keys(spec, ("gate", "compartment"), where)
    comp = spec.get("compartment", "cell")
    if comp not in _COMPARTMENTS:
        raise PanelError(f"{where}: compartment = {comp!r}; use \"cell\" or \"nucleus\"")
    return MarkerSpec(name, gate(spec.get("gate", "otsu"), where), comp)


def mask_spec(name: str, spec: Any, where: str) -> MaskSpec:
    spec = only_keys(spec, ("channels", "require", "gate", "min_object_um2"), where)
    if "channels" not in spec:
        raise PanelError(f"{where}: needs channels = [\"...\"] (e.g. [\"CitH3\"])")
    chans = str_list(spec["channels"], f"{where} channels")
    if not chans:
        raise PanelError(f"{where}: channels is empty; name at least one channel")
    min_obj = number(spec.get("min_object_um2", 5.0), f"{where} min_object_um2")
    if min_obj < 0:
        raise PanelError(f"{where} min_object_um2 must be ≥ 0, got {min_obj}")
    return MaskSpec(name, chans, str_list(spec.get("require", []), f"{where} require"),
                    gate(spec.get("gate", "otsu"), where), min_obj)


_INT_PARAMS = {k for k, v in DEFAULT_PARAMETERS.items() if isinstance(v, int)}
_LIST_PARAMS = {k for k, v in DEFAULT_PARAMETERS.items() if isinstance(v, list)}
# may be zero or negative
_SIGNED_PARAMS = {"profile_min_um", "profile_max_um", "seed", "n_envelope_sim"}


def parameters(raw: Any, where: str) -> dict[str, Any]:
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
            out[k] = [positive(x, w) for x in v]
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
        elif k == "lineage_conflicts":
            if v not in ("margin", "first"):
                raise PanelError(f"{w} must be \"margin\" or \"first\", got {v!r}")
            out[k] = v
        else:
            out[k] = number(v, w) if k in _SIGNED_PARAMS else positive(v, w)
    if out["profile_min_um"] >= out["profile_max_um"]:
        raise PanelError(f"{where}: [parameters] profile_min_um ({out['profile_min_um']}) must "
                         f"be below profile_max_um ({out['profile_max_um']})")
    if out["shield_min_coverage"] > 1 or out["exclusion_fraction"] > 1 or out["exclusion_zone_alpha"] > 1:
        raise PanelError(f"{where}: [parameters] shield_min_coverage, exclusion_fraction and "
                         "exclusion_zone_alpha are fractions in (0, 1]")
    return out


def table_mapping(raw: Any, where: str) -> TableMapping:
    keys = ("cell_id", "x", "y", "units", "pixel_size_um", "phenotype", "phenotype_map")
    raw = only_keys(raw, keys, where)
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
        kw["pixel_size_um"] = positive(raw["pixel_size_um"], f"{where} pixel_size_um")
    if "phenotype_map" in raw:
        pm = raw["phenotype_map"]
        if not isinstance(pm, Mapping) or not all(isinstance(v, str) for v in pm.values()):
            raise PanelError(f"{where} phenotype_map must be a table of \"source label\" = "
                             f"\"tibspace phenotype\", got {pm!r}")
        kw["phenotype_map"] = {str(k): v for k, v in pm.items()}
    return TableMapping(**kw)



# --------------------------------------------------------------------------
# sections of Panel.from_dict
# --------------------------------------------------------------------------


def check_sections(d: Any, where: str) -> None:
    """``d`` is a table whose keys are known sections, each itself a table."""
    if not isinstance(d, Mapping):
        raise PanelError(f"{where}: expected a table of sections, got {type(d).__name__}")
    unknown = [k for k in d if k not in SECTIONS]
    if unknown:
        raise PanelError(f"{where}: unknown section [{unknown[0]}]; valid sections are "
                         f"{', '.join('[' + s + ']' for s in SECTIONS)}")
    for s in SECTIONS:
        if s in d and not isinstance(d[s], Mapping):
            raise PanelError(f"{where}: [{s}] must be a table (section), got "
                             f"{tname(d[s])}")


def image_section(d: Mapping[str, Any], where: str) -> float | None:
    """``[image] pixel_size_um`` (µm per pixel) or None."""
    image = only_keys(d.get("image", {}), ("pixel_size_um",), f"{where}: [image]")
    px = image.get("pixel_size_um")
    return None if px is None else positive(px, f"{where}: [image] pixel_size_um")


def channels_section(d: Mapping[str, Any], where: str
                     ) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """``[channels]``: (nuclear, membrane, aliases)."""
    ch = only_keys(d.get("channels", {}), ("nuclear", "membrane", "aliases"),
                   f"{where}: [channels]")
    nuclear = str_list(ch.get("nuclear", []), f"{where}: [channels] nuclear")
    membrane = str_list(ch.get("membrane", []), f"{where}: [channels] membrane")
    aliases_raw = ch.get("aliases", {})
    if not isinstance(aliases_raw, Mapping):
        raise PanelError(f"{where}: [channels.aliases] must be a table of name = [\"other\","
                         f" \"names\"], got {tname(aliases_raw)}")
    aliases = {str(k): str_list(v, f"{where}: [channels.aliases] {k}")
               for k, v in aliases_raw.items()}
    return nuclear, membrane, aliases


def markers_section(d: Mapping[str, Any], where: str) -> dict[str, MarkerSpec]:
    return {str(name): marker_spec(str(name), spec, f"{where}: [markers] {name}")
            for name, spec in d.get("markers", {}).items()}


def phenotypes_section(d: Mapping[str, Any], markers: Mapping[str, MarkerSpec], where: str
                       ) -> tuple[dict[str, str], str]:
    """``[phenotypes]``: (ordered rules, default phenotype); every rule is parsed."""
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
                             f"\"CD3+ & CD8+\", got {tname(rule)}")
        parse_rule(rule, markers, where=f"{where}: [phenotypes] {name}")
        phenotypes[str(name)] = rule
    return phenotypes, default


def roles_section(d: Mapping[str, Any], where: str) -> dict[str, list[str]]:
    roles = copy.deepcopy(DEFAULT_ROLES)
    for role, names in d.get("roles", {}).items():
        roles[str(role)] = str_list(names, f"{where}: [roles] {role}")
    return roles


def masks_section(d: Mapping[str, Any], where: str) -> dict[str, MaskSpec]:
    return {str(name): mask_spec(str(name), spec, f"{where}: [masks] {name}")
            for name, spec in d.get("masks", {}).items()}


def segmentation_section(d: Mapping[str, Any], source: Any, where: str) -> dict[str, Any]:
    """``[segmentation]``: ``method`` (default classical), ``model`` (a weights path or a
    library model name) and numeric thresholds."""
    seg = dict(only_keys(d.get("segmentation", {}), _SEGMENTATION_KEYS, f"{where}: [segmentation]"))
    for k in ("method", "model"):
        if k in seg and not isinstance(seg[k], str):
            raise PanelError(f"{where}: [segmentation] {k} must be a string, got {tname(seg[k])}")
    for k in ("flow_threshold", "cellprob_threshold"):
        if k in seg:
            seg[k] = number(seg[k], f"{where}: [segmentation] {k}")
    model = seg.get("model")
    if model and source is not None and ("/" in model or "\\" in model or "." in model):
        from pathlib import Path

        mp = Path(model).expanduser()
        seg["model"] = str(mp if mp.is_absolute() else (Path(source).parent / mp))
    return seg


def table_section(d: Mapping[str, Any], px: float | None, where: str) -> TableMapping | None:
    """``[table]`` or None; pixel units need a pixel size here or in ``[image]``."""
    if "table" not in d:
        return None
    table = table_mapping(d["table"], f"{where}: [table]")
    if (table.units or "").lower() in ("px", "pixel", "pixels") and \
            table.pixel_size_um is None and px is None:
        raise PanelError(f"{where}: [table] units = \"px\" needs a pixel size; set "
                         "[table] pixel_size_um = <µm per pixel>")
    return table
