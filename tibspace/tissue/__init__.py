"""Tumour and tissue regions in µm: nests, signed distance to the tumour boundary, compartments, distance bands and perimeter segments."""

from tibspace.tissue._memo import clear_geometry_cache
from tibspace.tissue.band_split import nest_band_areas_um2, segment_band_areas_um2
from tibspace.tissue.bands import _check_edges, band_areas_um2, band_geometry  # noqa: F401 (_check_edges: stats)
from tibspace.tissue.composition import filter_nests, nest_composition
from tibspace.tissue.distance import (
                                      COMPARTMENTS,
                                      annotate_cells,
                                      assign_compartments,
                                      nearest_boundary,
                                      nearest_nest_id,
                                      signed_distance_um,
)
from tibspace.tissue.nests import (
                                      TumourRegion,
                                      mask_to_geometry,
                                      tumour_region_from_cells,
                                      tumour_region_from_mask,
)
from tibspace.tissue.segments import assign_segments, perimeter_segments
from tibspace.tissue.tissue_region import (
                                      TISSUE_VECTOR_MAX_CELLS,
                                      tissue_region_from_cells,
                                      tissue_region_from_mask,
)

__all__ = [
    "filter_nests",
    "nest_composition",
    "TumourRegion",
    "tumour_region_from_cells",
    "tumour_region_from_mask",
    "tissue_region_from_cells",
    "tissue_region_from_mask",
    "signed_distance_um",
    "nearest_nest_id",
    "assign_compartments",
    "annotate_cells",
    "perimeter_segments",
    "assign_segments",
    "band_areas_um2",
    "segment_band_areas_um2",
    "COMPARTMENTS",
    "nearest_boundary",
    "band_geometry",
    "nest_band_areas_um2",
    "mask_to_geometry",
    "TISSUE_VECTOR_MAX_CELLS",
    "clear_geometry_cache",
]
