"""Shared fixtures: one pipeline run on the sample per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def run_cache():
    """Holds the sample's PipelineResult once a test has produced it (saves a rerun)."""
    return {}
