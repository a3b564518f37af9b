"""Evaluation figures, as matplotlib Figure objects.

The caller logs them (``mlflow.log_figure(fig, "eval/ndcg_at_k.png")``); this
module imports no MLflow and writes nothing. Figures are built with the
object-oriented API on an Agg canvas, never through pyplot: nothing is added
to pyplot's global figure registry, so there is nothing to close and no
display is needed. Output is deterministic: the order of lines follows the
order of the input dicts and no randomness is involved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recsys_core.evaluation.frontier import OperatingPoint, pareto
from recsys_core.evaluation.metric_names import DEFAULT_KS, metric_name
from recsys_core.evaluation.metrics import _as_popularity, _slots, catalog_coverage

__all__ = [
    "coverage_figure",
    "frontier_figure",
    "metric_at_k_figure",
    "popularity_bias_figure",
    "training_curves_figure",
]

METRIC_LABELS = {
    "ndcg": "NDCG",
    "recall": "Recall",
    "hitrate": "Hit rate",
    "precision": "Precision",
    "mrr": "MRR",
}

N_DECILES = 10


def _new_figure(n_axes: int, *, width: float = 4.6, height: float = 3.8) -> tuple[Figure, list[Axes]]:
    """A figure on its own Agg canvas with ``n_axes`` subplots side by side."""
    fig = Figure(figsize=(width * n_axes, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders with Agg
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    return fig, list(axes)


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def metric_at_k_figure(
    results: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = ("ndcg", "recall", "hitrate"),
    ks: Iterable[int] = DEFAULT_KS,
) -> Figure:
    """One subplot per metric, one line per model over K.

    ``results``: model name -> {"ndcg@10": ..., "recall@20": ...} as returned by
    ``ranking_metrics``/``metrics_from_ranks``. A model without any value for a
    metric gets no line on that subplot; a missing single K is a gap.
    """
    ks = sorted({int(k) for k in ks})
    fig, axes = _new_figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for model, values in results.items():
            y = [float(values.get(metric_name(metric, k), math.nan)) for k in ks]
            if all(math.isnan(v) for v in y):
                continue
            ax.plot(ks, y, marker="o", label=model)
        ax.set_title(f"{_label(metric)}@K")
        ax.set_xlabel("K (list length)")
        ax.set_ylabel(_label(metric))
        ax.set_xticks(ks)
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    fig.suptitle("Ranking accuracy at K")
    return fig


def training_curves_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss and validation-metric curves over epochs.

    ``history``: one dict per epoch with ``"epoch"`` and any numeric series.
    Keys containing ``"loss"`` (``train_loss``, ``val_loss``) go on the left
    subplot, other keys starting with ``"val_"`` (``val_ndcg@10``) on the right;
    anything else (learning rate, timings) is ignored since it would not share
    a scale. A subplot with no series is left out; with no series at all the
    figure has one empty, labelled subplot.
    """
    rows = sorted((h for h in history if _is_number(h.get("epoch"))), key=lambda h: h["epoch"])
    keys = list(dict.fromkeys(k for h in rows for k in h if k != "epoch" and _is_number(h[k])))
    panels = [
        ("Loss", "loss", [k for k in keys if "loss" in k]),
        ("Validation metrics", "metric", [k for k in keys if k.startswith("val_") and "loss" not in k]),
    ]
    panels = [p for p in panels if p[2]]
    fig, axes = _new_figure(max(len(panels), 1))
    if not panels:
        axes[0].set_title("Training curves")
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("value")
        axes[0].text(0.5, 0.5, "no training history", ha="center", va="center", transform=axes[0].transAxes)
    for ax, (title, ylabel, series) in zip(axes, panels):
        for key in series:
            pts = [(h["epoch"], float(h[key])) for h in rows if _is_number(h.get(key))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Training curves")
    return fig


def _popularity_deciles(pop: np.ndarray) -> np.ndarray:
    """Decile of each item by popularity: 0 = the 10% most popular items (ties to the lower index)."""
    order = np.argsort(-pop, kind="stable")
    decile = np.empty(pop.size, dtype=np.int64)
    decile[order] = np.arange(pop.size) * N_DECILES // max(pop.size, 1)
    return decile


def popularity_bias_figure(recommended_by_model: Mapping[str, Any], item_popularity: Any, k: int = 10) -> Figure:
    """Where the top-k slots go on the popularity scale, per model.

    Left: share of each model's filled top-k slots per catalogue popularity
    decile (1 = the 10% most-interacted items), with the training interactions'
    own share per decile as the dashed reference. Right: log-x histogram of the
    interaction count of the recommended items, with the catalogue's items as
    the dashed reference. Each subplot has one line per model plus one reference.
    """
    pop = _as_popularity(item_popularity)
    decile = _popularity_deciles(pop)
    x = np.arange(1, N_DECILES + 1)
    total = pop.sum()
    interaction_share = np.bincount(decile, weights=pop, minlength=N_DECILES) / (total if total > 0 else 1.0)
    # log-spaced bins over count + 1, so never-interacted items (count 0) have a bin.
    edges = np.logspace(0.0, math.log10(max(pop.max(initial=0.0) + 1.0, 10.0)), 21)

    def shares(values: np.ndarray) -> np.ndarray:
        h, _ = np.histogram(values + 1.0, bins=edges)
        return h / max(values.size, 1)

    def step(ax: Axes, h: np.ndarray, **kw: Any) -> None:
        ax.step(edges, np.append(h, h[-1]), where="post", **kw)

    fig, (ax_dec, ax_hist) = _new_figure(2, width=5.5)
    ax_dec.plot(x, interaction_share, linestyle="--", color="black", label="training interactions")
    step(ax_hist, shares(pop), linestyle="--", color="black", label="catalogue items")
    for model, recommended in recommended_by_model.items():
        rec, valid = _slots(recommended, k)
        items = rec[valid]
        slot_share = np.bincount(decile[items], minlength=N_DECILES) / max(items.size, 1)
        ax_dec.plot(x, slot_share, marker="o", label=model)
        step(ax_hist, shares(pop[items]), label=model)

    ax_dec.set_title(f"Top-{k} slots by item popularity decile")
    ax_dec.set_xlabel("catalogue popularity decile (1 = most popular 10%)")
    ax_dec.set_ylabel("share")
    ax_dec.set_xticks(x)
    ax_dec.grid(True, alpha=0.3)
    ax_dec.legend(fontsize="small")
    ax_hist.set_xscale("log")
    ax_hist.set_title(f"Popularity of top-{k} items")
    ax_hist.set_xlabel("item interaction count + 1 (log scale)")
    ax_hist.set_ylabel("share")
    ax_hist.grid(True, alpha=0.3)
    ax_hist.legend(fontsize="small")
    fig.suptitle("Popularity bias")
    return fig


def coverage_figure(recommended_by_model: Mapping[str, Any], n_items: int, ks: Iterable[int] = DEFAULT_KS) -> Figure:
    """Catalogue coverage over K, one line per model (K beyond a model's lists is skipped)."""
    ks = sorted({int(k) for k in ks})
    fig, (ax,) = _new_figure(1)
    for model, recommended in recommended_by_model.items():
        width = np.shape(recommended)[1]
        model_ks = [k for k in ks if k <= width]
        if model_ks:
            ax.plot(model_ks, [catalog_coverage(recommended, n_items, k) for k in model_ks], marker="o", label=model)
    ax.set_title("Catalogue coverage at K")
    ax.set_xlabel("K (list length)")
    ax.set_ylabel("share of catalogue recommended")
    ax.set_xticks(ks)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    return fig


def calibration_figure(curves: Mapping[str, Sequence[tuple[float, float]]], chosen: Mapping[str, float]) -> Figure:
    """NDCG@10 on the calibration window against the trend offset, one line per user group; chosen offsets marked."""
    fig, (ax,) = _new_figure(1, width=5.2)
    for group, curve in curves.items():
        offsets = [o for o, _ in curve]
        values = [v for _, v in curve]
        (line,) = ax.plot(range(len(offsets)), values, marker="o", label=f"{group} users")
        if group in chosen and chosen[group] in offsets:
            at = offsets.index(chosen[group])
            ax.plot([at], [values[at]], marker="*", markersize=14, color=line.get_color())
        ax.set_xticks(range(len(offsets)), [f"{o:g}" for o in offsets])
    ax.set_title("Trend prior calibration (out of sample)")
    ax.set_xlabel("offset added to the trend weight")
    ax.set_ylabel("NDCG@10 on the calibration window")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    return fig


def frontier_figure(points: Sequence[OperatingPoint], served: OperatingPoint | None, k: int = 10) -> Figure:
    """Backtest NDCG@k against catalogue coverage@k of every operating point (``evaluation.frontier``),
    coloured by MMR lambda, hollow with an item adjustment; the Pareto front dashed, its points
    labelled with their knobs, the served point starred."""
    fig, (ax,) = _new_figure(1, width=7.0, height=5.0)
    front = pareto(list(points))
    if len(front) > 1:
        ax.plot([p.coverage for p in front], [p.ndcg for p in front], color="grey", linestyle="--", label="Pareto front")
    for lam in dict.fromkeys(p.mmr_lambda for p in points):
        label = "no re-ranking" if lam is None else f"MMR lambda {lam:g}"
        plain = [p for p in points if p.mmr_lambda == lam and p.centering == 0 and p.scaling == 0]
        adjusted = [p for p in points if p.mmr_lambda == lam and (p.centering != 0 or p.scaling != 0)]
        (line,) = ax.plot([p.coverage for p in plain], [p.ndcg for p in plain], marker="o", linestyle="none", label=label)
        ax.plot(
            [p.coverage for p in adjusted],
            [p.ndcg for p in adjusted],
            marker="o",
            linestyle="none",
            markerfacecolor="none",
            color=line.get_color(),
        )
    if any(p.centering or p.scaling for p in points):
        ax.plot([], [], marker="o", linestyle="none", markerfacecolor="none", color="grey", label="items centred c, scaled s")
    labelled = -1.0
    for p in front:  # labels at least 2 points of coverage apart, so that they stay readable
        if p.coverage - labelled < 0.02:
            continue
        labelled = p.coverage
        text = f"x{p.trend_scale:g}" + (f" c{p.centering:g} s{p.scaling:g}" if p.centering or p.scaling else "")
        ax.annotate(text, (p.coverage, p.ndcg), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    if served is not None:
        ax.plot([served.coverage], [served.ndcg], marker="*", markersize=16, color="black", linestyle="none", label="served")
    ax.set_title("Accuracy/coverage frontier (temporal backtest; labels: trend scale)")
    ax.set_xlabel(f"catalogue coverage@{k}")
    ax.set_ylabel(f"NDCG@{k}")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    return fig
