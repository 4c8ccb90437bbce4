"""A moto server over HTTP (pyarrow and boto3 alike talk to it), with the buckets of the stack."""
from __future__ import annotations

import boto3
import pytest

from aws_handlers.lambdas import _runtime


@pytest.fixture
def aws(aws_env, monkeypatch, request):
    """Environment of the deployed functions, pointed at the emulator; fresh buckets per test."""
    import hashlib

    suffix = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    names = {"LANDING_BUCKET": f"landing-{suffix}", "STAGING_BUCKET": f"staging-{suffix}",
             "EVIDENCE_BUCKET": f"staging-{suffix}"}
    env = {"EVIDENCE_PREFIX": "evidence/", "REDSHIFT_WORKGROUP": "etl-wg",
           "REDSHIFT_DATABASE": "dev", "COPY_ROLE_ARN": "arn:aws:iam::123456789012:role/copy", **names}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _runtime.client.cache_clear()
    s3 = boto3.client("s3")
    for bucket in {names["LANDING_BUCKET"], names["STAGING_BUCKET"]}:
        s3.create_bucket(Bucket=bucket)
    yield {"s3": s3, **names, "endpoint": aws_env}
    _runtime.client.cache_clear()
