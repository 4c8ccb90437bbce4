"""The landing sensor: run requests AND the new cursor, evaluated again from that cursor."""
from __future__ import annotations

import json
import time

from dagster import DagsterInstance, build_sensor_context

from aws_handlers.storage import ObjectInfo
from etl_observer_dagster.sensors.landing import LandingCursor, batch_id_for, plan_batches
from tests.conftest import REPO

S = 1_000_000_000


def obj(key, t, size=10, etag="e"):
    return ObjectInfo(key=key, size=size, modified_ns=t, etag=etag)


def test_objects_sharing_the_watermark_second_are_not_missed_nor_repeated():
    now = 100 * S
    first = [obj("employees/a.csv", 50 * S), obj("employees/b.csv", 50 * S)]
    batches, cursor, _ = plan_batches(first, LandingCursor(), {"employees"}, now)
    assert [o.key for o in batches["employees"]] == ["employees/a.csv", "employees/b.csv"]
    assert cursor == LandingCursor(50 * S, (("employees/a.csv", "e", 50 * S), ("employees/b.csv", "e", 50 * S)))
    # c.csv appears later with the same timestamp (and sorts between them): picked, a and b are not
    later = first + [obj("employees/aa.csv", 50 * S)]
    batches, cursor2, _ = plan_batches(later, LandingCursor.parse(cursor.serialize()), {"employees"}, now)
    assert [o.key for o in batches["employees"]] == ["employees/aa.csv"]
    assert cursor2 == LandingCursor(50 * S, (("employees/a.csv", "e", 50 * S), ("employees/aa.csv", "e", 50 * S),
                                             ("employees/b.csv", "e", 50 * S)))
    assert plan_batches(later, cursor2, {"employees"}, now)[0] == {}


def test_unsettled_files_wait_and_everything_after_them_waits_too():
    now = 100 * S
    objects = [obj("employees/old.csv", 90 * S), obj("employees/fresh.csv", 99 * S), obj("employees/z.csv", 99 * S + 1)]
    batches, cursor, _ = plan_batches(objects, LandingCursor(), {"employees"}, now, settle_seconds=2)
    assert [o.key for o in batches["employees"]] == ["employees/old.csv"]
    assert cursor == LandingCursor(90 * S, (("employees/old.csv", "e", 90 * S),))
    batches, cursor, _ = plan_batches(objects, cursor, {"employees"}, now + 5 * S, settle_seconds=2)
    assert [o.key for o in batches["employees"]] == ["employees/fresh.csv", "employees/z.csv"]
    assert cursor == LandingCursor(99 * S + 1, (("employees/z.csv", "e", 99 * S + 1),))


def test_rewritten_file_comes_back_unknown_datasets_and_non_csv_are_skipped():
    now = 100 * S
    cursor = LandingCursor(50 * S, (("employees/a.csv", "old", 50 * S),))
    objects = [obj("employees/a.csv", 60 * S, etag="new"), obj("nocontract/x.csv", 61 * S), obj("employees/readme.txt", 62 * S),
               obj("employees/empty.csv", 63 * S, size=0), obj("toplevel.csv", 64 * S)]
    batches, new_cursor, ignored = plan_batches(objects, cursor, {"employees"}, now)
    assert [o.key for o in batches["employees"]] == ["employees/a.csv"]
    assert ignored == ["nocontract/x.csv", "toplevel.csv"]
    assert new_cursor == LandingCursor(64 * S, (("toplevel.csv", "e", 64 * S),))


def test_batches_are_capped_and_the_rest_follows_on_the_next_tick():
    now = 100 * S
    objects = [obj(f"employees/{i:04d}.csv", S + i) for i in range(2500)]
    seen, cursor, ticks = [], LandingCursor(), 0
    while True:
        batches, cursor, _ = plan_batches(objects, cursor, {"employees"}, now, max_files=1000)
        if not batches:
            break
        ticks += 1
        seen += [o.key for o in batches["employees"]]
    assert ticks == 3 and seen == [o.key for o in objects]


def test_batch_id_is_deterministic_and_partition_safe():
    objects = [obj("employees/a.csv", 1_700_000_000 * S, etag="x")]
    assert batch_id_for("employees", objects) == batch_id_for("employees", list(objects))
    assert batch_id_for("employees", objects).startswith("landing-20231114T221320-")
    assert all(c.isalnum() or c in "-_" for c in batch_id_for("employees", objects))


def test_sensor_on_a_real_folder_requests_one_run_per_dataset_and_advances(home, monkeypatch):
    import etl_observer_dagster.sensors.landing as landing_module
    from etl_observer_dagster.definitions import build_definitions

    monkeypatch.setattr(landing_module, "SETTLE_SECONDS", 0.0)
    from etl_observer_dagster.settings import current_settings

    defs = build_definitions(current_settings())
    sensor = defs.resolve_sensor_def("landing_sensor")
    landing = home / "landing" / "employees"
    landing.mkdir(parents=True, exist_ok=True)
    target = landing / "employees.csv"
    target.write_bytes((REPO / "samples" / "employees.csv").read_bytes())
    time.sleep(0.01)
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(instance=instance, cursor=None, resources={"pipeline": defs.resources["pipeline"]})
        result = sensor(context)
        (request,) = result.run_requests
        batch_id = request.partition_key
        assert request.job_name == "employees_batch"
        assert request.run_key == f"employees:{batch_id}"
        assert request.run_config == {"ops": {"employees__run_batch": {"config": {"files": ["employees/employees.csv"]}}}}
        (partitions,) = result.dynamic_partitions_requests
        assert (partitions.partitions_def_name, list(partitions.partition_keys)) == ("employees_batches", [batch_id])
        cursor = json.loads(result.cursor)
        assert [entry[0] for entry in cursor["seen"]] == ["employees/employees.csv"]
        assert cursor["watermark_ns"] == target.stat().st_ctime_ns
        again = sensor(build_sensor_context(instance=instance, cursor=result.cursor,
                                            resources={"pipeline": defs.resources["pipeline"]}))
        assert again.run_requests == [] and again.cursor == result.cursor
