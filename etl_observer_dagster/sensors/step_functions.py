"""aws mode: record the Step Functions executions AWS started (EventBridge -> start_batch) as
runless asset events on the batch partition, then request the batch's checks.

Every finished execution of the state machine is recorded exactly once: its materializations
(upstream first) and, for a failure, an observation carrying the error and cause
(aws_events.asset_events). Executions Dagster started (aws_events.started_by_dagster) are skipped:
the run that started them records them.

ListExecutions only lists newest first (no date filter), so the cursor is a high-water mark:

    {"high_water": "<ISO startDate of the newest execution dealt with>",
     "at_high_water": ["<names at exactly that startDate already dealt with>"],
     "running": ["<arns seen RUNNING: re-described every tick until they finish>"],
     "resume": ["<nextTokens where a walk was cut short (a stack, deepest last)>"]}

A tick (1) describes the executions it saw RUNNING; (2) walks ListExecutions pages from the
newest (or from the deepest resume token) down to the first execution started before
`high_water`, collecting what it has not dealt with (a startDate equal to `high_water` is
compared by name, so executions sharing a startDate are neither missed nor repeated);
(3) deals with them OLDEST FIRST and moves `high_water` over that contiguous prefix only, so a
tick stopped by its limits (executions described, time budget) leaves the rest, newer ones, to
the next tick. A walk that cannot reach `high_water` within its limits (pages, time: a large
backlog) pushes the token of the last page it walked onto `resume` and the next tick continues
from there; when everything below the deepest token is dealt with, it is popped. Everything
above a token is newer than everything below it, so it is found later from a token higher up or
from the top. An expired token (InvalidToken) only costs a walk from the top.

Executions younger than `settle_seconds` (by the service's clock: the response's Date header)
are left for a later tick because ListExecutions is eventually consistent: an execution that
became visible late must not land below a `high_water` that already moved past it.

Throttling and transient errors are retried with backoff; if they persist the tick raises and
returns nothing, so the cursor does not move and nothing is skipped.

Not covered: a redriven execution (same startDate, runs again after it was recorded) is not
recorded a second time.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable

from dagster import (AddDynamicPartitionsRequest, AssetMaterialization, DefaultSensorStatus, RunRequest,
                     SensorEvaluationContext, SensorResult, SkipReason, sensor)

from ..assets import asset_key, check_keys, job_name, partitions_def_name
from ..aws_events import asset_events, execution_facts, output_of, started_by_dagster
from ..resources import AWSPipelineResource

SENSOR_NAME = "step_functions_sensor"
FINISHED = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})
CHECKED_AFTER = frozenset({"SUCCEEDED", "FAILED"})
TRANSIENT_ERRORS = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalServerError", "InternalFailure",
    "InternalServerException", "RequestTimeout", "RequestTimeoutException", "SlowDown"})
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)  # then the tick fails (and is retried by the next tick)
MAX_RESUME_TOKENS = 10  # deepest kept; dropping the upper ones only costs walks from the top
SETTLE_SECONDS = 15.0  # ListExecutions is eventually consistent: leave younger executions for a later tick
SOURCE_TAG = {"etl_observer/source": SENSOR_NAME}


@dataclass
class ExecutionsCursor:
    high_water: datetime | None = None
    at_high_water: frozenset[str] = frozenset()
    running: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: str | None) -> "ExecutionsCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        high_water = datetime.fromisoformat(data["high_water"]) if data.get("high_water") else None
        return cls(high_water, frozenset(data.get("at_high_water") or ()), tuple(data.get("running") or ()),
                   tuple(data.get("resume") or ()))

    def serialize(self) -> str:
        data: dict[str, Any] = {"high_water": self.high_water.isoformat() if self.high_water else None,
                                "at_high_water": sorted(self.at_high_water), "running": list(self.running)}
        if self.resume:
            data["resume"] = list(self.resume)
        return json.dumps(data)

    def dealt_with(self, start: datetime, name: str) -> bool:
        return self.high_water is not None and (
            start < self.high_water or (start == self.high_water and name in self.at_high_water))


@dataclass
class Observed:
    """What one tick found: events in recording order, partitions per dataset, checks to run."""
    events: list = field(default_factory=list)
    partitions: dict[str, list[str]] = field(default_factory=dict)
    run_requests: list[RunRequest] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)  # execution arns
    skipped: list[str] = field(default_factory=list)   # names: started by Dagster, unknown dataset, malformed


def _utc(value: datetime) -> datetime:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    return (response or {}).get("Error", {}).get("Code") if isinstance(response, dict) else None


def call_with_retries(fn: Callable[..., Any], **kwargs) -> Any:
    """An AWS call; throttling and transient errors are retried with backoff, then re-raised."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    for delay in (*RETRY_DELAYS, None):
        try:
            return fn(**kwargs)
        except (BotoConnectionError, HTTPClientError):
            if delay is None:
                raise
        except Exception as exc:  # botocore ClientError (and the client's modeled subclasses)
            if delay is None or _error_code(exc) not in TRANSIENT_ERRORS:
                raise
        time.sleep(delay)
    raise AssertionError("unreachable")


def _service_now(response: dict[str, Any]) -> datetime:
    """The service's clock (Date header, whole seconds) so a skewed local clock does not matter."""
    header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return _utc(parsedate_to_datetime(header)) if header else datetime.now(timezone.utc)
    except (TypeError, ValueError):
        return datetime.now(timezone.utc)


class _Tick:
    def __init__(self, context, pipeline: AWSPipelineResource, datasets: list[str], *, max_executions: int,
                 time_budget_seconds: float, page_size: int, max_pages: int, settle_seconds: float):
        self.log = context.log
        self.pipeline = pipeline
        self.datasets = set(datasets)
        self.sfn = pipeline.client("stepfunctions")
        self.deadline = time.monotonic() + time_budget_seconds
        self.describes_left = max_executions
        self.page_size = page_size
        self.max_pages = max_pages
        self.settle = timedelta(seconds=settle_seconds) if settle_seconds > 0 else None
        self.observed = Observed()
        self._evidence = None

    # -- limits ---------------------------------------------------------------------------
    def out_of_budget(self) -> bool:
        return self.describes_left <= 0 or time.monotonic() >= self.deadline

    def evidence_store(self):
        if self._evidence is None:
            self._evidence = self.pipeline.stores().evidence
        return self._evidence

    # -- AWS --------------------------------------------------------------------------------
    def describe(self, arn: str) -> dict[str, Any] | None:
        self.describes_left -= 1
        try:
            return call_with_retries(self.sfn.describe_execution, executionArn=arn)
        except Exception as exc:
            if _error_code(exc) == "ExecutionDoesNotExist":  # history expired (90 days) or machine deleted
                self.log.warning(f"{arn} no longer exists; not recorded")
                return None
            raise

    def list_page(self, token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"stateMachineArn": self.pipeline.state_machine_arn, "maxResults": self.page_size}
        if token:
            kwargs["nextToken"] = token
        return call_with_retries(self.sfn.list_executions, **kwargs)

    # -- recording ----------------------------------------------------------------------------
    def record(self, description: dict[str, Any]) -> None:
        arn, name = description["executionArn"], description.get("name", "")
        try:
            facts = execution_facts(description)
        except (ValueError, KeyError, TypeError) as exc:
            self.log.warning(f"{arn}: unreadable input/output ({exc}); not recorded")
            self.observed.skipped.append(name)
            return
        dataset = facts["input"].get("dataset") if isinstance(facts["input"], dict) else None
        if not isinstance(dataset, str) or dataset not in self.datasets:
            self.log.info(f"{arn}: dataset {dataset!r} has no contract here; not recorded")
            self.observed.skipped.append(name)
            return
        try:
            output = output_of(facts, self.evidence_store())
        except Exception as exc:  # noqa: BLE001 - unreadable or forbidden (AccessDenied, KMS): never stall the cursor

            self.log.warning(f"{arn}: evidence report unreadable ({exc!r}); recording the execution without it")
            output = None
        batch_id = (output or {}).get("batch_id") or facts["input"].get("batch_id")
        if not isinstance(batch_id, str) or not batch_id:
            self.log.warning(f"{arn}: no batch_id in its input or output; not recorded")
            self.observed.skipped.append(name)
            return
        events = asset_events(dataset, facts, output, self.pipeline.console_url(arn), asset_key)
        self.observed.events.extend(events)
        batches = self.observed.partitions.setdefault(dataset, [])
        if batch_id not in batches:
            batches.append(batch_id)
        self.observed.recorded.append(arn)
        table = asset_key(dataset, "warehouse_table")
        # The checks query Redshift: request them only where a workgroup is configured.
        if facts["status"] in CHECKED_AFTER and self.pipeline.redshift_workgroup and any(
                isinstance(e, AssetMaterialization) and e.asset_key == table for e in events):
            self.observed.run_requests.append(RunRequest(
                job_name=job_name(dataset), partition_key=batch_id, asset_selection=[],
                asset_check_keys=check_keys(dataset), run_key=f"checks:{arn}", tags=dict(SOURCE_TAG)))

    # -- the tick -----------------------------------------------------------------------------
    def recheck_running(self, running: tuple[str, ...]) -> list[str]:
        """Describe the executions seen RUNNING (at most half the tick's describes, so a crowd of
        long executions cannot starve new ones); the ones not checked go first next tick."""
        share = max(1, self.describes_left // 2)
        unchecked, still = [], []
        for arn in running:
            if share <= 0 or self.out_of_budget():
                unchecked.append(arn)
                continue
            share -= 1
            description = self.describe(arn)
            if description is None:
                continue
            if description["status"] in FINISHED:
                self.record(description)
            else:
                still.append(arn)
        return unchecked + still

    def walk(self, cursor: ExecutionsCursor) -> tuple[list[dict[str, Any]] | None, list[str], datetime | None]:
        """Pages from the deepest resume token (else the newest) down to the first execution
        started before `high_water`. Returns (the executions not dealt with, or None when the walk
        was cut short by its page/time limits; the resume stack; the service's time)."""
        stack = list(cursor.resume)
        token = stack[-1] if stack else None  # the token of the page about to be fetched
        unseen: list[dict[str, Any]] = []
        pages, now, last_page_token = 0, None, None
        while True:
            if pages >= self.max_pages or time.monotonic() >= self.deadline:
                if pages:
                    # Continue next tick from the LAST page walked (one page of overlap): the page
                    # where high_water is may be the one that told us nothing yet, so starting
                    # after it could leave a walk from above cut at the same place forever.
                    stack.append(last_page_token if pages > 1 and last_page_token else token)
                return None, stack[-MAX_RESUME_TOKENS:], now
            try:
                response = self.list_page(token)
            except Exception as exc:
                if _error_code(exc) == "InvalidToken" and token is not None and pages == 0:
                    self.log.info("resume token expired; walking from the newest execution")
                    stack, token = [], None
                    continue
                raise
            pages += 1
            last_page_token = token
            now = now or _service_now(response)
            for item in response.get("executions", []):
                start = _utc(item["startDate"])
                if cursor.high_water is not None and start < cursor.high_water:
                    return unseen, stack, now
                if not cursor.dealt_with(start, item["name"]):
                    unseen.append({**item, "startDate": start})
            token = response.get("nextToken")
            if not token:
                return unseen, stack, now

    def run(self, cursor: ExecutionsCursor) -> ExecutionsCursor:
        running = self.recheck_running(cursor.running)
        unseen, stack, now = self.walk(cursor)
        if unseen is None:
            self.log.info(f"walked {self.max_pages} pages or the time budget without reaching the high-water "
                          f"mark; continuing from there next tick ({len(stack)} resume token(s))")
            return ExecutionsCursor(cursor.high_water, cursor.at_high_water, tuple(running), tuple(stack))
        candidates = sorted(unseen, key=lambda e: (e["startDate"], e["name"]))
        if self.settle is not None and now is not None:
            candidates = [e for e in candidates if e["startDate"] <= now - self.settle]
        done: list[dict[str, Any]] = []
        for item in candidates:
            if started_by_dagster(item["name"]):
                self.observed.skipped.append(item["name"])
            elif item.get("status") not in FINISHED:
                running.append(item["executionArn"])
            else:
                if self.out_of_budget():
                    break
                description = self.describe(item["executionArn"])
                if description is not None:
                    if description["status"] in FINISHED:
                        self.record(description)
                    else:  # listed as finished but running again (redrive)
                        running.append(item["executionArn"])
            done.append(item)
        high_water, at_high_water = cursor.high_water, set(cursor.at_high_water)
        if done:
            top = done[-1]["startDate"]
            names = {e["name"] for e in done if e["startDate"] == top}
            at_high_water = names | at_high_water if top == high_water else names
            high_water = top
        if stack and len(done) == len(unseen):
            stack.pop()  # everything below the deepest token is dealt with: continue from the one above
        return ExecutionsCursor(high_water, frozenset(at_high_water), tuple(dict.fromkeys(running)), tuple(stack))


def observe_executions(context, pipeline: AWSPipelineResource, datasets: list[str], cursor: ExecutionsCursor, *,
                       max_executions: int = 200, time_budget_seconds: float = 20.0, page_size: int = 100,
                       max_pages: int = 50, settle_seconds: float | None = None) -> tuple[Observed, ExecutionsCursor]:
    """One tick, pure with respect to Dagster: what to record and the new cursor."""
    if max_pages < 2:
        raise ValueError("max_pages must be at least 2 (a walk needs the page after the last unseen execution)")
    settle_seconds = SETTLE_SECONDS if settle_seconds is None else settle_seconds
    tick = _Tick(context, pipeline, datasets, max_executions=max_executions, time_budget_seconds=time_budget_seconds,
                 page_size=page_size, max_pages=max_pages, settle_seconds=settle_seconds)
    new_cursor = tick.run(cursor)
    return tick.observed, new_cursor


def build_step_functions_sensor(datasets: list[str], jobs: list, *, minimum_interval_seconds: int = 30,
                                time_budget_seconds: float = 20.0, max_executions_per_tick: int = 200,
                                page_size: int = 100, max_pages_per_tick: int = 50, settle_seconds: float | None = None):
    @sensor(name=SENSOR_NAME, jobs=jobs or None, minimum_interval_seconds=minimum_interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description="Records the Step Functions executions AWS started (materializations, failures with "
                        "error and cause) on their batch partitions, then runs the batch's checks.")
    def step_functions_sensor(context: SensorEvaluationContext, pipeline: AWSPipelineResource):
        cursor = ExecutionsCursor.parse(context.cursor)
        observed, new_cursor = observe_executions(
            context, pipeline, datasets, cursor, max_executions=max_executions_per_tick,
            time_budget_seconds=time_budget_seconds, page_size=page_size, max_pages=max_pages_per_tick,
            settle_seconds=settle_seconds)
        if not observed.events:
            return SensorResult(skip_reason=SkipReason(
                f"no finished executions to record ({len(observed.skipped)} skipped, "
                f"{len(new_cursor.running)} running)"), cursor=new_cursor.serialize())
        context.log.info(f"recorded {len(observed.recorded)} execution(s), skipped {len(observed.skipped)}, "
                         f"{len(new_cursor.running)} running")
        return SensorResult(
            asset_events=observed.events,
            dynamic_partitions_requests=[AddDynamicPartitionsRequest(partitions_def_name(d), batches)
                                         for d, batches in observed.partitions.items()],
            run_requests=observed.run_requests, cursor=new_cursor.serialize())

    return step_functions_sensor
