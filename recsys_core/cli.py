"""The ``recsys`` command: every stage of the pipeline, runnable on its own."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table as RichTable

from recsys_core.config import Settings, get_settings
from recsys_core.errors import MissingInput, RecsysError

console = Console()


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in the form YYYY-MM-DD") from err


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=Console(stderr=True, width=140), show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("py4j", "alembic", "urllib3", "mlflow.store", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resolve_date(settings: Settings, value: date | None) -> date:
    """The run date given, else the newest day that has arrived in the landing zone."""
    if value is not None:
        return value
    from recsys_core.contracts import RAW_EVENTS
    from recsys_core.io.lake import Lake

    lake = Lake(settings.lake)
    latest = lake.latest_partition(RAW_EVENTS, complete_only=False)
    if latest is None:
        raise MissingInput(
            f"no raw events in the landing zone {lake.table_path(RAW_EVENTS)}",
            hint="run `recsys import-movielens` first, or pass --date",
        )
    return date.fromisoformat(latest)


# Commands ------------------------------------------------------------------
def cmd_import_movielens(args, settings: Settings) -> None:
    from recsys_core.io.datasets.ml100k import import_movielens
    from recsys_core.io.lake import Lake

    summary = import_movielens(Lake(settings.lake), settings.data_root / "downloads")
    console.print(
        f"imported MovieLens-100K into {settings.lake}/raw: {summary.events:,} events in {summary.days} daily "
        f"folders ({summary.first_day}..{summary.last_day}), {summary.users:,} users, {summary.items:,} items"
    )


def cmd_generate_logs(args, settings: Settings) -> None:
    from recsys_core.io.datasets.synthetic import SyntheticSpec, generate_logs
    from recsys_core.io.lake import Lake

    spec = SyntheticSpec(
        events=args.events,
        users=args.users,
        items=args.items,
        days=args.days,
        seed=args.seed,
        bad_fraction=args.bad_fraction,
        start=args.start,
    )
    summary = generate_logs(spec, Lake(args.out or settings.lake))
    console.print_json(json.dumps(summary, default=str))


def cmd_ingest(args, settings: Settings) -> None:
    from recsys_core.io.lake import Lake
    from recsys_core.stages.ingest import dates_to_ingest, landed_dates, run_ingest

    run_date = resolve_date(settings, args.date)
    lake = Lake(settings.lake)
    if args.date_from:
        dates = [d for d in landed_dates(lake) if args.date_from <= d <= run_date]
    else:
        dates = dates_to_ingest(lake, run_date, catch_up=args.catch_up)
    reports = run_ingest(settings, dates)
    console.print(
        f"ingested {len(reports)} day(s) {dates[0]}..{dates[-1]}: {sum(r.rows_in for r in reports):,} rows in, "
        f"{sum(r.rows_accepted for r in reports):,} accepted, {sum(r.rows_quarantined for r in reports):,} quarantined"
    )
    for report in reports:
        if report.rows_quarantined:
            console.print(f"  {report.run_date}: quarantined {report.reasons}")


def cmd_features(args, settings: Settings) -> None:
    from recsys_core.stages.features import run_features

    summary = run_features(settings, resolve_date(settings, args.date))
    console.print(summary)


def cmd_train(args, settings: Settings) -> None:
    from recsys_core.stages.train import launch_training

    result = launch_training(settings, resolve_date(settings, args.date), nproc=args.nproc)
    console.print_json(json.dumps(result, default=str))


def cmd_recommend(args, settings: Settings) -> None:
    from recsys_core.stages.recommend import run_recommend

    summary = run_recommend(settings, resolve_date(settings, args.date))
    console.print_json(json.dumps(summary, default=str))


def cmd_recs_show(args, settings: Settings) -> None:
    from recsys_core.io.recommendations import RecommendationReader

    reader = RecommendationReader(settings)
    dt, rows = reader.for_user(args.user, args.date)
    table = RichTable(title=f"Recommendations for user {args.user} on {dt}")
    for column in ("rank", "item_id", "title", "reason", "score", "source", "model"):
        table.add_column(column)
    for row in rows[: args.limit]:
        table.add_row(
            str(row["rank"]),
            row["item_id"],
            row.get("title") or "",
            row.get("reason") or "",  # nights published before reasons have none
            f"{row['score']:.4f}",
            row["source"],
            f"{row['model_name']} v{row['model_version']}",
        )
    console.print(table)


def cmd_forget(args, settings: Settings) -> None:
    from recsys_core.stages.forget import run_forget

    report = run_forget(settings, args.user, args.request_id)
    print_forget_report(report)


def print_forget_report(report) -> None:
    note = " (already done: nothing changed)" if report.already_done else ""
    tables = RichTable(title=f"forget {report.request_id}: {report.users} user(s){note}")
    for column in ("table", "files", "rows before", "rows after", "removed"):
        tables.add_column(column, justify="left" if column == "table" else "right")
    for name, t in report.tables.items():
        removed = t["rows_before"] - t["rows_after"]
        tables.add_row(name, f"{t['files']:,}", f"{t['rows_before']:,}", f"{t['rows_after']:,}", f"{removed:,}")
    console.print(tables)
    files = RichTable(title="files changed")
    for column in ("table", "file", "rows before", "rows after"):
        files.add_column(column, justify="left" if column in ("table", "file") else "right")
    for change in report.changes:
        files.add_row(change.table, change.path, f"{change.before:,}", f"{change.after:,}")
    console.print(files)
    tagged = ", ".join(f"v{v}" for v in report.tagged_versions) or "none"
    console.print(
        f"removed {sum(report.rows_removed.values()):,} rows in {len(report.changes):,} files; "
        f"model versions tagged contains_forgotten_users: {tagged}; {report.seconds:.1f}s"
    )


def cmd_mlflow_ui(args, settings: Settings) -> None:
    from recsys_core.io.registry import configure_tracking, mlflow_server_command

    experiment_id = configure_tracking(settings)
    command = mlflow_server_command(settings, host=args.host, port=args.port)
    # MLflow's UI opens in its GenAI view unless the link asks for the machine-learning one.
    link = f"http://{args.host}:{args.port}/#/experiments/{experiment_id}?workflowType=machine_learning"
    console.print(f"MLflow UI on {link}  (store: {settings.tracking_uri})")
    os.execvp(command[0], command)


def cmd_spark_cds(args, settings: Settings) -> None:
    from recsys_core.io.spark_cds import build_archive
    from recsys_core.stages import spark_warm_up

    started = time.monotonic()
    archive = build_archive(Path(spark_warm_up.__file__))
    size_mb = archive.stat().st_size / 2**20
    console.print(f"Spark class-data archive: {archive} ({size_mb:.0f} MB, {time.monotonic() - started:.0f}s)")
    if not settings.spark.class_data_sharing:
        console.print("spark.class_data_sharing is off in this configuration: Spark's JVMs will not map it")


def cmd_config(args, settings: Settings) -> None:
    console.print_json(settings.model_dump_json())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error, not just its message")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, with_date=True):
        p = sub.add_parser(name, help=help_text)
        if with_date:
            p.add_argument("--date", type=_date, help="run date YYYY-MM-DD (default: newest day landed)")
        p.set_defaults(func=func)
        return p

    add("import-movielens", cmd_import_movielens, "write MovieLens-100K into the landing zone as raw logs", False)
    p = add("generate-logs", cmd_generate_logs, "write seeded synthetic raw logs", False)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bad-fraction", type=float, default=0.0)
    p.add_argument("--start", type=_date, default=date(2024, 1, 1))
    p.add_argument("--out", help="lake root to write into (default: the configured lake)")
    p = add("ingest", cmd_ingest, "validate arrival days of raw events into interactions + quarantine")
    p.add_argument("--catch-up", action="store_true", help="also ingest earlier landed days not yet ingested")
    p.add_argument("--from", dest="date_from", type=_date, default=None, help="re-ingest every landed day from this date")
    add("features", cmd_features, "build user profiles and item features as of a date")
    p = add("train", cmd_train, "train the models with torchrun and register the candidate")
    p.add_argument("--nproc", type=int, default=None, help="processes per node (default from config)")
    add("recommend", cmd_recommend, "score every user with the champion and publish the top-K")
    recs = sub.add_parser("recs", help="read published recommendations")
    recs_sub = recs.add_subparsers(dest="recs_command", required=True)
    p = recs_sub.add_parser("show", help="a user's top-K")
    p.add_argument("--user", required=True)
    p.add_argument("--date", type=_date, default=None)
    p.add_argument("--limit", type=int, default=10)
    p.set_defaults(func=cmd_recs_show)
    p = add("forget", cmd_forget, "remove every row of the given users from the lake and training data", False)
    p.add_argument("--user", action="append", required=True, help="a user id to forget (repeat for several)")
    p.add_argument("--request-id", required=True, help="names the request in the tombstone log; a rerun resumes it")
    p = add("mlflow-ui", cmd_mlflow_ui, "start the MLflow UI on the project's store", False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    add("config", cmd_config, "print the effective configuration", False)
    add("spark-cds", cmd_spark_cds, "build the class-data archive that shortens every Spark JVM's start", False)
    return parser


def report_error(err: RecsysError, debug: bool) -> int:
    """``recsys: <message>`` and ``hint: <hint>`` on stderr (the traceback first with --debug); the exit code."""
    if debug:
        traceback.print_exception(err)
    first, *details = str(err).splitlines() or [type(err).__name__]
    # Plain print, not rich: messages hold [brackets] that rich would read as markup.
    print(f"recsys: {first}", *details, f"hint: {err.hint}", sep="\n", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    # Only the platform's own errors are reported briefly: anything else is a bug and keeps its traceback.
    try:
        args.func(args, get_settings())
    except RecsysError as err:
        return report_error(err, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
