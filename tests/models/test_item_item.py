"""recsys_core.models.item_item: EASE's item-item weights in low rank, the transitions' weights, and their
place in the model's score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_core.config import ModelSettings
from recsys_core.models.baselines import EASE, history_matrix
from recsys_core.models.inputs import ModelInputs
from recsys_core.models.item_item import cold_item_donors, item_item_factors, term_item_index, transition_weights
from recsys_core.models.scorer import Scorer
from recsys_core.models.transformer import SeqRec, SeqRecConfig

N_ITEMS = 9


def random_histories(n_users: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(np.arange(1, N_ITEMS + 1), size=rng.integers(1, 6), replace=False) for _ in range(n_users)]


def test_at_full_rank_the_factors_give_eases_scores():
    histories = random_histories()
    x = history_matrix(histories, N_ITEMS)
    item_in, item_out = item_item_factors(x, l2=2.0, rank=N_ITEMS)
    assert item_in.shape == item_out.shape == (N_ITEMS + 1, N_ITEMS)
    assert not item_in[0].any() and not item_out[0].any()  # the padding item adds nothing
    ease = EASE(l2=2.0).fit(x).score(x)
    np.testing.assert_allclose(np.asarray(x @ item_in[1:]) @ item_out[1:].T, ease, atol=1e-4)


def test_a_lower_rank_keeps_the_largest_part_of_the_training_scores():
    histories = random_histories()
    x = history_matrix(histories, N_ITEMS)
    ease = EASE(l2=2.0).fit(x).score(x)
    errors = []
    for rank in (1, 3, 6, N_ITEMS):
        item_in, item_out = item_item_factors(x, l2=2.0, rank=rank)
        errors.append(np.linalg.norm(np.asarray(x @ item_in[1:]) @ item_out[1:].T - ease))
    assert errors == sorted(errors, reverse=True) and errors[0] > 10 * max(errors[-1], 1e-6)
    # The best rank-r approximation of the score matrix (Eckart-Young): its error is the tail of the singular values.
    singular = np.linalg.svd(ease, compute_uv=False)
    item_in, item_out = item_item_factors(x, l2=2.0, rank=3)
    error = np.linalg.norm(np.asarray(x @ item_in[1:]) @ item_out[1:].T - ease)
    np.testing.assert_allclose(error, np.sqrt((singular[3:] ** 2).sum()), rtol=1e-4)


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_the_model_score_adds_the_weighted_term_of_the_window_it_sees(decay):
    torch.manual_seed(0)
    settings = ModelSettings(
        max_len=4, d_model=8, n_layers=1, dropout=0.0, use_content=False, use_query_gap=False, item_item_transitions=False
    )
    config = SeqRecConfig.from_settings(settings, N_ITEMS)
    assert config.item_item_rank == config.item_item_width == N_ITEMS  # the default rank, cut to the catalogue
    model = SeqRec(config).eval()
    histories = random_histories()
    item_in, item_out = item_item_factors(history_matrix(histories, N_ITEMS), l2=2.0, rank=N_ITEMS)
    items = torch.tensor([[0, 0, 3, 5], [2, 7, 1, 9], [0, 0, 0, 0]])
    inputs = ModelInputs(items, torch.zeros_like(items), torch.zeros_like(items), torch.zeros(3, 0, dtype=torch.long))
    scorer = Scorer(model, inputs, model.output_vectors()[1:].detach())
    rows = np.arange(3)
    before = scorer.scores(rows)  # a trained model's weight is 0 until the term is fitted
    model.set_item_item(torch.from_numpy(item_in), torch.from_numpy(item_out), 2.5, decay)
    after = Scorer(model, inputs, model.output_vectors()[1:].detach()).scores(rows)
    ease = EASE(l2=2.0).fit(history_matrix(histories, N_ITEMS)).weights
    # EASE's score of each window, the k-th newest event counted decay^k.
    window = np.zeros((3, N_ITEMS))
    window[0, [4, 2]] = [1.0, decay]  # items 5 (newest) and 3
    window[1, [8, 0, 6, 1]] = [1.0, decay, decay**2, decay**3]  # items 9, 1, 7, 2
    torch.testing.assert_close(after - before, torch.from_numpy(2.5 * window @ ease).float(), atol=1e-4, rtol=1e-4)


def test_a_bundle_of_old_keeps_no_term():
    settings = ModelSettings(max_len=4, d_model=8, n_layers=1, use_content=False)
    saved = SeqRecConfig.from_settings(settings, N_ITEMS).to_dict()
    del saved["item_item_rank"], saved["item_item_transitions"]  # a config saved before the term existed
    model = SeqRec(SeqRecConfig.from_dict(saved))
    assert model.state_width == 8 and "item_item_in" not in model.state_dict()


def test_a_bundle_saved_before_the_transitions_keeps_eases_part_alone():
    settings = ModelSettings(max_len=4, d_model=8, n_layers=1, use_content=False, item_item_rank=3)
    saved = SeqRecConfig.from_settings(settings, N_ITEMS).to_dict()
    assert saved["item_item_transitions"]  # on by default
    del saved["item_item_transitions"]
    model = SeqRec(SeqRecConfig.from_dict(saved))
    assert model.state_width == 8 + 3 and model.state_dict()["item_item_in"].shape == (N_ITEMS + 1, 3)


def test_a_catalogue_over_the_limit_leaves_the_term_off():
    settings = ModelSettings(max_len=4, d_model=8, n_layers=1, use_content=False, item_item_max_items=N_ITEMS - 1)
    config = SeqRecConfig.from_settings(settings, N_ITEMS)
    assert config.item_item_rank == 0 and not config.item_item_transitions and config.item_item_width == 0


def brute_force_transitions(histories: list[np.ndarray], l2: float, decay: float, window: int) -> np.ndarray:
    """The ridge regression of every next item on the decayed window before it, one step at a time."""
    steps, nexts = [], []
    for history in histories:
        for t in range(1, len(history)):
            before = np.zeros(N_ITEMS)
            for k, item in enumerate(history[max(0, t - window) : t][::-1]):
                before[item - 1] += decay**k
            steps.append(before)
            nexts.append(np.eye(N_ITEMS)[history[t] - 1])
    x, y = np.array(steps), np.array(nexts)
    return np.linalg.solve(x.T @ x + l2 * np.eye(N_ITEMS), x.T @ y)


@pytest.mark.parametrize(("decay", "window"), [(1.0, 10), (0.6, 2)])
def test_the_transition_weights_regress_each_next_item_on_the_decayed_window_before_it(decay, window):
    rng = np.random.default_rng(3)
    histories = [rng.integers(1, N_ITEMS + 1, size=rng.integers(1, 8)) for _ in range(60)]  # repeats included
    weights = transition_weights(histories, N_ITEMS, l2=1.5, decays=[decay, 0.3], window=window)
    assert weights[decay].shape == (N_ITEMS + 1, N_ITEMS) and not weights[decay][0].any()
    np.testing.assert_allclose(weights[decay][1:], brute_force_transitions(histories, 1.5, decay, window), atol=1e-5)
    np.testing.assert_allclose(weights[0.3][1:], brute_force_transitions(histories, 1.5, 0.3, window), atol=1e-5)


def test_the_model_score_adds_both_parts_of_the_term():
    torch.manual_seed(0)
    settings = ModelSettings(
        max_len=3, d_model=8, n_layers=1, dropout=0.0, use_content=False, use_query_gap=False, item_item_rank=2
    )
    config = SeqRecConfig.from_settings(settings, N_ITEMS)
    assert config.item_item_width == 2 + N_ITEMS
    model = SeqRec(config).eval()
    histories = random_histories()
    ease_in, ease_out = item_item_factors(history_matrix(histories, N_ITEMS), l2=2.0, rank=2)
    transition_in = transition_weights(histories, N_ITEMS, l2=2.0, decays=[0.5], window=3)[0.5]
    items = torch.tensor([[0, 3, 5], [7, 1, 9]])
    inputs = ModelInputs(items, torch.zeros_like(items), torch.zeros_like(items), torch.zeros(2, 0, dtype=torch.long))
    before = Scorer(model, inputs, model.output_vectors()[1:].detach()).scores(np.arange(2))
    item_in = torch.from_numpy(np.hstack([3.0 * ease_in, 5.0 * transition_in]))
    model.set_item_item(item_in, torch.from_numpy(ease_out), 1.0, 0.5)
    # Kept whole, the transitions' item side is the identity: built by the model, not stored.
    assert model.state_dict()["item_item_out"].shape == (N_ITEMS + 1, 2)
    torch.testing.assert_close(model.output_vectors()[1:, -N_ITEMS:], torch.eye(N_ITEMS))
    after = Scorer(model, inputs, model.output_vectors()[1:].detach()).scores(np.arange(2))
    window = np.zeros((2, N_ITEMS + 1))
    window[0, [5, 3]] = [1.0, 0.5]
    window[1, [9, 1, 7]] = [1.0, 0.5, 0.25]
    expected = 3.0 * window @ ease_in @ ease_out[1:].T + 5.0 * window[:, 1:] @ transition_in[1:]
    torch.testing.assert_close(after - before, torch.from_numpy(expected).float(), atol=1e-4, rtol=1e-4)


def test_an_item_with_no_events_borrows_from_its_closest_item_by_content():
    content = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.8], [0.0, 0.0], [1.0, 1.0]])
    counts = np.array([5, 3, 0, 0, 0, 0])
    cold, donors = cold_item_donors(content, counts)
    # Items 2 and 3 are closest to 0 and 1; item 4 has no content to go by; 5 is as close to either (the first wins).
    assert cold.tolist() == [2, 3, 5] and donors.tolist() == [0, 1, 0]
    assert [len(a) for a in cold_item_donors(content, np.zeros(6))] == [0, 0]  # nothing to borrow from


def test_a_catalogue_item_new_to_the_model_takes_the_term_of_its_closest_item_by_content():
    known = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # the vocabulary's items 1, 2, 3 (3: no content)
    content = np.array([[0.0, 1.0], [0.2, 0.9], [0.0, 0.0], [0.9, 0.2], [1.0, 0.0]])
    index = np.array([2, 0, 0, 0, 1])  # catalogue rows: known item 2, three new ones (one without content), item 1
    assert term_item_index(index, known, content).tolist() == [2, 2, 0, 1, 1]
    assert index.tolist() == [2, 0, 0, 0, 1]  # not changed in place


def test_a_bundle_that_stored_the_transitions_identity_loads_without_it():
    settings = ModelSettings(max_len=3, d_model=8, n_layers=1, use_content=False, item_item_rank=2)
    config = SeqRecConfig.from_settings(settings, N_ITEMS)
    saved = SeqRec(config).state_dict()
    ease_out = torch.randn(N_ITEMS + 1, 2)
    # As saved before: EASE's item side, then the identity of the transition part.
    saved["item_item_out"] = torch.cat([ease_out, torch.cat([torch.zeros(1, N_ITEMS), torch.eye(N_ITEMS)])], dim=1)
    model = SeqRec(config)
    model.load_state_dict(saved)
    torch.testing.assert_close(model.item_item_out, ease_out)
    torch.testing.assert_close(model.output_vectors()[:, 8:], saved["item_item_out"])
