"""Session-wide fixtures: the tiny diffusers pipelines are built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """``tiny_pipeline_dir(family)``: a saved tiny pipeline folder of ``family`` (cached)."""
    from tests.tiny_pipelines import save_tiny_pipeline

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = save_tiny_pipeline(family, tmp_path_factory.mktemp(family) / "pipe")
        return built[family]

    return get
