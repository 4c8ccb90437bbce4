"""aws mode against moto: materializing a batch partition starts and waits for a Step Functions
execution and reports what its output says; a failed execution fails the run with error and cause."""
from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from dagster import DagsterInstance, materialize

from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR, load_contract
from etl_observer_dagster.assets import build_batch_assets
from etl_observer_dagster.resources import AWSPipelineResource
from infra_scripts.demo_aws import stand_in_definition
from tests.conftest import REPO, moto_execute_mode

CONTRACT = load_contract(BUNDLED_CONTRACTS_DIR / "employees.yaml")


@pytest.fixture
def pipeline(aws_env, request):
    moto_execute_mode(aws_env, True)  # aws_env turns it off again
    suffix = abs(hash(request.node.nodeid)) % 10**8
    s3, sfn = boto3.client("s3"), boto3.client("stepfunctions")
    for bucket in (f"landing-{suffix}", f"staging-{suffix}"):
        s3.create_bucket(Bucket=bucket)
    arn = sfn.create_state_machine(name=f"ingest-{suffix}", definition=json.dumps(stand_in_definition()),
                                   roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    return AWSPipelineResource(landing_bucket=f"landing-{suffix}", staging_bucket=f"staging-{suffix}",
                               evidence_bucket=f"staging-{suffix}", state_machine_arn=arn, poll_seconds=0.05)


def backfill(pipeline, batch_id, files=None, original=True):
    """What a UI backfill of one partition does in aws mode (the original execution started by AWS)."""
    sfn = boto3.client("stepfunctions")
    if original:
        sfn.start_execution(stateMachineArn=pipeline.state_machine_arn, name=batch_id,
                            input=json.dumps({"batch_id": batch_id, "dataset": "employees", "files": files}))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("employees_batches", [batch_id])
    return materialize([build_batch_assets(CONTRACT)], partition_key=batch_id, instance=instance,
                       resources={"pipeline": pipeline}, raise_on_error=False), sfn


def test_backfill_reruns_the_partition_through_step_functions(pipeline):
    boto3.client("s3").put_object(Bucket=pipeline.landing_bucket, Key="employees/a.csv",
                                  Body=(REPO / "samples" / "employees.csv").read_bytes())
    result, sfn = backfill(pipeline, "s3-batch1", ["employees/a.csv"])
    assert result.success
    names = sorted(e["name"] for e in sfn.list_executions(stateMachineArn=pipeline.state_machine_arn)["executions"])
    assert names[0] == "s3-batch1" and names[1].startswith("s3-batch1--dg-")  # the sensor skips the second
    mats = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    assert [m.asset_key.to_user_string() for m in mats] == [
        "employees/landing_csv", "employees/staging_parquet", "employees/warehouse_table", "employees/evidence_report"]
    table = mats[2].metadata
    assert (table["dagster/row_count"].value, table["rows_inserted"].value) == (10, 10)
    assert table["execution_arn"].value.endswith(f":{names[1]}")
    assert table["console_url"].value.startswith("https://us-east-1.console.aws.amazon.com/states/home")


def test_a_failed_execution_fails_the_run_with_its_error_and_cause(pipeline):
    result, _ = backfill(pipeline, "s3-bad1", ["employees/bad.csv"])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.event_specific_data.error
    assert "batch s3-bad1 of employees FAILED" in error.message
    metadata = failure.event_specific_data.user_failure_data.metadata
    assert metadata["error"].value == "GlueJobRunFailed"
    assert "line 3, column salary" in metadata["cause"].value
    assert result.get_asset_materialization_events()[0].asset_key.to_user_string() == "employees/landing_csv"
    assert len(result.get_asset_materialization_events()) == 1  # nothing that did not complete


def test_a_partition_nobody_started_is_a_clear_failure(pipeline):
    result, _ = backfill(pipeline, "never-started", original=False)
    assert not result.success
    message = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error.message
    assert "batch 'never-started' of employees has no files" in message


def test_dagster_execution_names_fit_80_characters_and_keep_the_marker():
    from etl_observer_dagster.aws_events import dagster_execution_name, started_by_dagster

    assert dagster_execution_name("s3-batch1", "abcdef0123456789") == "s3-batch1--dg-abcdef01"
    long_a, long_b = "a" * 120 + "1", "a" * 120 + "2"
    name_a, name_b = dagster_execution_name(long_a, "r" * 36), dagster_execution_name(long_b, "r" * 36)
    assert len(name_a) == 80 and name_a != name_b
    assert started_by_dagster(name_a) and not started_by_dagster(long_a)


def test_checks_requested_after_an_execution_run_against_s3_and_redshift(pipeline, tmp_path, monkeypatch):
    """The checks-only run the Step Functions sensor requests: manifests from the staging bucket,
    row counts and key uniqueness from Redshift over redshift-connector (its driver edge replaced by
    one that runs the same SQL on DuckDB, where the batch was loaded by the same load SQL)."""
    import duckdb

    from aws_handlers.core.pipeline import load_files_from_manifests, read_batch_manifests
    from aws_handlers.glue.csv_to_parquet import run as run_glue
    from aws_handlers.warehouse import DuckDBWarehouse
    from aws_handlers.warehouse.redshift_iam import RedshiftConnectorWarehouse
    from etl_observer_dagster.assets import check_keys
    from tests.aws_handlers.warehouse.test_redshift_iam import DuckDBConnection

    s3 = boto3.client("s3")
    s3.put_object(Bucket=pipeline.landing_bucket, Key="employees/a.csv", Body=(REPO / "samples" / "employees.csv").read_bytes())
    run_glue({"batch_id": "s3-c1", "dataset": "employees", "source_key": "employees/a.csv",
              "landing_bucket": pipeline.landing_bucket, "staging_bucket": pipeline.staging_bucket}, s3_client=s3)
    manifests = read_batch_manifests(pipeline.stores().staging, "employees", "s3-c1")
    local_parquet = tmp_path / "a.parquet"
    local_parquet.write_bytes(s3.get_object(Bucket=pipeline.staging_bucket, Key="employees/batch_id=s3-c1/a.parquet")["Body"].read())
    files = [dataclasses.replace(f, parquet_uri=str(local_parquet)) for f in load_files_from_manifests(manifests)]
    DuckDBWarehouse(tmp_path / "redshift.duckdb").load_batch(CONTRACT, "s3-c1", files, "2026-12-03 00:00:00")
    monkeypatch.setattr(AWSPipelineResource, "warehouse", lambda self: RedshiftConnectorWarehouse(
        "etl-wg", "dev", connect=lambda **kw: DuckDBConnection(duckdb.connect(str(tmp_path / "redshift.duckdb")))))

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("employees_batches", ["s3-c1"])
    from dagster import Definitions, define_asset_job

    defs = Definitions(assets=[build_batch_assets(CONTRACT)], resources={"pipeline": pipeline},
                       jobs=[define_asset_job("employees_batch", selection="*")])
    job = defs.resolve_job_def("employees_batch").get_subset(asset_selection=set(),
                                                              asset_check_selection=set(check_keys("employees")))
    result = job.execute_in_process(instance=instance, partition_key="s3-c1")
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks == {"contract_conformance": True, "row_reconciliation": True, "primary_key_unique": True}


def test_a_failed_execution_only_uses_a_report_its_own_run_wrote(tmp_path):
    from aws_handlers.core.evidence import write_report
    from aws_handlers.storage import LocalStore
    from etl_observer_dagster.aws_events import output_of

    store = LocalStore(tmp_path)
    write_report(store, {"dataset": "employees", "batch_id": "b1", "runtime": {"execution_arn": "arn:x:backfill"},
                         "contract": {"table": "public.employees"}, "inputs": [], "outputs": [], "errors": [],
                         "summary": {"status": "FAILED", "batch_id": "b1", "successful_conversions": 0}})
    facts = {"output": None, "input": {"dataset": "employees", "batch_id": "b1"}, "execution_arn": "arn:x:original"}
    assert output_of(facts, store) is None
    assert output_of({**facts, "execution_arn": "arn:x:backfill"}, store)["status"] == "FAILED"
