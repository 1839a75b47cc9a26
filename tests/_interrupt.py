"""A cohort run stopped by Ctrl-C after two samples finished, for the resume tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tibspace.cohort import read_manifest, run_cohort
from tibspace.synthetic.cohort import CohortDesign, make_cohort


def interrupted_cohort(tmp_path: Path, panel: Path, seed: int, **run_options) -> list:
    """Write a six-sample cohort to ``tmp_path/"in"``, run it into ``tmp_path/"out"`` and
    raise ``KeyboardInterrupt`` from the progress callback once two samples are done.

    ``run_options`` go to :func:`run_cohort` (the scheduler); the run must end in
    ``KeyboardInterrupt``. Returns the manifest's samples.
    """
    make_cohort(tmp_path / "in", CohortDesign(patients_per_group=3, samples_per_patient=(1,)), seed=seed)
    samples = read_manifest(tmp_path / "in" / "manifest.csv")
    seen = []

    def ctrl_c_after_two(line):
        seen.append(line)
        if sum(": done" in x for x in seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cohort(samples, panel, tmp_path / "out", progress=ctrl_c_after_two, **run_options)
    return samples
