"""infra_scripts.deploy without a server: artifacts, parameter handling, failure paths (fake AWS clients)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from infra_test_support import DEFINITION, TEMPLATE, doc_substitution_names, stub_definition
from infra_scripts import deploy

WORKGROUP_ID = "0b5c2c8e-7f0e-4d5b-9a51-2f3f3c7d1e42"


@pytest.fixture
def definition(tmp_path) -> Path:
    path = tmp_path / "ingest.asl.json"
    path.write_text(stub_definition(doc_substitution_names()), encoding="utf-8")
    return path


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = deploy.main(argv)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- artifacts

def test_artifacts_are_deterministic_and_versioned_by_content(definition, tmp_path):
    first = deploy.build_artifacts(definition, "0.1.0")
    second = deploy.build_artifacts(definition, "0.1.0")
    assert first.objects == second.objects and first.code_version == second.code_version
    assert first.code_version == hashlib.sha256(first.objects["lambda.zip"]).hexdigest()
    changed = tmp_path / "changed.asl.json"
    changed.write_text(definition.read_text().replace("Done", "Finished"))
    assert deploy.build_artifacts(changed, "0.1.0").code_version != first.code_version


def test_lambda_zip_is_the_package_with_contracts_and_the_deployed_definition(definition):
    artifacts = deploy.build_artifacts(definition, "0.1.0")
    with zipfile.ZipFile(io.BytesIO(artifacts.objects["lambda.zip"])) as archive:
        names = set(archive.namelist())
        assert archive.read(deploy.DEFINITION_IN_PACKAGE) == definition.read_bytes()
    assert {"aws_handlers/__init__.py", "aws_handlers/contracts/employees.yaml", "aws_handlers/core/contract.py",
            "aws_handlers/glue/csv_to_parquet.py", "aws_handlers/lambdas/__init__.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or not n.startswith("aws_handlers/")]
    assert artifacts.objects["glue/csv_to_parquet.py"] == (deploy.PACKAGE_DIR / "glue" / "csv_to_parquet.py").read_bytes()
    assert artifacts.objects["statemachine/ingest.asl.json"] == definition.read_bytes()


def test_the_glue_wheel_is_a_valid_wheel_that_imports_aws_handlers(definition, tmp_path):
    artifacts = deploy.build_artifacts(definition, "0.1.0")
    wheel = tmp_path / artifacts.wheel_name
    wheel.write_bytes(artifacts.objects[f"glue/{artifacts.wheel_name}"])
    assert artifacts.wheel_name == "etl_observer_aws_handlers-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        record = archive.read("etl_observer_aws_handlers-0.1.0.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.rsplit(",", 2)
            if digest:
                data = archive.read(name)
                assert digest == deploy._record_hash(data) and int(size) == len(data), name
        assert len(record) == len(archive.namelist())
    probe = ("import sys, importlib.metadata as m; sys.path.insert(0, sys.argv[1]); "
             "import aws_handlers.core.load_sql as s, aws_handlers.glue.csv_to_parquet as g; "
             "from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR as d; "
             "print(s.__file__.startswith(sys.argv[1]), m.requires('etl-observer-aws-handlers'), "
             "(d / 'employees.yaml').exists())")
    result = subprocess.run([sys.executable, "-I", "-c", probe, str(wheel)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1)[0] == "True"
    assert "['pyarrow>=17', 'PyYAML>=6']" in result.stdout


def test_template_location_uses_the_body_when_it_fits_and_a_path_style_url_otherwise():
    class S3:
        class meta:
            endpoint_url = "https://s3.eu-central-1.amazonaws.com"

    assert deploy.template_location(S3, "b", "p/t.yaml", "x" * 100) == {"TemplateBody": "x" * 100}
    assert deploy.template_location(S3, "b", "p/t.yaml", "x" * 60_000) == {
        "TemplateURL": "https://s3.eu-central-1.amazonaws.com/b/p/t.yaml"}


# ---------------------------------------------------------------- fake AWS

class FakeCloudFormation:
    def __init__(self, existing: dict | None = None, final_status: str = "CREATE_COMPLETE"):
        self.stack = existing
        self.final_status = final_status
        self.calls: list[tuple[str, dict]] = []
        self.events: list[dict] = []

    def describe_stacks(self, StackName):
        self.calls.append(("describe_stacks", {}))
        if self.stack is None:
            raise ClientError({"Error": {"Code": "ValidationError", "Message": f"Stack with id {StackName} does not exist"}},
                              "DescribeStacks")
        return {"Stacks": [self.stack]}

    def create_change_set(self, **kwargs):
        self.calls.append(("create_change_set", kwargs))
        if self.stack is None:
            self.stack = {"StackName": kwargs["StackName"], "StackStatus": "REVIEW_IN_PROGRESS"}
        return {"Id": "arn:change-set", "StackId": "arn:stack"}

    def describe_change_set(self, ChangeSetName, NextToken=None):
        return {"Status": "CREATE_COMPLETE", "Changes": [{"ResourceChange": {
            "Action": "Add", "LogicalResourceId": "LandingBucket", "ResourceType": "AWS::S3::Bucket"}}]}

    def delete_change_set(self, ChangeSetName):
        self.calls.append(("delete_change_set", {}))

    def delete_stack(self, StackName):
        self.calls.append(("delete_stack", {}))

    def execute_change_set(self, ChangeSetName):
        self.calls.append(("execute_change_set", {}))
        now = datetime.now(timezone.utc)
        self.stack = {**self.stack, "StackStatus": self.final_status, "Outputs": [
            {"OutputKey": "LandingBucketName", "OutputValue": "landing"}]}
        if "ROLLBACK" in self.final_status:
            self.events = [{"EventId": "1", "Timestamp": now, "LogicalResourceId": "GlueJob",
                            "ResourceStatus": "CREATE_FAILED", "ResourceStatusReason": "Glue said no"}]

    def describe_stack_events(self, StackName):
        return {"StackEvents": self.events}


class FakeS3:
    class meta:
        endpoint_url = "https://s3.example.test"

    def __init__(self):
        self.keys: list[str] = []

    def put_object(self, Bucket, Key, Body, Metadata):
        self.keys.append(Key)


class FakeSession:
    region_name = "eu-west-3"

    def __init__(self, cfn: FakeCloudFormation):
        self.cfn, self.s3 = cfn, FakeS3()

    def client(self, service):
        return {"cloudformation": self.cfn, "s3": self.s3}[service]


@pytest.fixture
def fake(monkeypatch):
    import boto3

    holder: dict = {}

    def install(cfn: FakeCloudFormation) -> FakeSession:
        session = FakeSession(cfn)
        monkeypatch.setattr(boto3.session, "Session", lambda: session)
        holder["session"] = session
        return session

    return install


def base_args(definition: Path, *extra: str) -> list[str]:
    return ["--env", "dev", "--artifact-bucket", "artifacts", "--state-machine-definition", str(definition),
            "--template", str(TEMPLATE), "--poll-seconds", "0", "--parameter", "RedshiftWorkgroup=wg",
            "--parameter", f"RedshiftWorkgroupId={WORKGROUP_ID}", *extra]


def test_a_stack_that_rolls_back_exits_1_with_the_failed_resources(fake, definition):
    session = fake(FakeCloudFormation(final_status="ROLLBACK_COMPLETE"))
    code, out, err = run(base_args(definition))
    assert code == 1 and out == ""
    assert "ROLLBACK_COMPLETE" in err and "GlueJob: Glue said no" in err
    assert ("execute_change_set", {}) in session.cfn.calls


def test_a_rolled_back_stack_is_not_updated(fake, definition):
    session = fake(FakeCloudFormation(existing={"StackName": "etl-observer-dev", "StackStatus": "ROLLBACK_COMPLETE"}))
    code, _out, err = run(base_args(definition))
    assert code == 1 and "delete it first" in err
    assert session.s3.keys == [] and not [c for c, _ in session.cfn.calls if c == "create_change_set"]


def test_parameters_not_given_keep_their_deployed_values(fake, definition):
    existing = {"StackName": "etl-observer-dev", "StackStatus": "UPDATE_COMPLETE", "Parameters": [
        {"ParameterKey": "AlertEmail", "ParameterValue": "ops@example.com"},     # not the default: kept
        {"ParameterKey": "DatasetPrefixes", "ParameterValue": "employees/"},      # the default: omitted
        {"ParameterKey": "RedshiftDatabase", "ParameterValue": "analytics"},
    ]}
    session = fake(FakeCloudFormation(existing=existing, final_status="UPDATE_COMPLETE"))
    code, out, err = run(base_args(definition))
    assert code == 0, err
    assert json.loads(out) == {"LandingBucketName": "landing"}
    kwargs = next(k for c, k in session.cfn.calls if c == "create_change_set")
    assert kwargs["ChangeSetType"] == "UPDATE"
    previous = {p["ParameterKey"] for p in kwargs["Parameters"] if p.get("UsePreviousValue")}
    given = {p["ParameterKey"]: p["ParameterValue"] for p in kwargs["Parameters"] if "ParameterValue" in p}
    assert previous == {"AlertEmail", "RedshiftDatabase"}
    assert given["EnvName"] == "dev" and given["RedshiftWorkgroup"] == "wg" and "DatasetPrefixes" not in given
    assert kwargs["Capabilities"] == ["CAPABILITY_IAM"]
    assert "TemplateURL" in kwargs and kwargs["TemplateURL"].startswith("https://s3.example.test/artifacts/")


def test_build_layer_uploads_a_layer_and_passes_its_key(fake, definition, monkeypatch):
    def fake_pip(command, capture_output, text):
        target = Path(command[command.index("--target") + 1])
        (target / "yaml").mkdir(parents=True)
        (target / "yaml" / "__init__.py").write_text("# fake")
        assert "--platform" in command and "manylinux2014_x86_64" in command and "3.11" in command
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(deploy.subprocess, "run", fake_pip)
    session = fake(FakeCloudFormation())
    code, _out, err = run(base_args(definition, "--build-layer", "--dry-run"))
    assert code == 0, err
    layer_keys = [k for k in session.s3.keys if "/layers/deps-" in k]
    assert len(layer_keys) == 1
    kwargs = next(k for c, k in session.cfn.calls if c == "create_change_set")
    assert {"ParameterKey": "DependencyLayerKey", "ParameterValue": layer_keys[0]} in kwargs["Parameters"]
    assert "warning: no dependency layer" not in err
    assert ("delete_stack", {}) in session.cfn.calls  # the dry run removes the empty stack its CREATE made


def test_a_definition_name_the_template_does_not_substitute_is_refused(definition):
    definition.write_text(json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": "${Nope}", "End": True}}}))
    code, _out, err = run(base_args(definition))
    assert code == 2 and "Nope" in err


def test_dataset_prefixes_must_be_dataset_folders(fake, definition):
    fake(FakeCloudFormation())
    for prefixes in ("employees", "employees/*", "Employees/", "employees/,hr/x/"):
        code, _out, err = run(base_args(definition, "--parameter", f"DatasetPrefixes={prefixes}"))
        assert code == 2 and "DatasetPrefixes" in err, prefixes
    assert run(base_args(definition, "--parameter", "DatasetPrefixes=employees/,hr_2/", "--dry-run"))[0] == 0


def test_no_region_is_a_usage_error(definition, monkeypatch, tmp_path):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _out, err = run(base_args(definition))
    assert code == 2 and "region" in err


def test_help_exits_0():
    assert run(["--help"])[0] == 0


def test_real_definition_is_accepted_when_present():
    if not DEFINITION.is_file():
        pytest.skip("ingest.asl.json not written yet")
    template = deploy.load_template(TEMPLATE)
    assert deploy.definition_placeholders(DEFINITION.read_text()) <= deploy.definition_substitution_names(template)


def test_map_max_concurrency_is_read_from_the_real_definition():
    import json as _json
    from pathlib import Path as _Path

    from infra_scripts.deploy import map_max_concurrency

    definition = _json.loads((_Path(__file__).resolve().parents[2] / "aws_handlers/statemachine/ingest.asl.json").read_text())
    assert map_max_concurrency(definition) == 10
    assert map_max_concurrency({"States": {"P": {"Type": "Pass"}}}) is None
