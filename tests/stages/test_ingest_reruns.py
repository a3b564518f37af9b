"""Reruns, late arrivals and failed runs of the real ingest (Spark local), on one small lake.

The tests run in order on the same lake: ingest two days, rerun the second,
fail a rerun of it (reject rate, then a data check), and each time compare the
whole lake with what it held before.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from recsys_core.config import settings_for
from recsys_core.contracts import INTERACTIONS, QUARANTINE
from recsys_core.features.checks import DataCheckFailed
from recsys_core.features.ingest import RejectRateExceeded
from recsys_core.io.lake import Lake
from recsys_core.io.tables import completed_ingests, ingest_manifest_path, read_interactions
from recsys_core.stages.ingest import REPORT, run_ingest

pytestmark = pytest.mark.spark

D1 = date(2024, 5, 1)
D2 = date(2024, 5, 2)
SPARK = {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"}


def make_settings(root: Path, **ingest):
    return settings_for(data_root=root, spark=SPARK, ingest={"max_reject_rate": 0.5, **ingest})


def ev(eid: str, ts: str, user: str = "u1", item: str = "i1", **extra) -> bytes:
    obj = {"event_id": eid, "user_id": user, "item_id": item, "event_type": "view", "ts": ts, "value": 1.0, **extra}
    return json.dumps(obj).encode()


def write(folder: Path, name: str, lines: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"".join(line + b"\n" for line in lines))


def landing(settings, day: date) -> Path:
    return Path(settings.lake) / "raw" / "events" / f"dt={day}"


def lake_state(lake: Lake) -> dict:
    """Everything a reader can see: interactions, quarantine, reports and ingest manifests (minus times)."""
    root = Path(lake.root)
    interactions = ds.dataset(
        lake.table_path(INTERACTIONS),
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("dt", pa.date32()), ("ingest_dt", pa.date32())]), flavor="hive"),
    ).to_table()
    quarantine = ds.dataset(lake.table_path(QUARANTINE), format="parquet", partitioning="hive").to_table()

    def without_times(manifest: dict) -> dict:
        return {k: v for k, v in manifest.items() if k not in ("created_at", "checksum_sha256", "files")}

    return {
        "interactions": interactions.sort_by([("event_id", "ascending"), ("ingest_dt", "ascending")]).to_pylist(),
        "quarantine": quarantine.sort_by([("source_file", "ascending"), ("line_no", "ascending")]).to_pylist(),
        "leaves": sorted(str(p.relative_to(root)) for p in (root / "interactions").glob("dt=*/ingest_dt=*")),
        "reports": {p.parent.name: json.loads(p.read_text()) for p in sorted((root / "quarantine").glob(f"dt=*/{REPORT}"))},
        "ingests": {
            d.isoformat(): without_times(json.loads(Path(ingest_manifest_path(lake, d)).read_text()))
            for d in completed_ingests(lake)
        },
        "quarantine_manifests": {
            v: without_times(lake.read_manifest(lake.partition_path(QUARANTINE, v))) for v in lake.partitions(QUARANTINE)
        },
    }


@pytest.fixture(scope="module")
def lake_after_two_days(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("reruns")
    settings = make_settings(root)
    write(
        landing(settings, D1),
        "events.jsonl",
        [
            ev("e1", f"{D1}T08:00:00Z"),
            ev("e2", f"{D1}T09:00:00Z", user="u2"),
            ev("e3", f"{D1}T23:30:00Z", item="i2"),
            b"{broken",
        ],
    )
    # Day 2 brings its own events and late ones of day 1 (and one of the day before, within the window).
    write(
        landing(settings, D2),
        "events.jsonl",
        [
            ev("e4", f"{D2}T10:00:00Z"),
            ev("late1", f"{D1}T22:00:00Z", user="u3"),
            ev("late2", f"{D1 - timedelta(days=1)}T12:00:00Z", user="u3", item="i3"),
            ev("too-late", f"{D2 - timedelta(days=4)}T12:00:00Z"),
            ev("e1", f"{D1}T08:00:00Z"),
        ],
    )
    write(landing(settings, D2), "more.jsonl", [ev("e5", f"{D2}T11:00:00Z", user="u2")])
    reports = run_ingest(settings, [D1], spark=spark) + run_ingest(settings, [D2], spark=spark)
    return settings, Lake(settings.lake), reports


def test_late_events_land_under_their_event_date(lake_after_two_days):
    settings, lake, reports = lake_after_two_days
    state = lake_state(lake)
    where = {r["event_id"]: (r["dt"], r["ingest_dt"]) for r in state["interactions"]}
    assert where["late1"] == (D1, D2)
    assert where["late2"] == (D1 - timedelta(days=1), D2)
    assert where["e1"] == (D1, D1), "the repeat in day 2 is a duplicate, not a second row"
    assert f"interactions/dt={D1}/ingest_dt={D2}" in state["leaves"]
    assert reports[1].reasons == {"late_event": 1, "duplicate_event_id": 1}
    assert reports[1].event_dates == {str(D1 - timedelta(days=1)): 1, str(D1): 1, str(D2): 2}
    # Read as of day 1, the late events are there once day 2 is ingested.
    as_of_d1 = read_interactions(lake, D1, settings.ingest.lateness_days)
    assert sorted(as_of_d1["event_id"].to_pylist()) == ["e1", "e2", "e3", "late1", "late2"]


def test_rerun_of_a_day_gives_identical_output(lake_after_two_days, spark):
    settings, lake, reports = lake_after_two_days
    before = lake_state(lake)
    again = run_ingest(settings, [D2], spark=spark)
    assert again[0].to_dict() == reports[1].to_dict()
    assert lake_state(lake) == before
    # Nothing is left behind in staging.
    assert not list(Path(lake.root).glob("*/_staging/*"))


def test_failed_run_keeps_the_previous_good_output(lake_after_two_days, spark):
    settings, lake, _ = lake_after_two_days
    before = lake_state(lake)
    # Day 2 is re-delivered broken: most rows are bad.
    write(landing(settings, D2), "more.jsonl", [b"not json"] * 8 + [ev("e6", f"{D2}T12:00:00Z")])
    strict = make_settings(Path(settings.data_root), max_reject_rate=0.05)
    with pytest.raises(RejectRateExceeded) as info:
        run_ingest(strict, [D2], spark=spark)
    message = str(info.value)
    assert f"ingest {D2}: 10 of 14 rows (71.4%) quarantined, above the limit of 5.0%" in message
    assert "malformed_json: 8 rows, e.g. " in message and "more.jsonl:1 'not json'" in message
    assert lake_state(lake) == before
    assert not list(Path(lake.root).glob("*/_staging/*"))


def test_failed_data_check_keeps_the_previous_good_output(lake_after_two_days, spark, monkeypatch):
    import recsys_core.stages.ingest as stage

    settings, lake, _ = lake_after_two_days
    before = lake_state(lake)
    write(landing(settings, D2), "more.jsonl", [ev("e5", f"{D2}T11:00:00Z", user="u2"), ev("e7", f"{D2}T13:00:00Z")])

    def failing(df, contract, **kw):
        raise DataCheckFailed(f"data check failed for table {contract.name}")

    monkeypatch.setattr(stage, "spark_check", failing)
    with pytest.raises(DataCheckFailed, match="interactions"):
        run_ingest(settings, [D2], spark=spark)
    assert lake_state(lake) == before
    assert not list(Path(lake.root).glob("*/_staging/*"))
