"""The metric registry (recsys_core.evaluation.metric_names) names exactly what the code reports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_core.evaluation.metric_names import (
    METRICS,
    METRICS_READ_BY_NAME,
    gate_metric_names,
    metric_name,
    parse_metric_name,
    reported_metric_names,
)
from recsys_core.evaluation.metrics import ACCURACY_AT_K, metrics_from_ranks, ranking_metrics
from recsys_core.evaluation.protocols import EvalCase, evaluate

KS = (5, 10, 20)


def small_case(single_target: bool) -> tuple[EvalCase, np.ndarray]:
    rng = np.random.default_rng(0)
    n_users, n_items = 12, 40
    seen = (rng.random((n_users, n_items)) < 0.1).astype(np.float32)
    relevant = [np.array([i % n_items]) if single_target else np.array([i % n_items, (i + 7) % n_items]) for i in range(n_users)]
    for row, items in enumerate(relevant):
        seen[row, items] = 0  # a held-out item is never among the seen ones
    case = EvalCase(np.arange(n_users), sp.csr_matrix(seen), relevant, np.arange(n_users) * 5)
    return case, rng.random((n_users, n_items))


@pytest.mark.parametrize("single_target", [True, False], ids=["ranks", "lists"])
def test_evaluate_reports_exactly_the_registered_names(single_target):
    case, scores = small_case(single_target)
    result = evaluate(
        lambda rows: scores[rows],
        case,
        ks=KS,
        item_popularity=np.arange(40, dtype=np.float64),
        item_categories=sp.csr_matrix(np.eye(40, 4, dtype=np.float32)),
        cold_user_max_events=20,
    )
    overall = {name for name in result.metrics if "/" not in name} - {"users"}
    assert overall == set(reported_metric_names(KS))
    segments = {name.split("/", 1)[1] for name in result.metrics if "/" in name}
    assert segments == {metric_name("ndcg", min(KS)), metric_name("hitrate", min(KS)), "users"}


def test_accuracy_functions_have_registry_entries():
    assert ACCURACY_AT_K.keys() <= METRICS.keys()
    assert all(METRICS[name].cutoffs == "each" for name in ACCURACY_AT_K)


def test_metric_functions_key_their_results_by_registered_names():
    names = set(reported_metric_names(KS, [*ACCURACY_AT_K, "mrr"]))
    assert set(metrics_from_ranks(np.array([0, 3, 30]), KS)) - {"users"} == names
    assert set(ranking_metrics(np.arange(60).reshape(3, 20), [[1], [2, 3], []], KS)) - {"users"} == names


def test_names_and_cutoffs():
    assert metric_name("ndcg", 10) == "ndcg@10" and metric_name("mrr") == "mrr"
    assert parse_metric_name("ndcg@10") == ("ndcg", 10) and parse_metric_name("mrr") == ("mrr", None)
    for bad in ("ndcg@", "ndcg@x", "ndcg@0", "ndcg@-1"):
        with pytest.raises(ValueError, match="positive integer"):
            parse_metric_name(bad)
    names = reported_metric_names([20, 10, 20])
    assert {"ndcg@10", "ndcg@20", "coverage@20", "mrr", "mrr@20", "novelty@10", "gini@10"} <= set(names)
    assert "mrr@10" not in names and "novelty@20" not in names


def test_gate_names_are_higher_is_better_only():
    gateable = gate_metric_names([10, 50])
    assert "ndcg@10" in gateable and "mrr" in gateable
    assert not {"gini@10", "arp@10", "head_share@10"} & set(gateable)


def test_default_ks_report_what_is_read_by_name():
    from recsys_core.evaluation.metric_names import DEFAULT_KS

    assert set(METRICS_READ_BY_NAME) <= set(reported_metric_names(DEFAULT_KS))


def test_config_imports_no_heavy_modules():
    # The DAG parser imports recsys_core.config: the metric registry must not drag numpy or torch in.
    code = "import sys, recsys_core.config; print(sorted({'numpy', 'torch', 'pyspark', 'pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
