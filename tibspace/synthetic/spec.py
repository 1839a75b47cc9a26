"""Names and sizes of the synthetic world shared by every generator step.

Channel order, the true phenotypes, the immune phenotypes and the planted
distances (µm) that the analyses' definitions (docs/metrics.md) refer to.
"""

from __future__ import annotations

#: Channel names of the synthetic image, in channel order.
CHANNELS = ("DAPI", "NaKATPase", "HepPar1", "CD68", "SPP1", "aSMA", "FAP", "CD3", "CD8",
            "MPO", "CitH3", "COL1")
#: True phenotypes planted by :func:`make_tissue`.
PHENOTYPES = ("tumour", "SPP1_macrophage", "CAF", "CD8_T", "other_T", "neutrophil", "other")
IMMUNE_PHENOTYPES = ("inflamed", "excluded", "desert")

#: Centre distance (µm) within which a T cell touches a tumour cell: tumour
#: (≤ 8.5 µm) plus T-cell (≤ 4.5 µm) radii plus the 3 µm shield ring, so every
#: outline contact, and every contact the analysis counts from centroids
#: (``contact_um`` 12 µm), is within it.
SHIELD_BLOCK_REACH_UM = 16.0
#: Width of the barrier band outside the nest boundary (µm), as in metrics.md.
BARRIER_WIDTH_UM = 50.0
#: Ring outside each tumour cell's outline used for shield coverage (µm).
SHIELD_RING_UM = 3.0
#: Inner/outer margin half-width (µm).
MARGIN_UM = 50.0
