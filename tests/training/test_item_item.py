"""recsys_core.training.item_item: the item-item term's factors, weights and decay, fitted after training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recsys_core.config import ModelSettings, TrainSettings
from recsys_core.models.baselines import history_matrix
from recsys_core.models.item_item import item_item_factors, transition_weights
from recsys_core.models.transformer import SeqRec
from recsys_core.training.dataset import build_dataset, model_config, prepare
from recsys_core.training.item_item import fit_item_item
from recsys_core.training.loop import evaluate_split
from tests.training.test_data import events, item_features, user_profiles

CLUSTERS, CLUSTER_SIZE, USERS = 3, 6, 90


def clustered_world():
    """Each user meets the items of one cluster in a random order: what co-occurs predicts what comes next."""
    rng = np.random.default_rng(0)
    items = item_features([{"item_id": f"i{j}", "genres": ["Drama"]} for j in range(CLUSTERS * CLUSTER_SIZE)])
    users = user_profiles([{"user_id": f"u{u:03d}", "age": 30, "gender": "F", "occupation": "artist"} for u in range(USERS)])
    rows = []
    for u in range(USERS):
        cluster = u % CLUSTERS
        for step, j in enumerate(rng.permutation(CLUSTER_SIZE)[:5]):
            rows.append((f"u{u:03d}", f"i{cluster * CLUSTER_SIZE + j}", 3600 * u + 60 * step, "f.gz", 10 * u + step))
    return events(rows), users, items


def cyclic_world():
    """Each user walks the same ring of items, from a random start: the order, not co-occurrence, says what comes next."""
    rng = np.random.default_rng(1)
    n = CLUSTERS * CLUSTER_SIZE
    items = item_features([{"item_id": f"i{j}", "genres": ["Drama"]} for j in range(n)])
    users = user_profiles([{"user_id": f"u{u:03d}", "age": 30, "gender": "F", "occupation": "artist"} for u in range(USERS)])
    rows = []
    for u in range(USERS):
        start = int(rng.integers(n))
        for step in range(6):
            rows.append((f"u{u:03d}", f"i{(start + step) % n}", 3600 * u + 60 * step, "f.gz", 10 * u + step))
    return events(rows), users, items


def small_settings(**model) -> TrainSettings:
    return TrainSettings(
        model=ModelSettings(**{"max_len": 4, "d_model": 8, "n_heads": 2, "n_layers": 1, "use_content": False, **model})
    )


def untrained(data, settings: TrainSettings):
    """The dataset of ``data`` and an untrained model of ``settings`` on it: only an item-item term can rank well."""
    dataset = build_dataset(data, model_config(data, settings.model))
    return dataset, SeqRec(dataset.config, dataset.item_content).eval()


def test_the_weight_is_chosen_on_the_validation_split_and_installed():
    data = prepare(*clustered_world())
    settings = small_settings(item_item_transitions=False)  # EASE's part alone: the cyclic world tests the transitions
    config = model_config(data, settings.model)
    dataset = build_dataset(data, config)
    torch.manual_seed(0)
    model = SeqRec(config, dataset.item_content).eval()  # untrained: only the item-item term knows the clusters
    rows = np.arange(len(dataset.valid.targets))
    alone = evaluate_split(model, dataset.valid, rows, (10,), torch.device("cpu"), dataset.trend_table)["ndcg@10"]

    fitted = fit_item_item(model, data.split.train, dataset.valid, dataset.trend_table, settings)

    assert fitted is not None and fitted["weight"] > 0
    assert fitted["decay"] in settings.model.item_item_decays
    assert fitted["valid_ndcg@10_without"] == alone
    assert fitted["valid_ndcg@10"] > alone + 0.2
    # Installed: the model now scores with the chosen weights and decay.
    assert float(model.item_item_weight) == 1.0
    assert float(model.item_item_decay) == pytest.approx(fitted["decay"])  # a float32 buffer
    again = evaluate_split(model, dataset.valid, rows, (10,), torch.device("cpu"), dataset.trend_table)
    assert again["ndcg@10"] == pytest.approx(fitted["valid_ndcg@10"], abs=1e-6)


def test_where_order_says_what_comes_next_the_transitions_carry_the_score():
    data = prepare(*cyclic_world())
    config = model_config(data, small_settings().model)
    dataset = build_dataset(data, config)
    scores = {}
    for transitions in (False, True):
        torch.manual_seed(0)
        model = SeqRec(dataclasses.replace(config, item_item_transitions=transitions), dataset.item_content).eval()
        # Without a decay, co-occurrence on a ring cannot tell the next item from the previous one; the transitions can.
        fitted = fit_item_item(
            model, data.split.train, dataset.valid, dataset.trend_table, small_settings(item_item_decays=[1.0])
        )
        assert fitted is not None
        scores[transitions] = fitted["valid_ndcg@10"]
    assert fitted["transition_weight"] > 0
    assert scores[True] > 0.95 and scores[True] > scores[False] + 0.1


def test_a_term_that_changes_nothing_gets_weight_0():
    data = prepare(*clustered_world())
    settings = small_settings()
    dataset, model = untrained(data, settings)
    # Every history is the same one item: nothing co-occurs or follows, so both parts' weights are 0.
    fitted = fit_item_item(model, [np.array([1])] * USERS, dataset.valid, dataset.trend_table, settings)
    assert fitted is not None and fitted["weight"] == fitted["transition_weight"] == 0.0  # on a tie, the smallest
    assert fitted["valid_ndcg@10"] == fitted["valid_ndcg@10_without"]


def test_without_the_term_nothing_is_fitted():
    data = prepare(*clustered_world())
    settings = small_settings(item_item_rank=0, item_item_transitions=False)
    dataset, model = untrained(data, settings)
    assert fit_item_item(model, data.split.train, dataset.valid, dataset.trend_table, settings) is None
    assert model.state_width == 8


def test_an_item_with_no_training_events_takes_its_closest_items_columns():
    data = prepare(*clustered_world())
    settings = small_settings(item_item_rank=3, use_content=True)
    dataset, model = untrained(data, settings)
    cold = data.split.train[0][0]
    histories = [h[h != cold] for h in data.split.train]  # nobody took it in training
    fitted = fit_item_item(model, histories, dataset.valid, dataset.trend_table, settings)
    assert fitted is not None and fitted["cold_items"] == 1
    # Every item has the same content (one genre), so its donor is the first item with events.
    donor = 1 if cold != 1 else 2
    rank = model.config.item_item_rank
    assert fitted["weight"] > 0 or fitted["transition_weight"] > 0
    if fitted["weight"] > 0:  # EASE's item side: the donor's row
        assert model.item_item_out[donor, :rank].abs().sum() > 0
        torch.testing.assert_close(model.item_item_out[cold, :rank], model.item_item_out[donor, :rank])
    if fitted["transition_weight"] > 0:  # the transitions' item side is the identity: the donor's column of the history side
        assert model.item_item_in[:, rank + donor - 1].abs().sum() > 0
        torch.testing.assert_close(model.item_item_in[:, rank + cold - 1], model.item_item_in[:, rank + donor - 1])


def test_the_weights_are_chosen_on_the_training_histories_and_the_factors_refitted_on_the_given_ones():
    data = prepare(*clustered_world())
    settings = small_settings(item_item_rank=3, use_content=True)  # content: an item with no events takes a donor's columns
    dataset, model = untrained(data, settings)
    missing = data.split.train[0][0]
    histories = [h[h != missing] for h in data.split.train]  # nobody took it before validation
    chosen_alone = fit_item_item(model, histories, dataset.valid, dataset.trend_table, settings)
    refit_on = list(data.split.test_input)  # the validation targets too: it is in them

    fitted = fit_item_item(model, histories, dataset.valid, dataset.trend_table, settings, refit_on=refit_on)

    assert fitted is not None and chosen_alone is not None
    chosen = ("weight", "transition_weight", "decay", "valid_ndcg@10", "valid_ndcg@10_without")
    assert {k: fitted[k] for k in chosen} == {k: chosen_alone[k] for k in chosen}
    assert chosen_alone["cold_items"] == 1 and fitted["cold_items"] == 0
    n_items, rank = model.config.n_items, model.config.item_item_rank
    ease_in, ease_out = item_item_factors(history_matrix(refit_on, n_items), settings.ease_lambda, rank)
    transitions = transition_weights(
        refit_on, n_items, settings.model.item_item_transition_lambda, [fitted["decay"]], model.config.max_len
    )[fitted["decay"]]
    expected_in = np.hstack([fitted["weight"] * ease_in, fitted["transition_weight"] * transitions])
    np.testing.assert_allclose(model.item_item_in.numpy(), expected_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.item_item_out.numpy(), ease_out, rtol=1e-5, atol=1e-6)
