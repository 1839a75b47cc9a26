"""napari plugin for tibspace.

A thin shell over :mod:`tibspace`: the reader opens multiplex images with
:func:`tibspace.io.open_image`, the dock widget runs
:func:`tibspace.pipeline.run_image` in a worker thread, and
:mod:`tibspace_napari._layers` turns a ``PipelineResult`` into napari layers.
No analysis is implemented here.
"""

__version__ = "0.1.0"

from ._layers import result_layers  # noqa: E402
from ._reader import image_layers, napari_get_reader  # noqa: E402

__all__ = ["napari_get_reader", "image_layers", "result_layers"]
