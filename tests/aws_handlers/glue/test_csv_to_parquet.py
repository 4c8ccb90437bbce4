"""The Glue job script against a moto S3 server over HTTP: same Parquet as local mode."""
from __future__ import annotations

import json

import boto3
import pyarrow.parquet as pq
import pytest

from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR, load_contract
from aws_handlers.core.convert import convert_csv
from aws_handlers.glue.csv_to_parquet import main, run
from tests.conftest import REPO


@pytest.fixture
def s3(aws_env):
    client = boto3.client("s3")
    for bucket in ("landing", "staging"):
        client.create_bucket(Bucket=bucket)
    return client, aws_env


def test_glue_script_writes_the_same_parquet_as_local_mode(s3, tmp_path):
    client, _ = s3
    data = (REPO / "samples" / "employees.csv").read_bytes()
    client.put_object(Bucket="landing", Key="employees/2026/ｻﾝﾌﾟﾙ employees.csv", Body=data)
    result = run({"batch_id": "g1", "dataset": "employees", "source_key": "employees/2026/ｻﾝﾌﾟﾙ employees.csv",
                  "landing_bucket": "landing", "staging_bucket": "staging"}, s3_client=client)
    assert result == {"status": "converted", "rows": 10, "error_count": 0,
                      "manifest_uri": "s3://staging/employees/batch_id=g1/2026__ｻﾝﾌﾟﾙ employees.manifest.json"}
    remote = tmp_path / "remote.parquet"
    remote.write_bytes(client.get_object(Bucket="staging", Key="employees/batch_id=g1/2026__ｻﾝﾌﾟﾙ employees.parquet")["Body"].read())
    local = tmp_path / "local.parquet"
    (tmp_path / "in.csv").write_bytes(data)
    contract = load_contract(BUNDLED_CONTRACTS_DIR / "employees.yaml")
    convert_csv(lambda: open(tmp_path / "in.csv", "rb"), "employees/2026/ｻﾝﾌﾟﾙ employees.csv", contract, local)
    assert pq.read_table(remote).equals(pq.read_table(local))
    manifest = json.loads(client.get_object(Bucket="staging", Key="employees/batch_id=g1/2026__ｻﾝﾌﾟﾙ employees.manifest.json")["Body"].read())
    assert manifest["output"]["uri"] == "s3://staging/employees/batch_id=g1/2026__ｻﾝﾌﾟﾙ employees.parquet"
    assert manifest["input"]["uri"] == "s3://landing/employees/2026/ｻﾝﾌﾟﾙ employees.csv"


def test_glue_script_as_a_process_fails_on_bad_data_and_writes_no_parquet(s3, monkeypatch, capsys):
    client, endpoint = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    client.put_object(Bucket="landing", Key="employees/bad.csv", Body=b"employee_id\n1\n")
    code = main(["csv_to_parquet", "--batch_id", "g2", "--dataset", "employees", "--source_key", "employees/bad.csv",
                 "--landing_bucket", "landing", "--staging_bucket", "staging", "--JOB_ID", "j_1"])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["status"] == "failed"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="staging", Prefix="employees/batch_id=g2/").get("Contents", [])]
    assert keys == ["employees/batch_id=g2/bad.manifest.json"]
