"""The evaluation metrics by name: one registry of what each metric is and at which cut-offs it is reported.

A metric at a cut-off k is named ``<metric>@<k>`` (``ndcg@10``); a metric over the full ranking has
no cut-off (``mrr``). :func:`reported_metric_names` lists every name the evaluation protocols
report for the configured ``eval.ks``, so the configuration can check ``registry.gate_metric``
when it is loaded instead of failing after training. No numpy here: recsys_core.config imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MetricInfo:
    description: str
    # Which configured cut-offs it is reported at: each k of eval.ks, the shortest (the
    # beyond-accuracy list metrics, costly or only meaningful on one list length) or the longest.
    cutoffs: Literal["each", "shortest", "longest"]
    # The promotion gate keeps the candidate with the higher value: a lower-is-better metric cannot gate.
    higher_is_better: bool = True
    # Also reported without a cut-off, over the full ranking.
    uncut: bool = False


METRICS: dict[str, MetricInfo] = {
    "recall": MetricInfo("relevant items in the top k / relevant items", "each"),
    "ndcg": MetricInfo("discounted gain of the hits in the top k / that of a perfect list", "each"),
    "hitrate": MetricInfo("1 when any relevant item is in the top k", "each"),
    "precision": MetricInfo("relevant items in the top k / k", "each"),
    "mrr": MetricInfo("1 / position of the first relevant item; uncut: over the full ranking", "longest", uncut=True),
    "coverage": MetricInfo("share of the catalogue in at least one user's top k", "each"),
    "novelty": MetricInfo("mean self-information of the recommended items, in bits", "shortest"),
    "diversity": MetricInfo("mean pairwise genre distance within a list", "shortest"),
    "arp": MetricInfo("mean interaction count of the recommended items", "shortest", higher_is_better=False),
    "head_share": MetricInfo("share of the slots holding a head (most popular) item", "shortest", higher_is_better=False),
    "gini": MetricInfo("Gini index of how often each item is recommended", "shortest", higher_is_better=False),
}

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)

# Read by name in recsys_core/stages/train.py (training summary and logs), whatever eval.ks says:
# eval.ks must report them. Remove a name here once that code reads configured names instead.
METRICS_READ_BY_NAME: tuple[str, ...] = ("ndcg@10", "hitrate@10", "recall@10", "recall@50", "coverage@10", "mrr")


def metric_name(metric: str, k: int | None = None) -> str:
    """``ndcg@10`` for a cut-off, just the metric without one."""
    return metric if k is None else f"{metric}@{k}"


def parse_metric_name(name: str) -> tuple[str, int | None]:
    """(metric, cut-off or None) of ``ndcg@10`` / ``mrr``; ValueError when the cut-off is not a positive integer."""
    metric, at, cutoff = name.partition("@")
    if not at:
        return metric, None
    if not cutoff.isdigit() or int(cutoff) < 1:
        raise ValueError(f"{name!r}: the cut-off after '@' must be a positive integer, as in ndcg@10")
    return metric, int(cutoff)


def metric_cutoffs(metric: str, ks: Iterable[int]) -> tuple[int, ...]:
    """The cut-offs of ``ks`` (in their order, without repeats) that ``metric`` is reported at."""
    ks = tuple(dict.fromkeys(ks))
    if not ks:
        return ()
    chosen = {"each": ks, "shortest": (min(ks),), "longest": (max(ks),)}
    return chosen[METRICS[metric].cutoffs]


def reported_metric_names(ks: Iterable[int], metrics: Iterable[str] = METRICS) -> list[str]:
    """Every name under which the evaluation protocols report ``metrics`` for the cut-offs ``ks``."""
    ks = tuple(ks)
    names = []
    for metric in metrics:
        if METRICS[metric].uncut:
            names.append(metric_name(metric))
        names.extend(metric_name(metric, k) for k in metric_cutoffs(metric, ks))
    return names


def gate_metric_names(ks: Iterable[int]) -> list[str]:
    """The reported names the promotion gate can compare (higher is better)."""
    return reported_metric_names(ks, [m for m, info in METRICS.items() if info.higher_is_better])


def metric_key(name: str) -> str:
    """MLflow metric names allow no '@': ``ndcg@10`` is logged as ``ndcg_at_10``."""
    return name.replace("@", "_at_")
