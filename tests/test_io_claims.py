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
