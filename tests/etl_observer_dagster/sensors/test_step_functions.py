"""The Step Functions sensor against a moto server that really executes the state machine
(execute_state_machine): every finished execution recorded exactly once across ticks and
restarts (1,050 executions, identical start dates, executions still running), Dagster's own
executions skipped, throttling never skipping anything (botocore Stubber)."""
from __future__ import annotations

import json
import time

import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from dagster import (AssetKey, AssetMaterialization, AssetObservation, DagsterInstance, Definitions,
                     build_sensor_context, define_asset_job, instance_for_test)

import etl_observer_dagster.sensors.step_functions as sfn_sensor
from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR, load_contract
from tests.conftest import moto_execute_mode
from etl_observer_dagster.assets import build_batch_assets, check_keys, job_name
from etl_observer_dagster.aws_events import dagster_execution_name
from etl_observer_dagster.resources import AWSPipelineResource
from etl_observer_dagster.sensors.step_functions import build_step_functions_sensor

CONTRACT = load_contract(BUNDLED_CONTRACTS_DIR / "employees.yaml")
BATCH_ASSETS = build_batch_assets(CONTRACT)
JOBS = [define_asset_job(job_name("employees"), selection=[BATCH_ASSETS])]
KEY = {name: AssetKey(["employees", name]) for name in ("staging_parquet", "warehouse_table", "evidence_report")}


def definition(evidence_bucket: str) -> dict:
    """A Choice on $.fail: a Fail state with Error/Cause, or (after an optional Wait of $.wait
    seconds) a Pass state producing the execution output documented in docs/aws-runtime.md."""
    def uri(name):
        return f"States.Format('s3://{evidence_bucket}/evidence/{{}}/{{}}/{name}', $.dataset, $.batch_id)"

    return {
        "StartAt": "Route",
        "States": {
            "Route": {"Type": "Choice", "Default": "WriteEvidence", "Choices": [
                {"Variable": "$.fail", "BooleanEquals": True, "Next": "ConversionFailed"},
                {"Variable": "$.wait", "NumericGreaterThan": 0, "Next": "LoadBatch"}]},
            "LoadBatch": {"Type": "Wait", "SecondsPath": "$.wait", "Next": "WriteEvidence"},
            "ConversionFailed": {"Type": "Fail", "Error": "GlueJobRunFailed",
                                 "Cause": "bad.csv line 3, column salary: \"12,5O0\" is not a decimal(12,2)"},
            "WriteEvidence": {"Type": "Pass", "End": True, "Parameters": {
                "status": "SUCCEEDED", "total_loaded_rows": 10, "successful_conversions": 1, "successful_loads": 1,
                "failure_count": 0, "batch_id.$": "$.batch_id", "dataset.$": "$.dataset",
                "evidence_uri.$": uri("report.json"), "code_version": "0.1.0+gtest",
                "assets": {
                    "staging_parquet": {"rows": 10, "files": [{
                        "source_key.$": "$.files[0]", "source_sha256": "a" * 64, "parquet_uri": "s3://staging/a.parquet",
                        "parquet_sha256": "b" * 64, "rows": 10, "manifest_uri": "s3://staging/a.manifest.json"}]},
                    "warehouse_table": {"table": "public.employees", "rows_inserted": 10, "table_rows_after": 10,
                                        "duplicates": []},
                    "evidence_report": {"uri.$": uri("report.json"), "html_uri.$": uri("report.html"),
                                        "sha256": "c" * 64, "sequence": 1}},
                "errors": []}},
        },
    }


class Aws:
    def __init__(self, pipeline: AWSPipelineResource):
        self.pipeline = pipeline
        self.sfn = boto3.client("stepfunctions")
        self.s3 = boto3.client("s3")

    def start(self, name, *, fail=False, wait=0, dataset="employees", batch_id=None, output=None):
        document = {"batch_id": batch_id or name, "dataset": dataset, "files": [f"{dataset}/{name}.csv"], "fail": fail,
                    "wait": wait}
        if output is not None:
            document["output"] = output
        return self.sfn.start_execution(stateMachineArn=self.pipeline.state_machine_arn, name=name,
                                        input=json.dumps(document))["executionArn"]

    def wait_until_finished(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while self.sfn.list_executions(stateMachineArn=self.pipeline.state_machine_arn, statusFilter="RUNNING",
                                       maxResults=1)["executions"]:
            assert time.monotonic() < deadline, "executions still RUNNING"
            time.sleep(0.1)

    def describe(self, arn):
        return self.sfn.describe_execution(executionArn=arn)

    def set_start_date(self, names, when: datetime):
        """moto backend surgery (the server runs in this process): executions sharing one startDate."""
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        machine = stepfunctions_parser_backends["123456789012"]["us-east-1"].describe_state_machine(
            self.pipeline.state_machine_arn)
        found = [e for e in machine.executions if e.name in set(names)]
        assert len(found) == len(names)
        for execution in found:
            execution.start_date = when


def lean_definition() -> dict:
    """For bulk tests (moto parses the definition at every StartExecution: ~7 ms for this one,
    ~40 ms for the one above): a Pass state returning the output the input carries."""
    return {"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "OutputPath": "$.output", "End": True}}}


def documented_output(evidence_bucket: str, dataset: str, batch_id: str) -> dict:
    report = f"s3://{evidence_bucket}/evidence/{dataset}/{batch_id}/report"
    return {"status": "SUCCEEDED", "total_loaded_rows": 10, "successful_conversions": 1, "successful_loads": 1,
            "failure_count": 0, "batch_id": batch_id, "dataset": dataset, "evidence_uri": f"{report}.json",
            "code_version": "0.1.0+gtest", "errors": [], "assets": {
                "staging_parquet": {"rows": 10, "files": []},
                "warehouse_table": {"table": "public.employees", "rows_inserted": 10, "table_rows_after": 10,
                                    "duplicates": []},
                "evidence_report": {"uri": f"{report}.json", "html_uri": f"{report}.html", "sha256": "", "sequence": 1}}}


def make_aws(endpoint: str, machine: dict | None = None) -> Aws:
    moto_execute_mode(endpoint, True)  # the aws_env fixture turns it off again
    suffix = uuid.uuid4().hex[:10]
    s3, sfn = boto3.client("s3"), boto3.client("stepfunctions")
    buckets = {"landing_bucket": f"landing-{suffix}", "staging_bucket": f"staging-{suffix}",
               "evidence_bucket": f"evidence-{suffix}"}
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    arn = sfn.create_state_machine(name=f"ingest-{suffix}",
                                   definition=json.dumps(machine or definition(buckets["evidence_bucket"])),
                                   roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    return Aws(AWSPipelineResource(**buckets, state_machine_arn=arn, region="us-east-1", redshift_workgroup="etl-wg"))


@pytest.fixture
def aws(aws_env):
    return make_aws(aws_env)


@pytest.fixture
def lean_aws(aws_env):
    return make_aws(aws_env, lean_definition())


@pytest.fixture
def api_calls(monkeypatch):
    """Every Step Functions call the sensor makes (operation, parameters); `on_call` sees each first."""
    class Calls(list):
        on_call = None

    calls = Calls()
    original = AWSPipelineResource.client

    def client(self, service):
        real = original(self, service)
        if service != "stepfunctions":
            return real

        class Recording:
            def __getattr__(self, name):
                attr = getattr(real, name)
                if not callable(attr) or name.startswith("_"):
                    return attr

                def call(**kwargs):
                    if calls.on_call:
                        calls.on_call(name, kwargs)
                    calls.append((name, kwargs))
                    return attr(**kwargs)
                return call
        return Recording()

    monkeypatch.setattr(AWSPipelineResource, "client", client)
    return calls


def tick(sensor, cursor, pipeline, instance=None):
    """One evaluation with a fresh context (a restarted sensor only has its serialized cursor)."""
    with (instance or DagsterInstance.ephemeral()) as dagster_instance:
        return sensor(build_sensor_context(instance=dagster_instance, cursor=cursor, resources={"pipeline": pipeline}))


def sensor_for_tests(**kwargs):
    return build_step_functions_sensor(["employees"], JOBS, settle_seconds=0, **kwargs)


def events_of(result):
    return list(result.asset_events or [])


def arn_of(event):
    return event.metadata["execution_arn"].value


def recorded_arns(result):
    return [arn_of(e) for e in events_of(result) if e.asset_key == KEY["evidence_report"]
            or isinstance(e, AssetObservation)]


def cursor_of(result):
    return json.loads(result.cursor)


def iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def failure_report(batch_id: str) -> dict:
    """What write_evidence leaves behind for a batch whose conversion failed (no output)."""
    return {"dataset": "employees", "code_version": "0.1.0+gtest", "chain": {"sequence": 2},
            "summary": {"status": "FAILED", "total_loaded_rows": 0, "successful_conversions": 0, "successful_loads": 0,
                        "failure_count": 1, "batch_id": batch_id},
            "inputs": [{"key": "employees/bad.csv", "sha256": "d" * 64}], "outputs": [],
            "errors": [{"file": "employees/bad.csv", "line": 3, "column": "salary", "message": "not a decimal(12,2)",
                        "kind": "conversion"}]}


# --- (1) success and failures -----------------------------------------------------------------

def test_success_and_failures_are_recorded_upstream_first_with_checks_requested(aws):
    ok = aws.start("b-ok")
    failed = aws.start("b-failed", fail=True)
    aws.s3.put_object(Bucket=aws.pipeline.evidence_bucket, Key="evidence/employees/b-failed/report.json",
                      Body=json.dumps(failure_report("b-failed")).encode())
    bare = aws.start("b-failed-bare", fail=True)  # failed before any evidence was written
    aws.wait_until_finished()
    sensor = sensor_for_tests()
    result = tick(sensor, None, aws.pipeline)

    events = events_of(result)
    assert [(type(e).__name__, e.asset_key.path[-1], e.partition) for e in events] == [
        ("AssetMaterialization", "staging_parquet", "b-ok"),
        ("AssetMaterialization", "warehouse_table", "b-ok"),
        ("AssetMaterialization", "evidence_report", "b-ok"),
        ("AssetMaterialization", "evidence_report", "b-failed"),
        ("AssetObservation", "staging_parquet", "b-failed"),
        ("AssetCheckEvaluation", "staging_parquet", "b-failed"),
        ("AssetObservation", "staging_parquet", "b-failed-bare"),
        ("AssetCheckEvaluation", "staging_parquet", "b-failed-bare"),
    ]
    staging, table, evidence = events[:3]
    assert {arn_of(e) for e in events[:3]} == {ok}
    assert table.metadata["console_url"].value == aws.pipeline.console_url(ok)
    assert table.metadata["execution_status"].value == "SUCCEEDED"
    assert (table.metadata["dagster/row_count"].value, table.metadata["rows_inserted"].value) == (10, 10)
    assert staging.metadata["dagster/row_count"].value == 10
    assert evidence.metadata["status"].value == "SUCCEEDED"
    assert evidence.metadata["report_json"].value == f"s3://{aws.pipeline.evidence_bucket}/evidence/employees/b-ok/report.json"

    report, observation, failed_check, bare_observation, bare_check = events[3:]
    for check in (failed_check, bare_check):  # shown in red on the asset that the execution did not produce
        assert (check.check_name, check.passed, check.metadata["error"].value) == (
            "contract_conformance", False, "GlueJobRunFailed")
    assert arn_of(report) == arn_of(observation) == failed and arn_of(bare_observation) == bare
    assert report.metadata["status"].value == "FAILED"
    for obs in (observation, bare_observation):
        assert obs.metadata["error"].value == "GlueJobRunFailed"
        assert "line 3, column salary" in obs.metadata["cause"].value
        assert obs.metadata["execution_status"].value == "FAILED"
    assert observation.metadata["errors"].value[0]["message"] == "not a decimal(12,2)"

    (partitions,) = result.dynamic_partitions_requests
    assert (partitions.partitions_def_name, list(partitions.partition_keys)) == (
        "employees_batches", ["b-ok", "b-failed", "b-failed-bare"])
    (checks,) = result.run_requests  # only the execution that materialized the table
    assert (checks.job_name, checks.partition_key, list(checks.asset_selection)) == ("employees_batch", "b-ok", [])
    assert list(checks.asset_check_keys) == check_keys("employees")
    assert checks.run_key == f"checks:{ok}"
    assert checks.tags["etl_observer/source"] == "step_functions_sensor"

    newest = aws.describe(bare)["startDate"]
    assert cursor_of(result) == {"high_water": iso(newest), "at_high_water": ["b-failed-bare"], "running": []}
    again = tick(sensor, result.cursor, aws.pipeline)
    assert events_of(again) == [] and not again.run_requests and cursor_of(again) == cursor_of(result)


def test_a_real_instance_stores_the_partition_and_its_materializations(aws):
    """The tick as the sensor daemon applies it: evaluate_tick (which resolves the checks run
    request against the partition added by the same result), then the partitions and the events.
    A persistent instance: resolving a dynamic partition needs an instance ref (ephemeral has none)."""
    ok = aws.start("b-real")
    aws.wait_until_finished()
    sensor = sensor_for_tests()
    defs = Definitions(assets=[BATCH_ASSETS], jobs=JOBS, sensors=[sensor], resources={"pipeline": aws.pipeline})
    with instance_for_test() as instance:
        def evaluate(cursor):
            return sensor.evaluate_tick(build_sensor_context(
                instance=instance, instance_ref=instance.get_ref(), cursor=cursor, definitions=defs,
                resources={"pipeline": aws.pipeline}))

        data = evaluate(None)
        (request,) = data.run_requests  # resolved: partition b-real exists thanks to the same result
        assert request.partition_key == "b-real" and request.tags["dagster/partition"] == "b-real"
        assert request.run_key == f"checks:{ok}" and list(request.asset_selection) == []
        assert instance.get_dynamic_partitions("employees_batches") == []
        for partitions in data.dynamic_partitions_requests:
            instance.add_dynamic_partitions(partitions.partitions_def_name, list(partitions.partition_keys))
        for event in data.asset_events:
            instance.report_runless_asset_event(event)

        assert instance.get_dynamic_partitions("employees_batches") == ["b-real"]
        latest = {name: instance.get_latest_materialization_event(KEY[name]) for name in KEY}
        for event in latest.values():
            assert event.asset_materialization.partition == "b-real"
            assert event.asset_materialization.metadata["execution_arn"].value == ok
        storage_ids = [instance.fetch_materializations(KEY[name], limit=5).records[0].storage_id
                       for name in ("staging_parquet", "warehouse_table", "evidence_report")]
        assert storage_ids == sorted(storage_ids)  # upstream recorded first
        assert instance.get_materialized_partitions(KEY["warehouse_table"]) == {"b-real"}
        again = evaluate(data.cursor)  # the restarted sensor finds nothing new
        assert not again.asset_events and not again.run_requests and again.cursor == data.cursor


# --- (2) 1,050 executions over many ticks, restarted between ticks, with pagination ------------

def test_every_one_of_1050_executions_recorded_exactly_once_over_restarted_ticks(lean_aws, api_calls):
    aws = lean_aws
    names = [f"bulk-{i:04d}" for i in range(1050)]
    arns = [aws.start(n, output=documented_output(aws.pipeline.evidence_bucket, "employees", n)) for n in names]
    aws.wait_until_finished(timeout=60)
    sensor = sensor_for_tests(max_executions_per_tick=200, max_pages_per_tick=4)  # moto pages: 100
    per_asset: dict[str, Counter] = {name: Counter() for name in KEY}
    run_keys, batches, cursor, ticks, resumed = Counter(), Counter(), None, 0, 0
    while True:
        api_calls.clear()
        result = tick(sensor, cursor, aws.pipeline)
        lists = [kw for op, kw in api_calls if op == "list_executions"]
        describes = [kw for op, kw in api_calls if op == "describe_execution"]
        assert len(lists) <= 4 and len(describes) <= 200
        assert all(kw["maxResults"] == 100 for kw in lists)
        cursor, ticks = result.cursor, ticks + 1
        resumed += bool(cursor_of(result).get("resume"))
        if not events_of(result) and not cursor_of(result).get("resume"):
            break
        for event in events_of(result):
            assert isinstance(event, AssetMaterialization)
            per_asset[event.asset_key.path[-1]][arn_of(event)] += 1
        run_keys.update(r.run_key for r in result.run_requests)
        for request in result.dynamic_partitions_requests or []:
            batches.update(request.partition_keys)
        assert ticks < 30
    for name in KEY:
        assert set(per_asset[name]) == set(arns) and set(per_asset[name].values()) == {1}, name
    assert set(run_keys) == {f"checks:{a}" for a in arns} and set(run_keys.values()) == {1}
    assert set(batches) == set(names) and set(batches.values()) == {1}
    assert ticks >= 7 and resumed >= 3  # limited ticks, walks cut short and resumed from a token
    final = cursor_of(result)
    assert final["running"] == [] and "resume" not in final


def test_pagination_walks_small_pages_to_the_high_water_mark(aws, api_calls):
    arns = [aws.start(f"page-{i}") for i in range(7)]
    aws.wait_until_finished()
    sensor = sensor_for_tests(page_size=3)
    result = tick(sensor, None, aws.pipeline)
    lists = [kw for op, kw in api_calls if op == "list_executions"]
    assert len(lists) == 3 and [("nextToken" in kw) for kw in lists] == [False, True, True]
    assert recorded_arns(result) == arns  # oldest first
    aws.start("page-7")
    aws.wait_until_finished()
    api_calls.clear()
    again = tick(sensor, result.cursor, aws.pipeline)
    assert [r.partition_key for r in again.run_requests] == ["page-7"]
    assert len([1 for op, _ in api_calls if op == "list_executions"]) == 1  # stops at the high-water mark


# --- (3) identical start dates -----------------------------------------------------------------

def test_executions_sharing_a_start_date_are_neither_missed_nor_repeated(aws):
    first = [f"same-{c}" for c in "abcde"]
    arns = {n: aws.start(n) for n in first}
    aws.wait_until_finished()
    shared = aws.describe(arns["same-a"])["startDate"].replace(microsecond=0) - timedelta(seconds=5)
    aws.set_start_date(first, shared)
    sensor = sensor_for_tests(max_executions_per_tick=2, page_size=2)

    def partitions(result):
        return [r.partition_key for r in result.run_requests]

    one = tick(sensor, None, aws.pipeline)
    assert partitions(one) == ["same-a", "same-b"]
    assert cursor_of(one) == {"high_water": iso(shared), "at_high_water": ["same-a", "same-b"], "running": []}
    two = tick(sensor, one.cursor, aws.pipeline)
    assert partitions(two) == ["same-c", "same-d"]
    assert cursor_of(two)["at_high_water"] == ["same-a", "same-b", "same-c", "same-d"]
    # two more show up with that same start date (one sorting before the others), and a newer one
    late = ["same-0", "same-f"]
    arns.update({n: aws.start(n) for n in late})
    aws.wait_until_finished()
    aws.set_start_date(late, shared)
    arns["newer"] = aws.start("newer")
    aws.wait_until_finished()
    three = tick(sensor, two.cursor, aws.pipeline)
    assert partitions(three) == ["same-0", "same-e"]
    assert cursor_of(three)["at_high_water"] == ["same-0", "same-a", "same-b", "same-c", "same-d", "same-e"]
    four = tick(sensor, three.cursor, aws.pipeline)
    assert partitions(four) == ["same-f", "newer"]
    assert cursor_of(four) == {"high_water": iso(aws.describe(arns["newer"])["startDate"]), "at_high_water": ["newer"],
                               "running": []}
    five = tick(sensor, four.cursor, aws.pipeline)
    assert events_of(five) == [] and cursor_of(five) == cursor_of(four)


# --- (4) a RUNNING execution is recorded once it finishes ------------------------------------------

def test_a_running_execution_is_recorded_when_it_finishes_after_a_restart(aws):
    slow = aws.start("slow", wait=3)  # a Wait state of 3 s: moto runs it in real time
    quick = aws.start("quick")
    deadline = time.monotonic() + 5
    while aws.describe(quick)["status"] == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sensor = sensor_for_tests()
    first = tick(sensor, None, aws.pipeline)
    assert aws.describe(slow)["status"] == "RUNNING"
    assert recorded_arns(first) == [quick]
    assert cursor_of(first) == {"high_water": iso(aws.describe(quick)["startDate"]), "at_high_water": ["quick"],
                                "running": [slow]}
    still = tick(sensor, first.cursor, aws.pipeline)
    assert events_of(still) == [] and cursor_of(still)["running"] == [slow]
    aws.wait_until_finished()  # meanwhile the sensor is stopped; only its cursor remains
    second = tick(sensor, still.cursor, aws.pipeline)
    assert recorded_arns(second) == [slow] and [r.partition_key for r in second.run_requests] == ["slow"]
    assert cursor_of(second)["running"] == [] and cursor_of(second)["high_water"] == cursor_of(first)["high_water"]
    assert events_of(tick(sensor, second.cursor, aws.pipeline)) == []


# --- (5) executions Dagster started, and datasets without a contract -------------------------------

def test_dagster_started_and_unknown_dataset_executions_are_skipped_but_passed(aws, api_calls):
    dagster_run = aws.start(dagster_execution_name("b-dg", "0123456789abcdef"), batch_id="b-dg")
    other = aws.start("visits-1", dataset="visits")
    ours = aws.start("b-aws")
    last = aws.start(dagster_execution_name("b-dg2", "fedcba9876543210"), batch_id="b-dg2")
    aws.wait_until_finished()
    sensor = sensor_for_tests()
    result = tick(sensor, None, aws.pipeline)
    assert recorded_arns(result) == [ours]
    described = [kw["executionArn"] for op, kw in api_calls if op == "describe_execution"]
    assert dagster_run not in described and last not in described and other in described
    assert cursor_of(result) == {"high_water": iso(aws.describe(last)["startDate"]),
                                 "at_high_water": [dagster_execution_name("b-dg2", "fedcba9876543210")], "running": []}
    again = tick(sensor, result.cursor, aws.pipeline)
    assert events_of(again) == [] and again.skip_reason is not None


# --- (6) throttling: the tick fails or retries, nothing is skipped ---------------------------------

ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:ingest"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)


def listed(name, start):
    return {"executionArn": ARN.replace(":stateMachine:", ":execution:") + f":{name}", "stateMachineArn": ARN,
            "name": name, "status": "SUCCEEDED", "startDate": start, "stopDate": start + timedelta(seconds=30)}


def described(name, start):
    output = {"status": "SUCCEEDED", "total_loaded_rows": 1, "successful_conversions": 1, "successful_loads": 1,
              "failure_count": 0, "batch_id": name, "dataset": "employees", "evidence_uri": "s3://e/r.json",
              "code_version": "x", "errors": [], "assets": {
                  "warehouse_table": {"table": "public.employees", "rows_inserted": 1, "table_rows_after": 1, "duplicates": []},
                  "evidence_report": {"uri": "s3://e/r.json", "html_uri": "s3://e/r.html", "sha256": "", "sequence": 1}}}
    return {**listed(name, start), "input": json.dumps({"batch_id": name, "dataset": "employees", "files": []}),
            "output": json.dumps(output)}


@pytest.fixture
def stubbed(aws_env, monkeypatch):
    monkeypatch.setattr(sfn_sensor, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    client = boto3.client("stepfunctions", region_name="us-east-1")
    stub = Stubber(client)
    original = AWSPipelineResource.client
    monkeypatch.setattr(AWSPipelineResource, "client",
                        lambda self, service: client if service == "stepfunctions" else original(self, service))
    pipeline = AWSPipelineResource(landing_bucket="l", staging_bucket="s", evidence_bucket="e", state_machine_arn=ARN,
                                   region="us-east-1", redshift_workgroup="etl-wg")
    with stub:
        yield stub, pipeline
        stub.assert_no_pending_responses()


def throttle(stub, operation, times, code="ThrottlingException", status=400):
    for _ in range(times):
        stub.add_client_error(operation, service_error_code=code, service_message="Rate exceeded", http_status_code=status)


def test_throttled_listing_fails_the_tick_then_nothing_is_skipped(stubbed):
    stub, pipeline = stubbed
    one, two = T0, T0 + timedelta(seconds=1)
    previous = json.dumps({"high_water": (T0 - timedelta(minutes=1)).isoformat(), "at_high_water": ["old"], "running": []})
    sensor = sensor_for_tests()
    throttle(stub, "list_executions", 4)  # 1 try + 3 retries
    with pytest.raises(ClientError, match="ThrottlingException"):
        tick(sensor, previous, pipeline)
    # the next tick starts again from the same cursor; retries absorb a transient error
    throttle(stub, "list_executions", 1, code="ServiceUnavailable", status=503)
    stub.add_response("list_executions", {"executions": [listed("b2", two), listed("b1", one)]},
                      {"stateMachineArn": ARN, "maxResults": 100})
    throttle(stub, "describe_execution", 2)
    stub.add_response("describe_execution", described("b1", one), {"executionArn": listed("b1", one)["executionArn"]})
    stub.add_response("describe_execution", described("b2", two), {"executionArn": listed("b2", two)["executionArn"]})
    result = tick(sensor, previous, pipeline)
    assert [r.partition_key for r in result.run_requests] == ["b1", "b2"]
    assert cursor_of(result) == {"high_water": two.isoformat(), "at_high_water": ["b2"], "running": []}


def test_throttled_describe_midway_records_nothing_and_the_retry_records_both(stubbed):
    stub, pipeline = stubbed
    one, two = T0, T0 + timedelta(seconds=1)
    executions = {"executions": [listed("b2", two), listed("b1", one)]}
    sensor = sensor_for_tests()
    stub.add_response("list_executions", executions, {"stateMachineArn": ARN, "maxResults": ANY})
    stub.add_response("describe_execution", described("b1", one), {"executionArn": ANY})
    throttle(stub, "describe_execution", 4)
    with pytest.raises(ClientError, match="ThrottlingException"):
        tick(sensor, None, pipeline)  # b1 was described, but the failed tick returns (and moves) nothing
    stub.add_response("list_executions", executions, {"stateMachineArn": ARN, "maxResults": ANY})
    stub.add_response("describe_execution", described("b1", one), {"executionArn": ANY})
    stub.add_response("describe_execution", described("b2", two), {"executionArn": ANY})
    result = tick(sensor, None, pipeline)
    assert [r.partition_key for r in result.run_requests] == ["b1", "b2"]
    assert [e.asset_key.path[-1] for e in events_of(result)] == ["warehouse_table", "evidence_report"] * 2


def test_an_expired_resume_token_restarts_the_walk_from_the_newest(stubbed):
    stub, pipeline = stubbed
    cursor = json.dumps({"high_water": None, "at_high_water": [], "running": [], "resume": ["stale"]})
    stub.add_client_error("list_executions", service_error_code="InvalidToken", http_status_code=400,
                          expected_params={"stateMachineArn": ARN, "maxResults": 100, "nextToken": "stale"})
    stub.add_response("list_executions", {"executions": [listed("b1", T0)]}, {"stateMachineArn": ARN, "maxResults": 100})
    stub.add_response("describe_execution", described("b1", T0), {"executionArn": ANY})
    result = tick(sensor_for_tests(), cursor, pipeline)
    assert [r.partition_key for r in result.run_requests] == ["b1"] and "resume" not in cursor_of(result)


# --- the production wiring, ticked by Dagster's own sensor daemon ------------------------------------

def test_the_sensor_daemon_ticks_the_aws_code_location(aws, home, monkeypatch, tmp_path):
    """definitions.py in aws mode, loaded as a code location; one real sensor-daemon iteration:
    partition added, materializations stored on it, the checks run submitted, the cursor saved."""
    import logging

    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget, create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._daemon.sensor import execute_sensor_iteration

    from etl_observer_dagster.definitions import AWS_SETTINGS

    monkeypatch.setattr(sfn_sensor, "SETTLE_SECONDS", 0.0)
    monkeypatch.setenv("ETL_OBSERVER_ENV", "aws")
    for name, variable in AWS_SETTINGS.items():
        if getattr(aws.pipeline, name):
            monkeypatch.setenv(variable, str(getattr(aws.pipeline, name)))
    location = tmp_path / "aws_location.py"
    location.write_text("from etl_observer_dagster.definitions import build_definitions\n\ndefs = build_definitions()\n")
    ok = aws.start("b-daemon")
    aws.wait_until_finished()
    launcher = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}  # record runs, run nothing
    with instance_for_test(overrides={"run_launcher": launcher}) as instance:
        origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=str(location), attribute="defs"))
        with create_test_daemon_workspace_context(InProcessTestWorkspaceLoadTarget(origin), instance) as workspace:
            list(execute_sensor_iteration(workspace, logging.getLogger("sensor-daemon-test"), None, None))

        assert instance.get_dynamic_partitions("employees_batches") == ["b-daemon"]
        for key in KEY.values():
            materialization = instance.get_latest_materialization_event(key).asset_materialization
            assert (materialization.partition, materialization.metadata["execution_arn"].value) == ("b-daemon", ok)
        (run,) = instance.get_runs()
        assert (run.job_name, run.tags["dagster/partition"], run.tags["etl_observer/source"]) == (
            "employees_batch", "b-daemon", "step_functions_sensor")
        assert run.asset_selection == frozenset() and run.asset_check_selection == frozenset(check_keys("employees"))
        (state,) = [s for s in instance.all_instigator_state() if s.name == "step_functions_sensor"]
        saved = json.loads(state.instigator_data.cursor)
        assert saved["high_water"] == iso(aws.describe(ok)["startDate"]) and saved["at_high_water"] == ["b-daemon"]


# --- limits: settle time, time budget --------------------------------------------------------------

def test_executions_younger_than_the_settle_time_wait_for_a_later_tick(aws):
    """ListExecutions is eventually consistent: the high-water mark only passes executions old
    enough (by the service's Date header) that an older one cannot still show up below it."""
    old, fresh = aws.start("b-old"), aws.start("b-fresh")
    aws.wait_until_finished()
    aws.set_start_date(["b-old"], datetime.now(timezone.utc) - timedelta(minutes=5))
    patient = build_step_functions_sensor(["employees"], JOBS, settle_seconds=60)
    first = tick(patient, None, aws.pipeline)
    assert recorded_arns(first) == [old] and cursor_of(first)["at_high_water"] == ["b-old"]
    assert recorded_arns(tick(patient, first.cursor, aws.pipeline)) == []
    assert recorded_arns(tick(sensor_for_tests(), first.cursor, aws.pipeline)) == [fresh]


def test_a_tick_out_of_time_stops_midway_and_the_next_one_resumes(lean_aws, api_calls, monkeypatch):
    """A fake clock that moves 1 s per DescribeExecution: a 3.5 s budget describes 4 executions."""
    import types

    clock = {"now": 0.0}
    monkeypatch.setattr(sfn_sensor, "time", types.SimpleNamespace(monotonic=lambda: clock["now"], sleep=time.sleep))
    aws = lean_aws
    arns = [aws.start(f"t-{i}", output=documented_output(aws.pipeline.evidence_bucket, "employees", f"t-{i}"))
            for i in range(10)]
    aws.wait_until_finished()

    def advance(operation, _):
        clock["now"] += 1.0 if operation == "describe_execution" else 0.0

    api_calls.on_call = advance
    sensor = sensor_for_tests(time_budget_seconds=3.5)
    cursor, seen = None, []
    for expected in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9], []):
        clock["now"] = 0.0
        result = tick(sensor, cursor, aws.pipeline)
        assert recorded_arns(result) == [arns[i] for i in expected]
        seen += recorded_arns(result)
        cursor = result.cursor
    assert seen == arns


def test_no_checks_are_requested_without_a_redshift_workgroup(aws):
    """The checks query Redshift; without a workgroup (e.g. make demo-aws) they would only fail."""
    aws.start("b-ok")
    aws.wait_until_finished()
    pipeline = AWSPipelineResource(landing_bucket=aws.pipeline.landing_bucket, staging_bucket=aws.pipeline.staging_bucket,
                                   evidence_bucket=aws.pipeline.evidence_bucket, region="us-east-1",
                                   state_machine_arn=aws.pipeline.state_machine_arn)
    result = tick(sensor_for_tests(), None, pipeline)
    assert result.run_requests == [] and len(events_of(result)) == 3
