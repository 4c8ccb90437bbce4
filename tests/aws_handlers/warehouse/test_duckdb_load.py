"""Load semantics on a real SQL engine (DuckDB): batch replace, ledger, duplicates, rollback."""
from __future__ import annotations

import pytest
import sqlglot

from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR, load_contract
from aws_handlers.core.load_sql import LoadFile, batch_load_statements, copy_manifest, ddl_statements
from aws_handlers.core.pipeline import BatchInput, BatchRun, Stores
from aws_handlers.storage import LocalStore
from aws_handlers.warehouse import DuckDBWarehouse
from tests.conftest import REPO

EMPLOYEES = load_contract(BUNDLED_CONTRACTS_DIR / "employees.yaml")
SAMPLE = str(REPO / "samples" / "employees.csv")


@pytest.fixture
def env(tmp_path):
    stores = Stores(LocalStore(tmp_path / "landing"), LocalStore(tmp_path / "staging"), LocalStore(tmp_path / "evidence"))
    return stores, DuckDBWarehouse(tmp_path / "warehouse.duckdb")


def run_batch(env, batch_id, files, warehouse=None):
    stores, default_warehouse = env
    run = BatchRun(EMPLOYEES, BatchInput.from_document({"batch_id": batch_id, "dataset": "employees", "files": files}),
                   stores, warehouse or default_warehouse)
    return run, run.run()


def table_snapshot(warehouse):
    return warehouse.query("SELECT employee_id, salary, _batch_id, _source_line FROM public.employees ORDER BY 1, 3")


def test_same_batch_twice_leaves_the_table_unchanged(env):
    _, first = run_batch(env, "b1", [SAMPLE])
    before = table_snapshot(env[1])
    _, second = run_batch(env, "b1", [SAMPLE])
    assert (first["total_loaded_rows"], second["total_loaded_rows"]) == (10, 10)
    assert table_snapshot(env[1]) == before
    assert env[1].query("SELECT COUNT(*) FROM public.employees") == [(10,)]
    assert env[1].query("SELECT file_key, status, batch_id FROM etl_observer.load_ledger") == [(SAMPLE, "loaded", "b1")]


def test_same_content_in_a_new_batch_is_a_duplicate_and_not_loaded_twice(env, tmp_path):
    copy = tmp_path / "again.csv"
    copy.write_bytes(open(SAMPLE, "rb").read())
    run_batch(env, "b1", [SAMPLE])
    run, summary = run_batch(env, "b2", [str(copy)])
    assert summary["status"] == "SUCCEEDED"
    assert summary["total_loaded_rows"] == 0
    assert [(d["file"], d["duplicate_of_batch"]) for d in summary["duplicates"]] == [(str(copy), "b1")]
    assert env[1].query("SELECT COUNT(*) FROM public.employees") == [(10,)]
    assert env[1].query("SELECT batch_id, status, duplicate_of_batch FROM etl_observer.load_ledger ORDER BY 1") == [
        ("b1", "loaded", None), ("b2", "duplicate", "b1")]
    assert [c["passed"] for c in run.checks] == [True, True, True]


def test_two_copies_inside_one_batch_load_once(env, tmp_path):
    copy = tmp_path / "zz_copy.csv"
    copy.write_bytes(open(SAMPLE, "rb").read())
    _, summary = run_batch(env, "b1", [SAMPLE, str(copy)])
    assert summary["total_loaded_rows"] == 10
    # the copy with the greater key is the duplicate (keys order the copies deterministically)
    assert [d["file"] for d in summary["duplicates"]] == [max(SAMPLE, str(copy))]
    assert summary["duplicates"][0]["duplicate_of_batch"] == "b1"


def test_crash_inside_the_load_leaves_the_previous_rows_intact(env, tmp_path):
    run_batch(env, "b1", [SAMPLE])
    before = table_snapshot(env[1])
    changed = tmp_path / "changed.csv"
    changed.write_text(open(SAMPLE, encoding="utf-8").read().replace("98000.00", "99000.00"), encoding="utf-8")

    def crash_after_delete(index, statement):
        if statement.startswith("INSERT INTO \"public\".\"employees\""):
            raise RuntimeError("injected crash between DELETE and INSERT")

    crashing = DuckDBWarehouse(env[1].path, on_statement=crash_after_delete)
    run, summary = run_batch(env, "b1", [str(changed)], warehouse=crashing)
    assert summary["status"] == "FAILED"
    assert summary["errors"][0]["kind"] == "load_failed"
    assert "injected crash" in summary["errors"][0]["message"]
    assert table_snapshot(env[1]) == before
    assert env[1].query("SELECT COUNT(*) FROM etl_observer.load_ledger") == [(1,)]


def test_a_batch_with_a_bad_file_commits_nothing(env, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(open(SAMPLE, encoding="utf-8").read().replace("98000.00", "lots"), encoding="utf-8")
    run, summary = run_batch(env, "b1", [SAMPLE, str(bad)])
    assert summary["status"] == "FAILED"
    assert summary["successful_conversions"] == 1 and summary["failure_count"] == 1
    assert [(e["file"], e["line"], e["column"]) for e in summary["errors"]] == [(str(bad), 2, "salary")]
    assert not env[1].path.exists() or env[1].query(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'employees'") == [(0,)]
    assert [s["status"] for s in run.steps] == ["succeeded", "failed", "skipped", "succeeded"]


@pytest.mark.parametrize("dialect", ["redshift", "duckdb"])
def test_load_sql_parses_in_its_dialect_and_never_truncates(dialect):
    files = [LoadFile("employees/a.csv", "a" * 64, 3, "s3://staging/employees/batch_id=b1/a.parquet", 100)]
    statements = ddl_statements(EMPLOYEES, dialect) + batch_load_statements(
        EMPLOYEES, "b1", files, "2026-01-01 00:00:00", dialect,
        copy_manifest_uri="s3://staging/employees/batch_id=b1/_copy.manifest", iam_role_arn="arn:aws:iam::1:role/copy")
    for statement in statements:
        if statement.startswith("COPY"):
            continue  # sqlglot has no Redshift COPY ... FORMAT AS PARQUET grammar; checked below
        sqlglot.parse_one(statement, read=dialect)
    assert not any("TRUNCATE" in s.upper() for s in statements)
    if dialect == "redshift":
        assert ("COPY etl_stage FROM 's3://staging/employees/batch_id=b1/_copy.manifest' IAM_ROLE "
                "'arn:aws:iam::1:role/copy' FORMAT AS PARQUET MANIFEST") in statements
    assert copy_manifest(files) == {"entries": [{"url": "s3://staging/employees/batch_id=b1/a.parquet",
                                                 "mandatory": True, "meta": {"content_length": 100}}]}


def test_batch_ids_and_literals_are_refused_when_unsafe():
    with pytest.raises(ValueError, match="batch id"):
        batch_load_statements(EMPLOYEES, "b1,b2", [], "2026-01-01 00:00:00", "duckdb")
    with pytest.raises(ValueError, match="control characters"):
        batch_load_statements(EMPLOYEES, "b1", [LoadFile("a\nb.csv", "0" * 64, 1, "/x.parquet")],
                              "2026-01-01 00:00:00", "duckdb")
    quoted = batch_load_statements(EMPLOYEES, "b1", [LoadFile("o'brien.csv", "0" * 64, 1, "/x.parquet")],
                                   "2026-01-01 00:00:00", "duckdb")
    assert any("'o''brien.csv'" in s for s in quoted)
