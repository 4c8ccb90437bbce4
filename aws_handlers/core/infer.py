"""Infer a dataset contract from one CSV file (what `etl-observer contract infer` runs).

The whole file is read, streaming, with the converter's own reader (HashingReader, choose_encoding,
iter_records, quoted-vs-unquoted empty fields), so what is inferred is what the converter will see.
Memory holds one running summary per column, never the values; the only value sets kept are for
primary-key candidates (columns whose name contains "id"), and a column leaves candidacy - and its
set is freed - at its first NULL or duplicate.

A column gets a typed contract type only if the converter would accept every one of its values and
the conversion cannot lose anything a reader would miss: no leading zeros ("007"), no leading '+',
no surrounding whitespace. Everything else stays a string.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from .cast import DECIMAL_PATTERN, INT_PATTERN, INT_RANGES
from .contract import (REDSHIFT_MAX_VARCHAR_BYTES, Contract, contract_from_dict, unique_identifiers)
from .csv_reader import (HashingReader, NulByteError, choose_encoding, iter_records, locate_decode_error,
                         locate_offset, normalize_codec, tokenize_quoting)
from .errors import DataError, RowError, shorten

DETECT_ENCODINGS = ("utf-8", "utf-8-sig", "cp932")
DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y")
TIMESTAMP_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S.%f")
MIN_STRING_BYTES = 256
MAX_DECIMAL_PRECISION = 38
MAX_REPORTED_ERRORS = 100
DELIMITER = ","
TRUE_FALSE = ("true", "false")

# The converter's definitions (cast.py), used for header detection: "does this look like data?"
_LOOSE_INT_RE = re.compile(INT_PATTERN)
_LOOSE_DECIMAL_RE = re.compile(DECIMAL_PATTERN)
# What inference accepts as a number: the converter's patterns minus '+' and leading zeros.
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_DECIMAL_RE = re.compile(r"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)")
_WHITESPACE_RE = re.compile(r"\s")


@dataclass
class InferenceResult:
    contract: Contract
    header_detected: bool       # what detection decided (before any override)
    header_used: bool
    encoding: str               # codec used, e.g. "utf-8-sig", "cp932"
    rows: int                   # data records read (all of them - no sampling)
    notes: list[str] = field(default_factory=list)


class _Undecodable(Exception):
    def __init__(self, codec: str, how: str, reason: str):
        self.codec, self.how, self.reason = codec, how, reason
        super().__init__(reason)


# datetime.strptime costs ~10 us a call (locale checks, cache lock). For the fixed candidate formats the
# same decision is made here: CPython's own _strptime field patterns (ASCII digits only: callers have
# checked value.isascii()) followed by the same datetime() range check. test_infer compares the two.
_FIELD_PATTERNS = {
    "d": r"(?P<d>3[0-1]|[1-2][0-9]|0[1-9]|[1-9]| [1-9])",
    "f": r"(?P<f>[0-9]{1,6})",
    "H": r"(?P<H>2[0-3]|[0-1][0-9]|[0-9])",
    "m": r"(?P<m>1[0-2]|0[1-9]|[1-9])",
    "M": r"(?P<M>[0-5][0-9]|[0-9])",
    "S": r"(?P<S>6[0-1]|[0-5][0-9]|[0-9])",
    "Y": r"(?P<Y>[0-9][0-9][0-9][0-9])",
}


def _format_regex(fmt: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "%":
            out.append(_FIELD_PATTERNS[fmt[i + 1]])
            i += 2
            continue
        out.append(r"\s+" if ch == " " else re.escape(ch))
        i += 1
    return re.compile("".join(out))


_FORMAT_REGEXES = {fmt: _format_regex(fmt) for fmt in DATE_FORMATS + TIMESTAMP_FORMATS}


def _parses(value: str, fmt: str) -> bool:
    """Same answer as datetime.strptime(value, fmt) succeeding, for ASCII values and candidate formats."""
    regex = _FORMAT_REGEXES.get(fmt)
    if regex is None or not value.isascii():
        try:
            datetime.strptime(value, fmt)
            return True
        except ValueError:
            return False
    found = regex.match(value)
    if found is None or found.end() != len(value):  # strptime: "unconverted data remains"
        return False
    parts = found.groupdict()
    try:
        datetime(int(parts["Y"]), int(parts["m"]), int(parts["d"]), int(parts.get("H") or 0),
                 int(parts.get("M") or 0), int(parts.get("S") or 0), int((parts.get("f") or "0").ljust(6, "0")))
    except ValueError:
        return False
    return True


def _date_candidate(value: str) -> bool:
    # Python's strptime accepts Unicode digits and a blank before %d/%m: refuse both, keep text exact.
    return 6 <= len(value) <= 10 and value.isascii() and value[0].isdigit() and not _WHITESPACE_RE.search(value)


def _timestamp_candidate(value: str) -> bool:
    # A blank in the format matches any run of whitespace in strptime: allow exactly one plain space.
    return (14 <= len(value) <= 26 and value.isascii() and value[0].isdigit() and ":" in value
            and len(_WHITESPACE_RE.findall(value)) == value.count(" ") <= 1)


def _looks_like_data(value: str) -> bool:
    """Header detection: a number (the converter's patterns) or a date in a candidate format."""
    text = value.strip()
    if _LOOSE_INT_RE.match(text) or _LOOSE_DECIMAL_RE.match(text):
        return True
    return text.isascii() and any(_parses(text, fmt) for fmt in DATE_FORMATS)


def detect_header(fields: list[str]) -> bool:
    """The first record is a header iff every value is non-empty, values are unique (ignoring case)
    and none looks like a number or a date."""
    if not fields or any(f == "" for f in fields):
        return False
    if len({f.casefold() for f in fields}) != len(fields):
        return False
    return not any(_looks_like_data(f) for f in fields)


def string_max_bytes(longest: int) -> int:
    """max(256, smallest power of two >= 2 * longest), capped at Redshift's VARCHAR limit."""
    size = 1
    while size < 2 * longest:
        size *= 2
    return min(max(MIN_STRING_BYTES, size), REDSHIFT_MAX_VARCHAR_BYTES)


class _ColumnStats:
    """Running summary of one column: which types every value so far fits, and their extent."""

    __slots__ = ("nulls", "values", "longest", "int_ok", "int_min", "int_max", "dec_ok",
                 "dec_int_digits", "dec_scale", "bool_ok", "date_formats", "ts_formats", "pk_values",
                 "leading_zero", "typed_alive")

    def __init__(self, pk_candidate: bool):
        self.nulls = 0
        self.values = 0
        self.longest = 0
        self.int_ok = self.dec_ok = self.bool_ok = True
        self.int_min: int | None = None
        self.int_max: int | None = None
        self.dec_int_digits = 0
        self.dec_scale = 0
        self.date_formats = list(DATE_FORMATS)
        self.ts_formats = list(TIMESTAMP_FORMATS)
        self.pk_values: set[str] | None = set() if pk_candidate else None
        self.leading_zero: str | None = None
        self.typed_alive = True

    def add(self, value: str | None) -> int:
        """Account for one value; returns its UTF-8 byte length (0 for NULL)."""
        if value is None:
            self.nulls += 1
            self.pk_values = None
            return 0
        self.values += 1
        size = len(value) if value.isascii() else len(value.encode("utf-8"))
        if size > self.longest:
            self.longest = size
        if self.pk_values is not None:
            if value in self.pk_values:
                self.pk_values = None
            else:
                self.pk_values.add(value)
        if self.typed_alive:
            self._check_types(value)
        return size

    def _kill_types(self) -> None:
        self.int_ok = self.dec_ok = self.bool_ok = self.typed_alive = False
        self.date_formats.clear()
        self.ts_formats.clear()

    def _check_types(self, value: str) -> None:
        if value == "" or value[0] == "+" or value[0].isspace() or value[-1].isspace():
            self._kill_types()
            return
        if self.int_ok:
            if _INT_RE.fullmatch(value):
                # int() refuses over 4300 digits; anything over 19 digits is past int64 anyway.
                number = int(value) if len(value) <= 20 else (-(2**70) if value[0] == "-" else 2**70)
                if self.int_min is None or number < self.int_min:
                    self.int_min = number
                if self.int_max is None or number > self.int_max:
                    self.int_max = number
            else:
                self.int_ok = False
        if self.dec_ok:
            if _DECIMAL_RE.fullmatch(value):
                whole, _, fraction = value.lstrip("-").partition(".")
                self.dec_int_digits = max(self.dec_int_digits, len(whole.lstrip("0")))
                self.dec_scale = max(self.dec_scale, len(fraction))
            else:
                self.dec_ok = False
        if (self.int_ok or self.dec_ok) is False and self.leading_zero is None and (
                _LOOSE_DECIMAL_RE.match(value) and value.lstrip("-")[:1] == "0" and value.lstrip("-")[1:2].isdigit()):
            self.leading_zero = value
        if self.bool_ok and value.lower() not in TRUE_FALSE:
            self.bool_ok = False
        if self.date_formats:
            if _date_candidate(value):
                self.date_formats = [f for f in self.date_formats if _parses(value, f)]
            else:
                self.date_formats.clear()
        if self.ts_formats:
            if _timestamp_candidate(value):
                self.ts_formats = [f for f in self.ts_formats if _parses(value, f)]
            else:
                self.ts_formats.clear()
        if not (self.int_ok or self.dec_ok or self.bool_ok or self.date_formats or self.ts_formats):
            self.typed_alive = False

    def decide(self) -> tuple[str, str | None]:
        """(contract type, strptime format or None)."""
        if self.values == 0:
            return "string", None
        if self.int_ok:
            for ctype in ("int32", "int64"):
                low, high = INT_RANGES[ctype]
                if low <= self.int_min <= high and low <= self.int_max <= high:  # type: ignore[operator]
                    return ctype, None
        if self.dec_ok:
            precision = max(1, self.dec_int_digits + self.dec_scale)
            if precision <= MAX_DECIMAL_PRECISION:
                return f"decimal({precision},{self.dec_scale})", None
        if self.bool_ok:
            return "boolean", None
        if self.date_formats:
            return "date", self.date_formats[0]
        if self.ts_formats:
            return "timestamp", self.ts_formats[0]
        return "string", None

    def unique_as(self, ctype: str, fmt: str | None) -> bool:
        """Primary-key check: distinct texts must stay distinct once typed ("1.0" vs "1.00")."""
        values = self.pk_values
        if values is None or self.nulls or not self.values:
            return False
        canon: Callable[[str], Any]
        if ctype in INT_RANGES:
            canon = int
        elif ctype.startswith("decimal"):
            canon = Decimal
        elif ctype == "boolean":
            canon = str.lower
        elif ctype in ("date", "timestamp"):
            canon = lambda v: datetime.strptime(v, fmt or "")  # noqa: E731
        else:
            return True
        return len({canon(v) for v in values}) == len(values)


@dataclass
class _Scan:
    codec: str
    how: str
    first: list[str] | None = None
    first_line: int = 0
    header_detected: bool = False
    header_used: bool = False
    stats: list[_ColumnStats] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rows: int = 0
    blank_lines: list[int] = field(default_factory=list)
    blank_count: int = 0
    notes: list[str] = field(default_factory=list)


def _header_errors(fields: list[str], label: str, line: int) -> list[RowError]:
    """The converter maps header names exactly: empty or colliding names cannot work."""
    errors = []
    for i, name in enumerate(fields, start=1):
        if name == "":
            errors.append(RowError(label, line, f"#{i}", f"header name of column {i} is empty", "bad_header",
                                   value=shorten(",".join(fields))))
    folded: dict[str, list[str]] = {}
    for name in fields:
        if name:
            folded.setdefault(name.casefold(), []).append(name)
    for names in folded.values():
        if len(names) > 1:
            kind = "duplicate" if len(set(names)) == 1 else "case-colliding"
            errors.append(RowError(label, line, None, f"{kind} header names {names}; the converter maps header "
                                   "names exactly and would reject this file (rename them, or use --no-header)",
                                   "bad_header", value=shorten(",".join(fields))))
    return errors


def _scan(path: Path, label: str, header: bool | None, declared: str | None) -> _Scan:
    errors: list[RowError] = []

    def add_error(err: RowError) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(err)

    def open_source():
        return open(path, "rb")

    with open_source() as raw_stream:
        hashing = HashingReader(raw_stream)
        codec, how = "", ""
        scan: _Scan | None = None
        try:
            head = hashing.head()
            if hashing.size == 0:
                raise DataError([RowError(label, None, None, "file is empty (0 bytes)", "empty_file")])
            codec, how = choose_encoding(head, DETECT_ENCODINGS, declared, hashing.eof)
            if not codec:
                raise _Undecodable("", how, how)
            scan = _Scan(codec=codec, how=how)
            text = io.TextIOWrapper(io.BufferedReader(hashing, buffer_size=1 << 20), encoding=codec,
                                    errors="strict", newline="")
            stats: list[_ColumnStats] = []
            width = 0
            for line, fields, raw in iter_records(text, DELIMITER, label):
                if not fields:
                    scan.blank_count += 1
                    if len(scan.blank_lines) < 5:
                        scan.blank_lines.append(line)
                    continue
                if scan.first is None:
                    scan.first, scan.first_line, width = fields, line, len(fields)
                    scan.header_detected = detect_header(fields)
                    scan.header_used = scan.header_detected if header is None else header
                    if scan.header_used:
                        bad = _header_errors(fields, label, line)
                        if bad:
                            raise DataError(bad)
                        scan.sources = list(fields)
                        scan.names = unique_identifiers(fields)
                    else:
                        scan.sources = scan.names = [f"col_{i}" for i in range(1, width + 1)]
                    stats = [_ColumnStats("id" in name) for name in scan.names]
                    scan.stats = stats
                    if scan.header_used:
                        continue
                scan.rows += 1
                if len(fields) != width:
                    add_error(RowError(label, line, None, f"expected {width} fields (as in line {scan.first_line}), "
                                       f"found {len(fields)}", "ragged_row", value=shorten(raw.rstrip("\r\n"))))
                    continue
                quoted = tokenize_quoting(raw, DELIMITER) if ('"' in raw and "" in fields) else None
                for i, value in enumerate(fields):
                    if value == "" and not (quoted and quoted[i]):
                        value = None
                    size = stats[i].add(value)
                    if size > REDSHIFT_MAX_VARCHAR_BYTES:
                        add_error(RowError(label, line, scan.names[i], f"value is {size} bytes, over the warehouse "
                                           f"limit of {REDSHIFT_MAX_VARCHAR_BYTES} bytes for a string", "too_long",
                                           value=shorten(value or "")))
            if scan.first is None:
                raise DataError([RowError(label, None, None, "the file holds only blank lines", "missing_header")])
            if errors:
                raise DataError(errors)
            return scan
        except DataError as exc:
            fixed = []
            for err in exc.errors:
                if err.column and err.column.startswith("#") and scan is not None and scan.names:
                    index = int(err.column[1:]) - 1  # structural errors know positions only
                    names = scan.names  # as the converter reports them: the contract column name
                    if index < len(names):
                        err = RowError(err.file, err.line, names[index], err.message, err.kind, err.value,
                                       err.contract, err.byte_offset)
                fixed.append(err)
            raise DataError(fixed) from None
        except NulByteError as exc:
            with open_source() as again:
                line, field_index = locate_offset(again, exc.offset, DELIMITER, codec)
            column = (scan.names[field_index] if scan is not None and field_index < len(scan.names)
                      else f"#{field_index + 1}")
            raise DataError([RowError(label, line, column,
                                      f"NUL byte (0x00) at byte offset {exc.offset}; this is not a text CSV file",
                                      "nul_byte", byte_offset=exc.offset)]) from None
        except UnicodeDecodeError as exc:
            raise _Undecodable(codec, how, exc.reason) from None


def _undecodable_error(path: Path, label: str, exc: _Undecodable) -> DataError:
    def open_source():
        return open(path, "rb")

    # Nothing fitted the first bytes ("assumed"): point at the first byte that is not UTF-8.
    codec = exc.codec or "utf-8"
    offset, reason = locate_decode_error(open_source, codec)
    offset = max(offset, 0)
    with open_source() as again:
        line, _ = locate_offset(again, offset, DELIMITER, codec)
    with open_source() as again:
        again.seek(offset)
        bad = again.read(4)
    if exc.codec and exc.how != "assumed":
        what = f"valid {exc.codec} ({exc.how})"
    else:
        what = f"valid in any of {list(DETECT_ENCODINGS)}"
    return DataError([RowError(label, line, None, f"bytes {bad.hex(' ')} at byte offset {offset} are not {what}: "
                               f"{reason or exc.reason}; declare the file's encoding with --encoding",
                               "undecodable", byte_offset=offset)])


def _validate_names(dataset: str, table: str | None) -> None:
    """Fail before reading a large file if the dataset or table name is unusable."""
    probe: dict[str, Any] = {"dataset": dataset, "columns": [{"name": "probe"}]}
    if table is not None:
        probe["table"] = table
    contract_from_dict(probe, where="contract infer")


def infer_contract(path: str | Path, dataset: str, *, header: bool | None = None, encoding: str | None = None,
                   table: str | None = None) -> InferenceResult:
    """Read the whole CSV at path and return the narrowest contract that loses no data."""
    path = Path(path)
    label = str(path)
    _validate_names(dataset, table)
    declared = normalize_codec(encoding) if encoding else None
    fallback_note = None
    try:
        scan = _scan(path, label, header, declared)
    except _Undecodable as exc:
        if declared is None and exc.codec == "utf-8" and exc.how == "detected":
            # The first 64 KiB were plain ASCII/UTF-8 but a later byte is not: try Japanese Windows.
            try:
                scan = _scan(path, label, header, "cp932")
            except _Undecodable:
                raise _undecodable_error(path, label, exc) from None
            fallback_note = ("the start of the file looked like UTF-8 but later bytes are not UTF-8; the whole "
                             "file decodes as cp932, so the contract declares cp932")
        else:
            raise _undecodable_error(path, label, exc) from None

    notes: list[str] = []
    width = len(scan.stats)
    if fallback_note:
        notes.append(fallback_note)
    if header is None:
        if scan.header_detected:
            notes.append(f"header row detected ({width} columns); use --no-header to override")
        else:
            notes.append(f"no header row detected: columns named col_1..col_{width}; use --header to override")
    elif header != scan.header_detected:
        notes.append(f"header={'yes' if header else 'no'} as requested; detection alone would have decided "
                     f"{'a header row' if scan.header_detected else 'no header row'}")
    if scan.header_used:
        renamed = [f"{src!r} -> {name}" for src, name in zip(scan.sources, scan.names) if src != name]
        if renamed:
            more = f" (+{len(renamed) - 8} more)" if len(renamed) > 8 else ""
            notes.append(f"header names turned into warehouse identifiers: {', '.join(renamed[:8])}{more}")
    if scan.blank_count:
        notes.append(f"{scan.blank_count} blank line(s) skipped (e.g. line {scan.blank_lines[0]}); "
                     "the converter skips them too")

    columns: list[dict[str, Any]] = []
    primary_key: list[str] = []
    for stat, name, source in zip(scan.stats, scan.names, scan.sources):
        ctype, fmt = stat.decide()
        nullable = stat.nulls > 0 or scan.rows == 0
        column: dict[str, Any] = {"name": name, "source": source, "type": ctype, "nullable": nullable}
        if ctype == "string":
            column["max_bytes"] = string_max_bytes(stat.longest)
            if scan.rows and not stat.values:
                notes.append(f"column {name} is empty (NULL) in every row: typed as a nullable string")
            elif stat.leading_zero is not None:
                notes.append(f"column {name} kept as string: values such as {stat.leading_zero!r} have leading "
                             "zeros that a number type would drop")
        if fmt is not None:
            column["format"] = fmt
        columns.append(column)
        if not primary_key and stat.pk_values is not None and stat.unique_as(ctype, fmt):
            primary_key = [name]
    if scan.rows == 0:
        notes.append("the file has no data rows: every column is a nullable string")
    if primary_key:
        notes.append(f"primary key {primary_key[0]}: every value present and unique")

    encodings = ["utf-8", "utf-8-sig"] if scan.codec in ("utf-8", "utf-8-sig") else [scan.codec]
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    data = {
        "dataset": dataset,
        "version": 1,
        "table": table or f"public.{dataset}",
        "description": f"Inferred from {path.name} ({scan.rows} rows) on {today}",
        "header": scan.header_used,
        "encodings": encodings,
        "delimiter": DELIMITER,
        "null_markers": [],
        "primary_key": primary_key,
        "load_mode": "replace_batch",
        "on_error": "fail",
        "columns": columns,
    }
    contract = contract_from_dict(data, where=f"contract inferred from {path.name}")
    return InferenceResult(contract=contract, header_detected=scan.header_detected, header_used=scan.header_used,
                           encoding=scan.codec, rows=scan.rows, notes=notes)


def save_contract(contract: Contract, directory: Path) -> Path:
    """Write <directory>/<dataset>.yaml (UTF-8), atomically, and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{contract.dataset}.yaml"
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(contract.to_yaml(), encoding="utf-8")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
