"""Resources chosen by deployment: the pipeline's stores and warehouse, local or AWS."""
from __future__ import annotations

from dagster import ConfigurableResource

from aws_handlers.core.pipeline import Stores
from aws_handlers.storage import LocalStore
from aws_handlers.warehouse import DuckDBWarehouse


class LocalPipelineResource(ConfigurableResource):
    """The embedded default: folders under ETL_OBSERVER_HOME stand in for buckets, DuckDB for Redshift."""

    home: str

    def stores(self) -> Stores:
        return Stores(landing=LocalStore(f"{self.home}/landing"), staging=LocalStore(f"{self.home}/staging"),
                      evidence=LocalStore(f"{self.home}/evidence"))

    def warehouse(self) -> DuckDBWarehouse:
        return DuckDBWarehouse(f"{self.home}/warehouse.duckdb")

    def contracts_dir(self) -> str:
        return f"{self.home}/contracts"

    def runtime(self) -> dict:
        return {"mode": "local", "warehouse": "duckdb", "home": self.home}
