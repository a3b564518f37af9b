"""### recsys_train: train the sequence model with torchrun (DDP) and the baselines, gate the champion

**Runs** on the `recsys://lake/features` event, but trains only when it is due: when there is no
champion yet, or when the champion was trained `orchestration.train_every_days` (7) or more days before
the run date. A manual trigger always trains. Otherwise `decide_training` says why not, and the rest skips.

**Steps**: prepare (datasets in `<data_root>/work/train/<run date>/`, MLflow parent run) → torchrun
(DDP; gloo on CPU, NCCL on GPU per config) → evaluate (baselines on the same splits, plots, the registry
gate that moves `@champion` only when the candidate is better).

**Writes**: MLflow runs in the `recsys` experiment and a new version of the registered model. When the
gate promotes it, the `recsys://registry/champion` event (model version, gate reason, and the night to
refresh: the latest published one) re-runs `recsys_nightly` with the new champion.
"""

from __future__ import annotations

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import task
from recsys_common import (
    FEATURES_ASSET,
    JOBS,
    MODEL_ASSET,
    PYTHON,
    RUN_DATE,
    emit,
    recsys_dag,
    resolve_run_date,
    run_type,
    timeout,
)

from recsys_core.config import get_settings

STEP = f"{PYTHON} {JOBS / 'train_step.py'}"


@task.short_circuit
def decide_training(run_date: str, **context) -> bool:
    """Trains when triggered by hand, when there is no champion, or when the champion is due for renewal;
    logs the reason either way. False skips the rest of the run."""
    from datetime import date

    from recsys_core.stages.operations import training_decision

    decision = training_decision(get_settings(), date.fromisoformat(run_date), requested=run_type(context) == "manual")
    print(f"{'training' if decision.train else 'not training'} for {run_date}: {decision.reason}")
    return decision.train


with recsys_dag(
    "recsys_train",
    description="DDP training, baselines, evaluation and gated promotion",
    schedule=[FEATURES_ASSET],
    doc_md=__doc__,
    tags=["torch", "mlflow"],
) as dag:
    run_date = resolve_run_date()
    prepare = BashOperator(
        bash_command=f"{STEP} prepare --date {RUN_DATE}",
        doc_md="Reads interactions and features as of the run date, fits the preprocessing, writes one dataset "
        "per protocol (leave-last-out, backtest, calibration) and opens the MLflow parent run.",
        **timeout("prepare_dataset"),
    )
    torchrun = BashOperator(
        bash_command=f"{STEP} torchrun --date {RUN_DATE}",
        doc_md="Trains one model per protocol with torchrun (DDP); rank 0 logs per-epoch metrics. "
        "A retry resumes from the last checkpoint in the workspace.",
        **timeout("torchrun_ddp"),
    )
    evaluate = BashOperator(
        bash_command=f"{STEP} evaluate --date {RUN_DATE}",
        doc_md="Calibrates the trend prior, evaluates the model and the baselines on the same splits, logs "
        "metrics and plots, registers the model and moves `@champion` only through the gate.",
        **timeout("evaluate_and_gate"),
    )
    published = emit(MODEL_ASSET, "model_event", only_if="promoted")(run_date)
    run_date >> decide_training(run_date) >> prepare >> torchrun >> evaluate >> published
