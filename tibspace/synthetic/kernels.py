"""Numba kernels of the synthetic image generator (pixels, per tile).

Label rasterisation of parametric cells, shield-ring passes over tumour-cell
outlines, per-pixel channel composition and the crosstalk + PSF + noise pass.
Pixel noise comes from a counter-based hash of ``(seed, channel, row, column)``
(SplitMix64 → 16-bit lanes → normal quantile table), so an image does not
depend on its tiling or on the number of threads.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, inline="always")
def _splitmix(z):
    z = z + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _hash64(seed, c, y, x):
    """SplitMix64 of a unique counter for (c, y, x): 64 random bits per pixel."""
    ctr = (np.uint64(c) << np.uint64(56)) | (np.uint64(y) << np.uint64(28)) | np.uint64(x)
    return _splitmix(np.uint64(seed) + ctr * _GOLD)


@numba.njit(cache=True, inline="always")
def _lane(z, k, table):
    """k-th 16-bit lane of z mapped through the normal quantile table."""
    return table[(z >> np.uint64(16 * k)) & np.uint64(0xFFFF)]


def _normal_table() -> np.ndarray:
    """Standard normal quantiles at (k + 0.5) / 65536: a 16-bit uniform → N(0, 1)."""
    from scipy.special import ndtri

    return ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


_NORMAL_TABLE = _normal_table()


@numba.njit(cache=True, nogil=True)
def _rasterise(cy, cx, a, b, ct, st, hc, hs, exp_px, ids, y0, x0, key, lab, qn):
    """Z-buffer rasterisation of irregular elliptic nuclei and their cells.

    For every pixel the owner is the cell with the smallest signed distance
    ``key`` (px) beyond its nucleus outline (negative inside the nucleus),
    among cells whose expansion ``exp_px`` reaches the pixel: overlapping
    nuclei split along equal-distance curves, cytoplasm is Voronoi-limited.
    ``qn`` receives the owner's normalised nuclear radius (<1 inside).
    Harmonics k = 2, 3, ... with amplitudes (hc, hs) perturb the outline.
    """
    H, W = key.shape
    n = cy.shape[0]
    K = hc.shape[1]
    for i in range(n):
        amp = 0.0
        for k in range(K):
            amp += abs(hc[i, k]) + abs(hs[i, k])
        R = max(a[i], b[i]) * (1.0 + amp) + exp_px[i] + 1.0
        ylo = max(int(math.floor(cy[i] - R)), y0)
        yhi = min(int(math.ceil(cy[i] + R)), y0 + H - 1)
        xlo = max(int(math.floor(cx[i] - R)), x0)
        xhi = min(int(math.ceil(cx[i] + R)), x0 + W - 1)
        seff0 = math.sqrt(a[i] * b[i])
        for y in range(ylo, yhi + 1):
            dy = y - cy[i]
            for x in range(xlo, xhi + 1):
                dx = x - cx[i]
                u = (dx * ct[i] + dy * st[i]) / a[i]
                v = (-dx * st[i] + dy * ct[i]) / b[i]
                rho = math.sqrt(u * u + v * v)
                rb = 1.0
                if rho > 1e-9:
                    c1 = u / rho
                    s1 = v / rho
                    ck = c1 * c1 - s1 * s1  # cos 2θ
                    sk = 2.0 * c1 * s1      # sin 2θ
                    for k in range(K):
                        rb += hc[i, k] * ck + hs[i, k] * sk
                        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
                q = rho / rb
                kk = (q - 1.0) * seff0 * rb
                if kk > exp_px[i]:
                    continue
                yy = y - y0
                xx = x - x0
                if kk < key[yy, xx]:
                    key[yy, xx] = kk
                    lab[yy, xx] = ids[i]
                    qn[yy, xx] = q


@numba.njit(cache=True, nogil=True, inline="always")
def _on_boundary(cells, y, x, cid, H, W):
    """Is pixel (y, x) of cell ``cid`` on its boundary (a 4-neighbour outside the cell or the image)?"""
    return ((y == 0 or cells[y - 1, x] != cid) or (y == H - 1 or cells[y + 1, x] != cid)
            or (x == 0 or cells[y, x - 1] != cid) or (x == W - 1 or cells[y, x + 1] != cid))


@numba.njit(cache=True, nogil=True)
def _ring_pass(cells, ids, y0s, y1s, x0s, x1s, dy_off, dx_off, paint, mode, out_mask,
               out_n, out_cov):
    """Ring of pixels outside each cell within the disk offsets (dy_off, dx_off).

    mode 0: count ring pixels (out_n) and those where ``paint`` is True (out_cov).
    mode 1: set ``out_mask`` on ring pixels where ``paint`` is True.
    mode 2: set ``out_mask`` on all ring pixels.
    The ring is the disk dilation of the cell minus the cell; it is built from
    the cell's boundary pixels (the nearest cell pixel to any outside pixel is
    a boundary pixel), each ring pixel counted once.
    """
    H, W = cells.shape
    nd = dy_off.shape[0]
    for j in range(ids.shape[0]):
        cid = ids[j]
        ya, yb, xa, xb = y0s[j], y1s[j], x0s[j], x1s[j]
        hh = yb - ya
        ww = xb - xa
        seen = np.zeros((hh, ww), np.bool_)
        n = 0
        cov = 0
        for y in range(ya, yb):
            for x in range(xa, xb):
                if cells[y, x] != cid or not _on_boundary(cells, y, x, cid, H, W):
                    continue
                for o in range(nd):
                    qy = y + dy_off[o]
                    qx = x + dx_off[o]
                    if qy < 0 or qx < 0 or qy >= H or qx >= W:
                        continue
                    if qy < ya or qy >= yb or qx < xa or qx >= xb:
                        continue
                    if cells[qy, qx] == cid or seen[qy - ya, qx - xa]:
                        continue
                    seen[qy - ya, qx - xa] = True
                    n += 1
                    if mode == 0:
                        if paint[qy, qx]:
                            cov += 1
                    elif mode == 1:
                        if paint[qy, qx]:
                            out_mask[qy, qx] = True
                    else:
                        out_mask[qy, qx] = True
        out_n[j] = n
        out_cov[j] = cov


@numba.njit(cache=True, nogil=True)
def _ring_dist(cells, ids, y0s, y1s, x0s, x1s, dy_off, dx_off, d2_off, dmap):
    """dmap[q] = min over the given cells not containing q of the squared
    disk-offset distance (px²) from the cell's boundary to q (ring only)."""
    H, W = cells.shape
    nd = dy_off.shape[0]
    for j in range(ids.shape[0]):
        cid = ids[j]
        ya, yb, xa, xb = y0s[j], y1s[j], x0s[j], x1s[j]
        for y in range(ya, yb):
            for x in range(xa, xb):
                if cells[y, x] != cid or not _on_boundary(cells, y, x, cid, H, W):
                    continue
                for o in range(nd):
                    qy = y + dy_off[o]
                    qx = x + dx_off[o]
                    if qy < 0 or qx < 0 or qy >= H or qx >= W:
                        continue
                    if cells[qy, qx] == cid:
                        continue
                    if d2_off[o] < dmap[qy, qx]:
                        dmap[qy, qx] = d2_off[o]


@numba.njit(cache=True, nogil=True)
def _compose(L, Ln, Q, net, col, tissue, gy0, gx0, seed, lev, wn, wc, wm, net_w, col_w,
             af_in, af_out, afgrid, afstep, table, chromatin, granularity, out):
    """Noise-free expected photon counts of every channel for one tile."""
    C, H, W = out.shape
    gh, gw = afgrid.shape
    for y in range(H):
        for x in range(W):
            gy = gy0 + y
            gx = gx0 + x
            # smooth autofluorescence field: bilinear on a coarse grid
            fy = gy / afstep
            fx = gx / afstep
            iy = min(int(fy), gh - 2)
            ix = min(int(fx), gw - 2)
            ty = fy - iy
            tx = fx - ix
            af = ((1 - ty) * ((1 - tx) * afgrid[iy, ix] + tx * afgrid[iy, ix + 1])
                  + ty * ((1 - tx) * afgrid[iy + 1, ix] + tx * afgrid[iy + 1, ix + 1]))
            l = L[y, x]
            zz = _hash64(seed, 200, gy, gx)
            nucv = 0.0
            cyto = 0.0
            mem = 0.0
            if l > 0:
                if Ln[y, x] > 0:
                    q = min(Q[y, x], 1.0)
                    nucv = (0.45 + 0.55 * math.sqrt(1.0 - q * q)) * (
                        1.0 + chromatin * _lane(zz, 0, table))
                else:
                    cyto = 1.0
                border = False
                if y > 0 and L[y - 1, x] != l:
                    border = True
                elif y < H - 1 and L[y + 1, x] != l:
                    border = True
                elif x > 0 and L[y, x - 1] != l:
                    border = True
                elif x < W - 1 and L[y, x + 1] != l:
                    border = True
                if border:
                    mem = 1.0
                gran = 1.0 + granularity * _lane(zz, 1, table)
                if gran < 0.2:
                    gran = 0.2
                cyto *= gran
                mem *= gran
            fib = 0.0
            if net[y, x] or col[y, x]:
                fib = 1.0 + 0.3 * _lane(zz, 2, table)
                if fib < 0.2:
                    fib = 0.2
            isn = 1.0 if net[y, x] else 0.0
            isc = 1.0 if col[y, x] else 0.0
            tis = tissue[y, x]
            for c in range(C):
                v = af_in[c] * af if tis else af_out
                if l > 0:
                    v += lev[l, c] * (wn[c] * nucv + wc[c] * cyto + wm[c] * mem)
                v += fib * (net_w[c] * isn + col_w[c] * isc)
                out[c, y, x] = v


@numba.njit(cache=True, nogil=True)
def _mix_blur_noise(buf, fwd, bwd, taps, gain, read_sd, noise, seed, gy0, gx0, cy0, cx0, table,
                    out):
    """Crosstalk between neighbouring channels, Gaussian PSF, shot + read noise.

    ``fwd[c]`` / ``bwd[c]`` (float32, per channel): fraction of channel c - 1 /
    c + 1 seen in channel c.

    ``buf`` (C, H, W) holds expected photons for the tile with a margin of at
    least ``len(taps) // 2`` pixels on every side; ``out`` (C, h, w) receives
    uint16 DN for the core starting at (cy0, cx0) in ``buf``. Noise:
    DN = gain·λ + sqrt(gain²·λ + read²)·z (normal approximation of Poisson
    shot noise plus Gaussian read noise); one 64-bit hash of (seed, y, x)
    gives the z of four channels.
    """
    C, H, W = buf.shape
    _, h, w = out.shape
    nt = taps.shape[0]
    r = nt // 2
    mixed = np.empty(W, np.float32)
    rowb = np.empty((h + 2 * r, w), np.float32)
    lam = np.empty((C, h, w), np.float32)
    acc = np.empty(w, np.float32)
    for c in range(C):
        a = fwd[c] if c > 0 else np.float32(0.0)
        b = bwd[c] if c < C - 1 else np.float32(0.0)
        cm = max(c - 1, 0)
        cp = min(c + 1, C - 1)
        for yy in range(h + 2 * r):
            y = cy0 - r + yy
            for x in range(W):
                mixed[x] = buf[c, y, x] + a * buf[cm, y, x] + b * buf[cp, y, x]
            for x in range(w):
                rowb[yy, x] = 0.0
            for t in range(nt):
                tv = taps[t]
                off = cx0 - r + t
                for x in range(w):
                    rowb[yy, x] += tv * mixed[off + x]
        for y in range(h):
            for x in range(w):
                acc[x] = 0.0
            for t in range(nt):
                tv = taps[t]
                for x in range(w):
                    acc[x] += tv * rowb[y + t, x]
            for x in range(w):
                lam[c, y, x] = acc[x] * gain
    rd2 = read_sd * read_sd
    for g in range((C + 3) // 4):
        for y in range(h):
            for x in range(w):
                z = _hash64(seed, g, gy0 + y, gx0 + x)
                for k in range(4):
                    c = 4 * g + k
                    if c >= C:
                        break
                    lm = lam[c, y, x]
                    v = lm + math.sqrt(gain * lm + rd2) * noise * _lane(z, k, table)
                    v = math.floor(v + 0.5)
                    if v < 0.0:
                        v = 0.0
                    elif v > 65535.0:
                        v = 65535.0
                    out[c, y, x] = np.uint16(v)
