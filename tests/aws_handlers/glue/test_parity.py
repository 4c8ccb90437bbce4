"""One implementation, two runtimes: the Glue job over S3 (moto server) and local mode give the
same Parquet rows and schema and agreeing manifests, on the real Shift_JIS and BOM files too."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from aws_handlers.core.infer import infer_contract
from aws_handlers.core.load_sql import LoadFile
from aws_handlers.core.pipeline import BatchInput, Stores, convert_file, resolve_input
from aws_handlers.glue.csv_to_parquet import run as run_glue
from aws_handlers.storage import LocalStore
from aws_handlers.warehouse import DuckDBWarehouse
from tests.conftest import require_shared_data

REAL = ["HRDataset_v14.csv", "jp_post_13TOKYO_sjis.csv", "jp_sabae_facilities_utf8bom.csv"]


@pytest.mark.parametrize("name", REAL)
def test_glue_on_s3_equals_local_mode(aws, tmp_path, name):
    path = require_shared_data() / "real" / name
    dataset = "parity"
    contract = infer_contract(path, dataset).contract
    key = f"{dataset}/{name}"
    aws["s3"].put_object(Bucket=aws["LANDING_BUCKET"], Key=key, Body=path.read_bytes())
    aws["s3"].put_object(Bucket=aws["STAGING_BUCKET"], Key="_contracts/parity.yaml", Body=contract.to_yaml().encode())
    result = run_glue({"batch_id": "p1", "dataset": dataset, "source_key": key, "landing_bucket": aws["LANDING_BUCKET"],
                       "staging_bucket": aws["STAGING_BUCKET"], "contract_key": "_contracts/parity.yaml"},
                      s3_client=aws["s3"])
    assert result["status"] == "converted"

    landing = tmp_path / "landing"
    (landing / dataset).mkdir(parents=True)
    (landing / key).write_bytes(path.read_bytes())
    stores = Stores(LocalStore(landing), LocalStore(tmp_path / "staging"), LocalStore(tmp_path / "evidence"))
    batch = BatchInput.from_document({"batch_id": "p1", "dataset": dataset, "files": [key]})
    stem = name.rsplit(".", 1)[0]
    local = convert_file(contract, batch, resolve_input(key, stores.landing), stores.staging, stem)

    remote_manifest = json.loads(aws["s3"].get_object(Bucket=aws["STAGING_BUCKET"],
                                                      Key=f"{dataset}/batch_id=p1/{stem}.manifest.json")["Body"].read())
    for field in ("size", "sha256", "encoding", "encoding_source", "records", "header_names"):
        assert remote_manifest["input"][field] == local["input"][field], field
    for field in ("rows", "schema", "row_groups"):
        assert remote_manifest["output"][field] == local["output"][field], field
    remote_parquet = tmp_path / "remote.parquet"
    remote_parquet.write_bytes(aws["s3"].get_object(Bucket=aws["STAGING_BUCKET"],
                                                    Key=f"{dataset}/batch_id=p1/{stem}.parquet")["Body"].read())
    local_table = pq.read_table(local["output"]["uri"])
    assert pq.read_table(remote_parquet).equals(local_table)
    assert local_table.num_rows == {"HRDataset_v14.csv": 311, "jp_post_13TOKYO_sjis.csv": 4165,
                                    "jp_sabae_facilities_utf8bom.csv": 64}[name]

    # The S3 output loads into the same table contents as the local output (same SQL, DuckDB engine).
    contents = []
    for label, parquet in (("local", local["output"]["uri"]), ("remote", str(remote_parquet))):
        warehouse = DuckDBWarehouse(tmp_path / f"{label}.duckdb")
        warehouse.load_batch(contract, "p1", [LoadFile(key, local["input"]["sha256"], local_table.num_rows, parquet)],
                             "2026-12-03 00:00:00")
        columns = ", ".join(f'"{c}"' for c in contract.column_names)
        contents.append(warehouse.query(f"SELECT {columns}, _source_file, _source_line FROM public.parity ORDER BY _source_line"))
    assert contents[0] == contents[1] and len(contents[0]) == local_table.num_rows
