"""Spatial statistics over cells: point-pattern functions (K, L, pcf, G) with edge correction and envelopes, neighbourhood enrichment and co-occurrence, infiltration profiles."""

from tibspace.stats.neighbourhood import (
    spatial_graph,
    mixing_score,
    counts_within,
    nearest_distance_to_phenotypes,
    co_occurrence,
)
from tibspace.stats.enrichment import NeighbourhoodEnrichment, neighbourhood_enrichment, join_count_moments
from tibspace.stats.estimators import (
    ripley_k,
    ripley_l,
    cross_k,
    cross_l,
    pair_correlation,
    g_cross,
    cross_l_all_pairs,
)
from tibspace.stats.envelopes import random_labelling_envelope
from tibspace.stats.windows import set_covariance, circle_fraction_in_window
from tibspace.stats._kernels import neighbour_pairs
from tibspace.stats.profiles import infiltration_profile, DEFAULT_EDGES_UM, band_index

__all__ = [
    "spatial_graph",
    "NeighbourhoodEnrichment",
    "neighbourhood_enrichment",
    "join_count_moments",
    "mixing_score",
    "counts_within",
    "nearest_distance_to_phenotypes",
    "co_occurrence",
    "ripley_k",
    "ripley_l",
    "cross_k",
    "cross_l",
    "pair_correlation",
    "g_cross",
    "cross_l_all_pairs",
    "random_labelling_envelope",
    "set_covariance",
    "circle_fraction_in_window",
    "neighbour_pairs",
    "infiltration_profile",
    "DEFAULT_EDGES_UM",
    "band_index",
]
