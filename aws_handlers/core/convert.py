"""CSV -> snappy Parquet, streaming, schema from the contract. What the Glue job runs.

Memory is bounded by one chunk of rows (MAX_CHUNK_ROWS / MAX_CHUNK_CHARS), never by the file.
The Parquet file is written under a temporary name in a scratch folder and only published
(rename locally, completed upload on S3) after the whole file converted cleanly, so a reader
never sees a half-written file under its final name.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from . import CODE_VERSION, MANIFEST_VERSION, utc_now_iso
from .cast import convert_column
from .contract import Contract
from .csv_reader import (HashingReader, NulByteError, choose_encoding, iter_records, locate_decode_error,
                         locate_offset, tokenize_quoting)
from .errors import DataError, RowError, shorten

MAX_CHUNK_ROWS = 50_000
MAX_CHUNK_CHARS = 4 << 20
MAX_REPORTED_ERRORS = 100
PARQUET_OPTIONS = dict(compression="snappy", version="2.6", use_deprecated_int96_timestamps=False,
                       coerce_timestamps="us", write_statistics=True)


@dataclass
class ConversionOutcome:
    """What one file became. `manifest` is the JSON-ready record written next to the Parquet."""
    manifest: dict[str, Any]
    rejects_path: str | None = None
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.manifest["status"] == "converted"


def parquet_schema_description(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


class _Chunk:
    def __init__(self, width: int):
        self.columns: list[list[str | None]] = [[] for _ in range(width)]
        self.lines: list[int] = []
        self.raw: list[str] = []
        self.chars = 0

    def __len__(self) -> int:
        return len(self.lines)


def convert_csv(
    open_source: Callable[[], BinaryIO],
    source_label: str,
    contract: Contract,
    output_path: str | Path,
    *,
    declared_encoding: str | None = None,
    on_error: str | None = None,
    rejects_path: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ConversionOutcome:
    """Convert one CSV to Parquet at output_path (written atomically). Never raises on bad data:
    the outcome carries status 'failed' with every error found, and no output file exists."""
    started_wall = utc_now_iso()
    started = time.perf_counter()
    on_error = on_error or contract.on_error
    output_path = Path(output_path)
    tmp_output = output_path.with_name(f"{output_path.name}.tmp-{os.getpid()}-{id(output_path):x}")
    errors: list[RowError] = []
    rows_written = 0
    records = 0
    blank_lines: list[int] = []
    rejected = 0
    encoding, encoding_how = "", ""
    header_names: list[str] | None = None
    schema = contract.arrow_schema()
    writer: pq.ParquetWriter | None = None
    rejects_writer = None

    def add_error(err: RowError) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(err)

    with ExitStack() as stack:
        raw_stream = stack.enter_context(open_source())
        hashing = HashingReader(raw_stream, progress=progress)
        try:
            head = hashing.head()
            if hashing.size == 0:
                raise DataError([RowError(source_label, None, None, "file is empty (0 bytes); a CSV needs at least a header line" if contract.header else "file is empty (0 bytes)", "empty_file", contract=contract.label)])
            encoding, encoding_how = choose_encoding(head, contract.encodings, declared_encoding, hashing.eof)
            if not encoding:
                raise UnicodeDecodeError("?", head, 0, 1, encoding_how)
            text = io.TextIOWrapper(io.BufferedReader(hashing, buffer_size=1 << 20), encoding=encoding,
                                    errors="strict", newline="")
            width = len(contract.columns)
            positions: list[int] = list(range(width))
            expected_fields = width
            chunk = _Chunk(width)
            markers = set(contract.null_markers)

            def flush() -> None:
                nonlocal writer, rows_written, rejected, chunk
                if not len(chunk):
                    return
                arrays, bad_rows = [], {}
                for col_index, column in enumerate(contract.columns):
                    array, bad = convert_column(chunk.columns[col_index], column, contract)
                    arrays.append(array)
                    for row, reason in bad.items():
                        value = chunk.columns[col_index][row]
                        bad_rows.setdefault(row, []).append(RowError(
                            source_label, chunk.lines[row], column.name, f"{_quote(value)} {reason}",
                            "type" if "bytes" not in reason else "too_long", value=shorten(value or ""),
                            contract=contract.label))
                # Non-nullable columns: a NULL here is a contract violation, reported like a bad value.
                for col_index, column in enumerate(contract.columns):
                    # `None in list` runs in C; the per-row loop only runs for a chunk that has a NULL.
                    if not column.nullable and None in chunk.columns[col_index]:
                        for row, value in enumerate(chunk.columns[col_index]):
                            if value is None:
                                bad_rows.setdefault(row, []).append(RowError(
                                    source_label, chunk.lines[row], column.name,
                                    "is empty (NULL) but the column is not nullable", "null", contract=contract.label))
                keep = None
                if bad_rows:
                    for row in sorted(bad_rows):
                        for err in bad_rows[row]:
                            add_error(err)
                        if on_error == "quarantine":
                            _reject(chunk.lines[row], "; ".join(e.message if e.column is None else f"{e.column}: {e.message}" for e in bad_rows[row]), chunk.raw[row])
                    keep = pa.array([i not in bad_rows for i in range(len(chunk))])
                if on_error == "fail" and errors:
                    chunk = _Chunk(width)
                    return  # keep parsing to report more errors, but write nothing
                arrays.append(pa.array([source_label] * len(chunk), pa.string()))
                arrays.append(pa.array(chunk.lines, pa.int64()))
                batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
                if keep is not None:
                    batch = batch.filter(keep)
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp_output), schema, **PARQUET_OPTIONS)
                if batch.num_rows:
                    writer.write_batch(batch)
                rows_written += batch.num_rows
                chunk = _Chunk(width)

            def _reject(line: int, reason: str, raw: str) -> None:
                nonlocal rejects_writer, rejected
                if rejects_writer is None:
                    if rejects_path is None:
                        raise ValueError("quarantine mode needs a rejects_path")
                    fh = stack.enter_context(open(rejects_path, "w", encoding="utf-8", newline=""))
                    rejects_writer = csv.writer(fh)
                    rejects_writer.writerow(["line", "reason", "record"])
                rejects_writer.writerow([line, reason, raw.rstrip("\r\n")])
                rejected += 1

            for start_line, fields, raw in iter_records(text, contract.delimiter, source_label):
                if not fields:
                    blank_lines.append(start_line)
                    continue
                if header_names is None and contract.header:
                    header_names = fields
                    positions = _map_header(fields, contract, source_label, start_line)
                    expected_fields = len(fields)
                    continue
                records += 1
                if len(fields) != expected_fields:
                    err = RowError(source_label, start_line, None,
                                   f"expected {expected_fields} fields, found {len(fields)}", "ragged_row",
                                   value=shorten(raw.rstrip("\r\n")), contract=contract.label)
                    add_error(err)
                    if on_error == "quarantine":
                        _reject(start_line, err.message, raw)
                    continue
                quoted = None
                if '"' in raw and any(f == "" or f in markers for f in fields):
                    quoted = tokenize_quoting(raw, contract.delimiter)
                for col_index, pos in enumerate(positions):
                    value = fields[pos]
                    if (value == "" or value in markers) and not (quoted and quoted[pos]):
                        value = None
                    chunk.columns[col_index].append(value)
                chunk.lines.append(start_line)
                chunk.raw.append(raw)
                chunk.chars += len(raw)
                if len(chunk) >= MAX_CHUNK_ROWS or chunk.chars >= MAX_CHUNK_CHARS:
                    flush()
            if header_names is None and contract.header:
                raise DataError([RowError(source_label, None, None, "no header line (the file holds only blank lines)",
                                          "missing_header", contract=contract.label)])
            flush()
            if on_error == "fail" and errors:
                raise DataError(errors)
            if writer is None:  # header-only file: 0 rows, the declared schema
                writer = pq.ParquetWriter(str(tmp_output), schema, **PARQUET_OPTIONS)
            writer.close()
            writer = None
            os.replace(tmp_output, output_path)
        except DataError as exc:
            for err in exc.errors:
                if err.column and err.column.startswith("#"):  # structural errors know positions only
                    err = dataclasses.replace(err, column=_column_name(int(err.column[1:]) - 1, header_names, contract))
                if err.contract is None:
                    err = dataclasses.replace(err, contract=contract.label)
                if err not in errors:
                    add_error(err)
        except NulByteError as exc:
            hashing.drain()
            header_names = header_names or _first_record(open_source, encoding or "utf-8", contract)
            with open_source() as again:
                line, field_index = locate_offset(again, exc.offset, contract.delimiter, encoding)
            add_error(RowError(source_label, line, _column_name(field_index, header_names, contract),
                               f"NUL byte (0x00) at byte offset {exc.offset}; this is not a text CSV file",
                               "nul_byte", byte_offset=exc.offset, contract=contract.label))
        except UnicodeDecodeError as exc:
            hashing.drain()
            codec = encoding or "utf-8"
            header_names = header_names or _first_record(open_source, codec, contract)
            offset, reason = locate_decode_error(open_source, codec) if encoding else (0, exc.reason)
            offset = max(offset, 0)
            with open_source() as again:
                line, field_index = locate_offset(again, offset, contract.delimiter, codec)
            with open_source() as again:
                again.read(offset) if offset else None
                bad_bytes = again.read(4)
            how = f"{encoding} ({encoding_how})" if encoding else "any accepted encoding"
            add_error(RowError(source_label, line, _column_name(field_index, header_names, contract),
                               f"bytes {bad_bytes.hex(' ')} at byte offset {offset} are not valid {how}: {reason}; "
                               f"declare the file's encoding (accepted: {list(contract.encodings)})",
                               "undecodable", byte_offset=offset, contract=contract.label))
        finally:
            if writer is not None:
                writer.close()
            if tmp_output.exists():
                tmp_output.unlink()
        hashing.drain()

    errors.sort(key=lambda e: (e.line is None, e.line or 0))  # type errors are found per chunk, ragged rows at once
    if progress and hashing.size:
        progress(hashing.size)  # the last progress line says 100%
    finished = time.perf_counter()
    status = "failed" if (errors and on_error == "fail") or not output_path.exists() else "converted"
    if status == "failed" and output_path.exists():
        output_path.unlink()
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "code_version": CODE_VERSION,
        "dataset": contract.dataset,
        "contract": {"label": contract.label, "version": contract.version, "sha256": contract.fingerprint},
        "status": status,
        "input": {
            "key": source_label,
            "size": hashing.size,
            "sha256": hashing.sha256,
            "encoding": encoding or None,
            "encoding_source": encoding_how if encoding else None,
            "header": contract.header,
            "header_names": header_names,
            "records": records,
            "blank_lines": blank_lines[:MAX_REPORTED_ERRORS],
            "blank_line_count": len(blank_lines),
        },
        "output": None,
        "rejects": {"rows": rejected} if rejected else None,
        "errors": [e.to_dict() for e in errors],
        "error_count": len(errors),
        "started_at": started_wall,
        "finished_at": utc_now_iso(),
        "duration_seconds": round(finished - started, 6),
    }
    outcome = ConversionOutcome(manifest=manifest, errors=errors)
    if status == "converted":
        meta = pq.ParquetFile(str(output_path)).metadata
        from ..storage import sha256_file

        manifest["output"] = {
            "rows": meta.num_rows,
            "row_groups": meta.num_row_groups,
            "size": output_path.stat().st_size,
            "sha256": sha256_file(output_path),
            "compression": "snappy",
            "schema": parquet_schema_description(schema),
        }
        if rejected:
            outcome.rejects_path = str(rejects_path)
    return outcome


def _quote(value: str | None) -> str:
    return '""' if value == "" else f'"{shorten(value or "")}"'


def _column_name(field_index: int, header_names: list[str] | None, contract: Contract) -> str:
    """Contract column name of a field position (header position -> source name -> column)."""
    if header_names and field_index < len(header_names):
        by_source = {c.source: c.name for c in contract.columns}
        return by_source.get(header_names[field_index], header_names[field_index])
    if not contract.header and field_index < len(contract.columns):
        return contract.columns[field_index].name
    return f"#{field_index + 1}"


def _first_record(open_source: Callable[[], BinaryIO], codec: str, contract: Contract) -> list[str] | None:
    """The header, read again on an error path that struck before it was parsed."""
    if not contract.header:
        return None
    with open_source() as stream:
        first = stream.read(1 << 16).split(b"\n", 1)[0].replace(b"\x00", b"")
    text = first.decode(codec, errors="replace").lstrip("\ufeff").rstrip("\r")
    return next(csv.reader([text], delimiter=contract.delimiter), None)


def _map_header(fields: list[str], contract: Contract, source_label: str, line: int) -> list[int]:
    """Positions of the contract's columns in this file's header. Names must match exactly."""
    errors = []
    folded: dict[str, list[str]] = {}
    for name in fields:
        folded.setdefault(name.casefold(), []).append(name)
    for names in folded.values():
        if len(names) > 1:
            kind = "duplicate" if len(set(names)) == 1 else "case-colliding"
            errors.append(RowError(source_label, line, None, f"{kind} header names {names}", "bad_header",
                                   contract=contract.label))
    present = {name: i for i, name in enumerate(fields)}
    expected = [c.source for c in contract.columns]
    missing = [name for name in expected if name not in present]
    unexpected = [name for name in fields if name not in set(expected)]
    if missing:
        errors.append(RowError(source_label, line, None, f"header lacks contract columns {missing}", "bad_header",
                               value=shorten(",".join(fields)), contract=contract.label))
    if unexpected:
        errors.append(RowError(source_label, line, None, f"header has columns the contract does not declare {unexpected}",
                               "bad_header", value=shorten(",".join(fields)), contract=contract.label))
    if errors:
        raise DataError(errors)
    return [present[name] for name in expected]


def scratch_path(suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="etl-observer-")
    os.close(fd)
    return path
