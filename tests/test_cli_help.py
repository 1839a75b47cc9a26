"""The command line as a first-time user meets it: help, the demo from an installed package, log-friendly progress."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from tibspace import cli

REPO = Path(__file__).resolve().parents[1]


def test_top_level_help_is_plain_text_with_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "tibspace cohort manifest.csv" in out
    assert ":mod:" not in out and "``" not in out


@pytest.mark.parametrize("command", ["run", "analyze", "cohort", "compare", "demo", "synth"])
def test_every_option_has_help(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"


def test_demo_sample_is_generated_when_not_in_a_checkout(tmp_path, monkeypatch):
    """An installed wheel has no sample_data/: the demo generates the identical sample once."""
    monkeypatch.setattr(cli, "SAMPLE_IMAGE", tmp_path / "nowhere" / "hcc_sample.ome.tif")
    monkeypatch.setattr(cli, "SAMPLE_PANEL", tmp_path / "nowhere" / "hcc_sample_panel.toml")
    monkeypatch.setenv("TIBSPACE_CACHE", str(tmp_path / "cache"))
    image, panel = cli._sample_paths()
    assert image.parent == tmp_path / "cache" / "sample_data"
    import tifffile

    ours = tifffile.imread(image)
    bundled = tifffile.imread(REPO / "sample_data" / "hcc_sample.ome.tif")
    assert hashlib.sha256(ours.tobytes()).digest() == hashlib.sha256(bundled.tobytes()).digest()
    assert panel.read_text() == (REPO / "sample_data" / "hcc_sample_panel.toml").read_text()
    assert cli._sample_paths() == (image, panel)  # second call: nothing generated again


def test_progress_in_a_log_is_one_line_per_step():
    from tibspace.progress import tqdm_progress

    log = io.StringIO()
    cb = tqdm_progress(stream=log)
    for k in range(5):
        cb("segment tiles", k, 4)
    cb("writing outputs", 0, 2)
    cb("writing outputs", 2, 2)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("segment tiles: 4/4 in ") and "\r" not in log.getvalue()


def test_synth_small_images_work(tmp_path, capsys):
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "--size", "512", "--quiet"]) == 0
    assert (tmp_path / "s" / "image.ome.tif").exists()


def test_first_run_says_it_compiles(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "kernels_compiled", lambda: False)
    cli.main(["analyze", str(tmp_path / "missing.csv"), "--panel", str(REPO / "sample_data" / "hcc_sample_panel.toml"),
              "--out", str(tmp_path / "o"), "--quiet"])
    assert "compiling numerical kernels (first run only" in capsys.readouterr().err
    monkeypatch.setattr(cli, "kernels_compiled", lambda: True)
    cli.main(["analyze", str(tmp_path / "missing.csv"), "--panel", str(REPO / "sample_data" / "hcc_sample_panel.toml"),
              "--out", str(tmp_path / "o"), "--quiet"])
    assert "compiling" not in capsys.readouterr().err
