"""`make demo-aws`: watch Dagster auto-track AWS executions without an AWS account.

THIS IS A SIMULATION OF AWS. A local moto server stands in for S3 and Step Functions; the state
machine is a stand-in whose Pass state returns the documented execution output (no Glue, no
Redshift run). What is real: the start_batch Lambda code that turns an S3 event into an execution,
and the Dagster definitions in aws mode (ETL_OBSERVER_ENV=aws) with their S3 and Step Functions
sensors, pointed at the emulator only through the standard AWS_ENDPOINT_URL variable.

  python -m infra_scripts.demo_aws            # set up, then run `dagster dev` in aws mode
  python -m infra_scripts.demo_aws --no-dev   # set up only; prints the environment as JSON
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LANDING, STAGING = "etl-observer-demo-landing", "etl-observer-demo-staging"


def stand_in_definition() -> dict:
    """Choice on the file name: '*bad*' fails like a Glue conversion error, the rest succeed."""
    staging = f"s3://{STAGING}"
    return {
        "Comment": "SIMULATION: stand-in for ingest.asl.json, producing the documented execution output",
        "StartAt": "IsBadFile",
        "States": {
            "IsBadFile": {"Type": "Choice", "Default": "Converted",
                          "Choices": [{"Variable": "$.files[0]", "StringMatches": "*bad*", "Next": "ConversionFailed"}]},
            "ConversionFailed": {"Type": "Fail", "Error": "GlueJobRunFailed",
                                 "Cause": "Glue job run failed: bad.csv line 3, column salary: \"12,5O0\" is not a decimal(12,2)"},
            "Converted": {"Type": "Pass", "End": True, "Parameters": {
                "status": "SUCCEEDED", "total_loaded_rows": 10, "successful_conversions": 1, "successful_loads": 1,
                "failure_count": 0, "batch_id.$": "$.batch_id", "dataset.$": "$.dataset",
                "evidence_uri": f"{staging}/evidence/employees/report.json", "code_version": "SIMULATION (moto stand-in, not AWS)",
                "assets": {
                    "staging_parquet": {"rows": 10, "files": [{"source_key.$": "$.files[0]", "parquet_uri": f"{staging}/employees/x.parquet",
                                                               "parquet_sha256": "0" * 64, "rows": 10}]},
                    "warehouse_table": {"table": "public.employees", "rows_inserted": 10, "table_rows_after": 10, "duplicates": []},
                    "evidence_report": {"uri": f"{staging}/evidence/employees/report.json",
                                        "html_uri": f"{staging}/evidence/employees/report.html", "sha256": "", "sequence": 1}},
                "errors": []}},
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen:
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto_server did not start")


def set_up(endpoint: str, files: dict[str, bytes]) -> dict[str, str]:
    """Buckets, the stand-in state machine, the files, and one execution per file (via the real
    start_batch handler, as EventBridge would invoke it). Returns the environment for aws mode."""
    import boto3

    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    request = urllib.request.Request(f"{endpoint}/moto-api/config", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode())
    urllib.request.urlopen(request, timeout=5)
    s3, sfn = boto3.client("s3"), boto3.client("stepfunctions")
    for bucket in (LANDING, STAGING):
        s3.create_bucket(Bucket=bucket)
    machine = sfn.create_state_machine(name="etl-observer-demo-ingest", definition=json.dumps(stand_in_definition()),
                                       roleArn="arn:aws:iam::123456789012:role/demo-sfn")["stateMachineArn"]
    os.environ["STATE_MACHINE_ARN"] = machine
    from aws_handlers.lambdas import _runtime, start_batch

    _runtime.client.cache_clear()
    for key, body in files.items():
        put = s3.put_object(Bucket=LANDING, Key=key, Body=body)
        event = {"detail-type": "Object Created", "source": "aws.s3", "time": "2026-01-01T00:00:00Z",
                 "detail": {"bucket": {"name": LANDING}, "object": {"key": key, "size": len(body), "etag": put["ETag"].strip('"')}}}
        with contextlib.redirect_stdout(sys.stderr):  # the handler's JSON logs are not this command's output
            start_batch.handler(event)
    return {"ETL_OBSERVER_ENV": "aws", "ETL_OBSERVER_LANDING_BUCKET": LANDING, "ETL_OBSERVER_STAGING_BUCKET": STAGING,
            "ETL_OBSERVER_STATE_MACHINE_ARN": machine, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}


def sample_files() -> dict[str, bytes]:
    sample = (REPO / "samples" / "employees.csv").read_bytes()
    return {"employees/employees.csv": sample, "employees/2026/employees-feb.csv": sample.replace(b"1001,", b"2001,"),
            "employees/bad.csv": sample.replace(b"98000.00", b"12,5O0")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo_aws", description=__doc__.splitlines()[0])
    parser.add_argument("--no-dev", action="store_true", help="set up the simulation and exit (moto keeps running)")
    parser.add_argument("--port", type=int, default=3000, help="dagster dev port")
    args = parser.parse_args(argv)
    print("SIMULATION: moto stands in for S3 and Step Functions; no AWS account is used.", file=sys.stderr)
    moto = start_moto(free_port())
    endpoint = f"http://127.0.0.1:{moto.args[-1]}"
    env = set_up(endpoint, sample_files())
    print(json.dumps({"moto_endpoint": endpoint, "moto_pid": moto.pid, "environment": env}, indent=2))
    if args.no_dev:
        return 0
    home = Path(os.environ.get("ETL_OBSERVER_HOME", REPO / ".etl_observer_aws"))
    dev = subprocess.Popen([str(Path(sys.executable).with_name("etl-observer")), "dev", "--port", str(args.port)],
                           env={**os.environ, **env, "ETL_OBSERVER_HOME": str(home)}, cwd=REPO, start_new_session=True)
    print(f"open http://127.0.0.1:{args.port} (Ctrl-C stops dagster dev and moto)", file=sys.stderr)
    def stop(signum, frame):  # SIGTERM too, not only Ctrl-C: never leave moto or dagster dev behind
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return dev.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (dev, moto):
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # dagster dev may ignore SIGTERM
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    sys.exit(main())
