"""Limits, layer names, hover columns and colours shared by the result layers.

Colours are RGB 0–255 in the constants and RGBA 0–1 in the layer kwargs;
phenotype colours are tibspace's (:func:`tibspace.outputs.phenotype_colour`),
so the viewer, the reports and the GeoJSON agree.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from tibspace.outputs import phenotype_colour

#: Above this many cells, phenotypes are drawn as a labels layer, not points.
MAX_POINTS = 100_000
#: Above this many shapes in one layer, outlines are drawn as a Vectors layer.
MAX_SHAPES = 5_000

#: Above this many filled polygon pieces in a layer, only outlines are drawn.
MAX_FILLED = 500
#: Above this many cells the nests are drawn as outlines only: their 6 % tint costs
#: ~12 ms CPU per frame on software OpenGL whatever the cell count (as much as ~10k
#: points; scripts/napari_scale_check.py --per-layer), and with this many tumour
#: dots the nests already show. Hover over an outline still gives the nest's numbers.
FILL_MAX_CELLS = 50_000
#: Outlines are simplified to this tolerance (µm) for display (sub-cell).
SIMPLIFY_UM = 1.0

#: Dot diameter as a fraction of the median cell's equivalent diameter (the
#: stain stays visible around each dot).
POINT_SIZE_FRACTION = 0.6

#: Names of the layers :func:`result_layers` makes (bottom to top).
LAYER_NAMES = ("cells", "NET mask", "Col1 mask", "exclusion zones", "tumour nests",
               "cells by phenotype", "barrier covered", "barrier gaps")

#: Cell-table columns shown on hover (those present in the table).
FEATURE_COLUMNS = ("cell_id", "phenotype", "signed_dist_um", "compartment", "nest_id",
                   "segment_id", "shield_coverage", "shielded", "t_contact", "area_um2")

#: Per-nest numbers shown on hover over a nest (those present), in order.
NEST_FEATURES = ("nest_id", "area_um2", "perimeter_um", "immune_phenotype", "infiltration_ratio",
                 "barrier_coverage", "n_gaps", "largest_gap_um", "macrophage_caf_ratio",
                 "link_p_value", "zone_perimeter_fraction", "shielded_fraction",
                 "boundary_shield_fraction", "t_contact_rate")

#: Colours of the NET / collagen-I mask layers (RGB 0-255).
MASK_COLOURS = {"net": (190, 60, 255), "col1": (120, 200, 255)}
_MASK_NAMES = {"net": "NET mask", "col1": "Col1 mask"}
_TRANSPARENT = np.zeros(4)


def _rgba(rgb: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    return np.array([rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0, alpha])


def phenotype_rgba(phenotypes: Iterable[str]) -> dict[str, np.ndarray]:
    """RGBA (0–1) colour of each phenotype, shared with tibspace's reports/GeoJSON.

    Examples
    --------
    >>> phenotype_rgba(["tumour"])["tumour"].round(2).tolist()
    [0.18, 0.63, 0.26, 1.0]
    """
    return {str(p): _rgba(phenotype_colour(str(p))) for p in phenotypes}


def _with_units(tuples: list[tuple]) -> list[tuple]:
    for _, kwargs, _ in tuples:
        kwargs.setdefault("units", ("um", "um"))
    return tuples
