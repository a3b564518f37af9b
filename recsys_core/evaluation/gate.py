"""The promotion gate: pure decision logic, applied to the registry by io.registry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    candidate: float
    champion: float | None


def gate_decision(metric: str, candidate: float, champion: float | None, min_relative_improvement: float) -> GateDecision:
    """Promote when there is no champion, or the candidate beats it by the relative margin."""
    if champion is None:
        return GateDecision(True, f"no champion yet; candidate {metric}={candidate:.4f}", candidate, None)
    required = champion * (1.0 + min_relative_improvement)
    # Strictly better: a tie keeps the champion, so rerunning the same training changes nothing downstream.
    if candidate > required:
        return GateDecision(
            True,
            f"candidate {metric}={candidate:.4f} beats champion {champion:.4f} (needed > {required:.4f})",
            candidate,
            champion,
        )
    return GateDecision(
        False,
        f"candidate {metric}={candidate:.4f} does not beat champion {champion:.4f} "
        f"by the required {min_relative_improvement:.1%} (needed > {required:.4f})",
        candidate,
        champion,
    )


def newer_champion_decision(metric: str, candidate: float, as_of: date, champion_as_of: date) -> GateDecision:
    """The gate when the champion was trained on events after this run's ``as_of`` (a backfill run
    after a later one): it keeps the alias, unscored. This run's held-out events were in the
    champion's training data, so its score on them would be leaked, and a model of older events
    does not replace one of newer events."""
    return GateDecision(
        False,
        f"the champion was trained on events up to {champion_as_of}, after this run's {as_of}: it keeps its place "
        f"(its {metric} on this run's held-out events would count events it trained on); candidate {metric}={candidate:.4f}",
        candidate,
        None,
    )
