"""recsys_core.evaluation.gate.gate_decision: the promotion rule."""

from __future__ import annotations

from datetime import date

import pytest

from recsys_core.evaluation.gate import GateDecision, gate_decision, newer_champion_decision


def test_no_champion_promotes():
    d = gate_decision("ndcg@10", 0.1234, None, 0.05)
    assert d == GateDecision(True, d.reason, 0.1234, None)
    assert d.promote is True
    assert "no champion" in d.reason and "ndcg@10=0.1234" in d.reason


def test_better_by_margin_promotes():
    d = gate_decision("ndcg@10", 0.2300, 0.2000, 0.10)  # needs > 0.22
    assert d.promote is True
    assert d.candidate == 0.23 and d.champion == 0.2
    assert "0.2300" in d.reason and "0.2000" in d.reason and "0.2200" in d.reason


def test_better_but_not_by_margin_is_not_promoted():
    d = gate_decision("ndcg@10", 0.2100, 0.2000, 0.10)
    assert d.promote is False
    assert "0.2100" in d.reason and "0.2000" in d.reason
    assert "10.0%" in d.reason


@pytest.mark.parametrize("margin", [0.0, 0.05])
def test_worse_is_not_promoted_and_reason_names_both_values(margin):
    d = gate_decision("hitrate@10", 0.1800, 0.2500, margin)
    assert d.promote is False
    assert "hitrate@10=0.1800" in d.reason
    assert "champion 0.2500" in d.reason
    assert "does not beat" in d.reason


def test_tie_with_zero_margin_keeps_the_champion():
    # A rerun of the same training must not move the alias (and so change the nightly table).
    d = gate_decision("ndcg@10", 0.25, 0.25, 0.0)
    assert d.promote is False


def test_tie_with_positive_margin_is_not_promoted():
    d = gate_decision("ndcg@10", 0.25, 0.25, 0.01)
    assert d.promote is False


def test_margin_is_strict():
    # Exactly at the required value is not enough when a margin is asked for.
    d = gate_decision("ndcg@10", 0.5, 0.25, 1.0)  # required = 0.5
    assert d.promote is False
    assert gate_decision("ndcg@10", 0.5001, 0.25, 1.0).promote is True


def test_zero_margin_slightly_worse_is_not_promoted():
    assert gate_decision("ndcg@10", 0.2499, 0.25, 0.0).promote is False


def test_decision_is_immutable():
    d = gate_decision("ndcg@10", 0.3, 0.2, 0.0)
    with pytest.raises(AttributeError):
        d.promote = False  # type: ignore[misc]


def test_negative_margin_tolerates_a_small_regression():
    assert gate_decision("ndcg@10", 0.245, 0.25, -0.05).promote is True
    assert gate_decision("ndcg@10", 0.20, 0.25, -0.05).promote is False


def test_a_champion_of_newer_events_keeps_its_place_unscored():
    d = newer_champion_decision("ndcg@10", 0.3, date(1998, 3, 31), date(1998, 4, 22))
    assert d.promote is False and d.champion is None and d.candidate == 0.3
    assert "up to 1998-04-22, after this run's 1998-03-31" in d.reason and "ndcg@10=0.3000" in d.reason
