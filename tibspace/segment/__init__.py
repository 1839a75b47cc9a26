"""Nucleus and cell segmentation, classical and tiled over Dask, in bounded memory.

Modules: ``nuclei`` (one image: smoothing, foreground, seeds, watershed),
``expand`` (distance transforms, nuclei grown into cells), ``tiling`` (tile
grid, tile worker, ownership, stitching), ``scheduler`` (in-process or Dask
cluster), ``image`` (:func:`segment_image` over a whole file), ``scale``
(nucleus size estimated from the image), ``matching``
(scoring against a reference), ``given`` / ``given_tiled`` (measurement on
given label masks, whole or tile by tile).
"""

from tibspace.segment.nuclei import segment_nuclei, smooth_nuclear
from tibspace.segment.expand import (distance_to_background, expand_labels_fast,
                                     expand_nuclei_to_cells)
from tibspace.segment.tiling import tile_grid
from tibspace.segment.image import SegmentationResult, segment_image
from tibspace.segment.matching import match_labels, match_points
from tibspace.segment.scale import estimate_nucleus_diameter, noise_smoothing_um
from tibspace.segment.given import segment_from_label_files, segment_from_labels
from tibspace.segment.given_tiled import segment_from_label_planes

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
    "estimate_nucleus_diameter",
    "noise_smoothing_um",
    "segment_from_labels",
    "segment_from_label_files",
    "segment_from_label_planes",
]
