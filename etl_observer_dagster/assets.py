"""Per dataset, four assets with lineage, partitioned by batch:

    landing_csv -> staging_parquet -> warehouse_table -> evidence_report

They are materialized by ONE step (a multi-asset), the way one Step Functions execution runs
a batch: each asset is reported as soon as its step completes, and the evidence report is
written even when an earlier step failed (then the run fails, naming the errors). All work is
done by aws_handlers.core.pipeline.BatchRun; this module only translates its manifests into
Dagster events.
"""

import json
from typing import Any, Iterator

from dagster import (AssetCheckKey, AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext,
                     AssetKey, AssetMaterialization, AssetSpec, Config, DynamicPartitionsDefinition, Failure,
                     MaterializeResult, MetadataValue, TableColumn, TableSchema, multi_asset)

from aws_handlers.core.contract import Contract, load_contract
from aws_handlers.core.load_sql import primary_key_duplicates_query
from aws_handlers.core.pipeline import (BatchInput, BatchInputError, BatchRun, Layout, evaluate_checks,
                                        read_batch_manifests)
from aws_handlers.warehouse import read_load_result

from .resources import AWSPipelineResource, PipelineResource

ASSET_NAMES = ("landing_csv", "staging_parquet", "warehouse_table", "evidence_report")
CHECK_ASSET = {"contract_conformance": "staging_parquet", "row_reconciliation": "warehouse_table",
               "primary_key_unique": "warehouse_table"}


def asset_key(dataset: str, name: str) -> AssetKey:
    return AssetKey([dataset, name])


def partitions_def_name(dataset: str) -> str:
    return f"{dataset}_batches"


def batch_partitions(dataset: str) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=partitions_def_name(dataset))


def job_name(dataset: str) -> str:
    return f"{dataset}_batch"


def check_keys(dataset: str) -> list[AssetCheckKey]:
    """A checks-only run of a batch: RunRequest(job_name=job_name(d), asset_selection=[], asset_check_keys=...)."""
    return [AssetCheckKey(asset_key(dataset, asset), name) for name, asset in CHECK_ASSET.items()]


def batch_op_name(dataset: str) -> str:
    return f"{dataset}__run_batch"


class BatchConfig(Config):
    """Optional: the batch's files (the sensor and the CLI pass them). A backfill passes nothing:
    the batch document stored at the batch's first run says which files the partition holds."""
    files: list[str] = []
    contract_path: str = ""
    declared_encoding: str = ""


def table_schema(contract: Contract) -> TableSchema:
    return TableSchema(columns=[
        TableColumn(name=c.name, type=c.sql_type, description=f"CSV column {c.source!r}" + (f": {c.description}" if c.description else ""),
                    constraints=None)
        for c in contract.columns
    ] + [TableColumn(name=n, type=t) for n, t in (("_batch_id", "VARCHAR(128)"), ("_source_file", "VARCHAR(1024)"),
                                                  ("_source_line", "BIGINT"), ("_loaded_at", "TIMESTAMP"))])


def _step(run: BatchRun, name: str) -> dict[str, Any]:
    return next((s for s in run.steps if s["name"] == name), {})


def landing_metadata(run: BatchRun) -> dict[str, Any]:
    by_key = {m["input"]["key"]: m["input"] for m in run.manifests}
    files = [{"key": r["key"], "uri": r["uri"], "size": by_key.get(r["key"], {}).get("size", r.get("size")),
              "sha256": by_key.get(r["key"], {}).get("sha256"), "encoding": by_key.get(r["key"], {}).get("encoding")}
             for r in run.input_records]
    return {
        "files": MetadataValue.json(files),
        "file_count": len(files),
        "total_bytes": sum(f["size"] or 0 for f in files),
        "dagster/uri": MetadataValue.text(files[0]["uri"]) if len(files) == 1 else MetadataValue.text(f"{len(files)} files"),
    }


def staging_metadata(run: BatchRun, contract: Contract) -> dict[str, Any]:
    converted = [m for m in run.manifests if m["status"] == "converted"]
    step = _step(run, "convert")
    return {
        "dagster/row_count": sum(m["output"]["rows"] for m in converted),
        "dagster/column_schema": table_schema(contract),
        "parquet_files": MetadataValue.json([{"uri": m["output"]["uri"], "rows": m["output"]["rows"],
                                              "sha256": m["output"]["sha256"], "size": m["output"]["size"],
                                              "source_key": m["input"]["key"], "source_sha256": m["input"]["sha256"]}
                                             for m in converted]),
        "contract": f"{contract.label} ({contract.fingerprint[:12]})",
        "duration_seconds": MetadataValue.float(step.get("duration_seconds") or 0.0),
    }


def table_metadata(run: BatchRun, contract: Contract) -> dict[str, Any]:
    load = run.load_result or {}
    return {
        "dagster/row_count": load.get("table_rows_after", 0),
        "dagster/table_name": contract.table,
        "dagster/column_schema": table_schema(contract),
        "rows_inserted": load.get("rows_inserted", 0),
        "duplicates": MetadataValue.json(load.get("duplicates", [])),
        "engine": load.get("engine", ""),
        "duration_seconds": MetadataValue.float(load.get("duration_seconds") or 0.0),
    }


def evidence_metadata(run: BatchRun) -> dict[str, Any]:
    location = run.report_location or {}
    html_path = location.get("html", "")
    html_link = MetadataValue.url(html_path) if html_path.startswith(("s3://", "http")) else MetadataValue.path(html_path)
    return {
        "status": (run.report or {}).get("status", ""),
        "summary": MetadataValue.json((run.report or {}).get("summary", {})),
        "report_html": html_link,
        "report_json": MetadataValue.path(location.get("json", "")),
        "report_sha256": location.get("sha256", ""),
        "chain_sequence": location.get("sequence", 0),
        "step_durations": MetadataValue.json({s["name"]: s.get("duration_seconds") for s in run.steps}),
    }


def check_results(checks: list[dict[str, Any]], dataset: str) -> list[AssetCheckResult]:
    results = []
    reported = {c["name"]: c for c in checks}
    for name, asset in CHECK_ASSET.items():
        check = reported.get(name) or {"passed": False, "severity": "ERROR",
                                        "detail": "not evaluated: the batch failed before this could be checked",
                                        "metadata": {}}
        results.append(AssetCheckResult(
            asset_key=asset_key(dataset, asset), check_name=name, passed=bool(check["passed"]),
            severity=AssetCheckSeverity.WARN if check.get("severity") == "WARN" else AssetCheckSeverity.ERROR,
            description=check["detail"],
            metadata={"detail": check["detail"], "facts": MetadataValue.json(check.get("metadata", {}))}))
    return results


def resolve_batch(context: AssetExecutionContext, dataset: str, config: BatchConfig, pipeline: PipelineResource) -> BatchInput:
    """The partition's files: from run config (sensor, CLI), else the batch document stored at its
    first run, else (aws) the input of the Step Functions execution named after the batch."""
    batch_id = context.partition_key
    stores = pipeline.stores()
    doc_key = Layout.batch_document_key(dataset, batch_id)
    if config.files:
        return BatchInput.from_document({"batch_id": batch_id, "dataset": dataset, "files": list(config.files)})
    if stores.staging.exists(doc_key):
        return BatchInput.from_document(json.loads(stores.staging.get_bytes(doc_key)))
    if isinstance(pipeline, AWSPipelineResource):
        sfn = pipeline.client("stepfunctions")
        try:
            original = sfn.describe_execution(executionArn=pipeline.execution_arn(batch_id))
            return BatchInput.from_document(json.loads(original["input"]))
        except sfn.exceptions.ExecutionDoesNotExist:
            pass
    raise Failure(description=f"batch {batch_id!r} of {dataset} has no files: it was never started by a sensor, the "
                              f"CLI or AWS, so there is no batch document at {stores.staging.uri(doc_key)}")


def _failure(dataset: str, batch_id: str, errors: list[dict[str, Any]], metadata: dict[str, Any]) -> Failure:
    return Failure(description=f"batch {batch_id} of {dataset} FAILED: " + "; ".join(
        _error_text(e) for e in errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""),
        metadata=metadata)


def run_locally(context, contract: Contract, batch: BatchInput, config: BatchConfig, pipeline: PipelineResource,
                keys: dict[str, AssetKey]) -> Iterator[Any]:
    """Local runtime: every step in this process, each asset reported as its step completes."""
    run = BatchRun(contract=contract, batch=batch, stores=pipeline.stores(), warehouse=pipeline.warehouse(),
                   runtime={**pipeline.runtime(), "orchestrator": "dagster", "run_id": context.run.run_id},
                   declared_encoding=config.declared_encoding or None, progress=_progress_logger(context))
    run.register_inputs()
    run.convert()
    if run.manifests:
        yield MaterializeResult(asset_key=keys["landing_csv"], metadata=landing_metadata(run))
    if run.manifests and not run.failed:
        yield MaterializeResult(asset_key=keys["staging_parquet"], metadata=staging_metadata(run, contract))
    run.load()
    if run.load_result is not None:
        yield MaterializeResult(asset_key=keys["warehouse_table"], metadata=table_metadata(run, contract))
    run.run_checks()
    run.write_evidence()
    yield MaterializeResult(asset_key=keys["evidence_report"], metadata=evidence_metadata(run))
    yield from check_results(run.checks, batch.dataset)
    if run.failed:
        errors = run.result()["errors"]
        raise _failure(batch.dataset, batch.batch_id, errors, {
            "errors": MetadataValue.json(errors), "summary": MetadataValue.json(run.report["summary"]),
            "evidence_html": MetadataValue.path(run.report_location["html"])})


def run_on_aws(context, contract: Contract, batch: BatchInput, pipeline: "AWSPipelineResource",
               keys: dict[str, AssetKey]) -> Iterator[Any]:
    """AWS runtime: one Step Functions execution for the partition (named so the sensor skips it),
    waited for; the materializations come from its execution output."""
    import time

    from .aws_events import asset_events, dagster_execution_name, execution_facts, output_of

    sfn = pipeline.client("stepfunctions")
    name = dagster_execution_name(batch.batch_id, context.run.run_id)
    started = sfn.start_execution(stateMachineArn=pipeline.state_machine_arn, name=name,
                                  input=json.dumps(batch.to_document(), ensure_ascii=False))
    context.log.info(f"started {started['executionArn']}")
    while True:
        description = sfn.describe_execution(executionArn=started["executionArn"])
        if description["status"] != "RUNNING":
            break
        time.sleep(pipeline.poll_seconds)
    facts = execution_facts(description)
    stores = pipeline.stores()
    output = output_of(facts, stores.evidence)
    events = asset_events(batch.dataset, facts, output, pipeline.console_url(facts["execution_arn"]), asset_key)
    yield MaterializeResult(asset_key=keys["landing_csv"], metadata={
        "files": MetadataValue.json([{"key": k, "uri": stores.landing.uri(k)} for k in batch.files]),
        "file_count": len(batch.files), "execution_arn": facts["execution_arn"]})
    for event in events:
        if isinstance(event, AssetMaterialization):
            yield MaterializeResult(asset_key=event.asset_key, metadata=dict(event.metadata))
    if facts["status"] != "SUCCEEDED" or (output or {}).get("status") != "SUCCEEDED":
        errors = (output or {}).get("errors") or [{"message": f"{facts['error']}: {facts['cause']}"}]
        raise _failure(batch.dataset, batch.batch_id, errors, {
            "execution_arn": facts["execution_arn"], "error": facts["error"] or "", "cause": (facts["cause"] or "")[:4000],
            "errors": MetadataValue.json(errors)})


def evaluate_current_checks(contract: Contract, batch_id: str, pipeline: PipelineResource) -> list[dict[str, Any]]:
    """The three checks on what is there now (a checks-only run, e.g. after the sensor recorded an
    execution): the batch's manifests in staging and its rows in the warehouse."""
    stores = pipeline.stores()
    manifests = read_batch_manifests(stores.staging, contract.dataset, batch_id)
    warehouse = pipeline.warehouse()
    load = read_load_result(warehouse, contract, batch_id).to_dict() if manifests else None
    pk_sql = primary_key_duplicates_query(contract)
    duplicates = warehouse.query(pk_sql) if (pk_sql and load is not None) else []
    return evaluate_checks(contract, manifests, load, duplicates)


def build_batch_assets(contract: Contract):
    dataset = contract.dataset
    partitions = batch_partitions(dataset)
    keys = {name: asset_key(dataset, name) for name in ASSET_NAMES}
    tags = {"dataset": dataset}
    specs = [
        AssetSpec(keys["landing_csv"], description=f"CSV files of a {dataset} batch as they landed (landing bucket).",
                  skippable=True, group_name=dataset, kinds={"csv", "s3"}, tags=tags),
        AssetSpec(keys["staging_parquet"], deps=[keys["landing_csv"]], skippable=True, group_name=dataset,
                  description=f"Snappy Parquet per CSV, schema from contract {contract.label} (staging bucket).",
                  kinds={"parquet"}, tags=tags),
        AssetSpec(keys["warehouse_table"], deps=[keys["staging_parquet"]], skippable=True, group_name=dataset,
                  description=f"{contract.table}: the batch's rows, replaced atomically (Redshift / DuckDB).",
                  kinds={"redshift", "duckdb"}, tags=tags),
        AssetSpec(keys["evidence_report"], deps=[keys["warehouse_table"]], skippable=True, group_name=dataset,
                  description="JSON + HTML evidence report of the batch, hash-chained per dataset.",
                  kinds={"json", "html"}, tags=tags),
    ]
    check_specs = [AssetCheckSpec(name, asset=keys[asset], description=desc) for name, asset, desc in (
        ("contract_conformance", "staging_parquet", "Every file converted under the contract, no value coerced"),
        ("row_reconciliation", "warehouse_table", "CSV rows = Parquet rows = loaded rows, per file"),
        ("primary_key_unique", "warehouse_table", "No primary-key value appears twice in the table"),
    )]

    @multi_asset(name=batch_op_name(dataset), specs=specs, check_specs=check_specs, partitions_def=partitions,
                 can_subset=True, op_tags={"dataset": dataset})
    def run_batch(context: AssetExecutionContext, config: BatchConfig, pipeline: PipelineResource) -> Iterator[Any]:
        active_contract = load_contract(config.contract_path) if config.contract_path else contract
        if not context.selected_asset_keys:  # a checks-only run
            checks = evaluate_current_checks(active_contract, context.partition_key, pipeline)
            selected = {k.name for k in context.selected_asset_check_keys}
            yield from (r for r in check_results(checks, dataset) if r.check_name in selected)
            return
        try:
            batch = resolve_batch(context, dataset, config, pipeline)
        except BatchInputError as exc:
            raise Failure(description=str(exc)) from exc
        # A batch is atomic: any selection runs all of it; only the selected assets are reported.
        events = (run_on_aws(context, active_contract, batch, pipeline, keys) if isinstance(pipeline, AWSPipelineResource)
                  else run_locally(context, active_contract, batch, config, pipeline, keys))
        for event in events:
            key = event.asset_key
            if isinstance(event, AssetCheckResult):
                if AssetCheckKey(key, event.check_name) in context.selected_asset_check_keys:
                    yield event
            elif key in context.selected_asset_keys:
                yield event

    return run_batch


def _error_text(error: dict[str, Any]) -> str:
    where = error.get("file") or ""
    if error.get("line") is not None:
        where += f" line {error['line']}"
    if error.get("column"):
        where += f", column {error['column']}"
    return f"{where}: {error.get('message')}"


def _progress_logger(context: AssetExecutionContext):
    import sys
    import time

    last = {"t": 0.0}

    def report(what: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = bool(total) and done >= total
        if now - last["t"] < 2.0 and not finished:
            return
        last["t"] = now
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"[etl-observer] {what}: {done / 1e6:.1f} MB{pct}", file=sys.stderr, flush=True)

    return report

