"""The `ingest` state machine (aws_handlers/statemachine/ingest.asl.json): static checks, then runs in moto.

Static checks: valid JSON with no duplicate keys, exactly the documented DefinitionSubstitutions,
every transition target exists, every state reachable and able to reach an end, every Task caught
into the failure path, the Glue arguments match the Glue job, two real validators (cfn-lint's ASL
schema, rule E3601, and moto's ASL grammar on CreateStateMachine; neither checks transitions),
and the Step Functions 256 KB state limit for a 1,000-file batch.

Runs: moto 5 executes state machines (POST /moto-api/config {"stepfunctions": {"execute_state_machine":
true}}) with its port of the LocalStack interpreter. It really runs, here: Pass/Choice/Wait/Map
(ItemSelector, MaxConcurrency), Catch, ResultSelector/ResultPath/OutputPath, the intrinsics,
`lambda:invoke` (moto's Docker-free Lambda, which returns queued results, see `queue_lambda_results`),
`sns:publish` (delivered to an SQS queue the tests read), and `glue:startJobRun` without `.sync`
against a moto Glue job.

NOT exercised by moto (each such Task is swapped for a Pass stand-in in the test variants; the
stand-in still evaluates the Task's `Parameters` as written and records them under "request"):
  * the `.sync` Glue wait (`glue:startJobRun.sync`): moto 5.2.5 starts the run and then fails with
    States.Runtime "'NoneType' object has no attribute 'interrupt_all'" (a bug in its callback code),
    so the ResultSelector on the GetJobRun result is only checked against a moto GetJobRun response;
  * the `aws-sdk:redshiftdata:*` Data API calls (batchExecuteStatement, describeStatement,
    cancelStatement): moto looks for a boto3 service literally named "redshiftdata" and fails
    ("Unknown service"); besides, moto's Data API has no BatchExecuteStatement;
  * real Lambda code: moto's Docker-free Lambda returns whatever result is queued, whatever the
    function (even a missing one), so Lambda errors are injected by swapping a Task for a call that
    fails (a Glue job that does not exist), keeping the Task's Catch;
  * SNS delivery beyond moto's SQS fan-out (email, Chatbot, ...);
  * Retry timing, backoff and jitter (no retried error is raised), Task timeouts, and the
    256 KB data limit (computed instead);
  * IAM: the state machine role's permissions are not checked.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import re
import time
import urllib.request
import zipfile

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from aws_handlers.statemachine import (DEFINITION_PATH, SUBSTITUTIONS, definition_template, load_definition,
                                       placeholders)
from tests.conftest import REPO

DOCS = (REPO / "docs" / "aws-runtime.md").read_text(encoding="utf-8")
STATE_LIMIT = 256 * 1024  # Step Functions: max size of a state's input/output, a Task result, the execution output


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates, f"duplicate keys {duplicates}"
    return dict(pairs)


TEMPLATE = definition_template()
DEFINITION = json.loads(TEMPLATE, object_pairs_hook=_no_duplicate_keys)
STATES = DEFINITION["States"]
ITEM_STATES = STATES["ConvertFiles"]["ItemProcessor"]["States"]
FAILURE_PATH = {"WriteFailureEvidence", "NotifyFailure", "BatchFailed"}


def documented_substitutions() -> set[str]:
    section = DOCS.split("## State machine definition substitutions", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", section))


def documented_execution_output() -> dict:
    section = DOCS.split("## Execution output", 1)[1]
    return json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))


def state_scopes(states: dict, scope: str = "") -> list[tuple[str, dict, str]]:
    """(scope name, states, StartAt) for the top level and every Map/Parallel inside it."""
    scopes = []
    for name, state in states.items():
        if state["Type"] == "Map":
            processor = state.get("ItemProcessor") or state["Iterator"]
            scopes.append((f"{scope}{name}", processor["States"], processor["StartAt"]))
            scopes += state_scopes(processor["States"], f"{scope}{name}/")
        for i, branch in enumerate(state.get("Branches", [])):
            scopes.append((f"{scope}{name}[{i}]", branch["States"], branch["StartAt"]))
            scopes += state_scopes(branch["States"], f"{scope}{name}[{i}]/")
    return scopes


def all_scopes() -> list[tuple[str, dict, str]]:
    return [("<top>", STATES, DEFINITION["StartAt"])] + state_scopes(STATES)


def transitions(state: dict) -> list[str]:
    targets = [state[key] for key in ("Next", "Default") if key in state]
    targets += [rule["Next"] for rule in state.get("Choices", [])]
    targets += [catcher["Next"] for catcher in state.get("Catch", [])]
    return targets


def is_terminal(state: dict) -> bool:
    return state["Type"] in ("Succeed", "Fail") or state.get("End") is True


def json_paths(value) -> list[str]:
    """Every JSONPath used by a payload template (values of keys ending in .$), intrinsics included."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith(".$") and isinstance(item, str):
                found += re.findall(r"\$\$?(?:\.[A-Za-z_][A-Za-z0-9_]*)*", item)
            else:
                found += json_paths(item)
    elif isinstance(value, list):
        for item in value:
            found += json_paths(item)
    return found


# ---------------------------------------------------------------------------------------------
# Static checks


def test_definition_is_json_and_uses_exactly_the_documented_substitutions():
    assert DEFINITION_PATH.name == "ingest.asl.json"
    assert DEFINITION["QueryLanguage"] == "JSONPath"
    assert set(SUBSTITUTIONS) == documented_substitutions()
    assert len(SUBSTITUTIONS) == 9
    assert placeholders(TEMPLATE) == set(SUBSTITUTIONS)  # every one used, nothing undocumented

    def keys(value):
        if isinstance(value, dict):
            for key, item in value.items():
                yield key
                yield from keys(item)
        elif isinstance(value, list):
            for item in value:
                yield from keys(item)

    assert not [k for k in keys(DEFINITION) if "${" in k]  # substitutions only in string values


def test_load_definition_substitutes_every_name_and_keeps_valid_json():
    values = {name: f'{name}-"value"\\' for name in SUBSTITUTIONS}  # JSON-escaped on the way in
    text = load_definition(values)
    assert "${" not in text
    loaded = json.loads(text)
    arguments = loaded["States"]["ConvertFiles"]["ItemProcessor"]["States"]["ConvertFile"]["Parameters"]["Arguments"]
    assert arguments["--landing_bucket"] == values["LandingBucket"]
    assert loaded["States"]["NotifyFailure"]["Parameters"]["TopicArn"] == values["AlertTopicArn"]
    with pytest.raises(ValueError, match="missing"):
        load_definition({name: "x" for name in SUBSTITUTIONS[1:]})
    with pytest.raises(ValueError, match="unknown"):
        load_definition({**{name: "x" for name in SUBSTITUTIONS}, "Extra": "x"})


def test_every_target_exists_every_state_is_reachable_and_every_state_can_end():
    for scope, states, start in all_scopes():
        assert start in states, scope
        for name, state in states.items():
            for target in transitions(state):
                assert target in states, f"{scope}: {name} -> {target} does not exist"
            assert is_terminal(state) or transitions(state), f"{scope}: {name} is a dead end"
            assert not (is_terminal(state) and "Next" in state), f"{scope}: {name} has End and Next"
        reachable, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name not in reachable:
                reachable.add(name)
                todo += transitions(states[name])
        assert reachable == set(states), f"{scope}: unreachable {set(states) - reachable}"
        # no trap: from every state some terminal state is reachable
        can_end = {name for name, state in states.items() if is_terminal(state)}
        assert can_end, f"{scope}: no terminal state"
        changed = True
        while changed:
            changed = False
            for name, state in states.items():
                if name not in can_end and any(t in can_end for t in transitions(state)):
                    can_end.add(name)
                    changed = True
        assert can_end == set(states), f"{scope}: cannot end from {set(states) - can_end}"
    assert STATES["BatchSucceeded"]["Type"] == "Succeed"
    assert (STATES["BatchFailed"]["Type"], STATES["BatchFailed"]["Error"]) == ("Fail", "BatchFailed")
    assert STATES["BatchFailed"]["Cause"]


def test_every_task_is_caught_into_the_failure_path_which_always_ends_reported():
    for name, state in STATES.items():
        if state["Type"] not in ("Task", "Map", "Parallel") or name in FAILURE_PATH:
            continue
        assert state["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                                   "Next": "WriteFailureEvidence"}], name
    # the only Task without a Catch is the one inside the Map: its failure fails the Map, which is caught
    assert "Catch" not in ITEM_STATES["ConvertFile"]
    evidence = STATES["WriteFailureEvidence"]
    assert evidence["Resource"] == "arn:aws:states:::lambda:invoke"
    assert evidence["Parameters"]["FunctionName"] == "${WriteEvidenceFunctionArn}"
    assert evidence["Next"] == "NotifyFailure"
    assert [c["Next"] for c in evidence["Catch"]] == ["NotifyFailure"]
    assert evidence["Catch"][0]["ErrorEquals"] == ["States.ALL"]
    notify = STATES["NotifyFailure"]
    assert notify["Resource"] == "arn:aws:states:::sns:publish"
    assert notify["Parameters"]["TopicArn"] == "${AlertTopicArn}"
    assert notify["Parameters"]["Subject"] and notify["Parameters"]["Message.$"].startswith("States.Format(")
    assert notify["Next"] == "BatchFailed" and [c["Next"] for c in notify["Catch"]] == ["BatchFailed"]
    # a success only through WriteEvidence's own check
    assert STATES["BatchSucceeded?"]["Choices"][-1] == {"Variable": "$.evidence.output.status",
                                                         "StringEquals": "SUCCEEDED", "Next": "ReturnEvidence"}
    assert STATES["BatchSucceeded?"]["Default"] == "NotifyFailure"
    assert STATES["ReturnEvidence"]["OutputPath"] == "$.evidence.output"


def test_failure_path_reads_only_fields_that_exist_on_every_path():
    # A JSONPath to a missing field is States.Runtime, which States.ALL does not catch: an execution
    # would then end without evidence or alert. So the failure path only reads fields that
    # NormalizeInput defaults and ValidateBatch keeps, plus $.error which every way in sets.
    defaults = STATES["NormalizeInput"]["Parameters"]["defaults"]
    assert set(defaults) == {"batch_id", "dataset", "files", "load"}
    assert STATES["ApplyInputDefaults"]["Parameters"] == {"state.$": "States.JsonMerge($.defaults, $.input, false)"}
    kept = {k.removesuffix(".$") for k in STATES["ValidateBatch"]["ResultSelector"]}
    assert kept == set(defaults) and STATES["ValidateBatch"]["ResultPath"] == "$"
    guaranteed = {f"$.{k}" for k in defaults} | {"$.error", "$$.Execution.Id"}
    assert set(json_paths(STATES["WriteFailureEvidence"]["Parameters"])) <= guaranteed
    assert set(json_paths(STATES["NotifyFailure"]["Parameters"])) <= guaranteed
    ways_in = [name for name, state in STATES.items() if "WriteFailureEvidence" in transitions(state)]
    for name in ways_in:
        state = STATES[name]
        sets_error = state.get("ResultPath") == "$.error" or all(
            c["ResultPath"] == "$.error" for c in state.get("Catch", []) if c["Next"] == "WriteFailureEvidence")
        assert sets_error, name
    assert "LoadTimeoutError" in ways_in


def test_map_gives_each_glue_run_the_batch_dataset_and_key():
    from aws_handlers.glue.csv_to_parquet import REQUIRED

    convert = STATES["ConvertFiles"]
    assert convert["ItemsPath"] == "$.files"
    assert convert["ItemSelector"] == {"batch_id.$": "$.batch_id", "dataset.$": "$.dataset",
                                       "source_key.$": "$$.Map.Item.Value"}
    assert convert["MaxConcurrency"] == 10
    # the state keeps a count, not one entry per file (the run ids are in the execution history)
    assert convert["ResultSelector"] == {"count.$": "States.ArrayLength($)"}
    assert convert["ResultPath"] == "$.conversions"
    task = ITEM_STATES["ConvertFile"]
    assert task["Resource"] == "arn:aws:states:::glue:startJobRun.sync"
    assert task["Parameters"]["JobName"] == "${GlueJobName}"
    assert set(task["Parameters"]["Arguments"]) == {f"--{n}.$" for n in ("batch_id", "dataset", "source_key")} | {
        "--landing_bucket", "--staging_bucket"}
    assert {k.removesuffix(".$").removeprefix("--") for k in task["Parameters"]["Arguments"]} == set(REQUIRED)
    # .sync returns the GetJobRun JobRun: Id (not JobRunId) and JobRunState
    assert task["ResultSelector"] == {"JobRunId.$": "$.Id", "JobRunState.$": "$.JobRunState"}
    [retry] = task["Retry"]
    assert {"Glue.ConcurrentRunsExceededException", "Glue.ThrottlingException"} <= set(retry["ErrorEquals"])
    assert "States.Timeout" not in retry["ErrorEquals"] and "States.TaskFailed" not in retry["ErrorEquals"]
    assert retry["BackoffRate"] == 2 and retry["JitterStrategy"] == "FULL" and retry["IntervalSeconds"] >= 1
    assert 1 < retry["MaxAttempts"] <= 10


def test_load_is_one_batch_statement_polled_until_done_or_cancelled_after_30_minutes():
    load = STATES["LoadBatch"]
    assert load["Resource"] == "arn:aws:states:::aws-sdk:redshiftdata:batchExecuteStatement"
    assert load["Parameters"]["WorkgroupName"] == "${RedshiftWorkgroup}"
    assert load["Parameters"]["Database"] == "${RedshiftDatabase}"
    assert load["Parameters"]["Sqls.$"] == "$.load_plan.sqls"
    assert load["ResultSelector"] == {"Id.$": "$.Id"} and load["ResultPath"] == "$.load"
    assert {"RedshiftData.ActiveStatementsExceededException", "RedshiftData.ThrottlingException"} <= set(
        load["Retry"][0]["ErrorEquals"])
    assert load["Retry"][0]["JitterStrategy"] == "FULL" and load["Retry"][0]["BackoffRate"] == 2
    assert STATES["HasRowsToLoad?"]["Choices"] == [
        {"Variable": "$.load_plan.status", "StringEquals": "ready", "Next": "LoadBatch"}]
    assert STATES["HasRowsToLoad?"]["Default"] == "WriteEvidence"
    assert STATES["DescribeLoad"]["Resource"] == "arn:aws:states:::aws-sdk:redshiftdata:describeStatement"
    assert STATES["DescribeLoad"]["Parameters"] == {"Id.$": "$.load.Id"}
    assert STATES["CancelLoad"]["Resource"] == "arn:aws:states:::aws-sdk:redshiftdata:cancelStatement"
    assert STATES["CancelLoad"]["Parameters"] == {"Id.$": "$.load.Id"}
    rules = STATES["LoadDone?"]["Choices"]
    [limit] = [r["NumericGreaterThanEquals"] for r in rules if r.get("Variable") == "$.load_polls.count"]
    assert limit * STATES["WaitForLoad"]["Seconds"] == 30 * 60
    assert STATES["LoadDone?"]["Default"] == "CountLoadPoll"
    assert STATES["CountLoadPoll"]["Parameters"] == {"count.$": "States.MathAdd($.load_polls.count, 1)"}
    assert STATES["LoadTimeoutError"]["Result"]["Error"] == "LoadTimeout"


def test_cfn_lint_accepts_the_definition_in_a_state_machine_resource():
    cfnlint_api = pytest.importorskip("cfnlint.api")
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "Role": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                        "Principal": {"Service": "states.amazonaws.com"}}]}}},
            "Ingest": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
                "StateMachineType": "STANDARD", "RoleArn": {"Fn::GetAtt": ["Role", "Arn"]},
                "Definition": DEFINITION,
                "DefinitionSubstitutions": {name: f"value-of-{name}" for name in SUBSTITUTIONS}}},
        },
    }
    matches = cfnlint_api.lint(json.dumps(template), config=cfnlint_api.ManualArgs(regions=["us-east-1"]))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []


# ---------------------------------------------------------------------------------------------
# The 256 KB limit, for a 1,000-file batch

KEY_LENGTH = 100  # a long landing key: "employees/2026/12/03/<name>.csv"


def _files(n: int) -> list[str]:
    return [f"employees/{i:06d}_".ljust(KEY_LENGTH - 4, "x") + ".csv" for i in range(n)]


def _conversion_item() -> dict:
    """One Map result item, shaped by ConvertFile's ResultSelector with Glue's longest values."""
    selector = ITEM_STATES["ConvertFile"]["ResultSelector"]
    longest = {"$.Id": "jr_" + "f" * 64, "$.JobRunState": "SUCCEEDED"}  # Glue run ids: jr_ + 64 hex
    return {key.removesuffix(".$"): longest[path] for key, path in selector.items()}


def _size(value) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def test_map_result_for_1000_files_is_well_under_256_kb():
    # the Map's raw result (one item per file, before its ResultSelector) is itself under the limit
    item = _conversion_item()
    assert set(item) == {"JobRunId", "JobRunState"}
    size = _size([item] * 1000)
    assert size == 1000 * _size(item) + 999 + 2
    assert size < STATE_LIMIT / 2, size  # ~110 KB


def test_largest_state_before_write_evidence_for_1000_files_fits():
    from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR, load_contract
    from aws_handlers.core.load_sql import LoadFile, batch_load_statements

    files = _files(1000)
    batch_id = "b" * 80
    contract = load_contract(BUNDLED_CONTRACTS_DIR / "employees.yaml")
    load_files = [LoadFile(k, "f" * 64, 10, f"s3://staging/{k}.parquet") for k in files]
    sqls = batch_load_statements(contract, batch_id, load_files, "2026-12-03 12:00:00", "redshift",
                                 copy_manifest_uri="s3://staging/employees/batch_id=x/copy.manifest",
                                 iam_role_arn="arn:aws:iam::123456789012:role/redshift-copy",
                                 batch_files_uri="s3://staging/employees/batch_id=x/files.csv")
    statement = {"Id": "0" * 36, "Status": "FINISHED", "CreatedAt": "2026-12-03T12:00:00.000Z",
                 "UpdatedAt": "2026-12-03T12:00:00.000Z", "Duration": 10 ** 12, "HasResultSet": False,
                 "RedshiftQueryId": 10 ** 9, "ResultRows": 10 ** 6, "ResultSize": 0}
    describe = {**statement, "Database": "dev", "DbUser": "IAMR:etl", "WorkgroupName": "w" * 64,
                "RedshiftPid": 10 ** 9, "QueryString": ";".join(sqls),
                "SubStatements": [{**statement, "Id": f"{'0' * 36}:{i}", "QueryString": sql}
                                  for i, sql in enumerate(sqls)]}
    state = {"batch_id": batch_id, "dataset": "employees", "files": files,
             "load": {"Id": "0" * 36, "Status": "FINISHED"},
             "conversions": {"count": 1000},
             "load_plan": {"status": "ready", "sqls": sqls, "copy_manifest_uri": "s3://" + "m" * 200},
             "load_polls": {"count": 360}, "load_status": describe}
    size = _size(state)
    # the state is the file list (~100 KB here) plus a constant: the SQL is the same size for 1 file or 1,000
    assert _size(sqls) < 16 * 1024
    assert size - _size(files) < 32 * 1024, size
    assert size < 0.6 * STATE_LIMIT, size


def test_execution_output_for_1000_files_fits_256_kb():
    """The output lists at most OUTPUT_FILES_LISTED files; the evidence report lists them all."""
    from aws_handlers.core.pipeline import OUTPUT_FILES_LISTED, execution_output

    keys = _files(1000)
    report = {"dataset": "employees", "code_version": "0.1.0", "contract": {"table": "public.employees"},
              "summary": {"status": "SUCCEEDED", "total_loaded_rows": 10_000, "successful_conversions": 1000,
                          "successful_loads": 1000, "failure_count": 0, "batch_id": "b" * 80},
              "inputs": [{"key": k, "sha256": "f" * 64} for k in keys],
              "outputs": [{"source_key": k, "uri": f"s3://staging/{k}.parquet", "sha256": "f" * 64, "rows": 10,
                           "manifest_uri": f"s3://staging/{k}.manifest.json"} for k in keys],
              "load": {"rows_inserted": 10_000, "table_rows_after": 10_000}, "duplicates": [], "errors": []}
    output = execution_output(report, {"json": "s3://e/r.json", "html": "s3://e/r.html", "sha256": "0" * 64, "sequence": 1})
    assert output["assets"]["staging_parquet"]["file_count"] == 1000
    assert len(output["assets"]["staging_parquet"]["files"]) == OUTPUT_FILES_LISTED
    assert set(output) >= set(documented_execution_output())
    assert _size(output) + _size(keys) < STATE_LIMIT // 2


# ---------------------------------------------------------------------------------------------
# Runs in moto

REGIONS = itertools.cycle(["us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-west-3",
                           "eu-central-1", "eu-north-1", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1",
                           "ap-northeast-2", "ap-south-1", "ca-central-1", "sa-east-1", "us-east-1"])
TEST_NUMBERS = itertools.count()
LOAD_ID = "3f1b9c6e-0d7a-4a8e-9a57-2f3c8d1e4b10"
BATCH = {"batch_id": "b1", "dataset": "employees", "files": ["employees/a.csv", "employees/2026/b c.csv"]}
PLAN = {"status": "ready", "sqls": ["CREATE TEMP TABLE etl_stage (x INT)", "COPY etl_stage FROM 's3://m'"],
        "copy_manifest_uri": "s3://staging/employees/batch_id=b1/copy.manifest",
        "files": [{"source_key": "employees/a.csv"}]}


def _post(endpoint: str, path: str, body: dict) -> None:
    request = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201)


@pytest.fixture(scope="module")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto's interpreter calls Lambda/Glue/SNS at localhost:$MOTO_PORT (it runs in this process)
    previous_port = os.environ.get("MOTO_PORT")
    os.environ["MOTO_PORT"] = str(port)
    _post(endpoint, "/moto-api/config", {"stepfunctions": {"execute_state_machine": True},
                                         "lambda": {"use_docker": False}})
    try:
        yield endpoint
    finally:
        _post(endpoint, "/moto-api/config", {"stepfunctions": {"execute_state_machine": False},
                                             "lambda": {"use_docker": True}})
        if previous_port is None:
            os.environ.pop("MOTO_PORT", None)
        else:
            os.environ["MOTO_PORT"] = previous_port
        server.stop()


class Aws:
    """One region of the moto server per test: the queued Lambda results are per region."""

    def __init__(self, endpoint: str, region: str, n: int):
        self.endpoint, self.region = endpoint, region
        kwargs = dict(endpoint_url=endpoint, region_name=region, aws_access_key_id="testing",
                      aws_secret_access_key="testing")
        self.sfn = boto3.client("stepfunctions", **kwargs)
        self.glue = boto3.client("glue", **kwargs)
        sns, sqs, lam, iam = (boto3.client(s, **kwargs) for s in ("sns", "sqs", "lambda", "iam"))
        prefix = f"etl{n}"  # unique per test: IAM is global, and a region may come round again
        self.role_arn = iam.create_role(RoleName=prefix, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
        arns = {}
        for name in ("ValidateBatch", "PrepareLoad", "WriteEvidence"):
            arns[name] = lam.create_function(FunctionName=f"{prefix}-{name}", Runtime="python3.11", Role=self.role_arn,
                                             Handler="handler.handler",
                                             Code={"ZipFile": code.getvalue()})["FunctionArn"]
        self.job_name = f"{prefix}-csv-to-parquet"
        self.glue.create_job(Name=self.job_name, Role=self.role_arn, ExecutionProperty={"MaxConcurrentRuns": 10},
                             Command={"Name": "pythonshell", "ScriptLocation": "s3://code/csv_to_parquet.py"})
        topic = sns.create_topic(Name=f"{prefix}-alerts")["TopicArn"]
        self.sqs = sqs
        self.queue_url = sqs.create_queue(QueueName=f"{prefix}-alerts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        self.substitutions = {
            "GlueJobName": self.job_name, "LandingBucket": "landing", "StagingBucket": "staging",
            "ValidateBatchFunctionArn": arns["ValidateBatch"], "PrepareLoadFunctionArn": arns["PrepareLoad"],
            "WriteEvidenceFunctionArn": arns["WriteEvidence"], "RedshiftWorkgroup": "etl-wg",
            "RedshiftDatabase": "dev", "AlertTopicArn": topic,
        }
        self.prefix, self._machines = prefix, itertools.count()

    def queue_lambda_results(self, *results) -> None:
        """moto's Docker-free Lambda returns these, in order, whatever function is invoked."""
        _post(self.endpoint, "/moto-api/static/lambda-simple/response",
              {"results": [json.dumps(r) for r in results], "region": self.region})

    def create(self, definition: dict) -> str:
        return self.sfn.create_state_machine(name=f"{self.prefix}-ingest-{next(self._machines)}", definition=json.dumps(definition),
                                             roleArn=self.role_arn, type="STANDARD")["stateMachineArn"]

    def run(self, definition: dict, execution_input: dict, name: str = "b1") -> "Run":
        arn = self.sfn.start_execution(stateMachineArn=self.create(definition), name=name,
                                       input=json.dumps(execution_input))["executionArn"]
        return self.wait(arn)

    def wait(self, execution_arn: str, timeout: float = 20) -> "Run":
        deadline = time.monotonic() + timeout
        while (described := self.sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "execution still running"
            time.sleep(0.05)
        events = self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        return Run(described, events)

    def alerts(self) -> list[str]:
        messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]


class Run:
    def __init__(self, described: dict, events: list[dict]):
        self.status = described["status"]
        self.output = json.loads(described["output"]) if described.get("output") else None
        self.error, self.cause = described.get("error"), described.get("cause")
        self.arn = described["executionArn"]
        self.events = events

    @property
    def entered(self) -> list[str]:
        return [e["stateEnteredEventDetails"]["name"] for e in self.events if "stateEnteredEventDetails" in e]

    def task_parameters(self, state: str) -> list[dict]:
        """What each Task entry of `state` sent to its service (lambda: FunctionName + Payload)."""
        found, current = [], None
        for event in self.events:
            if "stateEnteredEventDetails" in event:
                current = event["stateEnteredEventDetails"]["name"]
            elif event["type"] == "TaskScheduled" and current == state:
                found.append(json.loads(event["taskScheduledEventDetails"]["parameters"]))
        return found

    def exited(self, state: str) -> list[dict]:
        return [json.loads(e["stateExitedEventDetails"]["output"]) for e in self.events
                if "stateExitedEventDetails" in e and e["stateExitedEventDetails"]["name"] == state]


@pytest.fixture
def aws(moto_endpoint) -> Aws:
    return Aws(moto_endpoint, next(REGIONS), next(TEST_NUMBERS))


def stand_in(state: dict, resource: str, response: dict) -> dict:
    """A Pass in place of a Task moto cannot run: it evaluates the Task's Parameters as written (kept
    under "request") and returns `response` next to them, at the Task's ResultPath."""
    assert state["Type"] == "Task" and state["Resource"] == resource, state
    pass_state = {"Type": "Pass", "Parameters": {"request": state["Parameters"], **response},
                  "ResultPath": state.get("ResultPath", "$")}
    pass_state.update({k: state[k] for k in ("Next", "End") if k in state})
    return pass_state


def inject_failure(state: dict) -> dict:
    """The same Task (Catch, ResultPath, Next), calling something that fails: a Glue job that does not exist."""
    failing = {k: v for k, v in state.items() if k not in ("ResultSelector", "Retry")}
    failing.update(Resource="arn:aws:states:::glue:startJobRun", Parameters={"JobName": "injected-failure"})
    return failing


def variant(aws: Aws, *, convert_file: dict | None = None, describe: dict | None = None,
            max_polls: int | None = None, wait_seconds: int = 0) -> dict:
    """The definition as deployed (substituted), with moto-incapable Tasks swapped for stand-ins."""
    definition = json.loads(load_definition(aws.substitutions))
    states = definition["States"]
    items = states["ConvertFiles"]["ItemProcessor"]["States"]
    items["ConvertFile"] = convert_file or stand_in(
        items["ConvertFile"], "arn:aws:states:::glue:startJobRun.sync",
        {"JobRunId": "jr_stand_in", "JobRunState": "SUCCEEDED"})
    states["LoadBatch"] = stand_in(states["LoadBatch"], "arn:aws:states:::aws-sdk:redshiftdata:batchExecuteStatement",
                                   {"Id": LOAD_ID})
    states["DescribeLoad"] = stand_in(states["DescribeLoad"], "arn:aws:states:::aws-sdk:redshiftdata:describeStatement",
                                      describe or {"Id": LOAD_ID, "Status": "FINISHED"})
    states["CancelLoad"] = stand_in(states["CancelLoad"], "arn:aws:states:::aws-sdk:redshiftdata:cancelStatement",
                                    {"Status": True})
    states["WaitForLoad"]["Seconds"] = wait_seconds
    if max_polls is not None:
        [rule] = [r for r in states["LoadDone?"]["Choices"] if "NumericGreaterThanEquals" in r]
        rule["NumericGreaterThanEquals"] = max_polls
    return definition


def evidence_output(status: str) -> dict:
    output = documented_execution_output()
    if status != "SUCCEEDED":
        output.update(status=status, failure_count=1, errors=[{"step": "load", "message": "boom"}])
    return output


def test_success_path_ends_with_exactly_the_documented_execution_output(aws):
    documented = documented_execution_output()
    aws.queue_lambda_results(BATCH, PLAN, documented)
    run = aws.run(variant(aws), BATCH)

    assert run.status == "SUCCEEDED", (run.error, run.cause)
    assert run.output == documented
    assert run.entered == ["NormalizeInput", "ApplyInputDefaults", "ValidateBatch", "ConvertFiles", "ConvertFile",
                           "ConvertFile", "PrepareLoad", "HasRowsToLoad?", "LoadBatch", "InitLoadPolls", "WaitForLoad",
                           "DescribeLoad", "LoadDone?", "RecordLoad", "WriteEvidence", "BatchSucceeded?",
                           "ReturnEvidence", "BatchSucceeded"]
    assert "WriteFailureEvidence" not in run.entered and "NotifyFailure" not in run.entered

    contract = {"batch_id": "b1", "dataset": "employees", "files": BATCH["files"]}
    sub = aws.substitutions
    assert run.task_parameters("ValidateBatch") == [{"FunctionName": sub["ValidateBatchFunctionArn"], "Payload": contract}]
    assert run.task_parameters("PrepareLoad") == [{"FunctionName": sub["PrepareLoadFunctionArn"], "Payload": contract}]
    assert run.task_parameters("WriteEvidence") == [{"FunctionName": sub["WriteEvidenceFunctionArn"], "Payload": {
        **contract, "load": {"Id": LOAD_ID, "Status": "FINISHED"}, "execution_arn": run.arn}}]

    # every Map item saw the batch id and dataset: what each would have sent to Glue
    [after_map] = run.exited("ConvertFiles")
    assert after_map["conversions"] == {"count": 2}
    assert sorted((c["request"] for c in run.exited("ConvertFile")), key=lambda r: r["Arguments"]["--source_key"]) == [
        {"JobName": sub["GlueJobName"], "Arguments": {"--batch_id": "b1", "--dataset": "employees", "--source_key": key,
                                                      "--landing_bucket": "landing", "--staging_bucket": "staging"}}
        for key in sorted(BATCH["files"])]
    # the load plan without its per-file list; the Data API requests as they would be sent
    [after_plan] = run.exited("PrepareLoad")
    assert after_plan["load_plan"] == {k: PLAN[k] for k in ("status", "sqls", "copy_manifest_uri")}
    [after_load] = run.exited("LoadBatch")
    assert after_load["load"]["request"] == {"WorkgroupName": "etl-wg", "Database": "dev", "Sqls": PLAN["sqls"],
                                             "StatementName": "etl-observer employees b1"}
    [after_describe] = run.exited("DescribeLoad")
    assert after_describe["load_status"]["request"] == {"Id": LOAD_ID}
    assert aws.alerts() == []


def test_nothing_to_load_writes_evidence_without_a_load_then_alerts_and_fails(aws):
    aws.queue_lambda_results(BATCH, {**PLAN, "status": "failed", "sqls": []}, evidence_output("FAILED"))
    run = aws.run(variant(aws), BATCH)

    assert (run.status, run.error) == ("FAILED", "BatchFailed")
    assert "LoadBatch" not in run.entered
    assert run.entered[-5:] == ["HasRowsToLoad?", "WriteEvidence", "BatchSucceeded?", "NotifyFailure", "BatchFailed"]
    [written] = run.task_parameters("WriteEvidence")
    assert written["Payload"] == {"batch_id": "b1", "dataset": "employees", "files": BATCH["files"], "load": None,
                                  "execution_arn": run.arn}  # the report says which execution wrote it
    [alert] = aws.alerts()
    assert alert["Subject"] == "etl-observer: ingest batch failed"
    assert alert["Message"].startswith("etl-observer batch b1 of dataset employees failed. Execution: arn:aws:states:")


def test_failed_load_reaches_write_evidence_with_its_error_then_notify_failure(aws):
    aws.queue_lambda_results(BATCH, PLAN, evidence_output("FAILED"))
    describe = {"Id": LOAD_ID, "Status": "FAILED", "Error": "ERROR: duplicate key"}
    run = aws.run(variant(aws, describe=describe), BATCH)

    assert (run.status, run.error) == ("FAILED", "BatchFailed")
    entered = run.entered
    assert entered[-6:] == ["LoadDone?", "RecordLoadError", "WriteEvidence", "BatchSucceeded?", "NotifyFailure",
                            "BatchFailed"]
    assert entered.index("WriteEvidence") < entered.index("NotifyFailure")
    [written] = run.task_parameters("WriteEvidence")
    assert written["Payload"]["load"] == {"Id": LOAD_ID, "Status": "FAILED", "Error": "ERROR: duplicate key"}
    assert len(aws.alerts()) == 1


def test_aborted_load_without_error_text_is_reported_too(aws):
    aws.queue_lambda_results(BATCH, PLAN, evidence_output("FAILED"))
    run = aws.run(variant(aws, describe={"Id": LOAD_ID, "Status": "ABORTED"}), BATCH)

    assert (run.status, run.error) == ("FAILED", "BatchFailed")
    assert "RecordLoad" in run.entered and "RecordLoadError" not in run.entered
    [written] = run.task_parameters("WriteEvidence")
    assert written["Payload"]["load"] == {"Id": LOAD_ID, "Status": "ABORTED"}


def test_load_that_never_finishes_is_cancelled_and_written_as_a_timeout(aws):
    aws.queue_lambda_results(BATCH, PLAN, evidence_output("FAILED"))
    run = aws.run(variant(aws, describe={"Id": LOAD_ID, "Status": "STARTED"}, max_polls=3), BATCH)

    assert (run.status, run.error) == ("FAILED", "BatchFailed")
    entered = run.entered
    assert entered.count("DescribeLoad") == 4 and entered.count("CountLoadPoll") == 3
    assert entered[-6:] == ["CancelLoad", "LoadTimedOut", "LoadTimeoutError", "WriteFailureEvidence",
                            "NotifyFailure", "BatchFailed"]
    assert "WriteEvidence" not in entered
    [cancelled] = run.exited("CancelLoad")
    assert "cancel" not in json.dumps(cancelled)  # ResultPath null
    [written] = run.task_parameters("WriteFailureEvidence")
    assert written["Payload"]["load"] == {"Id": LOAD_ID, "Status": "STARTED",
                                          "Error": "not finished after 3 status checks 5 s apart; cancelled"}
    assert written["Payload"]["error"]["Error"] == "LoadTimeout"
    assert len(aws.alerts()) == 1


def test_glue_start_job_run_without_sync_runs_in_moto_with_the_map_arguments(aws):
    documented = documented_execution_output()
    aws.queue_lambda_results(BATCH, PLAN, documented)
    definition = json.loads(load_definition(aws.substitutions))
    request_response = {k: v for k, v in definition["States"]["ConvertFiles"]["ItemProcessor"]["States"][
        "ConvertFile"].items() if k != "ResultSelector"}
    request_response["Resource"] = "arn:aws:states:::glue:startJobRun"
    run = aws.run(variant(aws, convert_file=request_response), BATCH)

    assert run.status == "SUCCEEDED", (run.error, run.cause)
    assert run.output == documented
    runs = aws.glue.get_job_runs(JobName=aws.job_name)["JobRuns"]
    assert sorted(r["Arguments"]["--source_key"] for r in runs) == sorted(BATCH["files"])
    for job_run in runs:
        assert job_run["Arguments"] == {"--batch_id": "b1", "--dataset": "employees",
                                        "--source_key": job_run["Arguments"]["--source_key"],
                                        "--landing_bucket": "landing", "--staging_bucket": "staging"}
        # the .sync result is this JobRun: ConvertFile's ResultSelector paths exist in it
        selected = {k.removesuffix(".$"): job_run[path.removeprefix("$.")]
                    for k, path in ITEM_STATES["ConvertFile"]["ResultSelector"].items()}
        assert selected["JobRunId"].startswith("jr_") and selected["JobRunState"]
    assert sorted(c["JobRunId"] for c in run.exited("ConvertFile")) == sorted(r["Id"] for r in runs)
    assert run.exited("ConvertFiles")[0]["conversions"] == {"count": 2}


def test_failed_conversion_is_caught_written_as_failure_evidence_and_alerted(aws):
    aws.queue_lambda_results(BATCH, evidence_output("FAILED"))
    definition = json.loads(load_definition({**aws.substitutions, "GlueJobName": "no-such-job"}))
    request_response = {k: v for k, v in definition["States"]["ConvertFiles"]["ItemProcessor"]["States"][
        "ConvertFile"].items() if k != "ResultSelector"}
    request_response["Resource"] = "arn:aws:states:::glue:startJobRun"
    run = aws.run(variant(aws, convert_file=request_response), BATCH)

    assert (run.status, run.error) == ("FAILED", "BatchFailed")
    assert run.entered[-3:] == ["WriteFailureEvidence", "NotifyFailure", "BatchFailed"]
    assert "PrepareLoad" not in run.entered
    [written] = run.task_parameters("WriteFailureEvidence")
    assert written["FunctionName"] == aws.substitutions["WriteEvidenceFunctionArn"]
    assert {k: written["Payload"][k] for k in ("batch_id", "dataset", "files", "load")} == {**BATCH, "load": None}
    assert written["Payload"]["error"]["Error"] == "Glue.EntityNotFoundException"
    assert len(aws.alerts()) == 1


def test_validation_failure_on_input_without_batch_id_still_writes_evidence_and_alerts(aws):
    aws.queue_lambda_results(evidence_output("FAILED"))
    definition = variant(aws)
    definition["States"]["ValidateBatch"] = inject_failure(definition["States"]["ValidateBatch"])
    bad_input = {"dataset": "employees", "files": ["employees/a.csv"]}
    run = aws.run(definition, bad_input)

    assert (run.status, run.error) == ("FAILED", "BatchFailed")
    assert run.entered == ["NormalizeInput", "ApplyInputDefaults", "ValidateBatch", "WriteFailureEvidence",
                           "NotifyFailure", "BatchFailed"]
    [written] = run.task_parameters("WriteFailureEvidence")
    assert {k: written["Payload"][k] for k in ("batch_id", "dataset", "files", "load")} == {
        "batch_id": None, "dataset": "employees", "files": ["employees/a.csv"], "load": None}
    [alert] = aws.alerts()
    assert alert["Message"].startswith("etl-observer batch null of dataset employees failed.")


def test_failure_evidence_that_fails_itself_still_alerts(aws):
    aws.queue_lambda_results(BATCH)
    definition = variant(aws)
    states = definition["States"]
    states["PrepareLoad"] = inject_failure(states["PrepareLoad"])
    states["WriteFailureEvidence"] = inject_failure(states["WriteFailureEvidence"])
    run = aws.run(definition, BATCH)

    assert (run.status, run.error) == ("FAILED", "BatchFailed")
    assert run.entered[-4:] == ["PrepareLoad", "WriteFailureEvidence", "NotifyFailure", "BatchFailed"]
    [before_notify] = [json.loads(e["stateEnteredEventDetails"]["input"]) for e in run.events
                       if e.get("stateEnteredEventDetails", {}).get("name") == "NotifyFailure"]
    assert before_notify["evidence_error"]["Error"] == "Glue.EntityNotFoundException"
    assert len(aws.alerts()) == 1


def test_same_execution_name_and_input_on_a_standard_machine(aws):
    """moto (like Step Functions for STANDARD workflows): while the execution runs, StartExecution with
    the same name and input returns the same ARN; different input, or once it has ended, raises
    ExecutionAlreadyExists. So a duplicate S3 event for a running batch is harmless, and one for a
    finished batch needs a new name (or must treat ExecutionAlreadyExists as "already started")."""
    aws.queue_lambda_results(BATCH, PLAN, evidence_output("FAILED"))
    # runs about a second: one 1 s wait, then the load "times out" at once and the batch fails
    arn = aws.create(variant(aws, describe={"Id": LOAD_ID, "Status": "STARTED"}, wait_seconds=1, max_polls=0))
    first = aws.sfn.start_execution(stateMachineArn=arn, name="b1", input=json.dumps(BATCH))["executionArn"]
    again = aws.sfn.start_execution(stateMachineArn=arn, name="b1", input=json.dumps(BATCH))["executionArn"]
    assert again == first
    with pytest.raises(ClientError) as different_input:
        aws.sfn.start_execution(stateMachineArn=arn, name="b1", input=json.dumps({**BATCH, "files": []}))
    assert different_input.value.response["Error"]["Code"] == "ExecutionAlreadyExists"
    assert aws.sfn.describe_execution(executionArn=first)["status"] == "RUNNING"
    run = aws.wait(first)
    assert (run.status, run.error) == ("FAILED", "BatchFailed")
    assert run.entered.count("ValidateBatch") == 1
    with pytest.raises(ClientError) as ended:
        aws.sfn.start_execution(stateMachineArn=arn, name="b1", input=json.dumps(BATCH))
    assert ended.value.response["Error"]["Code"] == "ExecutionAlreadyExists"
    assert len(aws.sfn.list_executions(stateMachineArn=arn)["executions"]) == 1


def test_moto_accepts_the_definition_as_deployed_and_rejects_a_broken_one(aws):
    definition = json.loads(load_definition(aws.substitutions))
    assert aws.sfn.describe_state_machine(stateMachineArn=aws.create(definition))["type"] == "STANDARD"
    # moto's parser checks the grammar (not the transitions: a Next to a missing state passes it,
    # which is what the static test above is for)
    definition["States"]["WaitForLoad"]["Seconds"] = "five"
    with pytest.raises(ClientError) as broken:
        aws.create(definition)
    assert broken.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "ASLParserException" in broken.value.response["Error"]["Message"]  # moto sends no error code
