"""Label images of synthetic cells (pixels): nuclei and whole cells, per tile.

Each cell is an ellipse with a few boundary harmonics; the nucleus is grown by
the cell's cytoplasm expansion into the whole cell. Tiles of ``_TILE`` pixels
run on Dask threads; a cell's nucleus and whole cell share its id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tibspace.synthetic.kernels import _rasterise

_TILE = 1024                  # render tile (px)


def _cell_geometry(cells: pd.DataFrame, px: float, rng):
    """Per-cell rasterisation parameters in pixels."""
    n = len(cells)
    r = cells.r_um.to_numpy() / px
    asp = cells.aspect.to_numpy()
    a = r * np.sqrt(asp)
    b = r / np.sqrt(asp)
    th = cells.orient.to_numpy()
    K = 4  # harmonics k = 2..5
    amp = rng.uniform(0.3, 1.0, (n, K)) * cells.irr.to_numpy()[:, None]
    amp /= np.arange(1, K + 1)[None, :] ** 0.5
    lob = cells.lobes.to_numpy()
    amp[:, 1] += lob * rng.uniform(0.7, 1.0, n)   # k=3 lobes for neutrophils
    amp[:, 2] += 0.6 * lob * rng.uniform(0.5, 1.0, n)
    ph = rng.uniform(0, 2 * np.pi, (n, K))
    return dict(cy=cells.y.to_numpy() / px, cx=cells.x.to_numpy() / px, a=a, b=b,
                ct=np.cos(th), st=np.sin(th), hc=amp * np.cos(ph), hs=-amp * np.sin(ph),
                exp_px=cells.exp_um.to_numpy() / px)


def _tiles(H: int, W: int, tile: int):
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            yield y0, min(y0 + tile, H), x0, min(x0 + tile, W)


def _run_threads(fn, items):
    """Run fn over items on Dask's threaded scheduler (kernels release the GIL)."""
    import dask

    tasks = [dask.delayed(fn)(*it) for it in items]
    return dask.compute(*tasks, scheduler="threads")


def _render_labels(cells: pd.DataFrame, shape, px: float, rng):
    H, W = shape
    g = _cell_geometry(cells, px, rng)
    n = len(cells)
    ids = np.arange(1, n + 1, dtype=np.int32)
    amp = np.abs(g["hc"]).sum(1) + np.abs(g["hs"]).sum(1)
    R = np.maximum(g["a"], g["b"]) * (1 + amp) + g["exp_px"] + 2
    nuclei = np.zeros(shape, np.int32)
    lab = np.zeros(shape, np.int32)
    qn = np.zeros(shape, np.float32)

    def work(y0, y1, x0, x1):
        sel = ((g["cy"] + R >= y0) & (g["cy"] - R < y1) & (g["cx"] + R >= x0)
               & (g["cx"] - R < x1))
        key = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
        tl = np.zeros((y1 - y0, x1 - x0), np.int32)
        tq = np.zeros((y1 - y0, x1 - x0), np.float32)
        _rasterise(g["cy"][sel], g["cx"][sel], g["a"][sel], g["b"][sel], g["ct"][sel],
                   g["st"][sel], np.ascontiguousarray(g["hc"][sel]),
                   np.ascontiguousarray(g["hs"][sel]), g["exp_px"][sel], ids[sel], y0, x0, key,
                   tl, tq)
        lab[y0:y1, x0:x1] = tl
        nuclei[y0:y1, x0:x1] = np.where(key < 0, tl, 0)
        qn[y0:y1, x0:x1] = tq
        tn = nuclei[y0:y1, x0:x1]
        yy, xx = np.nonzero(tn)
        v = tn[yy, xx]
        return (np.bincount(v, minlength=n + 1), np.bincount(v, yy + y0, minlength=n + 1),
                np.bincount(v, xx + x0, minlength=n + 1),
                np.bincount(tl.ravel(), minlength=n + 1))

    res = _run_threads(work, list(_tiles(H, W, _TILE)))
    cnt = sum(r[0] for r in res)
    sy = sum(r[1] for r in res)
    sx = sum(r[2] for r in res)
    carea = sum(r[3] for r in res)
    # drop cells whose nucleus was (almost) swallowed by neighbours or the edge
    min_px = max(8, int(round(4.0 / px ** 2)))   # 4 µm²
    ok = cnt[1:] >= min_px
    if not ok.all():
        lut = np.zeros(n + 1, np.int32)
        lut[1:][ok] = np.arange(1, ok.sum() + 1, dtype=np.int32)
        nuclei = lut[nuclei]
        lab = lut[lab]
        cells = cells[ok].reset_index(drop=True)
        cnt, sy, sx, carea = (np.r_[0, v[1:][ok]] for v in (cnt, sy, sx, carea))
        for k in ("cy", "cx", "a", "b", "exp_px"):
            g[k] = g[k][ok]
        R = R[ok]
    cells = cells.assign(cell_id=np.arange(1, len(cells) + 1),
                         cy_px=sy[1:] / cnt[1:], cx_px=sx[1:] / cnt[1:],
                         nucleus_px=cnt[1:], cell_px=carea[1:],
                         seed_cy=g["cy"], seed_cx=g["cx"], R_px=R)
    return nuclei, lab, qn, cells


def _disk_patch(cy: float, cx: float, rr: float, shape):
    """(box slices, bool disk) of the pixels whose centres lie within ``rr``
    of (cy, cx) (pixels), clipped to ``shape``; (None, None) off the image."""
    H, W = shape
    ya, yb = int(max(cy - rr - 1, 0)), int(min(cy + rr + 2, H))
    xa, xb = int(max(cx - rr - 1, 0)), int(min(cx + rr + 2, W))
    if yb <= ya or xb <= xa:
        return None, None
    yy, xx = np.mgrid[ya:yb, xa:xb]
    return (slice(ya, yb), slice(xa, xb)), (yy - cy) ** 2 + (xx - cx) ** 2 <= rr ** 2
