"""The Lambda handlers on a moto server (S3, Step Functions) and a stubbed Data API (moto's
redshift-data returns fixed fake rows, so its answers are stubbed with botocore's Stubber)."""
from __future__ import annotations

import json
import sys

import boto3
import pytest
import sqlglot
from botocore.stub import ANY, Stubber

from aws_handlers.core.evidence import verify_dataset
from aws_handlers.core.pipeline import BatchInputError
from aws_handlers.glue.csv_to_parquet import run as run_glue
from aws_handlers.lambdas import prepare_load, start_batch, validate_batch, write_evidence
from aws_handlers.storage import S3Store
from aws_handlers.warehouse.redshift_data import RedshiftDataWarehouse, StatementFailed
from tests.conftest import REPO

SAMPLE = (REPO / "samples" / "employees.csv").read_bytes()


def s3_event(bucket, key_encoded, size=100, etag="abc", sequencer="0001"):
    return {"version": "0", "id": "e1", "detail-type": "Object Created", "source": "aws.s3", "time": "2026-12-03T10:11:12Z",
            "region": "us-east-1", "detail": {"version": "0", "bucket": {"name": bucket},
                                              "object": {"key": key_encoded, "size": size, "etag": etag, "sequencer": sequencer}}}


def test_handlers_import_without_dagster_and_do_nothing_at_import():
    assert "dagster" not in {m.split(".")[0] for m in sys.modules if m.startswith("aws_handlers")}
    import subprocess

    code = ("import sys, aws_handlers.lambdas.start_batch, aws_handlers.lambdas.write_evidence, "
            "aws_handlers.lambdas.prepare_load, aws_handlers.glue.csv_to_parquet; "
            "assert 'dagster' not in sys.modules and 'boto3' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_start_batch_decodes_the_key_and_a_redelivered_event_starts_nothing(aws, capsys, monkeypatch):
    sfn = boto3.client("stepfunctions")
    arn = sfn.create_state_machine(name=f"ingest-{aws['LANDING_BUCKET']}", definition=json.dumps(
        {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    monkeypatch.setenv("STATE_MACHINE_ARN", arn)
    event = s3_event(aws["LANDING_BUCKET"], "employees/2026/%E7%A4%BE%E5%93%A1+%E4%B8%80%E8%A6%A7.csv")
    first = start_batch.handler(event)
    assert first["started"] is True
    assert first["batch_id"] == start_batch.batch_id_for(aws["LANDING_BUCKET"], "employees/2026/社員 一覧.csv", "abc")
    assert first["batch_id"].startswith("s3-") and len(first["batch_id"]) == 27
    execution = sfn.describe_execution(executionArn=first["execution_arn"])
    assert execution["name"] == first["batch_id"]
    assert json.loads(execution["input"]) == {"batch_id": first["batch_id"], "dataset": "employees",
                                              "files": ["employees/2026/社員 一覧.csv"]}
    again = start_batch.handler(event)
    assert again == {"started": False, "reason": "duplicate event", "batch_id": first["batch_id"]}
    assert len(sfn.list_executions(stateMachineArn=arn)["executions"]) == 1
    assert start_batch.handler(s3_event(aws["LANDING_BUCKET"], "employees/empty.csv", size=0))["started"] is False
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [entry["message"] for entry in logs] == ["execution started", "duplicate event: execution already exists",
                                                    "skipped: not a non-empty CSV under a dataset folder"]


def test_validate_batch(aws):
    aws["s3"].put_object(Bucket=aws["LANDING_BUCKET"], Key="employees/a.csv", Body=SAMPLE)
    doc = {"batch_id": "v1", "dataset": "employees", "files": ["employees/a.csv"]}
    assert validate_batch.handler(doc) == doc
    with pytest.raises(BatchInputError, match=r"files not in s3://.*\['employees/b.csv'\]"):
        validate_batch.handler({**doc, "files": ["employees/a.csv", "employees/b.csv"]})
    with pytest.raises(ValueError, match="no contract for dataset 'nope'"):
        validate_batch.handler({**doc, "dataset": "nope"})


def convert_all(aws, batch_id, keys):
    for key in keys:
        run_glue({"batch_id": batch_id, "dataset": "employees", "source_key": key,
                  "landing_bucket": aws["LANDING_BUCKET"], "staging_bucket": aws["STAGING_BUCKET"]}, s3_client=aws["s3"])


def test_prepare_load_writes_copy_inputs_and_returns_constant_size_sql(aws):
    keys = ["employees/a.csv", "employees/sub/a.csv"]
    for key in keys:
        aws["s3"].put_object(Bucket=aws["LANDING_BUCKET"], Key=key, Body=SAMPLE)
    convert_all(aws, "p1", keys)
    plan = prepare_load.handler({"batch_id": "p1", "dataset": "employees", "files": keys})
    staging = aws["STAGING_BUCKET"]
    assert (plan["status"], plan["files"]) == ("ready", 2)
    assert plan["copy_manifest_uri"] == f"s3://{staging}/employees/batch_id=p1/_load/copy.manifest"
    manifest = json.loads(aws["s3"].get_object(Bucket=staging, Key="employees/batch_id=p1/_load/copy.manifest")["Body"].read())
    assert [e["url"] for e in manifest["entries"]] == [f"s3://{staging}/employees/batch_id=p1/a.parquet",
                                                       f"s3://{staging}/employees/batch_id=p1/sub__a.parquet"]
    assert all(e["mandatory"] and e["meta"]["content_length"] > 0 for e in manifest["entries"])
    files_csv = aws["s3"].get_object(Bucket=staging, Key="employees/batch_id=p1/_load/batch_files.csv")["Body"].read().decode()
    assert [line.split(",")[0] for line in files_csv.splitlines()] == keys
    copies = [s for s in plan["sqls"] if s.startswith("COPY")]
    assert copies == [
        f"COPY etl_stage FROM 's3://{staging}/employees/batch_id=p1/_load/copy.manifest' IAM_ROLE "
        "'arn:aws:iam::123456789012:role/copy' FORMAT AS PARQUET MANIFEST",
        f"COPY etl_batch_files FROM 's3://{staging}/employees/batch_id=p1/_load/batch_files.csv' IAM_ROLE "
        "'arn:aws:iam::123456789012:role/copy' FORMAT AS CSV"]
    for statement in plan["sqls"]:
        if not statement.startswith("COPY"):
            sqlglot.parse_one(statement, read="redshift")
    assert not any("'employees/a.csv'" in s for s in plan["sqls"])  # file list travels via S3, not the state


def test_prepare_load_refuses_a_batch_with_a_failed_file(aws):
    aws["s3"].put_object(Bucket=aws["LANDING_BUCKET"], Key="employees/bad.csv", Body=b"employee_id\n1\n")
    convert_all(aws, "p2", ["employees/bad.csv"])
    plan = prepare_load.handler({"batch_id": "p2", "dataset": "employees", "files": ["employees/bad.csv"]})
    assert plan == {"status": "failed", "reason": "files failed or missing conversion", "files": ["employees/bad.csv"],
                    "sqls": [], "copy_manifest_uri": None}


def stub_query(stubber, rows):
    stubber.add_response("execute_statement", {"Id": "q"}, {"WorkgroupName": "etl-wg", "Database": "dev", "Sql": ANY})
    stubber.add_response("describe_statement", {"Id": "q", "Status": "FINISHED"}, {"Id": "q"})
    stubber.add_response("get_statement_result", {"Records": rows}, {"Id": "q"})


def stubbed_warehouse():
    client = boto3.client("redshift-data", region_name="us-east-1")
    return RedshiftDataWarehouse("etl-wg", "dev", client=client, poll_seconds=0), Stubber(client)


def test_write_evidence_after_a_finished_load(aws, monkeypatch):
    aws["s3"].put_object(Bucket=aws["LANDING_BUCKET"], Key="employees/a.csv", Body=SAMPLE)
    convert_all(aws, "w1", ["employees/a.csv"])
    warehouse, stubber = stubbed_warehouse()
    from aws_handlers.core.pipeline import read_batch_manifests

    sha = read_batch_manifests(S3Store(aws["STAGING_BUCKET"], client=aws["s3"]), "employees", "w1")[0]["input"]["sha256"]
    stub_query(stubber, [[{"stringValue": "employees/a.csv"}, {"stringValue": sha}, {"stringValue": "loaded"},
                          {"isNull": True}, {"longValue": 10}]])                    # ledger
    stub_query(stubber, [[{"stringValue": "employees/a.csv"}, {"longValue": 10}]])  # rows per file
    stub_query(stubber, [[{"longValue": 10}]])                                      # batch rows
    stub_query(stubber, [[{"longValue": 25}]])                                      # table rows
    stub_query(stubber, [])                                                         # primary-key duplicates
    monkeypatch.setattr(write_evidence, "warehouse", lambda: warehouse)
    with stubber:
        output = write_evidence.handler({"batch_id": "w1", "dataset": "employees", "files": ["employees/a.csv"],
                                         "load": {"Id": "stmt-1", "Status": "FINISHED"}})
        stubber.assert_no_pending_responses()
    staging = aws["STAGING_BUCKET"]
    assert {k: output[k] for k in ("status", "total_loaded_rows", "successful_conversions", "successful_loads",
                                   "failure_count", "batch_id", "dataset")} == {
        "status": "SUCCEEDED", "total_loaded_rows": 10, "successful_conversions": 1, "successful_loads": 1,
        "failure_count": 0, "batch_id": "w1", "dataset": "employees"}
    assert output["evidence_uri"] == f"s3://{staging}/evidence/employees/w1/report.json"
    assert sorted(output["assets"]) == ["evidence_report", "staging_parquet", "warehouse_table"]
    assert output["assets"]["warehouse_table"] == {"table": "public.employees", "rows_inserted": 10,
                                                   "table_rows_after": 25, "duplicates": []}
    (parquet,) = output["assets"]["staging_parquet"]["files"]
    assert (parquet["parquet_uri"], parquet["rows"], parquet["source_sha256"]) == (
        f"s3://{staging}/employees/batch_id=w1/a.parquet", 10, sha)
    assert len(json.dumps(output)) < 4096  # small: it is the execution output
    evidence = S3Store(staging, "evidence/", client=aws["s3"])
    result = verify_dataset(evidence, "employees", s3_client_factory=lambda: aws["s3"])
    assert (result["ok"], result["reports"], result["problems"]) == (True, 1, [])


def test_write_evidence_on_the_catch_path(aws, monkeypatch):
    aws["s3"].put_object(Bucket=aws["LANDING_BUCKET"], Key="employees/bad.csv", Body=b"employee_id\n1\n")
    convert_all(aws, "w2", ["employees/bad.csv"])
    monkeypatch.setattr(write_evidence, "warehouse", lambda: stubbed_warehouse()[0])
    output = write_evidence.handler({"batch_id": "w2", "dataset": "employees", "files": ["employees/bad.csv"],
                                     "error": {"Error": "States.TaskFailed", "Cause": "Glue job run failed"}})
    assert (output["status"], output["failure_count"], output["total_loaded_rows"]) == ("FAILED", 1, 0)
    assert sorted(output["assets"]) == ["evidence_report"]
    assert [e["kind"] for e in output["errors"]] == ["bad_header", "step_failed"]
    assert output["errors"][1]["message"] == "States.TaskFailed: Glue job run failed"


def test_data_api_failure_and_pagination():
    warehouse, stubber = stubbed_warehouse()
    stubber.add_response("execute_statement", {"Id": "q"}, {"WorkgroupName": "etl-wg", "Database": "dev", "Sql": "SELECT 1"})
    stubber.add_response("describe_statement", {"Id": "q", "Status": "STARTED"}, {"Id": "q"})
    stubber.add_response("describe_statement", {"Id": "q", "Status": "FINISHED"}, {"Id": "q"})
    stubber.add_response("get_statement_result", {"Records": [[{"longValue": 1}]], "NextToken": "t"}, {"Id": "q"})
    stubber.add_response("get_statement_result", {"Records": [[{"longValue": 2}]]}, {"Id": "q", "NextToken": "t"})
    stubber.add_response("batch_execute_statement", {"Id": "b"}, {"WorkgroupName": "etl-wg", "Database": "dev", "Sqls": ["x"]})
    stubber.add_response("describe_statement", {"Id": "b", "Status": "FAILED", "Error": "permission denied for relation employees"},
                         {"Id": "b"})
    stubber.add_client_error("execute_statement", service_error_code="ActiveStatementsExceededException",
                             expected_params={"WorkgroupName": "etl-wg", "Database": "dev", "Sql": "SELECT 2"})
    with stubber:
        assert warehouse.query("SELECT 1") == [(1,), (2,)]
        with pytest.raises(StatementFailed, match="b FAILED: permission denied for relation employees"):
            warehouse.execute_batch(["x"])
        with pytest.raises(warehouse.client.exceptions.ActiveStatementsExceededException):
            warehouse.query("SELECT 2")
        stubber.assert_no_pending_responses()


def test_a_cancelled_load_that_committed_anyway_is_reported_as_loaded(aws, monkeypatch):
    """Review finding: after the timeout's cancel, Redshift is asked how the statement ended."""
    aws["s3"].put_object(Bucket=aws["LANDING_BUCKET"], Key="employees/a.csv", Body=SAMPLE)
    convert_all(aws, "w3", ["employees/a.csv"])
    warehouse, stubber = stubbed_warehouse()
    stubber.add_response("describe_statement", {"Id": "stmt-9", "Status": "FINISHED"}, {"Id": "stmt-9"})
    stub_query(stubber, [[{"stringValue": "employees/a.csv"}, {"stringValue": "0" * 64}, {"stringValue": "loaded"},
                          {"isNull": True}, {"longValue": 10}]])
    stub_query(stubber, [[{"stringValue": "employees/a.csv"}, {"longValue": 10}]])
    stub_query(stubber, [[{"longValue": 10}]])
    stub_query(stubber, [[{"longValue": 10}]])
    stub_query(stubber, [])
    monkeypatch.setattr(write_evidence, "warehouse", lambda: warehouse)
    with stubber:
        output = write_evidence.handler({"batch_id": "w3", "dataset": "employees", "files": ["employees/a.csv"],
                                         "load": {"Id": "stmt-9", "Status": "STARTED"},
                                         "error": {"Error": "LoadTimeout", "Cause": "cancelled after 30 min"}})
        stubber.assert_no_pending_responses()
    assert (output["status"], output["total_loaded_rows"]) == ("FAILED", 10)
    assert output["assets"]["warehouse_table"]["rows_inserted"] == 10
    assert [e["kind"] for e in output["errors"]] == ["step_failed"]
