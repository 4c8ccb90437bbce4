"""The code location: per-dataset batch assets, their jobs, the landing sensor, the resources.

Contracts are discovered from the bundled folder and $ETL_OBSERVER_HOME/contracts, so a dataset
drafted with `etl-observer contract infer` shows up in the UI on the next reload.
"""
from __future__ import annotations

import os
from dagster import Definitions, define_asset_job

from aws_handlers.core.contract import Contract, discover_contracts

from .assets import build_batch_assets, job_name
from .resources import AWSPipelineResource, LocalPipelineResource, PipelineResource
from .sensors.landing import build_landing_sensor
from .settings import Settings, current_settings, prepare_home


AWS_SETTINGS = {  # ETL_OBSERVER_ENV=aws: resource field <- environment variable
    "landing_bucket": "ETL_OBSERVER_LANDING_BUCKET",
    "staging_bucket": "ETL_OBSERVER_STAGING_BUCKET",
    "evidence_bucket": "ETL_OBSERVER_EVIDENCE_BUCKET",
    "evidence_prefix": "ETL_OBSERVER_EVIDENCE_PREFIX",
    "state_machine_arn": "ETL_OBSERVER_STATE_MACHINE_ARN",
    "redshift_workgroup": "ETL_OBSERVER_REDSHIFT_WORKGROUP",
    "redshift_database": "ETL_OBSERVER_REDSHIFT_DATABASE",
    "region": "AWS_REGION",
}
AWS_REQUIRED = ("landing_bucket", "staging_bucket", "state_machine_arn")


def pipeline_resource(settings: Settings) -> PipelineResource:
    """The one place that picks local or AWS resources (same asset keys either way)."""
    if settings.env == "local":
        return LocalPipelineResource(home=str(settings.home))
    values = {field: os.environ[var] for field, var in AWS_SETTINGS.items() if os.environ.get(var)}
    missing = [AWS_SETTINGS[f] for f in AWS_REQUIRED if f not in values]
    if missing:
        raise ValueError(f"ETL_OBSERVER_ENV=aws needs {missing} (see README, 'AWS mode')")
    values.setdefault("evidence_bucket", values["staging_bucket"])
    if not values.get("region") and os.environ.get("AWS_DEFAULT_REGION"):
        values["region"] = os.environ["AWS_DEFAULT_REGION"]
    return AWSPipelineResource(**values)


def aws_sensors(datasets: list[str], jobs: list) -> list:
    """ETL_OBSERVER_ENV=aws: EventBridge starts the executions; Dagster observes S3 and Step Functions."""
    from .sensors.s3_landing import build_s3_landing_sensor
    from .sensors.step_functions import build_step_functions_sensor

    return [build_s3_landing_sensor(datasets), build_step_functions_sensor(datasets, jobs)]


def build_definitions(settings: Settings | None = None, extra_contracts: list[Contract] | None = None) -> Definitions:
    settings = prepare_home(settings or current_settings())
    contracts = discover_contracts(settings.contracts_dir)
    for contract in extra_contracts or []:
        contracts[contract.dataset] = contract
    assets, jobs = [], []
    for dataset, contract in sorted(contracts.items()):
        if settings.env == "local":
            (settings.landing_dir / dataset).mkdir(parents=True, exist_ok=True)  # where to drop its CSVs
        batch_assets = build_batch_assets(contract)
        assets.append(batch_assets)
        jobs.append(define_asset_job(job_name(dataset), selection=[batch_assets],
                                     description=f"One {dataset} batch: convert, load, check, evidence"))
    if settings.env == "local":
        sensors = [build_landing_sensor(jobs, sorted(contracts))] if jobs else []
    else:
        sensors = aws_sensors(sorted(contracts), jobs)
    return Definitions(assets=assets, jobs=jobs, sensors=sensors, resources={"pipeline": pipeline_resource(settings)})


defs = build_definitions()
