"""template.yaml: cfn-lint clean, and wired to the contracts of docs/aws-runtime.md and aws_handlers."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from infra_test_support import DEFINITION, REPO, RUNTIME_DOC, TEMPLATE, doc_substitution_names, evaluate_event_pattern
from infra_scripts.deploy import definition_placeholders, load_template

HANDLERS = {
    "StartBatchFunction": "aws_handlers.lambdas.start_batch.handler",
    "ValidateBatchFunction": "aws_handlers.lambdas.validate_batch.handler",
    "PrepareLoadFunction": "aws_handlers.lambdas.prepare_load.handler",
    "WriteEvidenceFunction": "aws_handlers.lambdas.write_evidence.handler",
}
SHARED_ENV = {"LANDING_BUCKET", "STAGING_BUCKET", "EVIDENCE_BUCKET", "EVIDENCE_PREFIX", "COPY_ROLE_ARN",
              "REDSHIFT_WORKGROUP", "REDSHIFT_DATABASE", "ETL_OBSERVER_CODE_VERSION"}


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template(TEMPLATE)


def resources_of(template: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def test_cfn_lint_reports_no_errors():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    command = [str(cfn_lint)] if cfn_lint.exists() else [sys.executable, "-m", "cfnlint"]
    result = subprocess.run([*command, "--format", "json", str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip(), result.stderr
    matches = json.loads(result.stdout)
    describe = [f"{m['Level']} {m['Rule']['Id']} {m['Location']['Path']}: {m['Message']}" for m in matches]
    errors = [d for d, m in zip(describe, matches) if m["Level"] == "Error"]
    for warning in (d for d, m in zip(describe, matches) if m["Level"] != "Error"):
        warnings.warn(f"cfn-lint: {warning}", stacklevel=1)
    assert not errors, "\n".join(errors)


def test_definition_substitutions_are_exactly_the_documented_names(template):
    machine = template["Resources"]["StateMachine"]["Properties"]
    assert list(machine["DefinitionSubstitutions"]) == doc_substitution_names()


def test_the_definition_uses_only_substituted_names(template):
    if not DEFINITION.is_file():
        pytest.skip(f"{DEFINITION} not written yet")
    used = definition_placeholders(DEFINITION.read_text(encoding="utf-8"))
    assert used <= set(template["Resources"]["StateMachine"]["Properties"]["DefinitionSubstitutions"])


def test_state_machine_is_standard_logged_traced_and_from_the_artifact_bucket(template):
    machine = template["Resources"]["StateMachine"]["Properties"]
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["DefinitionS3Location"]["Bucket"] == {"Ref": "ArtifactBucket"}
    assert "${CodeVersion}" in machine["DefinitionS3Location"]["Key"]["Fn::Sub"]
    assert machine["LoggingConfiguration"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"] == {
        "Fn::GetAtt": ["StateMachineLogGroup", "Arn"]}
    assert machine["TracingConfiguration"] == {"Enabled": True}


def test_lambdas_run_the_documented_handlers_with_the_documented_environment(template):
    functions = resources_of(template, "AWS::Lambda::Function")
    assert {name: f["Properties"]["Handler"] for name, f in functions.items()} == HANDLERS
    doc = RUNTIME_DOC.read_text(encoding="utf-8")
    for name, function in functions.items():
        props = function["Properties"]
        assert props["Runtime"] == "python3.11"
        assert props["Code"]["S3Key"] == {"Fn::Sub": "${ArtifactPrefix}/${CodeVersion}/lambda.zip"}
        module, attribute = props["Handler"].rsplit(".", 1)
        assert f"`{props['Handler']}`" in doc
        source = REPO / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{name}: {source} missing"
        assert attribute in {n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)}
        env = set(props["Environment"]["Variables"])
        expected = SHARED_ENV | ({"STATE_MACHINE_ARN"} if name == "StartBatchFunction" else set())
        assert env == expected, name
        assert "ReservedConcurrentExecutions" in props and "TracingConfig" in props
        log_group = template["Resources"][props["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]
        assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert "DeadLetterConfig" in functions["StartBatchFunction"]["Properties"]  # the one invoked asynchronously


def test_glue_job(template):
    from aws_handlers.glue.csv_to_parquet import REQUIRED

    job = template["Resources"]["GlueJob"]["Properties"]
    assert job["GlueVersion"] == "5.0"
    assert job["Command"]["Name"] == "glueetl" and job["Command"]["PythonVersion"] == "3"
    assert job["Command"]["ScriptLocation"]["Fn::Sub"].endswith("/${CodeVersion}/glue/csv_to_parquet.py")
    assert job["WorkerType"] == "G.1X" and job["NumberOfWorkers"] == 2 and "Timeout" in job
    modules = job["DefaultArguments"]["--additional-python-modules"]["Fn::Sub"]
    assert modules.startswith("s3://${ArtifactBucket}/") and modules.endswith("-py3-none-any.whl")
    for argument in ("landing_bucket", "staging_bucket"):
        assert argument in REQUIRED and f"--{argument}" in job["DefaultArguments"]
    parameters = template["Parameters"]
    assert job["ExecutionProperty"]["MaxConcurrentRuns"] == {"Ref": "GlueMaxConcurrentRuns"}
    assert parameters["GlueMaxConcurrentRuns"]["Default"] >= parameters["MapMaxConcurrency"]["Default"] == 10


def test_buckets_are_private_encrypted_versioned_https_only_and_age_out(template):
    buckets = resources_of(template, "AWS::S3::Bucket")
    policies = {p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"]
                for p in resources_of(template, "AWS::S3::BucketPolicy").values()}
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        rules = props["LifecycleConfiguration"]["Rules"]
        assert any("AbortIncompleteMultipartUpload" in r for r in rules), name
        assert any("NoncurrentVersionExpiration" in r for r in rules), name
        deny = [s for s in policies[name]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in deny), name
    for name in ("LandingBucket", "StagingBucket"):
        props = buckets[name]["Properties"]
        assert props["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
        assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogBucket"}
    landing_rules = buckets["LandingBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any("Transitions" in r and "ExpirationInDays" in r for r in landing_rules)


def _event(bucket: str, key: str, size: int) -> dict:
    return {"source": "aws.s3", "detail-type": "Object Created",
            "detail": {"bucket": {"name": bucket}, "object": {"key": key, "size": size}}}


@pytest.mark.parametrize("key,size,bucket,matches", [
    ("employees/2026-01.csv", 10, "landing", True),
    ("employees/sub/dir/x.CSV", 1, "landing", True),
    ("departments/d.csv", 5, "landing", True),
    ("employees/empty.csv", 0, "landing", False),
    ("employees/notes.txt", 10, "landing", False),
    ("other/x.csv", 10, "landing", False),
    ("x.csv", 10, "landing", False),
    ("employees/2026-01.csv", 10, "somebody-elses-bucket", False),
])
def test_landing_rule_pattern(template, key, size, bucket, matches):
    """The pattern CloudFormation builds from DatasetPrefixes, matched the way EventBridge does (moto's matcher)."""
    from moto.events.models import EventPattern

    pattern = evaluate_event_pattern(template, {"DatasetPrefixes": "employees/,departments/"})
    pattern["detail"]["bucket"]["name"] = ["landing"]
    assert EventPattern.load(json.dumps(pattern)).matches_event(_event(bucket, key, size)) is matches


def test_landing_rule_targets_start_batch_with_permission_and_dead_letters(template):
    rule = template["Resources"]["LandingCsvRule"]["Properties"]
    target, = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["StartBatchFunction", "Arn"]}
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    permission = template["Resources"]["StartBatchInvokePermission"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["LandingCsvRule", "Arn"]}


def test_alerts(template):
    topic = template["Resources"]["AlertTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "EncryptionKey"}
    assert template["Resources"]["AlertEmailSubscription"]["Condition"] == "HasAlertEmail"
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    metrics = {a["Properties"].get("MetricName") for a in alarms.values()}
    assert {"ExecutionsFailed", "ExecutionsTimedOut"} <= metrics
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}]
    assert template["Resources"]["EncryptionKey"]["Properties"]["EnableKeyRotation"] is True


def test_outputs(template):
    assert {"LandingBucketName", "StagingBucketName", "StateMachineArn", "AlertTopicArn", "CopyRoleArn",
            "GlueJobName"} <= set(template["Outputs"])


def test_no_account_region_or_partition_is_written_literally():
    text = TEMPLATE.read_text(encoding="utf-8")
    assert not re.search(r"(?<![0-9])[0-9]{12}(?![0-9])", text), "a 12-digit account id"
    assert not re.search(r"\b(us|eu|ap|sa|ca|me|af|il|mx|cn)(-gov|-iso[a-z]?)?-(north|south|east|west|central|"
                         r"northeast|southeast|northwest|southwest)-[0-9]\b", text), "a region"
    assert "arn:aws:" not in text and "arn:aws-" not in text, "a partition: use ${AWS::Partition}"
