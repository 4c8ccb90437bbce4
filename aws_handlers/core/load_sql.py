"""Load SQL from the contract: DDL and the one-transaction batch replace, for Redshift and DuckDB.

Both engines run the same statements; only filling the stage table differs (Redshift
`COPY ... FORMAT AS PARQUET` from a COPY manifest, DuckDB `read_parquet`). The semantics:

  * the batch's rows are replaced, never appended: DELETE this batch, INSERT the new rows;
  * a file whose content (SHA-256) was already loaded by another batch is recorded in the ledger
    as a duplicate and its rows are not inserted; so is a second copy inside the same batch;
  * everything happens in one transaction, so a failure leaves the table as it was.
    No TRUNCATE anywhere: on Redshift it commits implicitly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .contract import (BATCH_ID_COLUMN, BATCH_ID_PATTERN, LOADED_AT_COLUMN, SOURCE_FILE_COLUMN,
                       SOURCE_LINE_COLUMN, Contract)

LEDGER_SCHEMA = "etl_observer"
LEDGER_TABLE = f"{LEDGER_SCHEMA}.load_ledger"
STAGE_TABLE = "etl_stage"
BATCH_FILES_TABLE = "etl_batch_files"
FILE_STATUS_TABLE = "etl_batch_file_status"
DIALECTS = ("redshift", "duckdb")
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?\Z")


@dataclass(frozen=True)
class LoadFile:
    """One converted file of the batch, as the load needs it (from its conversion manifest)."""
    source_key: str      # the value in _source_file: the landing key of the CSV
    sha256: str          # of the CSV: what "same file content" means
    rows: int            # rows in its Parquet
    parquet_uri: str     # local path or s3:// URI
    parquet_size: int = 0


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    if any(ord(ch) < 32 for ch in value) or "\\" in value:
        raise ValueError(f"refusing to put control characters or backslashes in SQL: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def table_ref(contract: Contract) -> str:
    return f"{quote_ident(contract.schema_name)}.{quote_ident(contract.table_name)}"


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}")


def ddl_statements(contract: Contract, dialect: str) -> list[str]:
    _check_dialect(dialect)
    columns = [f"{quote_ident(c.name)} {c.sql_type}{'' if c.nullable else ' NOT NULL'}" for c in contract.columns]
    columns += [
        f"{quote_ident(BATCH_ID_COLUMN)} VARCHAR(128) NOT NULL",
        f"{quote_ident(SOURCE_FILE_COLUMN)} VARCHAR(1024) NOT NULL",
        f"{quote_ident(SOURCE_LINE_COLUMN)} BIGINT NOT NULL",
        f"{quote_ident(LOADED_AT_COLUMN)} TIMESTAMP NOT NULL",
    ]
    table_options = f" SORTKEY ({quote_ident(BATCH_ID_COLUMN)})" if dialect == "redshift" else ""
    return [
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(contract.schema_name)}",
        f"CREATE TABLE IF NOT EXISTS {table_ref(contract)} (\n  " + ",\n  ".join(columns) + f"\n){table_options}",
        f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}",
        f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (\n"
        "  dataset VARCHAR(128) NOT NULL,\n  file_key VARCHAR(1024) NOT NULL,\n  sha256 CHAR(64) NOT NULL,\n"
        "  batch_id VARCHAR(128) NOT NULL,\n  status VARCHAR(16) NOT NULL,\n  duplicate_of_batch VARCHAR(128),\n"
        "  rows BIGINT NOT NULL,\n  loaded_at TIMESTAMP NOT NULL\n)",
    ]


def stage_fill_statement(contract: Contract, files: list[LoadFile], dialect: str, *,
                         copy_manifest_uri: str | None = None, iam_role_arn: str | None = None) -> str:
    if dialect == "redshift":
        if not (copy_manifest_uri and iam_role_arn):
            raise ValueError("Redshift COPY needs the COPY manifest URI and the IAM role ARN")
        return (f"COPY {STAGE_TABLE} FROM {quote_literal(copy_manifest_uri)} IAM_ROLE {quote_literal(iam_role_arn)} "
                "FORMAT AS PARQUET MANIFEST")
    paths = ", ".join(quote_literal(f.parquet_uri) for f in files)
    names = ", ".join(quote_ident(n) for n in [*contract.column_names, SOURCE_FILE_COLUMN, SOURCE_LINE_COLUMN])
    return f"INSERT INTO {STAGE_TABLE} SELECT {names} FROM read_parquet([{paths}])"


def batch_files_csv(files: list[LoadFile]) -> bytes:
    """The batch's file list for `COPY etl_batch_files ... CSV` (key, sha256, rows)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for f in files:
        writer.writerow([f.source_key, f.sha256, int(f.rows)])
    return out.getvalue().encode("utf-8")


def copy_manifest(files: list[LoadFile]) -> dict:
    """Redshift COPY manifest: exactly this batch's Parquet files (a prefix would also match strays)."""
    return {"entries": [{"url": f.parquet_uri, "mandatory": True, "meta": {"content_length": f.parquet_size}}
                        for f in files]}


def batch_load_statements(contract: Contract, batch_id: str, files: list[LoadFile], loaded_at: str, dialect: str,
                          *, copy_manifest_uri: str | None = None, iam_role_arn: str | None = None,
                          batch_files_uri: str | None = None) -> list[str]:
    """The statements of one batch load, to run in ONE transaction (BEGIN/COMMIT are the caller's)."""
    _check_dialect(dialect)
    if not BATCH_ID_PATTERN.match(batch_id):
        raise ValueError(f"batch id {batch_id!r} must match {BATCH_ID_PATTERN.pattern}")
    if not _TIMESTAMP_RE.match(loaded_at):
        raise ValueError(f"loaded_at must be 'YYYY-MM-DD HH:MM:SS[.ffffff]', got {loaded_at!r}")
    batch = quote_literal(batch_id)
    dataset = quote_literal(contract.dataset)
    ts = f"CAST({quote_literal(loaded_at)} AS TIMESTAMP)"
    stage_columns = [f"{quote_ident(c.name)} {c.sql_type}" for c in contract.columns]
    stage_columns += [f"{quote_ident(SOURCE_FILE_COLUMN)} VARCHAR(1024)", f"{quote_ident(SOURCE_LINE_COLUMN)} BIGINT"]
    data_columns = ", ".join(quote_ident(n) for n in contract.column_names)
    statements = [
        f"CREATE TEMP TABLE {STAGE_TABLE} ({', '.join(stage_columns)})",
    ]
    if files:
        statements.append(stage_fill_statement(contract, files, dialect, copy_manifest_uri=copy_manifest_uri,
                                               iam_role_arn=iam_role_arn))
    statements.append(f"CREATE TEMP TABLE {BATCH_FILES_TABLE} (file_key VARCHAR(1024), sha256 CHAR(64), rows BIGINT)")
    if files and batch_files_uri:
        # Redshift: the file list comes from S3 as well, so the SQL (and the Step Functions state
        # carrying it) stays the same size for 1 file or 1,000.
        statements.append(f"COPY {BATCH_FILES_TABLE} FROM {quote_literal(batch_files_uri)} IAM_ROLE "
                          f"{quote_literal(iam_role_arn or '')} FORMAT AS CSV")
    elif files:
        values = ", ".join(f"({quote_literal(f.source_key)}, {quote_literal(f.sha256)}, {int(f.rows)})" for f in files)
        statements.append(f"INSERT INTO {BATCH_FILES_TABLE} VALUES {values}")
    statements += [
        # Which files are duplicates: same content already loaded by another batch, or an earlier
        # copy (by key) inside this batch. Decided inside the transaction, against the ledger.
        f"CREATE TEMP TABLE {FILE_STATUS_TABLE} AS\n"
        f"SELECT f.file_key, f.sha256, f.rows,\n"
        f"  CASE WHEN p.batch_id IS NOT NULL THEN p.batch_id\n"
        f"       WHEN ROW_NUMBER() OVER (PARTITION BY f.sha256 ORDER BY f.file_key) > 1 THEN {batch}\n"
        f"  END AS duplicate_of_batch\n"
        f"FROM {BATCH_FILES_TABLE} f\n"
        f"LEFT JOIN (SELECT sha256, MIN(batch_id) AS batch_id FROM {LEDGER_TABLE}\n"
        f"           WHERE dataset = {dataset} AND status = 'loaded' AND batch_id <> {batch}\n"
        f"           GROUP BY sha256) p ON p.sha256 = f.sha256",
        f"DELETE FROM {table_ref(contract)} WHERE {quote_ident(BATCH_ID_COLUMN)} = {batch}",
        f"INSERT INTO {table_ref(contract)} ({data_columns}, {quote_ident(BATCH_ID_COLUMN)}, "
        f"{quote_ident(SOURCE_FILE_COLUMN)}, {quote_ident(SOURCE_LINE_COLUMN)}, {quote_ident(LOADED_AT_COLUMN)})\n"
        f"SELECT {', '.join('s.' + quote_ident(n) for n in contract.column_names)}, {batch}, "
        f"s.{quote_ident(SOURCE_FILE_COLUMN)}, s.{quote_ident(SOURCE_LINE_COLUMN)}, {ts}\n"
        f"FROM {STAGE_TABLE} s JOIN {FILE_STATUS_TABLE} b ON b.file_key = s.{quote_ident(SOURCE_FILE_COLUMN)}\n"
        f"WHERE b.duplicate_of_batch IS NULL",
        f"DELETE FROM {LEDGER_TABLE} WHERE dataset = {dataset} AND batch_id = {batch}",
        f"INSERT INTO {LEDGER_TABLE} (dataset, file_key, sha256, batch_id, status, duplicate_of_batch, rows, loaded_at)\n"
        f"SELECT {dataset}, file_key, sha256, {batch}, "
        f"CASE WHEN duplicate_of_batch IS NULL THEN 'loaded' ELSE 'duplicate' END, duplicate_of_batch, rows, {ts}\n"
        f"FROM {FILE_STATUS_TABLE}",
        f"DROP TABLE {FILE_STATUS_TABLE}",
        f"DROP TABLE {BATCH_FILES_TABLE}",
        f"DROP TABLE {STAGE_TABLE}",
    ]
    return statements


def result_queries(contract: Contract, batch_id: str) -> dict[str, str]:
    """Read-back after commit: the ledger rows of the batch and the table's row counts."""
    batch = quote_literal(batch_id)
    return {
        "ledger": f"SELECT file_key, sha256, status, duplicate_of_batch, rows FROM {LEDGER_TABLE} "
                  f"WHERE dataset = {quote_literal(contract.dataset)} AND batch_id = {batch} ORDER BY file_key",
        "batch_rows": f"SELECT COUNT(*) FROM {table_ref(contract)} WHERE {quote_ident(BATCH_ID_COLUMN)} = {batch}",
        "table_rows": f"SELECT COUNT(*) FROM {table_ref(contract)}",
        "rows_by_file": f"SELECT {quote_ident(SOURCE_FILE_COLUMN)}, COUNT(*) FROM {table_ref(contract)} "
                        f"WHERE {quote_ident(BATCH_ID_COLUMN)} = {batch} GROUP BY 1 ORDER BY 1",
    }


def primary_key_duplicates_query(contract: Contract, limit: int = 20) -> str | None:
    if not contract.primary_key:
        return None
    keys = ", ".join(quote_ident(k) for k in contract.primary_key)
    return (f"SELECT {keys}, COUNT(*) AS copies FROM {table_ref(contract)} GROUP BY {keys} "
            f"HAVING COUNT(*) > 1 ORDER BY copies DESC LIMIT {int(limit)}")
