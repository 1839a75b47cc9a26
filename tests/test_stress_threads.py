"""The threaded pipeline, run 200 times: no crash, identical numbers every time.

The pipeline overlaps the statistics and the exclusion analysis with the main
thread (docs/architecture.md, concurrency rule). A geometry or cache shared
between those threads crashes GEOS only now and then (a segfault in one of a
few dozen runs), so this test runs the whole table pipeline 200 times in a
child process (a segfault fails the test instead of killing pytest) and checks
that every repeat of the same input gives byte-identical metrics.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    from tibspace.cells import load_panel
    from tibspace.jsonable import to_jsonable
    from tibspace.pipeline import analyze_table
    from tibspace.synthetic import make_clustered_cells

    n_runs = int(sys.argv[1])
    panel = load_panel("sample_data/hcc_sample_panel.toml")
    tables = [make_clustered_cells(n, seed=s) for n, s in ((1500, 1), (2500, 2), (3500, 3), (2000, 4))]
    digests = {}
    for k in range(n_runs):
        t = k % len(tables)
        m = analyze_table(tables[t], panel, seed=t).metrics
        d = hashlib.sha256(json.dumps(to_jsonable(m), sort_keys=True).encode()).hexdigest()
        if digests.setdefault(t, d) != d:
            print(f"run {k}: table {t} gave different metrics", flush=True)
            sys.exit(3)
    print(f"ok {n_runs} runs", flush=True)
""")


@pytest.mark.slow
def test_threaded_pipeline_200_runs_no_crash_same_numbers(tmp_path):
    script = tmp_path / "stress.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), "200"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "ok 200 runs" in proc.stdout
