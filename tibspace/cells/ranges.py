"""Plausible ranges of every panel parameter, checked before any work starts.

A value outside its range is almost always a typo or a unit slip (µm vs nm,
a radius of 1e9 µm) and would otherwise run out of memory or time deep inside
an analysis; it gets one line naming the parameter, its value and the range.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from tibspace.errors import PanelError

#: name -> (lowest, highest) allowed value (inclusive); lists are checked element by element.
PARAMETER_RANGES: dict[str, tuple[float, float]] = {
    "cell_expansion_um": (0.0, 50.0), "nucleus_diameter_um": (2.0, 100.0), "tile_size_px": (256, 65536),
    "tumour_cell_radius_um": (2.0, 200.0), "closing_um": (0.0, 500.0), "min_hole_um2": (0.0, 1e8),
    "min_nest_area_um2": (0.0, 1e8), "min_nest_tumour_cells": (1, 100000),
    "min_nest_tumour_density": (0.0, 1e5), "min_nest_purity": (0.0, 1.0), "margin_um": (1.0, 2000.0),
    "profile_min_um": (-5000.0, 0.0), "profile_max_um": (0.0, 5000.0), "profile_step_um": (1.0, 1000.0),
    "outside_band_um": (1.0, 5000.0), "desert_density": (0.0, 1e5), "excluded_ratio": (0.0, 10.0),
    "exclusion_bandwidth_um": (1.0, 1000.0), "exclusion_grid_um": (0.5, 200.0), "exclusion_fraction": (0.0, 1.0),
    "exclusion_min_area_um2": (0.0, 1e9), "exclusion_zone_alpha": (1e-6, 0.5),
    "segment_um": (5.0, 1000.0), "barrier_width_um": (1.0, 500.0), "barrier_density": (0.0, 1e5),
    "colocalization_radii_um": (1.0, 1000.0), "n_shifts": (9, 99999),
    "shield_ring_um": (0.1, 50.0), "shield_min_coverage": (0.0, 1.0), "nest_strip_um": (0.1, 200.0),
    "contact_um": (0.1, 200.0), "antagonism_tile_um": (5.0, 5000.0), "antagonism_radii_um": (1.0, 1000.0),
    "graph_radius_um": (1.0, 1000.0), "n_permutations": (0, 99999), "n_envelope_sim": (0, 9999),
    "seed": (0, 2**32 - 1),
}
_MAX_LIST = 64


def check_parameter_ranges(params: Mapping[str, Any], where: str = "panel") -> None:
    """Raise :class:`PanelError` (one line) for the first parameter outside its range.

    Examples
    --------
    >>> check_parameter_ranges({"margin_um": 50.0})
    >>> check_parameter_ranges({"tumour_cell_radius_um": 1e9})
    Traceback (most recent call last):
    ...
    tibspace.errors.PanelError: panel: [parameters] tumour_cell_radius_um = 1e+09 is outside its plausible range 2 to 200; check the value and its unit
    """
    for name, value in params.items():
        if name not in PARAMETER_RANGES:
            continue
        lo, hi = PARAMETER_RANGES[name]
        if name == "nucleus_diameter_um" and value == "auto":
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) > _MAX_LIST:
            raise PanelError(f"{where}: [parameters] {name} has {len(values)} values; at most {_MAX_LIST}")
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
                raise PanelError(f"{where}: [parameters] {name} = {v:g} is outside its plausible range "
                                 f"{lo:g} to {hi:g}; check the value and its unit"
                                 if isinstance(v, (int, float)) and not isinstance(v, bool) else
                                 f"{where}: [parameters] {name} = {v!r:.40}: expected a number from {lo:g} to {hi:g}")
    lo, hi, step = (params.get(k) for k in ("profile_min_um", "profile_max_um", "profile_step_um"))
    if all(isinstance(v, (int, float)) for v in (lo, hi, step)) and step > 0 and (hi - lo) / step > 10000:
        raise PanelError(f"{where}: [parameters] profile_min_um..profile_max_um in steps of profile_step_um "
                         f"gives {int((hi - lo) / step)} bands; at most 10000")
