"""tibspace: tumour immune barriers, NET/collagen-I shields and T-cell exclusion
from multiplex tissue images, in physical units.

The whole job is one call (:func:`run_image` for an image, :func:`analyze_table`
for a cell table); each stage is also a plain function in its stage package:
:mod:`tibspace.io` → :mod:`tibspace.segment` → :mod:`tibspace.cells` →
:mod:`tibspace.tissue` → :mod:`tibspace.stats` → :mod:`tibspace.analyses` →
:mod:`tibspace.outputs`, with :mod:`tibspace.synthetic` beside them.
"""

__version__ = "0.1.0"

from tibspace.pipeline import PipelineResult, analyze_table, run_image, write_outputs  # noqa: E402

# Stage functions a user calls directly, imported on first use so that
# ``import tibspace`` stays light (the CLI starts fast).
_LAZY = {
    "open_image": "tibspace.io",
    "read_cell_table": "tibspace.io",
    "load_panel": "tibspace.cells",
    "Panel": "tibspace.cells",
    "measure_cells": "tibspace.cells",
    "gate_cells": "tibspace.cells",
    "segment_image": "tibspace.segment",
    "tumour_region_from_cells": "tibspace.tissue",
    "signed_distance_um": "tibspace.tissue",
    "infiltration_profile": "tibspace.stats",
    "cross_l": "tibspace.stats",
    "neighbourhood_enrichment": "tibspace.stats",
    "barrier_analysis": "tibspace.analyses",
    "shield_analysis": "tibspace.analyses",
    "exclusion_analysis": "tibspace.analyses",
    "make_tissue": "tibspace.synthetic",
}

__all__ = ["PipelineResult", "analyze_table", "run_image", "write_outputs", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tibspace' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
