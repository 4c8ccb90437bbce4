"""Evidence reports: per batch a JSON and an HTML report, hash-chained per dataset, and `verify`.

A report is built from manifests only (conversion manifests, the load result, check results).
Layout inside the evidence store (a folder locally, a bucket prefix on AWS):

  <dataset>/<batch_id>/report.json, report.html      the latest report of that batch
  <dataset>/<batch_id>/history/<seq>.json, .html     every report ever written, immutable
  <dataset>/_chain/head.json                          sequence, key and SHA-256 of the newest

Each report records the SHA-256 and key of the dataset's previous report (the model is
CloudTrail's digest-file chain), so `verify` can walk from the head back to sequence 1 and
re-hash every report and every file a report names.
"""
from __future__ import annotations

import hashlib
import html
import json
from typing import Any, BinaryIO, Callable, Iterator

from . import CODE_VERSION, REPORT_VERSION, utc_now_iso
from ..storage import ObjectStore, sha256_stream

HEAD_KEY = "_chain/head.json"


def summary_block(batch_id: str, status: str, total_loaded_rows: int, successful_conversions: int,
                  successful_loads: int, failure_count: int) -> dict[str, Any]:
    """The seed pipeline's final summary, field for field."""
    return {"status": status, "total_loaded_rows": total_loaded_rows,
            "successful_conversions": successful_conversions, "successful_loads": successful_loads,
            "failure_count": failure_count, "batch_id": batch_id}


def report_keys(dataset: str, batch_id: str, sequence: int | None = None) -> dict[str, str]:
    base = f"{dataset}/{batch_id}"
    keys = {"json": f"{base}/report.json", "html": f"{base}/report.html"}
    if sequence is not None:
        keys["history_json"] = f"{base}/history/{sequence:06d}.json"
        keys["history_html"] = f"{base}/history/{sequence:06d}.html"
    return keys


def canonical_json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False, default=str) + "\n").encode("utf-8")


def read_head(store: ObjectStore, dataset: str) -> dict[str, Any] | None:
    key = f"{dataset}/{HEAD_KEY}"
    return json.loads(store.get_bytes(key)) if store.exists(key) else None


def write_report(store: ObjectStore, report: dict[str, Any], attempts: int = 20) -> dict[str, Any]:
    """Chain, render and store a report. Returns {'json': uri, 'html': uri, 'sha256': ..., 'sequence': ...}.

    Two batches of one dataset may finish at the same time: the head is moved with a
    compare-and-swap (S3 If-Match; a file lock locally), and the loser takes the next sequence.
    """
    dataset, batch_id = report["dataset"], report["batch_id"]
    head_key = f"{dataset}/{HEAD_KEY}"
    for _ in range(attempts):
        head_bytes, head_version = store.get_versioned(head_key)
        head = json.loads(head_bytes) if head_bytes else None
        sequence = (head["sequence"] + 1) if head else 1
        report["chain"] = {
            "sequence": sequence,
            "previous_report_key": head["report_key"] if head else None,
            "previous_report_sha256": head["sha256"] if head else None,
        }
        keys = report_keys(dataset, batch_id, sequence)
        report["report_keys"] = {"json": keys["json"], "html": keys["html"], "history_json": keys["history_json"]}
        html_bytes = render_html(report).encode("utf-8")
        report["html_sha256"] = hashlib.sha256(html_bytes).hexdigest()
        json_bytes = canonical_json(report)
        sha = hashlib.sha256(json_bytes).hexdigest()
        # Immutable history first, then the head: a crash in between leaves the old head pointing
        # at a complete chain (and an orphan that verify reports).
        # Put-if-absent: a concurrent run of the same batch may hold this sequence's history key.
        if not store.put_bytes_if(keys["history_json"], json_bytes, None, "application/json"):
            continue
        store.put_bytes(keys["history_html"], html_bytes, "text/html; charset=utf-8")
        new_head = canonical_json({"dataset": dataset, "sequence": sequence, "report_key": keys["history_json"],
                                   "sha256": sha, "written_at": utc_now_iso()})
        if store.put_bytes_if(head_key, new_head, head_version):
            store.put_bytes(keys["html"], html_bytes, "text/html; charset=utf-8")
            store.put_bytes(keys["json"], json_bytes, "application/json")
            return {"json": store.uri(keys["json"]), "html": store.uri(keys["html"]), "sha256": sha,
                    "sequence": sequence, "html_sha256": report["html_sha256"]}
        store.delete(keys["history_json"])  # another report took this sequence: retry on top of it
        store.delete(keys["history_html"])
    raise RuntimeError(f"could not append to the evidence chain of {dataset} after {attempts} attempts")


# ---- HTML (every value escaped: no file content ever becomes markup) ----------------------

def _e(value: Any) -> str:
    if value is None:
        return "<span class=muted>—</span>"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    return html.escape(str(value), quote=True)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict[str, Any]) -> str:
    summary = report["summary"]
    status = summary["status"]
    kv = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary.items())
    inputs = [{**i, "sha256": i.get("sha256")} for i in report.get("inputs", [])]
    checks = [{**c, "passed": "PASS" if c.get("passed") else "FAIL"} for c in report.get("checks", [])]
    chain = report.get("chain", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evidence: {_e(report['dataset'])} batch {_e(report['batch_id'])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}} table{{border-collapse:collapse;margin:.5rem 0 1.5rem}}
th,td{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top;font-size:.9rem}}
th{{background:#f3f3f3}} .muted{{color:#888}} .SUCCEEDED{{color:#0a7a2f}} .FAILED{{color:#b00020}}
code{{font-size:.85rem}} td{{overflow-wrap:anywhere;max-width:36rem}}
</style></head><body>
<h1>Evidence report — {_e(report['dataset'])} / {_e(report['batch_id'])}</h1>
<p>Status: <strong class="{_e(status)}">{_e(status)}</strong> · generated {_e(report.get('generated_at'))}
 · code {_e(report.get('code_version'))} · contract {_e(report.get('contract', {}).get('label'))}
 (contract SHA-256 <code>{_e(report.get('contract', {}).get('sha256'))}</code>)</p>
<h2>Summary</h2><table>{kv}</table>
<h2>Steps</h2>{_table(report.get('steps', []), ['name', 'status', 'started_at', 'finished_at', 'duration_seconds'])}
<h2>What came in</h2>{_table(inputs, ['key', 'size', 'sha256', 'encoding', 'records'])}
<h2>What it became</h2>{_table(report.get('outputs', []), ['source_key', 'uri', 'rows', 'size', 'sha256', 'manifest_uri'])}
<h2>Load</h2>{_table([report['load']] if report.get('load') else [], ['table', 'engine', 'rows_inserted', 'table_rows_after', 'duration_seconds'])}
<h2>Reconciliation (CSV rows = Parquet rows = loaded rows)</h2>{_table(report.get('reconciliation', []), ['file', 'csv_rows', 'parquet_rows', 'rejected_rows', 'loaded_rows', 'status'])}
<h2>Ledger (every file of the batch: loaded or duplicate)</h2>{_table(report.get('ledger', []), ['file_key', 'status', 'duplicate_of_batch', 'rows', 'sha256'])}
<h2>Duplicates (content already loaded; not loaded again)</h2>{_table(report.get('duplicates', []), ['file_key', 'sha256', 'duplicate_of_batch', 'rows'])}
<h2>Checks</h2>{_table(checks, ['name', 'passed', 'detail'])}
<h2>Errors</h2>{_table(report.get('errors', []), ['file', 'line', 'column', 'message', 'value'])}
<h2>Chain</h2><table><tr><th>sequence</th><td>{_e(chain.get('sequence'))}</td></tr>
<tr><th>previous report</th><td>{_e(chain.get('previous_report_key'))}</td></tr>
<tr><th>previous report SHA-256</th><td><code>{_e(chain.get('previous_report_sha256'))}</code></td></tr></table>
</body></html>
"""


# ---- verify ------------------------------------------------------------------------------

def _open_uri(uri: str, s3_client_factory: Callable[[], Any] | None) -> BinaryIO:
    if uri.startswith("s3://"):
        from ..storage import split_s3_uri

        bucket, key = split_s3_uri(uri)
        client = s3_client_factory() if s3_client_factory else __import__("boto3").client("s3")
        return client.get_object(Bucket=bucket, Key=key)["Body"]
    return open(uri, "rb")


def recorded_files(report: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(what, uri, sha256) of every file a report vouches for."""
    for item in report.get("inputs", []):
        if item.get("uri") and item.get("sha256"):
            yield "input CSV", item["uri"], item["sha256"]
    for item in report.get("outputs", []):
        if item.get("uri") and item.get("sha256"):
            yield "staging Parquet", item["uri"], item["sha256"]
        if item.get("manifest_uri") and item.get("manifest_sha256"):
            yield "conversion manifest", item["manifest_uri"], item["manifest_sha256"]
        if item.get("rejects_uri") and item.get("rejects_sha256"):
            yield "rejects CSV", item["rejects_uri"], item["rejects_sha256"]  # quarantined rows are evidence


def verify_dataset(store: ObjectStore, dataset: str, *, check_files: bool = True,
                   s3_client_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Walk the chain from the head to sequence 1. Returns {'ok', 'reports', 'files', 'problems'}."""
    problems: list[str] = []
    head = read_head(store, dataset)
    result = {"dataset": dataset, "ok": False, "reports": 0, "files": 0, "problems": problems}
    if head is None:
        problems.append(f"{dataset}: no chain head ({dataset}/{HEAD_KEY} missing)")
        return result
    expected_key, expected_sha, expected_seq = head["report_key"], head["sha256"], head["sequence"]
    # A re-run replaces a batch's staging files, so files are re-hashed against the newest report of
    # each batch — the first one met walking back from the head (the chain, not an editable copy,
    # says which is newest); older reports of that batch are verified as links of the chain.
    newest: dict[str, tuple[int, str]] = {}  # latest-copy key -> (sequence, history key)
    chained_history: set[str] = set()
    while expected_key:
        uri = store.uri(expected_key)
        if not store.exists(expected_key):
            problems.append(f"{uri}: report missing (sequence {expected_seq})")
            break
        data = store.get_bytes(expected_key)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha:
            problems.append(f"{uri}: report SHA-256 is {actual}, the chain recorded {expected_sha}")
            break
        report = json.loads(data)
        chained_history.add(expected_key)
        result["reports"] += 1
        chain = report.get("chain", {})
        if chain.get("sequence") != expected_seq:
            problems.append(f"{uri}: sequence {chain.get('sequence')} where {expected_seq} was expected")
            break
        history_html = expected_key[: -len(".json")] + ".html"
        if not store.exists(history_html):
            problems.append(f"{store.uri(history_html)}: HTML report missing")
        elif store.sha256(history_html) != report.get("html_sha256"):
            problems.append(f"{store.uri(history_html)}: HTML SHA-256 differs from the html_sha256 its JSON recorded")
        latest_key = report.get("report_keys", {}).get("json", "")
        is_newest = latest_key not in newest
        if is_newest:
            newest[latest_key] = (expected_seq, expected_key)
        if check_files and is_newest:
            for what, file_uri, sha in recorded_files(report):
                result["files"] += 1
                try:
                    with _open_uri(file_uri, s3_client_factory) as fh:
                        got = sha256_stream(fh)
                except (FileNotFoundError, OSError) as exc:
                    problems.append(f"{file_uri}: {what} named by {uri} cannot be read ({exc.__class__.__name__})")
                    continue
                except Exception as exc:  # S3 NoSuchKey and friends
                    problems.append(f"{file_uri}: {what} named by {uri} cannot be read ({exc})")
                    continue
                if got != sha:
                    problems.append(f"{file_uri}: {what} SHA-256 is {got}, {uri} recorded {sha}")
        expected_key = chain.get("previous_report_key")
        expected_sha = chain.get("previous_report_sha256")
        expected_seq -= 1
        if expected_key is None and expected_seq != 0:
            problems.append(f"{uri}: chain ends at sequence {expected_seq + 1}, not 1")
    # Every batch's latest copies (report.json / report.html) must exist and equal its newest history entry.
    for latest_key, (sequence, history_key) in newest.items():
        for latest, history in ((latest_key, history_key),
                                (latest_key[: -len(".json")] + ".html", history_key[: -len(".json")] + ".html")):
            if not store.exists(latest):
                problems.append(f"{store.uri(latest)}: missing (the chain's newest report of this batch is {history})")
            elif store.exists(history) and store.sha256(latest) != store.sha256(history):
                problems.append(f"{store.uri(latest)}: differs from {store.uri(history)} (sequence {sequence})")
    for info in store.list(f"{dataset}/"):
        if "/history/" in info.key and info.key.endswith(".json") and info.key not in chained_history:
            problems.append(f"{store.uri(info.key)}: report is not part of the chain")
    result["ok"] = not problems
    return result


def datasets_in_store(store: ObjectStore) -> list[str]:
    names = set()
    for info in store.list(""):
        if info.key.endswith(HEAD_KEY):
            names.add(info.key.split("/", 1)[0])
    return sorted(names)


def reconcile(manifests: list[dict[str, Any]], load: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per converted file: CSV rows = Parquet rows (+ quarantined) = loaded rows (0 for a duplicate).
    status: ok, duplicate, not loaded (no load happened) or mismatch."""
    ledger = {f["file_key"]: f for f in (load or {}).get("files", [])}
    loaded_rows_by_file = (load or {}).get("rows_by_file", {})
    rows = []
    for manifest in manifests:
        if manifest["status"] != "converted":
            continue
        key = manifest["input"]["key"]
        csv_rows, parquet_rows = manifest["input"]["records"], manifest["output"]["rows"]
        rejected = (manifest.get("rejects") or {}).get("rows", 0)
        duplicate = ledger.get(key, {}).get("status") == "duplicate"
        loaded = loaded_rows_by_file.get(key, 0) if load is not None else None
        if load is None:
            status = "not loaded"
        elif csv_rows == parquet_rows + rejected and loaded == (0 if duplicate else parquet_rows):
            status = "duplicate" if duplicate else "ok"
        else:
            status = "mismatch"
        rows.append({"file": key, "csv_rows": csv_rows, "parquet_rows": parquet_rows, "rejected_rows": rejected,
                     "loaded_rows": loaded, "status": status})
    return rows


def build_report(*, dataset: str, batch_id: str, contract: dict[str, Any], runtime: dict[str, Any],
                 steps: list[dict[str, Any]], manifests: list[dict[str, Any]], load: dict[str, Any] | None,
                 checks: list[dict[str, Any]], errors: list[dict[str, Any]], input_files: list[dict[str, Any]],
                 load_failed: bool = False) -> dict[str, Any]:
    """Assemble the report dict from manifests and the load result (nothing is re-measured here)."""
    converted = [m for m in manifests if m["status"] == "converted"]
    load_files = {f["file_key"]: f for f in (load or {}).get("files", [])}
    reconciliation = reconcile(manifests, load)
    by_key = {m["input"]["key"]: m for m in manifests}  # 10,000-file batches: no scan per input
    inputs, outputs = [], []
    for item in input_files:
        manifest = by_key.get(item["key"])
        entry = {"key": item["key"], "uri": item["uri"], "size": item.get("size"), "sha256": item.get("sha256")}
        if manifest:
            entry.update({"size": manifest["input"]["size"], "sha256": manifest["input"]["sha256"],
                          "encoding": manifest["input"]["encoding"], "encoding_source": manifest["input"]["encoding_source"],
                          "records": manifest["input"]["records"], "status": manifest["status"],
                          "blank_line_count": manifest["input"]["blank_line_count"]})
        inputs.append(entry)
    for manifest in converted:
        out = manifest["output"]
        outputs.append({"source_key": manifest["input"]["key"], "uri": out["uri"], "key": out.get("key"),
                        "rows": out["rows"], "size": out["size"], "sha256": out["sha256"], "schema": out["schema"],
                        "manifest_uri": manifest.get("manifest_uri"), "manifest_sha256": manifest.get("manifest_sha256"),
                        "rejects_uri": (manifest.get("rejects") or {}).get("uri"),
                        "rejects_sha256": (manifest.get("rejects") or {}).get("sha256")})
    failed_files = [m for m in manifests if m["status"] != "converted"]
    missing_inputs = [i for i in input_files if i["key"] not in by_key]
    failure_count = len(failed_files) + len(missing_inputs) + (1 if load_failed else 0)
    status = "SUCCEEDED" if failure_count == 0 and not errors and load is not None else "FAILED"
    duplicates = (load or {}).get("duplicates", [])
    successful_loads = sum(1 for f in load_files.values() if f["status"] == "loaded") if load else 0
    total_loaded = int((load or {}).get("rows_inserted", 0))
    return {
        "report_version": REPORT_VERSION,
        "dataset": dataset,
        "batch_id": batch_id,
        "status": status,
        "summary": summary_block(batch_id, status, total_loaded, len(converted), successful_loads,
                                 failure_count if status == "FAILED" else 0),
        "generated_at": utc_now_iso(),
        "code_version": CODE_VERSION,
        "runtime": runtime,
        "contract": contract,
        "steps": steps,
        "inputs": inputs,
        "outputs": outputs,
        "load": {k: v for k, v in (load or {}).items() if k not in ("files",)} or None,
        "ledger": list(load_files.values()),
        "reconciliation": reconciliation,
        "reconciliation_totals": {
            "csv_rows": sum(r["csv_rows"] for r in reconciliation),
            "parquet_rows": sum(r["parquet_rows"] for r in reconciliation),
            "rejected_rows": sum(r["rejected_rows"] for r in reconciliation),
            "loaded_rows": total_loaded,
        },
        "duplicates": duplicates,
        "checks": checks,
        "errors": errors,
    }
