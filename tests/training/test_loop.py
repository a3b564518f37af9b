"""recsys_core.training.loop: the pieces of the training loop that are pure functions."""

from __future__ import annotations

import torch

from recsys_core.training.loop import recency_weights


def test_recency_weights_halve_every_half_life():
    rows = torch.tensor([[10, 9, 8], [0, 0, 10]])
    torch.testing.assert_close(recency_weights(rows, 10, 1.0), torch.tensor([[1.0, 0.5, 0.25], [2.0**-10, 2.0**-10, 1.0]]))
    torch.testing.assert_close(recency_weights(rows, 10, 2.0)[0], torch.tensor([1.0, 2**-0.5, 0.5]))
    assert recency_weights(rows, 10, 0.0) is None  # off: every step counts the same
