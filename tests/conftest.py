"""Shared fixtures. Tests that need ../shared/data fail (not skip) when CI=true and it is missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"shared test data not found at {SHARED_DATA}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    return require_shared_data()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An isolated ETL_OBSERVER_HOME (and Dagster instance) per test."""
    path = tmp_path / "home"
    monkeypatch.setenv("ETL_OBSERVER_HOME", str(path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("ETL_OBSERVER_ENV", "local")
    return path
