"""Read a Cellpose ``*_seg.npy`` file without running code from it.

Cellpose saves its results as a NumPy ``.npy`` file holding a pickled ``dict``
(``masks``, ``outlines``, ``flows``, ``filename``, ...). ``np.load(...,
allow_pickle=True)`` would run whatever callable the pickle names, so a file
from an untrusted source could execute code. :func:`load_seg_npy` unpickles
with an allow-list: containers and scalars of the standard library and NumPy's
own array / dtype / scalar reconstructors; any other global in the stream is
refused with one line naming it. The bytes held at once are bounded by the
file (pickled arrays carry their data inline) and checked against the memory
available before reading. A plain (non-object) ``.npy`` array is read with
``allow_pickle=False``.

Examples
--------
>>> import numpy as np, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "img_seg.npy")
>>> np.save(p, {"masks": np.eye(3, dtype=np.uint16), "filename": "img.tif"}, allow_pickle=True)
>>> int(load_seg_npy(p)["masks"].sum())
3
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from tibspace.errors import InputError
from tibspace.io.limits import check_memory

# module → names a Cellpose dict (or any plain NumPy pickle) needs; nothing here calls out
_ALLOWED = {
    "builtins": {"dict", "list", "tuple", "set", "frozenset", "bool", "int", "float", "complex", "str",
                 "bytes", "bytearray", "slice"},
    "collections": {"OrderedDict"},
    "_codecs": {"encode"},  # protocol-2 pickles carry array bytes as latin-1 text
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, fh: Any, path: Path):
        super().__init__(fh)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()) or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise InputError(f"{self._path}: refusing to load: the pickle in this .npy names {module}.{name}, "
                         "which a Cellpose _seg.npy never holds (only arrays, numbers, text and containers "
                         "are read)")


def load_seg_npy(path: Any) -> Any:
    """The object stored in a ``.npy`` file, unpickled with an allow-list (see the module doc)."""
    path = Path(path)
    size = path.stat().st_size
    # the file's bytes, the unpickled copy and a relabelling copy of the mask
    check_memory(path, "a Cellpose .npy file", 3.0 * size, "give the mask as a label TIFF (_cp_masks.tif)")
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = getattr(np.lib.format, "_read_array_header", None)
            if read_header is not None:
                shape, _, dtype = read_header(fh, version)
            else:
                shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0(fh))
        except Exception as e:  # noqa: BLE001 - not an .npy at all
            raise InputError(f"{path}: not a NumPy .npy file ({e})") from None
        if not dtype.hasobject:
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        try:
            obj = _AllowListUnpickler(fh, path).load()
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated / corrupt stream
            raise InputError(f"{path}: unreadable pickled .npy ({type(e).__name__}: {e})") from None
    # np.save stores a dict as a 0-d object array
    return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
