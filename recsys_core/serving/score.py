"""Batch top-K scoring: user vectors x item matrix, seen items masked, top-k per row (torch, numba kernels).

This is the reference ("local") engine and also the kernel every Spark task
runs (``recsys_core.serving.spark_score``), so both engines rank identically.

How a batch of users is scored (``_PoolScorer``; see ``benchmarks/bench_scoring.py`` for the figures):

1. one GEMM into a preallocated buffer ``[batch, items]``: fp32, or with
   ``precision="bf16"`` a bf16 GEMM (2.2x the fp32 rate measured on a 2-core AVX-512 BF16
   CPU, more with AMX; emulated, tens of times slower, elsewhere: ``precision="auto"``
   then scores in fp32, see ``recsys_core.serving.precision``);
2. one compiled pass per row while it is in cache (``pool_kernels``, row chunks in
   parallel threads): the seen items (straight from the CSR arrays) set to -inf, a
   tree of block maxima, ``t``, the pool-th best top-level maximum, and a descent to
   the candidate pool: the items that reach ``t`` (a few more than k);
3. the pool's exact fp32 scores (float64 dot products rounded once to fp32), the
   top-k of the pool, equal scores lowest item column first, and a per-user bound
   on the GEMM's error that proves no item outside the pool can enter or tie into
   the top-k; rows it cannot clear are scored exactly over the whole catalogue.

So the published lists and scores are the exact fp32 top-k with either precision,
on any machine, whatever order its GEMM sums in (a plain fp32 GEMM + top-k swaps
near-ties for about 0.1% of users at 20K items).

On a GPU (tensors on a CUDA device), fp32 runs the GEMM, masking and block maxima
there (``_Fp32Scorer``, ``_Selector``: the GEMM's scores, not re-ranked) and bf16 its
GEMM there and the pool on the host; that path is not tested here (no GPU on the
build machine). The bound assumes fp32 accumulation
and round-to-nearest output: set ``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False``
before scoring in bf16 on a GPU.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.serving import pool_kernels
from recsys_core.serving.precision import Precision, PrecisionSetting, resolve_precision

T = TypeVar("T")

# Below this many items per candidate item the two-stage selection does not pay.
_TWO_STAGE_MIN_RATIO = 8
# bf16 path: the pool re-ranked in fp32 holds k + max(_POOL_MARGIN_MIN, _POOL_MARGIN * k) items;
# a wider pool costs re-rank time, a narrower one more rows failing the exactness check.
_POOL_MARGIN = 0.5
_POOL_MARGIN_MIN = 16
# Up to this many levels of block maxima (pool_kernels.GROUP items per block; a level is used
# while the catalogue has 4 x pool blocks at it; the pool is k on the fp32 path).
_MAX_LEVELS = 3
# A row whose pool (the items reaching the threshold) holds more than this many times ``pool``
# items (ties at the threshold) is scored again in fp32 (bf16 path) or sorted whole (fp32 path).
_POOL_CAPACITY = 4
# fp32 path: scores bounded by this (|u| |e| < 2^126) cannot overflow, so none is NaN.
_NO_OVERFLOW = 2.0**126
# The bf16 GEMM rounds its fp32 accumulator to the nearest bf16 (8 significant bits):
# |c - acc| <= 2^-8 |acc|, so |c - acc| <= 2^-8 / (1 - 2^-8) |c|.
_BF16_OUTPUT_REL = 2.0**-8 / (1 - 2.0**-8)


def score_top_k(
    user_vectors: torch.Tensor,
    item_matrix: torch.Tensor,
    k: int,
    exclude: sp.spmatrix | None = None,
    batch_users: int = 1024,
    *,
    min_valid: int | None = None,
    precision: PrecisionSetting = "fp32",
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item columns and their scores per user, best first, excluded items never returned.

    Raises when a user has fewer than ``min_valid`` (default: k) items left to recommend.
    With ``min_valid < k`` (a candidate pool), the slots a user cannot fill hold
    item -1 and score -inf. ``precision`` picks how the full catalogue is scored
    (see the module docstring; "auto": ``precision.resolve_precision``); the result
    is the exact fp32 top-k either way. ``stats``, if given, receives the precision
    used, seconds per stage, the rows the bf16 path scored again in fp32 and its pool size.
    """
    resolved = resolve_precision(precision, user_vectors.device)
    n_users, n_items = user_vectors.shape[0], item_matrix.shape[0]
    need = k if min_valid is None else min_valid
    if k > n_items:
        raise ValueError(f"K={k} is larger than the catalogue ({n_items} items)")
    items_out = np.empty((n_users, k), dtype=np.int64)
    scores_out = np.empty((n_users, k), dtype=np.float32)
    if n_users == 0:
        return items_out, scores_out
    csr = None
    if exclude is not None:
        csr = exclude if isinstance(exclude, sp.csr_matrix) else sp.csr_matrix(exclude)
        if csr.shape != (n_users, n_items):
            raise ValueError(f"exclude has shape {csr.shape}, expected {(n_users, n_items)}")
    batch = max(1, min(batch_users, n_users))
    users = user_vectors.detach().to(torch.float32).contiguous()
    items = item_matrix.detach().to(device=users.device, dtype=torch.float32)
    scorer: _Fp32Scorer | _PoolScorer
    if resolved == "fp32" and users.device.type != "cpu":
        scorer = _Fp32Scorer(users, items, k, csr)
    else:
        scorer = _PoolScorer(users, items, k, csr, batch, resolved)
    with torch.no_grad():
        for start in range(0, n_users, batch):
            stop = min(start + batch, n_users)
            scorer.clock.start()
            # numpy from here: small torch ops would wake torch's sleeping threads for nothing
            values, indices = (part.cpu().numpy() for part in scorer(start, stop))
            finite = np.isfinite(values)
            short = np.flatnonzero(~finite[:, :need].all(axis=1))
            if len(short):
                row = short[0] + start
                raise ValueError(f"user row {row} has fewer than K={need} recommendable items (or non-finite scores)")
            items_out[start:stop] = np.where(finite, indices, -1) if need < k else indices
            scores_out[start:stop] = np.where(finite, values, np.float32(-np.inf)) if need < k else values
    if stats is not None:
        stats["precision"] = resolved
        stats.update({f"{stage}_s": seconds for stage, seconds in scorer.clock.seconds.items()})
        stats["fallback_rows"] = getattr(scorer, "fallback_rows", 0)
        stats["pool"] = getattr(scorer, "pool", None)
        stats["levels"] = getattr(scorer, "levels", None)
    return items_out, scores_out


class _Clock:
    """Seconds per scoring stage (the benchmark's time split); laps are taken by the scoring thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()
        self.lock = threading.Lock()

    def start(self) -> None:
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.add(stage, now - self.last)
        self.last = now

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def split(self, stage: str, since: float, share: float) -> float:
        """A lap taken by one of several threads from its own ``since``, counted as ``share`` of its
        seconds (1 / threads: averaged, the stages add up to wall time); returns now."""
        now = time.perf_counter()
        self.add(stage, (now - since) * share)
        return now


def _mask_rows(flat_scores: torch.Tensor, csr: sp.csr_matrix, start: int, stop: int, width: int) -> None:
    """Set the stored entries of csr rows [start, stop) to -inf in the flat [rows x width] buffer."""
    lo, hi = int(csr.indptr[start]), int(csr.indptr[stop])
    if hi == lo:
        return
    counts = np.diff(csr.indptr[start : stop + 1])
    rows = np.repeat(np.arange(stop - start, dtype=np.int64), counts)
    flat = rows * width + csr.indices[lo:hi].astype(np.int64)
    flat_scores.index_fill_(0, torch.from_numpy(flat).to(flat_scores.device), float("-inf"))


class _Fp32Scorer:
    """fp32 on a GPU: the GEMM, masking and block maxima on the device, the small selections on the
    host (``_Selector``); the published scores are the GEMM's."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, k: int, csr: sp.csr_matrix | None):
        self.users, self.csr, self.n_items = users, csr, items.shape[0]
        self.selector = _Selector(self.n_items, k)
        if self.selector.padded > self.n_items:  # zero rows: their columns are set to -inf after the GEMM
            items = torch.cat([items, items.new_zeros(self.selector.padded - self.n_items, items.shape[1])])
        self.items_t = items.T.contiguous()
        self.buffer: torch.Tensor | None = None
        self.clock = _Clock()

    def __call__(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        users, width = self.users[start:stop], self.selector.padded
        if self.buffer is None or self.buffer.numel() < len(users) * width:
            self.buffer = torch.empty(len(users) * width, dtype=torch.float32, device=users.device)
        scores = self.buffer[: len(users) * width].view(len(users), width)
        torch.mm(users, self.items_t, out=scores)
        self.clock.lap("gemm")
        if width > self.n_items:
            scores[:, self.n_items :] = float("-inf")
        if self.csr is not None:
            _mask_rows(scores.view(-1), self.csr, start, stop, width)
        self.clock.lap("mask")
        selected = self.selector(scores)
        self.clock.lap("select")
        return selected


def _block_levels(n_items: int, pool: int) -> tuple[int, int]:
    """Levels of block maxima for a catalogue and pool size (one more while the catalogue holds
    4 x pool blocks at it, up to ``_MAX_LEVELS``), and the catalogue padded to whole top-level blocks."""
    levels = 0
    while levels < _MAX_LEVELS and n_items >= pool_kernels.GROUP ** (levels + 1) * 4 * pool:
        levels += 1
    group = pool_kernels.GROUP**levels
    return levels, group * -(-n_items // group)


class _PoolScorer:
    """Scores for the whole catalogue (a bf16 or fp32 GEMM), a candidate pool, an exact re-rank of the pool.

    Per batch: one GEMM (bf16 output on AMX/AVX-512 BF16 for bf16; fp32) into a reused
    buffer. Then, per row in one compiled pass while the row is in cache
    (``pool_kernels.bf16_pools`` or ``fp32_pools``, row chunks in parallel threads): seen items
    set to -inf; a tree of block maxima (strided blocks, ``pool_kernels.GROUP`` items per level:
    block b of a level of width w holds b, b + w, ... of the level below); ``t``,
    the pool-th best top-level maximum; then a descent that keeps, level by level,
    only the children whose maximum reaches ``t``; the items that reach ``t`` form
    the pool.
    The pool's exact fp32 scores (``pool_kernels.rerank_pools``: float64 dot products
    rounded once to fp32) give the top-k, ties lowest column first.

    bf16 maxima are taken on the raw bf16 bits as int16, which orders every value >= 0
    correctly and puts every negative value below them; so the pool is exact
    whenever ``t >= 0``. Every item outside the pool scores at most ``t`` in the GEMM,
    hence at most ``t (1 + output_rel) + eps[user]`` exactly (``_error_bound``,
    ``_fp32_error_bound``). When that is strictly below the k-th re-ranked score, no
    item outside the pool can enter or tie into the top-k: the result is the
    exact fp32 top-k. Other rows (bf16's ``t < 0``, fewer items than the pool, more than
    ``_POOL_CAPACITY`` x pool items reaching ``t``, non-finite scores, or a failed
    check) are scored again exactly over the whole catalogue (``_exact_rows``);
    ``fallback_rows`` counts them. So both precisions publish the same lists, whatever
    order the machine's GEMM sums in.
    """

    def __init__(
        self, users: torch.Tensor, items: torch.Tensor, k: int, csr: sp.csr_matrix | None, batch: int, precision: Precision
    ):
        n_items, dim = items.shape
        self.users, self.csr, self.k, self.n_items = users, csr, k, n_items
        self.bf16 = precision == "bf16"
        # fp32's GEMM error is tiny: a few more candidates than k clear the check
        margin = max(_POOL_MARGIN_MIN, math.ceil(_POOL_MARGIN * k)) if self.bf16 else _POOL_MARGIN_MIN
        self.pool = min(n_items, k + margin)
        self.levels, self.padded = _block_levels(n_items, self.pool)
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        # zero columns past the catalogue (masked to -inf by the pool kernel); pool members are real items
        self.items_t = torch.cat([items, items.new_zeros(self.padded - n_items, dim)]).T.contiguous().to(dtype)
        self.item_norms = _item_norms(items)
        self.buffer = torch.empty(batch * self.padded, dtype=dtype, device=users.device)
        empty = np.zeros(len(users) + 1, dtype=np.int64)
        self.indptr = csr.indptr.astype(np.int64) if csr is not None else empty
        self.indices = csr.indices.astype(np.int64) if csr is not None else empty[:0]
        self.members = np.empty((batch, _POOL_CAPACITY * self.pool), dtype=np.int64)
        self.counts = np.empty(batch, dtype=np.int64)
        self.exact = np.empty(self.members.shape, dtype=np.float32)  # the members' exact fp32 scores
        self.threshold = np.empty(batch, dtype=np.int16 if self.bf16 else np.float32)
        self.users_host, self.items_host = users.cpu().numpy(), items.contiguous().cpu().numpy()  # the re-rank's inputs
        self.items_exact: np.ndarray | None = None  # float64 items, made on the first fallback
        self.fallback_rows = 0
        self.clock = _Clock()

    def __call__(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, clock = stop - start, self.clock
        scores = self.buffer[: rows * self.padded].view(rows, self.padded)
        members, counts, threshold = self.members[:rows], self.counts[:rows], self.threshold[:rows]
        chunks = _row_chunks(rows)
        if self.bf16:
            users_gemm, eps = _error_bound(self.users[start:stop], self.item_norms)
            torch.mm(users_gemm, self.items_t, out=scores)
            clock.lap("gemm")
            bits = scores.view(torch.int16).cpu().numpy()
            work = lambda lo, hi: pool_kernels.bf16_pools(  # noqa: E731
                lo, hi, bits, self.indptr, self.indices, start, self.n_items, self.levels, self.pool, members, counts, threshold
            )
        else:
            eps = _fp32_error_bound(self.users_host[start:stop], self.item_norms[0])
            torch.mm(self.users[start:stop], self.items_t, out=scores)
            clock.lap("gemm")
            host = scores.cpu().numpy()
            work = lambda lo, hi: pool_kernels.fp32_pools(  # noqa: E731
                lo, hi, host, self.indptr, self.indices, start, self.n_items, self.levels, self.pool, members, counts, threshold
            )
        values = np.empty((rows, self.k), dtype=np.float32)
        columns = np.empty((rows, self.k), dtype=np.int64)
        ok = np.empty(rows, dtype=bool)
        threshold_values = np.empty(rows, dtype=np.float32) if self.bf16 else threshold
        output_rel = _BF16_OUTPUT_REL if self.bf16 else 0.0
        exact = self.exact[:rows]
        scorable = bool(np.isfinite(eps).all())  # else a score may be NaN or overflow: every row is scored exactly
        share = 1.0 / len(chunks)  # each thread times its own stages (_Clock.split)

        def pool_rerank_select(lo: int, hi: int) -> None:
            # one task per row chunk, its rows' pools still in cache for the re-rank and the top-k
            tick = time.perf_counter()
            if scorable:
                work(lo, hi)
            else:
                counts[lo:hi] = pool_kernels.NO_POOL
            if self.bf16:
                threshold_values[lo:hi] = (threshold[lo:hi].astype(np.int32) << 16).view(np.float32)
            tick = clock.split("pool", tick, share)
            pool_kernels.rerank_pools(lo, hi, self.users_host, start, self.items_host, members, counts, exact)
            tick = clock.split("rerank", tick, share)
            pool_kernels.finish_pools(lo, hi, exact, members, counts, threshold_values, eps, output_rel, values, columns, ok)
            clock.split("select", tick, share)

        _in_threads(pool_rerank_select, chunks)
        clock.start()
        redo = np.flatnonzero(~ok)
        if len(redo):
            self.fallback_rows += len(redo)
            values[redo], columns[redo] = self._exact_rows(redo + start)
            clock.lap("fallback")
        return torch.from_numpy(values), torch.from_numpy(columns)

    def _exact_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact fp32 top-k of user ``rows`` over the whole catalogue: float64 dot products rounded
        once to fp32, seen items -inf, equal scores lowest column first (a NaN score stays NaN)."""
        if self.items_exact is None:
            self.items_exact = self.items_host.astype(np.float64)
        scores = (self.users_host[rows].astype(np.float64) @ self.items_exact.T).astype(np.float32)
        if self.csr is not None:
            seen = self.csr[rows].tocoo()
            scores[seen.row, seen.col] = -np.inf
        columns = np.broadcast_to(np.arange(self.n_items), scores.shape)
        order = _best_first(np.nan_to_num(scores, nan=np.inf), columns)[:, : self.k]
        return np.take_along_axis(scores, order, axis=1), order


def _fp32_error_bound(users: np.ndarray, max_item_norm: float) -> np.ndarray:
    """Per user, a bound on |fp32 GEMM score - exact fp32 score| over every item: each is within
    gamma_d |u| |e| of the real dot product (gamma_d = d u/(1 - d u), u = 2^-24), in float64 with a
    small relative margin for its own rounding and an absolute one for flushed denormals; inf where
    a score may overflow or be NaN (non-finite inputs, or |u| |e| near fp32's range)."""
    dim = users.shape[1]
    gamma = dim * 2.0**-24 / (1 - dim * 2.0**-24)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.square(users, dtype=np.float64).sum(axis=1))
        eps = 2 * gamma * norms * max_item_norm * (1 + 2.0**-20) + dim * 2.0**-125
    eps[~(norms * max_item_norm < _NO_OVERFLOW)] = np.inf
    return eps


def _error_bound(users: torch.Tensor, item_norms: tuple[float, float]) -> tuple[torch.Tensor, np.ndarray]:
    """The users rounded to bf16, and per user a bound on |fp32 score - bf16 GEMM accumulator| over
    every item (before output rounding).

    With u = ub + du (ub its bf16 rounding) and e = eb + de: u.e - ub.eb = du.e + ub.de, so
    |u.e - ub.eb| <= |du| max|e| + |ub| max|de| (Cauchy-Schwarz). Both fp32 dot products
    (the exact one and the bf16 GEMM's fp32 accumulator) are within gamma_d |a||b| of their
    real value, gamma_d = d u/(1 - d u), u = 2^-24. Computed in float64 (one compiled pass per
    user that also rounds it: ``pool_kernels.bf16_with_bounds``), then a small relative margin for
    its own rounding and an absolute one for flushed denormals. ``item_norms``: max |e| and max |de|
    over the catalogue (``_item_norms``).
    """
    host = users.cpu().numpy()
    rounded = np.empty(host.shape, dtype=np.uint16)
    bounds = np.empty(len(host), dtype=np.float64)
    pool_kernels.bf16_with_bounds(host, rounded, *item_norms, bounds)
    return torch.from_numpy(rounded.view(np.int16)).view(torch.bfloat16).to(users.device), bounds


def _item_norms(items: torch.Tensor) -> tuple[float, float]:
    """max |e| and max |e - bf16(e)| over the items, in float64 (the items' side of ``_error_bound``)."""
    if not len(items):
        return 0.0, 0.0
    e64 = items.double().cpu()
    return float(e64.norm(dim=1).max()), float((e64 - items.to(torch.bfloat16).double().cpu()).norm(dim=1).max())


class _Selector:
    """Exact row-wise top-k, best first; two-stage over strided blocks for large catalogues.

    In the two-stage path the small selections (k of n_blocks block maxima, k of
    k * group candidates) run in numpy (``argpartition`` has no per-row overhead,
    unlike ``torch.topk`` on short rows), over row chunks in parallel threads
    (numpy releases the GIL); ties are returned lowest item column first.
    """

    def __init__(self, n_items: int, k: int):
        self.k = k
        group = round(math.sqrt(n_items / max(k, 1)))  # balances block maxima vs candidates
        self.two_stage = group >= 4 and n_items >= _TWO_STAGE_MIN_RATIO * k * group
        if self.two_stage:
            self.group = group
            self.n_blocks = -(-n_items // group)
            self.padded = self.group * self.n_blocks
            self.offsets = np.arange(group, dtype=np.int64) * self.n_blocks
        else:
            self.padded = n_items

    def __call__(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = scores.shape[0]
        block_max = scores.view(rows, self.group, self.n_blocks).amax(dim=1) if self.two_stage else scores
        if bool(torch.isnan(block_max).any()):  # let the caller see the NaN and refuse the row
            return torch.topk(scores, self.k, dim=1, sorted=True)
        host_scores, host_max = scores.cpu().numpy(), block_max.cpu().numpy()
        values = np.empty((rows, self.k), dtype=np.float32)
        columns = np.empty((rows, self.k), dtype=np.int64)
        _in_threads(lambda lo, hi: self._select(host_scores, host_max, values, columns, lo, hi), _row_chunks(rows))
        return torch.from_numpy(values), torch.from_numpy(columns)

    def _select(
        self, scores: np.ndarray, block_max: np.ndarray, values: np.ndarray, columns: np.ndarray, lo: int, hi: int
    ) -> None:
        k, rows = self.k, hi - lo
        if self.two_stage:
            blocks, block_out = _largest(block_max[lo:hi], k)
            candidates = (blocks[:, :, None] + self.offsets).reshape(rows, -1)
            cand_scores = np.take_along_axis(scores[lo:hi], candidates, axis=1)
        else:
            candidates = np.broadcast_to(np.arange(scores.shape[1]), (rows, scores.shape[1]))
            cand_scores, block_out = scores[lo:hi], np.full(rows, -np.inf, dtype=np.float32)
        best, cand_out = _largest(cand_scores, k)
        top_scores = np.take_along_axis(cand_scores, best, axis=1)
        top_columns = np.take_along_axis(candidates, best, axis=1)
        order = _best_first(top_scores, top_columns)
        values[lo:hi] = np.take_along_axis(top_scores, order, axis=1)
        columns[lo:hi] = np.take_along_axis(top_columns, order, axis=1)
        kth = values[lo:hi, k - 1]
        # An item left out that equals the k-th score may have a lower column: redo those rows on the full row.
        for r in np.flatnonzero((cand_out >= kth) | (block_out >= kth)):
            row = scores[lo + r]
            tied = np.flatnonzero(row >= kth[r])
            pick = tied[_best_first(row[tied][None, :], tied[None, :])[0, :k]]
            values[lo + r], columns[lo + r] = row[pick], pick


def _largest(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the n largest entries per row (any order), and the largest entry left out (-inf if none)."""
    rows, width = scores.shape
    if width <= n:
        return np.broadcast_to(np.arange(width), (rows, width)), np.full(rows, -np.inf, dtype=np.float32)
    part = np.argpartition(scores, width - n - 1, axis=1)
    return part[:, width - n :], _entries(scores, part[:, width - n - 1])


def _entries(scores: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """scores[row, columns[row]] for every row."""
    return np.take_along_axis(scores, columns[:, None], axis=1)[:, 0]


def _best_first(scores: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per row, the order of the entries by descending score, equal scores lowest column first.

    One int64 key per entry: an order-preserving int32 image of the float32 score
    (negated), then the column (< 2^31).
    """
    bits = (scores.astype(np.float32) + np.float32(0.0)).view(np.int32)  # + 0.0: -0.0 ties with 0.0
    key = (~(bits ^ ((bits >> 31) & 0x7FFFFFFF))).astype(np.int64) << 32 | columns
    return np.argsort(key, axis=1)


_POOL: ThreadPoolExecutor | None = None
_MIN_CHUNK_ROWS = 64


def _row_chunks(rows: int) -> list[tuple[int, int]]:
    parts = max(1, min(torch.get_num_threads(), rows // _MIN_CHUNK_ROWS))
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _in_threads(work: Callable[[int, int], T], chunks: list[tuple[int, int]]) -> list[T]:
    """work(lo, hi) for every row chunk, in parallel threads when there are several (numpy releases the GIL)."""
    if len(chunks) == 1:
        return [work(*chunks[0])]
    return list(_pool().map(lambda lo_hi: work(*lo_hi), chunks))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < torch.get_num_threads():  # noqa: SLF001
        _POOL = ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="topk")
    return _POOL


def recommend_top_k(
    user_vectors: torch.Tensor,
    item_matrix: torch.Tensor,
    k: int,
    exclude: sp.spmatrix | None = None,
    batch_users: int = 1024,
    *,
    mmr_lambda: float | None = None,
    categories: np.ndarray | None = None,
    pool_factor: int = 3,
    precision: PrecisionSetting = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """The published ranking: plain top-k, or MMR re-ranking of a top-(pool_factor*k) pool.

    Both engines call this, so they apply exactly the same rule. With MMR the
    returned scores are the MMR objective at the time each item was picked
    (non-increasing; see ``recsys_core.serving.rerank``).
    """
    if mmr_lambda is None:
        return score_top_k(user_vectors, item_matrix, k, exclude=exclude, batch_users=batch_users, precision=precision)
    from recsys_core.serving.rerank import mmr_rerank

    if categories is None:
        raise ValueError("MMR re-ranking needs the item categories")
    pool = min(max(pool_factor, 1) * k, item_matrix.shape[0])
    pool_items, pool_scores = score_top_k(
        user_vectors, item_matrix, pool, exclude=exclude, batch_users=batch_users, min_valid=k, precision=precision
    )
    return mmr_rerank(pool_items, pool_scores, categories, k, mmr_lambda)


def seen_matrix(user_ids: list[str], item_ids: list[str], interactions_users, interactions_items) -> sp.csr_matrix:
    """users x catalogue matrix of the items each user interacted with (items outside the catalogue ignored)."""
    user_index = {u: i for i, u in enumerate(user_ids)}
    item_index = {it: j for j, it in enumerate(item_ids)}
    rows = np.fromiter((user_index.get(u, -1) for u in interactions_users), dtype=np.int64)
    cols = np.fromiter((item_index.get(i, -1) for i in interactions_items), dtype=np.int64)
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])), shape=(len(user_ids), len(item_ids))
    )
    matrix.sum_duplicates()
    return matrix
