"""recsys_core.models.attribution: leave-one-out reasons, checked against re-scoring the whole catalogue.

- a variant encodes exactly like the full history minus one event (gaps and recency measured again),
- each reason and its drop equal what removing that event and scoring the whole catalogue gives,
- faithfulness on a trained model: removing the reason item lowers the item's score for >= 90% of rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_core.config import ModelSettings
from recsys_core.models.attribution import MIN_DROP, explain, leave_one_out
from recsys_core.models.inputs import encode
from recsys_core.models.scorer import Scorer
from recsys_core.models.transformer import SeqRec, SeqRecConfig
from tests.models.test_scorer import install_item_item

N_ITEMS, L, D, WINDOWS = 30, 8, 16, (7, 30)
NOW = 10_000_000


def histories(n_users: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Histories of 0..2L distinct items (some longer than the model reads), times increasing."""
    rng = np.random.default_rng(seed)
    items, times = [], []
    for user in range(n_users):
        length = 0 if user == 0 else int(rng.integers(1, 2 * L + 1))
        items.append(rng.permutation(np.arange(1, N_ITEMS + 1))[:length].astype(np.int64))
        times.append(np.sort(rng.integers(0, NOW, size=length)).astype(np.int64))
    return items, times


def model_with(trend: bool) -> SeqRec:
    torch.manual_seed(0)
    settings = ModelSettings(max_len=L, d_model=D, n_layers=1, dropout=0.0, use_content=False)
    config = SeqRecConfig.from_settings(settings, N_ITEMS, user_cardinalities=(3,), trend_windows=WINDOWS if trend else ())
    model = SeqRec(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # larger than the init, as trained weights are
            parameter.mul_(8.0)
        if model.trend_by_gap is not None:
            model.trend_by_gap.normal_()
    install_item_item(model)  # a left-out event also leaves the item-item term
    return model


def scorer_of(model: SeqRec, items, times, feats, trend: torch.Tensor | None) -> Scorer:
    with torch.no_grad():
        return Scorer(model, encode(model.config, items, times, feats, NOW), model.output_vectors()[1:], trend, batch=5)


def test_a_variant_encodes_like_the_full_history_minus_that_event():
    config = model_with(trend=False).config
    items, times = histories(12, seed=1)
    var_items, var_times, owner, removed = leave_one_out(items, times, n_last=3, max_len=L)
    assert np.array_equal(np.bincount(owner, minlength=12), [min(len(h), 3) for h in items])
    expected_items, expected_times, expected_removed = [], [], []
    for user in range(12):
        for position in range(max(len(items[user]) - 3, 0), len(items[user])):
            expected_items.append(np.delete(items[user], position))
            expected_times.append(np.delete(times[user], position))
            expected_removed.append(items[user][position])
    assert removed.tolist() == expected_removed
    feats = np.zeros((len(owner), 1), dtype=np.int64)
    got = encode(config, var_items, var_times, feats, NOW)
    want = encode(config, expected_items, expected_times, feats, NOW)
    for name in ("items", "gaps", "query_gaps"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.parametrize("with_trend", [False, True])
def test_reasons_and_drops_equal_rescoring_the_whole_catalogue_without_the_event(with_trend):
    model = model_with(with_trend)
    items, times = histories(9, seed=2)
    feats = np.random.default_rng(3).integers(0, 3, size=(9, 1))
    trend = torch.rand(N_ITEMS, len(WINDOWS), generator=torch.Generator().manual_seed(4)) if with_trend else None
    scorer = scorer_of(model, items, times, feats, trend)
    rows = np.arange(9)
    columns = np.argsort(-scorer(rows), axis=1)[:, :5]
    reason, drop = explain(scorer, model.config, rows, items, times, columns, n_last=4, now=NOW, batch_users=4)
    hidden, _ = scorer.hidden(rows)  # the nightly job hands in its scoring pass's states: the same answer
    reused = explain(scorer, model.config, rows, items, times, columns, n_last=4, now=NOW, batch_users=4, hidden=hidden)
    assert np.array_equal(reused[0], reason) and np.allclose(reused[1], drop, atol=1e-5)

    base = scorer(rows)
    for user in rows:
        positions = list(range(max(len(items[user]) - 4, 0), len(items[user])))
        if not positions:  # nothing to leave out: no reason
            assert (reason[user] == 0).all() and (drop[user] == 0).all()
            continue
        without = [
            scorer_of(model, [np.delete(items[user], p)], [np.delete(times[user], p)], feats[user : user + 1], trend)(
                np.array([0])
            )[0]
            for p in positions
        ]
        lowered = np.stack([base[user] - w for w in without])[:, columns[user]]  # [variants, K]
        for col in range(columns.shape[1]):
            best = lowered[:, col].max()
            if best > MIN_DROP + 1e-4:
                candidates = {int(items[user][positions[i]]) for i in np.flatnonzero(lowered[:, col] >= best - 1e-4)}
                assert reason[user, col] in candidates
                assert drop[user, col] == pytest.approx(best, abs=1e-4)
            elif best < MIN_DROP - 1e-4:
                assert reason[user, col] == 0 and drop[user, col] == 0
    assert (reason > 0).any()


# A trained model ------------------------------------------------------------------------------
CLUSTERS, PER_CLUSTER = 5, 6


def clustered_histories(n_users: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user mostly takes up items of one cluster (items c*PER_CLUSTER+1 ...), a few from others."""
    rng = np.random.default_rng(seed)
    items, times = [], []
    for _ in range(n_users):
        home = rng.integers(CLUSTERS)
        own = home * PER_CLUSTER + 1 + rng.permutation(PER_CLUSTER)[: rng.integers(2, PER_CLUSTER)]
        stray = rng.choice(np.setdiff1d(np.arange(1, N_ITEMS + 1), own), size=rng.integers(0, 3), replace=False)
        seq = rng.permutation(np.concatenate([own, stray])).astype(np.int64)
        items.append(seq)
        times.append(np.cumsum(rng.integers(60, 86_400, size=len(seq))).astype(np.int64))
    return items, times


@pytest.fixture(scope="module")
def trained():
    """A small model trained (full softmax, a few seconds on CPU) to predict the next item of its cluster."""
    torch.manual_seed(0)
    settings = ModelSettings(max_len=L, d_model=D, n_layers=1, dropout=0.0, use_content=False)
    config = SeqRecConfig.from_settings(settings, N_ITEMS, user_cardinalities=(3,))
    model = SeqRec(config)
    items, times = clustered_histories(600, seed=5)
    feats = np.zeros((len(items), 1), dtype=np.int64)
    # Next-item targets at every position: inputs are each history but its last event.
    inputs = encode(config, [h[:-1] for h in items], [t[:-1] for t in times], feats)
    targets = encode(config, [h[1:] for h in items], [t[1:] for t in times], feats).items
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimiser.zero_grad()
        loss = model(inputs.items, inputs.gaps, inputs.user_feats, targets, query_gaps=inputs.query_gaps)
        loss.backward()
        optimiser.step()
    return model.eval(), loss.item()


def test_removing_the_reason_item_lowers_the_score_on_a_trained_model(trained):
    model, loss = trained
    assert loss < np.log(N_ITEMS) - 0.5  # it learned something beyond a uniform guess
    items, times = clustered_histories(120, seed=6)  # users it never saw
    feats = np.zeros((len(items), 1), dtype=np.int64)
    scorer = scorer_of(model, items, times, feats, None)
    rows = np.arange(len(items))
    scores = scorer(rows)
    for user, seen in enumerate(items):
        scores[user, seen - 1] = -np.inf
    columns = np.argsort(-scores, axis=1)[:, :5]
    reason, _ = explain(scorer, model.config, rows, items, times, columns, n_last=10, now=NOW)

    # Check each explained row by the plain path: the history without that item, the whole catalogue scored.
    explained = np.argwhere(reason > 0)
    lowered = 0
    for user, col in explained:
        at = int(np.flatnonzero(items[user] == reason[user, col])[0])
        without = scorer_of(model, [np.delete(items[user], at)], [np.delete(times[user], at)], feats[:1], None)
        lowered += without(np.array([0]))[0, columns[user, col]] < scores[user, columns[user, col]]
    faithfulness = lowered / len(explained)
    coverage = len(explained) / reason.size
    print(f"faithfulness {faithfulness:.3f} over {len(explained)} rows with a reason item; coverage {coverage:.3f}")
    assert faithfulness >= 0.9
    assert coverage >= 0.5  # most rows of users with a history are explained by one of their events
    # Every reason is an item of that user's own history.
    assert all(reason[u, c] in set(items[u].tolist()) for u, c in explained)
