"""The published table of a night: building it, its content digest, and the report as a text table (pure)."""

from __future__ import annotations

import hashlib
import zlib
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_core.contracts import RECOMMENDATIONS, conform

# Columns that describe when a table was made, not what it says.
VOLATILE_COLUMNS = ("generated_at",)

# The reason shown next to a row: personal only where a history item supports the score.
BECAUSE_YOU_WATCHED = "Because you watched {title}"
TRENDING = "Trending this week"  # fallback rows: the trending list, nothing personal
POPULAR_WITH_PEERS = "Popular with viewers like you"  # model rows no single history item supports (profile, trend)


def reason_texts(reason_item_ids: np.ndarray, sources: np.ndarray, titles: dict[str, str]) -> np.ndarray:
    """[n, K] reason texts of [n, K] reason item ids (None: no supporting item) of users with ``sources``
    ("model"/"fallback", one per user); an item without a title is named by its id."""
    ids = np.asarray(reason_item_ids, dtype=object)
    out = np.full(ids.shape, POPULAR_WITH_PEERS, dtype=object)
    personal = np.array([item is not None for item in ids.ravel()], dtype=bool).reshape(ids.shape)
    texts = {item: BECAUSE_YOU_WATCHED.format(title=titles.get(item) or f"item {item}") for item in set(ids[personal])}
    out[personal] = [texts[item] for item in ids[personal]]
    out[np.asarray(sources, dtype=object) == "fallback"] = TRENDING
    return out


def build_table(
    user_ids: list[str],
    item_ids: list[str],
    top_items: np.ndarray,
    top_scores: np.ndarray,
    sources: np.ndarray,
    model_name: str,
    model_version: str,
    generated_at: datetime,
    *,
    reason_item_ids: np.ndarray | None = None,
    titles: dict[str, str] | None = None,
) -> pa.Table:
    """One row per (user, rank), users in the given order, ranks 1..K, in the contract's schema.

    ``reason_item_ids``: [n, K] object array of each row's reason item (None: none; default: no row
    has one), named in the reason text by its title in ``titles`` (see ``reason_texts``)."""
    n, k = top_items.shape
    if reason_item_ids is None:
        reason_item_ids = np.full((n, k), None, dtype=object)
    reasons = reason_texts(reason_item_ids, sources, titles or {})
    ids = pa.array(item_ids, pa.string())
    row_user = pa.array(np.repeat(np.arange(n), k))  # each row's user position
    table = pa.table(
        {
            "user_id": pc.take(pa.array(user_ids, pa.string()), row_user),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "item_id": pc.take(ids, pa.array(top_items.ravel())),
            "score": top_scores.astype(np.float32).ravel(),
            "model_name": pa.array([model_name] * (n * k), pa.string()),
            "model_version": pa.array([model_version] * (n * k), pa.string()),
            "generated_at": pa.array([generated_at] * (n * k), RECOMMENDATIONS.schema.field("generated_at").type),
            "source": pc.take(pa.array(np.asarray(sources, dtype=object), pa.string()), row_user),
            "reason_item_id": pa.array(np.asarray(reason_item_ids, dtype=object).ravel(), pa.string()),
            "reason": pa.array(reasons.ravel(), pa.string()),
        }
    )
    return conform(table, RECOMMENDATIONS)


# Users fall into this many digest buckets by CRC-32 of their id: a Spark task can digest a
# bucket's rows on its own, and the table's digest combines the buckets' (see content_digest).
# A power of two: the Spark engine scores users in groups of crc32 mod G for any power of two
# G <= DIGEST_BUCKETS, so that every bucket lies in one group (and one written file).
DIGEST_BUCKETS = 4096


def digest_buckets(user_ids) -> np.ndarray:
    """Each row's digest bucket: CRC-32 of the UTF-8 user id mod DIGEST_BUCKETS (Spark: ``crc32(user_id) % DIGEST_BUCKETS``)."""
    column = user_ids.combine_chunks() if isinstance(user_ids, pa.ChunkedArray) else pa.array(user_ids, pa.string())
    encoded = column.dictionary_encode()
    per_user = np.fromiter(
        (zlib.crc32(u.encode()) % DIGEST_BUCKETS for u in encoded.dictionary.to_pylist()), np.int64, len(encoded.dictionary)
    )
    return per_user[encoded.indices.to_numpy(zero_copy_only=False)] if len(per_user) else np.zeros(len(column), np.int64)


def content_digest(table: pa.Table) -> str:
    """SHA-256 of the rows' contract columns, ignoring row order and the volatile ones (generated_at).

    The rows are split into digest buckets by user (``digest_buckets``), each
    bucket gets ``bucket_digest``, and ``combine_digests`` joins them: the Spark
    engine computes the same value from its executors' files without the rows
    ever meeting in one place.
    """
    if table.num_rows == 0:
        return combine_digests({})
    buckets = digest_buckets(table["user_id"])
    order = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[order], np.arange(DIGEST_BUCKETS + 1))
    parts = {}
    for b in range(DIGEST_BUCKETS):
        if bounds[b + 1] > bounds[b]:
            parts[b] = (int(bounds[b + 1] - bounds[b]), bucket_digest(table.take(pa.array(order[bounds[b] : bounds[b + 1]]))))
    return combine_digests(parts)


def combine_digests(parts: dict[int, tuple[int, str]]) -> str:
    """The table's digest from its buckets' (rows, bucket_digest), whichever process computed them."""
    digest = hashlib.sha256()
    digest.update(f"rows={sum(n for n, _ in parts.values())}".encode())
    for bucket in sorted(parts):
        digest.update(f"|{bucket}:{parts[bucket][0]}:{parts[bucket][1]}".encode())
    return digest.hexdigest()


def bucket_digest(table: pa.Table) -> str:
    """SHA-256 of some rows' contract columns, ignoring row order and the volatile ones (generated_at).

    Canonical: rows sorted by (user_id, rank); per column its name, type, null
    mask and values (strings as lengths + UTF-8 bytes, numbers as little-endian
    bytes), so it does not depend on Parquet encoding, chunking or library versions.
    """
    columns = [c for c in RECOMMENDATIONS.columns if c not in VOLATILE_COLUMNS]  # e.g. a reader's dt column is no content
    ordered = table.select(columns).sort_by([("user_id", "ascending"), ("rank", "ascending")])
    digest = hashlib.sha256()
    digest.update(f"rows={ordered.num_rows}".encode())
    for name in columns:
        array = ordered[name].combine_chunks() if ordered.num_rows else pa.array([], ordered[name].type)
        digest.update(f"|{name}:{array.type}|".encode())
        digest.update(np.asarray(pc.is_null(array).to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            array = array.cast(pa.large_string())
            offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
            digest.update(np.diff(offsets).astype("<i8").tobytes())
            data = array.buffers()[2]
            if data is not None and len(offsets):
                digest.update(memoryview(data)[offsets[0] : offsets[-1]])
        else:
            values = array.fill_null(0).to_numpy(zero_copy_only=False)
            digest.update(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def format_report(report: dict, title: str = "nightly report") -> str:
    """The night's report as a small fixed-width text table, for task logs."""
    rows: list[tuple[str, str]] = []
    for key, value in report.items():
        if isinstance(value, dict):
            for sub, count in value.items():
                rows.append((f"{key}[{sub}]", _fmt(count)))
        elif isinstance(value, (list, tuple)):
            rows.append((key, ", ".join(map(str, value)) or "-"))
        else:
            rows.append((key, _fmt(value)))
    width = max([len("metric"), *(len(r[0]) for r in rows)])
    vwidth = max([len("value"), *(len(r[1]) for r in rows)])
    rule = f"+-{'-' * width}-+-{'-' * vwidth}-+"
    lines = [title, rule, f"| {'metric':<{width}} | {'value':>{vwidth}} |", rule]
    lines += [f"| {name:<{width}} | {value:>{vwidth}} |" for name, value in rows]
    lines.append(rule)
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
