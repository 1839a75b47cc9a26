"""QuPath's pixel convention for geometries.

tibspace puts the centre of pixel (row r, col c) at (c·px, r·px) µm; QuPath's
pixel (r, c) spans [c, c+1) × [r, r+1) in its pixel coordinates.
"""

from __future__ import annotations

import shapely


# -------------------------------------------------------------------- GeoJSON
def um_to_qupath_px(geom, pixel_size_um: float):
    """µm geometry → QuPath pixel coordinates.

    tibspace puts the centre of pixel (row r, col c) at (c·px, r·px) µm
    (skimage centroids × pixel size); QuPath's pixel (r, c) spans
    [c, c+1) × [r, r+1), so its centre is at c + 0.5: ``x_px = x_um / px + 0.5``.
    """
    return shapely.transform(geom, lambda xy: xy / pixel_size_um + 0.5)


def qupath_px_to_um(geom, pixel_size_um: float):
    """Inverse of :func:`um_to_qupath_px`."""
    return shapely.transform(geom, lambda xy: (xy - 0.5) * pixel_size_um)
