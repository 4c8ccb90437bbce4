"""The one implementation of contract, conversion, load SQL and evidence (no dagster here)."""
from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

MANIFEST_VERSION = 1
REPORT_VERSION = 1


def _code_version() -> str:
    # Deployed artifacts carry their version in the environment (set by infra_scripts.deploy);
    # a checkout derives it from git so every report names the exact code that produced it.
    for name in ("ETL_OBSERVER_CODE_VERSION", "CUSTOMER_ETL_OBSERVER_CODE_VERSION"):  # Glue: CUSTOMER_ prefix
        if os.environ.get(name):
            return os.environ[name]
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"0.1.0+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return "0.1.0"


CODE_VERSION = _code_version()


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
