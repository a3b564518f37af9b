"""The right to be forgotten, pure part: who a row belongs to, the salted hash of a user id, and the
ingest rule that quarantines later events of a forgotten user (reason ``forgotten``).

A raw line belongs to user U when it parses as a JSON object whose ``user_id``, trimmed, is U (the
rule the ingest applies: numbers read as their JSON text, so ``42`` and ``"42"`` are the same user),
or, for a line that does not parse, when its text holds ``"user_id": U`` (quoted or not). Ids
written with JSON unicode escapes are not recognised in unparseable lines.

The hash is ``sha256(salt + user_id)`` as lowercase hex, which Spark computes as
``sha2(concat(salt, user_id), 256)``: the ingest compares hashes and never needs the raw ids.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable

from recsys_core.features.ingest import REASONS

FORGOTTEN = "forgotten"
# Every reason a quarantined row can carry: the ingest's line checks, then the forget rule.
QUARANTINE_REASONS = (*REASONS, FORGOTTEN)
# What a quarantined line of a forgotten user keeps instead of its text: the lake keeps no trace of it.
REDACTED = "[redacted: the user asked to be forgotten]"


def user_hash(salt: str, user_id: str) -> str:
    return hashlib.sha256((salt + user_id).encode("utf-8")).hexdigest()


def _id_alternatives(users: Iterable[str]) -> str:
    # Longest first, so that "42" never wins over "420" in the alternation.
    return "|".join(re.escape(u) for u in sorted(set(users), key=lambda u: (-len(u), u)))


def line_pattern(users: Iterable[str]) -> re.Pattern[bytes]:
    """Candidate lines: a ``"user_id": U`` pair (quoted or a bare number) ending at ``,`` or ``}``.

    Used to find candidates fast in large files; each candidate is then decided by ``line_user``.
    """
    ids = _id_alternatives(users)
    return re.compile(rb'"user_id"\s*:\s*"?\s*(?:' + ids.encode() + rb')\s*"?\s*[,}]')


def line_user(line: str | bytes) -> str | None:
    """The trimmed ``user_id`` of a raw line that parses as one JSON object, else None."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or "user_id" not in obj:
        return None
    value = obj["user_id"]
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    return json.dumps(value)


def line_belongs(line: str | bytes, users: set[str], pattern: re.Pattern[bytes]) -> bool:
    """Whether one raw line (without its newline) is a row of one of ``users``."""
    data = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
    if not pattern.search(data):
        return False
    parsed = line_user(data)
    if parsed is not None:
        return parsed in users
    # Not a JSON object with a user_id (truncated, malformed, ...): its text names the user.
    return True


def split_keep(data: bytes, users: set[str], pattern: re.Pattern[bytes]) -> tuple[bytes, int, int]:
    """``data`` (the decompressed content of a JSON Lines file) without the lines of ``users``.

    Returns (kept bytes, lines before, lines removed). The kept lines are byte-for-byte the original
    ones, line endings included; a file whose content has no candidate comes back as the same object.
    """
    if not data:
        return data, 0, 0
    ends_with_newline = data.endswith(b"\n")
    lines = data.count(b"\n") + (0 if ends_with_newline else 1)
    # The regex scans the whole content in C; only the lines around its matches are looked at here.
    # Lines are split on "\n" only, as the ingest does; a "\r" before it belongs to the line.
    spans: list[tuple[int, int]] = []
    last_end = -1
    for match in pattern.finditer(data):
        start = data.rfind(b"\n", 0, match.start()) + 1
        if start <= last_end:
            continue  # a second match on a line already decided
        end = data.find(b"\n", match.end())
        end = len(data) if end == -1 else end
        if line_belongs(data[start:end].removesuffix(b"\r"), users, pattern):
            spans.append((start, min(end + 1, len(data))))
        last_end = end
    if not spans:
        return data, lines, 0
    pieces, position = [], 0
    for start, end in spans:
        pieces.append(data[position:start])
        position = end
    pieces.append(data[position:])
    kept = b"".join(pieces)
    if kept.endswith(b"\n") and not ends_with_newline:
        kept = kept[:-1]  # the last line went: the one before it ends the file, as the last did
    return kept, lines, len(spans)


def quarantine_forgotten(classified, hashes: list[str], salt: str):
    """Spark transformation of the ingest's classified lines: a line whose parsed ``user_id`` hashes to
    a tombstone is quarantined with reason ``forgotten`` (whatever else was wrong with it), and its raw
    text is redacted so that the quarantine keeps no trace of the user."""
    from pyspark.sql import functions as F

    if not hashes:
        return classified
    spark = classified.sparkSession
    tombstones = spark.createDataFrame([(h,) for h in sorted(set(hashes))], "_forgotten_hash string")
    keyed = classified.withColumn("_forgotten_hash", F.sha2(F.concat(F.lit(salt), F.col("user_id")), 256))
    marked = keyed.join(F.broadcast(tombstones.withColumn("_forgotten", F.lit(True))), on="_forgotten_hash", how="left")
    hit = F.coalesce(F.col("_forgotten"), F.lit(False))
    return (
        marked.withColumn("reason", F.when(hit, F.lit(FORGOTTEN)).otherwise(F.col("reason")))
        .withColumn("detail", F.when(hit, F.lit("user_id matches a forget tombstone")).otherwise(F.col("detail")))
        .withColumn("raw", F.when(hit, F.lit(REDACTED)).otherwise(F.col("raw")))
        .select(*classified.columns)
    )
