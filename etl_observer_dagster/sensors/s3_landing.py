"""aws mode: watch the landing bucket. EventBridge starts the executions; this sensor makes every
delivered object visible in Dagster as an observation of `<dataset>/landing_csv` on the batch
partition the execution will use (the batch id is computed exactly as the start_batch Lambda
computes it), and adds that partition, so the Step Functions sensor's materializations land on it.

Listing is paginated (S3Store.list: list_objects_v2 pages of 1,000). The cursor is the landing
sensor's (watermark + recently seen key/ETag pairs) with a lookback window, because S3's
LastModified of a multipart upload is its initiation time: an object can show up after newer
ones. A deleted object simply stops being listed; a re-upload has a new ETag and is new again.
"""
import time
from datetime import datetime, timezone

from dagster import (AddDynamicPartitionsRequest, AssetObservation, DefaultSensorStatus, SensorEvaluationContext,
                     SensorResult, SkipReason, sensor)

from aws_handlers.lambdas.start_batch import batch_id_for

from ..assets import asset_key, partitions_def_name
from ..resources import AWSPipelineResource
from .landing import LandingCursor, dataset_of, select_new

LOOKBACK_SECONDS = 900
MAX_OBJECTS_PER_TICK = 5000


def observe_new_objects(pipeline: AWSPipelineResource, cursor: LandingCursor, datasets: list[str], now_ns: int,
                        max_objects: int = MAX_OBJECTS_PER_TICK):
    """Pure with respect to Dagster: observations, partitions to add per dataset, the new cursor."""
    landing = pipeline.stores().landing
    taken, new_cursor = select_new(landing.list(), cursor, now_ns, settle_seconds=0.0, max_objects=max_objects)
    observations, partitions, ignored = [], {}, []
    for obj in taken:
        dataset = dataset_of(obj.key)
        if dataset not in datasets:
            ignored.append(obj.key)
            continue
        batch_id = batch_id_for(pipeline.landing_bucket, obj.key, obj.etag)
        partitions.setdefault(dataset, []).append(batch_id)
        observations.append(AssetObservation(
            asset_key=asset_key(dataset, "landing_csv"), partition=batch_id,
            metadata={"key": obj.key, "uri": landing.uri(obj.key), "size": obj.size, "etag": obj.etag,
                      "last_modified": datetime.fromtimestamp(obj.modified_ns / 1e9, timezone.utc).isoformat()}))
    return observations, partitions, new_cursor, ignored


def build_s3_landing_sensor(datasets: list[str], minimum_interval_seconds: int = 30,
                            lookback_seconds: int = LOOKBACK_SECONDS):
    @sensor(name="s3_landing_sensor", minimum_interval_seconds=minimum_interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description="Observes new CSV objects in the landing bucket and adds their batch partitions.")
    def s3_landing_sensor(context: SensorEvaluationContext, pipeline: AWSPipelineResource):
        cursor = LandingCursor.parse(context.cursor, lookback_ns=lookback_seconds * 1_000_000_000)
        observations, partitions, new_cursor, ignored = observe_new_objects(pipeline, cursor, datasets, time.time_ns())
        for key in ignored[:20]:
            context.log.warning(f"landing object {key} has no dataset contract; not observed")
        if not observations:
            return SensorResult(skip_reason=SkipReason("no new CSV objects in the landing bucket"),
                                cursor=new_cursor.serialize())
        return SensorResult(
            asset_events=observations, cursor=new_cursor.serialize(),
            dynamic_partitions_requests=[AddDynamicPartitionsRequest(partitions_def_name(d), sorted(set(ids)))
                                         for d, ids in sorted(partitions.items())])

    return s3_landing_sensor
