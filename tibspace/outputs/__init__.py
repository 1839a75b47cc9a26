"""What a run writes: tables, QuPath GeoJSON, AnnData, metrics.json, the HTML report and its figures."""

from tibspace.outputs.colours import PHENOTYPE_COLOURS, STRUCTURE_COLOURS, phenotype_colour
from tibspace.outputs.tables import write_table
from tibspace.outputs.metrics import write_json, file_sha256
from tibspace.outputs.geojson import (geojson_features, write_geojson, read_geojson_annotations,
                                      write_cell_detections)
from tibspace.outputs.anndata import write_anndata
from tibspace.outputs.plotting import (
    plot_infiltration_profile,
    plot_barrier_coverage,
    plot_overview,
)
from tibspace.outputs.report import summary_lines, write_report_files

__all__ = [
    "PHENOTYPE_COLOURS",
    "STRUCTURE_COLOURS",
    "phenotype_colour",
    "write_table",
    "write_json",
    "file_sha256",
    "geojson_features",
    "write_geojson",
    "read_geojson_annotations",
    "write_cell_detections",
    "write_cell_detections",
    "write_anndata",
    "plot_infiltration_profile",
    "plot_barrier_coverage",
    "plot_overview",
    "summary_lines",
    "write_report_files",
]
