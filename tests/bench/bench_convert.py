"""Converter speed and memory against the obvious alternatives: one run, same input, side by side.

    .venv/bin/python -m tests.bench.bench_convert [--sizes 20000,200000,1000000] [--keep DIR]
    (what `make bench` runs; from the repository root)

Variants, each timed in its own fresh subprocess so that peak RSS belongs to that variant alone
(the worker reports its own peak: VmHWM on Linux, ru_maxrss elsewhere; RUSAGE_CHILDREN would merge
all children, and on Linux a child's ru_maxrss starts at the driver's peak, see _peak_rss_kib):

  ours              aws_handlers.core.convert.convert_csv: streaming, bounded chunks, strict casts,
                    lineage columns, input/output SHA-256, atomic publish
  pyarrow_read_csv  pyarrow.csv.read_csv + pyarrow.parquet.write_table (whole file in memory)
  pyarrow_open_csv  pyarrow.csv.open_csv + pyarrow.parquet.ParquetWriter (streaming record batches)
  duckdb_copy       DuckDB COPY (SELECT * FROM read_csv(..., columns={...})) TO ... (FORMAT parquet,
                    COMPRESSION snappy); built-in extensions only, auto-install switched off

Input: a deterministic (seeded) employees-like CSV per size: quoted commas in names, doubled quotes,
quoted newlines and quoted empty strings in notes, unquoted empty fields as NULLs.

Output: progress on stderr, the results as one JSON document on stdout, a Markdown table in
bench-results/convert.md. Exit status: 0 all good; 1 a variant failed or the row counts disagree;
2 our converter's values differ from pyarrow's on the first 1000 rows.

The file name is not test_*.py on purpose: pytest never collects it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.bench.bench_convert"
DEFAULT_SIZES = "20000,200000,1000000"
DEFAULT_SEED = 20240611
CHECK_ROWS = 1000
VARIANTS = ("ours", "pyarrow_read_csv", "pyarrow_open_csv", "duckdb_copy")
BASELINE = "ours"
LINEAGE = ("_source_file", "_source_line")
STREAM_BLOCK_BYTES = 4 << 20  # open_csv block size, about the size of one of our chunks (MAX_CHUNK_CHARS)

# The dataset, described once: the contract for ours, the explicit types for the alternatives.
CONTRACT = {
    "dataset": "employees_bench",
    "version": 1,
    "table": "public.employees_bench",
    "primary_key": ["employee_id"],
    "columns": [
        {"name": "employee_id", "type": "int32", "nullable": False},
        {"name": "name", "type": "string", "max_bytes": 256, "nullable": False},
        {"name": "department", "type": "string", "max_bytes": 64},
        {"name": "salary", "type": "decimal(12,2)"},
        {"name": "hire_date", "type": "date", "format": "%Y-%m-%d"},
        {"name": "active", "type": "boolean"},
        {"name": "note", "type": "string", "max_bytes": 1024},
    ],
}
COLUMN_NAMES = [c["name"] for c in CONTRACT["columns"]]
DUCKDB_TYPES = {"employee_id": "INTEGER", "name": "VARCHAR", "department": "VARCHAR", "salary": "DECIMAL(12,2)",
                "hire_date": "DATE", "active": "BOOLEAN", "note": "VARCHAR"}
TRUE_VALUES = ["true", "t", "yes", "y", "1"]  # the contract defaults, so every variant accepts the same
FALSE_VALUES = ["false", "f", "no", "n", "0"]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- input ------------------------------------------------------------------------------------

FIRST = ["Alice", "Bob", "Carol", "David", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
         "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "José", "Zoë", "Søren",
         "Hana", "Yuki", "Chloé", "Łukasz"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Martinez", "Lopez",
        "O'Neil", "van der Berg", "Müller", "Nguyen", "Kowalski", "Rossi", "Dubois", "Yamada", "Tanaka",
        "Andersson", "Øvergaard"]
DEPARTMENTS = ["Engineering", "Sales", "Marketing", "Finance", "Human Resources", "Legal", "Support",
               "Operations", "Research", "Facilities"]
NOTES = ["transferred from the Lyon office", "part time", "on sabbatical until Q3", "mentor for new hires",
         "remote", "relocated", "contract converted to permanent", "team lead"]
NOTES_WITH_COMMA = ["remote, two days a week on site", "part time, Mondays off", "team lead, backend"]
NOTES_MULTILINE = ["first review done\nsecond review pending", "address changed\r\nsee HR file",
                   "line one\nline two\nline three"]
NOTES_QUOTES = ['says "hi" to everyone', 'nicknamed "the closer"']
DATE_BASE = dt.date(1990, 1, 1).toordinal()
DATE_SPAN = (dt.date(2024, 12, 31) - dt.date(1990, 1, 1)).days


def _field(value: str | None) -> str:
    """None -> unquoted empty field (NULL); '' -> quoted empty string; quote only when needed."""
    if value is None:
        return ""
    if value == "" or any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def generate_csv(path: Path, rows: int, seed: int) -> int:
    """Write the employees-like CSV; returns its size in bytes. Same seed and rows -> same bytes."""
    rng = random.Random(seed)
    rand, choice, randrange = rng.random, rng.choice, rng.randrange
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(COLUMN_NAMES) + "\n")
        lines: list[str] = []
        for i in range(rows):
            first, last = choice(FIRST), choice(LAST)
            r = rand()
            if r < 0.30:
                name = f"{last}, {first}"          # a comma inside quotes
            elif r < 0.31:
                name = f'{first} "{choice(["Ace", "Doc"])}" {last}'  # doubled quotes
            else:
                name = f"{first} {last}"
            department = None if rand() < 0.01 else choice(DEPARTMENTS)
            r = rand()
            cents = randrange(2_500_000, 25_000_000)
            if r < 0.01:
                salary = None
            elif r < 0.03:
                salary = str(cents // 100)      # no decimal part
            else:
                salary = f"{cents // 100}.{cents % 100:02d}"
            hire_date = None if rand() < 0.005 else dt.date.fromordinal(DATE_BASE + randrange(DATE_SPAN)).isoformat()
            r = rand()
            active = None if r < 0.005 else ("true" if r < 0.85 else "false")
            r = rand()
            if r < 0.55:
                note = None
            elif r < 0.80:
                note = choice(NOTES)
            elif r < 0.90:
                note = choice(NOTES_WITH_COMMA)
            elif r < 0.95:
                note = choice(NOTES_MULTILINE)      # a quoted newline: one record, several physical lines
            elif r < 0.98:
                note = choice(NOTES_QUOTES)
            else:
                note = ""                            # quoted empty string, not NULL
            lines.append(",".join((str(100_000 + i), _field(name), _field(department), _field(salary),
                                   _field(hire_date), _field(active), _field(note))))
            if len(lines) >= 10_000:
                fh.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            fh.write("\n".join(lines) + "\n")
    return path.stat().st_size


# ---- workers (run in their own process) -------------------------------------------------------

def _ru_maxrss_kib() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if sys.platform == "darwin" else value  # bytes on macOS, KiB on Linux


def _peak_rss_kib() -> int:
    """This process's own peak RSS. On Linux ru_maxrss is not enough: execve() carries the
    pre-exec memory high-water mark into the new program, and subprocess forks/vforks from the
    driver (pyarrow + duckdb loaded, CSVs generated), so every worker would start at the driver's
    peak. VmHWM belongs to the exec'ed address space alone; elsewhere fall back to ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _ru_maxrss_kib()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _arrow_options():
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {"employee_id": pa.int32(), "name": pa.string(), "department": pa.string(),
             "salary": pa.decimal128(12, 2), "hire_date": pa.date32(), "active": pa.bool_(), "note": pa.string()}
    parse = pacsv.ParseOptions(delimiter=",", quote_char='"', double_quote=True, newlines_in_values=True)
    # Same NULL rule as ours: an unquoted empty field is NULL, a quoted "" is the empty string.
    convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False,
                                   true_values=TRUE_VALUES, false_values=FALSE_VALUES,
                                   include_columns=COLUMN_NAMES)
    return parse, convert


def _prepare(variant: str, csv_path: str, out_path: str):
    """Import what the variant needs and return a zero-argument callable doing the conversion;
    the callable returns the number of rows it wrote (as the variant itself sees it)."""
    if variant == "ours":
        from aws_handlers.core.contract import contract_from_dict
        from aws_handlers.core.convert import convert_csv

        contract = contract_from_dict(CONTRACT, where="bench contract")

        def run() -> int:
            outcome = convert_csv(lambda: open(csv_path, "rb"), os.path.basename(csv_path), contract, out_path)
            if not outcome.ok:
                raise RuntimeError(f"convert_csv failed: {[str(e) for e in outcome.errors[:5]]}")
            return int(outcome.manifest["output"]["rows"])
        return run

    if variant == "pyarrow_read_csv":
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        parse, convert = _arrow_options()

        def run() -> int:
            table = pacsv.read_csv(csv_path, parse_options=parse, convert_options=convert)
            pq.write_table(table, out_path, compression="snappy")
            return table.num_rows
        return run

    if variant == "pyarrow_open_csv":
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        parse, convert = _arrow_options()

        def run() -> int:
            reader = pacsv.open_csv(csv_path, read_options=pacsv.ReadOptions(block_size=STREAM_BLOCK_BYTES),
                                    parse_options=parse, convert_options=convert)
            rows = 0
            with pq.ParquetWriter(out_path, reader.schema, compression="snappy") as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
            return rows
        return run

    if variant == "duckdb_copy":
        import duckdb

        def sql_str(text: str) -> str:
            return "'" + text.replace("'", "''") + "'"

        columns = "{" + ", ".join(f"{sql_str(k)}: {sql_str(v)}" for k, v in DUCKDB_TYPES.items()) + "}"
        # allow_quoted_nulls=false: a quoted "" stays the empty string, as in ours and pyarrow.
        query = (f"COPY (SELECT * FROM read_csv({sql_str(csv_path)}, header=true, delim=',', quote='\"', "
                 f"escape='\"', columns={columns}, dateformat='%Y-%m-%d', allow_quoted_nulls=false)) "
                 f"TO {sql_str(out_path)} (FORMAT parquet, COMPRESSION snappy)")

        def run() -> int:
            con = duckdb.connect()
            try:
                # Never fetch anything: parquet and the CSV reader are built into the wheel.
                con.execute("SET autoinstall_known_extensions = false")
                con.execute("SET autoload_known_extensions = false")
                result = con.execute(query).fetchone()
                return int(result[0]) if result else -1
            finally:
                con.close()
        return run

    raise SystemExit(f"unknown variant {variant!r}; known: {VARIANTS}")


def worker(variant: str, csv_path: str, out_path: str) -> int:
    started = time.perf_counter()
    run = _prepare(variant, csv_path, out_path)
    import_seconds = time.perf_counter() - started
    baseline_kib = _peak_rss_kib()
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    rows = run()
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    print(json.dumps({"variant": variant, "seconds": seconds, "cpu_seconds": cpu, "rows_reported": rows,
                      "peak_rss_kib": _peak_rss_kib(), "baseline_rss_kib": baseline_kib,
                      "ru_maxrss_kib": _ru_maxrss_kib(),
                      "import_seconds": import_seconds}), flush=True)
    return 0


# ---- driver -----------------------------------------------------------------------------------

def run_worker(variant: str, csv_path: Path, out_path: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", MODULE, "--worker", variant, str(csv_path), str(out_path)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def describe_output(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(str(path)).metadata
    schema = meta.schema.to_arrow_schema()
    # Ours also stores the lineage columns; this is the like-for-like size (compressed column chunks).
    wanted = [i for i in range(meta.num_columns) if meta.schema.column(i).name in COLUMN_NAMES]
    contract_bytes = sum(meta.row_group(g).column(i).total_compressed_size
                         for g in range(meta.num_row_groups) for i in wanted)
    return {"rows": meta.num_rows, "row_groups": meta.num_row_groups, "output_bytes": path.stat().st_size,
            "output_bytes_contract_columns": contract_bytes, "schema": [f"{f.name}:{f.type}" for f in schema]}


def first_rows(path: Path, n: int):
    """The first n rows of the contract columns, lineage dropped, as one Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(str(path))
    batches, got = [], 0
    for batch in pf.iter_batches(batch_size=n, columns=COLUMN_NAMES):
        batches.append(batch)
        got += batch.num_rows
        if got >= n:
            break
    return pa.Table.from_batches(batches, schema=batches[0].schema if batches else None).slice(0, n)


def compare_values(ours_path: Path, other_path: Path, n: int) -> dict[str, Any]:
    """Types and values of the contract columns on the first n rows; the first difference if any."""
    ours, other = first_rows(ours_path, n), first_rows(other_path, n)
    result: dict[str, Any] = {"rows_compared": min(ours.num_rows, other.num_rows), "equal": True, "differences": []}
    if ours.num_rows != other.num_rows:
        result["equal"] = False
        result["differences"].append(f"row counts in the sample differ: {ours.num_rows} vs {other.num_rows}")
    common = result["rows_compared"]
    ours, other = ours.slice(0, common), other.slice(0, common)
    for name in COLUMN_NAMES:
        a, b = ours.column(name), other.column(name)
        if a.type != b.type:
            result["equal"] = False
            result["differences"].append(f"{name}: type {a.type} vs {b.type}")
            continue
        if a.combine_chunks().equals(b.combine_chunks()):
            continue
        va, vb = a.to_pylist(), b.to_pylist()
        diffs = [i for i, (x, y) in enumerate(zip(va, vb)) if x != y or (x is None) != (y is None)]
        if not diffs:  # same Python values, only the Arrow layout differs
            continue
        result["equal"] = False
        result["differences"].append(
            f"{name}: {len(diffs)} value(s) differ, first at data row {diffs[0]}: {va[diffs[0]]!r} vs {vb[diffs[0]]!r}")
    return result


def mib(kib: int | float) -> float:
    return kib / 1024


def bench_size(rows: int, work: Path, seed: int, timeout: float, keep: bool) -> dict[str, Any]:
    size_dir = work / f"rows-{rows}"
    size_dir.mkdir(parents=True, exist_ok=True)
    csv_path = size_dir / f"employees-{rows}.csv"
    t0 = time.perf_counter()
    input_bytes = generate_csv(csv_path, rows, seed)
    log(f"{rows:,} rows: generated {input_bytes / 1e6:.1f} MB CSV in {time.perf_counter() - t0:.1f}s -> {csv_path}")

    entry: dict[str, Any] = {"rows": rows, "input_bytes": input_bytes, "variants": {}, "checks": {}}
    outputs: dict[str, Path] = {}
    for variant in VARIANTS:
        out_path = size_dir / f"{variant}.parquet"
        log(f"{rows:,} rows: {variant} ...")
        measured = run_worker(variant, csv_path, out_path, timeout)
        if "error" in measured:
            log(f"{rows:,} rows: {variant} FAILED: {measured['error']}")
            entry["variants"][variant] = {"error": measured["error"]}
            continue
        info = describe_output(out_path)
        seconds = measured["seconds"]
        record = {
            "seconds": round(seconds, 4),
            "cpu_seconds": round(measured["cpu_seconds"], 4),
            "input_mb_per_s": round(input_bytes / 1e6 / seconds, 2),
            "rows_per_s": round(rows / seconds),
            "peak_rss_mib": round(mib(measured["peak_rss_kib"]), 1),
            "rss_after_import_mib": round(mib(measured["baseline_rss_kib"]), 1),
            "rss_growth_mib": round(mib(measured["peak_rss_kib"] - measured["baseline_rss_kib"]), 1),
            "ru_maxrss_mib": round(mib(measured["ru_maxrss_kib"]), 1),  # for reference: inflated by the fork
            "import_seconds": round(measured["import_seconds"], 3),
            "rows_reported": measured["rows_reported"],
            "rows": info["rows"],
            "row_groups": info["row_groups"],
            "output_bytes": info["output_bytes"],
            "output_bytes_contract_columns": info["output_bytes_contract_columns"],
            "schema": info["schema"],
        }
        entry["variants"][variant] = record
        outputs[variant] = out_path
        log(f"{rows:,} rows: {variant}: {seconds:.2f}s, {record['input_mb_per_s']} MB/s, "
            f"peak RSS {record['peak_rss_mib']} MiB (+{record['rss_growth_mib']} over imports), "
            f"{info['rows']:,} rows, {info['output_bytes'] / 1e6:.1f} MB Parquet")

    base = entry["variants"].get(BASELINE, {})
    for variant, record in entry["variants"].items():
        if "error" in record or "error" in base:
            continue
        record["time_ratio_vs_ours"] = round(record["seconds"] / base["seconds"], 3)
        record["memory_ratio_vs_ours"] = round(record["peak_rss_mib"] / base["peak_rss_mib"], 3)
        record["rss_growth_ratio_vs_ours"] = (round(record["rss_growth_mib"] / base["rss_growth_mib"], 3)
                                              if base["rss_growth_mib"] > 0 else None)

    counts = {v: r.get("rows") for v, r in entry["variants"].items()}
    failed = [v for v, r in entry["variants"].items() if "error" in r]
    entry["checks"]["expected_rows"] = rows
    entry["checks"]["row_counts"] = counts
    entry["checks"]["row_counts_agree"] = not failed and all(c == rows for c in counts.values())
    if "ours" in outputs:
        entry["checks"]["values_vs_pyarrow_read_csv"] = (
            compare_values(outputs["ours"], outputs["pyarrow_read_csv"], CHECK_ROWS)
            if "pyarrow_read_csv" in outputs else {"equal": False, "differences": ["pyarrow_read_csv failed"]})
        # For information only (not gating): the two other alternatives against ours, same sample.
        entry["checks"]["info_values_vs_ours"] = {
            v: compare_values(outputs["ours"], outputs[v], CHECK_ROWS)["differences"] or "equal"
            for v in ("pyarrow_open_csv", "duckdb_copy") if v in outputs}
    else:
        entry["checks"]["values_vs_pyarrow_read_csv"] = {"equal": False, "differences": ["ours failed"]}
    log(f"{rows:,} rows: row counts {counts} -> {'agree' if entry['checks']['row_counts_agree'] else 'DISAGREE'}; "
        f"ours vs pyarrow on the first {CHECK_ROWS} rows: "
        f"{'equal' if entry['checks']['values_vs_pyarrow_read_csv']['equal'] else entry['checks']['values_vs_pyarrow_read_csv']['differences']}")
    if not keep:
        shutil.rmtree(size_dir, ignore_errors=True)
    return entry


def environment() -> dict[str, Any]:
    import duckdb
    import pyarrow as pa

    from aws_handlers.core import CODE_VERSION
    from aws_handlers.core import convert as conv

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "pyarrow": pa.__version__, "pyarrow_cpu_count": pa.cpu_count(), "duckdb": duckdb.__version__,
            "code_version": CODE_VERSION, "ours_max_chunk_rows": conv.MAX_CHUNK_ROWS,
            "ours_max_chunk_chars": conv.MAX_CHUNK_CHARS, "open_csv_block_bytes": STREAM_BLOCK_BYTES}


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    out = [
        "# Converter benchmark: CSV -> snappy Parquet",
        "",
        f"Generated {doc['generated_at']} by `python -m {MODULE} --sizes {','.join(map(str, doc['sizes']))}` "
        f"(seed {doc['seed']}), code {env['code_version']}.",
        f"Python {env['python']}, pyarrow {env['pyarrow']}, duckdb {env['duckdb']}, {env['cpus']} CPUs, "
        f"{env['platform']}.",
        "",
        "Each variant ran once in its own subprocess. *Peak RSS* is the worker's own high-water mark (VmHWM "
        "on Linux, imports included); *growth* is peak minus the RSS right after imports. Ratios are variant / ours "
        "(time < 1: faster than ours; memory < 1: smaller peak). MB/s uses 10^6 bytes of input CSV. Ours "
        "also writes the `_source_file`/`_source_line` lineage columns; *of which contract columns* is the "
        "compressed size of the seven shared columns only.",
        "",
        "| rows | input MB | variant | seconds | CPU s | MB/s | rows/s | peak RSS MiB | growth MiB "
        "| output MB | of which contract columns | row groups | time × ours | peak mem × ours |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in doc["results"]:
        for variant, r in entry["variants"].items():
            if "error" in r:
                out.append(f"| {entry['rows']:,} | {entry['input_bytes'] / 1e6:.1f} | {variant} | FAILED: "
                           f"{r['error'][:80]} ||||||||||")
                continue
            out.append(
                f"| {entry['rows']:,} | {entry['input_bytes'] / 1e6:.1f} | {variant} | {r['seconds']:.2f} "
                f"| {r['cpu_seconds']:.2f} | {r['input_mb_per_s']:.1f} | {r['rows_per_s']:,} "
                f"| {r['peak_rss_mib']:.0f} | {r['rss_growth_mib']:.0f} | {r['output_bytes'] / 1e6:.1f} "
                f"| {r['output_bytes_contract_columns'] / 1e6:.1f} | {r['row_groups']} | {r.get('time_ratio_vs_ours', float('nan')):.2f} "
                f"| {r.get('memory_ratio_vs_ours', float('nan')):.2f} |")
    out += ["", "## Checks", ""]
    for entry in doc["results"]:
        c = entry["checks"]
        values = c["values_vs_pyarrow_read_csv"]
        out.append(f"- {entry['rows']:,} rows: row counts {'agree' if c['row_counts_agree'] else '**DISAGREE**'} "
                   f"({', '.join(f'{k}={v}' for k, v in c['row_counts'].items())}); ours vs pyarrow_read_csv on the "
                   f"first {CHECK_ROWS} rows: {'equal' if values['equal'] else '**differ**: ' + '; '.join(values['differences'])}")
        for variant, diff in c.get("info_values_vs_ours", {}).items():
            if diff != "equal":
                out.append(f"  - (info) {variant} vs ours: {'; '.join(diff)}")
    out += ["", "## Peak memory as the file grows", "",
            "| variant | " + " | ".join(f"{e['rows']:,} rows" for e in doc["results"]) + " |",
            "|---|" + "---:|" * len(doc["results"])]
    for variant in VARIANTS:
        cells = []
        for entry in doc["results"]:
            r = entry["variants"].get(variant, {})
            cells.append("failed" if "error" in r or not r else f"{r['peak_rss_mib']:.0f} MiB (+{r['rss_growth_mib']:.0f})")
        out.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated row counts (default {DEFAULT_SIZES})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--markdown", default=str(ROOT / "bench-results" / "convert.md"),
                        help="where to write the Markdown table (default bench-results/convert.md)")
    parser.add_argument("--keep", metavar="DIR", help="generate into DIR and keep the CSVs and Parquet outputs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per variant run")
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "CSV", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return worker(*args.worker)

    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or any(s < 1 for s in sizes):
        parser.error("--sizes needs positive row counts")

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="etl-observer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "convert_csv vs pyarrow read_csv / open_csv vs duckdb COPY",
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "sizes": sizes, "seed": args.seed, "environment": environment(), "results": [],
    }
    try:
        for rows in sizes:
            doc["results"].append(bench_size(rows, work, args.seed, args.timeout, bool(args.keep)))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc["total_seconds"] = round(time.perf_counter() - started, 1)

    problems = []
    for entry in doc["results"]:
        for variant, r in entry["variants"].items():
            if "error" in r:
                problems.append(f"{entry['rows']} rows: {variant} failed: {r['error']}")
        if not entry["checks"]["row_counts_agree"]:
            problems.append(f"{entry['rows']} rows: row counts disagree: {entry['checks']['row_counts']}")
        if not entry["checks"]["values_vs_pyarrow_read_csv"]["equal"]:
            problems.append(f"{entry['rows']} rows: ours vs pyarrow_read_csv differ: "
                            f"{entry['checks']['values_vs_pyarrow_read_csv']['differences']}")
    doc["problems"] = problems
    doc["ok"] = not problems

    md_path = Path(args.markdown)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(doc), encoding="utf-8")
    log(f"done in {doc['total_seconds']}s; Markdown table in {md_path}")
    print(json.dumps(doc, indent=2))
    for p in problems:
        log(f"PROBLEM: {p}")
    if any(not e["checks"]["row_counts_agree"] for e in doc["results"]):
        return 1
    if problems:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
