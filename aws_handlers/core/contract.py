"""Dataset contracts: one declarative YAML file per dataset.

The contract is the single source of truth read by the converter (Arrow schema, parsing rules),
the warehouse (DDL, load SQL), the checks (primary key, nullability) and the evidence report.
Nothing here imports dagster: this module ships to Lambda and Glue.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

BUNDLED_CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"

# Lineage columns: the first two are written into the Parquet while converting (they are facts
# about the CSV), the last two are added by the load (they are facts about the batch).
SOURCE_FILE_COLUMN = "_source_file"
SOURCE_LINE_COLUMN = "_source_line"
BATCH_ID_COLUMN = "_batch_id"
LOADED_AT_COLUMN = "_loaded_at"
LINEAGE_COLUMNS = (BATCH_ID_COLUMN, SOURCE_FILE_COLUMN, SOURCE_LINE_COLUMN, LOADED_AT_COLUMN)

SUPPORTED_ENCODINGS = ("utf-8", "utf-8-sig", "cp932", "shift_jis")
LOAD_MODES = ("replace_batch",)
ON_ERROR_MODES = ("fail", "quarantine")
BATCH_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")  # \Z: "$" would let a trailing newline in
DATASET_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
_DECIMAL_RE = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)\Z")
SIMPLE_TYPES = ("string", "int32", "int64", "boolean", "date", "timestamp")
DEFAULT_TRUE_VALUES = ("true", "t", "yes", "y", "1")
DEFAULT_FALSE_VALUES = ("false", "f", "no", "n", "0")
REDSHIFT_MAX_VARCHAR_BYTES = 65535


class ContractError(ValueError):
    """The contract file itself is invalid (not the data)."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    source: str
    nullable: bool = True
    max_bytes: int | None = None
    format: str | None = None
    description: str | None = None

    @property
    def decimal_precision_scale(self) -> tuple[int, int] | None:
        match = _DECIMAL_RE.match(self.type)
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def arrow_type(self) -> pa.DataType:
        # Physical types chosen for Redshift COPY ... FORMAT AS PARQUET: int32 for INTEGER,
        # microsecond timestamps, decimal128 for DECIMAL(p,s).
        if self.type == "string":
            return pa.string()
        if self.type == "int32":
            return pa.int32()
        if self.type == "int64":
            return pa.int64()
        if self.type == "boolean":
            return pa.bool_()
        if self.type == "date":
            return pa.date32()
        if self.type == "timestamp":
            return pa.timestamp("us")
        precision, scale = self.decimal_precision_scale  # type: ignore[misc]
        return pa.decimal128(precision, scale)

    @property
    def sql_type(self) -> str:
        if self.type == "string":
            return f"VARCHAR({self.max_bytes or 256})"
        if self.type == "int32":
            return "INTEGER"
        if self.type == "int64":
            return "BIGINT"
        if self.type == "boolean":
            return "BOOLEAN"
        if self.type == "date":
            return "DATE"
        if self.type == "timestamp":
            return "TIMESTAMP"
        precision, scale = self.decimal_precision_scale  # type: ignore[misc]
        return f"DECIMAL({precision},{scale})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "source": self.source, "type": self.type,
                               "nullable": self.nullable}
        if self.max_bytes is not None:
            out["max_bytes"] = self.max_bytes
        if self.format is not None:
            out["format"] = self.format
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Contract:
    dataset: str
    version: int
    table: str
    columns: tuple[Column, ...]
    header: bool = True
    encodings: tuple[str, ...] = ("utf-8", "utf-8-sig")
    null_markers: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    load_mode: str = "replace_batch"
    on_error: str = "fail"
    delimiter: str = ","
    true_values: tuple[str, ...] = DEFAULT_TRUE_VALUES
    false_values: tuple[str, ...] = DEFAULT_FALSE_VALUES
    description: str | None = None
    path: str | None = field(default=None, compare=False)

    # ---- derived views -------------------------------------------------------------------
    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def schema_name(self) -> str:
        return self.table.split(".", 1)[0] if "." in self.table else "public"

    @property
    def table_name(self) -> str:
        return self.table.split(".", 1)[1] if "." in self.table else self.table

    def arrow_schema(self) -> pa.Schema:
        """Schema of the staging Parquet: contract columns in table order, then row lineage."""
        fields = [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        fields.append(pa.field(SOURCE_FILE_COLUMN, pa.string(), nullable=False))
        fields.append(pa.field(SOURCE_LINE_COLUMN, pa.int64(), nullable=False))
        return pa.schema(fields, metadata={b"etl_observer.contract": self.label.encode()})

    @property
    def label(self) -> str:
        return f"{self.dataset} v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "version": self.version,
            "table": self.table,
        }
        if self.description:
            out["description"] = self.description
        out.update({
            "header": self.header,
            "encodings": list(self.encodings),
            "delimiter": self.delimiter,
            "null_markers": list(self.null_markers),
            "primary_key": list(self.primary_key),
            "load_mode": self.load_mode,
            "on_error": self.on_error,
        })
        if tuple(self.true_values) != DEFAULT_TRUE_VALUES:
            out["true_values"] = list(self.true_values)
        if tuple(self.false_values) != DEFAULT_FALSE_VALUES:
            out["false_values"] = list(self.false_values)
        out["columns"] = [c.to_dict() for c in self.columns]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=120)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical contract: reports record which exact contract was applied."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def with_header(self, header: bool) -> "Contract":
        return dataclasses.replace(self, header=header)


# ---- parsing and validation -------------------------------------------------------------

def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ContractError(f"{where}: {message}")


def contract_from_dict(data: dict[str, Any], where: str = "contract") -> Contract:
    _require(isinstance(data, dict), where, "must be a mapping")
    known = {"dataset", "version", "table", "description", "header", "encodings", "delimiter",
             "null_markers", "primary_key", "load_mode", "on_error", "true_values",
             "false_values", "columns"}
    unknown = sorted(set(data) - known)
    _require(not unknown, where, f"unknown keys {unknown}")
    dataset = data.get("dataset")
    _require(isinstance(dataset, str) and bool(DATASET_PATTERN.fullmatch(dataset)), where,
             f"dataset must match {DATASET_PATTERN.pattern}, got {dataset!r}")
    version = data.get("version", 1)
    _require(isinstance(version, int) and version >= 1, where, "version must be a positive integer")
    table = data.get("table", f"public.{dataset}")
    _require(isinstance(table, str) and bool(re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", table)),
             where, f"table must be schema.name in lower case, got {table!r}")
    encodings = tuple(e.lower() for e in data.get("encodings", ["utf-8", "utf-8-sig"]))
    for enc in encodings:
        _require(enc in SUPPORTED_ENCODINGS, where, f"encoding {enc!r} not in {SUPPORTED_ENCODINGS}")
    delimiter = data.get("delimiter", ",")
    _require(isinstance(delimiter, str) and len(delimiter) == 1 and delimiter not in "\"\r\n",
             where, "delimiter must be one character other than a quote or line end")
    load_mode = data.get("load_mode", "replace_batch")
    _require(load_mode in LOAD_MODES, where, f"load_mode must be one of {LOAD_MODES}")
    on_error = data.get("on_error", "fail")
    _require(on_error in ON_ERROR_MODES, where, f"on_error must be one of {ON_ERROR_MODES}")
    raw_columns = data.get("columns")
    _require(isinstance(raw_columns, list) and len(raw_columns) > 0, where, "columns must be a non-empty list")

    columns: list[Column] = []
    for i, raw in enumerate(raw_columns, start=1):
        cw = f"{where}: column {i}"
        _require(isinstance(raw, dict), cw, "must be a mapping")
        extra = sorted(set(raw) - {"name", "source", "type", "nullable", "max_bytes", "format", "description"})
        _require(not extra, cw, f"unknown keys {extra}")
        name = raw.get("name")
        _require(isinstance(name, str) and is_safe_identifier(name), cw,
                 f"name {name!r} is not a safe identifier (see etl-observer contract infer)")
        ctype = str(raw.get("type", "string")).lower().replace(" ", "")
        _require(ctype in SIMPLE_TYPES or bool(_DECIMAL_RE.match(ctype)), cw,
                 f"type {ctype!r} is not one of {SIMPLE_TYPES} or decimal(p,s)")
        if _DECIMAL_RE.match(ctype):
            p, s = map(int, _DECIMAL_RE.match(ctype).groups())  # type: ignore[union-attr]
            _require(1 <= p <= 38 and 0 <= s <= p, cw, f"decimal({p},{s}) needs 1<=p<=38 and 0<=s<=p")
        fmt = raw.get("format")
        if ctype in ("date", "timestamp"):
            _require(isinstance(fmt, str) and "%" in fmt, cw, f"{ctype} needs a strptime format, e.g. %Y-%m-%d")
            _require(ctype == "timestamp" or not re.search(r"%[HIMSfpz]", fmt), cw,
                     f"a date format cannot hold a time of day ({fmt!r}); use type timestamp")
            try:
                from .cast import format_pattern

                format_pattern(fmt)
            except ValueError as exc:
                raise ContractError(f"{cw}: {exc}") from None
        else:
            _require(fmt is None, cw, "format is only for date and timestamp columns")
        max_bytes = raw.get("max_bytes")
        if ctype == "string":
            max_bytes = 256 if max_bytes is None else max_bytes
            _require(isinstance(max_bytes, int) and 1 <= max_bytes <= REDSHIFT_MAX_VARCHAR_BYTES, cw,
                     f"max_bytes must be 1..{REDSHIFT_MAX_VARCHAR_BYTES}")
        else:
            _require(max_bytes is None, cw, "max_bytes is only for string columns")
        source = raw.get("source", name)
        _require(isinstance(source, str) and source != "", cw, "source must be the CSV header name")
        columns.append(Column(name=name, type=ctype, source=source, nullable=bool(raw.get("nullable", True)),
                              max_bytes=max_bytes, format=fmt, description=raw.get("description")))

    names = [c.name for c in columns]
    _require(len(set(names)) == len(names), where, f"duplicate column names {sorted({n for n in names if names.count(n) > 1})}")
    _require(not set(names) & set(LINEAGE_COLUMNS), where, f"column names {LINEAGE_COLUMNS} are reserved for lineage")
    folded = [c.source.casefold() for c in columns]
    _require(len(set(folded)) == len(folded), where, "two columns have the same source header (ignoring case)")
    primary_key = tuple(data.get("primary_key") or ())
    for pk in primary_key:
        _require(pk in names, where, f"primary_key column {pk!r} is not a column")
    # YAML turns unquoted null/yes/no/off into None/True/False: refuse rather than stringify them.
    for key in ("null_markers", "true_values", "false_values"):
        values = data.get(key) or []
        _require(isinstance(values, list) and all(isinstance(v, str) for v in values), where,
                 f"{key} must be a list of quoted strings (YAML reads unquoted null, yes, no, off as other types)")
    null_markers = tuple(data.get("null_markers") or ())
    return Contract(
        dataset=dataset, version=version, table=table, columns=tuple(columns),
        header=bool(data.get("header", True)), encodings=encodings, null_markers=null_markers,
        primary_key=primary_key, load_mode=load_mode, on_error=on_error, delimiter=delimiter,
        true_values=tuple(v.lower() for v in data.get("true_values") or DEFAULT_TRUE_VALUES),
        false_values=tuple(v.lower() for v in data.get("false_values") or DEFAULT_FALSE_VALUES),
        description=data.get("description"),
    )


def load_contract(path: str | Path) -> Contract:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ContractError(f"{path}: not valid YAML: {exc}") from exc
    contract = contract_from_dict(data, where=str(path))
    return dataclasses.replace(contract, path=str(path))


def contract_search_path(home_contracts: Path | None) -> list[Path]:
    """User contracts (from `contract infer`) override bundled ones of the same dataset."""
    dirs = [BUNDLED_CONTRACTS_DIR]
    if home_contracts is not None:
        dirs.append(home_contracts)
    return dirs


def discover_contracts(home_contracts: Path | None = None) -> dict[str, Contract]:
    found: dict[str, Contract] = {}
    for directory in contract_search_path(home_contracts):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")):
            contract = load_contract(path)
            found[contract.dataset] = contract
    return found


# ---- identifiers ------------------------------------------------------------------------

_RESERVED = {
    "all", "and", "any", "as", "asc", "between", "both", "case", "cast", "check", "column",
    "constraint", "create", "current_date", "current_time", "current_timestamp", "default",
    "desc", "distinct", "do", "else", "end", "except", "false", "for", "foreign", "from", "grant",
    "group", "having", "in", "intersect", "into", "is", "join", "leading", "limit", "not", "null",
    "offset", "on", "or", "order", "primary", "references", "select", "table", "then", "to",
    "trailing", "true", "union", "unique", "user", "using", "when", "where", "with",
}


def is_safe_identifier(name: str) -> bool:
    """Redshift standard identifier rules, lower case, and not a reserved word.

    Redshift accepts UTF-8 multibyte characters (2-4 bytes) in standard identifiers, so Japanese
    names such as 郵便番号 stay readable; ASCII must be lower-case alphanumeric or underscore.
    """
    if not name or len(name.encode("utf-8")) > 127 or name in _RESERVED or name.startswith("_"):
        return False
    first = name[0]
    if not (("a" <= first <= "z") or ord(first) > 127):
        return False
    for ch in name:
        if ord(ch) > 127:
            if not unicodedata.category(ch).startswith(("L", "N")):
                return False
        elif not (ch.isdigit() or ("a" <= ch <= "z") or ch == "_"):
            return False
    return True


def safe_identifier(header: str, position: int) -> str:
    """Turn a CSV header into a safe column identifier (letters of any script are kept)."""
    text = unicodedata.normalize("NFKC", header).strip()
    # camelCase -> camel_case so EmpID becomes emp_id rather than empid.
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", text)
    out = []
    for ch in text.lower():
        if ord(ch) < 128:
            out.append(ch if (ch.isalnum() or ch == "_") else "_")
        else:
            out.append(ch if unicodedata.category(ch).startswith(("L", "N")) else "_")
    ident = re.sub(r"_+", "_", "".join(out)).strip("_")
    if not ident or not (("a" <= ident[0] <= "z") or ord(ident[0]) > 127):
        ident = f"col_{position}" if not ident else f"c_{ident}"
    while len(ident.encode("utf-8")) > 120:
        ident = ident[:-1]
    if ident in _RESERVED:
        ident = f"{ident}_"
    return ident


def unique_identifiers(headers: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for i, header in enumerate(headers, start=1):
        ident = safe_identifier(header, i)
        base = ident
        while ident in seen:
            seen[base] += 1
            ident = f"{base}_{seen[base]}"
        seen.setdefault(ident, 1)
        result.append(ident)
    return result
