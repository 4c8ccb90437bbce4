"""Data-driven suites over ../shared/data: every file gives exactly the expected values."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from aws_handlers.core.contract import contract_from_dict
from aws_handlers.core.convert import convert_csv
from tests.conftest import SHARED_DATA, require_shared_data


def string_contract(names, header=True, on_error="fail"):
    return contract_from_dict({"dataset": "conformance", "header": header, "on_error": on_error,
                               "columns": [{"name": n, "type": "string", "max_bytes": 65535} for n in names]})


def convert(path, contract, tmp_path, **kwargs):
    out = tmp_path / "out.parquet"
    outcome = convert_csv(lambda: open(path, "rb"), path.name, contract, out, rejects_path=tmp_path / "rejects.csv",
                          **kwargs)
    return outcome, out


def values(out, names):
    table = pq.read_table(out)
    return [[row[n] for n in names] for row in table.to_pylist()]


def _names(folder, pattern):
    base = SHARED_DATA / folder
    return sorted(p.name for p in base.glob(pattern)) if base.is_dir() else ["<missing shared data>"]


@pytest.mark.parametrize("name", _names("csv-spectrum/csvs", "*.csv"))
def test_csv_spectrum_gives_exactly_the_expected_json(name, tmp_path):
    data = require_shared_data() / "csv-spectrum"
    expected = json.loads((data / "json" / name.replace(".csv", ".json")).read_text(encoding="utf-8"))
    header = list(expected[0].keys())
    outcome, out = convert(data / "csvs" / name, string_contract(header), tmp_path)
    assert outcome.manifest["status"] == "converted", outcome.errors
    # Every expected value is a string: a quoted empty field is "", never NULL.
    assert [dict(zip(header, row)) for row in values(out, header)] == expected


@pytest.mark.parametrize("name", _names("csv-test-data/json", "*.json"))
def test_csv_test_data_gives_exactly_the_expected_json(name, tmp_path):
    data = require_shared_data() / "csv-test-data"
    expected = json.loads((data / "json" / name).read_text(encoding="utf-8"))
    csv_path = data / "csv" / name.replace(".json", ".csv")
    if name.startswith("header-"):
        header = ["foo", "bar", "baz"]
        outcome, out = convert(csv_path, string_contract(header), tmp_path)
        assert outcome.ok, outcome.errors
        assert [dict(zip(header, row)) for row in values(out, header)] == expected
    else:
        names = [f"c{i}" for i in range(len(expected[0]))]
        outcome, out = convert(csv_path, string_contract(names, header=False), tmp_path)
        assert outcome.ok, outcome.errors
        # Upstream reads these without a header; the one NULL-vs-"" question: "1,,3" and "1,\"\",3"
        # share one JSON, where both are "". We keep them apart: unquoted empty is NULL.
        got = [["" if v is None else v for v in row] for row in values(out, names)]
        assert got == expected


BAD_FILES = {
    "bad-header-less-fields.csv": (2, None, "expected 3 fields, found 2"),
    "bad-header-no-header.csv": (None, None, "file is empty (0 bytes)"),
    "bad-header-wrong-header.csv": (1, None, "header lacks contract columns ['foo', 'bar', 'baz']"),
    "bad-missing-quote.csv": (2, "bar", "quoted field is never closed"),
    "bad-quotes-with-unescaped-quote.csv": (2, "bar", "after a closing quote"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_csv_test_data_fails_with_a_line_numbered_error_and_writes_nothing(name, tmp_path):
    data = require_shared_data() / "csv-test-data" / "csv"
    line, column, message = BAD_FILES[name]
    outcome, out = convert(data / name, string_contract(["foo", "bar", "baz"]), tmp_path)
    assert outcome.manifest["status"] == "failed"
    assert not out.exists()
    first = outcome.errors[0]
    assert (first.file, first.line, first.column) == (name, line, column)
    assert message in first.message


def test_bad_files_are_exactly_the_upstream_bad_set():
    data = require_shared_data() / "csv-test-data" / "csv"
    assert sorted(p.name for p in data.glob("bad-*.csv")) == sorted(BAD_FILES)


class TestBugs:
    @pytest.fixture
    def expected(self):
        return json.loads((require_shared_data() / "bugs" / "expected.json").read_text())

    def test_b01_bom_before_quoted_header(self, expected, tmp_path):
        case = expected["B01_bom_quoted_header.csv"]
        outcome, out = convert(SHARED_DATA / "bugs" / "B01_bom_quoted_header.csv", string_contract(case["columns"]), tmp_path)
        assert outcome.ok
        assert outcome.manifest["input"]["encoding"] == "utf-8-sig"
        table = pq.read_table(out)
        assert table.num_rows == case["rows"] == 3
        assert table.column_names[:5] == case["columns"]
        assert table.column_names[0].encode().hex() == case["checks"]["first_column_name_utf8_hex"]
        assert outcome.manifest["input"]["header_names"] == case["columns"]

    def test_b02_ragged_rows_fail_naming_both_lines(self, expected, tmp_path):
        case = expected["B02_ragged_rows.csv"]
        outcome, out = convert(SHARED_DATA / "bugs" / "B02_ragged_rows.csv",
                               string_contract(["employee_id", "name", "department", "salary"]), tmp_path)
        assert outcome.manifest["status"] == "failed"
        assert out.exists() is case["output_written"]
        assert [(e.line, e.message) for e in outcome.errors] == [
            (m["line"], f"expected {m['expected_fields']} fields, found {m['actual_fields']}")
            for m in case["error_must_mention"]]

    def test_b02_lenient_mode_quarantines_the_bad_lines(self, expected, tmp_path):
        case = expected["B02_ragged_rows.csv"]["lenient"]
        outcome, out = convert(SHARED_DATA / "bugs" / "B02_ragged_rows.csv",
                               string_contract(["employee_id", "name", "department", "salary"], on_error="quarantine"),
                               tmp_path)
        assert outcome.ok
        assert [r[0] for r in values(out, ["employee_id"])] == case["loaded_employee_ids"]
        rejects = (tmp_path / "rejects.csv").read_text().splitlines()
        assert rejects == ["line,reason,record", '3,"expected 4 fields, found 3","1002,Suzuki Ichiro,R&D"',
                           '4,"expected 4 fields, found 5","1003,Takahashi Ken,HR,4800000,extra"']
        assert [int(r.split(",")[0]) for r in rejects[1:]] == case["rejected_lines"]
        assert outcome.manifest["rejects"]["rows"] == 2

    def test_b03_header_only_is_zero_rows_with_the_declared_schema(self, expected, tmp_path):
        case = expected["B03_header_only.csv"]
        contract = contract_from_dict({"dataset": "bugs", "columns": [
            {"name": "employee_id", "type": "int32"}, {"name": "name", "type": "string"},
            {"name": "department", "type": "string"}, {"name": "salary", "type": "int64"},
            {"name": "hire_date", "type": "date", "format": "%Y-%m-%d"}]})
        outcome, out = convert(SHARED_DATA / "bugs" / "B03_header_only.csv", contract, tmp_path)
        assert outcome.ok
        table = pq.read_table(out)
        assert table.num_rows == case["rows"] == 0
        assert table.column_names[:5] == case["columns"]
        assert [str(t) for t in table.schema.types[:5]] == ["int32", "string", "string", "int64", "date32[day]"]

    def test_b09_mixed_newlines(self, expected, tmp_path):
        case = expected["B09_mixed_newlines.csv"]
        outcome, out = convert(SHARED_DATA / "bugs" / "B09_mixed_newlines.csv", string_contract(case["columns"]), tmp_path)
        assert outcome.ok
        rows = values(out, case["columns"])
        assert len(rows) == case["rows"] == 6
        assert [r[0] for r in rows] == ["1001", "1002", "1003", "1004", "1005", "1006"]
        check = case["checks"][0]
        assert rows[check["row"] - 1][case["columns"].index(check["column"])] == check["value"]
        assert not any("\r" in v for row in rows for v in row)
        # physical start line of each record: CR-only ends count as line ends; 1005 spans lines 6-7
        assert pq.read_table(out).column("_source_line").to_pylist() == [2, 3, 4, 5, 6, 8]
