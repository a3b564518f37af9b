"""The scoring benchmark's reasons figure runs on the model as it is now (a smoke run, nothing timed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_scoring():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_scoring

        yield bench_scoring
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_reasons_figure_scores_the_default_model_shape(bench_scoring):
    from common import TreeSampler

    sampler = TreeSampler()
    sampler.start()
    try:
        figures = bench_scoring.reasons_cost(users=40, items=200, k=5, n_last=3, repeats=1, seed=0, sampler=sampler)
    finally:
        sampler.stop()
    # the default model has the item-item term: its states are wider than d_model, and both sides match
    assert figures["state_width"] > figures["d_model"]
    assert figures["users"] == 40 and len(figures["scoring_seconds"]) == len(figures["reasons_seconds"]) == 1
    assert 0.0 < figures["rows_with_reason_item"] <= 1.0
    assert "item-item term" in "\n".join(bench_scoring.reasons_markdown(figures))
