"""Compiled per-row loops of the bf16 scoring path (numba): the candidate pool and its final top-k.

They replace what would otherwise be numpy fancy indexing over whole batches (index arrays of
rows x pool x children, allocated every batch): here each row is handled in one pass over its own
scores while they are in cache, rows in parallel threads.

Scores arrive as the raw bits of bf16 values viewed as int16. For values >= 0 the int16 order is
the bf16 order, and every negative value (-inf included) is below every value >= 0, so a threshold
that is >= 0 selects the same items in both orders; rows whose threshold is negative are left to
the exact fp32 path by the caller.
"""

from __future__ import annotations

import numba
import numpy as np

NEG_INF_BITS = -128  # 0xFF80: bf16 -inf, as int16
NO_POOL = -1  # counts[r]: no pool (negative threshold, or more members than the pool's capacity)
GROUP = 4  # items per block at each level of the block-maximum tree


@numba.njit(cache=True, nogil=True)
def _level_max(below: np.ndarray, out: np.ndarray) -> None:
    """out[j] = max(below[j], below[j + w], below[j + 2w], below[j + 3w]), w = len(out): the
    maxima of GROUP strided items, in one pass that writes each maximum once."""
    w = out.shape[0]
    a, b, c, d = below[:w], below[w : 2 * w], below[2 * w : 3 * w], below[3 * w : 4 * w]
    for j in range(w):
        out[j] = max(max(a[j], b[j]), max(c[j], d[j]))


@numba.njit(cache=True, nogil=True)
def _key(bits):
    """The order key of fp32 ``bits`` (as int32): ordered as the floats are, -0.0 equal to 0.0 (negative
    keys moved up by one), a positive NaN above +inf and a negative one below -inf."""
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return key - (key >> 31)


@numba.njit(cache=True, nogil=True)
def _from_key(key):
    """The fp32 bits (as int32) of order key ``key`` (0: +0.0)."""
    key = key + (key >> 31)
    return key ^ ((key >> 31) & 0x7FFFFFFF)


@numba.njit(cache=True, nogil=True)
def _kth_largest(values: np.ndarray, k: int, counts: np.ndarray) -> int:
    """The k-th largest of integer ``values`` (int16 or int32; 1 <= k <= len): a radix selection, one
    byte at a time from the highest, among the values that share the bytes chosen so far
    (``counts``: 256 scratch)."""
    width = 8 * values.itemsize
    offset = np.int64(1) << (width - 1)
    prefix, above = np.int64(0), 0
    for shift in range(width - 8, -8, -8):
        counts[:] = 0
        for v in values:
            key = np.int64(v) + offset
            if key >> (shift + 8) == prefix:
                counts[(key >> shift) & 255] += 1
        digit = 255
        while above + counts[digit] < k:
            above += counts[digit]
            digit -= 1
        prefix = prefix << 8 | digit
    return int(prefix - offset)


@numba.njit(cache=True, nogil=True)
def _top_level(row, level1, level2, level3, n_levels: int):
    """``n_levels`` (0 to 3) levels of block maxima over ``row`` (``GROUP`` strided items per block:
    block b of a level of width w holds b, b + w, ... of the level below); returns the top one."""
    if n_levels >= 1:
        _level_max(row, level1)
    if n_levels >= 2:
        _level_max(level1, level2)
    if n_levels == 3:
        _level_max(level2, level3)
    return _level(row, level1, level2, level3, n_levels)


@numba.njit(cache=True, nogil=True)
def _level(row, level1, level2, level3, i: int):
    """Level ``i`` of the block-maximum tree (0: the row itself)."""
    return row if i == 0 else (level1 if i == 1 else (level2 if i == 2 else level3))


@numba.njit(cache=True, nogil=True)
def _mask_row(row, indptr: np.ndarray, indices: np.ndarray, csr_row: int, n_items: int, neg_inf) -> None:
    """Set ``row``'s seen items (CSR row ``csr_row``) and its padding past ``n_items`` to ``neg_inf``."""
    for p in range(indptr[csr_row], indptr[csr_row + 1]):
        row[indices[p]] = neg_inf
    row[n_items:] = neg_inf


@numba.njit(cache=True, nogil=True)
def _descend(row, level1, level2, level3, n_levels: int, t, nodes: np.ndarray, kept: np.ndarray) -> int:
    """The positions of ``row`` whose value reaches ``t``, found from the top level of block maxima
    down, keeping at each level only the children of the blocks that reach it: ``nodes[:n]``; returns
    n, which exceeds ``len(nodes) - 1`` (the positions then incomplete) when they do not fit (``kept``:
    as long, scratch; the last slot of each is ``_reaching``'s)."""
    top = _level(row, level1, level2, level3, n_levels)
    capacity = nodes.shape[0] - 1
    n = _reaching(top, t, nodes)
    level = n_levels
    while level > 0 and n <= capacity:  # children of node j: j, j + w, ... (w: its level's width)
        below = _level(row, level1, level2, level3, level - 1)
        m = _children_reaching(below, below.shape[0] // GROUP, nodes, n, t, kept)
        nodes[: min(m, capacity)] = kept[: min(m, capacity)]
        n, level = m, level - 1
    return n


@numba.njit(cache=True, nogil=True)
def bf16_pools(
    lo: int,
    hi: int,
    scores: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    first_row: int,
    n_items: int,
    n_levels: int,
    pool: int,
    members: np.ndarray,
    counts: np.ndarray,
    threshold_bits: np.ndarray,
) -> None:
    """Rows [lo, hi) of ``scores`` (int16 bits [rows, padded]): mask the row's seen items (CSR rows
    from ``first_row``) and the padding, build ``n_levels`` (0 to 3) levels of block maxima
    (``GROUP`` strided items per block), take ``t``, the ``pool``-th best top-level maximum, and
    keep every item whose score reaches ``t``: ``members[r, :counts[r]]`` (the rest unread),
    ``threshold_bits[r] = t``. Every item outside the pool scores at most ``t``."""
    padded = scores.shape[1]
    capacity = members.shape[1]
    level1 = np.empty(padded // GROUP, dtype=np.int16)
    level2 = np.empty(padded // GROUP**2, dtype=np.int16)
    level3 = np.empty(padded // GROUP**3, dtype=np.int16)
    nodes = np.empty(capacity + 1, dtype=np.int64)
    kept = np.empty(capacity + 1, dtype=np.int64)
    histogram = np.empty(256, dtype=np.int64)
    for r in range(lo, hi):
        row = scores[r]
        _mask_row(row, indptr, indices, first_row + r, n_items, NEG_INF_BITS)
        t = _kth_largest(_top_level(row, level1, level2, level3, n_levels), pool, histogram)
        threshold_bits[r] = t
        counts[r] = NO_POOL
        if t < 0:
            continue
        n = _descend(row, level1, level2, level3, n_levels, t, nodes, kept)
        if n > capacity:
            continue
        members[r, :n] = nodes[:n]
        counts[r] = n


@numba.njit(cache=True, nogil=True)
def fp32_pools(
    lo: int,
    hi: int,
    scores: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    first_row: int,
    n_items: int,
    n_levels: int,
    pool: int,
    members: np.ndarray,
    counts: np.ndarray,
    threshold: np.ndarray,
) -> None:
    """``bf16_pools`` for fp32 ``scores`` [rows, padded] (none NaN: the caller checks), the tree built
    on the floats themselves; ``threshold[r] = t`` as a float, which may be negative (no pool where
    it is -inf). The ``pool``-th best top-level maximum is found on the top level's order keys (``_key``)."""
    padded = scores.shape[1]
    capacity = members.shape[1]
    level1 = np.empty(padded // GROUP, dtype=np.float32)
    level2 = np.empty(padded // GROUP**2, dtype=np.float32)
    level3 = np.empty(padded // GROUP**3, dtype=np.float32)
    top_keys = np.empty(padded // GROUP**n_levels, dtype=np.int32)
    nodes = np.empty(capacity + 1, dtype=np.int64)
    kept = np.empty(capacity + 1, dtype=np.int64)
    histogram = np.empty(256, dtype=np.int64)
    t_bits = np.empty(1, dtype=np.int32)
    t_value = t_bits.view(np.float32)
    for r in range(lo, hi):
        row = scores[r]
        _mask_row(row, indptr, indices, first_row + r, n_items, -np.inf)
        top_bits = _top_level(row, level1, level2, level3, n_levels).view(np.int32)
        for j in range(len(top_keys)):
            top_keys[j] = _key(top_bits[j])
        t_bits[0] = _from_key(_kth_largest(top_keys, pool, histogram))
        threshold[r] = t_value[0]
        counts[r] = NO_POOL
        if t_value[0] == -np.inf:  # the pool would hold seen items or padding
            continue
        n = _descend(row, level1, level2, level3, n_levels, t_value[0], nodes, kept)
        if n <= capacity:
            members[r, :n] = nodes[:n]
            counts[r] = n


@numba.njit(cache=True, nogil=True)
def _reaching(values: np.ndarray, t, out: np.ndarray) -> int:
    """The positions of ``values`` that reach ``t``, written to ``out``; returns their count. ``out``'s
    last slot is scratch: the count fits when it is at most ``len(out) - 1``; past that the
    positions are incomplete."""
    scratch, n = out.shape[0] - 1, 0
    for j in range(values.shape[0]):
        # every position is written and only the kept ones counted: no branch for the CPU to mispredict
        out[min(n, scratch)] = j
        n += values[j] >= t
    return n


@numba.njit(cache=True, nogil=True)
def _children_reaching(below: np.ndarray, width: int, nodes: np.ndarray, n: int, t, out: np.ndarray) -> int:
    """``_reaching`` over the ``GROUP`` children (j, j + width, j + 2 width, j + 3 width of ``below``) of
    each of ``nodes[:n]``, written out for GROUP = 4 as ``_level_max`` is: the four loads are independent."""
    scratch, m = out.shape[0] - 1, 0
    for i in range(n):
        j = nodes[i]
        v0, v1, v2, v3 = below[j], below[j + width], below[j + 2 * width], below[j + 3 * width]
        out[min(m, scratch)] = j
        m += v0 >= t
        out[min(m, scratch)] = j + width
        m += v1 >= t
        out[min(m, scratch)] = j + 2 * width
        m += v2 >= t
        out[min(m, scratch)] = j + 3 * width
        m += v3 >= t
    return m


@numba.njit(cache=True, nogil=True)
def finish_pools(
    lo: int,
    hi: int,
    exact: np.ndarray,
    members: np.ndarray,
    counts: np.ndarray,
    threshold: np.ndarray,
    eps: np.ndarray,
    output_rel: float,
    values: np.ndarray,
    columns: np.ndarray,
    ok: np.ndarray,
) -> None:
    """Rows [lo, hi): the top-k of the pool by its fp32 scores ``exact`` (ties lowest column first), and
    whether the error bound clears it: every item outside the pool scores at most
    ``threshold[r] (1 + output_rel) + eps[r]`` in fp32, which must be strictly below the k-th score."""
    k = values.shape[1]
    exact_bits, values_bits = exact.view(np.int32), values.view(np.int32)
    pairs = np.empty(members.shape[1], dtype=np.int64)
    for r in range(lo, hi):
        n = counts[r]
        ok[r] = False
        if n < k:
            continue
        finite = True
        for i in range(n):
            finite &= not np.isnan(exact[r, i])
            # (inverted order key, column): one int64 sort gives best first, ties lowest column first
            pairs[i] = (np.int64(~_key(exact_bits[r, i])) << 32) | members[r, i]
        best = np.sort(pairs[:n])
        for i in range(k):
            values_bits[r, i] = _from_key(~(best[i] >> 32))
            columns[r, i] = best[i] & 0xFFFFFFFF
        bound = np.float64(threshold[r]) * (1.0 + output_rel) + eps[r]
        ok[r] = finite and bound < values[r, k - 1]


# reassoc: the compiler may sum the float64 products in any (fixed) order, which lets it vectorise;
# contract: a fused multiply-add, the same here since every product of two fp32 is exact in float64.
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def rerank_pools(
    lo: int,
    hi: int,
    users: np.ndarray,
    first_user: int,
    items: np.ndarray,
    members: np.ndarray,
    counts: np.ndarray,
    exact: np.ndarray,
) -> None:
    """Rows [lo, hi): ``exact[r, i]`` = the fp32 score of user ``first_user + r`` and pool member i.

    The products of two fp32 values are exact in float64 and their sum is taken in float64, so the
    one rounding that matters is the final one to fp32: the score is the fp32 value nearest the
    real dot product (but for a float64 sum within 2^-40 or so of a rounding boundary), whatever
    order a GEMM library would have summed in."""
    dim = users.shape[1]
    for r in range(lo, hi):
        user = users[first_user + r]
        for i in range(counts[r]):
            item = items[members[r, i]]
            total = 0.0
            for j in range(dim):
                total += np.float64(user[j]) * np.float64(item[j])
            exact[r, i] = np.float32(total)


@numba.njit(cache=True, nogil=True)
def bf16_with_bounds(users: np.ndarray, rounded: np.ndarray, e_max: float, de_max: float, bounds: np.ndarray) -> None:
    """Per user row u: ``rounded`` (uint16) = the bits of u rounded to bf16 (nearest, ties to even;
    NaN to torch's 0x7FC0), and ``bounds`` = ``score._error_bound``'s bound for u and that rounding
    ub, from the items' max |e| and max |e - bf16(e)|, all in float64."""
    dim = users.shape[1]
    gamma = dim * 2.0**-24 / (1 - dim * 2.0**-24)
    source = users.view(np.uint32)
    widened = np.empty(dim, dtype=np.uint32)
    for r in range(users.shape[0]):
        for j in range(dim):
            bits = source[r, j]
            half = 0x7FC0 if np.isnan(users[r, j]) else (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            rounded[r, j] = half
            widened[j] = half << 16
        ub_row = widened.view(np.float32)
        du = ub = uu = 0.0
        for j in range(dim):
            a, b = np.float64(users[r, j]), np.float64(ub_row[j])
            du += (a - b) * (a - b)
            ub += b * b
            uu += a * a
        du, ub, uu = np.sqrt(du), np.sqrt(ub), np.sqrt(uu)
        eps = du * e_max + ub * de_max + gamma * (ub * (e_max + de_max) + uu * e_max)
        bounds[r] = eps * (1 + 2.0**-20) + dim * 2.0**-125
