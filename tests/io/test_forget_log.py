"""The tombstone salt, journals and log (local lake, no engines)."""

from __future__ import annotations

import stat

import pytest

from recsys_core.errors import ConfigError
from recsys_core.io.forget_log import SALT_FILE, BadRequest, ForgetLog, forgotten_for_ingest, salt
from recsys_core.io.lake import Lake


def test_salt_is_generated_once_into_a_private_file(settings):
    assert salt(settings, create=False) is None
    first = salt(settings)
    path = settings.data_root / SALT_FILE
    assert first and len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert salt(settings) == first == salt(settings, create=False)


def test_a_configured_salt_wins_and_must_be_long(settings):
    from recsys_core.config import ForgetSettings

    assert salt(settings.model_copy(update={"forget": ForgetSettings(salt="y" * 32)})) == "y" * 32
    assert not (settings.data_root / SALT_FILE).exists()
    with pytest.raises(ConfigError):
        salt(settings.model_copy(update={"forget": ForgetSettings(salt="short")}))


def test_journals_tombstones_and_the_hashes_the_ingest_reads(settings):
    lake = Lake(settings.lake)
    log = ForgetLog(lake)
    assert forgotten_for_ingest(settings, lake) == ([], "")
    with pytest.raises(BadRequest):
        log.journal_path("../escape")
    salt(settings)
    log.write_journal({"request_id": "r1", "user_hashes": ["a", "b"], "status": "running"})
    assert log.append_tombstone({"request_id": "r0", "user_hashes": ["c"]})
    assert not log.append_tombstone({"request_id": "r0", "user_hashes": ["c"]}), "one line per request"
    hashes, secret = forgotten_for_ingest(settings, lake)
    assert hashes == ["a", "b", "c"] and secret == salt(settings)
