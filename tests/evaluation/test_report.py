"""recsys_core.evaluation.report: shapes of the figures, PNG output, no global state."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: tests must not need a display

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from recsys_core.evaluation.frontier import OperatingPoint
from recsys_core.evaluation.metrics import top_k
from recsys_core.evaluation.report import (
    calibration_figure,
    coverage_figure,
    frontier_figure,
    metric_at_k_figure,
    popularity_bias_figure,
    training_curves_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(fig: Figure, path: Path) -> bytes:
    fig.savefig(path, format="png", dpi=60)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    return data


def _assert_labelled(fig: Figure) -> None:
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before  # the module never registers figures globally


def _results() -> dict[str, dict[str, float]]:
    ks = (10, 20, 50)
    return {
        "popularity": {f"{m}@{k}": 0.01 * k for m in ("ndcg", "recall", "hitrate") for k in ks},
        "sasrec": {f"{m}@{k}": 0.02 * k for m in ("ndcg", "recall", "hitrate") for k in ks},
        "ndcg_only": {"ndcg@10": 0.3, "ndcg@50": 0.5},
    }


def test_metric_at_k_figure(tmp_path: Path) -> None:
    fig = metric_at_k_figure(_results())
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    # ndcg: all three models; recall and hitrate: the two with values
    assert [len(ax.get_lines()) for ax in fig.axes] == [3, 2, 2]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["popularity", "sasrec", "ndcg_only"]
    assert fig.axes[0].get_lines()[1].get_ydata().tolist() == pytest.approx([0.2, 0.4, 1.0])
    _assert_labelled(fig)
    _save(fig, tmp_path / "at_k.png")


def test_metric_at_k_figure_custom_metrics() -> None:
    fig = metric_at_k_figure(_results(), metrics=("ndcg",), ks=(10, 50))
    assert len(fig.axes) == 1
    assert fig.axes[0].get_lines()[0].get_xdata().tolist() == [10, 50]


def test_training_curves_figure(tmp_path: Path) -> None:
    history = [
        {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9, "val_ndcg@10": 0.12, "lr": 1e-3},
        {"epoch": 1, "train_loss": 1.2, "val_loss": 1.1, "val_ndcg@10": 0.08, "lr": 1e-3},
        {"epoch": 3, "train_loss": 0.6},
    ]
    fig = training_curves_figure(history)
    assert len(fig.axes) == 2
    loss_ax, metric_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train_loss", "val_loss"]
    assert loss_ax.get_lines()[0].get_xdata().tolist() == [1, 2, 3]  # sorted by epoch
    assert loss_ax.get_lines()[0].get_ydata().tolist() == [1.2, 0.8, 0.6]
    assert [line.get_label() for line in metric_ax.get_lines()] == ["val_ndcg@10"]  # lr ignored
    _assert_labelled(fig)
    _save(fig, tmp_path / "curves.png")


def test_training_curves_figure_partial_and_empty(tmp_path: Path) -> None:
    fig = training_curves_figure([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}])
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 1
    empty = training_curves_figure([])
    assert len(empty.axes) == 1 and not empty.axes[0].get_lines()
    _assert_labelled(empty)
    _save(empty, tmp_path / "empty.png")


def _recommendations() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 100
    pop = np.sort(rng.zipf(1.5, n_items).astype(float))[::-1].copy()
    popular = np.tile(np.arange(20), (n_users, 1))
    model = top_k(rng.random((n_users, n_items)), 20)
    return {"popularity": popular, "random": model}, pop


def test_popularity_bias_figure(tmp_path: Path) -> None:
    recs, pop = _recommendations()
    fig = popularity_bias_figure(recs, pop, k=10)
    assert len(fig.axes) == 2
    # each subplot: the reference plus one line per model
    assert [len(ax.get_lines()) for ax in fig.axes] == [3, 3]
    decile_ax = fig.axes[0]
    # the popularity model's top 10 are the 10 most popular items: all in decile 1
    assert decile_ax.get_lines()[1].get_ydata().tolist() == pytest.approx([1.0] + [0.0] * 9)
    # the reference is the share of interactions per decile: sums to 1
    assert sum(decile_ax.get_lines()[0].get_ydata()) == pytest.approx(1.0)
    assert fig.axes[1].get_xscale() == "log"
    _assert_labelled(fig)
    _save(fig, tmp_path / "pop.png")


def test_coverage_figure(tmp_path: Path) -> None:
    recs, _ = _recommendations()
    fig = coverage_figure(recs, n_items=100, ks=(5, 10, 20, 50))
    assert len(fig.axes) == 1
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    # popularity model: K items of the same list for everyone -> K / 100; K=50 is beyond the lists
    assert lines[0].get_xdata().tolist() == [5, 10, 20]
    assert lines[0].get_ydata().tolist() == pytest.approx([0.05, 0.10, 0.20])
    _assert_labelled(fig)
    _save(fig, tmp_path / "coverage.png")


def test_calibration_figure_marks_the_chosen_offsets(tmp_path: Path) -> None:
    curves = {"new": [(0.0, 0.40), (1.0, 0.45), (4.0, 0.43)], "returning": [(0.0, 0.20), (1.0, 0.19), (4.0, 0.18)]}
    fig = calibration_figure(curves, {"new": 1.0, "returning": 0.0})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4  # one curve and one marker per group
    assert lines[0].get_ydata().tolist() == [0.40, 0.45, 0.43]
    assert lines[1].get_xdata().tolist() == [1] and lines[1].get_ydata().tolist() == [0.45]
    assert lines[3].get_xdata().tolist() == [0] and lines[3].get_ydata().tolist() == [0.20]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "4"]
    _assert_labelled(fig)
    _save(fig, tmp_path / "calibration.png")


def test_frontier_figure_marks_the_served_point_and_the_pareto_front(tmp_path: Path) -> None:
    points = [
        OperatingPoint(0.0, None, ndcg=0.30, coverage=0.10),
        OperatingPoint(1.0, None, ndcg=0.25, coverage=0.35),
        OperatingPoint(0.0, 0.6, ndcg=0.20, coverage=0.30),
        OperatingPoint(1.0, 0.6, ndcg=0.18, coverage=0.60),
        OperatingPoint(0.0, None, ndcg=0.10, coverage=0.80, centering=1.0, scaling=0.5),
    ]
    fig = frontier_figure(points, served=points[1])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"Pareto front", "no re-ranking", "MMR lambda 0.6", "items centred c, scaled s", "served"}
    assert lines["Pareto front"].get_xdata().tolist() == [0.10, 0.35, 0.60, 0.80]
    assert lines["no re-ranking"].get_xdata().tolist() == [0.10, 0.35]  # the adjusted point is drawn hollow apart
    assert "x0 c1 s0.5" in [text.get_text() for text in fig.axes[0].texts]
    assert lines["served"].get_xdata().tolist() == [0.35] and lines["served"].get_ydata().tolist() == [0.25]
    _assert_labelled(fig)
    _save(fig, tmp_path / "frontier.png")


def test_figures_are_deterministic(tmp_path: Path) -> None:
    recs, pop = _recommendations()
    first = _save(popularity_bias_figure(recs, pop), tmp_path / "a.png")
    second = _save(popularity_bias_figure(recs, pop), tmp_path / "b.png")
    assert first == second
    first = _save(metric_at_k_figure(_results()), tmp_path / "c.png")
    second = _save(metric_at_k_figure(_results()), tmp_path / "d.png")
    assert first == second
