"""The three analyses: tumour immune barriers, NET / collagen-I shields and T-cell exclusion."""

from tibspace.analyses.barrier import (
    BarrierResult,
    barrier_analysis,
    circular_runs,
    circular_shift_test,
    can_run_barrier,
    coverage_profile,
)
from tibspace.analyses.exclusion import (
    ExclusionResult,
    exclusion_analysis,
    call_immune_phenotype,
    t_density_map,
    can_run_exclusion,
    COMPARTMENTS,
)
from tibspace.analyses.shield_masks import shield_masks, otsu_gate_log1p
from tibspace.analyses.shield_rings import shield_ring_coverage, nest_shield_fraction
from tibspace.analyses.shield import (
    ShieldResult,
    shield_analysis,
    contact_pairs_from_labels,
    can_run_shield,
)

__all__ = [
    "BarrierResult",
    "barrier_analysis",
    "circular_runs",
    "circular_shift_test",
    "can_run_barrier",
    "coverage_profile",
    "ExclusionResult",
    "exclusion_analysis",
    "call_immune_phenotype",
    "t_density_map",
    "can_run_exclusion",
    "COMPARTMENTS",
    "ShieldResult",
    "shield_masks",
    "shield_ring_coverage",
    "shield_analysis",
    "nest_shield_fraction",
    "contact_pairs_from_labels",
    "can_run_shield",
    "otsu_gate_log1p",
]
