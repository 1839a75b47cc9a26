"""Result sets swapped whole, outputs only inside --out, one-line errors for bad options.

Each test here reproduces a row of the reliability issue (#13) that failed on
the tree before: a kill while results move into place left a mix of old and
new files; a rerun left the previous run's files beside the new ones; mask and
sample names escaped the output folder; bad options gave tracebacks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tibspace.io import MANIFEST, check_free_space, result_set, safe_name, safe_path
from tibspace.errors import InputError
from tibspace.pipeline import unique_sample_ids


def _write_set(out: Path, token: str, names):
    with result_set(out) as stage:
        for n in names:
            (stage / n).parent.mkdir(parents=True, exist_ok=True)
            (stage / n).write_text(token)


def test_rerun_replaces_every_file_of_the_previous_result_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "res"
    _write_set(out, "image-run", ["metrics.json", "nests.geojson", "stats/cross_L.csv", "net_mask.ome.tif"])
    (out / "my_notes.txt").write_text("mine")           # the user's file
    (out / "stats" / "mine.csv").write_text("mine too")
    _write_set(out, "table-run", ["metrics.json", "stats/enrichment.csv"])
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["metrics.json", "my_notes.txt", "stats/enrichment.csv", "stats/mine.csv", MANIFEST]
    assert (out / "metrics.json").read_text() == "table-run"
    assert (out / "my_notes.txt").read_text() == "mine"
    assert json.loads((out / MANIFEST).read_text())["files"] == ["metrics.json", "stats/enrichment.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]   # nothing left beside it


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tibspace.io import result_set
    out, token, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    print("writing", flush=True)
    with result_set(out) as stage:
        for i in range(n):
            (stage / f"f{i:03d}.txt").write_text(token)
            time.sleep(0.002)
    print("done", flush=True)
""")


def _state(out: Path):
    """The tokens in the folder's result files, and whether the set matches its manifest."""
    files = {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*.txt")}
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    return set(files.values()), sorted(files) == sorted(manifest)


def test_kill_at_any_moment_leaves_the_old_or_the_new_set_never_a_mix(tmp_path):
    out = tmp_path / "res"
    _write_set(out, "old", [f"f{i:03d}.txt" for i in range(30)])
    script = tmp_path / "writer.py"
    script.write_text(_KILL_SCRIPT)
    outcomes = set()
    for k in range(16):
        token = f"new{k}"
        proc = subprocess.Popen([sys.executable, str(script), str(out), token, "25"],
                                cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.006 * k)  # writing takes ~0.05-0.1 s: kills while writing, swapping and after
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tokens, complete = _state(out)
        assert len(tokens) == 1 and complete, f"kill {k}: mixed result {tokens}"
        outcomes.add("new" if tokens == {token} else "old")
    assert outcomes == {"old", "new"}  # the kills did land before and after the swap
    # the next run removes whatever the killed runs left beside the folder
    _write_set(out, "final", ["f000.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res", "writer.py"]
    assert _state(out) == ({"final"}, True)


def test_fallback_swap_without_exchange_is_recovered(tmp_path, monkeypatch):
    """Where the file system cannot exchange folders: two renames, and an interrupted one is undone."""
    import tibspace.io.resultset as rs

    out = tmp_path / "res"
    _write_set(out, "old", ["a.txt"])
    monkeypatch.setattr(rs, "exchange", lambda a, b: False)
    _write_set(out, "new", ["a.txt", "b.txt"])
    assert _state(out) == ({"new"}, True)
    # simulate a kill between the two renames: the previous set parked, out_dir missing
    parked = tmp_path / f".res{rs._OLD_TAG}999999-dead"
    os.rename(out, parked)
    rs.recover(out)
    assert _state(out) == ({"new"}, True) and not parked.exists()


@pytest.mark.parametrize("name", ["../../../X", "/var/X", "..", "a/b", "CD3: CD8"])
def test_names_from_panels_never_leave_the_folder(tmp_path, name):
    folder = tmp_path / "out"
    folder.mkdir()
    p = safe_path(folder, safe_name(name) + "_mask.ome.tif")
    assert folder.resolve() in p.resolve().parents
    assert "/" not in safe_name(name) and not safe_name(name).startswith(".")


def test_safe_path_refuses_escapes(tmp_path):
    with pytest.raises(InputError, match="outside"):
        safe_path(tmp_path, "..", "x")
    with pytest.raises(InputError, match="outside"):
        safe_path(tmp_path, "/etc/passwd")


def test_sample_ids_are_unique_and_safe():
    ids = unique_sample_ids([Path("P11/image.ome.tif"), Path("P12/image.ome.tif"), Path("F/x/.."),
                             Path("q/a.csv"), Path("r/a.csv"), Path("a.csv")])
    assert len(set(ids)) == len(ids)
    assert ids[:2] == ["P11_image", "P12_image"]
    assert all("/" not in i and ".." not in i for i in ids)


def test_full_or_read_only_disk_is_one_line(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1 << 20))
    with pytest.raises(InputError, match="MiB free"):
        check_free_space(tmp_path / "out", 50 << 20)
    monkeypatch.undo()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: check the access test itself
        monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(InputError, match="not writable"):
        check_free_space(ro / "out", 1)


@pytest.mark.parametrize("argv, what", [
    (["run", "x.tif", "--panel", "p.toml", "--out", "o", "--seed", "-1"], "--seed"),
    (["run", "x.tif", "--panel", "p.toml", "--out", "o", "--scheduler", "bogus://x"], "--scheduler"),
    (["run", "x.tif", "--panel", "p.toml", "--out", "o", "--workers", "0"], "--workers"),
    (["run", "x.tif", "--panel", "p.toml", "--out", "o", "--pixel-size-um", "nan"], "--pixel-size-um"),
    (["run", "x.tif", "--panel", "p.toml", "--out", "o", "--tile-size-px", "3"], "--tile-size-px"),
])
def test_bad_options_are_one_line_exit_2(argv, what, capsys):
    from tibspace.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert what in err[-1] and "Traceback" not in "\n".join(err)
