"""tibspace: tumour immune barriers, NET/collagen-I shields and T-cell exclusion
from multiplex tissue images, in physical units."""

__version__ = "0.1.0"

from .pipeline import PipelineResult, analyze_table, run_image, write_outputs  # noqa: E402

__all__ = ["PipelineResult", "analyze_table", "run_image", "write_outputs", "__version__"]
