"""What every handler shares: configuration from the environment, clients made on first use
(nothing happens at import time), structured JSON logs."""
from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from typing import Any

from ..core import CODE_VERSION


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise RuntimeError(f"environment variable {name} is not set")
    return value


@lru_cache(maxsize=None)
def client(service: str):
    """boto3 client; endpoints come from AWS_ENDPOINT_URL[_<SERVICE>] when set (emulators, tests)."""
    import boto3

    return boto3.client(service)


def log(message: str, **fields: Any) -> None:
    record = {"message": message, "code_version": CODE_VERSION, **fields}
    print(json.dumps(record, ensure_ascii=False, default=str), file=sys.stdout, flush=True)


def stores():
    from ..core.pipeline import Stores
    from ..storage import S3Store

    s3 = client("s3")
    return Stores(landing=S3Store(env("LANDING_BUCKET"), client=s3), staging=S3Store(env("STAGING_BUCKET"), client=s3),
                  evidence=S3Store(env("EVIDENCE_BUCKET"), env("EVIDENCE_PREFIX", "evidence/"), client=s3))


def warehouse():
    from ..warehouse.redshift_data import RedshiftDataWarehouse

    return RedshiftDataWarehouse(env("REDSHIFT_WORKGROUP"), env("REDSHIFT_DATABASE"), client=client("redshift-data"),
                                 copy_role_arn=os.environ.get("COPY_ROLE_ARN"))


def contract_for(dataset: str):
    from ..core.contract import discover_contracts

    contracts = discover_contracts()
    if dataset not in contracts:
        raise ValueError(f"no contract for dataset {dataset!r} (deployed: {sorted(contracts)})")
    return contracts[dataset]
