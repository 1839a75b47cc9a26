"""Shared fixtures: where the real data and the bundled sample live."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
# CI clones the repo with shared/ beside it; developers have it at ../shared too.
REAL_DATA = Path(os.environ.get("TIBSPACE_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of small real multiplex datasets (read-only, not vendored)."""
    if not REAL_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data folder {REAL_DATA} is missing in CI")
        pytest.skip(f"real data folder {REAL_DATA} not present (set TIBSPACE_REAL_DATA)")
    return REAL_DATA


@pytest.fixture(scope="session")
def sample_data() -> Path:
    return SAMPLE_DATA

# Property tests explore new random examples on every developer run; CI replays a
# fixed, derandomised set so that a landing never depends on luck.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
