"""Faithful reasons: the history item whose removal lowers a recommended item's score the most.

For every explained user, the last ``n_last`` items of their history are each left out in turn
(leave-one-out): each variant is the real history minus one event, re-encoded by
``models.inputs.encode`` exactly as a history that never held that event (the next event's gap
and, when the last event goes, the recency are measured again). The variants are scored by the
one ``Scorer`` on the user's K recommended items only: N x K dot products, never a pass over the
whole catalogue.

The encoder passes are shared: sequences are right-aligned, so leaving out the event t places
from the end changes only the last t positions of the window; the positions before them hold
what the history without its last event holds there. That variant is encoded whole once, and
each other variant only over its last t positions, attending to the saved layer states
(``SeqRec.last_hidden_after``): about 1 + N(N+1)/(2L) passes per user instead of N.

An item's reason is the variant with the largest drop of its score; when no left-out item
lowers it (the score comes from the profile and the trend prior, not from any one event), it
has none.

Pure torch/numpy; the nightly job and the tests call ``explain``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from recsys_core.models.inputs import ModelInputs, encode
from recsys_core.models.scorer import Scorer
from recsys_core.models.transformer import SeqRecConfig

log = logging.getLogger(__name__)

# A drop must exceed float32 noise of two encoder passes over differently batched rows to count.
MIN_DROP = 1e-5


def leave_one_out(
    items: list[np.ndarray], times: list[np.ndarray], n_last: int, max_len: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """The variants of each history with one of its last ``n_last`` events removed.

    Returns the variants' items and times (oldest first), the history each variant comes from
    (its index in ``items``) and the item it leaves out. Histories are cut to what the model
    reads (``max_len`` events, plus the one before them, whose time gives the first event's gap)
    before the removal, so a variant re-encodes exactly like the full history minus the event.
    """
    keep = max_len + 2
    var_items: list[np.ndarray] = []
    var_times: list[np.ndarray] = []
    owner: list[int] = []
    removed: list[int] = []
    for row, (seq, ts) in enumerate(zip(items, times)):
        seq, ts = np.asarray(seq)[-keep:], np.asarray(ts)[-keep:]
        for position in range(max(len(seq) - n_last, 0), len(seq)):
            var_items.append(np.delete(seq, position))
            var_times.append(np.delete(ts, position))
            owner.append(row)
            removed.append(int(seq[position]))
    return var_items, var_times, np.asarray(owner, dtype=np.int64), np.asarray(removed, dtype=np.int64)


def explain(
    scorer: Scorer,
    config: SeqRecConfig,
    rows: np.ndarray,
    items: list[np.ndarray],
    times: list[np.ndarray],
    columns: np.ndarray,
    *,
    n_last: int,
    now: int | np.ndarray | None = None,
    batch_users: int = 256,
    hidden: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reason items of the recommended ``columns`` ([n, K] catalogue columns of ``scorer``) of user
    ``rows`` (rows of ``scorer.inputs``), whose histories are ``items``/``times`` (model item
    indices and epoch seconds, oldest first, one per entry of ``rows``; the same histories, user
    features and ``now`` the scorer's inputs were encoded from). ``hidden``: the users' last hidden
    states [n, d] when the caller has them (the nightly job's scoring pass), else encoded here.

    Returns [n, K] model item indices of the reasons (0: none) and [n, K] float32 score drops
    (0 where there is none).
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_last = min(n_last, config.max_len)  # a variant changes at most the window's L positions
    n, k = columns.shape
    if len(items) != n or len(times) != n:
        raise ValueError(f"{n} user rows to explain, but {len(items)} histories and {len(times)} time lists")
    reason = np.zeros((n, k), dtype=np.int64)
    drop = np.zeros((n, k), dtype=np.float32)
    moments = None if now is None else np.broadcast_to(np.asarray(now, dtype=np.int64), (n,))
    started, variants = time.monotonic(), 0
    for start in range(0, n, batch_users):
        stop = min(start + batch_users, n)
        var_items, var_times, owner, removed = leave_one_out(items[start:stop], times[start:stop], n_last, config.max_len)
        if not len(owner):
            continue
        variants += len(owner)
        user_rows = torch.as_tensor(rows[start:stop])
        chosen = torch.as_tensor(columns[start:stop])
        if hidden is None:
            base = scorer.scores_of(user_rows, chosen)  # [b, K]
        else:
            recency = scorer.inputs.query_gaps[user_rows, -1].to(scorer.device)
            base = scorer.scores_of_hidden(hidden[start:stop], recency, user_rows, chosen)
        feats = scorer.inputs.user_feats[user_rows[owner]].numpy()
        inputs: ModelInputs = encode(config, var_items, var_times, feats, None if moments is None else moments[start:stop][owner])
        varied = _variant_scores(scorer, inputs.to(scorer.device), user_rows[owner], chosen[owner], owner)  # [v, K]
        lowered = (base[owner] - varied).float().cpu().numpy()
        # The variants of one user are consecutive (oldest left-out event first): lay them out as
        # [users, n_last, K] and take the largest drop, ties to the most recent event.
        first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        segment = np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(owner)]))
        slot = np.arange(len(owner)) - first[segment]
        dense = np.full((len(first), n_last, k), -np.inf, dtype=np.float32)
        dense[segment, slot] = lowered
        best_slot = n_last - 1 - np.argmax(dense[:, ::-1], axis=1)  # [users, K]
        best_drop = np.take_along_axis(dense, best_slot[:, None], axis=1)[:, 0]
        left_out = np.zeros((len(first), n_last), dtype=np.int64)
        left_out[segment, slot] = removed
        users = owner[first] + start
        supported = best_drop > MIN_DROP
        reason[users] = np.where(supported, np.take_along_axis(left_out, best_slot, axis=1), 0)
        drop[users] = np.where(supported, best_drop, 0.0)
    log.info(
        "reasons: %d users x %d items explained by leaving out each of their last %d events (%d variants) in %.2fs",
        n,
        k,
        n_last,
        variants,
        time.monotonic() - started,
    )
    return reason, drop


def _variant_scores(
    scorer: Scorer, inputs: ModelInputs, user_rows: torch.Tensor, chosen: torch.Tensor, owner: np.ndarray
) -> torch.Tensor:
    """[v, K] scores of the variants ``inputs`` (each user's variants consecutive, the one without
    the last event last) on their users' chosen columns, each encoder pass over only the positions
    where a variant differs from its user's variant without the last event."""
    model = scorer.model
    last_of_user = np.r_[owner[1:] != owner[:-1], True]
    shared = np.flatnonzero(last_of_user)  # the variants without the last event, one per user
    # Events from the left-out one to the end of the history: the variant's last `tail` positions change.
    tail = shared[np.cumsum(np.r_[False, last_of_user[:-1]])] - np.arange(len(owner)) + 1
    saved, shared_hidden = model.layer_states(*_fields(inputs.rows(shared)))
    hidden = torch.empty(len(owner), model.state_width, device=scorer.device)
    hidden[shared] = shared_hidden
    shared_of = np.empty(int(owner.max()) + 1, dtype=np.int64)
    shared_of[owner[shared]] = np.arange(len(shared))
    length = inputs.items.shape[1]
    for changed in np.unique(tail[tail > 1]):
        picked = np.flatnonzero(tail == changed)
        users = torch.as_tensor(shared_of[owner[picked]])
        prefix = [(key[users, : length - changed], value[users, : length - changed]) for key, value in saved]
        hidden[picked] = model.last_hidden_after(prefix, *_fields(inputs.rows(picked)))
    return scorer.scores_of_hidden(hidden, inputs.query_gaps[:, -1], user_rows, chosen)


def _fields(inputs: ModelInputs) -> tuple[torch.Tensor, ...]:
    return inputs.items, inputs.gaps, inputs.user_feats, inputs.query_gaps
