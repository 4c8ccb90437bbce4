"""redshift_grants.sql: nothing to PUBLIC, no GRANT ALL, and exactly what the load and the read-back use.

Statements sqlglot's redshift dialect parses (GRANT/REVOKE on schemas, tables, databases; CREATE TABLE) are
checked on the syntax tree; the ones it does not (CREATE ROLE, CREATE USER, GRANT ROLE, GRANT ASSUMEROLE)
come back as sqlglot Command nodes and are checked on their text.
"""
from __future__ import annotations

import re

import pytest
import sqlglot
from sqlglot import exp

from infra_test_support import GRANTS
from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR, load_contract
from aws_handlers.core.load_sql import (BATCH_FILES_TABLE, FILE_STATUS_TABLE, LEDGER_TABLE, STAGE_TABLE, LoadFile,
                                        batch_load_statements, ddl_statements, primary_key_duplicates_query,
                                        result_queries)
from infra_scripts.deploy import render_grants

TEMP_TABLES = {STAGE_TABLE, BATCH_FILES_TABLE, FILE_STATUS_TABLE}


def sql_statements(text: str) -> list[str]:
    without_comments = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    return [s.strip() for s in without_comments.split(";") if s.strip()]


def parse(statement: str) -> exp.Expression:
    import logging

    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "falling back to parsing as a Command" is expected
    return sqlglot.parse_one(statement, read="redshift")


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, exp.Expression]]:
    return [(s, parse(s)) for s in sql_statements(GRANTS.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def contract():
    return load_contract(BUNDLED_CONTRACTS_DIR / "employees.yaml")


def _name(node: exp.Expression | None) -> str:
    if node is None:
        return ""
    if isinstance(node, exp.Table):
        return ".".join(p.name for p in (node.args.get("db"), node.this) if p is not None)
    return node.name


def grants(parsed) -> list[dict]:
    """One entry per parsed GRANT: privileges, object kind, object, principals (kind, name)."""
    result = []
    for _text, node in parsed:
        if isinstance(node, exp.Grant):
            result.append({
                "privileges": {p.this.name.upper() if isinstance(p.this, exp.Var) else p.this.sql().upper()
                               for p in node.args["privileges"]},
                "kind": (node.args.get("kind") or "TABLE").upper(),
                "object": _name(node.args["securable"]),
                "principals": {((p.args.get("kind") or "") if isinstance(p.args.get("kind"), str) else "",
                                p.this.name) for p in node.args["principals"]},
            })
    return result


def test_every_statement_parses(parsed):
    assert len(parsed) >= 20
    kinds = {type(node).__name__ for _t, node in parsed}
    assert {"Create", "Grant", "Revoke"} <= kinds
    commands = [text for text, node in parsed if isinstance(node, exp.Command)]
    # only the statement kinds sqlglot does not model fall back to Command
    for text in commands:
        assert re.match(r"(CREATE (ROLE|USER)|GRANT (ROLE|ASSUMEROLE))\b", text), text


def test_nothing_is_granted_to_public_and_nothing_is_grant_all(parsed):
    for entry in grants(parsed):
        assert "ALL" not in entry["privileges"] and "ALL PRIVILEGES" not in entry["privileges"], entry
        assert all(name.upper() != "PUBLIC" for _kind, name in entry["principals"]), entry
    for text, node in parsed:
        if isinstance(node, exp.Command):
            assert not re.search(r"\bTO\s+PUBLIC\b", text, re.I), text
            assert not re.search(r"\bGRANT\s+ALL\b", text, re.I), text
    comments = GRANTS.read_text(encoding="utf-8")
    assert "GRANT ALL" in comments and "TO PUBLIC" in comments, "the file says why not GRANT ALL ... TO PUBLIC"


def test_the_seed_hole_is_revoked(parsed, contract):
    revoked = {(_name(n.args["securable"])) for _t, n in parsed if isinstance(n, exp.Revoke)
               and any(p.this.name.upper() == "PUBLIC" for p in n.args["principals"])}
    assert {contract.table, LEDGER_TABLE} <= revoked


def test_loader_and_reader_privileges(parsed, contract):
    by_role: dict[str, dict[tuple[str, str], set[str]]] = {}
    for entry in grants(parsed):
        for _kind, principal in entry["principals"]:
            by_role.setdefault(principal, {}).setdefault((entry["kind"], entry["object"]), set()).update(
                entry["privileges"])
    schema = contract.table.split(".")[0]
    assert by_role["etl_loader"] == {
        ("SCHEMA", schema): {"USAGE"}, ("SCHEMA", "etl_observer"): {"USAGE"},
        ("TABLE", contract.table): {"SELECT", "INSERT", "DELETE"},
        ("TABLE", LEDGER_TABLE): {"SELECT", "INSERT", "DELETE"},
        ("DATABASE", "${RedshiftDatabase}"): {"TEMP"},
    }
    assert by_role["etl_reader"] == {
        ("SCHEMA", schema): {"USAGE"}, ("SCHEMA", "etl_observer"): {"USAGE"},
        ("TABLE", contract.table): {"SELECT"}, ("TABLE", LEDGER_TABLE): {"SELECT"},
    }
    text = "\n".join(t for t, _n in parsed)
    assert "CREATE ROLE etl_loader" in text and "CREATE ROLE etl_reader" in text
    assert 'GRANT ROLE etl_loader TO "${LoaderDatabaseUser}"' in text
    assert 'GRANT ROLE etl_reader TO "${ReaderDatabaseUser}"' in text
    assert "GRANT ASSUMEROLE ON '${CopyRoleArn}' TO ROLE etl_loader FOR COPY" in text


def _required_privileges(statements: list[str]) -> dict[str, set[str]]:
    """What a list of statements needs, per permanent table: INSERT/DELETE on targets, SELECT on what they read."""
    needed: dict[str, set[str]] = {}
    for statement in statements:
        if statement.upper().startswith(("COPY", "CREATE TEMP", "DROP TABLE")):
            # COPY and DROP touch only the batch's temp tables (and the COPY role: GRANT ASSUMEROLE)
            assert any(t in statement for t in TEMP_TABLES), statement
            continue
        node = parse(statement)
        target = None
        if isinstance(node, exp.Delete):
            target = _name(node.this)
            needed.setdefault(target, set()).update({"DELETE", "SELECT"})
        elif isinstance(node, exp.Insert):
            target = _name(node.this.this if isinstance(node.this, exp.Schema) else node.this)
            needed.setdefault(target, set()).add("INSERT")
        elif isinstance(node, exp.Create):  # CREATE TEMP TABLE ... AS SELECT
            target = _name(node.this)
        for table in node.find_all(exp.Table):
            name = _name(table)
            if name and name != target and name not in TEMP_TABLES and "." in name:
                needed.setdefault(name, set()).add("SELECT")
    return {k: v for k, v in needed.items() if k not in TEMP_TABLES}


def test_the_loader_has_what_the_batch_load_uses_and_no_more(parsed, contract):
    files = [LoadFile("employees/a.csv", "0" * 64, 3, "s3://staging/employees/a.parquet", 100)]
    statements = batch_load_statements(contract, "b1", files, "2026-01-01 00:00:00", "redshift",
                                       copy_manifest_uri="s3://staging/m.manifest", iam_role_arn="arn:role",
                                       batch_files_uri="s3://staging/files.csv")
    needed = _required_privileges(statements)
    granted = {}
    for entry in grants(parsed):
        if ("ROLE", "etl_loader") in entry["principals"] and entry["kind"] == "TABLE":
            granted[entry["object"]] = entry["privileges"]
    assert needed == granted


def test_the_reader_has_what_the_read_back_uses(parsed, contract):
    queries = list(result_queries(contract, "b1").values()) + [primary_key_duplicates_query(contract)]
    needed = _required_privileges(queries)
    granted = {e["object"]: e["privileges"] for e in grants(parsed)
               if ("ROLE", "etl_reader") in e["principals"] and e["kind"] == "TABLE"}
    assert needed == granted


def test_the_ddl_is_the_load_codes_ddl(contract):
    text = " ".join(GRANTS.read_text(encoding="utf-8").split())
    for statement in ddl_statements(contract, "redshift"):
        if statement == 'CREATE SCHEMA IF NOT EXISTS "public"':
            continue  # exists in every Redshift database
        assert " ".join(statement.split()) + ";" in text, statement


def test_rendering_fills_every_placeholder():
    sql = render_grants({"LoaderDatabaseUser": "IAMR:loader-role", "ReaderDatabaseUser": "IAMR:reader-role",
                         "CopyRoleArn": "arn:aws:iam::123456789012:role/copy"}, "analytics")
    assert 'GRANT ROLE etl_loader TO "IAMR:loader-role";' in sql
    assert 'GRANT TEMP ON DATABASE "analytics" TO ROLE etl_loader;' in sql
    assert not re.search(r"\$\{[A-Za-z0-9_]+\}", sql)
