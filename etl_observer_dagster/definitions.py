"""The code location: per-dataset batch assets, their jobs, the landing sensor, the resources.

Contracts are discovered from the bundled folder and $ETL_OBSERVER_HOME/contracts, so a dataset
drafted with `etl-observer contract infer` shows up in the UI on the next reload.
"""
from __future__ import annotations

from dagster import Definitions, define_asset_job

from aws_handlers.core.contract import Contract, discover_contracts

from .assets import build_batch_assets, job_name
from .resources import LocalPipelineResource
from .sensors.landing import build_landing_sensor
from .settings import Settings, current_settings, prepare_home


def pipeline_resource(settings: Settings):
    if settings.env == "aws":
        raise NotImplementedError("ETL_OBSERVER_ENV=aws arrives with the AWS runtime; use local for now")
    return LocalPipelineResource(home=str(settings.home))


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
    sensors = [build_landing_sensor(jobs, sorted(contracts))] if jobs else []
    return Definitions(assets=assets, jobs=jobs, sensors=sensors, resources={"pipeline": pipeline_resource(settings)})


defs = build_definitions()
