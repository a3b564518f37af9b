"""recsys_core.io.lake on a local folder: manifests, atomic publishing, recovery, retention."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from recsys_core.contracts import Table
from recsys_core.io.lake import MANIFEST, STAGING, TRASH, Lake, partition_name

T = Table("things", pa.schema([("x", pa.int64()), ("label", pa.string())]))
DAY = date(2024, 3, 10)


def data(xs: list[int]) -> pa.Table:
    return pa.table({"x": pa.array(xs, pa.int64()), "label": [f"v{x}" for x in xs]}, schema=T.schema)


def stage(lake: Lake, tbl: pa.Table, name: str = "part-00000.parquet") -> str:
    staged = lake.new_staging_path(T, "test")
    lake.write_parquet(tbl, staged, name)
    return staged


def publish(lake: Lake, value, tbl: pa.Table, name: str = "part-00000.parquet", **manifest) -> str:
    return lake.publish(T, value, stage(lake, tbl, name), {"stage": "unit-test", **manifest})


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_partition_name():
    assert partition_name("dt", DAY) == "dt=2024-03-10"
    assert partition_name("snapshot_dt", "2024-03-10") == "snapshot_dt=2024-03-10"


def test_empty_lake_has_no_partitions(lake):
    assert lake.partitions(T) == []
    assert lake.latest_partition(T) is None


def test_publish_makes_partition_visible_with_manifest(lake, tmp_path):
    target = publish(lake, DAY, data([1, 2, 3]))
    assert target == lake.partition_path(T, DAY)
    assert Path(target) == (tmp_path / "lake" / "things" / "dt=2024-03-10").resolve()
    assert lake.partitions(T) == ["2024-03-10"]

    manifest = lake.read_manifest(target)
    assert manifest["table"] == "things"
    assert manifest["dt"] == "2024-03-10"
    assert manifest["rows"] == 3
    assert manifest["files"] == ["part-00000.parquet"]
    assert manifest["checksum_sha256"] == lake.checksum(target)
    assert len(manifest["checksum_sha256"]) == 64
    assert manifest["stage"] == "unit-test"
    assert "created_at" in manifest

    assert lake.read_partition(T, DAY).equals(data([1, 2, 3]))
    assert lake.read_partition(T, DAY, columns=["x"]).column("x").to_pylist() == [1, 2, 3]
    # The staged folder was moved, not copied.
    assert entries(tmp_path / "lake" / "things" / STAGING) == []


def test_manifest_counts_rows_over_several_files(lake):
    staged = stage(lake, data([1, 2]), "part-00000.parquet")
    lake.write_parquet(data([3, 4, 5]), staged, "part-00001.parquet")
    target = lake.publish(T, DAY, staged, {})
    manifest = lake.read_manifest(target)
    assert manifest["rows"] == 5
    assert manifest["files"] == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(lake.read_partition(T, DAY).column("x").to_pylist()) == [1, 2, 3, 4, 5]


def test_staged_but_unpublished_data_is_invisible(lake):
    stage(lake, data([1]))
    assert lake.partitions(T) == []
    assert lake.partitions(T, complete_only=False) == []  # _staging is not a partition


def test_partition_without_manifest_is_hidden(lake):
    publish(lake, "2024-03-09", data([1]))
    # A half-written partition in place (e.g. written by a foreign tool): no manifest.
    lake.write_parquet(data([2]), lake.partition_path(T, DAY))
    assert lake.partitions(T) == ["2024-03-09"]
    assert lake.partitions(T, complete_only=False) == ["2024-03-09", "2024-03-10"]
    assert lake.latest_partition(T) == "2024-03-09"
    with pytest.raises(FileNotFoundError):
        lake.read_partition(T, DAY)


def test_republish_replaces_and_old_data_is_gone(lake, tmp_path):
    publish(lake, DAY, data([1, 2, 3]), name="old.parquet")
    first = lake.read_manifest(lake.partition_path(T, DAY))
    target = publish(lake, DAY, data([10, 20]), name="new.parquet")
    assert lake.read_partition(T, DAY).column("x").to_pylist() == [10, 20]
    manifest = lake.read_manifest(target)
    assert manifest["rows"] == 2
    assert manifest["files"] == ["new.parquet"]
    assert manifest["checksum_sha256"] != first["checksum_sha256"]
    assert entries(Path(target)) == [MANIFEST, "new.parquet"]
    # The previous version was moved aside and then deleted.
    assert entries(tmp_path / "lake" / "things" / TRASH) == []
    assert lake.partitions(T) == ["2024-03-10"]


def _simulate_kill_between_renames(lake: Lake, tmp_path: Path, suffix: str = "deadbeef0000") -> Path:
    """Publish v1, then do publish's first rename by hand (target → _trash) and stop there."""
    target = Path(publish(lake, DAY, data([1, 2, 3])))
    trash = tmp_path / "lake" / "things" / TRASH / f"dt=2024-03-10.{suffix}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.rename(target, trash)
    assert (trash / MANIFEST).exists()
    return trash


def test_recover_restores_partition_left_in_trash(lake, tmp_path):
    trash = _simulate_kill_between_renames(lake, tmp_path)
    assert lake.partitions(T) == []
    lake.recover(T, DAY)
    assert lake.partitions(T) == ["2024-03-10"]
    assert not trash.exists()
    assert lake.read_partition(T, DAY).column("x").to_pylist() == [1, 2, 3]


def test_publish_after_interrupted_publish_recovers_then_replaces(lake, tmp_path):
    _simulate_kill_between_renames(lake, tmp_path)
    publish(lake, DAY, data([7]))
    assert lake.read_partition(T, DAY).column("x").to_pylist() == [7]
    assert [n for n in entries(tmp_path / "lake" / "things" / TRASH) if n.startswith("dt=")] == []


def test_recover_picks_newest_manifest_and_ignores_incomplete(lake, tmp_path):
    trash_dir = tmp_path / "lake" / "things" / TRASH
    for suffix, xs, created in (("aaaa", [1], "2024-03-10T01:00:00+00:00"), ("bbbb", [2], "2024-03-10T02:00:00+00:00")):
        folder = trash_dir / f"dt=2024-03-10.{suffix}"
        lake.write_parquet(data(xs), str(folder))
        (folder / MANIFEST).write_text(json.dumps({"created_at": created}))
    incomplete = trash_dir / "dt=2024-03-10.cccc"
    lake.write_parquet(data([3]), str(incomplete))  # no manifest: never a candidate
    lake.recover(T, DAY)
    assert lake.read_partition(T, DAY).column("x").to_pylist() == [2]
    assert incomplete.exists()


def test_recover_never_overwrites_an_existing_partition(lake, tmp_path):
    publish(lake, DAY, data([5]))
    stray = tmp_path / "lake" / "things" / TRASH / "dt=2024-03-10.ffff"
    lake.write_parquet(data([1]), str(stray))
    (stray / MANIFEST).write_text(json.dumps({"created_at": "2999-01-01T00:00:00+00:00"}))
    lake.recover(T, DAY)
    assert lake.read_partition(T, DAY).column("x").to_pylist() == [5]
    assert stray.exists()


def test_recover_ignores_other_dates(lake, tmp_path):
    other = tmp_path / "lake" / "things" / TRASH / "dt=2024-03-11.abcd"
    lake.write_parquet(data([1]), str(other))
    (other / MANIFEST).write_text(json.dumps({"created_at": "2024-03-11T00:00:00+00:00"}))
    lake.recover(T, DAY)
    assert lake.partitions(T) == []
    assert other.exists()


def test_drop_partitions_older_than_keeps_newest(lake):
    days = [f"2024-03-0{d}" for d in range(1, 6)]
    for i, d in enumerate(reversed(days)):  # publish order must not matter
        publish(lake, d, data([i]))
    dropped = lake.drop_partitions_older_than(T, keep=2)
    assert dropped == days[:3]
    assert lake.partitions(T) == days[3:]
    assert lake.drop_partitions_older_than(T, keep=2) == []
    assert lake.drop_partitions_older_than(T, keep=5) == []
    assert lake.partitions(T) == days[3:]


def test_checksum_tracks_data(lake):
    a = stage(lake, data([1, 2, 3]))
    b = stage(lake, data([1, 2, 3]))
    c = stage(lake, data([1, 2, 4]))
    assert lake.checksum(a) == lake.checksum(b)  # same bytes, same names: same digest
    assert lake.checksum(a) != lake.checksum(c)
    d = stage(lake, data([1, 2, 3]), name="other-name.parquet")
    assert lake.checksum(a) != lake.checksum(d)  # file names are part of the digest
    before = lake.checksum(a)
    lake.write_parquet(data([9]), a, "part-00001.parquet")
    assert lake.checksum(a) != before


def test_checksum_ignores_markers_and_hidden_files(lake):
    a = stage(lake, data([1, 2, 3]))
    before = lake.checksum(a)
    Path(a, "_SUCCESS").write_text("")
    Path(a, ".part-00000.parquet.crc").write_bytes(b"crc")
    assert lake.checksum(a) == before
    lake.drop_spark_markers(a)
    assert entries(Path(a)) == ["part-00000.parquet"]


def test_read_missing_partition_raises_with_hint(lake):
    publish(lake, DAY, data([1]))
    with pytest.raises(FileNotFoundError, match=r"things has no complete partition dt=2024-03-11") as info:
        lake.read_partition(T, date(2024, 3, 11))
    assert info.value.hint == "run the stage that builds it first"


def test_latest_partition_on_or_before(lake):
    for d in ("2024-03-01", "2024-03-05", "2024-03-09"):
        publish(lake, d, data([1]))
    assert lake.latest_partition(T) == "2024-03-09"
    assert lake.latest_partition(T, on_or_before=date(2024, 3, 6)) == "2024-03-05"
    assert lake.latest_partition(T, on_or_before=date(2024, 3, 5)) == "2024-03-05"
    assert lake.latest_partition(T, on_or_before=date(2024, 2, 28)) is None


def test_empty_partition_reads_as_empty_contract_table(lake):
    staged = lake.new_staging_path(T, "empty")
    target = lake.publish(T, DAY, staged, {})
    assert lake.read_manifest(target)["rows"] == 0
    out = lake.read_partition(T, DAY)
    assert out.num_rows == 0 and out.schema.equals(T.schema)
