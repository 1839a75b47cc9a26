"""Tiny TIFF files that declare huge planes ("decompression bombs"), for the input-limit tests.

Written byte by byte (classic little-endian TIFF): the pixel data is one small
block that every strip points at, or no data at all (tiles with byte count 0,
which readers treat as empty), so a 200000 × 200000 px plane costs 2 KB
(strips) or about 300 KB (tile offsets) on disk, and no sparse file is made.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

import numpy as np


def write_bomb_tiff(path: Path, ny: int, nx: int, *, n_pages: int = 1, tile: Optional[int] = None,
                    dtype=np.uint16, pixel_size_um: Optional[float] = 0.5,
                    rows_per_strip: Optional[int] = None) -> Path:
    """A TIFF of ``n_pages`` planes of ``ny`` × ``nx`` px of ``dtype`` holding (almost) no data."""
    dt = np.dtype(dtype)
    fmt = {"u": 1, "i": 2, "f": 3}[dt.kind]
    data = b"\x00" * 1024
    body = bytearray(b"II*\x00\x00\x00\x00\x00")  # IFD offset patched below
    data_off = len(body)
    body += data
    ifd_offsets = []
    for _ in range(n_pages):
        if tile:
            n_seg = (-(-ny // tile)) * (-(-nx // tile))
            offs, counts = [0] * n_seg, [0] * n_seg
        else:
            rps = int(rows_per_strip or ny)
            n_seg = -(-ny // rps)
            offs, counts = [data_off] * n_seg, [len(data)] * n_seg
        arrays = {}
        for name, vals in (("offs", offs), ("counts", counts)):
            arrays[name] = len(body)
            body += struct.pack(f"<{len(vals)}I", *vals)
        res_off = len(body)
        ppcm = 1e4 / pixel_size_um if pixel_size_um else 1.0
        body += struct.pack("<4I", int(round(ppcm * 1000)), 1000, int(round(ppcm * 1000)), 1000)
        entries = [(256, 4, 1, nx), (257, 4, 1, ny), (258, 3, 1, dt.itemsize * 8), (259, 3, 1, 1),
                   (262, 3, 1, 1), (277, 3, 1, 1)]
        if tile:
            entries += [(322, 4, 1, tile), (323, 4, 1, tile), (324, 4, n_seg, arrays["offs"]),
                        (325, 4, n_seg, arrays["counts"])]
        else:
            entries += [(273, 4, n_seg, arrays["offs"] if n_seg > 1 else offs[0]),
                        (278, 4, 1, int(rows_per_strip or ny)),
                        (279, 4, n_seg, arrays["counts"] if n_seg > 1 else counts[0])]
        if pixel_size_um:
            entries += [(282, 5, 1, res_off), (283, 5, 1, res_off + 8), (296, 3, 1, 3)]
        entries += [(339, 3, 1, fmt)]
        entries.sort()
        if len(body) % 2:
            body += b"\x00"
        ifd_offsets.append(len(body))
        body += struct.pack("<H", len(entries))
        for tag, typ, count, value in entries:
            packed = struct.pack("<HHI", tag, typ, count)
            packed += struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
            body += packed
        body += b"\x00\x00\x00\x00"  # next IFD, patched below
    struct.pack_into("<I", body, 4, ifd_offsets[0])
    for a, b in zip(ifd_offsets, ifd_offsets[1:]):
        n = struct.unpack_from("<H", body, a)[0]
        struct.pack_into("<I", body, a + 2 + 12 * n, b)
    Path(path).write_bytes(bytes(body))
    return Path(path)
