"""The package layout: stages import only from stages before them.

Data flows io → segment → cells → tissue → stats → analyses → outputs, with
``pipeline`` and ``cli`` on top. ``cells`` sits below ``segment`` in the import
order because the tile workers measure cells as they segment them
(:func:`tibspace.cells.measure_cells`); the data still flows segment → cells.
``synthetic`` stands beside the pipeline and uses only the base and ``io``.
Every import is checked, including the lazy ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tibspace"

# layer -> the layers it may import from (itself always allowed)
BASE = {"errors", "progress", "jsonable", "heap"}
ALLOWED = {
    "base": set(),
    "io": {"base"},
    "cells": {"base", "io"},
    "segment": {"base", "io", "cells"},
    "tissue": {"base"},
    "stats": {"base", "tissue"},
    "analyses": {"base", "cells", "tissue", "stats"},
    "outputs": {"base", "io"},
    "synthetic": {"base", "io"},
    "top": {"base", "io", "cells", "segment", "tissue", "stats", "analyses", "outputs", "synthetic", "top"},
}


def _layer(module: str) -> str:
    """Layer of a dotted module name below ``tibspace`` ('' for the package itself)."""
    first = module.split(".")[0]
    if first in BASE:
        return "base"
    if first in ALLOWED:
        return first
    return "top"  # pipeline, cli, __init__, __main__


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module below tibspace) of every tibspace import in ``path``."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            mod = node.module or ""
            if mod == "tibspace":
                out += [(node.lineno, a.name) for a in node.names if a.name != "__version__"]
            elif mod.startswith("tibspace."):
                out.append((node.lineno, mod[len("tibspace."):]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name[len("tibspace."):]) for a in node.names if a.name.startswith("tibspace.")]
    return out


def _modules():
    return sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down_the_pipeline(path):
    me = _layer(".".join(path.relative_to(PKG).with_suffix("").parts))
    bad = []
    for line, mod in _imports(path):
        target = _layer(mod)
        if target != me and target not in ALLOWED[me]:
            bad.append(f"{path.relative_to(PKG)}:{line} ({me}) imports tibspace.{mod} ({target})")
    assert not bad, "\n".join(bad)


def test_every_stage_is_a_package_with_a_docstring():
    for name in ALLOWED:
        if name in ("base", "top"):
            continue
        init = PKG / name / "__init__.py"
        assert init.is_file(), name
        assert ast.get_docstring(ast.parse(init.read_text())), f"{name}/__init__.py has no docstring"


def test_public_api_names_resolve():
    import tibspace

    for name in tibspace.__all__:
        assert getattr(tibspace, name) is not None, name


#: The most lines a module may have (a reader finds a definition by its stage and
#: name; a bigger module is split along its concepts). Modules allowed above it,
#: each with its reason: none today.
MAX_MODULE_LINES = 600
LONG_MODULES: dict[str, str] = {}


def test_modules_are_of_readable_size():
    too_long = []
    for path in _modules():
        rel = str(path.relative_to(PKG))
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES and rel not in LONG_MODULES:
            too_long.append(f"{rel}: {n} lines")
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them): " + ", ".join(too_long)
    assert set(LONG_MODULES) <= {str(p.relative_to(PKG)) for p in _modules()}, "stale LONG_MODULES entry"


#: A function (docstring included) longer than this is an outline over named steps.
MAX_FUNCTION_LINES = 80


def test_functions_are_of_readable_size():
    plugin = PKG.parent / "plugins" / "napari" / "src"
    too_long = []
    for path in [*_modules(), *plugin.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.name} {n}")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them): " + ", ".join(too_long)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_every_module_opens_with_a_docstring(path):
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(PKG)} has no module docstring"


def test_heap_cap_reaches_cli_and_cohort_workers(monkeypatch, tmp_path):
    import tibspace.cli as cli
    from tibspace.cohort.workers import _config
    from tibspace.heap import bound_heap, heap_environment

    # glibc reads MALLOC_ARENA_MAX when a process starts: it must be in the pre-spawn environment
    assert _config()["distributed.nanny.pre-spawn-environ"]["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("TIBSPACE_GLIBC_MALLOC", "1")
    assert heap_environment() == {} and not bound_heap()
    assert "MALLOC_ARENA_MAX" not in _config()["distributed.nanny.pre-spawn-environ"]
    monkeypatch.delenv("TIBSPACE_GLIBC_MALLOC")
    calls = []
    monkeypatch.setattr(cli, "bound_heap", lambda: calls.append(1) or True)
    assert cli.main(["analyze", str(tmp_path / "missing.csv"), "--panel", str(tmp_path / "p.toml"),
                     "--out", str(tmp_path / "o")]) == 2
    assert calls == [1]
