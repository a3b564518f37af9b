"""recsys_core.models.scorer: the one score, its per-user trend and its matrix-product form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_core.config import ModelSettings
from recsys_core.models.inputs import ModelInputs
from recsys_core.models.scorer import Scorer
from recsys_core.models.transformer import GAP_BUCKETS, SeqRec, SeqRecConfig

N_USERS, N_ITEMS, L, D, WINDOWS = 7, 12, 6, 8, (7, 30)


def random_model(use_query_gap: bool) -> SeqRec:
    torch.manual_seed(0)
    settings = ModelSettings(max_len=L, d_model=D, n_layers=1, dropout=0.0, use_content=False, use_query_gap=use_query_gap)
    config = SeqRecConfig.from_settings(settings, N_ITEMS, user_cardinalities=(3,), trend_windows=WINDOWS)
    model = SeqRec(config).eval()
    with torch.no_grad():  # trained weights are not zero: make every term of the score count
        model.trend_weights.normal_()
        if model.trend_by_gap is not None:
            model.trend_by_gap.normal_()
    install_item_item(model)
    return model


def install_item_item(model: SeqRec, weight: float = 0.7) -> None:
    """Random item-item factors (row 0, the padding item, zero), so that every form of the score carries the term."""
    gen = torch.Generator().manual_seed(9)
    item_in = torch.randn(model.config.n_items + 1, model.config.item_item_width, generator=gen)
    item_out = torch.randn(model.config.n_items + 1, model.config.item_item_rank, generator=gen)
    item_in[0] = item_out[0] = 0.0
    model.set_item_item(item_in, item_out, weight)


def random_inputs() -> ModelInputs:
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(1, N_ITEMS + 1, (N_USERS, L), generator=gen)
    items[0] = 0  # a user with no history yet
    items[1, :3] = 0
    gaps = torch.randint(1, GAP_BUCKETS, (N_USERS, L), generator=gen) * (items > 0)
    query_gaps = torch.randint(1, GAP_BUCKETS, (N_USERS, L), generator=gen) * (items > 0)
    user_feats = torch.randint(0, 3, (N_USERS, 1), generator=gen)
    return ModelInputs(items, gaps, query_gaps, user_feats)


@pytest.mark.parametrize("use_query_gap", [False, True])
def test_matrix_product_form_equals_the_score(use_query_gap):
    model = random_model(use_query_gap)
    trend = torch.rand(N_ITEMS, len(WINDOWS), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        scorer = Scorer(model, random_inputs(), model.output_vectors()[1:], trend, batch=3)
    rows = np.array([4, 0, 2, 6])
    product = scorer.user_vectors(rows) @ scorer.item_matrix().T
    torch.testing.assert_close(product, scorer.scores(rows), rtol=1e-5, atol=1e-5)
    assert scorer.user_vectors(rows).shape == (4, model.state_width + len(WINDOWS))
    assert model.state_width == D + model.config.item_item_width > D


def test_score_is_the_models_own_with_each_users_trend_snapshot():
    model = random_model(use_query_gap=True)
    inputs = random_inputs()
    table = torch.rand(3, N_ITEMS + 1, len(WINDOWS), generator=torch.Generator().manual_seed(3))
    snapshot = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    with torch.no_grad():
        scorer = Scorer(model, inputs, model.output_vectors()[1:], table[:, 1:], snapshot)
        hidden = model.last_hidden(inputs.items, inputs.gaps, inputs.user_feats, inputs.query_gaps)
        expected = model.scores(hidden, table[snapshot], inputs.query_gaps[:, -1])[:, 1:]
    np.testing.assert_allclose(scorer(np.arange(N_USERS)), expected.numpy(), rtol=1e-5, atol=1e-5)
    # A calibration applied after the scorer was built counts.
    model.shift_trend_weight(torch.arange(GAP_BUCKETS), 1.0)
    assert not np.allclose(scorer(np.arange(N_USERS)), expected.numpy())


def test_without_a_trend_the_score_is_the_dot_product():
    model = random_model(use_query_gap=False)
    inputs = random_inputs()
    with torch.no_grad():
        scorer = Scorer(model, inputs, model.output_vectors()[1:])
        hidden = model.last_hidden(inputs.items, inputs.gaps, inputs.user_feats, inputs.query_gaps)
        expected = hidden @ model.output_vectors()[1:].T
    rows = np.arange(N_USERS)
    np.testing.assert_allclose(scorer(rows), expected.numpy(), rtol=1e-5, atol=1e-5)
    width = model.state_width
    assert scorer.user_vectors(rows).shape == (N_USERS, width) and scorer.item_matrix().shape == (N_ITEMS, width)


def random_affine(n: int = N_ITEMS) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return torch.rand(n, generator=gen) + 0.5, torch.randn(n, generator=gen)


@pytest.mark.parametrize("with_trend", [False, True])
def test_an_item_adjustment_changes_every_form_of_the_score_alike(with_trend):
    model = random_model(use_query_gap=True)
    inputs = random_inputs()
    trend = torch.rand(N_ITEMS, len(WINDOWS), generator=torch.Generator().manual_seed(2)) if with_trend else None
    scale, offset = random_affine()
    with torch.no_grad():
        raw = Scorer(model, inputs, model.output_vectors()[1:], trend)
        adjusted = Scorer(model, inputs, model.output_vectors()[1:], trend, item_affine=(scale, offset))
    rows = np.array([5, 0, 3])
    expected = raw.scores(rows) * scale + offset
    torch.testing.assert_close(adjusted.scores(rows), expected, rtol=1e-5, atol=1e-5)
    # The matrix-product form (the nightly engines) carries the offset as one more column.
    torch.testing.assert_close(adjusted.user_vectors(rows) @ adjusted.item_matrix().T, expected, rtol=1e-5, atol=1e-5)
    assert adjusted.user_vectors(rows).shape[1] == raw.user_vectors(rows).shape[1] + 1
    # Scores of a few columns per user (the reasons) and a scorer over other inputs keep it.
    columns = torch.tensor([[0, 4], [11, 2], [7, 7]])
    torch.testing.assert_close(adjusted.scores_of(rows, columns), expected.gather(1, columns), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adjusted.with_inputs(inputs).scores(rows), expected, rtol=1e-5, atol=1e-5)
