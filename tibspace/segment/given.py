"""Segmentation from given label masks (bring your own masks): measure on them.

Cells and nuclei are 2-D int32 labels relabelled 1..n (:func:`tibspace.io.read_label_mask`).
Nuclei given with cells are re-keyed to the cell they lie in (nucleus pixels outside every cell
are dropped); nuclei alone are grown into cells by :func:`expand_nuclei_to_cells`; cells alone
use the cell as its own nucleus for the nuclear measurements (``nuclei_source = "cells"``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tibspace.errors import InputError
from tibspace.segment.expand import expand_nuclei_to_cells
from tibspace.segment.image import SegmentationResult
from tibspace.segment.tiling import _ChannelReader


def segment_from_labels(image: Any, cells: Optional[np.ndarray], nuclei: Optional[np.ndarray], *,
                        label_ids: Optional[np.ndarray] = None, expansion_um: float = 3.0,
                        source: Optional[dict] = None) -> SegmentationResult:
    """Measure every channel of ``image`` (a MultiplexImage) on given labels."""
    from tibspace.cells import measure_cells

    px = float(image.pixel_size_um)
    if cells is None and nuclei is None:
        raise InputError("labels: give a cell mask, a nucleus mask or both")
    if cells is None:
        cells = expand_nuclei_to_cells(nuclei, px, expansion_um=expansion_um).astype(np.int32)
        nuclei_source, cells_source = "given", "expanded from nuclei"
    elif nuclei is None:
        nuclei, nuclei_source, cells_source = cells, "cells", "given"
    else:
        nuclei = np.where(nuclei > 0, cells, 0).astype(np.int32)
        nuclei_source, cells_source = "given", "given"
    ny, nx = (int(v) for v in image.shape[-2:])
    chans = _ChannelReader(image, range(image.n_channels), (0, ny, 0, nx))
    table = measure_cells(cells, nuclei, chans, list(image.channel_names), px)
    if len(table) == 0:
        raise InputError("labels: the given masks contain no cells")
    if label_ids is not None:
        table["label_id"] = label_ids[table["cell_id"].to_numpy() - 1]
    params = {"method": "given labels", "cells_source": cells_source, "nuclei_source": nuclei_source}
    if nuclei_source == "cells":
        params["note"] = "no nucleus mask given: nuclear measurements use the whole cell"
    params.update({"labels": source} if source else {})
    return SegmentationResult(cells=table, labels=cells, nuclei=nuclei, pixel_size_um=px,
                              n_tiles=1, parameters=params)

