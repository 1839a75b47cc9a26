"""Nucleus and cell segmentation, classical and tiled over Dask, in bounded memory."""

from tibspace.segment.classical import (
    segment_nuclei,
    expand_nuclei_to_cells,
    segment_image,
    SegmentationResult,
    match_labels,
    match_points,
    tile_grid,
    smooth_nuclear,
    distance_to_background,
    expand_labels_fast,
)

__all__ = [
    "segment_nuclei",
    "expand_nuclei_to_cells",
    "segment_image",
    "SegmentationResult",
    "match_labels",
    "match_points",
    "tile_grid",
    "smooth_nuclear",
    "distance_to_background",
    "expand_labels_fast",
]
