"""Synthetic cohorts: cell tables of many patients with a planted group difference.

Each sample is a square field (µm) with circular tumour nests; barrier cells
(SPP1+ macrophages and CAFs) line a planted fraction of each nest's boundary
(one arc); CD8 T cells and other cells fill the stroma. The fraction lined is
the group's mean coverage plus a patient effect and a nest effect (normal,
clipped to [0, 1]); everything else (densities, T cells) has the same
distribution in every group, so a metric other than barrier coverage carries
no planted difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CohortDesign:
    """Group means of barrier coverage and the spread of patients and nests around them."""

    groups: tuple[tuple[str, float], ...] = (("R", 0.25), ("NR", 0.65))
    patients_per_group: int = 8
    samples_per_patient: tuple[int, ...] = (1, 2)   # cycled over patients
    nests_per_sample: int = 3
    patient_sd: float = 0.08
    nest_sd: float = 0.05
    side_um: float = 900.0


def _disc_points(rng, cx, cy, r, spacing):
    """Jittered grid points inside a disc."""
    g = np.arange(-r, r + spacing, spacing)
    xx, yy = np.meshgrid(g, g)
    keep = xx**2 + yy**2 <= r**2
    pts = np.c_[xx[keep] + cx, yy[keep] + cy]
    return pts + rng.normal(0, spacing * 0.15, pts.shape)


def make_sample_table(coverages, *, seed: int, side_um: float = 900.0) -> pd.DataFrame:
    """One sample's cells: ``cell_id, x_um, y_um, phenotype``; nest k is lined over ``coverages[k]`` of its perimeter."""
    rng = np.random.default_rng(seed)
    nests = []
    while len(nests) < len(coverages):
        r = rng.uniform(70, 100)
        c = rng.uniform(r + 60, side_um - r - 60, 2)
        if all(np.hypot(*(c - q[:2])) > r + q[2] + 120 for q in nests):
            nests.append((c[0], c[1], r))
    parts = []
    for (cx, cy, r), cov in zip(nests, coverages):
        parts.append(pd.DataFrame(_disc_points(rng, cx, cy, r, 14.0), columns=["x_um", "y_um"]).assign(phenotype="tumour"))
        if cov > 0:
            start = rng.uniform(0, 2 * np.pi)
            n = int(round(2 * np.pi * (r + 8) * cov / 6.0))  # one barrier cell per 6 µm of arc
            t = start + np.linspace(0, 2 * np.pi * cov, max(n, 1), endpoint=False)
            rad = r + rng.uniform(3, 18, len(t))
            kind = np.where(rng.random(len(t)) < 0.5, "SPP1_macrophage", "CAF")
            parts.append(pd.DataFrame({"x_um": cx + rad * np.cos(t), "y_um": cy + rad * np.sin(t), "phenotype": kind}))
    stroma = rng.uniform(0, side_um, (int(side_um**2 * 1.2e-3), 2))
    inside = np.zeros(len(stroma), bool)
    for cx, cy, r in nests:
        inside |= np.hypot(stroma[:, 0] - cx, stroma[:, 1] - cy) < r + 20
    stroma = stroma[~inside]
    kind = np.where(rng.random(len(stroma)) < 0.18, "CD8_T", "other")
    parts.append(pd.DataFrame({"x_um": stroma[:, 0], "y_um": stroma[:, 1], "phenotype": kind}))
    cells = pd.concat(parts, ignore_index=True)
    cells.insert(0, "cell_id", np.arange(1, len(cells) + 1))
    return cells


def make_cohort(out_dir: str | Path, design: CohortDesign = CohortDesign(), *, seed: int = 0) -> pd.DataFrame:
    """Write one Parquet cell table per sample and ``manifest.csv`` into ``out_dir``.

    Returns the manifest, with the planted mean coverage of each sample
    (``planted_coverage``) for scoring.

    Examples
    --------
    >>> import tempfile
    >>> m = make_cohort(tempfile.mkdtemp(), CohortDesign(patients_per_group=2), seed=1)
    >>> sorted(m["response"].unique())
    ['NR', 'R']
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for group, mean in design.groups:
        for p in range(design.patients_per_group):
            pid = f"{group}-P{p + 1:02d}"
            patient_mean = mean + rng.normal(0, design.patient_sd)
            n_samples = design.samples_per_patient[(p + k) % len(design.samples_per_patient)]
            for s in range(n_samples):
                cov = np.clip(patient_mean + rng.normal(0, design.nest_sd, design.nests_per_sample), 0, 1)
                sid = f"{pid}-S{s + 1}"
                table = make_sample_table(cov, seed=int(rng.integers(2**31)), side_um=design.side_um)
                table.to_parquet(out_dir / f"{sid}.parquet", index=False)
                rows.append({"sample_id": sid, "table": f"{sid}.parquet", "patient_id": pid, "response": group,
                             "planted_coverage": float(np.mean(cov))})
        k += 1
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    return manifest
