"""The converter: types from the contract, encodings, and bad input that names file, line, column."""
from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from aws_handlers.core.contract import contract_from_dict, load_contract, BUNDLED_CONTRACTS_DIR
from aws_handlers.core.convert import convert_csv
from tests.conftest import REPO

EMPLOYEES = load_contract(BUNDLED_CONTRACTS_DIR / "employees.yaml")
HEADER = b"employee_id,first_name,last_name,email,department,job_title,salary,hire_date,is_active,manager_id\n"
GOOD_ROW = b"1,A,B,a@b.c,Sales,,10.50,2020-01-02,true,\n"


def run(tmp_path, data: bytes, contract=EMPLOYEES, name="f.csv", **kwargs):
    path = tmp_path / name
    path.write_bytes(data)
    out = tmp_path / "out.parquet"
    outcome = convert_csv(lambda: open(path, "rb"), name, contract, out, rejects_path=tmp_path / "rej.csv", **kwargs)
    return outcome, out


def only_error(outcome):
    assert outcome.manifest["status"] == "failed"
    assert len(outcome.errors) == 1, outcome.errors
    return outcome.errors[0]


def test_sample_converts_with_the_contract_types_in_table_order(tmp_path):
    data = (REPO / "samples" / "employees.csv").read_bytes()
    outcome, out = run(tmp_path, data, name="employees.csv")
    assert outcome.ok
    table = pq.read_table(out)
    assert table.num_rows == 10
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("employee_id", "int32"), ("first_name", "string"), ("last_name", "string"), ("email", "string"),
        ("department", "string"), ("job_title", "string"), ("salary", "decimal128(12, 2)"), ("hire_date", "date32[day]"),
        ("is_active", "bool"), ("manager_id", "int32"), ("_source_file", "string"), ("_source_line", "int64")]
    first = table.slice(0, 1).to_pylist()[0]
    assert first["job_title"] == "Director, Sales"
    assert str(first["salary"]) == "98000.00"
    assert first["manager_id"] is None
    assert table.column("job_title").to_pylist()[3] == 'Engineer "Platform"'
    assert table.column("job_title").to_pylist()[9] == ""  # quoted empty stays an empty string
    assert outcome.manifest["input"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert outcome.manifest["input"]["size"] == len(data)
    assert outcome.manifest["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "SNAPPY"


def test_timestamps_are_microseconds_and_accept_fractional_seconds(tmp_path):
    contract = contract_from_dict({"dataset": "t", "columns": [
        {"name": "at", "type": "timestamp", "format": "%Y-%m-%d %H:%M:%S.%f"}]})
    outcome, out = run(tmp_path, b"at\n2024-02-29 23:59:58.123456\n", contract)
    assert outcome.ok
    table = pq.read_table(out)
    assert str(table.schema.field("at").type) == "timestamp[us]"
    assert table.column("at").to_pylist()[0].isoformat() == "2024-02-29T23:59:58.123456"


@pytest.mark.parametrize("value,message", [
    (b"12,5O0", None),
    (b"abc", '"abc" is not a decimal(12,2)'),
    (b"1.234", '"1.234" has more than 2 decimal places'),
    (b"12345678901.00", '"12345678901.00" has more than 10 digits before the point'),
])
def test_bad_decimal_names_file_line_column_value_and_contract(tmp_path, value, message):
    if message is None:  # an unquoted comma makes the row ragged instead
        outcome, _ = run(tmp_path, HEADER + GOOD_ROW + b"2,A,B,a@b.c,Sales,," + value + b",2020-01-02,true,\n")
        assert only_error(outcome).message == "expected 10 fields, found 11"
        return
    outcome, out = run(tmp_path, HEADER + GOOD_ROW + b"2,A,B,a@b.c,Sales,," + value + b",2020-01-02,true,\n")
    err = only_error(outcome)
    assert (err.file, err.line, err.column, err.contract) == ("f.csv", 3, "salary", "employees v1")
    assert err.message.startswith(message)
    assert str(err).startswith(f"f.csv line 3, column salary: {message}")
    assert not out.exists()


def test_int_out_of_range_and_not_an_int(tmp_path):
    rows = b"2147483648,A,B,a@b.c,Sales,,1,2020-01-02,true,\n1,A,B,a@b.c,Sales,,1,2020-01-02,true,x1\n"
    outcome, _ = run(tmp_path, HEADER + rows)
    assert [(e.line, e.column, e.message) for e in outcome.errors] == [
        (2, "employee_id", '"2147483648" is out of range for int32 (-2147483648..2147483647)'),
        (3, "manager_id", '"x1" is not an int32'),
    ]


def test_date_in_the_wrong_format_and_boolean(tmp_path):
    outcome, _ = run(tmp_path, HEADER + b"1,A,B,a@b.c,Sales,,1,02/01/2020,maybe,\n")
    assert [(e.column, e.message) for e in outcome.errors] == [
        ("hire_date", '"02/01/2020" is not a date in format %Y-%m-%d'),
        ("is_active", "\"maybe\" is not a boolean (accepted: ['true', 't', 'yes', 'y', '1'] / ['false', 'f', 'no', 'n', '0'])"),
    ]


def test_string_over_its_byte_limit_counts_bytes_not_characters(tmp_path):
    name = "あ" * 43  # 129 bytes in UTF-8, 43 characters; first_name allows 128 bytes
    outcome, _ = run(tmp_path, HEADER + f"1,{name},B,a@b.c,Sales,,1,2020-01-02,true,\n".encode())
    err = only_error(outcome)
    assert (err.line, err.column, err.kind) == (2, "first_name", "too_long")
    assert err.message.endswith("value is 129 bytes, over the column's limit of 128 bytes")


def test_unquoted_empty_in_a_non_nullable_column(tmp_path):
    outcome, _ = run(tmp_path, HEADER + b"1,,B,a@b.c,Sales,,1,2020-01-02,true,\n")
    err = only_error(outcome)
    assert (err.line, err.column, err.message) == (2, "first_name", "is empty (NULL) but the column is not nullable")


def test_quoted_empty_is_not_null_but_is_not_a_number_either(tmp_path):
    outcome, _ = run(tmp_path, HEADER + b'1,A,B,a@b.c,Sales,,1,2020-01-02,true,""\n')
    assert only_error(outcome).message == '"" is not an int32'


def test_nul_byte_is_refused_with_line_column_and_offset(tmp_path):
    data = HEADER + GOOD_ROW + b"2,A\x00B,B,a@b.c,Sales,,1,2020-01-02,true,\n"
    outcome, out = run(tmp_path, data)
    err = only_error(outcome)
    offset = data.index(b"\x00")
    assert (err.line, err.column, err.byte_offset, err.kind) == (3, "first_name", offset, "nul_byte")
    assert outcome.manifest["input"]["sha256"] == hashlib.sha256(data).hexdigest()  # hashed to the end anyway
    assert not out.exists()


def test_undecodable_bytes_give_the_exact_offset_and_line(tmp_path):
    data = HEADER + GOOD_ROW + b"2,Caf\xe9,B,a@b.c,Sales,,1,2020-01-02,true,\n"
    outcome, _ = run(tmp_path, data)
    err = only_error(outcome)
    assert (err.line, err.column, err.byte_offset, err.kind) == (3, "first_name", data.index(b"\xe9"), "undecodable")
    assert "bytes e9 2c 42 2c at byte offset" in err.message and "utf-8 (assumed)" in err.message


def test_undecodable_far_beyond_the_detection_window(tmp_path):
    rows = b"".join(b"%d,A,B,a@b.c,Sales,,1,2020-01-02,true,\n" % i for i in range(1, 5001))
    data = HEADER + rows + b"5001,\xff\xfe,B,a@b.c,Sales,,1,2020-01-02,true,\n"
    outcome, _ = run(tmp_path, data)
    err = only_error(outcome)
    assert (err.line, err.byte_offset) == (5002, data.index(b"\xff"))


def test_zero_byte_file_is_an_error(tmp_path):
    err = only_error(run(tmp_path, b"")[0])
    assert (err.line, err.kind, err.message) == (None, "empty_file", "file is empty (0 bytes); a CSV needs at least a header line")


def test_duplicate_and_case_colliding_headers_are_rejected_by_name(tmp_path):
    contract = contract_from_dict({"dataset": "t", "columns": [{"name": "id", "source": "ID"}, {"name": "x"}]})
    outcome, _ = run(tmp_path, b"ID,x,id\n1,2,3\n", contract)
    assert [e.message for e in outcome.errors][0] == "case-colliding header names ['ID', 'id']"
    outcome, _ = run(tmp_path, b"ID,x,x\n1,2,3\n", contract)
    assert [e.message for e in outcome.errors][0] == "duplicate header names ['x', 'x']"


def test_header_columns_may_come_in_any_order_output_follows_the_contract(tmp_path):
    contract = contract_from_dict({"dataset": "t", "columns": [{"name": "a", "type": "int32"}, {"name": "b"}]})
    outcome, out = run(tmp_path, b"b,a\nx,1\n", contract)
    assert outcome.ok
    assert pq.read_table(out).to_pylist() == [{"a": 1, "b": "x", "_source_file": "f.csv", "_source_line": 2}]


def test_cp932_declared_maps_wave_dash_the_excel_way(tmp_path):
    contract = contract_from_dict({"dataset": "t", "header": False, "encodings": ["cp932"],
                                   "columns": [{"name": "col_1"}, {"name": "col_2"}]})
    data = "13101,芝（１～３丁目）ｼﾊﾞ\r\n".encode("cp932")
    outcome, out = run(tmp_path, data, contract)
    assert outcome.ok and outcome.manifest["input"]["encoding"] == "cp932"
    assert pq.read_table(out).column("col_2").to_pylist() == ["芝（１～３丁目）ｼﾊﾞ"]  # U+FF5E, half-width kana kept


def test_cp932_is_detected_when_utf8_fails_and_recorded(tmp_path):
    contract = contract_from_dict({"dataset": "t", "encodings": ["utf-8", "cp932"], "columns": [{"name": "name"}]})
    outcome, out = run(tmp_path, "name\r\nﾄｳｷｮｳﾄ\r\n".encode("cp932"), contract)
    assert (outcome.manifest["input"]["encoding"], outcome.manifest["input"]["encoding_source"]) == ("cp932", "detected")
    assert pq.read_table(out).column("name").to_pylist() == ["ﾄｳｷｮｳﾄ"]


def test_many_chunks_stream_with_exact_lines(tmp_path, monkeypatch):
    import aws_handlers.core.convert as convert_module

    monkeypatch.setattr(convert_module, "MAX_CHUNK_ROWS", 7)
    rows = b"".join(b'%d,"multi\nline",B,a@b.c,Sales,,1,2020-01-02,true,\n' % i for i in range(1, 51))
    outcome, out = run(tmp_path, HEADER + rows)
    assert outcome.ok
    table = pq.read_table(out)
    assert table.num_rows == 50 and pq.ParquetFile(out).metadata.num_row_groups == 8
    assert table.column("_source_line").to_pylist() == [2 + 2 * i for i in range(50)]


def test_blank_lines_are_skipped_and_recorded_not_silent(tmp_path):
    outcome, out = run(tmp_path, HEADER + GOOD_ROW + b"\n\r\n" + GOOD_ROW.replace(b"1,", b"2,", 1))
    assert outcome.ok
    assert outcome.manifest["input"]["blank_lines"] == [3, 4]
    assert pq.read_table(out).column("_source_line").to_pylist() == [2, 5]


def test_a_failure_leaves_no_file_and_no_temp_file(tmp_path):
    outcome, out = run(tmp_path, HEADER + GOOD_ROW + b"x\n")
    assert outcome.manifest["status"] == "failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]


# Smallest inputs of two bugs found by the benchmark author (fast path disagreeing with the rules).
@pytest.mark.parametrize("ctype,fmt,value,message", [
    ("date", "%Y-%m-%d", "2021-02-30", '"2021-02-30" is not a date in format %Y-%m-%d'),
    ("date", "%Y-%m-%d", " 2021-02-03", '" 2021-02-03" is not a date in format %Y-%m-%d'),
    ("date", "%Y-%m-%d", "20-02-03", '"20-02-03" is not a date in format %Y-%m-%d'),
    ("timestamp", "%Y-%m-%d %H:%M:%S", "2021-04-31 10:00:00", '"2021-04-31 10:00:00" is not a timestamp in format %Y-%m-%d %H:%M:%S'),
])
def test_impossible_dates_are_errors_not_rolled_forward(tmp_path, ctype, fmt, value, message):
    contract = contract_from_dict({"dataset": "t", "columns": [{"name": "d", "type": ctype, "format": fmt}]})
    err = only_error(run(tmp_path, f"d\n{value}\n".encode(), contract)[0])
    assert (err.line, err.column, err.message) == (2, "d", message)


@pytest.mark.parametrize("ctype,value", [("int32", '"7\n"'), ("decimal(12,2)", '"1.5\n"'), ("int64", "7 ")])
def test_numbers_with_trailing_newline_or_space_are_errors(tmp_path, ctype, value):
    contract = contract_from_dict({"dataset": "t", "columns": [{"name": "n", "type": ctype}]})
    outcome, _ = run(tmp_path, f"n\n{value}\n".encode(), contract)
    assert only_error(outcome).column == "n"


def test_valid_unpadded_dates_still_convert(tmp_path):
    contract = contract_from_dict({"dataset": "t", "columns": [{"name": "d", "type": "date", "format": "%m/%d/%Y"}]})
    outcome, out = run(tmp_path, b"d\n5/14/1987\n12/01/2001\n", contract)
    assert outcome.ok
    assert [d.isoformat() for d in pq.read_table(out).column("d").to_pylist()] == ["1987-05-14", "2001-12-01"]


# Review findings: the exact (Python) rule accepted blanks and full-width digits; date formats with a time.
@pytest.mark.parametrize("value", ["2021-01- 5", "２０２１-01-05", "2021-01-05 "])
def test_dates_with_blanks_or_full_width_digits_are_errors(tmp_path, value):
    contract = contract_from_dict({"dataset": "t", "columns": [{"name": "d", "type": "date", "format": "%Y-%m-%d"}]})
    err = only_error(run(tmp_path, f"d\n{value}\n".encode(), contract)[0])
    assert (err.line, err.column, err.message) == (2, "d", f'"{value}" is not a date in format %Y-%m-%d')


def test_a_date_format_cannot_carry_a_time_of_day():
    from aws_handlers.core.contract import ContractError

    with pytest.raises(ContractError, match="a date format cannot hold a time of day"):
        contract_from_dict({"dataset": "t", "columns": [{"name": "d", "type": "date", "format": "%Y-%m-%d %H:%M"}]})


def test_timestamps_take_the_vectorized_path(tmp_path, monkeypatch):
    import aws_handlers.core.cast as cast

    def refuse(*args, **kwargs):
        raise AssertionError("slow path used for clean timestamps")

    monkeypatch.setattr(cast, "convert_value", refuse)
    contract = contract_from_dict({"dataset": "t", "columns": [{"name": "at", "type": "timestamp",
                                                                 "format": "%Y-%m-%d %H:%M:%S"}]})
    outcome, out = run(tmp_path, b"at\n2024-02-29 23:59:58\n2024-03-01 00:00:00\n", contract)
    assert outcome.ok
    assert [t.isoformat() for t in pq.read_table(out).column("at").to_pylist()] == [
        "2024-02-29T23:59:58", "2024-03-01T00:00:00"]
