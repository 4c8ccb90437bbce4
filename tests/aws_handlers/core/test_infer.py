"""Contract inference: real files from ../shared/data and small synthetic files.

Every inferred contract is also handed to the converter: if the converter rejects a file that the
inference accepted, the inference is wrong.
"""
from __future__ import annotations

import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from aws_handlers.core.contract import ContractError, is_safe_identifier, load_contract
from aws_handlers.core.convert import convert_csv
from aws_handlers.core.errors import DataError
from aws_handlers.core.infer import (DATE_FORMATS, TIMESTAMP_FORMATS, InferenceResult, _parses, detect_header,
                                     infer_contract, save_contract, string_max_bytes)
from tests.conftest import require_shared_data



def real(name: str) -> Path:
    """A file of ../shared/data/real (fails under CI when missing, skips elsewhere)."""
    return require_shared_data() / "real" / name


def columns_by_name(result: InferenceResult) -> dict:
    return {c.name: c for c in result.contract.columns}


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def infer_text(tmp_path: Path, text: str | bytes, **kwargs) -> InferenceResult:
    return infer_contract(write(tmp_path, text), "sample", **kwargs)


def assert_converts(path: Path, result: InferenceResult, tmp_path: Path) -> None:
    out = tmp_path / f"{path.stem}.parquet"
    outcome = convert_csv(lambda: open(path, "rb"), path.name, result.contract, out)
    assert outcome.errors == []
    assert outcome.manifest["status"] == "converted"
    assert outcome.manifest["output"]["rows"] == result.rows


def the_error(excinfo: pytest.ExceptionInfo) -> object:
    assert len(excinfo.value.errors) == 1, excinfo.value.errors
    return excinfo.value.errors[0]


# ---- real files ---------------------------------------------------------------------------

HR_HEADERS = [
    "Employee_Name", "EmpID", "MarriedID", "MaritalStatusID", "GenderID", "EmpStatusID", "DeptID", "PerfScoreID",
    "FromDiversityJobFairID", "Salary", "Termd", "PositionID", "Position", "State", "Zip", "DOB", "Sex",
    "MaritalDesc", "CitizenDesc", "HispanicLatino", "RaceDesc", "DateofHire", "DateofTermination", "TermReason",
    "EmploymentStatus", "Department", "ManagerName", "ManagerID", "RecruitmentSource", "PerformanceScore",
    "EngagementSurvey", "EmpSatisfaction", "SpecialProjectsCount", "LastPerformanceReview_Date", "DaysLateLast30",
    "Absences",
]


@pytest.mark.shared_data
def test_hr_dataset():
    result = infer_contract(real("HRDataset_v14.csv"), "hr_employees")
    contract = result.contract
    assert result.rows == 311
    assert result.header_detected is True and result.header_used is True
    assert result.encoding == "utf-8-sig"
    assert contract.encodings == ("utf-8", "utf-8-sig")
    assert len(contract.columns) == 36
    assert [c.source for c in contract.columns] == HR_HEADERS
    assert contract.header is True
    assert contract.primary_key == ("emp_id",)
    assert contract.table == "public.hr_employees"
    assert contract.null_markers == () and contract.on_error == "fail" and contract.version == 1
    assert contract.description.startswith("Inferred from HRDataset_v14.csv (311 rows) on ")
    cols = columns_by_name(result)
    assert contract.column_names[:3] == ["employee_name", "emp_id", "married_id"]

    def kind(name):
        c = cols[name]
        return (c.type, c.nullable, c.format, c.max_bytes)

    assert kind("emp_id") == ("int32", False, None, None)
    assert cols["emp_id"].source == "EmpID"
    assert kind("salary") == ("int32", False, None, None)
    assert kind("manager_id") == ("int32", True, None, None)          # 8 empty cells
    assert kind("dob") == ("date", False, "%m/%d/%Y", None)            # 5/14/1987
    assert kind("dateof_hire") == ("date", False, "%m/%d/%Y", None)
    assert kind("last_performance_review_date") == ("date", False, "%m/%d/%Y", None)
    assert kind("dateof_termination") == ("date", True, "%m/%d/%Y", None)  # 207 empty cells
    # Values run 1.12 .. 5 with at most two decimals (e.g. 1.12, 4.6, 5): one integer digit + scale 2.
    assert kind("engagement_survey") == ("decimal(3,2)", False, None, None)
    assert kind("zip") == ("int32", False, None, None)                 # leading zeros already lost upstream
    assert kind("employee_name") == ("string", False, None, 256)
    assert kind("department") == ("string", False, None, 256)
    assert kind("term_reason") == ("string", False, None, 256)         # N/A-StillEmployed is a value
    assert kind("sex") == ("string", False, None, 256)
    assert kind("hispanic_latino") == ("string", False, None, 256)     # Yes/No are not booleans here
    assert kind("days_late_last30") == ("int32", False, None, None)
    assert any("header row detected" in n for n in result.notes)


@pytest.mark.shared_data
def test_hr_dataset_forced_without_header():
    result = infer_contract(real("HRDataset_v14.csv"), "hr_employees", header=False)
    assert result.header_detected is True and result.header_used is False
    assert result.rows == 312
    assert result.contract.column_names == [f"col_{i}" for i in range(1, 37)]
    # The header text now sits in every column, so nothing can be typed.
    assert {c.type for c in result.contract.columns} == {"string"}
    assert any("detection alone would have decided a header row" in n for n in result.notes)


@pytest.mark.shared_data
def test_jp_post_headerless_cp932():
    result = infer_contract(real("jp_post_13TOKYO_sjis.csv"), "jp_post")
    contract = result.contract
    assert result.header_detected is False and result.header_used is False
    assert result.encoding == "cp932"
    assert contract.encodings == ("cp932",)
    assert result.rows == 4165
    assert contract.header is False
    assert contract.column_names == [f"col_{i}" for i in range(1, 16)]
    assert [c.source for c in contract.columns] == [f"col_{i}" for i in range(1, 16)]
    types = [c.type for c in contract.columns]
    # 1 JIS code 13101..13421; 2 old zip "100  " (blank padded); 3 zip 1000000..2080035 (no Tokyo zip
    # starts with 0, so nothing is lost as int32); 4-9 kana/kanji; 10-15 flags 0/1 (col_15 also 5).
    assert types == ["int32", "string", "int32"] + ["string"] * 6 + ["int32"] * 6
    assert all(c.nullable is False for c in contract.columns)
    assert [c.max_bytes for c in contract.columns[3:9]] == [256, 256, 512, 256, 256, 256]  # col_6: 134 bytes
    assert contract.primary_key == ()  # zip codes repeat (a town name split over two records)
    assert "no header row detected: columns named col_1..col_15; use --header to override" in result.notes


@pytest.mark.shared_data
def test_jp_post_forced_header_is_refused_because_the_first_row_repeats_names():
    # The first record ends with six "0" flags: as a header those are duplicate names, which the
    # converter's exact header mapping rejects, so inference refuses instead of guessing.
    with pytest.raises(DataError) as excinfo:
        infer_contract(real("jp_post_13TOKYO_sjis.csv"), "jp_post", header=True)
    err = the_error(excinfo)
    assert err.kind == "bad_header" and err.line == 1
    assert "duplicate header names ['0', '0', '0', '0', '0', '0']" in err.message


@pytest.mark.shared_data
def test_sabae_japanese_headers():
    result = infer_contract(real("jp_sabae_facilities_utf8bom.csv"), "sabae_facilities")
    contract = result.contract
    assert result.rows == 64
    assert result.header_detected is True and result.header_used is True
    assert result.encoding == "utf-8-sig"
    assert len(contract.columns) == 25
    assert contract.columns[0].source == "店舗名(日本語)"
    assert contract.columns[0].name == "店舗名_日本語"
    assert [c.source for c in contract.columns[:4]] == ["店舗名(日本語)", "店舗名(英語)", "カテゴリー", "郵便番号"]
    assert all(is_safe_identifier(name) for name in contract.column_names)
    cols = {c.source: c for c in contract.columns}
    assert cols["電話番号"].type == "string"            # 0778-51-２２00: full-width digits, dashes
    assert cols["郵便番号"].type == "int32"             # 9160023 etc., no leading zeros
    assert cols["緯度"].type == "decimal(12,10)"        # 35.9436093011
    assert cols["経度"].type == "decimal(13,10)"        # 136.1875328644
    # Every cell of these columns is a quoted "" (empty string, not NULL): strings, not nullable.
    assert (cols["店舗名(英語)"].type, cols["店舗名(英語)"].nullable) == ("string", False)
    assert (cols["更新日"].type, cols["更新日"].nullable) == ("string", False)
    assert contract.primary_key == ()


@pytest.mark.shared_data
@pytest.mark.parametrize("name, rows", [("HRDataset_v14.csv", 311), ("jp_post_13TOKYO_sjis.csv", 4165),
                                        ("jp_sabae_facilities_utf8bom.csv", 64)])
def test_converter_accepts_inferred_contract(name, rows, tmp_path):
    path = real(name)
    result = infer_contract(path, "real_file")
    outcome = convert_csv(lambda: open(path, "rb"), name, result.contract, tmp_path / "x.parquet")
    assert outcome.errors == []
    assert outcome.manifest["status"] == "converted"
    assert outcome.manifest["output"]["rows"] == rows == result.rows


@pytest.mark.shared_data
def test_save_and_load_round_trip_real(tmp_path):
    result = infer_contract(real("jp_sabae_facilities_utf8bom.csv"), "sabae_facilities")
    path = save_contract(result.contract, tmp_path / "contracts")
    assert path == tmp_path / "contracts" / "sabae_facilities.yaml"
    text = path.read_text(encoding="utf-8")
    assert "source: 店舗名(日本語)" in text          # readable Japanese, not \u escapes
    assert load_contract(path).to_dict() == result.contract.to_dict()
    assert load_contract(path) == result.contract


# ---- header detection ---------------------------------------------------------------------

@pytest.mark.parametrize("fields, expected", [
    (["id", "name", "joined"], True),
    (["店舗名(日本語)", "郵便番号"], True),
    (["id", "", "joined"], False),            # an empty value
    (["Name", "name"], False),                # not unique ignoring case
    (["name", "42"], False),                  # a number
    (["name", "-4.5"], False),
    (["name", "+7"], False),
    (["name", "2020-01-31"], False),          # a date
    (["name", "5/14/1987"], False),
    (["name", "31.12.2020"], False),
])
def test_detect_header(fields, expected):
    assert detect_header(fields) is expected


def test_headerless_file_gets_positional_names(tmp_path):
    result = infer_text(tmp_path, "1,alpha,2020-01-01\n2,beta,2020-01-02\n")
    assert result.header_detected is False and result.rows == 2
    assert result.contract.column_names == ["col_1", "col_2", "col_3"]
    assert [c.type for c in result.contract.columns] == ["int32", "string", "date"]
    assert "no header row detected: columns named col_1..col_3; use --header to override" in result.notes


def test_header_override_true(tmp_path):
    path = write(tmp_path, "13101,100,x\n1,2,y\n3,4,z\n")
    result = infer_contract(path, "sample", header=True)
    assert result.header_detected is False and result.header_used is True
    assert result.rows == 2
    assert result.contract.column_names == ["c_13101", "c_100", "x"]
    assert [c.source for c in result.contract.columns] == ["13101", "100", "x"]
    assert [c.type for c in result.contract.columns] == ["int32", "int32", "string"]
    assert_converts(path, result, tmp_path)


def test_duplicate_header_names_are_refused(tmp_path):
    with pytest.raises(DataError) as excinfo:
        infer_contract(write(tmp_path, "id,Name,name\n1,a,b\n"), "sample", header=True)
    err = the_error(excinfo)
    assert err.kind == "bad_header" and err.line == 1
    assert "case-colliding header names ['Name', 'name']" in err.message
    with pytest.raises(DataError, match=r"duplicate header names \['a', 'a'\]"):
        infer_contract(write(tmp_path, "a,a\n1,2\n"), "sample", header=True)


def test_empty_header_name_is_refused(tmp_path):
    with pytest.raises(DataError) as excinfo:
        infer_contract(write(tmp_path, "id,,x\n1,2,3\n"), "sample", header=True)
    assert the_error(excinfo).message == "header name of column 2 is empty"


def test_names_that_normalize_alike_are_deduplicated(tmp_path):
    path = write(tmp_path, "Name,name x,NAME-X,店舗名(日本語)\na,b,c,d\n")
    result = infer_contract(path, "sample")
    assert result.header_used is True
    assert result.contract.column_names == ["name", "name_x", "name_x_2", "店舗名_日本語"]
    assert [c.source for c in result.contract.columns] == ["Name", "name x", "NAME-X", "店舗名(日本語)"]
    assert any("'NAME-X' -> name_x_2" in n for n in result.notes)
    assert_converts(path, result, tmp_path)


# ---- types ----------------------------------------------------------------------------------

def test_leading_zeros_plus_and_whitespace_stay_string(tmp_path):
    path = write(tmp_path, 'code,zero,frac,plus,lead,trail,neg\n007,0,0.5,+5,"  5",5 ,-007\n1,0,1,6,7,8,-1\n')
    result = infer_contract(path, "sample")
    cols = columns_by_name(result)
    assert cols["code"].type == "string"
    assert cols["zero"].type == "int32"
    assert cols["frac"].type == "decimal(2,1)"
    assert cols["plus"].type == "string"
    assert cols["lead"].type == "string"
    assert cols["trail"].type == "string"
    assert cols["neg"].type == "string"
    assert "column code kept as string: values such as '007' have leading zeros that a number type would drop" \
        in result.notes
    assert_converts(path, result, tmp_path)


def test_quoted_empty_is_a_string_and_unquoted_empty_is_null(tmp_path):
    path = write(tmp_path, 'id,quoted,unquoted,allnull\n1,"",,\n2,5,5,\n3,6,,\n')
    result = infer_contract(path, "sample")
    cols = columns_by_name(result)
    assert (cols["quoted"].type, cols["quoted"].nullable, cols["quoted"].max_bytes) == ("string", False, 256)
    assert (cols["unquoted"].type, cols["unquoted"].nullable) == ("int32", True)
    assert (cols["allnull"].type, cols["allnull"].nullable, cols["allnull"].max_bytes) == ("string", True, 256)
    assert (cols["id"].type, cols["id"].nullable) == ("int32", False)
    assert "column allnull is empty (NULL) in every row: typed as a nullable string" in result.notes
    assert_converts(path, result, tmp_path)


def test_integer_widths(tmp_path):
    path = write(tmp_path, "a,b,c,d,e\n"
                           "2147483647,2147483648,-2147483649,99999999999999999999,1\n"
                           "-2147483648,1,1,1,123456789012345678901234567890123456789\n")
    result = infer_contract(path, "sample")
    assert [c.type for c in result.contract.columns] == ["int32", "int64", "int64", "decimal(20,0)", "string"]
    assert_converts(path, result, tmp_path)


def test_decimal_precision_and_scale(tmp_path):
    path = write(tmp_path, "survey,money,small,neg,dot\n5,1234.5,0.125,-3,5.\n4.6,0.75,.5,-0.5,-.5\n"
                           "3.02,12,0,-12.25,10\n")
    result = infer_contract(path, "sample")
    assert [c.type for c in result.contract.columns] == ["decimal(3,2)", "decimal(6,2)", "decimal(3,3)",
                                                         "decimal(4,2)", "decimal(3,1)"]
    assert_converts(path, result, tmp_path)
    only_one_place = infer_text(tmp_path, "x\n5\n4.6\n")
    assert only_one_place.contract.columns[0].type == "decimal(2,1)"


def test_too_many_digits_for_a_decimal_is_string(tmp_path):
    result = infer_text(tmp_path, "x\n1.5\n" + "1" * 30 + "." + "1" * 9 + "\n")
    assert result.contract.columns[0].type == "string"
    path = write(tmp_path, f"a,b\n1,1\n{'9' * 5000},-{'9' * 38}\n")  # past int()'s 4300-digit limit
    result = infer_contract(path, "sample")
    assert [c.type for c in result.contract.columns] == ["string", "decimal(38,0)"]
    assert_converts(path, result, tmp_path)


def test_booleans(tmp_path):
    path = write(tmp_path, "flag,bits,words,mixed\ntrue,0,yes,true\nFALSE,1,no,1\nTrue,1,yes,false\n")
    result = infer_contract(path, "sample")
    assert [c.type for c in result.contract.columns] == ["boolean", "int32", "string", "string"]
    assert_converts(path, result, tmp_path)


def test_dates_pick_the_first_format_that_fits_every_value(tmp_path):
    path = write(tmp_path, "iso,slash,us,eu,dot,mixed,bad\n"
                           "2020-01-31,2020/01/31,01/02/2020,13/02/2020,31.12.2020,2020-01-31,2020-02-30\n"
                           "2021-2-3,2021/2/3,5/14/1987,01/02/2020,1.2.2021,01/31/2020,2020-02-01\n")
    result = infer_contract(path, "sample")
    got = [(c.type, c.format) for c in result.contract.columns]
    assert got == [("date", "%Y-%m-%d"), ("date", "%Y/%m/%d"), ("date", "%m/%d/%Y"), ("date", "%d/%m/%Y"),
                   ("date", "%d.%m.%Y"), ("string", None), ("string", None)]
    assert_converts(path, result, tmp_path)


def test_timestamps(tmp_path):
    path = write(tmp_path, "a,b,c,d,mixed\n"
                           "2020-01-31 10:11:12,2020-01-31T10:11:12,2020-01-31 10:11:12.5,2020-01-31T10:11:12.123456,"
                           "2020-01-31 10:11:12\n"
                           "2021-12-01 00:00:00,2021-12-01T23:59:59,2021-12-01 00:00:00.000001,"
                           "2021-12-01T00:00:00.0,2021-12-01\n")
    result = infer_contract(path, "sample")
    got = [(c.type, c.format) for c in result.contract.columns]
    assert got == [("timestamp", "%Y-%m-%d %H:%M:%S"), ("timestamp", "%Y-%m-%dT%H:%M:%S"),
                   ("timestamp", "%Y-%m-%d %H:%M:%S.%f"), ("timestamp", "%Y-%m-%dT%H:%M:%S.%f"), ("string", None)]
    assert_converts(path, result, tmp_path)


def test_dates_with_inner_whitespace_or_wide_digits_stay_string(tmp_path):
    # strptime would accept both ("%d" matches " 5", "\d" matches "２"), silently changing the text.
    result = infer_text(tmp_path, "a,b,c\n2020-01- 5,２０２０-01-05,2020-01-05  10:00:00\n")
    assert [c.type for c in result.contract.columns] == ["string", "string", "string"]


def test_fast_date_parsing_agrees_with_strptime():
    values = ["2020-01-31", "2020-1-3", "2020-02-30", "2020-02-29", "2021-02-29", "0000-01-01", "2020-13-01",
              "2020-00-10", "2020-01-00", "2020-01-310", "2020-01- 5", "2020/01/31", "01/02/2020", "1/2/2020",
              "13/02/2020", "12/31/2020", "31.12.2020", "1.2.2021", "2020-01-31 10:11:12", "2020-01-31 24:00:00",
              "2020-01-31 23:60:00", "2020-01-31 23:59:60", "2020-01-31 23:59:61", "2020-01-31 1:2:3",
              "2020-01-31T10:11:12", "2020-01-31 10:11:12.5", "2020-01-31 10:11:12.1234567",
              "2020-01-31T10:11:12.000001", "2020-01-31  10:11:12", "2020-01-31 10:11", "2020-01-31T10:11:12Z",
              "9999-12-31 23:59:59.999999", "2020-01-31 10:11:12.", "", "x", "2020"]
    for value in values:
        for fmt in DATE_FORMATS + TIMESTAMP_FORMATS:
            try:
                datetime.strptime(value, fmt)
                expected = True
            except ValueError:
                expected = False
            assert _parses(value, fmt) is expected, (value, fmt)


@pytest.mark.parametrize("longest, expected", [(0, 256), (1, 256), (128, 256), (129, 512), (200, 512),
                                               (300, 1024), (32767, 65535), (40000, 65535)])
def test_string_max_bytes(longest, expected):
    assert string_max_bytes(longest) == expected


def test_string_sizes_count_utf8_bytes(tmp_path):
    path = write(tmp_path, f"ascii,kana,huge\n{'x' * 200},{'あ' * 100},{'y' * 40000}\nz,z,z\n")
    result = infer_contract(path, "sample")
    assert [c.max_bytes for c in result.contract.columns] == [512, 1024, 65535]
    assert_converts(path, result, tmp_path)


def test_value_over_the_warehouse_limit_is_an_error(tmp_path):
    with pytest.raises(DataError) as excinfo:
        infer_text(tmp_path, f"a,b\n1,x\n2,{'y' * 70000}\n")
    err = the_error(excinfo)
    assert (err.kind, err.line, err.column) == ("too_long", 3, "b")


def test_primary_key(tmp_path):
    path = write(tmp_path, "name,dup_id,null_id,emp_id,order_id\n"
                           "a,1,1,10,100\nb,1,,11,101\nc,2,3,12,102\n")
    result = infer_contract(path, "sample")
    # name is unique but has no "id"; dup_id repeats; null_id has a NULL; emp_id is the first that fits.
    assert result.contract.primary_key == ("emp_id",)
    assert_converts(path, result, tmp_path)


def test_primary_key_uniqueness_is_judged_on_typed_values(tmp_path):
    result = infer_text(tmp_path, "item_id,other_id\n1.0,1\n1.00,2\n")
    assert result.contract.columns[0].type == "decimal(3,2)"  # 1.0 and 1.00 are the same number
    assert result.contract.primary_key == ("other_id",)
    assert infer_text(tmp_path, "name,value\na,1\nb,2\n").contract.primary_key == ()


def test_header_only_file(tmp_path):
    path = write(tmp_path, "employee_id,name,department\r\n")
    result = infer_contract(path, "sample")
    assert result.header_detected is True and result.rows == 0
    assert [(c.type, c.nullable) for c in result.contract.columns] == [("string", True)] * 3
    assert result.contract.primary_key == ()
    assert_converts(path, result, tmp_path)


def test_blank_lines_and_mixed_newlines(tmp_path):
    path = write(tmp_path, 'id,note\r\n1,"two\nlines"\n\r\n2,x\r3,y\r\n')
    result = infer_contract(path, "sample")
    assert result.rows == 3
    assert result.contract.primary_key == ("id",)
    assert "1 blank line(s) skipped (e.g. line 4); the converter skips them too" in result.notes
    assert_converts(path, result, tmp_path)


# ---- encodings ------------------------------------------------------------------------------

def test_utf8_without_bom(tmp_path):
    result = infer_text(tmp_path, "名前,値\n鯖江,1\n")
    assert result.encoding == "utf-8"
    assert result.contract.encodings == ("utf-8", "utf-8-sig")


def test_utf8_with_bom_header_is_clean(tmp_path):
    result = infer_text(tmp_path, b'\xef\xbb\xbf"employee_id",name\n1,a\n')
    assert result.encoding == "utf-8-sig"
    assert result.contract.columns[0].source == "employee_id"
    assert result.contract.primary_key == ("employee_id",)


def test_cp932(tmp_path):
    path = write(tmp_path, "名前,値\n鯖江,1\n～,2\n".encode("cp932"))
    result = infer_contract(path, "sample")
    assert result.encoding == "cp932"
    assert result.contract.encodings == ("cp932",)
    assert [c.source for c in result.contract.columns] == ["名前", "値"]
    assert_converts(path, result, tmp_path)


def test_declared_encoding(tmp_path):
    path = write(tmp_path, "name,value\nabc,1\n")
    result = infer_contract(path, "sample", encoding="shift_jis")
    assert result.encoding == "cp932"
    assert result.contract.encodings == ("cp932",)


def test_cp932_after_a_long_ascii_start_falls_back(tmp_path):
    ascii_part = "".join(f"{i},name{i}\n" for i in range(10_000))  # > 64 KiB of ASCII
    path = write(tmp_path, ("id,name\n" + ascii_part + "10000,東京\n").encode("cp932"))
    result = infer_contract(path, "sample")
    assert result.encoding == "cp932"
    assert result.contract.encodings == ("cp932",)
    assert result.rows == 10_001
    assert any("decodes as cp932" in n for n in result.notes)
    assert_converts(path, result, tmp_path)


def test_undecodable_bytes(tmp_path):
    # 0x85 0x40 is neither UTF-8 nor a defined CP932 character (CP932 maps lone 0x80/0xA0/0xFD-0xFF).
    with pytest.raises(DataError) as excinfo:
        infer_text(tmp_path, b"a,b\n1,\x85\x40\n")
    err = the_error(excinfo)
    assert (err.kind, err.line, err.byte_offset) == ("undecodable", 2, 6)
    assert err.message.startswith("bytes 85 40 0a at byte offset 6 are not valid in any of ")
    assert "declare the file's encoding with --encoding" in err.message


def test_undecodable_bytes_after_the_detection_window(tmp_path):
    ascii_part = "".join(f"{i},name{i}\n" for i in range(10_000))  # > 64 KiB of ASCII
    path = write(tmp_path, ("id,name\n" + ascii_part).encode() + b"10000,\x85\x40\n")
    with pytest.raises(DataError) as excinfo:
        infer_contract(path, "sample")
    err = the_error(excinfo)
    assert (err.kind, err.line) == ("undecodable", 10_002)
    assert err.byte_offset == len(("id,name\n" + ascii_part + "10000,").encode())
    assert "are not valid utf-8 (detected)" in err.message


# ---- structural errors ----------------------------------------------------------------------

def test_empty_file(tmp_path):
    with pytest.raises(DataError) as excinfo:
        infer_text(tmp_path, b"")
    err = the_error(excinfo)
    assert err.kind == "empty_file"
    assert err.message == "file is empty (0 bytes)"
    assert err.file.endswith("data.csv")


def test_only_blank_lines(tmp_path):
    with pytest.raises(DataError, match="only blank lines"):
        infer_text(tmp_path, "\n\r\n\n")


def test_ragged_rows_name_file_and_physical_line(tmp_path):
    path = write(tmp_path, 'id,note,x\n1,"multi\nline",a\n2,b\n3,c,d,e\n4,ok,x\n')
    with pytest.raises(DataError) as excinfo:
        infer_contract(path, "sample")
    errors = excinfo.value.errors
    assert [(e.file, e.line, e.kind) for e in errors] == [(str(path), 4, "ragged_row"), (str(path), 5, "ragged_row")]
    assert errors[0].message == "expected 3 fields (as in line 1), found 2"
    assert errors[1].message == "expected 3 fields (as in line 1), found 4"


def test_malformed_quoting(tmp_path):
    with pytest.raises(DataError) as excinfo:
        infer_text(tmp_path, 'id,name\n1,"ab"c\n')
    err = the_error(excinfo)
    assert (err.kind, err.line, err.column) == ("malformed_csv", 2, "name")


def test_nul_byte(tmp_path):
    with pytest.raises(DataError) as excinfo:
        infer_text(tmp_path, b"id,name\n1,a\x00b\n")
    err = the_error(excinfo)
    assert (err.kind, err.line) == ("nul_byte", 2)


def test_bad_dataset_name_fails_before_reading(tmp_path):
    with pytest.raises(ContractError):
        infer_contract(tmp_path / "does-not-exist.csv", "Bad-Name")
    with pytest.raises(ContractError):
        infer_contract(tmp_path / "does-not-exist.csv", "ok", table="Public.X")


# ---- contract fields and saving -------------------------------------------------------------

def test_contract_fields(tmp_path):
    before = datetime.now(timezone.utc).date()
    path = write(tmp_path, "id,v\n1,2\n2,3\n", name="orders_2024.csv")
    result = infer_contract(path, "orders", table="sales.orders")
    after = datetime.now(timezone.utc).date()
    contract = result.contract
    assert (contract.dataset, contract.version, contract.table) == ("orders", 1, "sales.orders")
    assert contract.header is True and contract.null_markers == () and contract.on_error == "fail"
    assert contract.description in {f"Inferred from orders_2024.csv (2 rows) on {d.isoformat()}"
                                    for d in (before, after)}
    assert before <= after <= before + timedelta(days=1)


def test_save_and_load_round_trip(tmp_path):
    path = write(tmp_path, "Emp ID,名前,joined,score,active,note\n"
                           "1,鯖江,5/14/1987,4.6,true,\n2,東京,1/2/2000,5,false,\"\"\n")
    result = infer_contract(path, "employees")
    saved = save_contract(result.contract, tmp_path)
    assert saved == tmp_path / "employees.yaml"
    loaded = load_contract(saved)
    assert loaded.to_dict() == result.contract.to_dict()
    assert loaded == result.contract
    assert [c.type for c in loaded.columns] == ["int32", "string", "date", "decimal(2,1)", "boolean", "string"]
    assert loaded.primary_key == ("emp_id",)
    # Saving again overwrites in place.
    assert save_contract(result.contract, tmp_path) == saved
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".yaml") == ["employees.yaml"]


# ---- streaming ------------------------------------------------------------------------------

def test_memory_does_not_grow_with_the_file(tmp_path):
    """Per-column summaries only: peak memory is about the same for 20k and 200k rows."""
    def peak_for(rows: int) -> int:
        path = tmp_path / f"big_{rows}.csv"
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write("name,amount,day\n")
            for i in range(rows):
                fh.write(f"person number {i},{i}.25,2020-01-{i % 28 + 1:02d}\n")
        tracemalloc.start()
        try:
            result = infer_contract(path, "big")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.rows == rows
        assert [c.type for c in result.contract.columns] == ["string", f"decimal({len(str(rows - 1)) + 2},2)",
                                                             "date"]
        return peak

    small, large = peak_for(5_000), peak_for(50_000)
    assert large < small * 1.5 + (1 << 20), (small, large)
