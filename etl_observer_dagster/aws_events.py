"""Step Functions executions -> Dagster asset events. Used by the Step Functions sensor (runless
events for executions AWS started) and by aws-mode runs (events for executions Dagster started).

Everything comes from the documented execution output (docs/aws-runtime.md). A failed execution
has no output (its Fail state ends it), so its evidence report — which the failure path always
writes — is read instead: it says which steps completed.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetMaterialization, AssetObservation, MetadataValue

from aws_handlers.core.evidence import report_keys
from aws_handlers.core.pipeline import execution_output

ORDER = ("staging_parquet", "warehouse_table", "evidence_report")
# The check that a failed execution fails, by the first asset it did not complete.
FAILED_STEP_CHECK = {"staging_parquet": "contract_conformance", "warehouse_table": "row_reconciliation"}
# Executions Dagster itself started (backfills, materializations in aws mode) carry this marker in
# their name; the sensor skips them because the run that started them records them.
DAGSTER_MARKER = "--dg-"


def dagster_execution_name(batch_id: str, run_id: str) -> str:
    """At most 80 characters (Step Functions' limit) with the marker intact: a long batch id is cut
    and given a hash of itself so two long ids never share a name."""
    import hashlib

    suffix = f"{DAGSTER_MARKER}{run_id[:8]}"
    if len(batch_id) + len(suffix) > 80:
        batch_id = batch_id[:80 - len(suffix) - 9] + "-" + hashlib.sha256(batch_id.encode()).hexdigest()[:8]
    return batch_id + suffix


def started_by_dagster(execution_name: str) -> bool:
    return DAGSTER_MARKER in execution_name


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value else None)


def execution_facts(description: dict[str, Any]) -> dict[str, Any]:
    """The parts of DescribeExecution a materialization needs."""
    start, stop = description.get("startDate"), description.get("stopDate")
    document = json.loads(description.get("input") or "{}")
    return {
        "execution_arn": description["executionArn"], "name": description.get("name", ""),
        "status": description["status"], "started_at": _iso(start), "stopped_at": _iso(stop),
        "duration_seconds": round((stop - start).total_seconds(), 3) if isinstance(start, datetime) and isinstance(stop, datetime) else None,
        "input": document, "output": json.loads(description["output"]) if description.get("output") else None,
        "error": description.get("error"), "cause": description.get("cause"),
    }


def output_of(facts: dict[str, Any], evidence_store) -> dict[str, Any] | None:
    """The execution output, or for a failed execution the same facts rebuilt from its report."""
    if facts["output"]:
        return facts["output"]
    document = facts["input"]
    if not document.get("dataset") or not document.get("batch_id"):
        return None
    keys = report_keys(document["dataset"], document["batch_id"])
    if not evidence_store.exists(keys["json"]):
        return None
    report = json.loads(evidence_store.get_bytes(keys["json"]))
    written_by = (report.get("runtime") or {}).get("execution_arn")
    if written_by and written_by != facts["execution_arn"]:
        return None  # the batch's latest report belongs to another run of it (e.g. a backfill)
    location = {"json": evidence_store.uri(keys["json"]), "html": evidence_store.uri(keys["html"]),
                "sha256": "", "sequence": report.get("chain", {}).get("sequence")}
    return execution_output(report, location)


def asset_events(dataset: str, facts: dict[str, Any], output: dict[str, Any] | None, console_url: str,
                 asset_key) -> list[AssetMaterialization | AssetObservation]:
    """Materializations (upstream first) for the assets the execution completed; for a failed one,
    an observation carrying the error and cause on the first asset it did not complete."""
    batch_id = (output or {}).get("batch_id") or facts["input"].get("batch_id")
    common = {
        "execution_arn": facts["execution_arn"], "console_url": MetadataValue.url(console_url),
        "execution_status": facts["status"], "started_at": facts["started_at"] or "", "stopped_at": facts["stopped_at"] or "",
        "duration_seconds": MetadataValue.float(float(facts["duration_seconds"] or 0.0)),
        "input_files": MetadataValue.json(facts["input"].get("files", [])),
        "code_version": (output or {}).get("code_version") or "",
    }
    assets = (output or {}).get("assets", {})
    specific = {
        "staging_parquet": lambda a: {"dagster/row_count": a["rows"], "parquet_files": MetadataValue.json(a["files"])},
        "warehouse_table": lambda a: {"dagster/row_count": a["table_rows_after"], "dagster/table_name": a["table"],
                                      "rows_inserted": a["rows_inserted"], "duplicates": MetadataValue.json(a["duplicates"])},
        "evidence_report": lambda a: {"report_json": MetadataValue.url(a["uri"]), "report_html": MetadataValue.url(a["html_uri"]),
                                      "report_sha256": a.get("sha256") or "", "chain_sequence": a.get("sequence") or 0,
                                      "status": (output or {}).get("status", ""),
                                      "summary": MetadataValue.json({k: (output or {}).get(k) for k in (
                                          "status", "total_loaded_rows", "successful_conversions", "successful_loads",
                                          "failure_count", "batch_id")})},
    }
    events: list[AssetMaterialization | AssetObservation] = []
    for name in ORDER:
        if name in assets:
            events.append(AssetMaterialization(asset_key=asset_key(dataset, name), partition=batch_id,
                                               metadata={**common, **specific[name](assets[name])}))
    if facts["status"] != "SUCCEEDED":
        missing = next((n for n in ORDER if n not in assets), "evidence_report")
        failure = {**common, "error": facts["error"] or "", "cause": (facts["cause"] or "")[:4000],
                   "errors": MetadataValue.json((output or {}).get("errors", []))}
        events.append(AssetObservation(asset_key=asset_key(dataset, missing), partition=batch_id, metadata=failure))
        # A failed check on the step that did not complete shows the failure in red on the asset.
        check = FAILED_STEP_CHECK.get(missing)
        if check:
            events.append(AssetCheckEvaluation(
                asset_key=asset_key(dataset, missing), check_name=check, passed=False, partition=batch_id,
                severity=AssetCheckSeverity.ERROR, metadata=failure,
                description=f"execution {facts['status']}: {facts['error'] or ''}: {(facts['cause'] or '')[:300]}"))
    return events
