"""What a panel holds: default parameters and roles, marker, mask and table specs.

Units of :data:`DEFAULT_PARAMETERS` follow ``docs/metrics.md``: lengths in µm,
areas in µm², densities in cells/mm². :data:`DEFAULT_ROLES` says which
phenotypes play which part in the analyses when a panel's ``[roles]`` is silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["DEFAULT_PARAMETERS", "DEFAULT_ROLES", "MarkerSpec", "MaskSpec", "TableMapping"]

#: Every default of ``metrics.md`` (lengths µm, areas µm², densities cells/mm²).
DEFAULT_PARAMETERS: dict[str, Any] = {
    # segmentation
    "cell_expansion_um": 3.0,
    "nucleus_diameter_um": "auto",  # "auto": estimated from the image (tibspace.segment.scale); a number fixes it
    "lineage_conflicts": "margin",  # "margin": a cell with two lineages takes the clearer one (cells.conflicts); "first": rule order
    "tile_size_px": 2048,
    # tumour region and compartments
    "tumour_cell_radius_um": 15.0,
    "closing_um": 20.0,
    "min_hole_um2": 1000.0,
    "min_nest_area_um2": 2000.0,
    "min_nest_tumour_cells": 10,
    "min_nest_tumour_density": 1200.0,
    "min_nest_purity": 0.2,
    "margin_um": 50.0,
    # infiltration profile
    "profile_min_um": -200.0,
    "profile_max_um": 200.0,
    "profile_step_um": 20.0,
    # T-cell exclusion
    "outside_band_um": 200.0,
    "desert_density": 50.0,
    "excluded_ratio": 0.5,
    "exclusion_bandwidth_um": 30.0,
    "exclusion_grid_um": 10.0,
    "exclusion_fraction": 0.25,
    "exclusion_min_area_um2": 2500.0,
    "exclusion_zone_alpha": 0.05,
    # tumour immune barrier
    "segment_um": 50.0,
    "barrier_width_um": 50.0,
    "barrier_density": 400.0,
    "colocalization_radii_um": [20.0, 30.0, 50.0],
    "n_shifts": 999,
    # NET / collagen-I shields
    "shield_ring_um": 3.0,
    "shield_min_coverage": 0.5,
    "nest_strip_um": 5.0,
    "contact_um": 12.0,
    "antagonism_tile_um": 50.0,
    "antagonism_radii_um": [20.0, 30.0, 40.0, 50.0],
    # point patterns / neighbourhoods
    "graph_radius_um": 30.0,
    "n_permutations": 999,
    "n_envelope_sim": 99,  # random labellings per cross-L envelope in stats/ (not in metrics.md)
    "seed": 0,
}

#: Which phenotypes play which part in the analyses, when ``[roles]`` is silent.
DEFAULT_ROLES: dict[str, list[str]] = {
    "tumour": ["tumour"],
    "effector_t": ["CD8_T"],
    "t_cells": ["CD8_T", "other_T"],
    "barrier": ["SPP1_macrophage", "CAF"],
    "spp1_macrophage": ["SPP1_macrophage"],
    "caf": ["CAF"],
    "neutrophil": ["neutrophil"],
}


@dataclass
class MarkerSpec:
    """How one marker is gated: ``gate`` is a number or ``"otsu"``/``"gmm"``;
    ``compartment`` is ``"cell"`` (whole-cell mean) or ``"nucleus"``."""

    name: str
    gate: float | str = "otsu"
    compartment: str = "cell"


@dataclass
class MaskSpec:
    """A pixel mask (shield analysis): pixels above ``gate`` in any of
    ``channels`` (and, if given, above the gate in every ``require`` channel),
    objects smaller than ``min_object_um2`` removed."""

    name: str
    channels: list[str]
    require: list[str] = field(default_factory=list)
    gate: float | str = "otsu"
    min_object_um2: float = 5.0


@dataclass
class TableMapping:
    """Column mapping of an external cell table (``tibspace analyze``).

    ``None`` means "detect automatically".
    """

    cell_id: Optional[str] = None
    x: Optional[str] = None
    y: Optional[str] = None
    units: Optional[str] = None
    pixel_size_um: Optional[float] = None
    phenotype: Optional[str] = None
    phenotype_map: dict[str, str] = field(default_factory=dict)

