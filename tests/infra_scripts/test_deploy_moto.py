"""infra_scripts.deploy against a moto server: package, upload, change set, dry run, execute, outputs, no-op.

Moto's CloudFormation lacks some of the template's resource types; the stack deployed here is the moto
variant of template.yaml (infra_test_support.moto_variant): those types stripped - exactly
MOTO_UNSUPPORTED_TYPES: AWS::CloudWatch::Alarm, AWS::Glue::Job, AWS::Glue::SecurityConfiguration,
AWS::S3::BucketPolicy, AWS::SNS::Subscription, AWS::SQS::QueuePolicy - and the state machine definition
and the rule's event pattern written the way moto reads them (MOTO_PROPERTY_REWRITES). One moto gap is
patched in the server (the suite's moto server runs in this process): ExecuteChangeSet does not refresh the stack's Outputs
(_apply_and_refresh_outputs). Everything the deploy command does runs unchanged.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re

import pytest
from moto.cloudformation.models import ChangeSet

from infra_test_support import (DEFINITION, MOTO_PROPERTY_REWRITES, MOTO_UNSUPPORTED_TYPES, TEMPLATE,
                                doc_substitution_names, moto_variant, stub_definition)
from infra_scripts import deploy

REGION = "eu-west-1"
ARTIFACTS = "artifacts-for-infra-scripts-tests"
WORKGROUP_ID = "0b5c2c8e-7f0e-4d5b-9a51-2f3f3c7d1e42"
PARAMETERS = ["RedshiftWorkgroup=etl-wg", f"RedshiftWorkgroupId={WORKGROUP_ID}", "RedshiftDatabase=dev",
              "DatasetPrefixes=employees/,departments/", "LambdaReservedConcurrency=-1"]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = deploy.main(argv)
    return code, out.getvalue(), err.getvalue()


_original_apply = ChangeSet.apply


def _apply_and_refresh_outputs(self) -> None:
    """Moto 5.2.5 does not recompute a stack's Outputs when a change set executes (CreateStack/UpdateStack
    do): recompute them the way its Stack.update does, so describe_stacks returns them as CloudFormation would."""
    _original_apply(self)
    self.stack.template = self.template
    self.stack._parse_template()
    self.stack.output_map = self.stack._create_output_map()


@pytest.fixture(scope="module")
def aws(moto_endpoint, tmp_path_factory):
    """The suite's moto server (tests/conftest.py: ThreadedMotoServer on 127.0.0.1, port 0) and an environment
    that points every boto3 client at it. Moto's state is per process, so assertions compare before/after."""
    port = moto_endpoint.rsplit(":", 1)[1]
    # "localhost", not 127.0.0.1, in the URL: moto resolves a TemplateURL only for localhost or *.amazonaws.com
    # hosts, and the moto variant of the template is over the 51,200-byte TemplateBody limit.
    endpoint = f"http://localhost:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS")):
                mp.delenv(name, raising=False)
        mp.delenv("AWS_REGION", raising=False)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_SESSION_TOKEN", "testing")
        mp.setenv("AWS_CONFIG_FILE", str(tmp_path_factory.mktemp("aws") / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path_factory.mktemp("aws") / "credentials"))
        mp.setattr(ChangeSet, "apply", _apply_and_refresh_outputs)
        import boto3

        boto3.client("s3").create_bucket(Bucket=ARTIFACTS, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield boto3.session.Session()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The moto variant of the template and the definition it inlines (the real one, or a stub until it exists)."""
    work = tmp_path_factory.mktemp("deploy")
    definition = work / "ingest.asl.json"
    definition.write_text(DEFINITION.read_text(encoding="utf-8") if DEFINITION.is_file()
                          else stub_definition(doc_substitution_names()), encoding="utf-8")
    given = dict(p.split("=", 1) for p in PARAMETERS)
    variant, stripped = moto_variant(deploy.load_template(TEMPLATE), definition.read_text(encoding="utf-8"), given)
    template = work / "template.moto.json"
    template.write_text(json.dumps(variant, separators=(",", ":")), encoding="utf-8")
    return {"template": template, "definition": definition, "stripped": stripped}


def argv(inputs, *extra: str) -> list[str]:
    args = ["--env", "test", "--artifact-bucket", ARTIFACTS, "--template", str(inputs["template"]),
            "--state-machine-definition", str(inputs["definition"]), "--poll-seconds", "0.05",
            "--timeout-minutes", "1"]
    for parameter in PARAMETERS:
        args += ["--parameter", parameter]
    return args + list(extra)


@pytest.fixture(scope="module")
def deployed(aws, inputs):
    """Dry run, then the real deploy, then the same deploy again: the three results, in order."""
    cfn, s3 = aws.client("cloudformation"), aws.client("s3")

    def state() -> dict:
        return {"stacks": sorted(s["StackName"] for s in cfn.list_stacks()["StackSummaries"]
                                 if s["StackStatus"] != "DELETE_COMPLETE"),
                "buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"])}

    before_dry = state()
    dry = run(argv(inputs, "--dry-run"))
    after_dry = state()
    real = run(argv(inputs))
    again = run(argv(inputs))
    return {"dry": dry, "before_dry": before_dry, "after_dry": after_dry, "real": real, "again": again}


def test_stripped_types_are_exactly_the_documented_ones(inputs):
    assert inputs["stripped"] == MOTO_UNSUPPORTED_TYPES
    assert MOTO_PROPERTY_REWRITES == ("StateMachine.DefinitionS3Location", "LandingCsvRule.EventPattern")


def test_dry_run_prints_the_changes_and_creates_nothing(deployed):
    code, out, err = deployed["dry"]
    assert code == 0, err
    summary = json.loads(out)
    assert summary["dry_run"] is True and summary["change_set_type"] == "CREATE"
    added = {c["logical_id"] for c in summary["changes"] if c["action"] == "Add"}
    assert {"LandingBucket", "StagingBucket", "StateMachine", "StartBatchFunction", "RedshiftCopyRole"} <= added
    assert "StartBatchFunction" in err and "dry run" in err
    assert deployed["after_dry"] == deployed["before_dry"]
    assert "etl-observer-test" not in deployed["after_dry"]["stacks"]
    assert not [b for b in deployed["after_dry"]["buckets"] if b.startswith("etl-observer-test-")]


def test_deploy_prints_the_outputs_as_json(deployed):
    code, out, err = deployed["real"]
    assert code == 0, err
    outputs = json.loads(out)
    assert outputs["LandingBucketName"].startswith("etl-observer-test-landing-")
    assert outputs["StagingBucketName"].startswith("etl-observer-test-staging-")
    assert outputs["StateMachineArn"].endswith(":stateMachine:etl-observer-test-ingest")
    assert outputs["AlertTopicArn"].endswith(":etl-observer-test-alerts")
    assert ":role/" in outputs["CopyRoleArn"]
    assert outputs["LoaderDatabaseUser"].startswith("IAMR:")
    assert set(outputs) >= {"GlueJobName", "CodeVersion", "ReaderDatabaseUser", "DeadLetterQueueUrl"}


def test_second_deploy_is_no_changes(deployed):
    code, out, err = deployed["again"]
    assert code == 0, err
    assert "no changes" in err
    assert json.loads(out) == json.loads(deployed["real"][1])


def test_artifacts_are_uploaded_under_the_code_version(aws, deployed):
    outputs = json.loads(deployed["real"][1])
    version = outputs["CodeVersion"].rsplit("sha256.", 1)[1]
    s3 = aws.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACTS, Prefix=f"etl-observer/{version}/")["Contents"]}
    assert {f"etl-observer/{version}/lambda.zip", f"etl-observer/{version}/glue/csv_to_parquet.py",
            f"etl-observer/{version}/statemachine/ingest.asl.json",
            f"etl-observer/{version}/glue/etl_observer_aws_handlers-{deploy.project_version()}-py3-none-any.whl"} <= keys
    import hashlib
    body = s3.get_object(Bucket=ARTIFACTS, Key=f"etl-observer/{version}/lambda.zip")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == version


def test_resources_exist_in_moto(aws, deployed, inputs):
    outputs = json.loads(deployed["real"][1])
    s3 = aws.client("s3")
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {outputs["LandingBucketName"], outputs["StagingBucketName"], outputs["AccessLogBucketName"]} <= buckets
    encryption = s3.get_bucket_encryption(Bucket=outputs["StagingBucketName"])
    assert encryption["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"][
        "SSEAlgorithm"] == "aws:kms"
    assert aws.client("sns").get_topic_attributes(TopicArn=outputs["AlertTopicArn"])["Attributes"]

    copy_role = aws.client("iam").get_role(RoleName=outputs["CopyRoleArn"].rsplit("/", 1)[1])["Role"]
    trusted = {s for st in copy_role["AssumeRolePolicyDocument"]["Statement"]
               for s in ([st["Principal"]["Service"]] if isinstance(st["Principal"]["Service"], str)
                         else st["Principal"]["Service"])}
    assert trusted == {"redshift.amazonaws.com", "redshift-serverless.amazonaws.com"}

    lam = aws.client("lambda")
    start = lam.get_function(FunctionName="etl-observer-test-start-batch")["Configuration"]
    assert start["Handler"] == "aws_handlers.lambdas.start_batch.handler" and start["Runtime"] == "python3.11"
    env = start["Environment"]["Variables"]
    assert env["STATE_MACHINE_ARN"] == outputs["StateMachineArn"]
    assert env["LANDING_BUCKET"] == outputs["LandingBucketName"]
    assert env["ETL_OBSERVER_CODE_VERSION"] == outputs["CodeVersion"]
    for name, module in (("validate-batch", "validate_batch"), ("prepare-load", "prepare_load"),
                         ("write-evidence", "write_evidence")):
        config = lam.get_function(FunctionName=f"etl-observer-test-{name}")["Configuration"]
        assert config["Handler"] == f"aws_handlers.lambdas.{module}.handler"
        assert "STATE_MACHINE_ARN" not in config["Environment"]["Variables"]

    machine = aws.client("stepfunctions").describe_state_machine(stateMachineArn=outputs["StateMachineArn"])
    assert machine["definition"] == inputs["definition"].read_text(encoding="utf-8")

    events = aws.client("events")
    rule = events.describe_rule(Name="etl-observer-test-landing-csv")
    pattern = json.loads(rule["EventPattern"])
    assert pattern["detail"]["bucket"]["name"] == [outputs["LandingBucketName"]]
    assert {"wildcard": "departments/*.csv"} in pattern["detail"]["object"]["key"]
    targets = events.list_targets_by_rule(Rule="etl-observer-test-landing-csv")["Targets"]
    assert [t["Arn"] for t in targets] == [start["FunctionArn"]]


def test_grants_are_rendered_from_the_outputs(aws, inputs, deployed, tmp_path):
    out_file = tmp_path / "grants.sql"
    code, out, err = run(argv(inputs, "--grants-out", str(out_file)))
    assert code == 0, err
    outputs = json.loads(out)
    sql = out_file.read_text()
    assert f'GRANT ROLE etl_loader TO "{outputs["LoaderDatabaseUser"]}"' in sql
    assert f"GRANT ASSUMEROLE ON '{outputs['CopyRoleArn']}' TO ROLE etl_loader FOR COPY" in sql
    assert 'GRANT TEMP ON DATABASE "dev" TO ROLE etl_loader' in sql
    assert not re.search(r"\$\{[A-Za-z0-9_]+\}", sql)


def test_usage_errors_exit_2(aws, inputs):
    assert run(argv(inputs, "--parameter", "NoSuchParameter=1"))[0] == 2
    assert run(argv(inputs, "--parameter", "CodeVersion=abc"))[0] == 2
    assert run(argv(inputs, "--parameter", "GlueMaxConcurrentRuns=5", "--parameter", "MapMaxConcurrency=10"))[0] == 2
    # the parameter documents the definition's Map concurrency; it cannot claim another value
    code, _, err = run(argv(inputs, "--parameter", "GlueMaxConcurrentRuns=20", "--parameter", "MapMaxConcurrency=20"))
    assert code == 2 and "must equal the Map's MaxConcurrency" in err
    assert run(["--env", "Not_Valid", "--artifact-bucket", ARTIFACTS])[0] == 2
    assert run(["--env", "test"])[0] == 2  # no --artifact-bucket
    assert run(["--bogus"])[0] == 2


def test_aws_refusal_exits_1(aws, inputs, deployed):
    """A second stack for the same environment: its bucket names are taken, AWS refuses, exit 1."""
    code, out, err = run(argv(inputs, "--stack-name", "etl-observer-test-duplicate"))
    assert code == 1, err
    assert "deploy failed" in err and out == ""
