"""Between Glue and Redshift: read the batch's manifests, write the COPY inputs, return the SQL.

Replaces the seed's redshift-load Lambda: the load itself is a direct Step Functions -> Data API
integration (BatchExecuteStatement, one transaction); this function only builds its statements
from the contract, so the SQL is the same as local mode's.
"""
from __future__ import annotations

import json
from typing import Any

from ..core.load_sql import batch_files_csv, batch_load_statements, copy_manifest
from ..core.pipeline import BatchInput, Layout, load_files_from_manifests, read_batch_manifests
from ..warehouse import loaded_at_now
from ._runtime import contract_for, env, log, stores


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    batch = BatchInput.from_document({k: event.get(k) for k in ("batch_id", "dataset", "files")})
    contract = contract_for(batch.dataset)
    staging = stores().staging
    manifests = read_batch_manifests(staging, batch.dataset, batch.batch_id)
    converted = {m["input"]["key"] for m in manifests if m["status"] == "converted"}
    not_converted = [key for key in batch.files if key not in converted]
    if not_converted:
        log("batch not loadable", batch_id=batch.batch_id, not_converted=not_converted[:20])
        # Every key the state machine reads is present even here: a missing one is an uncatchable error.
        return {"status": "failed", "reason": "files failed or missing conversion", "files": not_converted[:100],
                "sqls": [], "copy_manifest_uri": None}
    files = load_files_from_manifests([m for m in manifests if m["input"]["key"] in set(batch.files)])
    prefix = Layout.staging_prefix(batch.dataset, batch.batch_id)
    manifest_key, files_key = f"{prefix}_load/copy.manifest", f"{prefix}_load/batch_files.csv"
    staging.put_bytes(manifest_key, json.dumps(copy_manifest(files)).encode(), "application/json")
    staging.put_bytes(files_key, batch_files_csv(files), "text/csv")
    # No DDL here: the loader role may not CREATE (least privilege); infra_scripts/redshift_grants.sql
    # creates the table and the ledger once, from the same ddl_statements.
    sqls = batch_load_statements(
        contract, batch.batch_id, files, loaded_at_now(), "redshift", copy_manifest_uri=staging.uri(manifest_key),
        iam_role_arn=env("COPY_ROLE_ARN"), batch_files_uri=staging.uri(files_key))
    log("load prepared", batch_id=batch.batch_id, files=len(files), statements=len(sqls))
    return {"status": "ready", "sqls": sqls, "copy_manifest_uri": staging.uri(manifest_key), "files": len(files)}
