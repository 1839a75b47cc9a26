"""Cohort tables: every per-sample and per-nest number of a cohort, tidy.

``cohort_samples`` has one row per sample: the manifest's clinical columns,
the run status and every number of the sample's ``metrics.json`` with nested
keys flattened by dots (``barrier.barrier_coverage``,
``exclusion.immune_phenotype``, ``shield.contact_rate_shielded``, ...).
``cohort_nests`` stacks every sample's ``nests.csv`` with ``sample_id``,
``patient_id`` and the clinical columns joined.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from tibspace.cohort.manifest import Sample

# metrics.json sections flattened into the sample table (the rest is provenance)
_SAMPLE_SECTIONS = ("n_cells", "tissue_area_mm2", "phenotype_counts", "tumour_region")


def flatten(d, prefix: str = "") -> dict:
    """Nested dict → flat dict with dotted keys; lists and tables are left out.

    Examples
    --------
    >>> flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]})
    {'a.b': 1, 'a.c.d': 'x'}
    """
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def sample_row(metrics: dict) -> dict:
    """The flat per-sample numbers of one ``metrics.json``."""
    row = {}
    for key in _SAMPLE_SECTIONS:
        v = metrics.get(key)
        row.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    for name, res in (metrics.get("analyses") or {}).items():
        row.update(flatten(res.get("sample"), f"{name}."))
    row["skipped"] = "; ".join(f"{k}: {v}" for k, v in (metrics.get("skipped") or {}).items())
    return row


def _clinical(s: Sample) -> dict:
    return {"sample_id": s.sample_id, "patient_id": s.patient_id, **s.clinical}


def cohort_tables(samples: Sequence[Sample], out_dir: str | Path, status: pd.DataFrame
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-sample table, per-nest table) from the results under ``out_dir``."""
    out_dir = Path(out_dir)
    st = status.set_index("sample_id")
    rows, nests = [], []
    for s in samples:
        row = _clinical(s) | {"status": st.loc[s.sample_id, "status"], "error": st.loc[s.sample_id, "error"]}
        folder = out_dir / s.folder
        if row["status"] != "failed" and (folder / "metrics.json").exists():
            row |= sample_row(json.loads((folder / "metrics.json").read_text(encoding="utf-8")))
            if (folder / "nests.csv").exists():
                pn = pd.read_csv(folder / "nests.csv")
                for k, v in reversed(list(_clinical(s).items())):
                    pn.insert(0, k, v)
                nests.append(pn)
        rows.append(row)
    return pd.DataFrame(rows), (pd.concat(nests, ignore_index=True) if nests else pd.DataFrame())


def write_cohort_tables(samples: Sequence[Sample], out_dir: str | Path, status: pd.DataFrame,
                        *, anndata: bool = True) -> list[Path]:
    """Write ``cohort_samples.parquet/.csv``, ``cohort_nests.parquet/.csv`` and
    ``cohort_cells.h5ad`` (every sample's cells, ``obs["sample_id"]``)."""
    from tibspace.outputs import write_table

    out_dir = Path(out_dir)
    per_sample, per_nest = cohort_tables(samples, out_dir, status)
    written = write_table(per_sample, out_dir / "cohort_samples")
    if len(per_nest):
        written += write_table(per_nest, out_dir / "cohort_nests")
    if anndata:
        path = _concat_anndata(samples, out_dir, status)
        if path is not None:
            written.append(path)
    return written


def _concat_anndata(samples, out_dir: Path, status: pd.DataFrame) -> Path | None:
    import anndata as ad

    from tibspace.io import atomic_path

    ok = set(status.loc[status["status"] != "failed", "sample_id"])
    parts = {}
    for s in samples:
        f = out_dir / s.folder / "cells.h5ad"
        if s.sample_id in ok and f.exists():
            a = ad.read_h5ad(f)
            a.obs["sample_id"] = pd.Categorical([s.sample_id] * a.n_obs)
            a.obs["patient_id"] = pd.Categorical([s.patient_id] * a.n_obs)
            a.uns = {}
            parts[s.sample_id] = a
    if not parts:
        return None
    merged = ad.concat(parts, join="outer", index_unique="-", merge="same")
    merged.obs["sample_id"] = merged.obs["sample_id"].astype("category")
    merged.obs["patient_id"] = merged.obs["patient_id"].astype("category")
    target = out_dir / "cohort_cells.h5ad"
    with atomic_path(target) as tmp:
        merged.write_h5ad(tmp)
    return target
