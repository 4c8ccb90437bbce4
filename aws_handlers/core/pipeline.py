"""One batch through the pipeline's steps: inputs -> convert -> load -> checks -> evidence.

The step methods are what each runtime calls: Dagster's batch asset calls them in order in
local mode; on AWS the Glue job calls `convert_file`, the load runs the same SQL through the
Data API, and the evidence Lambda calls `build_report` + `write_report`. Everything a step
produces is a JSON-ready manifest, so every consumer (report, Dagster metadata, Step Functions
output) reads the same facts.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from . import CODE_VERSION, utc_now_iso
from .contract import BATCH_ID_PATTERN, Contract
from .convert import convert_csv, scratch_path
from .errors import RowError
from .evidence import build_report, reconcile, write_report
from .load_sql import LoadFile, primary_key_duplicates_query
from ..storage import ObjectStore

MAX_FILES_PER_BATCH = 10_000
OUTPUT_FILES_LISTED = 20


class BatchInputError(ValueError):
    """The batch document itself is unusable (a usage error, not a data error)."""


@dataclass(frozen=True)
class BatchInput:
    """The Step Functions input document: {"batch_id", "dataset", "files": [...]}."""
    batch_id: str
    dataset: str
    files: tuple[str, ...]

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> "BatchInput":
        if not isinstance(doc, dict):
            raise BatchInputError("batch document must be a JSON object")
        missing = [k for k in ("batch_id", "dataset", "files") if k not in doc]
        if missing:
            raise BatchInputError(f"batch document lacks {missing}")
        batch_id, dataset, files = doc["batch_id"], doc["dataset"], doc["files"]
        if not isinstance(batch_id, str) or not BATCH_ID_PATTERN.match(batch_id):
            raise BatchInputError(f"batch_id {batch_id!r} must be 1-128 letters, digits, '_' or '-'")
        if not isinstance(dataset, str) or not dataset:
            raise BatchInputError("dataset must be a non-empty string")
        if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
            raise BatchInputError("files must be a non-empty list of keys or paths")
        if len(files) > MAX_FILES_PER_BATCH:
            raise BatchInputError(f"a batch holds at most {MAX_FILES_PER_BATCH} files")
        if len(set(files)) != len(files):
            raise BatchInputError("files lists the same file twice")
        return cls(batch_id=batch_id, dataset=dataset, files=tuple(files))

    def to_document(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "dataset": self.dataset, "files": list(self.files)}


def generate_batch_id(prefix: str = "b") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{prefix}-{stamp}-{os.urandom(3).hex()}"


@dataclass
class Stores:
    landing: ObjectStore
    staging: ObjectStore
    evidence: ObjectStore


class Layout:
    """Where each step's outputs live, relative to their store."""

    @staticmethod
    def staging_prefix(dataset: str, batch_id: str) -> str:
        return f"{dataset}/batch_id={batch_id}/"

    @staticmethod
    def batch_document_key(dataset: str, batch_id: str) -> str:
        return f"_batches/{dataset}/{batch_id}.json"

    @staticmethod
    def output_stem(dataset: str, ref: str) -> str:
        """Staging file stem of one input, from its key alone (each Glue run names its own output):
        a landing key keeps its path below the dataset folder, anything else its basename."""
        if ref.startswith(f"{dataset}/"):
            relative = ref[len(dataset) + 1:]
        else:
            relative = posixpath.basename(ref.replace("\\", "/"))
        return posixpath.splitext(relative)[0].replace("/", "__") or "file"

    @staticmethod
    def output_names(dataset: str, files: tuple[str, ...]) -> dict[str, str]:
        """Stems for a whole batch: only inputs given by path (local mode) can collide; they get a hash."""
        stems = {f: Layout.output_stem(dataset, f) for f in files}
        counts: dict[str, int] = {}
        for stem in stems.values():
            counts[stem] = counts.get(stem, 0) + 1
        return {f: (s if counts[s] == 1 else f"{s}-{hashlib.sha1(f.encode()).hexdigest()[:8]}") for f, s in stems.items()}


@dataclass
class ResolvedInput:
    key: str                       # the source label: landing key, or the path/URI as given
    uri: str
    open: Callable[[], BinaryIO]
    size: int | None


def resolve_input(ref: str, landing: ObjectStore, s3_client=None) -> ResolvedInput:
    """A batch file is a landing key, an absolute local path (local mode) or an s3:// URI."""
    if ref.startswith("s3://"):
        from ..storage import S3Store, split_s3_uri

        bucket, key = split_s3_uri(ref)
        store = S3Store(bucket, client=s3_client or getattr(landing, "client", None))
        return ResolvedInput(key=ref, uri=ref, open=lambda: store.open_input(key), size=None)
    if os.path.isabs(ref):
        path = Path(ref)
        return ResolvedInput(key=ref, uri=str(path), open=lambda: open(path, "rb"),
                             size=path.stat().st_size if path.exists() else None)
    return ResolvedInput(key=ref, uri=landing.uri(ref), open=lambda: landing.open_input(ref), size=None)


def step_record(name: str, started_wall: str, started: float, status: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "started_at": started_wall, "finished_at": utc_now_iso(),
            "duration_seconds": round(time.perf_counter() - started, 6), **extra}


def convert_file(contract: Contract, batch: BatchInput, source: ResolvedInput, staging: ObjectStore, stem: str, *,
                 declared_encoding: str | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Convert one input and publish Parquet + manifest (+ rejects) to staging. Returns the manifest."""
    prefix = Layout.staging_prefix(batch.dataset, batch.batch_id)
    parquet_key, manifest_key, rejects_key = f"{prefix}{stem}.parquet", f"{prefix}{stem}.manifest.json", f"{prefix}{stem}.rejects.csv"
    local_parquet, local_rejects = scratch_path(".parquet"), scratch_path(".rejects.csv")
    try:
        os.unlink(local_parquet)
        outcome = convert_csv(source.open, source.key, contract, local_parquet, declared_encoding=declared_encoding,
                              rejects_path=local_rejects, progress=progress)
        manifest = outcome.manifest
        manifest["batch_id"] = batch.batch_id
        manifest["input"]["uri"] = source.uri
        if outcome.ok:
            staging.put_file(local_parquet, parquet_key, "application/vnd.apache.parquet")
            manifest["output"].update({"key": parquet_key, "uri": staging.uri(parquet_key)})
            if outcome.rejects_path:
                staging.put_file(local_rejects, rejects_key, "text/csv; charset=utf-8")
                from ..storage import sha256_file

                manifest["rejects"].update({"key": rejects_key, "uri": staging.uri(rejects_key),
                                            "sha256": sha256_file(local_rejects)})
        else:
            # A failed conversion must not leave an older Parquet of this batch looking current.
            staging.delete(parquet_key)
        body = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        staging.put_bytes(manifest_key, body, "application/json")
        manifest["manifest_key"] = manifest_key
        manifest["manifest_uri"] = staging.uri(manifest_key)
        manifest["manifest_sha256"] = hashlib.sha256(body).hexdigest()
        return manifest
    finally:
        for path in (local_parquet, local_rejects):
            if os.path.exists(path):
                os.unlink(path)


def load_files_from_manifests(manifests: list[dict[str, Any]]) -> list[LoadFile]:
    return [LoadFile(source_key=m["input"]["key"], sha256=m["input"]["sha256"], rows=m["output"]["rows"],
                     parquet_uri=m["output"]["uri"], parquet_size=m["output"]["size"])
            for m in manifests if m["status"] == "converted"]


def evaluate_checks(contract: Contract, manifests: list[dict[str, Any]], load: dict[str, Any] | None,
                    pk_duplicates: list[tuple] | None) -> list[dict[str, Any]]:
    """The three checks, computed from manifests and the load result (plus one warehouse query)."""
    converted = [m for m in manifests if m["status"] == "converted"]
    failed = [m for m in manifests if m["status"] != "converted"]
    rejected = sum((m.get("rejects") or {}).get("rows", 0) for m in converted)
    conformance = {
        "name": "contract_conformance", "asset": "staging_parquet",
        "passed": not failed and rejected == 0 and bool(manifests),
        "severity": "ERROR" if failed else "WARN",
        "detail": (f"{len(converted)}/{len(manifests)} files converted under contract {contract.label}; "
                   f"{sum(m['error_count'] for m in manifests)} errors; {rejected} rows quarantined"),
        "metadata": {"files_converted": len(converted), "files_failed": len(failed), "rows_quarantined": rejected,
                     "contract_sha256": contract.fingerprint},
    }
    checks = [conformance]
    if load is not None:
        per_file = reconcile(manifests, load)
        mismatches = [r for r in per_file if r["status"] == "mismatch"]
        expected_total = sum(r["parquet_rows"] for r in per_file if r["status"] == "ok")
        total_ok = load.get("rows_inserted") == expected_total
        checks.append({
            "name": "row_reconciliation", "asset": "warehouse_table", "passed": not mismatches and total_ok,
            "severity": "ERROR",
            "detail": (f"CSV rows = Parquet rows (+ quarantined) = loaded rows for {len(converted) - len(mismatches)}"
                       f"/{len(converted)} files; batch rows in table {load.get('rows_inserted')} (expected {expected_total})"),
            "metadata": {"mismatches": mismatches, "rows_inserted": load.get("rows_inserted"), "expected": expected_total},
        })
        if contract.primary_key:
            dupes = pk_duplicates or []
            checks.append({
                "name": "primary_key_unique", "asset": "warehouse_table", "passed": not dupes, "severity": "ERROR",
                "detail": (f"primary key ({', '.join(contract.primary_key)}) unique across {load.get('table_rows_after')} rows"
                           if not dupes else f"{len(dupes)} duplicated key values, e.g. {list(dupes[0])}"),
                "metadata": {"duplicate_keys": [list(map(str, d)) for d in dupes[:20]]},
            })
        else:
            checks.append({"name": "primary_key_unique", "asset": "warehouse_table", "passed": True, "severity": "WARN",
                           "detail": "the contract declares no primary key; nothing to check", "metadata": {}})
    return checks


@dataclass
class BatchRun:
    """State of one batch as its steps complete. Methods are the steps; call them in order."""
    contract: Contract
    batch: BatchInput
    stores: Stores
    warehouse: Any
    runtime: dict[str, Any] = field(default_factory=dict)
    declared_encoding: str | None = None
    progress: Callable[[str, int, int | None], None] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[ResolvedInput] = field(default_factory=list)
    input_records: list[dict[str, Any]] = field(default_factory=list)
    manifests: list[dict[str, Any]] = field(default_factory=list)
    load_result: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    load_failed: bool = False
    report: dict[str, Any] | None = None
    report_location: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return bool(self.errors) or self.load_failed or any(m["status"] != "converted" for m in self.manifests)

    def register_inputs(self) -> list[dict[str, Any]]:
        """Landing step: every file of the batch exists; record key, URI and size."""
        started_wall, started = utc_now_iso(), time.perf_counter()
        self.stores.staging.put_bytes(Layout.batch_document_key(self.batch.dataset, self.batch.batch_id),
                                      json.dumps(self.batch.to_document(), ensure_ascii=False).encode(), "application/json")
        for ref in self.batch.files:
            try:
                source = resolve_input(ref, self.stores.landing)
                with source.open() as fh:
                    fh.read(0)
            except Exception as exc:  # a missing local file, an S3 NoSuchKey, an unreadable path
                self.errors.append(RowError(ref, None, None, f"input file cannot be opened: {exc}", "missing_input",
                                            contract=self.contract.label).to_dict())
                self.input_records.append({"key": ref, "uri": ref, "size": None, "sha256": None, "status": "missing"})
                continue
            self.inputs.append(source)
            self.input_records.append({"key": source.key, "uri": source.uri, "size": source.size, "sha256": None,
                                       "status": "present"})
        self.steps.append(step_record("register_inputs", started_wall, started,
                                      "failed" if self.errors else "succeeded", files=len(self.batch.files)))
        return self.input_records

    def convert(self) -> list[dict[str, Any]]:
        started_wall, started = utc_now_iso(), time.perf_counter()
        names = Layout.output_names(self.batch.dataset, tuple(i.key for i in self.inputs))
        for source in self.inputs:
            progress = (lambda n, key=source.key, size=source.size: self.progress("convert " + key, n, size)) if self.progress else None
            manifest = convert_file(self.contract, self.batch, source, self.stores.staging, names[source.key],
                                    declared_encoding=self.declared_encoding, progress=progress)
            self.manifests.append(manifest)
            if manifest["status"] != "converted" or (manifest["errors"] and self.contract.on_error == "fail"):
                self.errors.extend(manifest["errors"])
        ok = all(m["status"] == "converted" for m in self.manifests) and not self.errors
        self.steps.append(step_record("convert", started_wall, started, "succeeded" if ok else "failed",
                                      files=len(self.manifests)))
        return self.manifests

    def load(self) -> dict[str, Any] | None:
        """Load only a clean batch: a batch with any failed file commits nothing."""
        started_wall, started = utc_now_iso(), time.perf_counter()
        if self.failed:
            self.steps.append(step_record("load", started_wall, started, "skipped",
                                          reason="the batch has failed inputs; nothing was committed"))
            return None
        from ..warehouse import loaded_at_now

        try:
            result = self.warehouse.load_batch(self.contract, self.batch.batch_id,
                                               load_files_from_manifests(self.manifests), loaded_at_now())
        except Exception as exc:
            self.load_failed = True
            self.errors.append(RowError(self.contract.table, None, None,
                                        f"load failed and was rolled back: {exc.__class__.__name__}: {exc}",
                                        "load_failed", contract=self.contract.label).to_dict()
                               | {"traceback": traceback.format_exc(limit=5)})
            self.steps.append(step_record("load", started_wall, started, "failed"))
            return None
        self.load_result = result.to_dict()
        self.steps.append(step_record("load", started_wall, started, "succeeded", rows_inserted=result.rows_inserted))
        return self.load_result

    def run_checks(self) -> list[dict[str, Any]]:
        pk_duplicates = None
        if self.load_result is not None and self.contract.primary_key:
            sql = primary_key_duplicates_query(self.contract)
            pk_duplicates = self.warehouse.query(sql) if sql else []
        self.checks = evaluate_checks(self.contract, self.manifests, self.load_result, pk_duplicates)
        return self.checks

    def write_evidence(self) -> dict[str, Any]:
        started_wall, started = utc_now_iso(), time.perf_counter()
        steps = [*self.steps, {"name": "evidence", "status": "succeeded", "started_at": started_wall,
                               "finished_at": None, "duration_seconds": None}]
        report = build_report(
            dataset=self.batch.dataset, batch_id=self.batch.batch_id,
            contract={"label": self.contract.label, "version": self.contract.version, "sha256": self.contract.fingerprint,
                      "table": self.contract.table, "path": self.contract.path},
            runtime={"code_version": CODE_VERSION, **self.runtime}, steps=steps, manifests=self.manifests,
            load=self.load_result, checks=self.checks, errors=self.errors, input_files=self.input_records,
            load_failed=self.load_failed)
        steps[-1].update({"finished_at": utc_now_iso(), "duration_seconds": round(time.perf_counter() - started, 6)})
        self.report_location = write_report(self.stores.evidence, report)
        self.report = report
        self.steps = steps
        return self.report_location

    def run(self) -> dict[str, Any]:
        """All steps in order (the local runtime without Dagster; tests and the Lambda harness)."""
        self.register_inputs()
        self.convert()
        self.load()
        self.run_checks()
        self.write_evidence()
        return self.result()

    def result(self) -> dict[str, Any]:
        assert self.report is not None and self.report_location is not None
        return batch_summary(self.report, self.report_location)


def batch_summary(report: dict[str, Any], location: dict[str, Any]) -> dict[str, Any]:
    """The CLI / execution-output summary: the seed's summary fields plus what a user needs next."""
    return {**report["summary"], "dataset": report["dataset"],
            "evidence": {"json": location["json"], "html": location["html"]},
            "errors": [{k: e.get(k) for k in ("file", "line", "column", "message", "kind", "value")}
                       for e in report.get("errors", [])],
            "duplicates": [{"file": d["file_key"], "sha256": d["sha256"], "duplicate_of_batch": d["duplicate_of_batch"]}
                           for d in report.get("duplicates", [])]}


def read_batch_manifests(staging: ObjectStore, dataset: str, batch_id: str) -> list[dict[str, Any]]:
    """Every conversion manifest of a batch, found by listing (independent of file naming)."""
    manifests = []
    for info in staging.list(Layout.staging_prefix(dataset, batch_id)):
        if info.key.endswith(".manifest.json"):
            body = staging.get_bytes(info.key)
            manifest = json.loads(body)
            manifest.update({"manifest_key": info.key, "manifest_uri": staging.uri(info.key),
                             "manifest_sha256": hashlib.sha256(body).hexdigest()})
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: m["input"]["key"])


def execution_output(report: dict[str, Any], location: dict[str, Any]) -> dict[str, Any]:
    """The documented execution output (docs/aws-runtime.md): the summary plus, per asset that
    completed, the facts a Dagster materialization needs. The Step Functions sensor reads this."""
    assets: dict[str, Any] = {}
    if report.get("outputs") and report["summary"]["successful_conversions"] == len(report.get("inputs", [])):
        assets["staging_parquet"] = {
            "rows": sum(o["rows"] for o in report["outputs"]),
            "file_count": len(report["outputs"]),
            # At most OUTPUT_FILES_LISTED: a 1,000-file batch must stay far below Step Functions'
            # 256 KB state limit. The evidence report (evidence_uri) lists every file.
            "files": [{"source_key": o["source_key"],
                       "source_sha256": next((i["sha256"] for i in report["inputs"] if i["key"] == o["source_key"]), None),
                       "parquet_uri": o["uri"], "parquet_sha256": o["sha256"], "rows": o["rows"],
                       "manifest_uri": o.get("manifest_uri")} for o in report["outputs"][:OUTPUT_FILES_LISTED]]}
    if report.get("load"):
        assets["warehouse_table"] = {"table": report["contract"]["table"], "rows_inserted": report["load"]["rows_inserted"],
                                     "table_rows_after": report["load"]["table_rows_after"],
                                     "duplicates": report.get("duplicates", [])}
    assets["evidence_report"] = {"uri": location["json"], "html_uri": location["html"], "sha256": location["sha256"],
                                 "sequence": location["sequence"]}
    return {**report["summary"], "dataset": report["dataset"], "evidence_uri": location["json"],
            "code_version": report.get("code_version"), "assets": assets,
            "errors": [{k: e.get(k) for k in ("file", "line", "column", "message", "kind")} for e in report.get("errors", [])]}
