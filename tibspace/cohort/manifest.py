"""The cohort manifest: one row per sample, validated before any work starts.

Columns: ``sample_id`` (unique), ``image`` (an image path: TIFF, OME-Zarr, SpatialData
``store.zarr`` or ``store.zarr::image_element``) or ``table`` (a cell
table path), optional ``labels`` (a cell label mask for the image, as
``tibspace run --labels``), optional ``patient_id`` (default: the sample id)
and any clinical columns (``response``, ``treatment``, ...), kept verbatim.
Relative paths resolve against the manifest's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tibspace.errors import InputError
from tibspace.io import safe_name, split_element

PATH_COLUMNS = ("image", "table", "labels")
RESERVED = ("sample_id", "patient_id") + PATH_COLUMNS


@dataclass(frozen=True)
class Sample:
    """One manifest row: where its input is and what it says about the patient."""

    sample_id: str
    folder: str                      # file-safe name of the sample's result folder
    image: Path | None = None
    table: Path | None = None
    labels: Path | None = None
    patient_id: str = ""
    clinical: dict = field(default_factory=dict)

    @property
    def input(self) -> Path:
        return self.image if self.image is not None else self.table


def read_manifest(path: str | Path) -> list[Sample]:
    """Read and validate a manifest CSV (see module docstring).

    Raises
    ------
    InputError
        One line naming the manifest, the row and what is wrong: no
        ``sample_id`` column, an empty or duplicate id, a row with neither or
        both of ``image``/``table``, a path that does not exist.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable manifest CSV ({str(exc).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "sample_id" not in df.columns or not ({"image", "table"} & set(df.columns)):
        raise InputError(f"{path}: a manifest needs a sample_id column and an image or table column "
                         f"(has {', '.join(df.columns) or 'no columns'})")
    if len(df) == 0:
        raise InputError(f"{path}: the manifest has no samples")
    samples = [_sample(path, i + 2, row) for i, row in enumerate(df.to_dict(orient="records"))]
    _check_unique(path, samples)
    return samples


def _sample(manifest: Path, line: int, row: dict) -> Sample:
    where = f"{manifest}, line {line}"
    sid = str(row.get("sample_id", "")).strip()
    if not sid:
        raise InputError(f"{where}: empty sample_id")
    paths = {c: _resolve(manifest, where, c, row.get(c, "")) for c in PATH_COLUMNS}
    if (paths["image"] is None) == (paths["table"] is None):
        raise InputError(f"{where} ({sid}): give exactly one of image or table")
    if paths["labels"] is not None and paths["image"] is None:
        raise InputError(f"{where} ({sid}): labels go with an image, not a table")
    clinical = {k: v for k, v in row.items() if k not in RESERVED}
    return Sample(sample_id=sid, folder=safe_name(sid), patient_id=str(row.get("patient_id", "")).strip() or sid,
                  clinical=clinical, **paths)


def _resolve(manifest: Path, where: str, column: str, value) -> Path | None:
    text = str(value or "").strip()
    if not text:
        return None
    p, element = split_element(text)  # "slide.zarr::name": one image of a SpatialData store
    p = p if p.is_absolute() else (manifest.parent / p)
    if not p.exists():
        raise InputError(f"{where}: {column} {text!r} does not exist (relative paths resolve against "
                         f"{manifest.parent})")
    return Path(f"{p.resolve()}::{element}") if element else p.resolve()


def _check_unique(manifest: Path, samples: list[Sample]) -> None:
    seen: dict[str, dict[str, str]] = {"sample_id": {}, "result folder name": {}}
    for s in samples:
        for key, kind in ((s.sample_id, "sample_id"), (s.folder.lower(), "result folder name")):
            if key in seen[kind]:
                raise InputError(f"{manifest}: duplicate {kind} {key!r} ({seen[kind][key]} and {s.sample_id}); "
                                 "sample ids must be unique")
            seen[kind][key] = s.sample_id
