"""recsys_train: train the sequence model with torchrun (DDP) and the baselines, gate the champion.

Triggered by the features asset (or by hand with a run date). Steps:
prepare (dataset + MLflow parent run) → torchrun (DDP, gloo on CPU / NCCL on
GPU per config) → evaluate (baselines on the same split, plots, registry gate
that moves ``@champion`` only when the candidate is better).
"""

from __future__ import annotations

from airflow.providers.standard.operators.bash import BashOperator
from recsys_common import FEATURES_ASSET, JOBS, MODEL_ASSET, PYTHON, RUN_DATE, emit, recsys_dag, resolve_run_date

STEP = f"{PYTHON} {JOBS / 'train_step.py'}"

with recsys_dag(
    "recsys_train",
    description="DDP training, baselines, evaluation and gated promotion",
    schedule=[FEATURES_ASSET],
    doc_md=__doc__,
    tags=["torch", "mlflow"],
) as dag:
    run_date = resolve_run_date()
    prepare = BashOperator(task_id="prepare_dataset", bash_command=f"{STEP} prepare --date {RUN_DATE}")
    torchrun = BashOperator(task_id="torchrun_ddp", bash_command=f"{STEP} torchrun --date {RUN_DATE}")
    evaluate = BashOperator(task_id="evaluate_and_gate", bash_command=f"{STEP} evaluate --date {RUN_DATE}")
    run_date >> prepare >> torchrun >> evaluate >> emit(MODEL_ASSET)(run_date)
