"""A minimal TOML writer for panels (``tomllib`` only reads).

Writes what a panel holds: scalars, lists, one level of inline tables, and the
``[channels.aliases]`` sub-table. ``tomllib.loads(dumps_toml(d)) == d`` for
every dict of that shape.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

__all__ = ["dumps_toml"]

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


def dumps_toml(d: Mapping[str, Any]) -> str:
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
