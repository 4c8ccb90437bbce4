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

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, AssetKey,
                     AssetSpec, Config, DynamicPartitionsDefinition, Failure, MaterializeResult, MetadataValue,
                     TableColumn, TableSchema, multi_asset)

from aws_handlers.core.contract import Contract, load_contract
from aws_handlers.core.pipeline import BatchInput, BatchInputError, BatchRun, Layout

from .resources import LocalPipelineResource

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


def check_results(run: BatchRun, dataset: str) -> list[AssetCheckResult]:
    results = []
    reported = {c["name"]: c for c in run.checks}
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


def resolve_batch(context: AssetExecutionContext, dataset: str, config: BatchConfig, pipeline: LocalPipelineResource) -> BatchInput:
    batch_id = context.partition_key
    stores = pipeline.stores()
    doc_key = Layout.batch_document_key(dataset, batch_id)
    if config.files:
        return BatchInput.from_document({"batch_id": batch_id, "dataset": dataset, "files": list(config.files)})
    if stores.staging.exists(doc_key):
        return BatchInput.from_document(json.loads(stores.staging.get_bytes(doc_key)))
    raise Failure(description=f"batch {batch_id!r} of {dataset} has no files: it was never started by the sensor or "
                              f"the CLI, so there is no batch document at {stores.staging.uri(doc_key)}")


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
                 can_subset=False, op_tags={"dataset": dataset})
    def run_batch(context: AssetExecutionContext, config: BatchConfig, pipeline: LocalPipelineResource) -> Iterator[Any]:
        active_contract = load_contract(config.contract_path) if config.contract_path else contract
        try:
            batch = resolve_batch(context, dataset, config, pipeline)
        except BatchInputError as exc:
            raise Failure(description=str(exc)) from exc
        run = BatchRun(contract=active_contract, batch=batch, stores=pipeline.stores(), warehouse=pipeline.warehouse(),
                       runtime={**pipeline.runtime(), "orchestrator": "dagster", "run_id": context.run_id},
                       declared_encoding=config.declared_encoding or None,
                       progress=_progress_logger(context))
        run.register_inputs()
        run.convert()
        if run.manifests:
            yield MaterializeResult(asset_key=keys["landing_csv"], metadata=landing_metadata(run))
        if run.manifests and not run.failed:
            yield MaterializeResult(asset_key=keys["staging_parquet"], metadata=staging_metadata(run, active_contract))
        run.load()
        if run.load_result is not None:
            yield MaterializeResult(asset_key=keys["warehouse_table"], metadata=table_metadata(run, active_contract))
        run.run_checks()
        run.write_evidence()
        yield MaterializeResult(asset_key=keys["evidence_report"], metadata=evidence_metadata(run))
        yield from check_results(run, dataset)
        if run.failed:
            errors = run.result()["errors"]
            raise Failure(
                description=f"batch {batch.batch_id} of {dataset} FAILED: " + "; ".join(
                    _error_text(e) for e in errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""),
                metadata={"errors": MetadataValue.json(errors), "summary": MetadataValue.json(run.report["summary"]),
                          "evidence_html": MetadataValue.path(run.report_location["html"])})

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
        if now - last["t"] < 2.0:
            return
        last["t"] = now
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"[etl-observer] {what}: {done / 1e6:.1f} MB{pct}", file=sys.stderr, flush=True)

    return report

