"""Hostile inputs through the command line: success, or exit 2 with one line.

For every generated case (cell tables with wrong, missing, non-finite or
absurd values; panels with broken TOML, wrong types, absurd parameters and
odd rules; images that are not what they claim; option values out of range)
the CLI must either succeed or exit with code 2 and one line
``tibspace: error: ...`` naming what is wrong: never a traceback, never a hang
past the time limit, never a file outside ``--out``, never a modified input.
"""

from __future__ import annotations

import hashlib
import signal
import string
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tibspace.cli import main

REPO = Path(__file__).resolve().parents[1]
PANEL = (REPO / "sample_data" / "hcc_sample_panel.toml").read_text()
LIMIT_S = 120


@contextmanager
def time_limit(seconds: int):
    def boom(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def run_cli(work: Path, argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI with inputs in ``work/in`` and results in ``work/out``; check the promises."""
    before = _tree(work / "in")
    capsys.readouterr()
    with time_limit(LIMIT_S):
        try:
            rc = main(argv + ["--out", str(work / "out"), "--quiet"])
        except SystemExit as exc:  # argparse
            rc = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.startswith(("tibspace: error:", "usage:", "tibspace "))]
        assert lines and (lines[-1].startswith("tibspace: error:") or "error:" in lines[-1]), err
        assert len(lines[-1]) < 2000
    assert _tree(work / "in") == before, "an input file was modified"
    outside = {p.relative_to(work).as_posix() for p in work.rglob("*")} - {"in", "out"}
    outside = {p for p in outside if not p.startswith(("in/", "out/"))}
    assert not outside, f"written outside --out: {outside}"
    return rc, err


# --------------------------------------------------------------------- tables
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**15, 10**15),
                    st.sampled_from([0.0, -1.0, 1e12, 1e-300]))
CELLS = st.one_of(NUMBERS, st.text(string.printable, max_size=8), st.none())
COLUMNS = ["cell_id", "x_um", "y_um", "phenotype", "CD3", "CD8", "HepPar1", "CD68", "SPP1", "aSMA", "FAP", "MPO"]


@st.composite
def cell_tables(draw):
    n = draw(st.integers(0, 60))
    cols = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=len(COLUMNS), unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    df = pd.DataFrame({c: rng.uniform(0, 500, n) for c in cols})
    if "phenotype" in df:
        df["phenotype"] = rng.choice(["tumour", "CD8_T", "CAF", "SPP1_macrophage", "other", ""], n)
    for _ in range(draw(st.integers(0, 4))):  # poison some cells
        if n and cols:
            df.loc[draw(st.integers(0, n - 1)), draw(st.sampled_from(cols))] = draw(CELLS)
    if draw(st.booleans()) and n and "x_um" in df:
        df["x_um"] = df["x_um"].iloc[0]  # every cell at one x (or one point)
        if "y_um" in df:
            df["y_um"] = df["y_um"].iloc[0]
    if draw(st.booleans()) and "x_um" in df:
        df["x_um"] = pd.to_numeric(df["x_um"], errors="coerce") + draw(st.sampled_from([1e6, 1e12, -1e9]))
    return df


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(table=cell_tables())
def test_hostile_cell_tables(tmp_path_factory, capsys, table):
    work = tmp_path_factory.mktemp("t")
    (work / "in").mkdir()
    table.to_csv(work / "in" / "cells.csv", index=False)
    (work / "in" / "panel.toml").write_text(PANEL)
    run_cli(work, ["analyze", str(work / "in" / "cells.csv"), "--panel", str(work / "in" / "panel.toml")], capsys)


# --------------------------------------------------------------------- panels
PARAMS = ["margin_um", "tumour_cell_radius_um", "exclusion_grid_um", "segment_um", "barrier_width_um",
          "closing_um", "min_nest_area_um2", "n_shifts", "n_envelope_sim", "graph_radius_um", "desert_density",
          "profile_step_um", "nucleus_diameter_um", "seed"]
TOML_VALUES = st.sampled_from(["0", "-1", "1e-4", "1e9", "1e300", "nan", "inf", '"x"', "[1, 2]", "true", "3"])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.sampled_from(PARAMS), TOML_VALUES), max_size=3),
       rule=st.sampled_from(["", 'CD8_T = "CD3+ & CD3-"', 'CD8_T = "CD3+ & ("', 'CD8_T = "__import__(1)"',
                             'tumour = "HepPar1+ | not HepPar1+"']),
       garbage=st.sampled_from(["", "[[[", "\x00", "[parameters]\nmargin_um = 5\n"]))
def test_hostile_panels(tmp_path_factory, capsys, edits, rule, garbage):
    from tibspace.synthetic import make_clustered_cells

    work = tmp_path_factory.mktemp("p")
    (work / "in").mkdir()
    make_clustered_cells(800, seed=2).to_csv(work / "in" / "cells.csv", index=False)
    text = PANEL
    params = "\n".join(f"{k} = {v}" for k, v in dict(edits).items())
    text = text.replace("[parameters]\n", "[parameters]\n" + params + "\n") if "[parameters]" in text \
        else text + "\n[parameters]\n" + params + "\n"
    if rule:
        text = text.replace("[phenotypes]\n", "[phenotypes]\n" + rule + "\n")
    (work / "in" / "panel.toml").write_text(text + garbage)
    run_cli(work, ["analyze", str(work / "in" / "cells.csv"), "--panel", str(work / "in" / "panel.toml")], capsys)


# --------------------------------------------------------------------- images
@pytest.mark.parametrize("make", ["empty", "random_bytes", "truncated", "text", "folder_of_junk", "one_channel"])
def test_hostile_images(tmp_path, capsys, make):
    import tifffile

    work = tmp_path
    (work / "in").mkdir()
    (work / "in" / "panel.toml").write_text(PANEL)
    target = work / "in" / "image.ome.tif"
    rng = np.random.default_rng(0)
    if make == "empty":
        target.write_bytes(b"")
    elif make == "random_bytes":
        target.write_bytes(b"II*\x00" + rng.bytes(5000))
    elif make == "truncated":
        tifffile.imwrite(target, rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD3", "CD8"]}})
        target.write_bytes(target.read_bytes()[:900])
    elif make == "text":
        target.write_text("this is not an image")
    elif make == "folder_of_junk":
        target = work / "in" / "folder"
        target.mkdir()
        (target / "notes.txt").write_text("x")
    elif make == "one_channel":
        tifffile.imwrite(target, rng.integers(0, 255, (64, 64), dtype=np.uint8))
    rc, err = run_cli(work, ["run", str(target), "--panel", str(work / "in" / "panel.toml"),
                             "--pixel-size-um", "0.5"], capsys)
    assert rc == 2


# --------------------------------------------------------------------- options
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(opt=st.sampled_from(["--seed", "--workers", "--tile-size-px", "--pixel-size-um", "--scheduler"]),
       value=st.one_of(st.sampled_from(["-1", "0", "nan", "1e30", "", "bogus://x", "tcp://", "3.5", "٣"]),
                       st.text(max_size=6)))
def test_hostile_options(tmp_path_factory, capsys, opt, value):
    work = tmp_path_factory.mktemp("o")
    (work / "in").mkdir()
    (work / "in" / "panel.toml").write_text(PANEL)
    (work / "in" / "x.tif").write_text("not read: the option is checked first")
    rc, _ = run_cli(work, ["run", str(work / "in" / "x.tif"), "--panel", str(work / "in" / "panel.toml"),
                           opt, value], capsys)
    assert rc == 2


def _range_cases():
    from tibspace.cells import PARAMETER_RANGES

    for name, (lo, hi) in PARAMETER_RANGES.items():
        for v in (f"{lo - abs(lo) - 1:g}", f"{hi * 10 + 1:g}", "nan", '"x"'):
            yield name, v


@pytest.mark.parametrize("name, value", list(_range_cases()))
def test_every_parameter_out_of_range_is_one_line(tmp_path, capsys, name, value):
    from tibspace.synthetic import make_clustered_cells

    (tmp_path / "in").mkdir()
    make_clustered_cells(300, seed=1).to_csv(tmp_path / "in" / "cells.csv", index=False)
    (tmp_path / "in" / "panel.toml").write_text(PANEL + f"\n[parameters]\n{name} = {value}\n")
    rc, err = run_cli(tmp_path, ["analyze", str(tmp_path / "in" / "cells.csv"), "--panel",
                                 str(tmp_path / "in" / "panel.toml")], capsys)
    assert rc == 2 and name in err


@pytest.mark.parametrize("case", ["offset_1e12", "five_thousand_at_one_point"])
def test_absurd_tables_are_one_line(tmp_path, capsys, case):
    from tibspace.synthetic import make_clustered_cells

    (tmp_path / "in").mkdir()
    cells = make_clustered_cells(5000, seed=1)
    if case == "offset_1e12":
        cells[["x_um", "y_um"]] += 1e12
    else:
        cells[["x_um", "y_um"]] = 7.0
    cells.to_csv(tmp_path / "in" / "cells.csv", index=False)
    (tmp_path / "in" / "panel.toml").write_text(PANEL)
    rc, err = run_cli(tmp_path, ["analyze", str(tmp_path / "in" / "cells.csv"), "--panel",
                                 str(tmp_path / "in" / "panel.toml")], capsys)
    assert rc == 2 and ("coordinates reach" in err or "share one position" in err)


# --------------------------------------------------------------------- declared size, NaN pixels, labels
@pytest.mark.parametrize("make", ["bomb_strips", "bomb_tiles", "bomb_small_limit", "mostly_nan",
                                  "label_bomb", "label_pixel_size"])
def test_hostile_declared_sizes(tmp_path, capsys, make):
    import sys
    import time

    import tifffile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _bombs import write_bomb_tiff

    from tibspace.io import write_ome_tiff

    work = tmp_path
    (work / "in").mkdir()
    (work / "in" / "panel.toml").write_text(PANEL)
    target = work / "in" / "image.tif"
    extra, expect = [], "--max-pixels"
    names = ["DAPI", "NaKATPase", "HepPar1", "CD68", "SPP1", "aSMA", "FAP", "CD3", "CD8", "MPO", "CitH3", "COL1"]
    if make == "bomb_strips":
        write_bomb_tiff(target, 200000, 200000)
    elif make == "bomb_tiles":
        write_bomb_tiff(target, 200000, 200000, tile=1024)
    elif make == "bomb_small_limit":
        write_bomb_tiff(target, 30000, 30000, n_pages=12, tile=1024)
        extra = ["--max-pixels", "1e8"]
    else:
        data = np.ones((12, 64, 64), np.float32)
        if make == "mostly_nan":
            data[0] = np.nan
            expect = "channel DAPI has 4096 of 4096 pixels NaN"
        write_ome_tiff(target, data, names, 0.5)
        if make == "label_bomb":
            write_bomb_tiff(work / "in" / "cells.tif", 200000, 200000, dtype=np.uint32)
            extra, expect = ["--labels", str(work / "in" / "cells.tif")], "does not match image 64x64"
        elif make == "label_pixel_size":
            lab = np.zeros((64, 64), np.int32)
            lab[5:15, 5:15] = 1
            tifffile.imwrite(work / "in" / "cells.tif", lab, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
            extra, expect = ["--labels", str(work / "in" / "cells.tif")], "label pixel size 1 µm"
    t0 = time.perf_counter()
    rc, err = run_cli(work, ["run", str(target), "--panel", str(work / "in" / "panel.toml")] + extra, capsys)
    assert rc == 2 and expect in err, err
    assert time.perf_counter() - t0 < 60
