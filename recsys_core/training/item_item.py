"""Fitting the sequence model's item-item term (models.item_item) after training: its factors on the
training histories, its weight on the validation split the training stopped on."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from recsys_core.config import TrainSettings
from recsys_core.evaluation.sampling import sample_rows
from recsys_core.models.baselines import history_matrix
from recsys_core.models.item_item import item_item_factors
from recsys_core.models.transformer import SeqRec
from recsys_core.training.dataset import HeldOutSplit
from recsys_core.training.loop import evaluate_split

log = logging.getLogger(__name__)

METRIC = "ndcg@10"


def fit_item_item(
    model: SeqRec, histories: list[np.ndarray], valid: HeldOutSplit, trend_table: torch.Tensor, settings: TrainSettings
) -> dict[str, float] | None:
    """Install the item-item factors of ``histories`` (the training sequences, 1-based items) in
    ``model`` with the weight and history decay (``settings.model.item_item_weights`` x
    ``item_item_decays``) that rank the validation targets best: on a tie the smallest weight, so
    weight 0 (the transformer alone) wherever the term does not help. Returns the chosen weight and
    decay with the validation NDCG@10 with and without the term; None when the model has none."""
    if not model.config.item_item_rank:
        return None
    started = time.monotonic()
    factors = item_item_factors(
        history_matrix(histories, model.config.n_items), settings.ease_lambda, model.config.item_item_rank
    )
    item_in, item_out = (torch.from_numpy(f) for f in factors)
    rows = sample_rows(np.arange(len(valid.targets)), settings.max_validation_users, settings.seed)

    def validation_ndcg(weight: float, decay: float) -> float:
        model.set_item_item(item_in, item_out, weight, decay)
        return evaluate_split(model, valid, rows, (10,), torch.device("cpu"), trend_table).get(METRIC, 0.0)

    decays = sorted(set(settings.model.item_item_decays), reverse=True)
    scored = {(0.0, decays[0]): validation_ndcg(0.0, decays[0])}  # without the term: the same for every decay
    for weight in sorted(set(settings.model.item_item_weights) - {0.0}):
        for decay in decays:
            scored[(weight, decay)] = validation_ndcg(weight, decay)
    weight, decay = max(scored, key=lambda knobs: (scored[knobs], -knobs[0]))
    model.set_item_item(item_in, item_out, weight, decay)
    without = scored[(0.0, decays[0])]
    log.info(
        "item-item term: rank %d, weight %g, decay %g chosen on %d validation users (%s %.4f, without it %.4f) in %.1fs",
        model.config.item_item_rank,
        weight,
        decay,
        int((valid.targets[rows] > 0).sum()),
        METRIC,
        scored[(weight, decay)],
        without,
        time.monotonic() - started,
    )
    return {
        "weight": weight,
        "decay": decay,
        f"valid_{METRIC}": scored[(weight, decay)],
        f"valid_{METRIC}_without": without,
    }
