"""EventBridge S3 "Object Created" -> one Step Functions execution per delivered object.

The batch id (and so the execution name) is derived from the object's bucket, key and ETag:
a re-delivered event maps to the same name, and Step Functions refuses a second
execution with that name, so a duplicated event can never run a batch twice.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import unquote_plus

from ._runtime import client, env, log

MAX_EXECUTION_NAME = 80


def object_from_event(event: dict[str, Any]) -> dict[str, Any]:
    detail = event.get("detail") or {}
    bucket = (detail.get("bucket") or {}).get("name")
    obj = detail.get("object") or {}
    if not bucket or "key" not in obj:
        raise ValueError("not an S3 Object Created event (detail.bucket.name / detail.object.key missing)")
    # EventBridge delivers keys URL-encoded ("%E7%A4%BE+2026.csv"): decode before use.
    return {"bucket": bucket, "key": unquote_plus(obj["key"]), "size": obj.get("size"), "etag": obj.get("etag", ""),
            "sequencer": obj.get("sequencer", ""), "version_id": obj.get("version-id", ""), "time": event.get("time", "")}


def batch_id_for(bucket: str, key: str, etag: str) -> str:
    """From what both an event and a bucket listing show, so Dagster's S3 sensor can name the same
    partition without seeing the event. The same bytes re-uploaded under the same key map to the
    same batch (their content would be a ledger duplicate anyway); reprocessing is a backfill."""
    return "s3-" + hashlib.sha256(f"{bucket}|{key}|{etag.strip(chr(34))}".encode()).hexdigest()[:24]


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    obj = object_from_event(event)
    dataset = obj["key"].split("/", 1)[0] if "/" in obj["key"] else ""
    if not dataset or not obj["key"].lower().endswith(".csv") or not obj.get("size"):
        log("skipped: not a non-empty CSV under a dataset folder", key=obj["key"], size=obj.get("size"))
        return {"started": False, "reason": "not a dataset CSV", "key": obj["key"]}
    batch_id = batch_id_for(obj["bucket"], obj["key"], obj["etag"])
    document = {"batch_id": batch_id, "dataset": dataset, "files": [obj["key"]]}
    sfn = client("stepfunctions")
    machine_arn, name = env("STATE_MACHINE_ARN"), batch_id[:MAX_EXECUTION_NAME]
    # StartExecution with the name and input of a RUNNING execution succeeds and returns that
    # execution, so look first: a re-delivered event must say "duplicate", not "started".
    execution_arn = machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{name}"
    try:
        sfn.describe_execution(executionArn=execution_arn)
        log("duplicate event: execution already exists", batch_id=batch_id, key=obj["key"])
        return {"started": False, "reason": "duplicate event", "batch_id": batch_id}
    except sfn.exceptions.ExecutionDoesNotExist:
        pass
    try:
        response = sfn.start_execution(stateMachineArn=machine_arn, name=name,
                                       input=json.dumps(document, ensure_ascii=False))
    except sfn.exceptions.ExecutionAlreadyExists:  # a concurrent delivery won the race
        log("duplicate event: execution already exists", batch_id=batch_id, key=obj["key"])
        return {"started": False, "reason": "duplicate event", "batch_id": batch_id}
    log("execution started", batch_id=batch_id, dataset=dataset, key=obj["key"], execution_arn=response["executionArn"])
    return {"started": True, "batch_id": batch_id, "execution_arn": response["executionArn"]}
