"""The landing sensor: the local twin of S3 -> EventBridge -> Step Functions.

It lists the landing store (a folder locally, a bucket on AWS: same ObjectStore interface),
groups new CSV files per dataset into one batch, adds the batch partition and launches the run.

Cursor: a watermark on the objects' change time plus the objects (key, etag) seen at (or, with a
lookback, shortly below) the watermark. Objects are ordered by (time, key); everything up to and
including the last object handed to a run is behind the cursor, so nothing is repeated, and
objects sharing the watermark's timestamp that arrive later are still picked up, so nothing is
missed. A file is only taken once it has been
quiet for `settle_seconds`, so a half-copied CSV is never batched. A re-written file has a new
change time and comes back as a new delivery; the warehouse ledger decides whether its content
was already loaded.
"""
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Iterable

from dagster import (AddDynamicPartitionsRequest, DefaultSensorStatus, RunRequest, SensorEvaluationContext,
                     SensorResult, SkipReason, sensor)

from aws_handlers.storage import ObjectInfo

from ..assets import batch_op_name, job_name, partitions_def_name
from ..resources import PipelineResource

SETTLE_SECONDS = 2.0
MAX_FILES_PER_BATCH = 1000


@dataclass(frozen=True)
class LandingCursor:
    """A watermark on object time, plus (key, etag, time) of every object taken within `lookback_ns`
    below it. Local folders use no lookback (a file's change time is set when it appears). S3 needs
    one: a multipart upload's LastModified is when it was *initiated*, so an object can appear in a
    listing after newer ones; anything inside the window that was not taken yet is still new."""
    watermark_ns: int = 0
    seen: tuple[tuple[str, str, int], ...] = ()
    lookback_ns: int = 0

    @classmethod
    def parse(cls, raw: str | None, lookback_ns: int = 0) -> "LandingCursor":
        if not raw:
            return cls(lookback_ns=lookback_ns)
        data = json.loads(raw)
        return cls(int(data["watermark_ns"]), tuple(sorted((k, e, int(t)) for k, e, t in data["seen"])), lookback_ns)

    def serialize(self) -> str:
        return json.dumps({"watermark_ns": self.watermark_ns, "seen": [list(s) for s in self.seen]})

    @functools.cached_property
    def _seen_pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset((k, e) for k, e, _ in self.seen)  # built once per tick, not per object

    def is_new(self, obj: ObjectInfo) -> bool:
        if obj.modified_ns > self.watermark_ns:
            return True
        if obj.modified_ns < self.watermark_ns - self.lookback_ns:
            return False
        return (obj.key, obj.etag) not in self._seen_pairs

    def advance(self, taken: list[ObjectInfo]) -> "LandingCursor":
        if not taken:
            return self
        top = max(self.watermark_ns, max(o.modified_ns for o in taken))
        entries = {(k, e): t for k, e, t in self.seen}
        entries.update({(o.key, o.etag): o.modified_ns for o in taken})
        kept = tuple(sorted((k, e, t) for (k, e), t in entries.items() if t >= top - self.lookback_ns))
        return LandingCursor(top, kept, self.lookback_ns)


def dataset_of(key: str) -> str | None:
    head, sep, rest = key.partition("/")
    return head if sep and rest else None


def batch_id_for(dataset: str, objects: list[ObjectInfo]) -> str:
    """Deterministic: the same delivery always gets the same batch id (and run key)."""
    digest = hashlib.sha256("\n".join(f"{o.key}|{o.etag}|{o.modified_ns}" for o in objects).encode()).hexdigest()[:10]
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(max(o.modified_ns for o in objects) / 1e9))
    return f"landing-{stamp}-{digest}"


def select_new(objects: Iterable[ObjectInfo], cursor: LandingCursor, now_ns: int, settle_seconds: float,
               max_objects: int) -> tuple[list[ObjectInfo], LandingCursor]:
    """New, settled, non-empty CSV objects in (time, key) order, and the cursor after taking them."""
    settled_before = now_ns - int(settle_seconds * 1e9)
    candidates = sorted((o for o in objects if o.key.lower().endswith(".csv") and o.size > 0 and cursor.is_new(o)),
                        key=lambda o: (o.modified_ns, o.key))
    taken: list[ObjectInfo] = []
    for obj in candidates:
        if obj.modified_ns > settled_before or len(taken) >= max_objects:
            break  # everything after this is newer: leave it (and all later objects) for the next tick
        taken.append(obj)
    return taken, cursor.advance(taken)


def plan_batches(objects: Iterable[ObjectInfo], cursor: LandingCursor, datasets: set[str], now_ns: int,
                 settle_seconds: float | None = None, max_files: int = MAX_FILES_PER_BATCH):
    """Pure decision: which new objects form which batches, and the cursor after handing them out."""
    settle_seconds = SETTLE_SECONDS if settle_seconds is None else settle_seconds
    taken, new_cursor = select_new(objects, cursor, now_ns, settle_seconds, max_files)
    batches: dict[str, list[ObjectInfo]] = {}
    ignored: list[str] = []
    for obj in taken:
        dataset = dataset_of(obj.key)
        if dataset in datasets:
            batches.setdefault(dataset, []).append(obj)
        else:
            ignored.append(obj.key)
    return batches, new_cursor, ignored


def build_landing_sensor(jobs: list, datasets: list[str], minimum_interval_seconds: int = 5):
    @sensor(name="landing_sensor", jobs=jobs, minimum_interval_seconds=minimum_interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description="Batches new CSV files per dataset from the landing store and launches their runs.")
    def landing_sensor(context: SensorEvaluationContext, pipeline: PipelineResource):
        cursor = LandingCursor.parse(context.cursor)
        batches, new_cursor, ignored = plan_batches(pipeline.stores().landing.list(), cursor, set(datasets),
                                                    time.time_ns())
        for key in ignored:
            context.log.warning(f"landing file {key} has no dataset contract; skipped (add a contract, then re-copy it)")
        if not batches:
            return SensorResult(skip_reason=SkipReason("no new settled CSV files in landing"),
                                cursor=new_cursor.serialize())
        run_requests, partition_requests = [], []
        for dataset, objects in sorted(batches.items()):
            batch_id = batch_id_for(dataset, objects)
            partition_requests.append(AddDynamicPartitionsRequest(partitions_def_name(dataset), [batch_id]))
            run_requests.append(RunRequest(
                run_key=f"{dataset}:{batch_id}", job_name=job_name(dataset), partition_key=batch_id,
                run_config={"ops": {batch_op_name(dataset): {"config": {"files": [o.key for o in objects]}}}},
                tags={"dataset": dataset, "etl_observer/source": "landing_sensor"}))
        return SensorResult(run_requests=run_requests, dynamic_partitions_requests=partition_requests,
                            cursor=new_cursor.serialize())

    return landing_sensor
