"""Evidence reports: contents, escaping, the hash chain, and verify naming the first mismatch."""
from __future__ import annotations

import json

import pytest

from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR, load_contract
from aws_handlers.core.evidence import render_html, verify_dataset
from aws_handlers.core.pipeline import BatchInput, BatchRun, Stores
from aws_handlers.storage import LocalStore
from aws_handlers.warehouse import DuckDBWarehouse
from tests.conftest import REPO

EMPLOYEES = load_contract(BUNDLED_CONTRACTS_DIR / "employees.yaml")


@pytest.fixture
def done(tmp_path):
    """Three batches: b1, b2 (a bad file: FAILED), b1 again."""
    landing = tmp_path / "landing" / "employees"
    landing.mkdir(parents=True)
    (landing / "good.csv").write_bytes((REPO / "samples" / "employees.csv").read_bytes())
    (landing / "bad.csv").write_text("employee_id,first_name\n<script>alert(1)</script>,x\n", encoding="utf-8")
    stores = Stores(LocalStore(tmp_path / "landing"), LocalStore(tmp_path / "staging"), LocalStore(tmp_path / "evidence"))
    warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    runs = []
    for batch_id, files in (("b1", ["employees/good.csv"]), ("b2", ["employees/bad.csv"]), ("b1", ["employees/good.csv"])):
        run = BatchRun(EMPLOYEES, BatchInput.from_document({"batch_id": batch_id, "dataset": "employees", "files": files}),
                       stores, warehouse, runtime={"mode": "test"})
        run.run()
        runs.append(run)
    return tmp_path, stores, runs


def test_report_records_what_came_in_what_it_became_and_the_seed_summary(done):
    tmp_path, stores, runs = done
    report = json.loads((tmp_path / "evidence/employees/b1/report.json").read_text())
    assert report["summary"] == {"status": "SUCCEEDED", "total_loaded_rows": 10, "successful_conversions": 1,
                                 "successful_loads": 1, "failure_count": 0, "batch_id": "b1"}
    assert [s["name"] for s in report["steps"]] == ["register_inputs", "convert", "load", "evidence"]
    assert all(s["duration_seconds"] is not None and s["finished_at"] for s in report["steps"])
    (item,) = report["inputs"]
    assert (item["key"], item["size"], item["encoding"], item["records"]) == ("employees/good.csv", len((REPO / "samples" / "employees.csv").read_bytes()), "utf-8", 10)
    (output,) = report["outputs"]
    assert output["rows"] == 10 and output["uri"].endswith("staging/employees/batch_id=b1/good.parquet")
    assert [c["name"] for c in output["schema"]][:2] == ["employee_id", "first_name"]
    assert report["load"]["rows_inserted"] == 10 and report["load"]["table_rows_after"] == 10
    assert report["reconciliation"] == [{"file": "employees/good.csv", "csv_rows": 10, "parquet_rows": 10,
                                         "rejected_rows": 0, "loaded_rows": 10, "status": "ok"}]
    assert [(c["name"], c["passed"]) for c in report["checks"]] == [
        ("contract_conformance", True), ("row_reconciliation", True), ("primary_key_unique", True)]
    assert report["chain"]["sequence"] == 3
    assert report["code_version"].startswith("0.1.0")


def test_failed_batches_get_a_report_too(done):
    tmp_path, _, _ = done
    report = json.loads((tmp_path / "evidence/employees/b2/report.json").read_text())
    assert report["summary"] == {"status": "FAILED", "total_loaded_rows": 0, "successful_conversions": 0,
                                 "successful_loads": 0, "failure_count": 1, "batch_id": "b2"}
    assert report["errors"][0]["message"].startswith("header lacks contract columns")


def test_html_escapes_file_content(done):
    tmp_path, _, runs = done
    html = (tmp_path / "evidence/employees/b2/report.html").read_text()
    assert "<script>" not in html
    report = dict(runs[1].report)
    report["errors"] = [{"file": "x.csv", "line": 2, "column": "a", "message": "<img src=x onerror=alert(1)>", "value": "</td>"}]
    rendered = render_html(report)
    assert "<img" not in rendered and "&lt;img src=x onerror=alert(1)&gt;" in rendered
    assert "&lt;/td&gt;" in rendered


def test_verify_passes_on_an_untouched_home(done):
    _, stores, _ = done
    result = verify_dataset(stores.evidence, "employees")
    assert result["problems"] == []
    assert (result["ok"], result["reports"]) == (True, 3)
    # b1's newest report names the CSV, the Parquet and the manifest; b2 names only its CSV
    assert result["files"] == 4


@pytest.mark.parametrize("relative", [
    "evidence/employees/b1/report.json",
    "evidence/employees/b1/report.html",
    "evidence/employees/b2/history/000002.json",
    "evidence/employees/b2/history/000002.html",
    "evidence/employees/b1/history/000001.json",
    "staging/employees/batch_id=b1/good.parquet",
    "staging/employees/batch_id=b1/good.manifest.json",
    "landing/employees/good.csv",
])
def test_one_changed_byte_anywhere_fails_verify_naming_the_file(done, relative):
    tmp_path, stores, _ = done
    path = tmp_path / relative
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify_dataset(stores.evidence, "employees")
    assert result["ok"] is False
    assert str(path) in result["problems"][0]


def test_a_deleted_report_breaks_the_chain(done):
    tmp_path, stores, _ = done
    (tmp_path / "evidence/employees/b2/history/000002.json").unlink()
    problems = verify_dataset(stores.evidence, "employees")["problems"]
    assert problems[0] == f"{tmp_path}/evidence/employees/b2/history/000002.json: report missing (sequence 2)"


def _race(store, writers=8):
    """Reports of different batches of one dataset finishing at the same moment."""
    import threading

    from aws_handlers.core.evidence import write_report

    barrier = threading.Barrier(writers)
    results, errors = [], []

    def write(i):
        report = {"dataset": "employees", "batch_id": f"r{i}", "status": "SUCCEEDED",
                  "summary": {"status": "SUCCEEDED", "batch_id": f"r{i}"}}
        barrier.wait()
        try:
            results.append(write_report(store, report)["sequence"])
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results), errors


def test_concurrent_reports_never_fork_the_chain_locally(tmp_path):
    store = LocalStore(tmp_path / "evidence")
    sequences, errors = _race(store)
    assert errors == [] and sequences == list(range(1, 9))
    result = verify_dataset(store, "employees")
    assert (result["ok"], result["reports"], result["problems"]) == (True, 8, [])


def test_concurrent_reports_never_fork_the_chain_on_s3(aws_env):
    import boto3

    from aws_handlers.storage import S3Store

    boto3.client("s3").create_bucket(Bucket="evidence-race")
    store = S3Store("evidence-race", "evidence/", client=boto3.client("s3"))
    sequences, errors = _race(store)
    assert errors == [] and sequences == list(range(1, 9))
    result = verify_dataset(store, "employees")
    assert (result["ok"], result["reports"], result["problems"]) == (True, 8, [])


def test_deleting_a_batchs_latest_copy_does_not_hide_a_changed_file(done):
    """Review finding: verify took "newest report" from the editable report.json; the chain decides."""
    tmp_path, stores, _ = done
    parquet = tmp_path / "staging/employees/batch_id=b1/good.parquet"
    data = bytearray(parquet.read_bytes())
    data[50] ^= 0x01
    parquet.write_bytes(bytes(data))
    (tmp_path / "evidence/employees/b1/report.json").unlink()
    (tmp_path / "evidence/employees/b1/report.html").unlink()
    problems = verify_dataset(stores.evidence, "employees")["problems"]
    assert any(str(parquet) in p for p in problems)
    assert any(p.startswith(f"{tmp_path}/evidence/employees/b1/report.json: missing") for p in problems)


def test_the_rejects_file_of_a_quarantining_contract_is_verified(tmp_path):
    import dataclasses

    landing = tmp_path / "landing" / "employees"
    landing.mkdir(parents=True)
    text = (REPO / "samples" / "employees.csv").read_text(encoding="utf-8").replace("98000.00", "lots")
    (landing / "q.csv").write_text(text, encoding="utf-8")
    stores = Stores(LocalStore(tmp_path / "landing"), LocalStore(tmp_path / "staging"), LocalStore(tmp_path / "evidence"))
    contract = dataclasses.replace(EMPLOYEES, on_error="quarantine")
    run = BatchRun(contract, BatchInput.from_document({"batch_id": "q1", "dataset": "employees", "files": ["employees/q.csv"]}),
                   stores, DuckDBWarehouse(tmp_path / "w.duckdb"))
    summary = run.run()
    assert (summary["status"], summary["total_loaded_rows"]) == ("SUCCEEDED", 9)
    assert verify_dataset(stores.evidence, "employees")["ok"] is True
    rejects = tmp_path / "staging/employees/batch_id=q1/q.rejects.csv"
    rejects.write_text(rejects.read_text().replace("lots", "a lot"))
    problems = verify_dataset(stores.evidence, "employees")["problems"]
    assert problems[0].startswith(f"{rejects}: rejects CSV SHA-256 is ")
