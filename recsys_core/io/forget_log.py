"""Storage of forget requests: the salt, each request's journal, and the tombstone log.

Under ``<lake>/_forget/``:

- ``requests/<request_id>.json``: the journal of one request (the salted hashes of its users, the
  steps done, every file it changed with rows before and after). Written before anything is
  removed and after every change, atomically, so a rerun after ``kill -9`` finishes the job and
  counts every row once.
- ``tombstones.jsonl``: one line per completed request: request id, time, the users' salted hashes,
  rows removed per table. Never a raw user id.

The ingest reads the hashes of every request, started or done, and quarantines later events of
those users (``recsys_core.features.forget``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from recsys_core.config import Settings
from recsys_core.errors import ConfigError, DataError
from recsys_core.io.lake import Lake

FORGET_DIR = "_forget"
REQUESTS = "requests"
TOMBSTONES = "tombstones.jsonl"
SALT_FILE = Path("secrets") / "forget_salt"
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BadRequest(DataError, ValueError):
    """A forget request that cannot be run as given."""

    hint = "pass --request-id with letters, digits, '.', '_' or '-', and the same users on every rerun of a request"


def salt(settings: Settings, *, create: bool = True) -> str | None:
    """The tombstone salt: ``forget.salt`` if set, else the generated file under data_root (made on first
    use, mode 0600); None if there is none and ``create`` is false."""
    if settings.forget.salt is not None:
        value = settings.forget.salt.get_secret_value()
        if len(value) < 16:
            raise ConfigError("forget.salt is shorter than 16 characters", hint="set RECSYS_FORGET__SALT to a long random secret")
        return value
    path = settings.data_root / SALT_FILE
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text().strip()


class ForgetLog:
    def __init__(self, lake: Lake):
        self.lake = lake
        self.base = lake.path(FORGET_DIR)

    def journal_path(self, request_id: str) -> str:
        if not REQUEST_ID.match(request_id):
            raise BadRequest(f"request id {request_id!r} is not a plain name")
        return f"{self.base}/{REQUESTS}/{request_id}.json"

    def read_journal(self, request_id: str) -> dict[str, Any] | None:
        path = self.journal_path(request_id)
        return self.lake.read_json(path) if self.lake.exists(path) else None

    def write_journal(self, journal: dict[str, Any]) -> None:
        path = self.journal_path(journal["request_id"])
        self.lake.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        self.lake.write_json(path, journal)

    def journals(self) -> list[dict[str, Any]]:
        import pyarrow.fs as pafs

        folder = f"{self.base}/{REQUESTS}"
        if not self.lake.exists(folder):
            return []
        infos = self.lake.fs.get_file_info(pafs.FileSelector(folder))
        return [self.lake.read_json(i.path) for i in sorted(infos, key=lambda i: i.path) if i.base_name.endswith(".json")]

    def tombstones(self) -> list[dict[str, Any]]:
        path = f"{self.base}/{TOMBSTONES}"
        if not self.lake.exists(path):
            return []
        with self.lake.fs.open_input_stream(path) as stream:
            return [json.loads(line) for line in stream.read().decode().splitlines() if line.strip()]

    def append_tombstone(self, record: dict[str, Any]) -> bool:
        """Add one request's record unless the log already holds that request (a rerun); atomic rewrite."""
        records = self.tombstones()
        if any(r["request_id"] == record["request_id"] for r in records):
            return False
        path = f"{self.base}/{TOMBSTONES}"
        self.lake.fs.create_dir(self.base, recursive=True)
        tmp = f"{path}.{secrets.token_hex(6)}.tmp"
        with self.lake.fs.open_output_stream(tmp) as stream:
            for r in [*records, record]:
                stream.write((json.dumps(r, sort_keys=True) + "\n").encode())
        self.lake.fs.move(tmp, path)
        return True

    def forgotten_hashes(self) -> set[str]:
        """The salted hashes of every user of every request, started or done."""
        hashes = {h for j in self.journals() for h in j.get("user_hashes", [])}
        return hashes | {h for r in self.tombstones() for h in r.get("user_hashes", [])}


def forgotten_for_ingest(settings: Settings, lake: Lake) -> tuple[list[str], str]:
    """(hashes, salt) for the ingest's filter; no hashes (and no salt file made) when nobody was forgotten."""
    hashes = ForgetLog(lake).forgotten_hashes()
    if not hashes:
        return [], ""
    value = salt(settings, create=False)
    if value is None:
        raise ConfigError(
            f"the lake holds forget tombstones but there is no salt (forget.salt, nor {settings.data_root / SALT_FILE})",
            hint="set RECSYS_FORGET__SALT to the salt the forget requests used",
        )
    return sorted(hashes), value
