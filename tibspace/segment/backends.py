"""Registry of segmentation backends behind ``segment_image``.

A backend is a callable ``(nuclear, membrane, pixel_size_um, params) -> labels``:
``nuclear`` is a 2-D float array (one tile), ``membrane`` a 2-D float array or None,
``pixel_size_um`` in µm per pixel, ``params`` a dict of the panel's ``[segmentation]``
table; it returns a 2-D integer label image of the tile's shape (0 = background).
Optional backends (cellpose) import their library lazily, so a missing pip extra
fails with one line naming the extra, only when the backend is asked for.
"""

from typing import Any, Callable, Dict

from tibspace.errors import InputError

Backend = Callable[[Any, Any, float, dict], Any]
_BACKENDS: Dict[str, Backend] = {}


def register_backend(name: str, backend: Backend) -> None:
    """Register ``backend`` under ``name`` (overwrites an earlier registration)."""
    _BACKENDS[str(name)] = backend


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``; InputError naming the known ones otherwise."""
    if name not in _BACKENDS:
        known = ", ".join(sorted(_BACKENDS)) or "none"
        raise InputError(f"[segmentation] method = {name!r}: unknown; expected one of {known}")
    return _BACKENDS[name]


def _cellpose_backend(nuclear, membrane, pixel_size_um, params):
    """Cellpose model on one tile; weights from ``params['model_path']`` or the library default."""
    try:
        from cellpose import models  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise InputError("[segmentation] method = 'cellpose' needs the extra: "
                         "pip install 'tibspace[cellpose]'") from None
    import numpy as np
    path = params.get("model_path")
    model = (models.CellposeModel(pretrained_model=str(path), gpu=False) if path
             else models.CellposeModel(gpu=False))
    img = nuclear if membrane is None else np.stack([membrane, nuclear], axis=-1)
    masks = model.eval(img, diameter=params.get("cell_diameter_px"))[0]
    return np.asarray(masks, dtype=np.int32)


register_backend("cellpose", _cellpose_backend)
