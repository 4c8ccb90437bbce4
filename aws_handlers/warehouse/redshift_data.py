"""Redshift Serverless through the Data API: the same load SQL and read-back as DuckDB.

`BatchExecuteStatement` runs its statements as ONE transaction, which is what the batch replace
needs. The state machine calls it directly; this class does the same for the evidence Lambda's
read-back, for tests, and for Dagster's aws mode. The client honours AWS_ENDPOINT_URL_REDSHIFT_DATA.
"""
from __future__ import annotations

import time
from typing import Any

from ..core import utc_now_iso
from ..core.contract import Contract
from ..core.load_sql import LoadFile, batch_load_statements
from . import LoadResult, read_load_result

TERMINAL = ("FINISHED", "FAILED", "ABORTED")


class StatementFailed(RuntimeError):
    def __init__(self, statement_id: str, status: str, error: str):
        self.statement_id, self.status, self.error = statement_id, status, error
        super().__init__(f"Redshift statement {statement_id} {status}: {error}")


def field_value(field: dict[str, Any]) -> Any:
    """One Data API field ({"stringValue": ...} and friends) as a Python value."""
    if field.get("isNull"):
        return None
    for key in ("stringValue", "longValue", "doubleValue", "booleanValue", "blobValue"):
        if key in field:
            return field[key]
    raise ValueError(f"unknown Data API field {field}")


class RedshiftDataWarehouse:
    engine = "redshift"

    def __init__(self, workgroup: str, database: str, *, client=None, poll_seconds: float = 1.0,
                 timeout_seconds: float = 900.0, copy_role_arn: str | None = None):
        self.workgroup, self.database = workgroup, database
        self.poll_seconds, self.timeout_seconds = poll_seconds, timeout_seconds
        self.copy_role_arn = copy_role_arn
        if client is None:
            import boto3

            client = boto3.client("redshift-data")
        self.client = client

    def wait(self, statement_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            description = self.client.describe_statement(Id=statement_id)
            status = description["Status"]
            if status == "FINISHED":
                return description
            if status in ("FAILED", "ABORTED"):
                raise StatementFailed(statement_id, status, description.get("Error", ""))
            if time.monotonic() > deadline:
                self.client.cancel_statement(Id=statement_id)
                raise StatementFailed(statement_id, "TIMEOUT", f"not finished after {self.timeout_seconds} s; cancelled")
            time.sleep(self.poll_seconds)

    def execute_batch(self, sqls: list[str]) -> str:
        response = self.client.batch_execute_statement(WorkgroupName=self.workgroup, Database=self.database, Sqls=sqls)
        self.wait(response["Id"])
        return response["Id"]

    def query(self, sql: str) -> list[tuple]:
        response = self.client.execute_statement(WorkgroupName=self.workgroup, Database=self.database, Sql=sql)
        self.wait(response["Id"])
        rows: list[tuple] = []
        kwargs: dict[str, Any] = {"Id": response["Id"]}
        while True:  # results are paginated
            page = self.client.get_statement_result(**kwargs)
            rows.extend(tuple(field_value(f) for f in record) for record in page.get("Records", []))
            if not page.get("NextToken"):
                return rows
            kwargs["NextToken"] = page["NextToken"]

    def read_load_result(self, contract: Contract, batch_id: str) -> LoadResult:
        return read_load_result(self, contract, batch_id)

    def load_batch(self, contract: Contract, batch_id: str, files: list[LoadFile], loaded_at: str, *,
                   copy_manifest_uri: str | None = None, batch_files_uri: str | None = None) -> LoadResult:
        started_wall, started = utc_now_iso(), time.perf_counter()
        sqls = batch_load_statements(  # the table exists: infra_scripts/redshift_grants.sql creates it
            contract, batch_id, files, loaded_at, "redshift", copy_manifest_uri=copy_manifest_uri,
            iam_role_arn=self.copy_role_arn, batch_files_uri=batch_files_uri)
        self.execute_batch(sqls)
        result = read_load_result(self, contract, batch_id)
        result.started_at, result.statements = started_wall, len(sqls)
        result.duration_seconds = round(time.perf_counter() - started, 6)
        return result
