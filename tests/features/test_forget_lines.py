"""Which raw lines belong to a user, and the kept lines' bytes (pure)."""

from __future__ import annotations

import hashlib

from recsys_core.features.forget import QUARANTINE_REASONS, line_belongs, line_pattern, line_user, split_keep, user_hash
from recsys_core.features.ingest import REASONS

USERS = {"42", "u 7"}
PATTERN = line_pattern(USERS)


def test_line_user_reads_the_id_as_the_ingest_does():
    assert line_user(b'{"user_id": " 42 ", "item_id": "1"}') == "42"
    assert line_user(b'{"user_id": 42, "item_id": "1"}') == "42"
    assert line_user(b'{"user_id": 42.0}') == "42.0"
    assert line_user(b'{"user_id": ["42"]}') is None
    assert line_user(b"not json") is None


def test_a_line_belongs_by_its_parsed_id_or_by_its_text_when_it_does_not_parse():
    assert line_belongs(b'{"event_id":"e1","user_id":"42","item_id":"9"}', USERS, PATTERN)
    assert line_belongs(b'{"user_id": 42, "ts": 1}', USERS, PATTERN)
    assert line_belongs(b'{"user_id":"u 7"}', USERS, PATTERN)
    assert not line_belongs(b'{"user_id":"420","item_id":"42"}', USERS, PATTERN)
    assert not line_belongs(b'{"user_id":"4","item_id":"42","note":"user_id 42"}', USERS, PATTERN)
    # Truncated or malformed: the text names the user.
    assert line_belongs(b'{"event_id":"e1","user_id":"42",', USERS, PATTERN)
    assert not line_belongs(b'{"event_id":"e1","user_id":"43",', USERS, PATTERN)
    # Parses, but the id is another user's even though a nested field says 42.
    assert not line_belongs(b'{"x":{"user_id":"42"},"user_id":"5"}', USERS, PATTERN)


def test_split_keep_keeps_other_lines_byte_for_byte():
    lines = [
        b'{"event_id":"a","user_id":"1","ts":"x"}\r',
        b'{"event_id":"b","user_id":"42","ts":"x"}',
        b"",
        b"garbage \xff line",
        b'{"event_id":"c","user_id" : 42 }',
        b'{"event_id":"d","user_id":"420"}',
    ]
    data = b"\n".join(lines) + b"\n"
    kept, before, removed = split_keep(data, USERS, PATTERN)
    assert (before, removed) == (6, 2)
    assert kept == b"\n".join([lines[0], lines[2], lines[3], lines[5]]) + b"\n"
    no_newline = b'{"user_id":"1"}\n{"user_id":"42"}'
    assert split_keep(no_newline, USERS, PATTERN) == (b'{"user_id":"1"}', 2, 1)
    untouched = b'{"user_id":"1"}\n'
    assert split_keep(untouched, USERS, PATTERN)[0] is untouched
    assert split_keep(b"", USERS, PATTERN) == (b"", 0, 0)


def test_user_hash_is_sha256_of_salt_then_id():
    assert user_hash("s4lt", "42") == hashlib.sha256(b"s4lt42").hexdigest()
    assert user_hash("s4lt", "42") != user_hash("other", "42")


def test_forgotten_is_a_quarantine_reason_after_the_line_checks():
    assert QUARANTINE_REASONS[: len(REASONS)] == REASONS and QUARANTINE_REASONS[-1] == "forgotten"
