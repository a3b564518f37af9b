"""Fitting the sequence model's item-item term (models.item_item) after training: its factors on the
training histories, its weights and history decay on the validation split the training stopped on."""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict

import numpy as np
import torch

from recsys_core.config import TrainSettings
from recsys_core.evaluation.metrics import metrics_from_ranks, target_ranks
from recsys_core.evaluation.sampling import sample_rows
from recsys_core.models.baselines import history_matrix
from recsys_core.models.item_item import cold_item_donors, item_item_factors, transition_weights
from recsys_core.models.transformer import SeqRec
from recsys_core.training.dataset import HeldOutSplit
from recsys_core.training.loop import held_out_scorer, held_out_users

log = logging.getLogger(__name__)

METRIC = "ndcg@10"
BATCH = 512


def _term_parts(
    model: SeqRec, histories: list[np.ndarray], settings: TrainSettings, decays: list[float]
) -> tuple[np.ndarray, np.ndarray, dict[float, np.ndarray], int]:
    """The term's parts fitted on ``histories``: EASE's history and item sides, the transitions' history
    side per decay (an empty [n_items + 1, 0] for a part that is off), and how many items with no events
    in ``histories`` took their closest item's columns (``cold_item_donors``)."""
    config = model.config
    n_items = config.n_items
    empty = np.zeros((n_items + 1, 0), np.float32)
    ease_in, ease_out = (
        item_item_factors(history_matrix(histories, n_items), settings.ease_lambda, config.item_item_rank)
        if config.item_item_rank
        else (empty, empty)
    )
    transitions = (
        transition_weights(histories, n_items, settings.model.item_item_transition_lambda, decays, config.max_len)
        if config.item_item_transitions
        else dict.fromkeys(decays, empty)
    )
    counts = np.bincount(np.concatenate(histories), minlength=n_items + 1)[1:] if histories else np.zeros(n_items, np.int64)
    cold, donors = cold_item_donors(model.item_content[1:].double().numpy(), counts)
    ease_out[1 + cold] = ease_out[1 + donors]  # EASE's item side: one row per item
    for transition_in in transitions.values() if config.item_item_transitions else ():
        transition_in[:, cold] = transition_in[:, donors]  # the transitions' item side is the identity: one column each
    return ease_in, ease_out, transitions, len(cold)


def fit_item_item(
    model: SeqRec,
    histories: list[np.ndarray],
    valid: HeldOutSplit,
    trend_table: torch.Tensor,
    settings: TrainSettings,
    refit_on: list[np.ndarray] | None = None,
) -> dict[str, float] | None:
    """Install the item-item factors of ``histories`` (the training sequences, 1-based items) in
    ``model`` with the weights of its parts (EASE's from ``settings.model.item_item_weights``, the
    transitions' from ``item_item_transition_weights``) and the history decay (``item_item_decays``)
    that rank the validation targets best: on a tie the smallest weights, so weight 0 (the
    transformer alone) wherever a part does not help. Returns the chosen weights and decay with the
    validation NDCG@10 with and without the term; None when the model has none.

    ``refit_on``: the histories the installed factors are then fitted on, with the chosen weights and
    decay; the validation targets may be in them, the targets the model is then scored on must not.
    Each user's newest events say the most of what comes next, and the term costs seconds to fit,
    unlike the transformer, so they are not left out of it once the weights are chosen.

    The score is linear in each part's weight, so every combination is scored from three score
    matrices per decay (without the term, with each part at weight 1) instead of encoding the
    validation histories once per combination."""
    config = model.config
    if not config.item_item_width:
        return None
    started = time.monotonic()
    knobs = settings.model
    decays = sorted(set(knobs.item_item_decays), reverse=True)
    ease_in, ease_out, transitions, cold = _term_parts(model, histories, settings, decays)
    ease_grid = sorted(set(knobs.item_item_weights) | {0.0}) if config.item_item_rank else [0.0]
    transition_grid = sorted(set(knobs.item_item_transition_weights) | {0.0}) if config.item_item_transitions else [0.0]

    def install(ease_weight: float, transition_weight: float, decay: float) -> None:
        # The weights are folded into the history side; the model's own weight switches the term on.
        item_in = np.hstack([ease_weight * ease_in, transition_weight * transitions[decay]])
        on = float(ease_weight > 0 or transition_weight > 0)
        model.set_item_item(torch.from_numpy(item_in), torch.from_numpy(ease_out), on, decay)

    install(0.0, 0.0, decays[0])
    # The item side is the same for every combination, and the scorer reads the model's history side when called.
    scorer = held_out_scorer(model, valid, trend_table, torch.device("cpu"), BATCH)

    def scores(ease_weight: float, transition_weight: float, decay: float, users: np.ndarray) -> np.ndarray:
        install(ease_weight, transition_weight, decay)
        return scorer(users)

    rows = sample_rows(np.arange(len(valid.targets)), settings.max_validation_users, settings.seed)
    rows, targets, seen = held_out_users(model, valid, rows)
    ranks: dict[tuple[float, float, float], list[np.ndarray]] = defaultdict(list)
    for start in range(0, len(rows), BATCH):
        part = slice(start, start + BATCH)
        base = scores(0.0, 0.0, decays[0], rows[part])
        for decay in decays:
            ease_part = scores(1.0, 0.0, decay, rows[part]) - base if config.item_item_rank else 0.0
            transition_part = scores(0.0, 1.0, decay, rows[part]) - base if config.item_item_transitions else 0.0
            for ease_weight, transition_weight in itertools.product(ease_grid, transition_grid):
                if ease_weight == transition_weight == 0.0 and decay != decays[0]:
                    continue  # without the term: the same for every decay
                combined = base + ease_weight * ease_part + transition_weight * transition_part
                ranks[(ease_weight, transition_weight, decay)].append(target_ranks(combined, targets[part], exclude=seen[part]))
    scored = {knob: metrics_from_ranks(np.concatenate(r), (10,)).get(METRIC, 0.0) for knob, r in ranks.items()}
    best = max(scored, key=lambda knob: (scored[knob], -knob[0], -knob[1])) if scored else (0.0, 0.0, decays[0])
    ease_weight, transition_weight, decay = best
    fitted_on = histories if refit_on is None else refit_on
    if refit_on is not None:
        ease_in, ease_out, transitions, cold = _term_parts(model, refit_on, settings, [decay])
    install(ease_weight, transition_weight, decay)
    without = scored.get((0.0, 0.0, decays[0]), 0.0)
    log.info(
        "item-item term: EASE rank %d weight %g, transitions weight %g, decay %g chosen on %d validation users "
        "(%s %.4f, without it %.4f), fitted on %d events, in %.1fs; %d items with no events take their closest item's columns",
        config.item_item_rank,
        ease_weight,
        transition_weight,
        decay,
        len(rows),
        METRIC,
        scored.get(best, 0.0),
        without,
        sum(len(h) for h in fitted_on),
        time.monotonic() - started,
        cold,
    )
    return {
        "weight": ease_weight,
        "transition_weight": transition_weight,
        "decay": decay,
        "cold_items": float(cold),
        f"valid_{METRIC}": scored.get(best, 0.0),
        f"valid_{METRIC}_without": without,
    }
