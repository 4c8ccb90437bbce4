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


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto server over HTTP for the session (boto3 and pyarrow alike can talk to it)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def moto_execute_mode(endpoint: str, on: bool) -> None:
    """moto runs state machine definitions only in this mode, and keeps their state in another
    backend while it is on: tests that turn it on must not leave it on for the others."""
    import json
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(
        f"{endpoint}/moto-api/config", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"stepfunctions": {"execute_state_machine": on}}).encode()), timeout=5)


@pytest.fixture
def aws_env(moto_endpoint, monkeypatch):
    """Standard AWS variables pointing every boto3 client at the emulator (no code changes)."""
    for key, value in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    yield moto_endpoint
    moto_execute_mode(moto_endpoint, False)
