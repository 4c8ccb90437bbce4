"""Redshift Serverless over redshift-connector with IAM authentication: no passwords in code or
config. The connector asks Redshift Serverless for temporary credentials (GetCredentials) with the
caller's AWS identity; the database user it maps to gets only the grants in
infra_scripts/redshift_grants.sql (the read-only role, for checks)."""
from __future__ import annotations

from typing import Any


class RedshiftConnectorWarehouse:
    engine = "redshift"

    def __init__(self, workgroup: str, database: str, region: str | None = None, *, connect=None):
        if not workgroup:
            raise ValueError("a Redshift Serverless workgroup is required (ETL_OBSERVER_REDSHIFT_WORKGROUP)")
        self.workgroup, self.database, self.region = workgroup, database, region
        self._connect = connect  # test seam: the driver edge, where no emulator exists

    def connection_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"iam": True, "is_serverless": True, "serverless_work_group": self.workgroup,
                                "database": self.database}
        if self.region:
            args["region"] = self.region
        return args

    def query(self, sql: str) -> list[tuple]:
        if self._connect is None:
            import redshift_connector

            self._connect = redshift_connector.connect
        connection = self._connect(**self.connection_arguments())
        try:
            cursor = connection.cursor()
            cursor.execute(sql)
            return [tuple(row) for row in (cursor.fetchall() or [])]
        finally:
            connection.close()
