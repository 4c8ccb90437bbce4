"""Resources chosen by deployment: one interface, a local and an AWS implementation.

Assets and sensors only call this interface, so the same definitions (same asset keys) run on
the embedded default and on AWS. Every boto3 client is created without an endpoint, so the
standard AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE> variables point aws mode at an emulator.
"""
from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource

from aws_handlers.core.pipeline import Stores
from aws_handlers.storage import LocalStore, S3Store
from aws_handlers.warehouse import DuckDBWarehouse


class PipelineResource(ConfigurableResource):
    """Where the pipeline's stores and warehouse are. `mode` says which runtime runs batches."""

    @property
    def mode(self) -> str:
        raise NotImplementedError

    def stores(self) -> Stores:
        raise NotImplementedError

    def warehouse(self) -> Any:
        raise NotImplementedError

    def runtime(self) -> dict:
        raise NotImplementedError


class LocalPipelineResource(PipelineResource):
    """The embedded default: folders under ETL_OBSERVER_HOME stand in for buckets, DuckDB for Redshift."""

    home: str

    @property
    def mode(self) -> str:
        return "local"

    def stores(self) -> Stores:
        return Stores(landing=LocalStore(f"{self.home}/landing"), staging=LocalStore(f"{self.home}/staging"),
                      evidence=LocalStore(f"{self.home}/evidence"))

    def warehouse(self) -> DuckDBWarehouse:
        return DuckDBWarehouse(f"{self.home}/warehouse.duckdb")

    def runtime(self) -> dict:
        return {"mode": "local", "warehouse": "duckdb", "home": self.home}


class AWSPipelineResource(PipelineResource):
    """The deployed pipeline: S3 buckets, the ingest state machine, Redshift Serverless."""

    landing_bucket: str
    staging_bucket: str
    evidence_bucket: str
    evidence_prefix: str = "evidence/"
    state_machine_arn: str
    redshift_workgroup: str = ""
    redshift_database: str = "dev"
    region: str = ""
    poll_seconds: float = 5.0

    @property
    def mode(self) -> str:
        return "aws"

    def client(self, service: str):
        import boto3

        return boto3.client(service, **({"region_name": self.region} if self.region else {}))

    def stores(self) -> Stores:
        s3 = self.client("s3")
        return Stores(landing=S3Store(self.landing_bucket, client=s3), staging=S3Store(self.staging_bucket, client=s3),
                      evidence=S3Store(self.evidence_bucket, self.evidence_prefix, client=s3))

    def warehouse(self) -> Any:
        """Redshift through redshift-connector with IAM authentication (no password anywhere)."""
        from aws_handlers.warehouse.redshift_iam import RedshiftConnectorWarehouse

        return RedshiftConnectorWarehouse(workgroup=self.redshift_workgroup, database=self.redshift_database,
                                          region=self.region or None)

    def runtime(self) -> dict:
        return {"mode": "aws", "warehouse": "redshift", "state_machine_arn": self.state_machine_arn}

    def execution_arn(self, name: str) -> str:
        return self.state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{name}"

    def console_url(self, execution_arn: str) -> str:
        region = execution_arn.split(":")[3]
        return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution_arn}"
