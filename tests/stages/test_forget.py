"""`recsys forget` on a copy of the real pipeline's data root (synthetic logs → ingest → features →
torchrun → registry → nightly): killed with SIGKILL after its first table, then rerun to the end.

- after it, no file under the lake (Parquet, JSON Lines gzipped or not, JSON) holds a row of the users;
- the report's and the tombstone's counts add up to the rows the users had, per table;
- every table stays readable and keeps its contract; manifests match their files;
- a third run changes no file; the tombstone log holds one line, with hashes, never the ids;
- the other users' recommendations are unchanged, and rescoring the night gives them the same lists;
- the registered model trained on their data is tagged contains_forgotten_users;
- a late event of a forgotten user is quarantined as ``forgotten``, its text redacted.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from recsys_core.contracts import ALL_TABLES, INTERACTIONS, QUARANTINE, RECOMMENDATIONS, USER_PROFILES, conform
from recsys_core.features.forget import REDACTED, line_belongs, line_pattern, user_hash
from recsys_core.io.forget_log import ForgetLog, salt
from recsys_core.io.lake import Lake
from recsys_core.io.recommendations import RecommendationReader
from recsys_core.serving.output import content_digest

pytestmark = [pytest.mark.spark, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.slow]

RUN_TIMEOUT = 300


def cli() -> list[str]:
    script = Path(sys.executable).with_name("recsys")
    return [str(script)] if script.exists() else [sys.executable, "-m", "recsys_core.cli"]


def user_rows_in_file(path: Path, users: set[str]) -> int:
    """Rows of ``users`` in one file of the lake, whatever its kind."""
    pattern = line_pattern(users)
    if path.suffix == ".parquet":
        table = pq.read_table(path, partitioning=None)
        found = 0
        if "user_id" in table.column_names:
            ids = pc.utf8_trim_whitespace(table["user_id"].cast(pa.string()))
            found += pc.sum(pc.is_in(ids, pa.array(sorted(users)))).as_py() or 0
        if "raw" in table.column_names:
            found += sum(1 for raw in table["raw"].to_pylist() if raw and line_belongs(raw, users, pattern))
        return found
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if path.suffix in (".pt",):
        return 0
    return sum(1 for line in data.split(b"\n") if line and line_belongs(line.rstrip(b"\r"), users, pattern))


def lake_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def check_tables(lake: Lake) -> None:
    """Every Parquet file of a contract table reads and conforms; complete partitions match their manifest."""
    for contract in (*ALL_TABLES.values(),):
        base = Path(lake.table_path(contract))
        for path in sorted(base.rglob("*.parquet")) if base.exists() else []:
            table = pq.read_table(path, partitioning=None)
            for part in path.relative_to(base).parts[:-1]:  # hive folders (interactions: dt and ingest_dt)
                key, _, value = part.partition("=")
                if key in contract.columns and key != contract.partition and key not in table.column_names:
                    table = table.append_column(key, pa.array([value] * table.num_rows).cast(contract.schema.field(key).type))
            conform(table, contract, where=str(path))
        if contract.partition is None or contract.name.startswith("raw/") or contract is INTERACTIONS:
            continue
        for value in lake.partitions(contract):
            folder = lake.partition_path(contract, value)
            manifest = lake.read_manifest(folder)
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in lake.data_files(folder))
            assert rows == manifest["rows"] and lake.checksum(folder) == manifest["checksum_sha256"], folder


def test_forget_users_everywhere_survives_kill_9_and_is_idempotent(pipeline, tmp_path, spark):
    from recsys_core.stages.ingest import run_ingest
    from recsys_core.stages.recommend import run_recommend

    root = tmp_path / "data"
    shutil.copytree(pipeline.settings.data_root, root)
    settings = pipeline.settings.model_copy(update={"data_root": root})
    config = tmp_path / "recsys.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"forget"})))
    lake = Lake(settings.lake)
    lake_root = Path(settings.lake)
    d = pipeline.run_date

    # The two users with the most interactions, and what they hold before.
    inter = ds.dataset(lake.table_path(INTERACTIONS), format="parquet", partitioning="hive").to_table(columns=["user_id"])
    counts = sorted(pc.value_counts(inter["user_id"]).to_pylist(), key=lambda c: (-c["counts"], c["values"]))
    users = {counts[0]["values"], counts[1]["values"]}
    before = {str(p): user_rows_in_file(p, users) for p in lake_files(lake_root)}
    held = {p: n for p, n in before.items() if n}
    assert any("/raw/events/" in p for p in held) and any("/interactions/" in p for p in held)
    assert any("/recommendations/" in p for p in held) and any("/user_profiles/" in p for p in held)
    reader = RecommendationReader(settings)
    gone = pa.array(sorted(users))
    others_before = {dt: reader.table(dt).filter(pc.invert(pc.is_in(reader.table(dt)["user_id"], gone))) for dt in reader.dates()}
    workspace_files = sorted((root / "work" / "train").glob("*/prepared-*.pt"))
    assert workspace_files

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"RECSYS_CONFIG": str(config), "RECSYS_DATA_ROOT": str(root), "COLUMNS": "250"})
    command = [*cli(), "forget", *[a for u in sorted(users) for a in ("--user", u)], "--request-id", "t1"]
    journal = lake_root / "_forget" / "requests" / "t1.json"

    # Killed the moment the journal shows the first table done.
    with open(tmp_path / "run-1.log", "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        started, killed = time.monotonic(), None
        while proc.poll() is None and time.monotonic() - started < RUN_TIMEOUT:
            try:
                state = json.loads(journal.read_text())
            except (FileNotFoundError, ValueError):
                state = None
            if state and state["steps_done"]:
                os.kill(proc.pid, signal.SIGKILL)
                killed = state
                break
        proc.wait()
    assert killed is not None and killed["status"] == "running", (tmp_path / "run-1.log").read_text()[-2000:]
    check_tables(lake)

    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_tables(lake)
    reader.latest_date()  # the pointer still names a complete night

    # No file under the lake holds a row of theirs; the ids appear nowhere in the forget log.
    after = {str(p): user_rows_in_file(p, users) for p in lake_files(lake_root)}
    assert not {p: n for p, n in after.items() if n}
    for path in (lake_root / "_forget").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not any(f'"{u}"' in text for u in users), path
    assert not [p for p in workspace_files if p.exists()]
    assert not list((root / "work" / "train").glob("*/dataset-*.pt"))

    # The counts add up: per table, the rows removed are the rows the users held, and the tombstone agrees.
    [record] = ForgetLog(lake).tombstones()
    secret = salt(settings, create=False)
    assert secret and record["user_hashes"] == sorted(user_hash(secret, u) for u in users)
    expected: dict[str, int] = {}
    for path, n in held.items():
        if path.endswith(".json") or "/work/" in path:
            continue  # ingest reports' examples: checked above, not rows of a table
        table = next(t.name for t in ALL_TABLES.values() if f"/{t.name}/" in path)
        expected[table] = expected.get(table, 0) + n
    removed = {t: n for t, n in record["rows_removed"].items() if n and t != "training_workspace"}
    assert removed == expected, (removed, expected)
    assert record["rows_removed"]["training_workspace"] > 0
    assert record["rows_removed"][RECOMMENDATIONS.name] == settings.serve.top_k * len(users) * len(reader.dates())
    assert "rows before" in result.stdout

    # The night keeps the contract with the users fewer; the other users' rows are untouched.
    for dt, other in others_before.items():
        night = reader.table(dt)
        manifest = reader.manifest(dt)
        assert night.equals(other) and manifest["users"] == pc.count_distinct(other["user_id"]).as_py()
        assert manifest["content_digest"] == content_digest(night) and manifest["rows"] == night.num_rows

    # The registered model trained on their data says so.
    import mlflow

    from recsys_core.io.registry import configure_tracking

    configure_tracking(settings)
    version = mlflow.MlflowClient().get_model_version(settings.train.model_name, pipeline.training["model_version"])
    assert version.tags.get("contains_forgotten_users") == "true" and "t1" in version.tags["forgotten_requests"]

    # A rerun changes no file (the journal is rewritten with the same content).
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in lake_files(lake_root)}
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert again.returncode == 0 and "already done" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    changed = [p for p in lake_files(lake_root) if p not in stamps or stamps[p][1] != p.read_bytes()]
    assert changed == [], changed
    assert len(ForgetLog(lake).tombstones()) == 1

    # Rescoring the night: the other users get the same lists (same profiles, same item features).
    rescored = run_recommend(settings, d)
    assert rescored["users"] == others_before[d.isoformat()].num_rows // settings.serve.top_k
    night = reader.table(d.isoformat())
    assert night["item_id"].equals(others_before[d.isoformat()]["item_id"])
    assert night["user_id"].equals(others_before[d.isoformat()]["user_id"])

    # A late event of a forgotten user arrives: quarantined as forgotten, its text redacted.
    late_day = d + timedelta(days=30)
    folder = Path(lake.partition_path(ALL_TABLES["raw/events"], late_day))
    folder.mkdir(parents=True)
    forgotten = sorted(users)[0]
    ts = f"{late_day.isoformat()}T10:00:00Z"
    event = settings.ingest.event_types[0]
    line = {"user_id": "someone-else", "item_id": "i1", "event_type": event, "ts": ts}
    lines = [json.dumps({"event_id": f"late-{n}", **line}) for n in range(20)]
    lines[0] = json.dumps({"event_id": "late-x", "user_id": forgotten, "item_id": "i1", "event_type": event, "ts": ts})
    lines[2] = lines[2].replace('"someone-else"', json.dumps(f" {forgotten} "))
    with gzip.open(folder / "events-000.jsonl.gz", "wb") as handle:
        handle.write(("\n".join(lines) + "\n").encode())
    [report] = run_ingest(settings, [late_day], spark=spark)
    assert report.reasons == {"forgotten": 2} and report.rows_accepted == 18
    quarantined = lake.read_partition(QUARANTINE, late_day)
    assert sorted(quarantined["line_no"].to_pylist()) == [1, 3]
    assert set(quarantined["reason"].to_pylist()) == {"forgotten"} and set(quarantined["raw"].to_pylist()) == {REDACTED}
    hive = ds.partitioning(pa.schema([("dt", pa.date32()), ("ingest_dt", pa.date32())]), flavor="hive")
    accepted = ds.dataset(lake.table_path(INTERACTIONS), format="parquet", partitioning=hive).to_table(
        filter=ds.field("ingest_dt") == pa.scalar(late_day, pa.date32())
    )
    assert set(accepted["user_id"].to_pylist()) == {"someone-else"}
    assert USER_PROFILES.name in record["rows_removed"]
