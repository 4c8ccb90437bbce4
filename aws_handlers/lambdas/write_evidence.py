"""Last state (success and failure path alike): the evidence report, and the execution output.

Replaces the seed's monitoring and finalize Lambdas: it reads what the steps left in S3 (the
manifests) and in Redshift (the ledger and row counts, through the Data API), runs the checks,
writes the hash-chained JSON + HTML report and returns the documented execution output.
"""
from __future__ import annotations

from typing import Any

from ..core.errors import RowError
from ..core.pipeline import BatchInput, BatchRun, execution_output, read_batch_manifests
from ._runtime import contract_for, log, stores, warehouse


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    batch = BatchInput.from_document({k: event.get(k) for k in ("batch_id", "dataset", "files")})
    contract = contract_for(batch.dataset)
    s3 = stores()
    run = BatchRun(contract=contract, batch=batch, stores=s3, warehouse=warehouse(),
                   runtime={"mode": "aws", "orchestrator": "stepfunctions", "warehouse": "redshift",
                            "execution_arn": event.get("execution_arn")})  # $$.Execution.Id, from the state machine
    manifests = [m for m in read_batch_manifests(s3.staging, batch.dataset, batch.batch_id) if m["input"]["key"] in set(batch.files)]
    run.manifests = manifests
    run.input_records = [{"key": key, "uri": s3.landing.uri(key), "size": None, "sha256": None} for key in batch.files]
    for manifest in manifests:
        if manifest["status"] != "converted":
            run.errors.extend(manifest["errors"])
    for key in sorted(set(batch.files) - {m["input"]["key"] for m in manifests}):
        run.errors.append(RowError(key, None, None, "no conversion manifest: the conversion did not complete",
                                   "conversion_missing", contract=contract.label).to_dict())
    if manifests:
        run.steps.append({"name": "convert", "status": "failed" if run.errors else "succeeded",
                          "started_at": min(m["started_at"] for m in manifests),
                          "finished_at": max(m["finished_at"] for m in manifests),
                          "duration_seconds": round(sum(m["duration_seconds"] for m in manifests), 6)})
    load = dict(event.get("load") or {})
    if load.get("Id") and load.get("Status") not in ("FINISHED", "FAILED", "ABORTED"):
        # A timeout (cancel) or a lost describe: a cancel can lose the race with COMMIT, so ask
        # Redshift how the statement really ended instead of assuming it rolled back.
        try:
            description = run.warehouse.client.describe_statement(Id=load["Id"])
            load.update(Status=description["Status"], Error=description.get("Error", load.get("Error", "")))
        except Exception as exc:  # noqa: BLE001 - the evidence must still be written
            load.update(Status="UNKNOWN", Error=f"could not describe statement {load['Id']}: {exc}")
    if load.get("Status") == "FINISHED" and not run.errors:
        result = run.warehouse.read_load_result(contract, batch.batch_id)
        run.load_result = result.to_dict()
        run.steps.append({"name": "load", "status": "succeeded", "statement_id": load.get("Id"),
                          "started_at": str(load.get("CreatedAt") or result.started_at),
                          "finished_at": str(load.get("UpdatedAt") or result.finished_at),
                          "duration_seconds": load.get("Duration", 0) / 1e9 if load.get("Duration") else None})
    elif load.get("Status"):
        run.load_failed = True
        outcome = ("was rolled back" if load["Status"] in ("FAILED", "ABORTED")
                   else "did not finish; whether it committed is unknown: check etl_observer.load_ledger")
        run.errors.append(RowError(contract.table, None, None, f"load {load['Status']} and {outcome}: "
                                   f"{load.get('Error', '')}", "load_failed", contract=contract.label).to_dict())
        run.steps.append({"name": "load", "status": "failed", "statement_id": load.get("Id"),
                          "started_at": None, "finished_at": None, "duration_seconds": None})
    error = event.get("error")
    if error:
        run.errors.append(RowError(batch.batch_id, None, None, f"{error.get('Error')}: {error.get('Cause')}",
                                   "step_failed", contract=contract.label).to_dict())
    run.run_checks()
    location = run.write_evidence()
    output = execution_output(run.report, location)
    log("evidence written", batch_id=batch.batch_id, status=output["status"], evidence_uri=output["evidence_uri"])
    return output
