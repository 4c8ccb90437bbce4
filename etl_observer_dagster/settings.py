"""One environment helper: where the home folder is and which runtime (local or aws) is in use."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DAGSTER_YAML = """\
# Written by etl-observer. Runs from the CLI, the sensor and the UI share this instance.
telemetry:
  enabled: false
nux:
  enabled: false
# The embedded warehouse is one DuckDB file: one writer at a time.
run_queue:
  max_concurrent_runs: 1
"""


@dataclass(frozen=True)
class Settings:
    home: Path
    env: str

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def evidence_dir(self) -> Path:
        return self.home / "evidence"

    @property
    def contracts_dir(self) -> Path:
        return self.home / "contracts"

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.home / "dagster")


def current_settings() -> Settings:
    home = Path(os.environ.get("ETL_OBSERVER_HOME") or ".etl_observer").resolve()
    env = os.environ.get("ETL_OBSERVER_ENV", "local").lower()
    if env not in ("local", "aws"):
        raise ValueError(f"ETL_OBSERVER_ENV must be 'local' or 'aws', got {env!r}")
    return Settings(home=home, env=env)


def prepare_home(settings: Settings) -> Settings:
    """Create the home layout and the Dagster instance folder; export DAGSTER_HOME."""
    for folder in (settings.landing_dir, settings.staging_dir, settings.evidence_dir, settings.contracts_dir):
        folder.mkdir(parents=True, exist_ok=True)
    dagster_home = settings.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return settings
