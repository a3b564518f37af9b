"""`kill -9` of the real `recsys recommend --date D` at several moments never damages the lake.

On a copy of the pipeline's data root, with an earlier night E already published:

- phase 1, first publish of D: killed when its staging folder appears, when the
  staged Parquet file is there, when the staged manifest is there;
- one complete run (timed);
- phase 2, republish of D with different rows (K=5): killed when staging
  appears, when the old version is moved aside (``_trash``), and after seeded
  random delays within the run's duration.

After every kill: E is byte-identical, RecommendationReader lists only complete
nights and each reads back with its manifest's row count, checksum and content
digest, and no incomplete partition folder exists. Then a rerun succeeds, and
a second rerun leaves the night exactly as it was (generated_at included).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import MANIFEST, STAGING, TRASH, Lake
from recsys_core.io.recommendations import RecommendationReader
from recsys_core.serving.output import content_digest

pytestmark = [pytest.mark.spark, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.slow]

RUN_TIMEOUT = 300


def cli() -> list[str]:
    script = Path(sys.executable).with_name("recsys")
    return [str(script)] if script.exists() else [sys.executable, "-m", "recsys_core.cli"]


def entries(lake: Lake, folder: str, recursive: bool = False) -> list[pafs.FileInfo]:
    base = lake.path(RECOMMENDATIONS.name, folder)
    if not lake.exists(base):
        return []
    return lake.fs.get_file_info(pafs.FileSelector(base, recursive=recursive))


def appeared(folder: Path, leaf: str | None = None):
    """A probe factory: a cheap (os.scandir) check that a *new* entry of ``folder`` exists (with ``leaf``
    inside it, if given). Entries there when the factory is called (leftovers of killed runs) do not count."""

    def scan() -> set[str]:
        try:
            with os.scandir(folder) as it:
                return {e.path for e in it if leaf is None or os.path.exists(os.path.join(e.path, leaf))}
        except FileNotFoundError:
            return set()

    def factory():
        old = scan()
        return lambda _elapsed=0.0: bool(scan() - old)

    return factory


def elapsed_at(seconds: float):
    return lambda: lambda elapsed: elapsed >= seconds


class Runner:
    """Runs the real CLI, busy-polling a condition and SIGKILLing the process the moment it holds."""

    def __init__(self, root: Path, config: Path, log_dir: Path, date, staging: Path):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        self.env.update({"RECSYS_CONFIG": str(config), "RECSYS_DATA_ROOT": str(root)})
        self.log_dir = log_dir
        self.date = date
        self.staging = appeared(staging)
        self.runs = 0

    def log(self) -> str:
        return (self.log_dir / f"run-{self.runs}.log").read_text(errors="replace")[-3000:]

    def run(self, kill_when=None, extra_env: dict | None = None) -> dict:
        self.runs += 1
        log = open(self.log_dir / f"run-{self.runs}.log", "wb")  # noqa: SIM115 - the child writes to it
        started, wall = time.monotonic(), time.time()
        proc = subprocess.Popen(
            [*cli(), "recommend", "--date", self.date.isoformat()],
            env={**self.env, **(extra_env or {})},
            cwd=self.log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        killed, staged_at = False, None
        staging = self.staging()
        kill_when = kill_when() if kill_when is not None else None
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - started
                if staged_at is None and staging():
                    staged_at = elapsed
                if kill_when is not None and kill_when(elapsed):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                if elapsed > RUN_TIMEOUT:
                    proc.kill()
                    raise AssertionError(f"recsys recommend ran over {RUN_TIMEOUT}s; see {log.name}")
                time.sleep(0)  # busy polling: the publish window is a few milliseconds
            returncode = proc.wait()
        finally:
            log.close()
        return {"killed": killed, "seconds": time.monotonic() - started, "staged_at": staged_at, "rc": returncode, "wall": wall}


def test_kill_9_never_leaves_a_partial_or_damaged_night(pipeline, tmp_path):
    from recsys_core.stages.recommend import run_recommend

    root = tmp_path / "data"
    shutil.copytree(pipeline.settings.data_root, root)
    settings = pipeline.settings.model_copy(update={"data_root": root})
    dump = settings.model_dump(mode="json")
    config = tmp_path / "recsys.yaml"
    config.write_text(yaml.safe_dump(dump))
    lake = Lake(settings.lake)
    d = pipeline.run_date
    e = d - timedelta(days=1)

    # An earlier night E, published for real; D not published yet.
    for contract in (USER_PROFILES, ITEM_FEATURES):
        shutil.copytree(lake.partition_path(contract, d), lake.partition_path(contract, e))
    shutil.rmtree(lake.partition_path(RECOMMENDATIONS, d))
    run_recommend(settings, e)
    e_path = lake.partition_path(RECOMMENDATIONS, e)
    e_manifest, e_checksum = lake.read_manifest(e_path), lake.checksum(e_path)
    reader = RecommendationReader(settings)
    known_digests: set[str] = set()

    def check(moment: str) -> None:
        assert lake.read_manifest(e_path) == e_manifest and lake.checksum(e_path) == e_checksum, moment
        complete = reader.dates()
        assert e.isoformat() in complete and set(complete) <= {e.isoformat(), d.isoformat()}, moment
        assert lake.partitions(RECOMMENDATIONS, complete_only=False) == complete, f"{moment}: an incomplete partition folder"
        for dt in complete:
            manifest = reader.manifest(dt)
            table = reader.table(dt)
            assert table.num_rows == manifest["rows"], moment
            assert lake.checksum(lake.partition_path(RECOMMENDATIONS, dt)) == manifest["checksum_sha256"], moment
            assert content_digest(table) == manifest["content_digest"], moment
        if d.isoformat() in complete and known_digests:
            assert reader.manifest(d)["content_digest"] in known_digests, f"{moment}: an unknown version of D"
        assert reader.latest_date() in complete

    tables = root / "lake" / RECOMMENDATIONS.name
    runner = Runner(root, config, tmp_path, d, tables / STAGING)
    outcomes: list[tuple[str, dict]] = []

    def attempt(moment: str, when, republish: bool) -> dict:
        current = reader.manifest(d)["content_digest"] if d.isoformat() in reader.dates() else None
        # Other rows than the night in place (K=5 vs the configured K), so that the run must publish.
        flip = {"RECSYS_SERVE__TOP_K": "5"} if current is not None and current in first_digest else {}
        outcome = runner.run(when, extra_env=flip)
        outcomes.append((moment, outcome))
        if not outcome["killed"]:
            assert outcome["rc"] == 0, runner.log()
        published = reader.manifest(d)["content_digest"] if d.isoformat() in reader.dates() else None
        if republish and published is not None and published not in known_digests:
            assert reader.manifest(d)["rows"] == 5 * first_users[0]  # a completed republish: the K=5 table
            known_digests.add(published)
        if republish and d.isoformat() not in reader.dates():
            # Killed between publish's two renames: D's previous version waits, complete, in _trash.
            aside = [i for i in entries(lake, TRASH) if i.base_name.startswith(f"dt={d.isoformat()}.")]
            assert aside and lake.exists(f"{aside[0].path}/{MANIFEST}"), moment
        check(f"{moment}: {outcome}")
        return outcome

    first_digest: set[str] = set()
    first_users: list[int] = []
    # Phase 1: the first publish of D.
    for moment, when in [
        ("first publish, staging folder created", appeared(tables / STAGING)),
        ("first publish, staged parquet written", appeared(tables / STAGING, "part-00000.parquet")),
        ("first publish, staged manifest written", appeared(tables / STAGING, MANIFEST)),
    ]:
        attempt(moment, when, republish=False)
        if d.isoformat() in reader.dates():
            break  # the kill came too late: D is published
    if d.isoformat() not in reader.dates():
        outcome = attempt("first publish, not killed", None, republish=False)
        assert not outcome["killed"]
    first = reader.manifest(d)
    first_digest.add(first["content_digest"])
    first_users.append(first["users"])
    known_digests.add(first["content_digest"])

    # A complete republish, timed: when staging appears, when the run ends.
    timing = attempt("republish, not killed", None, republish=True)
    assert reader.manifest(d)["rows"] == 5 * first["users"], runner.log()
    # The data file keeps the time it was written to staging (renames keep mtimes): when staging began.
    written = os.path.getmtime(lake.data_files(lake.partition_path(RECOMMENDATIONS, d))[0])
    timing["staged_at"] = written - timing["wall"]

    # Phase 2: republishing D (each run flips between K=5 and the configured K).
    rng = random.Random(20240111)
    lo, hi = max(0.0, timing["staged_at"] - 1.0), timing["seconds"]
    delays = sorted(rng.uniform(lo, hi) for _ in range(3))
    moments = [
        ("republish, staging folder created", appeared(tables / STAGING)),
        ("republish, staged manifest written", appeared(tables / STAGING, MANIFEST)),
        ("republish, old version moved aside", appeared(tables / TRASH)),
        *[(f"republish, after {t:.2f}s", elapsed_at(t)) for t in delays],
    ]
    for moment, when in moments:
        attempt(moment, when, republish=True)
    report = "\n".join(f"{m}: killed={o['killed']} rc={o['rc']} {o['seconds']:.2f}s" for m, o in outcomes)
    print(report)
    assert sum(o["killed"] for _, o in outcomes) >= 4, report
    assert outcomes[0][1]["killed"], report  # the staging folder is always seen in time

    # A rerun succeeds and cleans up; a second rerun changes nothing, generated_at included.
    outcome = runner.run()
    assert outcome["rc"] == 0, runner.log()
    check("after the rerun")
    assert reader.manifest(d)["content_digest"] == first["content_digest"]  # the configured K again
    assert not [i for i in entries(lake, STAGING) if i.base_name.startswith(f"dt={d.isoformat()}.")]
    assert not [i for i in entries(lake, TRASH) if i.base_name.startswith(f"dt={d.isoformat()}.")]
    d_path = lake.partition_path(RECOMMENDATIONS, d)
    before = (reader.manifest(d), lake.checksum(d_path), reader.table(d))
    outcome = runner.run()
    assert outcome["rc"] == 0 and outcome["staged_at"] is None, runner.log()
    assert "unchanged" in runner.log()
    after = (reader.manifest(d), lake.checksum(d_path), reader.table(d))
    assert after[0] == before[0] and after[1] == before[1] and after[2].equals(before[2])
    assert reader.dates() == [e.isoformat(), d.isoformat()] and reader.latest_date() == d.isoformat()
