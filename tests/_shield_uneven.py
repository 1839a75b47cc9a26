"""Test helper: an uneven background (smooth gradient + autofluorescent speckle) on the stains.

Adds to the NET / collagen channels of a :func:`tibspace.synthetic.make_tissue`
image (in memory) what real sections show and the generator does not: a smooth
additive background that ramps across the field (illumination / tissue
thickness), low-frequency blotches, and bright autofluorescent speckle
(granules, ~1 µm). Amplitudes are relative to the channel's mean planted
signal so the test reads the same at any generator intensity scale.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def add_uneven_background(t, seed: int, *, channels=("COL1", "CitH3", "MPO"), gradient: float = 1.5,
                          blotch: float = 0.4, speckle_per_mm2: float = 4000.0, speckle: float = 0.8) -> np.ndarray:
    """A copy of ``t.image`` with background added to ``channels``.

    gradient : peak of the planar ramp (× mean planted signal of the channel)
    blotch : amplitude of 100 µm-scale blotches (× mean signal)
    speckle_per_mm2, speckle : density and peak (× mean signal) of ~1 µm granules
    """
    rng = np.random.default_rng(seed)
    img = t.image.astype(np.float64)
    ny, nx = img.shape[1:]
    px = float(t.pixel_size_um)
    yy, xx = np.mgrid[0:ny, 0:nx] / max(ny, nx)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * xx + np.sin(theta) * yy)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-12)
    bl = ndi.gaussian_filter(rng.normal(size=(ny, nx)), 100.0 / px / 2)
    bl = (bl - bl.min()) / max(np.ptp(bl), 1e-12)
    for name in channels:
        c = list(t.channel_names).index(name)
        ref = t.col1_mask if name == "COL1" else t.net_mask
        sig = float(img[c][ref].mean()) if ref.any() else float(np.percentile(img[c], 99.5))
        n_sp = rng.poisson(speckle_per_mm2 * ny * nx * px * px / 1e6)
        sp = np.zeros((ny, nx))
        sp[rng.integers(0, ny, n_sp), rng.integers(0, nx, n_sp)] = rng.uniform(0.3, 1.0, n_sp)
        sp = ndi.gaussian_filter(sp, 0.5 / px) * (2 * np.pi * (0.5 / px) ** 2)
        bg = sig * (gradient * ramp + blotch * bl + speckle * sp)
        img[c] = img[c] + rng.poisson(bg)          # shot noise of the added photons
    return np.clip(img, 0, np.iinfo(t.image.dtype).max).astype(t.image.dtype)
