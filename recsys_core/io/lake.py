"""The Parquet lake: table locations, date partitions, manifests and atomic publishing.

A partition ``<table>/dt=YYYY-MM-DD/`` is *complete* when it holds a
``_manifest.json``, written last. Readers only ever see complete partitions.
Publishing writes a whole partition under ``<table>/_staging/``, then swaps it
into place by renames, so a killed run never leaves a half-written partition
visible and never damages the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recsys_core.contracts import Table
from recsys_core.errors import MissingInput

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
STAGING = "_staging"
TRASH = "_trash"


def partition_name(column: str, value: date | str) -> str:
    return f"{column}={value.isoformat() if isinstance(value, date) else value}"


def _to_arrow_uri(uri: str) -> str:
    # Spark speaks s3a://, Arrow speaks s3://; both name the same objects.
    return "s3://" + uri[len("s3a://") :] if uri.startswith("s3a://") else uri


@dataclass(frozen=True)
class Lake:
    """A lake rooted at a local folder or an object-store URI."""

    root: str

    @cached_property  # one filesystem per lake: on S3 each one is a new client
    def _fs_and_base(self) -> tuple[pafs.FileSystem, str]:
        uri = _to_arrow_uri(self.root)
        if "://" not in uri:
            Path(uri).mkdir(parents=True, exist_ok=True)
            return pafs.LocalFileSystem(), str(Path(uri).resolve())
        return pafs.FileSystem.from_uri(uri)

    @property
    def fs(self) -> pafs.FileSystem:
        return self._fs_and_base[0]

    def path(self, *parts: str) -> str:
        """Path of a location in the lake, as understood by ``self.fs``."""
        return "/".join([self._fs_and_base[1].rstrip("/"), *parts])

    def spark_uri(self, path: str) -> str:
        """A path of ``self.fs`` as a URI Spark understands."""
        if "://" not in self.root:
            return path
        return self.root.split("://", 1)[0] + "://" + path

    def table_path(self, table: Table | str) -> str:
        return self.path(table.name if isinstance(table, Table) else table)

    def partition_path(self, table: Table, value: date | str) -> str:
        return self.path(table.name, partition_name(table.partition or "dt", value))

    # Discovery ----------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def partitions(self, table: Table, *, complete_only: bool = True) -> list[str]:
        """Partition values (as strings, sorted) of a table."""
        base = self.table_path(table)
        if not self.exists(base):
            return []
        key = (table.partition or "dt") + "="
        values = []
        for info in self.fs.get_file_info(pafs.FileSelector(base)):
            name = info.base_name
            if info.type != pafs.FileType.Directory or not name.startswith(key):
                continue
            if complete_only and not self.exists(f"{info.path}/{MANIFEST}"):
                continue
            values.append(name[len(key) :])
        return sorted(values)

    def latest_partition(self, table: Table, *, on_or_before: date | None = None, complete_only: bool = True) -> str | None:
        values = self.partitions(table, complete_only=complete_only)
        if on_or_before is not None:
            values = [v for v in values if v <= on_or_before.isoformat()]
        return values[-1] if values else None

    def is_complete(self, table: Table, value: date | str) -> bool:
        """Whether the partition exists with its manifest (written last, so it is whole)."""
        return self.exists(f"{self.partition_path(table, value)}/{MANIFEST}")

    def require_partition(self, table: Table, value: date | str, *, hint: str) -> str:
        path = self.partition_path(table, value)
        if not self.is_complete(table, value):
            raise MissingInput(
                f"{table.name} has no complete partition {partition_name(table.partition or 'dt', value)} "
                f"under {self.table_path(table)}",
                hint=hint,
            )
        return path

    # Manifests ------------------------------------------------------------------
    def read_manifest(self, partition_path: str) -> dict[str, Any]:
        return self.read_json(f"{partition_path}/{MANIFEST}")

    def read_json(self, path: str) -> dict[str, Any]:
        with self.fs.open_input_stream(path) as stream:
            return json.loads(stream.read().decode())

    def write_json(self, path: str, payload: dict[str, Any]) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as stream:
            stream.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
        self.fs.move(tmp, path)

    def visible_files(self, folder: str) -> list[str]:
        """Every file under ``folder``, sorted, without hidden and marker files (``.x``, ``_manifest.json``)."""
        infos = self.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(("_", ".")))

    def data_files(self, partition_path: str) -> list[str]:
        return [path for path in self.visible_files(partition_path) if path.endswith(".parquet")]

    def checksum(self, partition_path: str) -> str:
        """SHA-256 over the partition's data files, in name order."""
        digest = hashlib.sha256()
        for path in self.data_files(partition_path):
            digest.update(path.rsplit("/", 1)[-1].encode())
            with self.fs.open_input_stream(path) as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()

    def move_dir(self, source: str, target: str) -> None:
        """Move a folder. One rename on a file system; on an object store (no directory
        renames) a copy of each object, then the source is deleted: readers still only
        trust a partition once its manifest, copied last, is there."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.move(source, target)
            return
        infos = self.fs.get_file_info(pafs.FileSelector(source, recursive=True))
        files = sorted((i.path for i in infos if i.type == pafs.FileType.File), key=lambda p: p.endswith(MANIFEST))
        for path in files:
            self.fs.copy_file(path, target + path[len(source) :])
        self.fs.delete_dir(source)

    # Staging and publishing -------------------------------------------------------
    def new_staging_path(self, table: Table, label: str) -> str:
        path = self.path(table.name, STAGING, f"{label}.{uuid.uuid4().hex[:12]}")
        self.fs.create_dir(path, recursive=True)
        return path

    def publish(
        self,
        table: Table,
        value: date | str,
        staged_path: str,
        manifest: dict[str, Any],
    ) -> str:
        """Swap a fully written staged partition into place, atomically for readers.

        The manifest (with row count and checksum added) is written into the
        staged folder before the swap, so the partition appears complete or not
        at all. The previous version is moved aside and deleted only afterwards.
        """
        target = self.partition_path(table, value)
        self.recover(table, value)
        rows = sum(pq.ParquetFile(self.fs.open_input_file(p)).metadata.num_rows for p in self.data_files(staged_path))
        full_manifest = {
            "table": table.name,
            table.partition or "dt": str(value),
            "rows": rows,
            "files": [p.rsplit("/", 1)[-1] for p in self.data_files(staged_path)],
            "checksum_sha256": self.checksum(staged_path),
            "created_at": datetime.now(UTC).isoformat(),
            **manifest,
        }
        self.write_json(f"{staged_path}/{MANIFEST}", full_manifest)
        trash = self.path(table.name, TRASH, f"{partition_name(table.partition or 'dt', value)}.{uuid.uuid4().hex[:12]}")
        if self.exists(target):
            self.fs.create_dir(trash.rsplit("/", 1)[0], recursive=True)
            self.move_dir(target, trash)
        self.move_dir(staged_path, target)
        if self.exists(trash):
            self.fs.delete_dir(trash)
        log.debug("published %s %s: %d rows", table.name, partition_name(table.partition or "dt", value), rows)
        return target

    def recover(self, table: Table, value: date | str) -> None:
        """Undo the effect of a run killed between the two renames of ``publish``."""
        target = self.partition_path(table, value)
        trash_dir = self.path(table.name, TRASH)
        if self.exists(target) or not self.exists(trash_dir):
            return
        prefix = partition_name(table.partition or "dt", value) + "."
        aside = [
            i.path
            for i in self.fs.get_file_info(pafs.FileSelector(trash_dir))
            if i.base_name.startswith(prefix) and self.exists(f"{i.path}/{MANIFEST}")
        ]
        if aside:
            newest = max(aside, key=lambda p: self.read_manifest(p).get("created_at", ""))
            self.move_dir(newest, target)
            log.warning("restored %s from %s after an interrupted publish", target, newest)

    def drop_spark_markers(self, folder: str) -> None:
        """Remove Spark's _SUCCESS and .crc files: our manifests mark completion."""
        for info in self.fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
            if info.type == pafs.FileType.File and (info.base_name == "_SUCCESS" or info.base_name.endswith(".crc")):
                self.fs.delete_file(info.path)

    def drop_partitions_older_than(self, table: Table, keep: int) -> list[str]:
        values = self.partitions(table, complete_only=False)
        dropped = values[:-keep] if keep > 0 and len(values) > keep else []
        for value in dropped:
            self.fs.delete_dir(self.partition_path(table, value))
        return dropped

    # Reading and writing Arrow --------------------------------------------------------
    def write_parquet(self, table: pa.Table, directory: str, name: str = "part-00000.parquet") -> str:
        self.fs.create_dir(directory, recursive=True)
        path = f"{directory}/{name}"
        pq.write_table(table, path, filesystem=self.fs, compression="zstd")
        return path

    def read_partition(self, table: Table, value: date | str, columns: Iterable[str] | None = None) -> pa.Table:
        path = self.require_partition(table, value, hint="run the stage that builds it first")
        files = self.data_files(path)
        cols = list(columns) if columns is not None else None
        if not files:
            return table.schema.empty_table().select(cols) if cols else table.schema.empty_table()
        return pq.read_table(files, filesystem=self.fs, columns=cols, partitioning=None)
