"""etl-observer end to end: the Dagster job in-process on real files, exit codes, verify, backfills."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from etl_observer_dagster.cli import main
from tests.conftest import REPO

SAMPLE = str(REPO / "samples" / "employees.csv")


def cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def test_demo_command_as_a_user_runs_it(home):
    """What `make demo` runs, through the installed console script: JSON on stdout, exit 0."""
    script = Path(sys.executable).with_name("etl-observer")
    proc = subprocess.run([str(script), "run", "--dataset", "employees", "--batch-id", "demo-employees", SAMPLE],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert {k: summary[k] for k in ("status", "total_loaded_rows", "successful_conversions", "successful_loads",
                                    "failure_count", "batch_id", "dataset")} == {
        "status": "SUCCEEDED", "total_loaded_rows": 10, "successful_conversions": 1, "successful_loads": 1,
        "failure_count": 0, "batch_id": "demo-employees", "dataset": "employees"}
    assert summary["evidence"] == {"json": f"{home}/evidence/employees/demo-employees/report.json",
                                   "html": f"{home}/evidence/employees/demo-employees/report.html"}
    assert Path(summary["evidence"]["html"]).is_file()


def test_same_batch_twice_then_same_file_in_a_new_batch(home, capsys):
    import duckdb

    assert cli(capsys, "run", "--dataset", "employees", "--batch-id", "b1", SAMPLE)[0] == 0
    code, summary, _ = cli(capsys, "run", "--dataset", "employees", "--batch-id", "b1", SAMPLE)
    assert (code, summary["total_loaded_rows"]) == (0, 10)
    code, summary, _ = cli(capsys, "run", "--dataset", "employees", SAMPLE)  # generated batch id
    assert code == 0 and summary["batch_id"].startswith("cli-")
    assert summary["total_loaded_rows"] == 0
    assert summary["duplicates"][0]["duplicate_of_batch"] == "b1"
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT _batch_id) FROM public.employees").fetchone() == (10, 1)


def test_bad_data_exits_1_with_file_line_column(home, capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(Path(SAMPLE).read_text(encoding="utf-8").replace("2016-07-01", "2016-13-01"), encoding="utf-8")
    code, summary, err = cli(capsys, "run", "--dataset", "employees", "--batch-id", "bad1", str(bad))
    assert code == 1
    assert summary["status"] == "FAILED" and summary["failure_count"] == 1
    assert summary["errors"] == [{"file": str(bad), "line": 4, "column": "hire_date", "kind": "type", "value": "2016-13-01",
                                  "message": '"2016-13-01" is not a date in format %Y-%m-%d'}]
    report = json.loads(Path(summary["evidence"]["json"]).read_text())
    assert report["status"] == "FAILED" and report["errors"][0]["line"] == 4


@pytest.mark.parametrize("args,message", [
    (["run", "--dataset", "nosuch", SAMPLE], "no contract for dataset 'nosuch'"),
    (["run", "--dataset", "employees", "missing.csv"], "missing.csv: no such file"),
    (["run", "--dataset", "employees", "--batch-id", "a,b", SAMPLE], "batch_id 'a,b' must be"),
    (["run", SAMPLE], "give --dataset NAME"),
])
def test_usage_errors_exit_2(home, capsys, args, message):
    code, out, err = cli(capsys, *args)
    assert (code, out) == (2, None)
    assert message in err


def test_step_functions_input_document(home, capsys, tmp_path):
    landing = home / "landing" / "employees"
    landing.mkdir(parents=True)
    (landing / "day1.csv").write_bytes(Path(SAMPLE).read_bytes())
    doc = tmp_path / "batch.json"
    doc.write_text(json.dumps({"batch_id": "sfn-1", "dataset": "employees", "files": ["employees/day1.csv"]}))
    code, summary, _ = cli(capsys, "run", "--input", str(doc))
    assert (code, summary["batch_id"], summary["total_loaded_rows"]) == (0, "sfn-1", 10)
    assert (home / "staging/employees/batch_id=sfn-1/day1.parquet").is_file()


def test_backfill_of_a_partition_reprocesses_it_from_its_batch_document(home, capsys):
    from dagster import DagsterInstance

    from etl_observer_dagster.definitions import build_definitions

    assert cli(capsys, "run", "--dataset", "employees", "--batch-id", "b1", SAMPLE)[0] == 0
    defs = build_definitions()
    # what a UI backfill does: the partition key and no run config
    result = defs.resolve_job_def("employees_batch").execute_in_process(instance=DagsterInstance.get(), partition_key="b1")
    assert result.success
    mats = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    assert [m.asset_key.to_user_string() for m in mats] == [
        "employees/landing_csv", "employees/staging_parquet", "employees/warehouse_table", "employees/evidence_report"]
    assert mats[2].metadata["dagster/row_count"].value == 10
    assert mats[2].metadata["rows_inserted"].value == 10
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks == {"contract_conformance": True, "row_reconciliation": True, "primary_key_unique": True}


def test_verify_passes_then_names_the_changed_file(home, capsys):
    cli(capsys, "run", "--dataset", "employees", "--batch-id", "b1", SAMPLE)
    code, out, _ = cli(capsys, "verify")
    assert (code, out["ok"], out["datasets"][0]["reports"]) == (0, True, 1)
    parquet = home / "staging/employees/batch_id=b1/employees.parquet"
    data = bytearray(parquet.read_bytes())
    data[100] ^= 0xFF
    parquet.write_bytes(bytes(data))
    code, out, err = cli(capsys, "verify", "--dataset", "employees")
    assert code == 1
    assert out["first_mismatch"].startswith(f"{parquet}: staging Parquet SHA-256 is ")
    assert str(parquet) in err


class TestRealFiles:
    """Acceptance: contract infer, then run, on ../shared/data/real."""

    def infer_and_run(self, capsys, shared_data, name, dataset, *extra):
        path = shared_data / "real" / name
        code, inferred, err = cli(capsys, "contract", "infer", str(path), "--dataset", dataset, *extra)
        assert code == 0, err
        code, summary, err = cli(capsys, "run", "--dataset", dataset, "--batch-id", "real1", str(path))
        assert code == 0, (summary, err)
        return inferred, summary, err

    def test_hr_dataset(self, home, capsys, shared_data):
        inferred, summary, _ = self.infer_and_run(capsys, shared_data, "HRDataset_v14.csv", "hr")
        assert summary["total_loaded_rows"] == 311
        assert inferred["contract_path"] == str(home / "contracts" / "hr.yaml")
        table = pq.read_table(home / "staging/hr/batch_id=real1/HRDataset_v14.parquet")
        names = table.column("employee_name").to_pylist()
        assert "Dietrich, Jenna  " in names  # the comma and the trailing blanks intact
        assert sum(table.column("salary").to_pylist()) == 21465433

    def test_japan_post_cp932_without_header(self, home, capsys, shared_data):
        inferred, summary, err = self.infer_and_run(capsys, shared_data, "jp_post_13TOKYO_sjis.csv", "jp_post")
        assert inferred["header_detected"] is False and inferred["encoding"] == "cp932"
        assert any("no header" in note.lower() for note in inferred["notes"])
        assert [c["name"] for c in inferred["columns"]] == [f"col_{i}" for i in range(1, 16)]
        assert summary["total_loaded_rows"] == 4165
        table = pq.read_table(home / "staging/jp_post/batch_id=real1/jp_post_13TOKYO_sjis.parquet")
        assert table.column("col_4").to_pylist()[0] == "ﾄｳｷｮｳﾄ"  # half-width katakana intact
        assert "芝（１～３丁目）" in table.column("col_9").to_pylist()  # CP932 mapping: U+FF5E
        report = json.loads(Path(summary["evidence"]["json"]).read_text())
        assert report["inputs"][0]["encoding"] == "cp932"

    def test_japan_post_header_override(self, home, capsys, shared_data):
        code, out, _ = cli(capsys, "contract", "infer", str(shared_data / "real" / "jp_post_13TOKYO_sjis.csv"),
                           "--dataset", "jp_post", "--header")
        # its first record as a header has six columns named "0": refused by name, not guessed around
        assert code == 1 and "duplicate header names" in out["errors"][0]["message"]

    def test_sabae_japanese_headers(self, home, capsys, shared_data):
        inferred, summary, _ = self.infer_and_run(capsys, shared_data, "jp_sabae_facilities_utf8bom.csv", "sabae")
        assert summary["total_loaded_rows"] == 64
        assert inferred["columns"][0]["source"] == "店舗名(日本語)"
        report = json.loads(Path(summary["evidence"]["json"]).read_text())
        assert report["inputs"][0]["encoding"] == "utf-8-sig"


def test_contract_infer_usage_errors_exit_2(home, capsys):
    code, out, err = cli(capsys, "contract", "infer", SAMPLE, "--dataset", "x", "--encoding", "latin-9")
    assert (code, out) == (2, None) and "unsupported encoding 'latin-9'" in err
    assert cli(capsys, "contract", "infer", SAMPLE, "--dataset", "Bad-Name")[0] == 2
    assert cli(capsys, "contract", "infer", SAMPLE, "--dataset", "emp2")[0] == 0
    code, _, err = cli(capsys, "contract", "infer", SAMPLE, "--dataset", "emp2")
    assert code == 2 and "exists; pass --force" in err


def test_a_missing_input_fails_the_batch_with_evidence(home, capsys, tmp_path):
    doc = tmp_path / "batch.json"
    doc.write_text(json.dumps({"batch_id": "gone-1", "dataset": "employees", "files": ["employees/nothere.csv"]}))
    code, summary, _ = cli(capsys, "run", "--input", str(doc))
    assert (code, summary["status"], summary["failure_count"]) == (1, "FAILED", 1)
    assert [(e["file"], e["kind"]) for e in summary["errors"]] == [("employees/nothere.csv", "missing_input")]
    assert Path(summary["evidence"]["html"]).is_file()


def test_contract_flag_runs_a_dataset_the_location_does_not_know(home, capsys, tmp_path):
    contract = tmp_path / "visits.yaml"
    contract.write_text("dataset: visits\nprimary_key: [visit_id]\ncolumns:\n  - {name: visit_id, type: int64}\n"
                        "  - {name: place, type: string}\n", encoding="utf-8")
    data = tmp_path / "visits.csv"
    data.write_text("visit_id,place\n1,鯖江\n2,\"Tokyo, JP\"\n", encoding="utf-8")
    code, summary, _ = cli(capsys, "run", "--dataset", "visits", "--contract", str(contract), "--batch-id", "v1", str(data))
    assert (code, summary["status"], summary["total_loaded_rows"]) == (0, "SUCCEEDED", 2)


def test_checks_only_run_evaluates_the_batch_as_it_is_now(home, capsys):
    import duckdb
    from dagster import DagsterInstance

    from etl_observer_dagster.assets import check_keys
    from etl_observer_dagster.definitions import build_definitions

    assert cli(capsys, "run", "--dataset", "employees", "--batch-id", "b1", SAMPLE)[0] == 0
    # what the Step Functions sensor requests after recording an execution: the checks, no assets
    job = build_definitions().resolve_job_def("employees_batch").get_subset(
        asset_selection=set(), asset_check_selection=set(check_keys("employees")))
    result = job.execute_in_process(instance=DagsterInstance.get(), partition_key="b1")
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks == {"contract_conformance": True, "row_reconciliation": True, "primary_key_unique": True}
    assert result.get_asset_materialization_events() == []
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:  # tamper: a row loaded twice
        con.execute("INSERT INTO public.employees SELECT * FROM public.employees WHERE employee_id = 1001")
    result = job.execute_in_process(instance=DagsterInstance.get(), partition_key="b1")
    failed = {e.asset_check_evaluation_data.check_name for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.asset_check_evaluation_data.passed}
    assert failed == {"row_reconciliation", "primary_key_unique"}
