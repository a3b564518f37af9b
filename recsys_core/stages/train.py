"""Stage 2: training as of a date, in three steps that Airflow can run as separate tasks.

1. ``prepare``: read interactions and features as of the date, fit the
   preprocessing, build the dataset file, open the MLflow parent run.
2. ``run_torchrun``: train the sequence model with DDP (``torchrun``); rank 0
   logs per-epoch metrics into a nested run.
3. ``evaluate_and_register``: calibrate the trend prior out of sample,
   evaluate the model and the baselines on the same splits, log metrics and
   plots, register the model and move the champion alias only through the gate.

Up to three models are trained per run, one per protocol: ``loo`` (all data;
the served model, evaluated leave-last-out), ``backtest`` (data up to one
horizon before the run date, evaluated on that horizon as the nightly job
would) and ``calibration`` (up to two horizons before, scored on the horizon
that follows it, to fit the trend prior's out-of-sample weight).

In MLflow, a date's training is a parent run with one nested run per model: the
sequence model of each protocol (``seqrec``, ``seqrec-backtest``,
``seqrec-calibration``) and each baseline. So that runs line up in MLflow's
compare view, every model's run logs its metrics as ``<protocol>/<metric>``
(``loo/ndcg_at_10``, ``backtest/ndcg_at_10``, ...) and the same key params
(``model.family`` and ``run_params``: run date, protocols, cut-offs, data
version). The served model's run and the baselines' report both evaluated
protocols, each from a model fitted on that protocol's data.

The workspace ``<data_root>/work/train/<date>/`` carries state between steps;
a rerun of a date starts it afresh.

The steps live in ``recsys_core.stages.training``, one module per job: ``workspace`` (layout
and cut-offs), ``protocols`` (each protocol's data and evaluation case), ``prepare`` (step 1),
``launch`` (step 2), ``evaluation`` (calibration and scoring, a typed ``EvaluationReport``),
``baselines``, ``runs`` (the MLflow run layout) and ``registration`` (logging, registry, gate).
This module is their front door: jobs, DAGs, benchmarks and tests import from here.
"""

from __future__ import annotations

from datetime import date

from recsys_core.config import Settings
from recsys_core.stages.training.evaluation import (
    EvaluationReport,
    apply_calibration,
    calibrate_trend,
    champion_metric,
    evaluate_models,
    load_trained,
    returning_bucket,
)
from recsys_core.stages.training.launch import JOB, run_torchrun, torchrun_command, torchrun_env
from recsys_core.stages.training.prepare import prepare_training
from recsys_core.stages.training.protocols import (
    TARGETS_OF,
    ScoredCase,
    backtest_case,
    evaluation_context,
    feasible_protocols,
    input_lineage,
    leave_last_out_case,
    load_inputs,
    prepared_protocols,
)
from recsys_core.stages.training.registration import evaluate_and_register
from recsys_core.stages.training.runs import (
    model_run_description,
    reported_protocols,
    run_params,
    start_model_run,
    training_run_description,
)
from recsys_core.stages.training.workspace import (
    EVALUATED,
    HORIZONS_BEFORE,
    PROTOCOLS,
    RUNS,
    SETTINGS,
    backtest_cut,
    checkpoint_dir,
    dataset_path,
    train_cutoff,
    workspace,
)
from recsys_core.timeutil import epoch_day
from recsys_core.training.loop import BEST, RESULT

__all__ = [
    "BEST",
    "EVALUATED",
    "HORIZONS_BEFORE",
    "JOB",
    "PROTOCOLS",
    "RESULT",
    "RUNS",
    "SETTINGS",
    "TARGETS_OF",
    "EvaluationReport",
    "ScoredCase",
    "apply_calibration",
    "backtest_case",
    "backtest_cut",
    "calibrate_trend",
    "champion_metric",
    "checkpoint_dir",
    "dataset_path",
    "epoch_day",
    "evaluate_and_register",
    "evaluate_models",
    "evaluation_context",
    "feasible_protocols",
    "input_lineage",
    "launch_training",
    "leave_last_out_case",
    "load_inputs",
    "load_trained",
    "model_run_description",
    "prepare_training",
    "prepared_protocols",
    "reported_protocols",
    "returning_bucket",
    "run_params",
    "run_torchrun",
    "start_model_run",
    "torchrun_command",
    "torchrun_env",
    "train_cutoff",
    "training_run_description",
    "workspace",
]


def launch_training(settings: Settings, as_of: date, nproc: int | None = None) -> dict:
    """All three steps in one call (the CLI's ``recsys train``)."""
    prepare_training(settings, as_of)
    run_torchrun(settings, as_of, nproc)
    return evaluate_and_register(settings, as_of)
