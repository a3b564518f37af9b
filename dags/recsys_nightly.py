"""### recsys_nightly: score every known user with `@champion` and publish the top-K atomically

**Runs** after each day's features (`recsys://lake/features`), when a new champion is promoted
(`recsys://registry/champion`: it refreshes the latest night), once per UTC day on its own schedule (a
scheduled run waits for that day's features), by hand with a `run_date`, and as a backfill
(`airflow backfill create --dag-id recsys_nightly --from-date … --to-date …`: one night per date, each
from the features as of its own date). It never waits for a training: it scores with the current champion.

**No champion yet**: `check_champion` logs it and the night is skipped, not failed; the first
champion's `recsys://registry/champion` event then publishes that night.

**Writes** `<data_root>/lake/recommendations/dt=<run date>/` with `_manifest.json` (rows, users, model
version and the date its training data ends, input partitions, checksum). A rerun with identical rows
leaves the partition untouched; `_latest.json` moves last and never backwards (a backfill of older
dates does not repoint it).
"""

from __future__ import annotations

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import AssetOrTimeSchedule, task
from recsys_common import (
    FEATURES_ASSET,
    JOBS,
    MODEL_ASSET,
    PYTHON,
    RECOMMENDATIONS_ASSET,
    RUN_DATE,
    daily,
    emit,
    recsys_dag,
    resolve_run_date,
    timeout,
    wait_for,
)

from recsys_core.config import get_settings


@task.short_circuit
def check_champion(run_date: str) -> bool:
    """Continues when a model holds `@champion`; otherwise logs that this night waits for the first
    champion (whose event publishes it) and skips the rest, without failing."""
    from recsys_core.stages.operations import champion_trained_as_of

    settings = get_settings()
    current = champion_trained_as_of(settings)
    if current is None:
        print(
            f"no model holds @{settings.registry.champion_alias} of {settings.train.model_name} yet: the night of "
            f"{run_date} is skipped; the first champion's event publishes it (recsys_train trains one)"
        )
        return False
    print(f"scoring {run_date} with {settings.train.model_name} v{current[0]} (trained as of {current[1]})")
    return True


with recsys_dag(
    "recsys_nightly",
    description="Batch top-K recommendations for every user",
    schedule=AssetOrTimeSchedule(timetable=daily(), assets=FEATURES_ASSET | MODEL_ASSET),
    doc_md=__doc__,
    tags=["serving"],
) as dag:
    run_date = resolve_run_date()
    features = wait_for("features", "Waits for `user_profiles` and `item_features` of the run date (reschedule mode).")
    recommend = BashOperator(
        bash_command=f"{PYTHON} {JOBS / 'recommend.py'} --date {RUN_DATE}",
        doc_md="Scores every known user with the champion (seen and unavailable items excluded), validates the "
        "table, and publishes `recommendations/dt=<run date>/` atomically with its manifest.",
        **timeout("score_and_publish"),
    )
    published = emit(RECOMMENDATIONS_ASSET, "recommendations_event")(run_date)
    run_date >> features >> check_champion(run_date) >> recommend >> published
