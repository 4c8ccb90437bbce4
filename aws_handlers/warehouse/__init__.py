"""One warehouse interface: DuckDB (embedded stand-in for Redshift) and Redshift (Data API).

Both execute the statements of aws_handlers.core.load_sql in one transaction and return the same
LoadResult, so the evidence and the Dagster metadata do not care which engine ran.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..core import utc_now_iso
from ..core.contract import Contract
from ..core.load_sql import LoadFile, batch_load_statements, ddl_statements, result_queries


@dataclass
class LoadResult:
    batch_id: str
    table: str
    files: list[dict[str, Any]]          # ledger rows: file_key, sha256, status, duplicate_of_batch, rows
    rows_inserted: int                   # rows of this batch now in the table
    table_rows_after: int
    started_at: str
    finished_at: str
    duration_seconds: float
    statements: int
    engine: str
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rows_by_file: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id, "table": self.table, "engine": self.engine,
            "rows_inserted": self.rows_inserted, "table_rows_after": self.table_rows_after,
            "files": self.files, "duplicates": self.duplicates, "rows_by_file": self.rows_by_file, "statements": self.statements,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "duration_seconds": self.duration_seconds,
        }


class Warehouse(Protocol):
    engine: str

    def load_batch(self, contract: Contract, batch_id: str, files: list[LoadFile], loaded_at: str) -> LoadResult: ...
    def query(self, sql: str) -> list[tuple]: ...


def read_load_result(warehouse: Any, contract: Contract, batch_id: str) -> LoadResult:
    """After the batch's transaction committed: its ledger rows and row counts, read back with the
    same queries on every engine (anything with `query(sql) -> rows`)."""
    queries = result_queries(contract, batch_id)
    ledger = [dict(zip(("file_key", "sha256", "status", "duplicate_of_batch", "rows"), row))
              for row in warehouse.query(queries["ledger"])]
    for entry in ledger:
        entry["rows"] = int(entry["rows"]) if entry["rows"] is not None else None
    rows_by_file = {key: int(n) for key, n in warehouse.query(queries["rows_by_file"])}
    rows_inserted = int(warehouse.query(queries["batch_rows"])[0][0])
    table_rows = int(warehouse.query(queries["table_rows"])[0][0])
    now = utc_now_iso()
    return LoadResult(
        batch_id=batch_id, table=contract.table, files=ledger, rows_inserted=rows_inserted, table_rows_after=table_rows,
        started_at=now, finished_at=now, duration_seconds=0.0, statements=0, engine=getattr(warehouse, "engine", "unknown"),
        duplicates=[f for f in ledger if f["status"] == "duplicate"], rows_by_file=rows_by_file)


class _ConnectionQueries:
    """An open DuckDB connection seen through the `query` interface (inside load_batch)."""
    engine = "duckdb"

    def __init__(self, con):
        self.con = con

    def query(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()


def loaded_at_now() -> str:
    return utc_now_iso().replace("T", " ").rstrip("Z")


class DuckDBWarehouse:
    """Embedded warehouse in one DuckDB file. Standing in for Redshift Serverless."""

    engine = "duckdb"

    def __init__(self, path: str | Path, *, lock_timeout_seconds: float = 60.0,
                 on_statement: Callable[[int, str], None] | None = None):
        self.path = Path(path)
        self.lock_timeout_seconds = lock_timeout_seconds
        # Test seam: called before each statement of a batch load (crash injection).
        self.on_statement = on_statement

    def connect(self, read_only: bool = False):
        import duckdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_seconds
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only and self.path.exists())
            except duckdb.IOException as exc:  # another process holds the file lock: wait for it
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def load_batch(self, contract: Contract, batch_id: str, files: list[LoadFile], loaded_at: str) -> LoadResult:
        started_wall, started = utc_now_iso(), time.perf_counter()
        statements = batch_load_statements(contract, batch_id, files, loaded_at, "duckdb")
        con = self.connect()
        try:
            for statement in ddl_statements(contract, "duckdb"):
                con.execute(statement)
            con.execute("BEGIN TRANSACTION")
            try:
                for index, statement in enumerate(statements):
                    if self.on_statement:
                        self.on_statement(index, statement)
                    con.execute(statement)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            result = read_load_result(_ConnectionQueries(con), contract, batch_id)
        finally:
            con.close()
        result.started_at, result.statements = started_wall, len(statements)
        result.duration_seconds = round(time.perf_counter() - started, 6)
        return result

    def query(self, sql: str) -> list[tuple]:
        con = self.connect(read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

