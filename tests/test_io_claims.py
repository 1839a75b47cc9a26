"""Issue 13 claims about image input/output (reruns, hostile headers)."""
from __future__ import annotations

import numpy as np

from tibspace.io import write_labels_ome_tiff, write_ome_tiff


def test_ome_tiff_rewrite_is_byte_identical(tmp_path):
    """Row 13: the OME UUID comes from the content, so a rerun writes the same bytes."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, size=(2, 64, 48), dtype=np.uint16)
    a, b = tmp_path / "a" / "x.ome.tif", tmp_path / "b" / "x.ome.tif"
    write_ome_tiff(a, data, ["DAPI", "CD8"], 0.5)
    write_ome_tiff(b, data, ["DAPI", "CD8"], 0.5)
    assert a.read_bytes() == b.read_bytes()
    labels = rng.integers(0, 50, size=(64, 48)).astype(np.int32)
    la, lb = tmp_path / "a" / "l.ome.tif", tmp_path / "b" / "l.ome.tif"
    write_labels_ome_tiff(la, labels, 0.5)
    write_labels_ome_tiff(lb, labels, 0.5)
    assert la.read_bytes() == lb.read_bytes()
    # different content gives a different UUID
    c = tmp_path / "c" / "x.ome.tif"
    write_ome_tiff(c, data + 1, ["DAPI", "CD8"], 0.5)
    import tifffile
    uu = [tifffile.TiffFile(p).ome_metadata.split('UUID="')[1][:45] for p in (a, c)]
    assert uu[0] != uu[1]


# ------------------------------------------------------------------ helpers

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import tifffile  # noqa: E402

from tests.test_hostile import PANEL, REPO, run_cli  # noqa: E402

SAMPLE = REPO / "sample_data" / "hcc_sample.ome.tif"


def _sample_crop(n: int = 256) -> tuple[np.ndarray, list[str]]:
    with tifffile.TiffFile(SAMPLE) as tf:
        names = re.findall(r'<Channel [^>]*Name="([^"]*)"', tf.ome_metadata)
        data = tf.series[0].asarray()[:, :n, :n]
    return data, names


def _write_overdeclared(path: Path, data: np.ndarray, names: list[str], n_decl: int) -> None:
    """An OME-TIFF whose XML declares n_decl channels while only data.shape[0] IFDs exist."""
    tmp = path.with_name("tmp_" + path.name)
    tifffile.imwrite(tmp, data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": names}})
    with tifffile.TiffFile(tmp) as tf:
        xml = tf.ome_metadata
    tmp.unlink()
    n = data.shape[0]
    xml = xml.replace(f'SizeC="{n}"', f'SizeC="{n_decl}"').replace(f'PlaneCount="{n}"',
                                                                    f'PlaneCount="{n_decl}"')
    extra = "".join(f'<Channel ID="Channel:0:{i}" SamplesPerPixel="1" Name="channel_{i}">'
                    "<LightPath/></Channel>" for i in range(n, n_decl))
    tifffile.imwrite(path, data, description=xml.replace("<TiffData", extra + "<TiffData"),
                     metadata=None)


def test_ome_declaring_more_channels_than_ifds_is_refused(tmp_path, capsys):
    """Row 3: OME-XML with 99 channels over 12 IFDs, panel naming channel_50 → exit 2, one line."""
    (tmp_path / "in").mkdir()
    data, names = _sample_crop()
    target = tmp_path / "in" / "over.ome.tif"
    _write_overdeclared(target, data, names, 99)
    panel = PANEL.replace("CD8", "channel_50")
    assert panel != PANEL
    (tmp_path / "in" / "panel.toml").write_text(panel)
    rc, err = run_cli(tmp_path, ["run", str(target), "--panel", str(tmp_path / "in" / "panel.toml"),
                                 "--pixel-size-um", "0.5"], capsys)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert str(target) in last and "99" in last and "12" in last, err
