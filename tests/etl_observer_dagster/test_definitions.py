"""Snapshot of the code location: asset keys, lineage, checks, jobs, sensors."""
from __future__ import annotations

from etl_observer_dagster.definitions import build_definitions
from etl_observer_dagster.settings import current_settings


def test_asset_graph_snapshot(home):
    defs = build_definitions(current_settings())
    graph = defs.resolve_asset_graph()
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    assert keys == ["employees/evidence_report", "employees/landing_csv", "employees/staging_parquet",
                    "employees/warehouse_table"]
    parents = {k.to_user_string(): sorted(p.to_user_string() for p in graph.get(k).parent_keys)
               for k in graph.get_all_asset_keys()}
    assert parents == {"employees/landing_csv": [], "employees/staging_parquet": ["employees/landing_csv"],
                       "employees/warehouse_table": ["employees/staging_parquet"],
                       "employees/evidence_report": ["employees/warehouse_table"]}
    checks = sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys)
    assert checks == ["employees/staging_parquet:contract_conformance", "employees/warehouse_table:primary_key_unique",
                      "employees/warehouse_table:row_reconciliation"]
    assert [j.name for j in defs.jobs] == ["employees_batch"]
    assert [s.name for s in defs.sensors] == ["landing_sensor"]
    partitions = graph.get(next(iter(graph.get_all_asset_keys()))).partitions_def
    assert partitions.name == "employees_batches"


def test_a_contract_in_the_home_adds_a_dataset(home):
    (home / "contracts").mkdir(parents=True)
    (home / "contracts" / "visits.yaml").write_text(
        "dataset: visits\ncolumns:\n  - {name: visit_id, type: int64}\n", encoding="utf-8")
    defs = build_definitions(current_settings())
    assert sorted(j.name for j in defs.jobs) == ["employees_batch", "visits_batch"]


def test_dagster_instance_lives_in_the_home_with_the_welcome_modal_off(home):
    build_definitions(current_settings())
    config = (home / "dagster" / "dagster.yaml").read_text()
    assert "nux:\n  enabled: false" in config


def _keys(defs):
    return sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())


def test_aws_mode_has_the_same_asset_keys_and_observes_aws(home, monkeypatch):
    import pytest

    from etl_observer_dagster.resources import AWSPipelineResource

    local = build_definitions(current_settings())
    monkeypatch.setenv("ETL_OBSERVER_ENV", "aws")
    with pytest.raises(ValueError, match="ETL_OBSERVER_LANDING_BUCKET"):
        build_definitions(current_settings())
    for name, value in {"ETL_OBSERVER_LANDING_BUCKET": "landing", "ETL_OBSERVER_STAGING_BUCKET": "staging",
                        "ETL_OBSERVER_STATE_MACHINE_ARN": "arn:aws:states:eu-west-1:123456789012:stateMachine:ingest",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    aws = build_definitions(current_settings())
    assert _keys(aws) == _keys(local)
    assert sorted(s.name for s in aws.sensors) == ["s3_landing_sensor", "step_functions_sensor"]
    resource = aws.resources["pipeline"]
    assert isinstance(resource, AWSPipelineResource)
    assert (resource.evidence_bucket, resource.evidence_prefix, resource.region) == ("staging", "evidence/", "eu-west-1")
