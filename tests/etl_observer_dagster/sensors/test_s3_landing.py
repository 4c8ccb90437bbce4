"""The S3 landing sensor against a moto server: pagination past 1,000 keys and a cursor that
neither misses nor repeats (same second, out of key order, re-upload, deletion, late LastModified)."""
from __future__ import annotations

import json

import boto3
import pytest
from dagster import DagsterInstance, build_sensor_context

from aws_handlers.lambdas.start_batch import batch_id_for
from aws_handlers.storage import ObjectInfo
from etl_observer_dagster.resources import AWSPipelineResource
from etl_observer_dagster.sensors.landing import LandingCursor, select_new
from etl_observer_dagster.sensors.s3_landing import build_s3_landing_sensor

S = 1_000_000_000


@pytest.fixture
def pipeline(aws_env, request):
    bucket = f"landing-{abs(hash(request.node.nodeid)) % 10**8}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return AWSPipelineResource(landing_bucket=bucket, staging_bucket=bucket, evidence_bucket=bucket,
                               state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:ingest")


def tick(sensor, cursor, pipeline):
    with DagsterInstance.ephemeral() as instance:
        return sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"pipeline": pipeline}))


def observed_keys(result):
    return [e.metadata["key"].value for e in (result.asset_events or [])]


def test_more_than_a_page_of_keys_each_observed_once_across_ticks(pipeline):
    s3 = boto3.client("s3")
    keys = [f"employees/part-{i:05d}.csv" for i in range(2100)]
    for key in keys:
        s3.put_object(Bucket=pipeline.landing_bucket, Key=key, Body=b"x")
    sensor = build_s3_landing_sensor(["employees"])
    first = tick(sensor, None, pipeline)
    assert sorted(observed_keys(first)) == keys  # one tick lists all 3 pages
    (request,) = first.dynamic_partitions_requests
    assert request.partitions_def_name == "employees_batches" and len(request.partition_keys) == 2100
    etag = s3.head_object(Bucket=pipeline.landing_bucket, Key=keys[0])["ETag"]
    assert batch_id_for(pipeline.landing_bucket, keys[0], etag) in request.partition_keys
    assert first.asset_events[0].partition == batch_id_for(pipeline.landing_bucket, keys[0], etag)
    second = tick(sensor, first.cursor, pipeline)
    assert observed_keys(second) == [] and json.loads(second.cursor) == json.loads(first.cursor)


def test_reupload_deletion_and_new_keys_out_of_order(pipeline):
    s3 = boto3.client("s3")
    for key in ("employees/m.csv", "employees/z.csv"):
        s3.put_object(Bucket=pipeline.landing_bucket, Key=key, Body=b"1")
    sensor = build_s3_landing_sensor(["employees"])
    result = tick(sensor, None, pipeline)
    assert sorted(observed_keys(result)) == ["employees/m.csv", "employees/z.csv"]
    s3.delete_object(Bucket=pipeline.landing_bucket, Key="employees/z.csv")  # the stock helper's since_key
    s3.put_object(Bucket=pipeline.landing_bucket, Key="employees/a.csv", Body=b"2")  # sorts before the others
    s3.put_object(Bucket=pipeline.landing_bucket, Key="employees/m.csv", Body=b"changed")  # new ETag
    s3.put_object(Bucket=pipeline.landing_bucket, Key="other/x.csv", Body=b"3")  # no contract
    s3.put_object(Bucket=pipeline.landing_bucket, Key="employees/empty.csv", Body=b"")
    again = tick(sensor, result.cursor, pipeline)
    assert sorted(observed_keys(again)) == ["employees/a.csv", "employees/m.csv"]
    assert tick(sensor, again.cursor, pipeline).asset_events in (None, [])


def obj(key, t, etag="e"):
    return ObjectInfo(key=key, size=1, modified_ns=t, etag=etag)


def test_lookback_catches_an_object_listed_late_with_an_older_time():
    cursor = LandingCursor(lookback_ns=900 * S)
    taken, cursor = select_new([obj("employees/b.csv", 1000 * S)], cursor, 2000 * S, 0, 100)
    late = obj("employees/big-multipart.csv", 950 * S)  # initiated earlier, completed later
    too_old = obj("employees/ancient.csv", 50 * S)
    taken, cursor = select_new([obj("employees/b.csv", 1000 * S), late, too_old], cursor, 2000 * S, 0, 100)
    assert taken == [late]
    assert cursor.watermark_ns == 1000 * S
    assert [k for k, _, _ in cursor.seen] == ["employees/b.csv", "employees/big-multipart.csv"]
    # the window moves with the watermark, so the cursor stays small
    taken, cursor = select_new([obj("employees/c.csv", 5000 * S)], cursor, 6000 * S, 0, 100)
    assert [k for k, _, _ in cursor.seen] == ["employees/c.csv"]
