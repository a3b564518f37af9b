"""`make demo`: the whole chain on MovieLens-100K, run through Airflow itself.

1. land MovieLens-100K as raw logs (idempotent),
2. `airflow dags test` recsys_features → recsys_train → recsys_nightly for the run date,
3. print what happened, in numbers, and one user's recommendations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from airflow_local import airflow_env  # scripts/ is on sys.path when this runs as a script

PROJECT = Path(__file__).resolve().parents[1]
DAGS = ("recsys_features", "recsys_train", "recsys_nightly")


def step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.monotonic()


def run(command: list[str], env: dict[str, str], log_file: Path | None = None) -> None:
    if log_file is None:
        subprocess.run(command, env=env, check=True, cwd=PROJECT)
        return
    with open(log_file, "w") as handle:
        result = subprocess.run(command, env=env, cwd=PROJECT, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_file.read_text().splitlines()[-60:]
        print("\n".join(tail))
        raise SystemExit(f"`{' '.join(command)}` failed (exit {result.returncode}); full log: {log_file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--date", type=date.fromisoformat, default=None, help="run date (default: last day of data)")
    args = parser.parse_args()
    env = airflow_env()  # with the venv's airflow and spark-submit first on PATH
    os.environ.update(env)
    sys.path.insert(0, str(PROJECT))
    from recsys_core.cli import configure_logging
    from recsys_core.config import get_settings

    configure_logging()
    settings = get_settings()
    started = time.monotonic()

    t = step("1/5 landing MovieLens-100K as raw event logs")
    run([sys.executable, "-m", "recsys_core.cli", "import-movielens"], env)
    from recsys_core.cli import resolve_date

    run_date = args.date or resolve_date(settings, None)
    print(f"run date: {run_date} (events up to the end of that UTC day)  [{time.monotonic() - t:.0f}s]")

    t = step("2/5 Airflow metadata database (SQLite)")
    logs = settings.data_root / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    run(["airflow", "db", "migrate"], env, logs / "airflow-db-migrate.log")
    print(f"AIRFLOW_HOME={env['AIRFLOW_HOME']}  [{time.monotonic() - t:.0f}s]")

    conf = json.dumps({"run_date": run_date.isoformat()})
    for number, dag_id in enumerate(DAGS, start=3):
        t = step(f"{number}/5 airflow dags test {dag_id} (run_date={run_date})")
        run(["airflow", "dags", "test", dag_id, "-c", conf], env, logs / f"{dag_id}-{run_date}.log")
        print(f"{dag_id}: success  [{time.monotonic() - t:.0f}s]  (log: {logs / f'{dag_id}-{run_date}.log'})")

    from recsys_core.stages.summary import print_summary

    print_summary(settings, run_date)
    print(f"\nmake demo finished in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
