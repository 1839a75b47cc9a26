"""Bad input through the CLI: a one-line error, exit code 2, no partial output."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from tibspace.cli import main

PANEL = """
[channels]
nuclear = ["DAPI"]
[markers]
CD8 = { gate = "otsu" }
[phenotypes]
CD8_T = "CD8+"
"""


def _ome(path, data, names, px=0.5):
    meta = {"axes": "CYX" if data.ndim == 3 else "ZCYX", "Channel": {"Name": names}}
    if px:
        meta.update(PhysicalSizeX=px, PhysicalSizeY=px)
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    return path


def _blobs(shape=(128, 128), seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx in rng.uniform(10, shape[0] - 10, (12, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = 200
    return img


@pytest.fixture
def panel(tmp_path):
    p = tmp_path / "panel.toml"
    p.write_text(PANEL)
    return p


def _run_expect_error(args, out, capsys, *patterns):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("tibspace: error:"), err
    for pat in patterns:
        assert pat.lower() in err[0].lower(), (pat, err[0])
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert leftovers == [], leftovers
    return err[0]


def test_truncated_tiff(tmp_path, panel, capsys):
    good = _ome(tmp_path / "good.ome.tif", np.stack([_blobs(), _blobs(seed=1)]), ["DAPI", "CD8"])
    data = good.read_bytes()
    bad = tmp_path / "trunc.ome.tif"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    _run_expect_error(["run", str(bad), "--panel", str(panel), "--out", str(out), "--quiet"], out, capsys,
                      "trunc.ome.tif")


def test_not_an_image(tmp_path, panel, capsys):
    bad = tmp_path / "notes.tif"
    bad.write_text("this is a lab notebook, not a TIFF")
    out = tmp_path / "out"
    _run_expect_error(["run", str(bad), "--panel", str(panel), "--out", str(out), "--quiet"], out, capsys,
                      "notes.tif")


def test_no_pixel_size(tmp_path, panel, capsys):
    img = _ome(tmp_path / "nopx.ome.tif", np.stack([_blobs(), _blobs(seed=1)]), ["DAPI", "CD8"], px=None)
    out = tmp_path / "out"
    _run_expect_error(["run", str(img), "--panel", str(panel), "--out", str(out), "--quiet"], out, capsys,
                      "pixel size", "--pixel-size-um")


def test_panel_names_missing_channel(tmp_path, panel, capsys):
    img = _ome(tmp_path / "img.ome.tif", np.stack([_blobs(), _blobs(seed=1)]), ["DAPI", "CD3"])
    out = tmp_path / "out"
    _run_expect_error(["run", str(img), "--panel", str(panel), "--out", str(out), "--quiet"], out, capsys,
                      "CD8", "DAPI", "CD3")


def test_all_zero_image(tmp_path, panel, capsys):
    img = _ome(tmp_path / "zero.ome.tif", np.zeros((2, 64, 64), np.uint16), ["DAPI", "CD8"])
    out = tmp_path / "out"
    _run_expect_error(["run", str(img), "--panel", str(panel), "--out", str(out), "--quiet"], out, capsys,
                      "zero.ome.tif", "0")


def test_3d_stack_where_2d_expected(tmp_path, panel, capsys):
    data = np.stack([np.stack([_blobs(), _blobs(seed=1)])] * 5)  # Z, C, Y, X
    img = _ome(tmp_path / "zstack.ome.tif", data, ["DAPI", "CD8"])
    out = tmp_path / "out"
    _run_expect_error(["run", str(img), "--panel", str(panel), "--out", str(out), "--quiet"], out, capsys,
                      "zstack.ome.tif", "2-d")


def test_missing_file_and_missing_panel(tmp_path, panel, capsys):
    out = tmp_path / "out"
    _run_expect_error(["run", str(tmp_path / "nope.ome.tif"), "--panel", str(panel), "--out", str(out)], out,
                      capsys, "nope.ome.tif")
    img = _ome(tmp_path / "img.ome.tif", np.stack([_blobs(), _blobs(seed=1)]), ["DAPI", "CD8"])
    _run_expect_error(["run", str(img), "--panel", str(tmp_path / "nopanel.toml"), "--out", str(out)], out,
                      capsys, "nopanel.toml")


def test_console_script_exit_code(tmp_path):
    """The installed entry point (what core facilities script against) exits 2 with one line."""
    bad = tmp_path / "notes.tif"
    bad.write_text("not a tiff")
    p = subprocess.run([sys.executable, "-m", "tibspace", "analyze", str(tmp_path / "missing.csv"),
                        "--panel", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
