"""Colours shared by every view of a result (report, GeoJSON, napari), so a
phenotype or structure looks the same everywhere.
"""

from __future__ import annotations

import hashlib

# Colours shared by every view of a result (report, GeoJSON, napari) so a
# phenotype or structure looks the same everywhere.
PHENOTYPE_COLOURS = {
    "tumour": (46, 160, 67),
    "SPP1_macrophage": (255, 140, 0),
    "CAF": (160, 82, 45),
    "CD8_T": (220, 20, 160),
    "other_T": (150, 110, 220),
    "neutrophil": (0, 170, 255),
    "other": (150, 150, 150),
}


STRUCTURE_COLOURS = {
    "tumour_nest": (46, 160, 67),
    "barrier_covered": (0, 90, 200),  # blue: distinct from the tumour cells' green
    "barrier_gap": (230, 0, 0),
    "exclusion_zone": (255, 215, 0),
    "tissue": (120, 120, 120),
}


def phenotype_colour(name: str) -> tuple[int, int, int]:
    """Stable RGB colour for a phenotype (known ones fixed, others hashed)."""
    if name in PHENOTYPE_COLOURS:
        return PHENOTYPE_COLOURS[name]
    h = hashlib.sha1(name.encode()).digest()
    return (64 + h[0] % 192, 64 + h[1] % 192, 64 + h[2] % 192)
