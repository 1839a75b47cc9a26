"""Registry of segmentation backends behind ``segment_image`` (panel ``[segmentation] method``).

A backend is a callable ``(nuclear, membrane, pixel_size_um, params) -> labels``:
``nuclear`` is a 2-D float32 array (one tile window, channels divided by their
99.5th percentile), ``membrane`` a 2-D float array or None, ``pixel_size_um`` in
µm per pixel, ``params`` the panel's ``[segmentation]`` table plus
``nucleus_diameter_um`` / ``nucleus_diameter_px`` (given or estimated); it
returns the tile's *nucleus* labels (2-D integers, 0 = background), which
:func:`tibspace.segment.segment_image` grows into cells, owns, stitches and
measures exactly as for the built-in classical watershed (``"classical"``,
not in this registry).

Optional backends (cellpose) import their library lazily, so a missing pip
extra fails with one line naming the extra, only when the backend is used.
The cellpose model is loaded once per thread (no model shared between
threads) from ``params['model']``: a local weights file, or a name of the
library's own models (default ``"nuclei"``), which cellpose looks for in its
model folder (``~/.cellpose/models``, or ``$CELLPOSE_LOCAL_MODELS_PATH``) and
would download there on a machine with internet access (a name it does not
know is an error, not its default model); its other options are
``flow_threshold`` and ``cellprob_threshold``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

from tibspace.errors import InputError

__all__ = ["register_backend", "get_backend", "backend_names", "check_method"]

Backend = Callable[[Any, Any, float, dict], Any]
_BACKENDS: Dict[str, Backend] = {}
CLASSICAL = "classical"
# [segmentation] keys every backend accepts; a backend adds its own in _BACKEND_KEYS
_COMMON_KEYS = ("method",)
_BACKEND_KEYS: Dict[str, tuple] = {}


def register_backend(name: str, backend: Backend, keys: tuple = ()) -> None:
    """Register ``backend`` under ``name`` (overwrites an earlier registration).

    ``keys`` are the ``[segmentation]`` options it reads (others are rejected).
    """
    if str(name) == CLASSICAL:
        raise ValueError("'classical' is the built-in watershed, not a backend")
    _BACKENDS[str(name)] = backend
    _BACKEND_KEYS[str(name)] = tuple(keys)


def backend_names() -> list[str]:
    """Every segmentation method: ``classical`` and the registered backends."""
    return [CLASSICAL] + sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``; InputError naming the known ones otherwise."""
    if name not in _BACKENDS:
        raise InputError(f"[segmentation] method = {name!r}: unknown; expected one of "
                         f"{', '.join(backend_names())}")
    return _BACKENDS[name]


def check_method(method: Any, options: dict) -> None:
    """``method`` is known and ``options`` holds only the keys that method reads."""
    if not isinstance(method, str):
        raise InputError(f"[segmentation] method must be a string, got {method!r}")
    if method != CLASSICAL:
        get_backend(method)
    allowed = _COMMON_KEYS + _BACKEND_KEYS.get(method, ())
    bad = [k for k in options if k not in allowed]
    if bad:
        raise InputError(f"[segmentation] {bad[0]!r} is not an option of method {method!r}; "
                         f"valid: {', '.join(allowed)}")


# --------------------------------------------------------------------------
# cellpose
# --------------------------------------------------------------------------

_CELLPOSE_KEYS = ("model", "flow_threshold", "cellprob_threshold")
_local = threading.local()


def _check_model_name(model: str, models: Any) -> None:
    """``model`` is one of cellpose's own or user-added model names.

    Cellpose 3 silently falls back to (and downloads) its default ``cyto3``
    model for an unknown name, so a misspelt ``"nucleus"`` would segment with
    a different model; this makes it a one-line error instead.
    """
    known = list(dict.fromkeys(list(models.MODEL_NAMES) + list(models.get_user_models())))
    if model not in known:
        raise InputError(f"[segmentation] model = {model!r}: not a cellpose model name nor a "
                         f"weights file; cellpose names: {', '.join(known)}")


def _cellpose_model(model: str) -> Any:
    """The cellpose model (loaded once per thread): a weights file or a library model name."""
    cache = getattr(_local, "models", None)
    if cache is None:
        cache = _local.models = {}
    if model in cache:
        return cache[model]
    is_path = os.sep in model or Path(model).suffix != "" or Path(model).exists()
    if is_path and not Path(model).is_file():
        raise InputError(f"[segmentation] model = {model!r}: no such weights file")
    try:
        from cellpose import models  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise InputError("[segmentation] method = 'cellpose' needs the extra: "
                         "pip install 'tibspace[cellpose]'") from None
    if not is_path:
        _check_model_name(model, models)
    try:
        net = (models.CellposeModel(gpu=False, pretrained_model=str(model)) if is_path
               else models.CellposeModel(gpu=False, model_type=model))
    except Exception as exc:  # noqa: BLE001 (any load failure becomes one line)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"[segmentation] model = {model!r}: cellpose could not load it "
                         f"({first}); without internet give a local weights file, see the "
                         "README (Cellpose backend)") from None
    cache[model] = net
    return net


def _cellpose_backend(nuclear, membrane, pixel_size_um, params):
    """Cellpose nuclei on one tile; weights from ``params['model']`` (default ``"nuclei"``).

    The nucleus diameter (given or estimated) is passed as cellpose's
    ``diameter`` in pixels, so images at any pixel size are rescaled to the
    model's training scale. The membrane channel is not used (cells are grown
    from the nuclei by tibspace).
    """
    net = _cellpose_model(str(params.get("model", "nuclei")))
    kw = {k: float(params[k]) for k in ("flow_threshold", "cellprob_threshold") if k in params}
    masks = net.eval(np.asarray(nuclear, np.float32), diameter=float(params["nucleus_diameter_px"]),
                     channels=[0, 0], **kw)[0]
    return np.asarray(masks, dtype=np.int32)


register_backend("cellpose", _cellpose_backend, keys=_CELLPOSE_KEYS)
