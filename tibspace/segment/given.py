"""Segmentation from given label masks (bring your own masks): measure on them.

Cells and nuclei are 2-D int32 labels relabelled 1..n (:func:`tibspace.io.read_label_mask`).
Nuclei given with cells are re-keyed to the cell they lie in (nucleus pixels outside every cell
are dropped); nuclei alone are grown into cells by :func:`expand_nuclei_to_cells`; cells alone
use the cell as its own nucleus for the nuclear measurements (``nuclei_source = "cells"``).
:func:`segment_from_label_files` measures a cell mask TIFF readable by window tile by tile
(:mod:`tibspace.segment.given_tiled`, same table), and so is a nucleus mask given alone
(grown into cells window by window); other masks are read whole.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from tibspace.errors import InputError
from tibspace.segment.expand import expand_nuclei_to_cells
from tibspace.segment.given_tiled import segment_from_label_planes
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



def segment_from_label_files(image: Any, cells_path: Optional[Any], nuclei_path: Optional[Any] = None,
                             *, fmt: str = "auto", expansion_um: float = 3.0,
                             tile_size_px: int = 2048, work_dir: Optional[Any] = None,
                             progress: Any = None) -> SegmentationResult:
    """Measure ``image`` (a MultiplexImage) on a cell mask file and / or a nucleus mask file.

    A cell mask TIFF read by window (:func:`tibspace.io.label_tiles.open_label_plane`)
    is measured in ``tile_size_px`` tiles, its labels kept as
    :func:`tibspace.segment.segment_image` keeps them (numpy up to 64 Mpx, zarr in
    ``work_dir`` above); a nucleus mask given with it is read by window too when it
    can be, else whole. Other cell masks and nuclei alone are read whole
    (:func:`tibspace.io.read_label_mask`, :func:`segment_from_labels`).
    """
    from tibspace.io import label_source, read_label_mask
    from tibspace.io.label_tiles import LabelPlane, open_label_plane

    shape = tuple(int(v) for v in image.shape[-2:])
    px = float(image.pixel_size_um)
    paths = {k: p for k, p in (("cells", cells_path), ("nuclei", nuclei_path)) if p is not None}
    cells = open_label_plane(cells_path, fmt=fmt, shape=shape, pixel_size_um=px) if cells_path else None
    if cells is None and nuclei_path is not None:
        nuclei = open_label_plane(nuclei_path, fmt=fmt, nuclei=True, shape=shape, pixel_size_um=px)
        if nuclei is not None:
            return _expanded_from_nucleus_plane(image, nuclei, nuclei_path, fmt, expansion_um, tile_size_px,
                                                work_dir, progress)
    if cells is not None:
        nuclei = None
        try:
            if nuclei_path is not None:
                nuclei = open_label_plane(nuclei_path, fmt=fmt, nuclei=True, shape=shape, pixel_size_um=px)
                nuclei = nuclei or LabelPlane.of_array(nuclei_path, read_label_mask(
                    nuclei_path, fmt=fmt, nuclei=True, shape=shape, pixel_size_um=px)[0])
            source = {k: label_source(p, fmt) for k, p in paths.items()}
            return segment_from_label_planes(image, cells, nuclei, tile_size_px=tile_size_px,
                                             work_dir=work_dir, source=source, progress=progress)
        finally:
            cells.close()
            if nuclei is not None:
                nuclei.close()
    read, ids = {}, None
    for key, p in paths.items():
        read[key], key_ids = read_label_mask(p, fmt=fmt, nuclei=key == "nuclei", shape=shape,
                                             pixel_size_um=px)
        ids = key_ids if key == "cells" or ids is None else ids
    source = {k: label_source(p, fmt) for k, p in paths.items()}
    return segment_from_labels(image, read.get("cells"), read.get("nuclei"), label_ids=ids,
                               expansion_um=expansion_um, source=source)


def _expanded_from_nucleus_plane(image, nuclei, nuclei_path, fmt, expansion_um, tile_size_px, work_dir,
                                 progress) -> SegmentationResult:
    """Nuclei alone, read by window: cells grown window by window, measured tile by tile."""
    from tibspace.io import label_source
    from tibspace.segment.given_tiled import ExpandedNuclei

    e_um = float(expansion_um)
    if not (math.isfinite(e_um) and e_um >= 0):
        raise InputError(f"expansion_um must be ≥ 0 µm, got {expansion_um!r}")
    try:
        res = segment_from_label_planes(image, ExpandedNuclei(nuclei, e_um / float(image.pixel_size_um)), nuclei,
                                        tile_size_px=tile_size_px, work_dir=work_dir,
                                        source={"nuclei": label_source(nuclei_path, fmt)}, progress=progress)
    finally:
        nuclei.close()
    res.parameters.update({"cells_source": "expanded from nuclei", "nuclei_source": "given",
                           "expansion_um": e_um})
    return res
