"""Package aws_handlers, upload it, and create or update the etl-observer stack through a change set.

    python -m infra_scripts.deploy --env dev --artifact-bucket my-artifacts \\
        --parameter RedshiftWorkgroup=etl --parameter AlertEmail=ops@example.com [--dry-run]

What it does, in order:
  1. checks the inputs: template, state machine definition (every ${...} in it has a DefinitionSubstitution),
     --parameter names, GlueMaxConcurrentRuns >= MapMaxConcurrency;
  2. builds the artifacts, deterministically (same sources -> same bytes):
       lambda.zip     aws_handlers/ (contracts and the ASL included), pure Python: pyarrow and PyYAML come from a
                      layer (--build-layer builds one with pip, or pass --parameter DependencyLayerArn=...);
       glue/etl_observer_aws_handlers-<version>-py3-none-any.whl
                      the same package as a wheel requiring pyarrow and PyYAML; Glue pip-installs it
                      (--additional-python-modules);
       glue/csv_to_parquet.py   the Glue job script;  statemachine/ingest.asl.json   the definition;
     the code version is the SHA-256 of lambda.zip, and everything goes under <prefix>/<code version>/;
  3. uploads them, then creates a change set (CREATE or UPDATE, from describe_stacks), waits for it and
     prints its changes; --dry-run stops here and deletes it (and the empty stack a CREATE change set leaves);
     an empty change set is "no changes", not an error;
  4. executes it, waits for the stack, and prints the stack outputs as JSON on stdout.
Progress goes to stderr. Exit codes: 0 deployed / no changes / dry run done; 1 AWS refused or the stack
failed; 2 bad usage or configuration (arguments, missing files, region, credentials).

Endpoints and region come from the environment only (AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL,
AWS_ENDPOINT_URL_<SERVICE>): boto3 reads them itself, so this module never names an endpoint.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "aws_handlers"
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "template.yaml"
DEFAULT_DEFINITION = PACKAGE_DIR / "statemachine" / "ingest.asl.json"
GRANTS_SQL = Path(__file__).resolve().parent / "redshift_grants.sql"
GLUE_SCRIPT = "aws_handlers/glue/csv_to_parquet.py"
DEFINITION_IN_PACKAGE = "aws_handlers/statemachine/ingest.asl.json"
WHEEL_DIST = "etl_observer_aws_handlers"
# What aws_handlers imports beyond the standard library and boto3 (the Lambda and Glue runtimes have boto3).
RUNTIME_REQUIREMENTS = ("pyarrow>=17", "PyYAML>=6")
MAX_TEMPLATE_BODY = 51_200  # CloudFormation's TemplateBody limit; larger templates go by TemplateURL
NO_CHANGE_REASONS = ("didn't contain changes", "No updates are to be performed")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".DS_Store"}
DATASET_PREFIX_RE = re.compile(r"[a-z][a-z0-9_]{0,62}/")
SET_BY_DEPLOY = ("EnvName", "ArtifactBucket", "ArtifactPrefix", "CodeVersion", "PackageVersion")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or configuration: exit 2."""


class DeployFailed(Exception):
    """AWS refused something or the stack did not reach a *_COMPLETE state: exit 1."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- template reading (CloudFormation YAML tags)

class CfnLoader(yaml.SafeLoader):
    """SafeLoader that reads !Ref, !GetAtt, !Sub ... as their long forms ({"Ref": ...}, {"Fn::GetAtt": [...]})."""


def _cfn_tag(loader: CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path) -> dict[str, Any]:
    """The template as a dict (YAML with short-form tags, or JSON)."""
    text = path.read_text(encoding="utf-8")
    document = yaml.load(text, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(document, dict) or "Resources" not in document:
        raise UsageError(f"{path}: not a CloudFormation template (no Resources)")
    return document


def definition_substitution_names(template: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::StepFunctions::StateMachine":
            names |= set((resource.get("Properties") or {}).get("DefinitionSubstitutions") or {})
    return names


PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")  # as DefinitionSubstitutions reads them


def map_max_concurrency(definition: dict[str, Any]) -> int | None:
    """The largest MaxConcurrency of any Map state in a definition (None: no Map)."""
    found = [state.get("MaxConcurrency", 0) for state in definition.get("States", {}).values() if state.get("Type") == "Map"]
    return max(found) if found else None


def definition_placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER_RE.findall(text))


# ---------------------------------------------------------------- artifacts

def _zip_bytes(entries: Iterable[tuple[str, bytes]], compress: bool = False) -> bytes:
    """A zip whose bytes depend only on the entries' names and contents (fixed dates and modes, sorted)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = method
            archive.writestr(info, data)
    return buffer.getvalue()


def package_files(package_dir: Path = PACKAGE_DIR, definition: Path | None = None) -> list[tuple[str, bytes]]:
    """(archive name, bytes) of every file of aws_handlers/, caches excluded; the definition given replaces
    the packaged ASL so the code version always covers the definition that is deployed."""
    entries: dict[str, bytes] = {}
    for path in sorted(package_dir.rglob("*")):
        if not path.is_file() or EXCLUDED_PARTS & set(path.parts) or path.suffix in (".pyc", ".pyo"):
            continue
        entries[f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}"] = path.read_bytes()
    if definition is not None:
        entries[DEFINITION_IN_PACKAGE] = definition.read_bytes()
    return sorted(entries.items())


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(files: list[tuple[str, bytes]], version: str) -> tuple[str, bytes]:
    """A py3-none-any wheel of aws_handlers (PEP 427), requiring RUNTIME_REQUIREMENTS."""
    dist_info = f"{WHEEL_DIST}-{version}.dist-info"
    metadata = "\n".join([
        "Metadata-Version: 2.1",
        f"Name: {WHEEL_DIST.replace('_', '-')}",
        f"Version: {version}",
        "Summary: etl-observer AWS handlers (Glue job package)",
        "Requires-Python: >=3.11",
        *[f"Requires-Dist: {requirement}" for requirement in RUNTIME_REQUIREMENTS],
        "",
    ]).encode()
    wheel = b"Wheel-Version: 1.0\nGenerator: infra_scripts.deploy\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries = [(name, data) for name, data in files if name.endswith((".py", ".yaml", ".yml", ".json"))]
    entries += [(f"{dist_info}/METADATA", metadata), (f"{dist_info}/WHEEL", wheel),
                (f"{dist_info}/top_level.txt", b"aws_handlers\n")]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in sorted(entries))
    record += f"{dist_info}/RECORD,,\n"
    entries.append((f"{dist_info}/RECORD", record.encode()))
    return f"{WHEEL_DIST}-{version}-py3-none-any.whl", _zip_bytes(entries, compress=True)


def build_layer(work_dir: Path) -> bytes:
    """pyarrow + PyYAML for Lambda python3.11 x86_64 (manylinux wheels through pip; needs the package index)."""
    target = work_dir / "layer" / "python"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
               "--platform", "manylinux2014_x86_64", "--implementation", "cp", "--python-version", "3.11",
               "--only-binary=:all:", *RUNTIME_REQUIREMENTS]
    log(f"building the dependency layer: {' '.join(command[3:])}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployFailed(f"pip could not build the layer:\n{result.stderr.strip()}")
    entries = []
    for path in sorted(target.rglob("*")):
        if path.is_file() and not (EXCLUDED_PARTS & set(path.parts)) and path.suffix != ".pyc":
            entries.append((f"python/{path.relative_to(target).as_posix()}", path.read_bytes()))
    if not entries:
        raise DeployFailed("pip installed nothing into the layer")
    return _zip_bytes(entries, compress=True)


@dataclass
class Artifacts:
    code_version: str
    package_version: str
    objects: dict[str, bytes] = field(default_factory=dict)   # key relative to <prefix>/<code version>/
    wheel_name: str = ""


def build_artifacts(definition: Path, package_version: str, package_dir: Path = PACKAGE_DIR) -> Artifacts:
    files = package_files(package_dir, definition)
    lambda_zip = _zip_bytes(files)
    code_version = hashlib.sha256(lambda_zip).hexdigest()
    wheel_name, wheel = build_wheel(files, package_version)
    by_name = dict(files)
    if GLUE_SCRIPT not in by_name:
        raise UsageError(f"{GLUE_SCRIPT} is missing")
    return Artifacts(code_version=code_version, package_version=package_version, wheel_name=wheel_name, objects={
        "lambda.zip": lambda_zip,
        f"glue/{wheel_name}": wheel,
        "glue/csv_to_parquet.py": by_name[GLUE_SCRIPT],
        "statemachine/ingest.asl.json": by_name[DEFINITION_IN_PACKAGE],
    })


def project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["version"]


# ---------------------------------------------------------------- AWS side

def _client_error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def describe_stack(cfn, stack_name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if _client_error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            return None
        raise
    return stacks[0] if stacks else None


def stack_outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def template_location(s3, bucket: str, key: str, body: str) -> dict[str, str]:
    """TemplateBody when it fits, otherwise a path-style URL on the S3 endpoint the client uses."""
    if len(body.encode("utf-8")) <= MAX_TEMPLATE_BODY:
        return {"TemplateBody": body}
    endpoint = s3.meta.endpoint_url.rstrip("/")
    return {"TemplateURL": f"{endpoint}/{bucket}/{quote(key)}"}


def lookup_workgroup_id(session, workgroup: str) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        found = session.client("redshift-serverless").get_workgroup(workgroupName=workgroup)
    except (ClientError, BotoCoreError) as exc:
        raise UsageError(f"could not look up the id of Redshift Serverless workgroup {workgroup!r} ({exc}); "
                         "pass --parameter RedshiftWorkgroupId=<uuid>") from exc
    return found["workgroup"]["workgroupId"]


def wait_change_set(cfn, change_set_arn: str, poll: float, deadline: float) -> dict[str, Any]:
    while True:
        described = cfn.describe_change_set(ChangeSetName=change_set_arn)
        if described["Status"] in ("CREATE_COMPLETE", "FAILED", "DELETE_COMPLETE", "DELETE_FAILED"):
            return described
        if time.monotonic() > deadline:
            raise DeployFailed(f"change set still {described['Status']} at the timeout")
        time.sleep(poll)


def change_set_changes(cfn, change_set_arn: str, first_page: dict[str, Any]) -> list[dict[str, str]]:
    changes, page = [], first_page
    while True:
        for change in page.get("Changes", []):
            rc = change.get("ResourceChange", {})
            changes.append({"action": rc.get("Action", ""), "logical_id": rc.get("LogicalResourceId", ""),
                            "type": rc.get("ResourceType", ""), "replacement": rc.get("Replacement", "")})
        token = page.get("NextToken")
        if not token:
            return changes
        page = cfn.describe_change_set(ChangeSetName=change_set_arn, NextToken=token)


def print_changes(changes: list[dict[str, str]]) -> None:
    log(f"{len(changes)} change(s):")
    for c in changes:
        replacement = f"  (replacement: {c['replacement']})" if c["action"] == "Modify" and c["replacement"] else ""
        log(f"  {c['action']:<8} {c['logical_id']:<32} {c['type']}{replacement}")


def newest_event_id(cfn, stack_name: str) -> str | None:
    try:
        events = cfn.describe_stack_events(StackName=stack_name).get("StackEvents", [])
    except Exception:  # noqa: BLE001 - progress output only
        return None
    return events[0]["EventId"] if events else None


def events_after(cfn, stack_name: str, marker: str | None) -> list[dict[str, Any]]:
    """The stack's events newer than the event `marker` (first page, newest first), in chronological order."""
    try:
        events = cfn.describe_stack_events(StackName=stack_name).get("StackEvents", [])
    except Exception:  # noqa: BLE001 - progress output only
        return []
    newer = []
    for event in events:
        if event["EventId"] == marker:
            break
        newer.append(event)
    return list(reversed(newer))


def wait_stack(cfn, stack_name: str, poll: float, deadline: float, marker: str | None) -> dict[str, Any]:
    seen: set[str] = set()
    while True:
        stack = describe_stack(cfn, stack_name)
        if stack is None:
            raise DeployFailed(f"stack {stack_name} disappeared")
        for event in events_after(cfn, stack_name, marker):
            if event["EventId"] not in seen:
                seen.add(event["EventId"])
                reason = f" - {event['ResourceStatusReason']}" if event.get("ResourceStatusReason") else ""
                log(f"  {event['ResourceStatus']:<20} {event['LogicalResourceId']}{reason}")
        status = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            return stack
        if time.monotonic() > deadline:
            raise DeployFailed(f"stack still {status} at the timeout")
        time.sleep(poll)


# ---------------------------------------------------------------- the command

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra_scripts.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, help="environment name (EnvName): 2-8 lower-case letters/digits")
    parser.add_argument("--stack-name", help="default: etl-observer-<env>")
    parser.add_argument("--artifact-bucket", default=os.environ.get("ETL_OBSERVER_ARTIFACT_BUCKET"),
                        help="existing bucket for the artifacts, in the stack's region "
                             "(default: $ETL_OBSERVER_ARTIFACT_BUCKET)")
    parser.add_argument("--artifact-prefix", default="etl-observer", help="key prefix (default: etl-observer)")
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="a template parameter; repeatable")
    parser.add_argument("--dry-run", action="store_true",
                        help="upload the (content-addressed) artifacts, create the change set, print it, delete it")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE,
                        help="CloudFormation template (default: infra_scripts/template.yaml)")
    parser.add_argument("--state-machine-definition", type=Path, default=DEFAULT_DEFINITION,
                        help="ASL file (default: aws_handlers/statemachine/ingest.asl.json)")
    parser.add_argument("--build-layer", action="store_true",
                        help="build a pyarrow + PyYAML Lambda layer with pip and deploy it with the stack")
    parser.add_argument("--grants-out", type=Path,
                        help="after deploying, write redshift_grants.sql with this stack's names filled in")
    parser.add_argument("--timeout-minutes", type=float, default=60.0)
    parser.add_argument("--poll-seconds", type=float, default=5.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_parameters(pairs: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--parameter {pair!r}: expected KEY=VALUE")
        if key in SET_BY_DEPLOY:
            raise UsageError(f"--parameter {key}: set by the deploy command itself (use --env/--artifact-*)")
        result[key] = value
    return result


def render_grants(outputs: dict[str, str], database: str, sql: str | None = None) -> str:
    sql = GRANTS_SQL.read_text(encoding="utf-8") if sql is None else sql
    values = {"LoaderDatabaseUser": outputs.get("LoaderDatabaseUser"), "ReaderDatabaseUser": outputs.get("ReaderDatabaseUser"),
              "CopyRoleArn": outputs.get("CopyRoleArn"), "RedshiftDatabase": database}
    missing = sorted(k for k, v in values.items() if not v)
    if missing:
        raise DeployFailed(f"cannot fill in the grants: no {', '.join(missing)} in the stack")
    rendered = PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), sql)
    left = definition_placeholders(rendered)
    if left:
        raise DeployFailed(f"redshift_grants.sql has unknown placeholders: {sorted(left)}")
    return rendered


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"not a number: {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return int(exc.code or 0)
    try:
        return _deploy(args)
    except UsageError as exc:
        log(f"error: {exc}")
        return EXIT_USAGE
    except DeployFailed as exc:
        log(f"deploy failed: {exc}")
        return EXIT_FAILED
    except Exception as exc:  # botocore errors and anything else AWS-side
        from botocore.exceptions import NoCredentialsError, NoRegionError, PartialCredentialsError

        if isinstance(exc, (NoRegionError, NoCredentialsError, PartialCredentialsError)):
            log(f"error: {exc} (configure AWS_REGION/AWS_DEFAULT_REGION and credentials)")
            return EXIT_USAGE
        log(f"deploy failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED


def _deploy(args: argparse.Namespace) -> int:
    import boto3

    started = time.monotonic()
    deadline = started + args.timeout_minutes * 60
    stack_name = args.stack_name or f"etl-observer-{args.env}"
    if not re.fullmatch(r"[a-z][a-z0-9]{1,7}", args.env):
        raise UsageError(f"--env {args.env!r}: 2-8 lower-case letters or digits, starting with a letter")
    if not args.artifact_bucket:
        raise UsageError("--artifact-bucket is required (an existing bucket in the stack's region)")
    prefix = args.artifact_prefix.strip("/")
    if not prefix:
        raise UsageError("--artifact-prefix must not be empty")
    for path, what in ((args.template, "template"), (args.state_machine_definition, "state machine definition")):
        if not path.is_file():
            raise UsageError(f"{what} not found: {path}")

    template = load_template(args.template)
    template_parameters: dict[str, dict[str, Any]] = template.get("Parameters", {})
    definition_text = args.state_machine_definition.read_text(encoding="utf-8")
    try:
        json.loads(definition_text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{args.state_machine_definition}: not JSON ({exc})") from exc
    uncovered = definition_placeholders(definition_text) - definition_substitution_names(template)
    if uncovered:
        raise UsageError(f"the definition uses ${{...}} names the template does not substitute: {sorted(uncovered)}")
    given = parse_parameters(args.parameter)
    unknown = sorted(set(given) - set(template_parameters))
    if unknown:
        raise UsageError(f"unknown template parameter(s): {unknown} (known: {sorted(template_parameters)})")

    session = boto3.session.Session()
    if not session.region_name:
        raise UsageError("no region: set AWS_REGION or AWS_DEFAULT_REGION")
    s3, cfn = session.client("s3"), session.client("cloudformation")
    log(f"stack {stack_name} in {session.region_name}")

    existing = describe_stack(cfn, stack_name)
    status = existing["StackStatus"] if existing else None
    if status and status.endswith("_IN_PROGRESS") and status != "REVIEW_IN_PROGRESS":
        raise DeployFailed(f"stack {stack_name} is busy ({status})")
    if status in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"):
        raise DeployFailed(f"stack {stack_name} is {status}: it cannot be updated; delete it first "
                           "(aws cloudformation delete-stack), then deploy again")
    change_set_type = "CREATE" if status in (None, "REVIEW_IN_PROGRESS") else "UPDATE"
    previous = {p["ParameterKey"]: p.get("ParameterValue") for p in (existing or {}).get("Parameters", [])} \
        if change_set_type == "UPDATE" else {}

    # ---- artifacts
    package_version = project_version()
    artifacts = build_artifacts(args.state_machine_definition, package_version)
    version_prefix = f"{prefix}/{artifacts.code_version}"
    log(f"code version {artifacts.code_version} ({len(artifacts.objects['lambda.zip']):,} byte zip)")
    template_body = args.template.read_text(encoding="utf-8")
    template_key = (f"{version_prefix}/templates/"
                    f"{hashlib.sha256(template_body.encode()).hexdigest()[:16]}{args.template.suffix or '.yaml'}")
    uploads = {f"{version_prefix}/{name}": data for name, data in artifacts.objects.items()}
    uploads[template_key] = template_body.encode("utf-8")
    if args.build_layer:
        with tempfile.TemporaryDirectory() as work:
            layer = build_layer(Path(work))
        layer_key = f"{prefix}/layers/deps-{hashlib.sha256(layer).hexdigest()}.zip"
        uploads[layer_key] = layer
        given.setdefault("DependencyLayerKey", layer_key)

    # ---- parameters
    values: dict[str, str] = {"EnvName": args.env, "ArtifactBucket": args.artifact_bucket, "ArtifactPrefix": prefix,
                              "CodeVersion": artifacts.code_version, "PackageVersion": package_version, **given}
    # Like `aws cloudformation deploy`: a parameter not given keeps its deployed value (UsePreviousValue);
    # one whose deployed value is the template default is simply omitted, which means the same thing.
    use_previous = [name for name, spec in template_parameters.items() if name not in values and name in previous
                    and ("Default" not in spec or str(spec["Default"]) != str(previous[name]))]
    if ("RedshiftWorkgroupId" in template_parameters and "RedshiftWorkgroupId" not in values
            and "RedshiftWorkgroupId" not in use_previous and values.get("RedshiftWorkgroup")):
        values["RedshiftWorkgroupId"] = lookup_workgroup_id(session, values["RedshiftWorkgroup"])
    missing = sorted(name for name, spec in template_parameters.items()
                     if name not in values and name not in use_previous and "Default" not in spec)
    if missing:
        raise UsageError(f"missing parameter(s): {missing} (pass --parameter KEY=VALUE)")

    def effective(name: str) -> Any:
        if name in values:
            return values[name]
        if name in use_previous:
            return previous[name]
        return template_parameters.get(name, {}).get("Default")

    if {"GlueMaxConcurrentRuns", "MapMaxConcurrency"} <= set(template_parameters):
        # The Map's concurrency is the definition's literal; the parameter only documents it (as a tag),
        # so it must say the same, and Glue must allow at least that many runs.
        in_definition = map_max_concurrency(json.loads(definition_text))
        if in_definition is not None and _number(effective("MapMaxConcurrency")) != in_definition:
            raise UsageError(f"MapMaxConcurrency ({effective('MapMaxConcurrency')}) must equal the Map's "
                             f"MaxConcurrency in {args.state_machine_definition.name} ({in_definition})")
        if _number(effective("GlueMaxConcurrentRuns")) < _number(effective("MapMaxConcurrency")):
            raise UsageError(f"GlueMaxConcurrentRuns ({effective('GlueMaxConcurrentRuns')}) must be >= "
                             f"MapMaxConcurrency ({effective('MapMaxConcurrency')})")
    if "DatasetPrefixes" in template_parameters:
        # start_batch takes the dataset from the key's first folder: each prefix must be exactly "<dataset>/"
        # (aws_handlers.core.contract.DATASET_PATTERN), which also keeps EventBridge wildcards out of it.
        bad = [p for p in str(effective("DatasetPrefixes")).split(",") if not DATASET_PREFIX_RE.fullmatch(p.strip())]
        if bad:
            raise UsageError(f"DatasetPrefixes: {bad} - each must be '<dataset>/' with a dataset name like 'employees'")
    if not (effective("DependencyLayerKey") or effective("DependencyLayerArn")):
        log("warning: no dependency layer - the Lambdas import pyarrow and PyYAML; pass --build-layer or "
            "--parameter DependencyLayerArn=<layer version arn>")

    # ---- upload
    for key, data in uploads.items():
        s3.put_object(Bucket=args.artifact_bucket, Key=key, Body=data,
                      Metadata={"sha256": hashlib.sha256(data).hexdigest()})
    log(f"uploaded {len(uploads)} object(s) to s3://{args.artifact_bucket}/{version_prefix}/")

    # ---- change set
    parameters = [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in sorted(values.items())]
    parameters += [{"ParameterKey": k, "UsePreviousValue": True} for k in sorted(use_previous)]
    change_set_name = f"etl-observer-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{artifacts.code_version[:8]}"
    created = cfn.create_change_set(
        StackName=stack_name, ChangeSetName=change_set_name, ChangeSetType=change_set_type,
        Parameters=parameters, Capabilities=["CAPABILITY_IAM"],
        Description=f"etl-observer {package_version}+sha256.{artifacts.code_version[:12]}",
        Tags=[{"Key": "project", "Value": "etl-observer"}, {"Key": "env", "Value": args.env}],
        **template_location(s3, args.artifact_bucket, template_key, template_body))
    change_set_arn = created["Id"]
    log(f"change set {change_set_name} ({change_set_type})")
    described = wait_change_set(cfn, change_set_arn, args.poll_seconds, deadline)
    summary = {"stack_name": stack_name, "change_set_type": change_set_type, "dry_run": args.dry_run,
               "code_version": artifacts.code_version}

    def discard() -> None:
        cfn.delete_change_set(ChangeSetName=change_set_arn)
        if change_set_type == "CREATE" and existing is None:  # the empty stack this change set created
            cfn.delete_stack(StackName=stack_name)

    if described["Status"] == "FAILED":
        reason = described.get("StatusReason", "")
        if any(text in reason for text in NO_CHANGE_REASONS):
            log("no changes")
            cfn.delete_change_set(ChangeSetName=change_set_arn)
            if args.dry_run:
                print(json.dumps({**summary, "changes": []}, indent=2))
            else:
                current = describe_stack(cfn, stack_name) or {}
                _finish(args, current)
            return EXIT_OK
        discard()
        raise DeployFailed(f"change set failed: {reason}")
    changes = change_set_changes(cfn, change_set_arn, described)
    print_changes(changes)
    if args.dry_run:
        discard()
        log("dry run: change set deleted, nothing executed")
        print(json.dumps({**summary, "changes": changes}, indent=2))
        return EXIT_OK

    # ---- execute
    marker = newest_event_id(cfn, stack_name)
    cfn.execute_change_set(ChangeSetName=change_set_arn)
    log("executing ...")
    stack = wait_stack(cfn, stack_name, args.poll_seconds, deadline, marker)
    if stack["StackStatus"] not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        failures = [e for e in events_after(cfn, stack_name, marker) if e.get("ResourceStatus", "").endswith("FAILED")]
        details = "; ".join(f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}" for e in failures[:10])
        raise DeployFailed(f"stack {stack['StackStatus']}" + (f" ({details})" if details else ""))
    log(f"stack {stack['StackStatus']} in {time.monotonic() - started:.1f}s")
    _finish(args, stack)
    return EXIT_OK


def _finish(args: argparse.Namespace, stack: dict[str, Any]) -> None:
    outputs = stack_outputs(stack)
    if args.grants_out:
        database = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters", [])}.get(
            "RedshiftDatabase") or "dev"
        args.grants_out.write_text(render_grants(outputs, database), encoding="utf-8")
        log(f"grants written to {args.grants_out}: run them as a Redshift admin")
    if outputs.get("CopyRoleArn"):
        log(f"reminder: the COPY role must be associated with the Redshift Serverless namespace: {outputs['CopyRoleArn']}")
    print(json.dumps(outputs, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
