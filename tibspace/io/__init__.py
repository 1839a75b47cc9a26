"""Input and output of raw data: lazy multiplex images (OME-TIFF, named TIFF pages, folders), cell tables from other tools, channel-name matching, QuPath's pixel convention, and atomic file writes."""

from tibspace.io.files import atomic_path
from tibspace.io.resultset import (MANIFEST, check_free_space, extended_result_set, result_set, safe_name, safe_path,
                                   work_folder)
from tibspace.io.channels import match_vendor_name, normalise_name, vendor_base_name
from tibspace.io.limits import MAX_PIXELS, check_declared_pixels, check_memory
from tibspace.io.qupath import um_to_qupath_px, qupath_px_to_um
from tibspace.io.image import MultiplexImage, check_not_empty
from tibspace.io.channels import normalise_name as normalise_channel_name
from tibspace.io.tiff_meta import LENGTH_UNITS_UM, check_pixel_size_um
from tibspace.io.tiff_read import open_image
from tibspace.io.zarr_image import ELEMENT_SEP, is_zarr, open_labels, open_zarr, split_element
from tibspace.io.ome_write import write_labels_ome_tiff, write_ome_tiff
from tibspace.io.tables import UNCLASSIFIED, check_table_classes, read_cell_table, standardise_cell_table
from tibspace.io.thumbnail import composite_rgb, thumbnail

__all__ = [
    "atomic_path",
    "MANIFEST",
    "result_set",
    "extended_result_set",
    "work_folder",
    "check_free_space",
    "safe_name",
    "safe_path",
    "normalise_name",
    "match_vendor_name",
    "vendor_base_name",
    "MAX_PIXELS",
    "check_declared_pixels",
    "check_memory",
    "um_to_qupath_px",
    "qupath_px_to_um",
    "MultiplexImage",
    "open_image",
    "split_element",
    "ELEMENT_SEP",
    "is_zarr",
    "open_zarr",
    "open_labels",
    "check_not_empty",
    "write_ome_tiff",
    "write_labels_ome_tiff",
    "normalise_channel_name",
    "LENGTH_UNITS_UM",
    "check_pixel_size_um",
    "read_cell_table",
    "check_table_classes",
    "UNCLASSIFIED",
    "standardise_cell_table",
    "thumbnail",
    "composite_rgb",
]
from tibspace.io.label_masks import (detect_label_format, label_source, read_label_mask,  # noqa: E402
                                     resolve_label_path)

__all__ += ["read_label_mask", "detect_label_format", "resolve_label_path", "label_source"]
