"""The first-run message knows where numba keeps tibspace's compiled kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECK = "from tibspace.cli import kernels_compiled; print(kernels_compiled())"
COMPILE = ("from tibspace.stats._kernels import _circle_frac_rect as k; k(1.0, 1.0, 0.5, 0.0, 0.0, 2.0, 2.0); "
           "print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))")


def _py(code: str, cache_dir: Path) -> str:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True, timeout=300).stdout.strip()


def test_kernels_compiled_follows_numba_cache_dir(tmp_path):
    cache = tmp_path / "numba"
    assert _py(CHECK, cache) == "False"  # an empty cache: the "compiling (first run only)" message is true
    first = _py(COMPILE, cache)
    assert first.split("\n")[-1] == "0 1"  # compiled (a cache miss)
    assert any(cache.rglob("_kernels._circle_frac_rect-*.nbi"))  # written to NUMBA_CACHE_DIR
    assert _py(CHECK, cache) == "True"
    assert _py(COMPILE, cache).split("\n")[-1] == "1 0"  # second process: loaded from disk, not compiled
