"""recsys_core.models.transformer: losses, causality, padding, content path, time buckets."""

from __future__ import annotations

import math

import pytest
import torch

from recsys_core.config import ModelSettings
from recsys_core.models.transformer import GAP_BUCKETS, SeqRec, SeqRecConfig, gap_buckets

N_ITEMS, L, D = 20, 8, 16


def config(trend_windows: tuple[int, ...] = (), **settings) -> SeqRecConfig:
    base = {"max_len": L, "d_model": D, "n_heads": 2, "n_layers": 2, "dropout": 0.0, "use_query_gap": False, "n_negatives": 8}
    model = ModelSettings(**{**base, **settings})
    return SeqRecConfig.from_settings(model, N_ITEMS, content_dim=3, user_cardinalities=(4, 3), trend_windows=trend_windows)


def content() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(N_ITEMS + 1, 3, generator=gen)
    c[0] = 0
    return c


def model_for(cfg: SeqRecConfig, seed: int = 0) -> SeqRec:
    torch.manual_seed(seed)
    return SeqRec(cfg, content() if cfg.content_dim else None)


def batch():
    items = torch.tensor(
        [
            [0, 0, 0, 3, 5, 7, 2, 9],
            [1, 2, 3, 4, 5, 6, 7, 8],
            [0, 0, 0, 0, 0, 0, 0, 4],  # one event: no target inside the sequence
        ]
    )
    targets = torch.zeros_like(items)
    targets[:, :-1] = items[:, 1:]
    targets[items == 0] = 0
    targets[0, -1], targets[1, -1] = 11, 12
    gaps = torch.randint(0, GAP_BUCKETS, items.shape, generator=torch.Generator().manual_seed(2))
    gaps[items == 0] = 0
    user_feats = torch.tensor([[1, 2], [3, 0], [0, 1]])
    return items, gaps, user_feats, targets


@pytest.fixture
def no_fastpath():
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(previous)


def test_config_round_trip():
    cfg = config()
    again = SeqRecConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert isinstance(again.user_cardinalities, tuple)
    # As after a JSON round trip, where tuples become lists.
    assert SeqRecConfig.from_dict({**cfg.to_dict(), "user_cardinalities": [4, 3]}) == cfg


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_forward_returns_finite_scalar_loss_with_gradients(loss):
    model = model_for(config(loss=loss))
    model.train()
    items, gaps, user_feats, targets = batch()
    value = model(items, gaps, user_feats, targets)
    assert value.dim() == 0
    assert torch.isfinite(value)
    assert value.item() > 0
    value.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.item_embedding.weight.grad.abs().sum() > 0


def test_full_loss_equals_cross_entropy_over_catalogue():
    model = model_for(config()).eval()
    items, gaps, user_feats, targets = batch()
    with torch.no_grad():
        loss = model(items, gaps, user_feats, targets)
        hidden = model.encode(items, gaps, user_feats)
        logits = model.score_items(hidden[targets > 0], model.item_matrix(), None, None)
        logits[:, 0] = -math.inf
        expected = torch.nn.functional.cross_entropy(logits, targets[targets > 0])
    torch.testing.assert_close(loss, expected)


def test_sampled_loss_with_popularity_log_probs():
    model = model_for(config(loss="sampled"))
    items, gaps, user_feats, targets = batch()
    probs = torch.arange(N_ITEMS + 1, dtype=torch.float32)
    log_q = torch.log(probs / probs.sum())  # log(0) = -inf for padding: never sampled
    value = model(items, gaps, user_feats, targets, item_log_prob=log_q)
    assert value.dim() == 0 and torch.isfinite(value)


def test_sampling_log_prob_is_target_frequency_plus_one():
    targets = torch.tensor([[0, 3, 3, 5], [0, 0, 3, 1]])
    log_q = SeqRec.sampling_log_prob(targets, 5)
    counts = torch.tensor([0.0, 2, 1, 4, 1, 2])  # items 1..5: target counts + 1; padding never drawn
    torch.testing.assert_close(log_q.exp(), counts / counts.sum())
    assert log_q[0] == -math.inf


def test_sampled_loss_is_logq_corrected_softmax_over_the_drawn_items(no_fastpath):
    """The loss by hand: per position, softmax over [positive, drawn negatives other than it], each
    logit = h . item + trend prior - log Q(item); the mean over positions."""
    model = model_for(config(loss="sampled", trend_windows=(7, 30))).eval()
    with torch.no_grad():
        model.trend_weights.copy_(torch.tensor([0.5, -0.25]))
    items, gaps, user_feats, targets = batch()
    gen = torch.Generator().manual_seed(3)
    trend_table = torch.rand(4, N_ITEMS + 1, 2, generator=gen)
    trend_rows = torch.randint(0, 4, items.shape, generator=gen)
    log_q = SeqRec.sampling_log_prob(targets, N_ITEMS)
    torch.manual_seed(5)
    with torch.no_grad():
        loss = model(items, gaps, user_feats, targets, trend_table=trend_table, trend_rows=trend_rows, item_log_prob=log_q)
        torch.manual_seed(5)
        negatives = torch.multinomial(log_q.exp(), model.config.n_negatives, replacement=True).tolist()
        hidden = model.encode(items, gaps, user_feats)
        table = model.item_matrix()
        nlls = []
        for b, t in zip(*torch.nonzero(targets > 0, as_tuple=True)):
            y = int(targets[b, t])
            candidates = [y] + [n for n in negatives if n != y]
            logits = torch.stack(
                [hidden[b, t] @ table[c] + trend_table[trend_rows[b, t], c] @ model.trend_weights - log_q[c] for c in candidates]
            )
            nlls.append(torch.logsumexp(logits, 0) - logits[0])
    assert len(set(negatives)) > 1
    torch.testing.assert_close(loss, torch.stack(nlls).mean(), rtol=1e-5, atol=1e-5)


def test_padding_item_never_predicted_by_full_loss():
    model = model_for(config()).eval()
    items, gaps, user_feats, targets = batch()
    with torch.no_grad():
        model.item_embedding.weight[0] = 100.0  # would dominate if index 0 were scored
        loss = model(items, gaps, user_feats, targets)
    assert torch.isfinite(loss)


def test_causal_later_items_do_not_change_earlier_states(no_fastpath):
    model = model_for(config()).eval()
    items, gaps, user_feats, _ = batch()
    changed = items.clone()
    changed[1, 5] = 17  # was 6
    with torch.no_grad():
        h = model.encode(items, gaps, user_feats)
        h2 = model.encode(changed, gaps, user_feats)
    torch.testing.assert_close(h2[:, :5], h[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(h2[1, 5:], h[1, 5:], atol=1e-4)  # the change does reach later positions
    torch.testing.assert_close(h2[[0, 2]], h[[0, 2]], rtol=0, atol=1e-6)  # and no other row


def test_causal_in_training_mode_without_dropout():
    model = model_for(config()).train()  # dropout=0.0: deterministic, but the fast path is not taken
    items, gaps, user_feats, _ = batch()
    changed = items.clone()
    changed[0, 6] = 19
    with torch.no_grad():
        h = model.encode(items, gaps, user_feats)
        h2 = model.encode(changed, gaps, user_feats)
    torch.testing.assert_close(h2[:, :6], h[:, :6], rtol=0, atol=1e-6)


def test_left_padded_and_empty_histories_give_finite_outputs(no_fastpath):
    model = model_for(config()).eval()
    items = torch.tensor([[0] * L, [0] * (L - 1) + [5], [0] * (L - 2) + [5, 6]])
    gaps = torch.zeros_like(items)
    user_feats = torch.tensor([[1, 1], [0, 0], [3, 2]])
    hidden = model.encode(items, gaps, user_feats)
    assert torch.isfinite(hidden).all()
    last = model.last_hidden(items, gaps, user_feats)
    assert last.shape == (3, model.state_width)
    scores = model.scores(last)
    assert scores.shape == (3, N_ITEMS + 1)
    assert torch.isfinite(scores).all()
    # A user with no history is still scored from their features: different features, different scores.
    other = model.last_hidden(items[:1], gaps[:1], torch.tensor([[2, 2]]))
    assert not torch.allclose(other, last[:1])


def test_shorter_sequences_than_max_len(no_fastpath):
    model = model_for(config()).eval()
    items = torch.tensor([[0, 4, 5]])
    hidden = model.encode(items, torch.zeros_like(items), torch.tensor([[1, 1]]))
    assert hidden.shape == (1, 3, D) and torch.isfinite(hidden).all()


def test_content_gives_an_item_without_id_embedding_a_real_score(no_fastpath):
    model = model_for(config()).eval()
    cold = 13
    with torch.no_grad():
        model.item_embedding.weight[cold] = 0.0
    assert model.item_matrix()[cold].abs().sum() > 0
    items, gaps, user_feats, _ = batch()
    with torch.no_grad():
        scores = model.scores(model.last_hidden(items, gaps, user_feats))
    assert torch.isfinite(scores[:, cold]).all()
    assert scores[:, cold].std() > 1e-4  # varies with the user: not a constant

    # Control: without content the same item has no representation and scores 0 for everyone.
    plain = model_for(config(use_content=False)).eval()
    with torch.no_grad():
        plain.item_embedding.weight[cold] = 0.0
        plain_scores = plain.scores(plain.last_hidden(items, gaps, user_feats))
    assert torch.all(plain_scores[:, cold] == 0)


def test_content_is_a_saved_buffer_not_a_parameter():
    model = model_for(config())
    assert "item_content" in model.state_dict()
    assert all(p is not model.item_content for p in model.parameters())
    torch.testing.assert_close(model.item_content, content())


def test_gap_buckets_monotone_and_bounded():
    seconds = torch.tensor([-5, 0, 30, 59, 60, 61, 119, 120, 3600, 86_400, 7 * 86_400, 365 * 86_400, 10**12])
    buckets = gap_buckets(seconds)
    assert buckets.dtype == torch.long
    assert torch.all(buckets[1:] >= buckets[:-1])
    assert buckets.min() >= 1 and buckets.max() <= GAP_BUCKETS - 1
    assert buckets[0] == buckets[1] == 1  # negative gaps clamp to zero
    assert buckets[4] == 2  # one minute: 1 + floor(log2(2))
    assert buckets[-1] == GAP_BUCKETS - 1  # absurd gaps saturate
    dense = gap_buckets(torch.arange(0, 10**7, 997))
    assert torch.all(dense[1:] >= dense[:-1])
    assert len(torch.unique(dense)) > 10


def test_inference_fast_path_agrees_with_reference_path():
    # Nightly scoring runs in eval mode under no_grad, where PyTorch may take the fused fast path.
    model = model_for(config()).eval()
    items, gaps, user_feats, _ = batch()
    previous = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(True)
        fast = model.last_hidden(items, gaps, user_feats)
        torch.backends.mha.set_fastpath_enabled(False)
        slow = model.last_hidden(items, gaps, user_feats)
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_future_targets_add_their_weighted_cross_entropy():
    items, gaps, user_feats, targets = batch()
    model = model_for(config(future_weight=2.0, future_samples=2)).eval()
    future = torch.stack([targets, torch.where(targets > 0, 5, 0)], dim=-1)  # the target itself, and item 5
    loss = model(items, gaps, user_feats, targets, future=future)
    hidden = model.encode(items, gaps, user_feats)[targets > 0]
    logits = model.score_items(hidden, model.item_matrix(), None, None)
    logits[:, 0] = float("-inf")
    nll_next = torch.nn.functional.cross_entropy(logits, targets[targets > 0], reduction="none")
    nll_five = torch.nn.functional.cross_entropy(logits, torch.full_like(targets[targets > 0], 5), reduction="none")
    # weights 1 (next item), then 2/2 per future sample, normalised to sum to one
    expected = ((nll_next + nll_next + nll_five) / 3).mean()
    torch.testing.assert_close(loss, expected)
    # Weight 0 is the plain next-item loss.
    plain = model_for(config(future_weight=0.0)).eval()
    torch.testing.assert_close(plain(items, gaps, user_feats, targets, future=future), plain(items, gaps, user_feats, targets))


def test_recency_is_embedded_and_scales_the_trend_prior(no_fastpath):
    items, gaps, user_feats, _ = batch()
    model = model_for(config(trend_windows=(7, 30), use_query_gap=True)).eval()
    with torch.no_grad():
        model.trend_weights.copy_(torch.tensor([0.5, 0.25]))
        model.trend_by_gap[20] = torch.tensor([1.0, 2.0])
    trend = torch.rand(len(items), N_ITEMS + 1, 2, generator=torch.Generator().manual_seed(3))
    soon = torch.where(items > 0, 1, 0)
    later = soon.clone()
    later[:, -1] = 20  # the prediction is made long after the last event
    h_soon, h_later = model.last_hidden(items, gaps, user_feats, soon), model.last_hidden(items, gaps, user_feats, later)
    assert not torch.allclose(h_soon, h_later)  # recency reaches the user representation
    torch.testing.assert_close(model.trend_bias(trend, soon[:, -1]), trend @ torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(model.trend_bias(trend, later[:, -1]), trend @ torch.tensor([1.5, 2.25]))
    # Without recency the model ignores query gaps entirely.
    plain = model_for(config(trend_windows=(7, 30))).eval()
    torch.testing.assert_close(
        plain.last_hidden(items, gaps, user_feats, soon), plain.last_hidden(items, gaps, user_feats, later)
    )
    torch.testing.assert_close(plain.trend_bias(trend, soon[:, -1]), plain.trend_bias(trend, later[:, -1]))


def test_step_weights_weigh_each_position_loss():
    items, gaps, user_feats, targets = batch()
    model = model_for(config()).eval()
    valid = targets > 0
    logits = model.score_items(model.encode(items, gaps, user_feats)[valid], model.item_matrix(), None, None)
    logits[:, 0] = float("-inf")
    nll = torch.nn.functional.cross_entropy(logits, targets[valid], reduction="none")
    weights = torch.rand(items.shape, generator=torch.Generator().manual_seed(4))
    expected = (nll * weights[valid]).sum() / weights[valid].sum()
    torch.testing.assert_close(model(items, gaps, user_feats, targets, step_weights=weights), expected)
    ones = torch.ones(items.shape)
    torch.testing.assert_close(
        model(items, gaps, user_feats, targets, step_weights=ones), model(items, gaps, user_feats, targets)
    )


@pytest.mark.parametrize("fastpath", [True, False])
def test_a_pass_over_the_changed_end_equals_encoding_the_whole_sequence(fastpath):
    """Sequences that share their first s positions: the saved layer states of one, then a pass over
    the other's last L - s positions, give the other's last hidden state (whatever path encodes it)."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        cfg = config(use_query_gap=True)
        model = model_for(cfg).eval()
        with torch.no_grad():
            for parameter in model.parameters():  # weights as large as trained ones, so errors would show
                parameter.mul_(4.0)
        items, gaps, user_feats, _ = batch()
        query_gaps = torch.randint(1, GAP_BUCKETS, items.shape, generator=torch.Generator().manual_seed(3)) * (items > 0)
        saved, last = model.layer_states(items, gaps, user_feats, query_gaps)
        assert len(saved) == cfg.n_layers
        assert torch.allclose(last, model.last_hidden(items, gaps, user_feats, query_gaps), atol=1e-5)
        for shared in range(L):
            other = [t.clone() for t in (items, gaps, query_gaps)]
            for tensor in other:  # a different end from position `shared` on
                tensor[:, shared:] = torch.roll(tensor[:, shared:], 1, dims=1).flip(1)
            other[0][:, shared:] = (other[0][:, shared:] % N_ITEMS) + 1
            prefix = [(key[:, :shared], value[:, :shared]) for key, value in saved]
            got = model.last_hidden_after(prefix, other[0], other[1], user_feats, other[2])
            want = model.last_hidden(other[0], other[1], user_feats, other[2])
            assert torch.allclose(got, want, atol=1e-4), shared
            if shared:  # the saved beginning matters: another user's gives another state
                wrong = [(key.roll(1, dims=0), value.roll(1, dims=0)) for key, value in prefix]
                wrong_state = model.last_hidden_after(wrong, other[0], other[1], user_feats, other[2])
                assert not torch.allclose(wrong_state, want, atol=1e-3)
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def test_item_matrix_without_gradients_follows_every_change_of_the_weights():
    model = model_for(config())
    assert model.content_projection is not None

    def fresh() -> torch.Tensor:
        return model.item_embedding.weight + model.content_projection(model.item_content)

    with torch.no_grad():
        first = model.item_matrix()
        assert model.item_matrix() is first  # kept between inference batches
        torch.testing.assert_close(first, fresh())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.item_matrix().sum().backward()  # with gradients: computed afresh, and differentiable
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(model.item_matrix(), fresh())
        model.load_state_dict(model_for(config(), seed=3).state_dict())
        torch.testing.assert_close(model.item_matrix(), fresh())
        assert not torch.equal(model.item_matrix(), first)
