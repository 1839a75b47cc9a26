"""metrics.json and input checksums: deterministic JSON (sorted keys, full float
precision) written atomically, and SHA-256 of files or folders.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tibspace.io import atomic_path
from tibspace.jsonable import to_jsonable


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as deterministic, indented JSON (sorted keys), atomically."""
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, or of every file in a folder (sorted by name)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    return h.hexdigest()
