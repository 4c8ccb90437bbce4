"""End to end through the real UI: `etl-observer dev` (what `make dev` runs), the landing sensor, Chromium.

One `dagster dev` per module, started exactly like `make dev` (ETL_OBSERVER_HOME set, DAGSTER_HOME
left to its default under it), on a free port, in its own process group so teardown can end the
webserver, the daemon and the code servers together. The tests, in order:

1. the asset graph over GraphQL: the four employees assets and their dependencies;
2. a CSV copied into landing/employees/ is picked up by the landing sensor, its run succeeds and
   writes the evidence report (10 rows loaded);
3. a real Chromium (Debian's /usr/bin/chromium; nothing is downloaded) renders the group's lineage
   graph with the four assets; the screenshot is kept in tmp_path and /tmp/etl-observer-ui.png.

Without /usr/bin/chromium the browser test skips, except with CI=true where it fails (.ci/run installs it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ui, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "employees.csv"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_COPY = Path("/tmp/etl-observer-ui.png")

DATASET = "employees"
ASSET_NAMES = ("landing_csv", "staging_parquet", "warehouse_table", "evidence_report")
EXPECTED_DEPS = {
    (DATASET, "landing_csv"): set(),
    (DATASET, "staging_parquet"): {(DATASET, "landing_csv")},
    (DATASET, "warehouse_table"): {(DATASET, "staging_parquet")},
    (DATASET, "evidence_report"): {(DATASET, "warehouse_table")},
}
JOB = f"{DATASET}_batch"
LOCATION = "etl_observer"
# The group's lineage page (dagster 1.13). /asset-groups/<group> without the location renders the
# global lineage instead, and /assets/<key>?view=lineage shows only the nearest neighbours.
LINEAGE_PATH = f"/locations/{LOCATION}/asset-groups/{DATASET}"

STARTUP_TIMEOUT = 90
RUN_TIMEOUT = 120
TERM_GRACE = 10


@dataclass
class DagsterDev:
    process: subprocess.Popen
    base_url: str
    home: Path
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 15) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.base_url}/graphql", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            doc = json.loads(response.read())
        if doc.get("errors"):
            raise AssertionError(f"GraphQL errors: {doc['errors']}")
        return doc["data"]

    def fail(self, message: str):
        pytest.fail(f"{message}\n--- dagster dev log ({self.log_path}), last lines ---\n{self.log_tail()}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_running(pgid: int) -> bool:
    """True while a process of the group is still running; zombies (already dead, left to init) do not count."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the whole process group, give it TERM_GRACE seconds, then SIGKILL whatever is left
    (dagster dev does not always act on SIGTERM)."""
    pgid = process.pid  # start_new_session=True: the leader's pid is the group id
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE
    while time.monotonic() < deadline:
        process.poll()  # reap the leader as soon as it exits
        if not _group_running(pgid):
            break
        time.sleep(0.2)
    if _group_running(pgid):
        _signal_group(pgid, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


def _wait_until_ready(dev: DagsterDev) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_error = "not polled yet"
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            dev.fail(f"`etl-observer dev` exited with code {dev.process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{dev.base_url}/server_info", timeout=5) as response:
                json.loads(response.read())
            data = dev.graphql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
                name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
            entries = {e["name"]: e for e in data["workspaceOrError"].get("locationEntries", [])}
            entry = entries.get(LOCATION)
            if entry and entry["loadStatus"] == "LOADED":
                error = entry["locationOrLoadError"] or {}
                if error.get("__typename") == "PythonError":
                    dev.fail(f"code location {LOCATION} failed to load: {error.get('message')}")
                return
            last_error = f"location entries: {sorted(entries)} / {entry and entry['loadStatus']}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError, AssertionError) as exc:
            last_error = repr(exc)
        time.sleep(1)
    dev.fail(f"dagster dev not ready after {STARTUP_TIMEOUT} s ({last_error})")


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory) -> DagsterDev:
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "home"
    port = _free_port()
    env = dict(os.environ)
    env.pop("DAGSTER_HOME", None)  # the default, $ETL_OBSERVER_HOME/dagster, as with `make dev`
    env["ETL_OBSERVER_HOME"] = str(home)
    env["ETL_OBSERVER_ENV"] = "local"
    env["PYTHONUNBUFFERED"] = "1"
    command = [str(Path(sys.executable).with_name("etl-observer")), "dev", "--port", str(port)]
    log_path = tmp / "dagster-dev.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    dev = DagsterDev(process=process, base_url=f"http://127.0.0.1:{port}", home=home, log_path=log_path)
    try:
        _wait_until_ready(dev)
        yield dev
    finally:
        _stop(process)


def test_asset_graph_has_the_four_employees_assets_in_a_chain(dagster_dev: DagsterDev):
    data = dagster_dev.graphql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")
    graph = {tuple(n["assetKey"]["path"]): {tuple(d["path"]) for d in n["dependencyKeys"]} for n in data["assetNodes"]}
    employees = {key: deps for key, deps in graph.items() if key[0] == DATASET}
    assert employees == EXPECTED_DEPS


RUNS_QUERY = """query Runs($job: String!) {
  runsOrError(filter: {pipelineName: $job}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""


def _wait_for_sensor_run(dev: DagsterDev) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    seen = "no run yet"
    while time.monotonic() < deadline:
        data = dev.graphql(RUNS_QUERY, {"job": JOB})["runsOrError"]
        if data["__typename"] != "Runs":
            dev.fail(f"runsOrError: {data}")
        runs = [{**r, "tags": {t["key"]: t["value"] for t in r["tags"]}} for r in data["results"]]
        runs = [r for r in runs if r["tags"].get("dagster/sensor_name") == "landing_sensor"]
        for run in runs:
            if run["status"] == "SUCCESS":
                return run
            if run["status"] in ("FAILURE", "CANCELED", "CANCELING"):
                dev.fail(f"sensor run {run['runId']} ended {run['status']}")
        if runs:
            seen = ", ".join(f"{r['runId'][:8]} {r['status']}" for r in runs)
        time.sleep(2)
    dev.fail(f"no successful {JOB} run from landing_sensor within {RUN_TIMEOUT} s (runs: {seen})")


def test_csv_dropped_into_landing_is_run_by_the_sensor_and_writes_evidence(dagster_dev: DagsterDev):
    landing = dagster_dev.home / "landing" / DATASET
    landing.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SAMPLE, landing / "employees.csv")

    run = _wait_for_sensor_run(dagster_dev)
    batch_id = run["tags"].get("dagster/partition")
    assert batch_id, f"run {run['runId']} has no dagster/partition tag: {run['tags']}"
    assert run["tags"].get("etl_observer/source") == "landing_sensor"

    report_path = dagster_dev.home / "evidence" / DATASET / batch_id / "report.json"
    assert report_path.is_file(), f"no evidence report at {report_path}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["status"] == "SUCCEEDED", report.get("errors")
    assert report["summary"]["total_loaded_rows"] == 10


def _chromium_or_skip() -> str:
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def test_lineage_page_shows_the_four_assets_in_chromium(dagster_dev: DagsterDev, tmp_path: Path):
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    url = dagster_dev.base_url + LINEAGE_PATH
    screenshot = tmp_path / "lineage.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=30_000)
            # The graph's nodes are HTML inside the SVG's foreignObjects: only the graph matches, not a list.
            nodes = {name: page.locator("svg foreignObject").get_by_text(name, exact=True) for name in ASSET_NAMES}
            missing = []
            for name, node in nodes.items():
                try:
                    node.first.wait_for(state="visible", timeout=45_000)
                except Exception:  # playwright's TimeoutError
                    missing.append(name)
            page.wait_for_timeout(1_000)  # let the layout settle before the screenshot
            page.screenshot(path=str(screenshot))
            shutil.copyfile(screenshot, SCREENSHOT_COPY)
            visible = {name: node.first.is_visible() for name, node in nodes.items()}
        finally:
            browser.close()
    assert not missing and all(visible.values()), (
        f"asset names not visible on {url}: {missing or [n for n, v in visible.items() if not v]}; "
        f"screenshot {screenshot}")
