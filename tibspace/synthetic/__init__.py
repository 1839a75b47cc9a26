"""Synthetic HCC tissue with exact ground truth: multiplex images, cell tables and planted structures."""

from tibspace.synthetic.tables import (
    DEFAULT_PHENOTYPES,
    DENSITY_PER_MM2,
    nest_radius_um,
    nest_polygons,
    make_clustered_cells,
)
from tibspace.synthetic.tissue import (
    CHANNELS,
    PHENOTYPES,
    SyntheticTissue,
    make_tissue,
    load_truth,
    make_sample,
    SAMPLE_PRESET,
)

__all__ = [
    "DEFAULT_PHENOTYPES",
    "DENSITY_PER_MM2",
    "nest_radius_um",
    "nest_polygons",
    "make_clustered_cells",
    "CHANNELS",
    "PHENOTYPES",
    "SyntheticTissue",
    "make_tissue",
    "load_truth",
    "make_sample",
    "SAMPLE_PRESET",
]
