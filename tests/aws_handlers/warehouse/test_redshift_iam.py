"""The checks' Redshift connection: IAM authentication only. The driver is the edge where no
emulator exists, so `connect` is replaced by one that runs the SQL on DuckDB."""
from __future__ import annotations

import duckdb
import pytest

from aws_handlers.warehouse.redshift_iam import RedshiftConnectorWarehouse


class DuckDBConnection:
    def __init__(self, con):
        self.con, self.closed = con, False

    def cursor(self):
        return self

    def execute(self, sql):
        self.rows = self.con.execute(sql).fetchall()

    def fetchall(self):
        return self.rows

    def close(self):
        self.closed = True


def test_connects_with_iam_to_the_workgroup_and_never_a_password():
    con = duckdb.connect()
    calls = []

    def connect(**kwargs):
        calls.append(kwargs)
        return DuckDBConnection(con)

    warehouse = RedshiftConnectorWarehouse("etl-wg", "dev", "eu-west-1", connect=connect)
    assert warehouse.query("SELECT 41 + 1") == [(42,)]
    assert calls == [{"iam": True, "is_serverless": True, "serverless_work_group": "etl-wg", "database": "dev",
                      "region": "eu-west-1"}]
    assert not any("password" in k or "user" in k for k in calls[0])


def test_a_workgroup_is_required():
    with pytest.raises(ValueError, match="ETL_OBSERVER_REDSHIFT_WORKGROUP"):
        RedshiftConnectorWarehouse("", "dev")
