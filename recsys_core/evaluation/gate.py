"""The promotion gate: pure decision logic, applied to the registry by io.registry."""

from __future__ import annotations

from dataclasses import dataclass


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
