"""Offline evaluation metrics: pure, vectorized numpy.

No I/O, no MLflow, no Spark: every function takes arrays and returns numbers,
so the same code scores a model in the training job, in the nightly batch and
in the tests. Torch tensors are accepted anywhere an array is (they are moved
to the CPU and converted), nothing else is imported from torch.

Conventions
-----------
* ``scores`` is a dense ``(n_users, n_items)`` float matrix, higher is better.
  Callers score users in batches so one batch fits in memory; every function
  here works row-wise, so batching changes nothing but memory.
* Ranking ties are broken by the lower item index, everywhere. ``top_k`` and
  ``target_ranks`` use the same rule, so the rank of a target item is exactly
  its position in the ``top_k`` list.
* ``exclude`` is a ``(n_users, n_items)`` matrix whose non-zero entries are the
  (user, item) pairs that must never be recommended (the user's seen items).
  A scipy sparse matrix/array (CSR is the natural one) or a dense 0/1 array.
* A slot of a top-k list that holds no item (a user with fewer than k
  unexcluded items) is ``PAD == -1``; every metric ignores such slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys_core.errors import ModelError
from recsys_core.evaluation.metric_names import DEFAULT_KS, metric_name

__all__ = [
    "ACCURACY_AT_K",
    "PAD",
    "NonFiniteScores",
    "assert_finite",
    "catalog_coverage",
    "gini_index",
    "head_items",
    "intra_list_diversity",
    "metrics_from_ranks",
    "novelty",
    "paired_difference",
    "per_user_metrics_from_ranks",
    "per_user_ranking_metrics",
    "popularity_bias",
    "ranking_metrics",
    "segment_metrics",
    "split_by_target",
    "target_ranks",
    "top_k",
]

PAD = -1
"""Item index of a top-k slot that holds no item."""

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class NonFiniteScores(ModelError, ValueError):
    """Scores hold NaN or inf.

    Raised rather than ranked because a NaN compares False with everything: the
    target's NaN score would be beaten by nothing and read as rank 0, a hit.
    Carries ``n_nan``, ``n_inf`` and ``n_rows`` (rows with at least one bad entry).
    """

    n_nan: int = 0
    n_inf: int = 0
    n_rows: int = 0


# ---------------------------------------------------------------------------
# Input coercion
# ---------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """An ndarray view of ``x``; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _as_scores(scores: Any) -> np.ndarray:
    s = _to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_users, n_items), got shape {s.shape}")
    if s.dtype.kind not in "biuf":
        raise TypeError(f"scores must be real numbers, got dtype {s.dtype}")
    if s.dtype.kind in "bu":
        # Ranking negates values; bools and unsigned ints cannot be negated safely.
        s = s.astype(np.float64)
    return s


def _as_int_array(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.size == 0:
        return a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer item/rank indices, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _as_targets(targets: Any, n_users: int, n_items: int) -> IntArray:
    t = _as_int_array(targets, "targets").ravel()
    if t.shape != (n_users,):
        raise ValueError(f"targets must have one item per user ({n_users}), got {t.size}")
    if t.size and (t.min() < 0 or t.max() >= n_items):
        raise ValueError(f"targets must be item indices in [0, {n_items}), got [{t.min()}, {t.max()}]")
    return t


def _as_ks(ks: Iterable[int], upper: int | None = None) -> tuple[int, ...]:
    out = tuple(dict.fromkeys(int(k) for k in ks))  # dedupe, keep the caller's order
    if not out:
        raise ValueError("ks must name at least one cut-off")
    if min(out) < 1:
        raise ValueError(f"cut-offs must be >= 1, got {out}")
    if upper is not None and max(out) > upper:
        raise ValueError(
            f"cut-off {max(out)} is longer than the recommended lists ({upper} columns); "
            "metrics at a K beyond the list would silently undercount"
        )
    return out


def _exclude_coords(exclude: Any, shape: tuple[int, int]) -> tuple[IntArray, IntArray]:
    """Deduplicated (row, col) of the non-zero entries of ``exclude``, sorted by row."""
    if sp.issparse(exclude):
        got = tuple(exclude.shape)
        csr = sp.csr_array(exclude)
        if not csr.has_canonical_format:
            # A CSR may store an entry twice; counted twice it would corrupt
            # target_ranks. Canonical = sorted indices, no duplicates.
            csr = csr.copy()
            csr.sum_duplicates()
        rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
        cols = csr.indices.astype(np.int64)
        keep = csr.data != 0
        rows, cols = rows[keep], cols[keep]
    else:
        dense = _to_numpy(exclude)
        if dense.ndim != 2:
            raise ValueError(f"exclude must be 2-D, got shape {dense.shape}")
        rows, cols = (a.astype(np.int64) for a in np.nonzero(dense))
        got = dense.shape
    if tuple(got) != tuple(shape):
        raise ValueError(f"exclude has shape {tuple(got)}, scores have {tuple(shape)}")
    return rows, cols


def _masked_copy(s: np.ndarray, exclude: Any) -> np.ndarray:
    """A float copy of ``s`` with excluded entries at -inf (finite scores never reach it)."""
    out = s.astype(s.dtype if s.dtype.kind == "f" else np.float64, copy=True)
    rows, cols = _exclude_coords(exclude, s.shape)
    out[rows, cols] = -np.inf
    return out


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------


def assert_finite(scores: Any) -> None:
    """Raise :class:`NonFiniteScores` if any score is NaN or +-inf."""
    s = _to_numpy(scores)
    if s.dtype.kind in "biu":  # integers are always finite
        return
    finite = np.isfinite(s)
    if finite.all():
        return
    bad = ~finite
    n_bad = int(bad.sum())
    n_nan = int(np.isnan(s).sum())
    rows = bad.reshape(s.shape[0], -1).any(axis=1) if s.ndim >= 2 else bad.reshape(1, -1).any(axis=1)
    n_rows, total_rows = int(rows.sum()), rows.size
    err = NonFiniteScores(
        f"scores hold {n_bad} non-finite entries ({n_nan} NaN, {n_bad - n_nan} inf) "
        f"in {n_rows} of {total_rows} rows; refusing to rank them "
        "(a NaN target score would compare as rank 0, i.e. a hit)"
    )
    err.n_nan, err.n_inf, err.n_rows = n_nan, n_bad - n_nan, n_rows
    raise err


_TIE_CHUNK = 1 << 22  # score entries per block in the tie fix-up: bounds its temporaries


def _lowest_index_tied_selection(s: np.ndarray, kth: np.ndarray, k: int) -> IntArray:
    """Column indices (ascending) of the k best entries per row, ties at the k-th value to the lowest index.

    Everything strictly above the k-th value is in; of the entries equal to it,
    the first ``need = k - #above`` by index are in: exactly k per row. Works
    on the (sparse) positions of the above/tied entries, in row blocks, so a
    row of constant scores costs O(n_items) and memory stays bounded.
    """
    n_rows, n_items = s.shape
    out = np.empty((n_rows, k), dtype=np.int64)
    step = max(1, _TIE_CHUNK // max(n_items, 1))
    for lo in range(0, n_rows, step):
        block, t = s[lo : lo + step], kth[lo : lo + step, None]
        n = block.shape[0]
        r_above, c_above = np.nonzero(block > t)
        r_tied, c_tied = np.nonzero(block == t)  # row-major: sorted by row, then column
        need = k - np.bincount(r_above, minlength=n)
        pos_in_row = np.arange(r_tied.size) - np.searchsorted(r_tied, np.arange(n))[r_tied]
        keep = pos_in_row < need[r_tied]
        rows = np.concatenate([r_above, r_tied[keep]])
        cols = np.concatenate([c_above, c_tied[keep]])
        out[lo : lo + n] = cols[np.lexsort((cols, rows))].reshape(n, k)
    return out


def top_k(scores: Any, k: int, exclude: Any | None = None) -> IntArray:
    """Indices of the k best items per row, best first.

    Ties go to the lower item index, so the result is deterministic. Items
    marked in ``exclude`` are never returned; a user with fewer than k
    unexcluded items (or k > n_items) gets trailing ``PAD`` (-1) slots.
    ``scores`` is never modified (it is copied only to mask ``exclude``).
    Returns an int64 array of shape (n_users, k).
    """
    s = _as_scores(scores)
    assert_finite(s)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_users, n_items = s.shape
    if exclude is not None:
        s = _masked_copy(s, exclude)
    k_eff = min(k, n_items)
    out = np.full((n_users, k), PAD, dtype=np.int64)
    if n_users == 0 or k_eff == 0:
        return out

    # O(n_items) selection of the k best (unordered) per row...
    part = np.argpartition(s, n_items - k_eff, axis=1)[:, n_items - k_eff :]
    part.sort(axis=1)  # ascending index, so the stable sort below breaks ties by index
    vals = np.take_along_axis(s, part, axis=1)
    # ...but argpartition keeps an arbitrary subset of the items tied at the
    # k-th value. Redo the selection for the rows where that subset was not the
    # lowest-indexed one (frequent for count-like or constant scores).
    kth = vals.min(axis=1)
    n_tied_row = (s == kth[:, None]).sum(axis=1)
    n_tied_sel = (vals == kth[:, None]).sum(axis=1)
    redo = np.flatnonzero(n_tied_row > n_tied_sel)
    if redo.size:
        part[redo] = _lowest_index_tied_selection(s[redo], kth[redo], k_eff)
        vals[redo] = np.take_along_axis(s[redo], part[redo], axis=1)

    order = np.argsort(-vals, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    if exclude is not None:
        best[np.take_along_axis(vals, order, axis=1) == -np.inf] = PAD
    out[:, :k_eff] = best
    return out


def target_ranks(scores: Any, targets: Any, exclude: Any | None = None) -> IntArray:
    """0-based rank of each user's target item in the full ranking of all items.

    rank = #items with a strictly greater score + #items with an equal score and
    a lower index, counting only items not in ``exclude``. This is the tie rule
    of :func:`top_k`, so ``top_k(scores, n_items, exclude)[u, rank[u]] == targets[u]``.
    A target that is itself excluded is an error (it could never be recommended;
    it means the history used for exclusion leaks the held-out item).
    """
    s = _as_scores(scores)
    assert_finite(s)
    n_users, n_items = s.shape
    t = _as_targets(targets, n_users, n_items)
    users = np.arange(n_users)
    st = s[users, t][:, None]
    beats = s > st
    beats |= (s == st) & (np.arange(n_items)[None, :] < t[:, None])
    ranks = beats.sum(axis=1).astype(np.int64)
    if exclude is not None:
        rows, cols = _exclude_coords(exclude, s.shape)
        leaked = cols == t[rows]
        if leaked.any():
            raise ValueError(
                f"{int(leaked.sum())} users have their target item in `exclude`; "
                "remove the held-out item from the seen-items matrix"
            )
        # Subtract the excluded items that were counted as beating the target;
        # cheaper than copying scores to mask them.
        v, st_r, t_r = s[rows, cols], st[rows, 0], t[rows]
        beat = (v > st_r) | ((v == st_r) & (cols < t_r))
        ranks -= np.bincount(rows[beat], minlength=n_users)
    return ranks


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------


def _discounts(n: int) -> FloatArray:
    """1 / log2(position + 2) for 0-based positions 0..n-1."""
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


@dataclass(frozen=True)
class TopKHits:
    """Per-user hit statistics of the top k, from which every accuracy metric at k follows."""

    k: int
    hits: FloatArray  # relevant items in the top k
    dcg: FloatArray  # discounted gain of those hits
    ideal_dcg: FloatArray | float  # DCG of min(k, n_relevant) hits at the top
    n_relevant: FloatArray | float


# The per-user accuracy metrics at k, by their registry name (recsys_core.evaluation.metric_names).
ACCURACY_AT_K: dict[str, Callable[[TopKHits], FloatArray]] = {
    "recall": lambda t: t.hits / t.n_relevant,
    "ndcg": lambda t: t.dcg / t.ideal_dcg,
    "hitrate": lambda t: (t.hits > 0).astype(np.float64),
    "precision": lambda t: t.hits / t.k,
}


def _accuracy_at_k(at_k: Iterable[TopKHits]) -> dict[str, FloatArray]:
    return {metric_name(name, t.k): metric(t) for t in at_k for name, metric in ACCURACY_AT_K.items()}


def _summarize(per_user: Mapping[str, Any], mask: BoolArray | None = None) -> dict[str, float]:
    """Means of per-user arrays over the users in ``mask`` whose metrics are defined (not NaN)."""
    arrays = {name: np.asarray(_to_numpy(a), dtype=np.float64) for name, a in per_user.items()}
    if not arrays:
        return {"users": 0}
    _common_length(arrays)  # validates
    defined = np.logical_and.reduce([~np.isnan(a) for a in arrays.values()])
    if mask is not None:
        defined &= mask
    users = int(defined.sum())
    out: dict[str, float] = {name: float(a[defined].mean()) if users else float("nan") for name, a in arrays.items()}
    out["users"] = users
    return out


def _common_length(arrays: Mapping[str, np.ndarray]) -> int:
    lengths = {name: a.shape[0] if a.ndim else 1 for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-user arrays differ in length: {lengths}")
    return next(iter(lengths.values()))


def per_user_ranking_metrics(recommended: Any, relevant: Sequence[Any], ks: Iterable[int] = DEFAULT_KS) -> dict[str, FloatArray]:
    """Per-user recall/ndcg/hitrate/precision@k and mrr; NaN for users with no relevant item.

    See :func:`ranking_metrics` for the definitions. Each array has n_users entries.
    """
    rec = _as_int_array(recommended, "recommended")
    if rec.ndim != 2:
        raise ValueError(f"recommended must be 2-D (n_users, K), got shape {rec.shape}")
    ks = _as_ks(ks, upper=rec.shape[1])
    kmax = max(ks)
    rec = rec[:, :kmax]
    n_users = rec.shape[0]
    if len(relevant) != n_users:
        raise ValueError(f"relevant has {len(relevant)} entries, recommended has {n_users} users")

    # Membership of every (user, recommended item) in the user's relevant set,
    # in one np.isin over linear (user, item) keys instead of a loop of set lookups.
    rel_lists = [_as_int_array(r, "relevant").ravel() for r in relevant]
    lens = np.fromiter((r.size for r in rel_lists), dtype=np.int64, count=n_users)
    rel_items = np.concatenate(rel_lists) if n_users else np.empty(0, np.int64)
    if rel_items.size and rel_items.min() < 0:
        raise ValueError("relevant item indices must be >= 0")
    width = max(int(rel_items.max(initial=0)), int(rec.max(initial=0))) + 1
    rel_keys = np.unique(np.repeat(np.arange(n_users, dtype=np.int64), lens) * width + rel_items)
    n_rel = np.bincount(rel_keys // width, minlength=n_users)  # distinct relevant items
    valid = rec >= 0
    hits = valid & np.isin(np.arange(n_users, dtype=np.int64)[:, None] * width + rec, rel_keys)

    disc = _discounts(kmax)
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * disc, axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(disc)])  # ideal[m]: DCG of m hits at the top
    evaluated = n_rel > 0
    safe_rel = np.where(evaluated, n_rel, 1)

    out = _accuracy_at_k(
        TopKHits(k, cum_hits[:, k - 1].astype(np.float64), cum_dcg[:, k - 1], ideal[np.minimum(k, safe_rel)], safe_rel)
        for k in ks
    )
    first = hits.argmax(axis=1)
    mrr = np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)
    out[metric_name("mrr")] = mrr
    out[metric_name("mrr", kmax)] = mrr.copy()
    for a in out.values():
        a[~evaluated] = np.nan
    return out


def ranking_metrics(recommended: Any, relevant: Sequence[Any], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Top-k accuracy averaged over the users with at least one relevant item.

    ``recommended``: (n_users, K) item indices, best first (``PAD`` slots never
    hit), K >= max(ks). ``relevant``: one array of relevant item indices per user
    (duplicates are counted once). For each k in ``ks``:

    * ``recall@k`` = hits@k / n_relevant. Not capped by k: a user with more
      relevant items than k cannot reach 1. Use ``ndcg@k`` for a capped view.
    * ``ndcg@k``: binary relevance, 1/log2(pos+2) discount, normalised by the
      ideal DCG of min(k, n_relevant) hits.
    * ``hitrate@k``: 1 if any hit in the top k.
    * ``precision@k`` = hits@k / k.

    ``mrr`` (and its alias ``mrr@{max(ks)}``): reciprocal 1-based position of the
    first relevant item within the top max(ks), 0 if none. Note: this is the
    truncated MRR; :func:`metrics_from_ranks`'s ``mrr`` uses the full ranking,
    compare across the two with the ``mrr@K`` key. ``users``: users evaluated.
    Metrics are NaN when no user has a relevant item.
    """
    return _summarize(per_user_ranking_metrics(recommended, relevant, ks))


def per_user_metrics_from_ranks(ranks: Any, ks: Iterable[int] = DEFAULT_KS) -> dict[str, FloatArray]:
    """Per-user metrics from the 0-based rank of a single target item (leave-last-out).

    For each k: ``ndcg@k`` = 1/log2(rank+2) if rank < k else 0; ``hitrate@k`` =
    ``recall@k`` = [rank < k]; ``precision@k`` = [rank < k] / k. ``mrr`` =
    1/(rank+1) over the full ranking; ``mrr@{max(ks)}`` the same truncated to the
    top max(ks) (0 beyond), which is what :func:`ranking_metrics` reports.
    """
    r = _as_int_array(ranks, "ranks").ravel()
    if r.size and r.min() < 0:
        raise ValueError("ranks must be >= 0")
    ks = _as_ks(ks)
    kmax = max(ks)
    rf = r.astype(np.float64)
    gain = 1.0 / np.log2(rf + 2.0)
    # One relevant item per user: its ideal DCG is that of a hit at the top, 1.
    out = _accuracy_at_k(TopKHits(k, (r < k).astype(np.float64), np.where(r < k, gain, 0.0), 1.0, 1.0) for k in ks)
    rr = 1.0 / (rf + 1.0)
    out[metric_name("mrr")] = rr
    out[metric_name("mrr", kmax)] = np.where(r < kmax, rr, 0.0)
    return out


def metrics_from_ranks(ranks: Any, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Means of :func:`per_user_metrics_from_ranks` plus ``users`` (the count).

    Equals :func:`ranking_metrics` on ``top_k`` lists of the same scores when
    every user has exactly one relevant item, except ``mrr`` (full ranking
    here, truncated there); ``mrr@{max(ks)}`` agrees.
    """
    return _summarize(per_user_metrics_from_ranks(ranks, ks))


# ---------------------------------------------------------------------------
# Beyond accuracy
# ---------------------------------------------------------------------------


def _slots(recommended: Any, k: int) -> tuple[IntArray, BoolArray]:
    """The first k columns of ``recommended`` and the mask of the slots holding an item."""
    rec = _as_int_array(recommended, "recommended")
    if rec.ndim != 2:
        raise ValueError(f"recommended must be 2-D (n_users, K), got shape {rec.shape}")
    (k,) = _as_ks([k], upper=rec.shape[1])
    rec = rec[:, :k]
    return rec, rec >= 0


def _as_popularity(item_popularity: Any) -> FloatArray:
    pop = np.asarray(_to_numpy(item_popularity), dtype=np.float64).ravel()
    if pop.size and (not np.isfinite(pop).all() or pop.min() < 0):
        raise ValueError("item_popularity must be finite, non-negative counts")
    return pop


def _check_items(items: np.ndarray, n_items: int) -> None:
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item indices span [{int(items.min())}, {int(items.max())}], outside the catalogue of {n_items} items")


def catalog_coverage(recommended: Any, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one user's top-k list."""
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    rec, valid = _slots(recommended, k)
    items = rec[valid]
    _check_items(items, n_items)
    return float(np.unique(items).size / n_items)


def novelty(recommended: Any, item_popularity: Any, k: int) -> float:
    """Mean self-information -log2 p(i) of the recommended items, in bits.

    p(i) = (count_i + 1) / (sum(counts) + n_items): the add-one smoothed share
    of all interactions that fall on item i, so never-seen items get a finite,
    maximal novelty. Averaged over all filled top-k slots (= the mean over users
    of per-list means when every list is full).
    """
    pop = _as_popularity(item_popularity)
    rec, valid = _slots(recommended, k)
    items = rec[valid]
    _check_items(items, pop.size)
    if not items.size:
        return float("nan")
    info = -np.log2((pop + 1.0) / (pop.sum() + pop.size))
    return float(info[items].mean())


def intra_list_diversity(recommended: Any, item_categories: Any, k: int) -> float:
    """Mean over users of the mean pairwise (1 - cosine) of the top-k items' category vectors.

    ``item_categories``: (n_items, n_categories) multi-hot, sparse or dense. An
    item with no category has a zero vector; its similarity to anything is 0
    (distance 1). Users with fewer than two filled slots are skipped; NaN if none.

    Vectorized through sum-of-vectors: with unit rows v_a, |sum_a v_a|^2 =
    sum_a |v_a|^2 + 2 * sum_{a<b} v_a . v_b, so the pairwise similarity sum of
    every list comes from one sparse (users x items) @ (items x categories).
    """
    raw = item_categories if sp.issparse(item_categories) else _to_numpy(item_categories)
    cats = sp.csr_array(raw, dtype=np.float64)
    n_items = cats.shape[0]
    rec, valid = _slots(recommended, k)
    n_users = rec.shape[0]
    users = np.nonzero(valid)[0]
    items = rec[valid]
    _check_items(items, n_items)

    norms = np.sqrt(np.asarray(cats.multiply(cats).sum(axis=1)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    unit = sp.csr_array(sp.diags_array(inv) @ cats)  # zero rows stay zero
    # Duplicated items in a list sum in the CSR, which is what the identity needs.
    membership = sp.csr_array((np.ones(items.size), (users, items)), shape=(n_users, n_items))
    summed = membership @ unit
    sq_norm = np.asarray(summed.multiply(summed).sum(axis=1)).ravel()
    self_sim = np.bincount(users, weights=(norms[items] > 0).astype(np.float64), minlength=n_users)
    m = valid.sum(axis=1).astype(np.float64)
    pairs = m * (m - 1.0) / 2.0
    ok = pairs > 0
    if not ok.any():
        return float("nan")
    mean_sim = (sq_norm[ok] - self_sim[ok]) / 2.0 / pairs[ok]
    return float((1.0 - mean_sim).mean())


def head_items(item_popularity: Any, head_fraction: float = 0.2) -> BoolArray:
    """Mask of the head: the round(head_fraction * n_items) most popular items.

    Ties at the boundary go to the lower item index (deterministic).
    """
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be in [0, 1], got {head_fraction}")
    pop = _as_popularity(item_popularity)
    n_head = round(head_fraction * pop.size)
    mask = np.zeros(pop.size, dtype=bool)
    mask[np.argsort(-pop, kind="stable")[:n_head]] = True
    return mask


def gini_index(values: Any) -> float:
    """Gini index of non-negative values: 0 = all equal, (n-1)/n = all mass on one.

    G = sum_i (2i - n - 1) x_(i) / (n * sum x) over the ascending-sorted x, i 1-based.
    NaN when the values sum to 0.
    """
    x = np.sort(np.asarray(_to_numpy(values), dtype=np.float64).ravel())
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return float("nan")
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(((2.0 * i - n - 1.0) * x).sum() / (n * total))


def popularity_bias(recommended: Any, item_popularity: Any, k: int, head_fraction: float = 0.2) -> dict[str, float]:
    """How much the top-k lists lean on popular items.

    * ``arp``: average recommendation popularity, the mean interaction count of
      the items in the filled top-k slots.
    * ``head_share``: share of the filled slots whose item is in the head
      (:func:`head_items`, the top ``head_fraction`` of items by count).
    * ``gini``: Gini index of how often each catalogue item is recommended,
      over the whole catalogue (never-recommended items count as 0).
    """
    pop = _as_popularity(item_popularity)
    rec, valid = _slots(recommended, k)
    items = rec[valid]
    _check_items(items, pop.size)
    if not items.size:
        return {"arp": float("nan"), "head_share": float("nan"), "gini": float("nan")}
    head = head_items(pop, head_fraction)
    return {
        "arp": float(pop[items].mean()),
        "head_share": float(head[items].mean()),
        "gini": gini_index(np.bincount(items, minlength=pop.size)),
    }


# ---------------------------------------------------------------------------
# Segments
# ---------------------------------------------------------------------------


def segment_metrics(per_user: Mapping[str, Any], segments: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Average per-user metric arrays within each boolean user mask.

    ``per_user``: name -> (n_users,) array, e.g. from :func:`per_user_metrics_from_ranks`
    (NaN entries, users with nothing to evaluate, are left out). ``segments``:
    name -> (n_users,) bool mask, e.g. ``{"cold": hist_len < 5, "warm": hist_len >= 5}``.
    Each segment gets the metric means and ``users`` (its evaluated count);
    an empty segment gets NaN means and ``users == 0``.
    """
    arrays = {name: np.asarray(_to_numpy(a), dtype=np.float64) for name, a in per_user.items()}
    n = _common_length(arrays) if arrays else None
    out: dict[str, dict[str, float]] = {}
    for name, mask in segments.items():
        m = _to_numpy(mask)
        if m.dtype != np.bool_:
            # An integer index array would silently select the wrong users.
            raise TypeError(f"segment {name!r} must be a boolean mask, got dtype {m.dtype}")
        if n is not None and m.shape != (n,):
            raise ValueError(f"segment {name!r} has shape {m.shape}, expected ({n},)")
        out[name] = _summarize(arrays, m)
    return out


def paired_difference(a: Any, b: Any) -> tuple[float, float, int]:
    """(mean, standard error, users) of ``a - b``, two models' per-user values of one metric on the same
    users, over the users both have a value for (NaN: nothing to evaluate). Comparing user by user
    takes out how hard each user is, so the error is that of the difference, not of either mean;
    with fewer than two users it is NaN."""
    a, b = np.asarray(_to_numpy(a), dtype=np.float64), np.asarray(_to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"per-user values of different lengths: {a.shape} vs {b.shape}")
    difference = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if len(difference) == 0:
        return float("nan"), float("nan"), 0
    se = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else float("nan")
    return float(difference.mean()), se, len(difference)


def split_by_target(per_user: Mapping[str, Any], targets: Any, head_mask: Any) -> dict[str, dict[str, float]]:
    """Segment the per-user metrics by whether the user's target item is a head item.

    Returns ``{"head_targets": {...}, "tail_targets": {...}}``: a model that only
    learns popularity scores well on the first and poorly on the second.
    """
    head = _to_numpy(head_mask)
    if head.dtype != np.bool_:
        raise TypeError(f"head_mask must be a boolean item mask, got dtype {head.dtype}")
    t = _as_int_array(targets, "targets").ravel()
    _check_items(t, head.size)
    is_head = head[t]
    return segment_metrics(per_user, {"head_targets": is_head, "tail_targets": ~is_head})
