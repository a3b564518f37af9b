"""Forget users: remove every row of theirs from the lake and the training workspaces, tag the models
that saw them, and record a tombstone (``recsys forget``, the ``recsys_forget`` DAG).

Steps, in order, each recorded in the request's journal (``recsys_core.io.forget_log``):

1. ``raw_events``: landed JSON Lines (gzipped or not) and Parquet files, rewritten without the
   users' lines (temp file + rename; the other lines keep their bytes);
2. ``raw_users``: the user directory snapshots;
3. ``interactions``: every leaf file of every event date and arrival date;
4. ``quarantine``: rows whose raw text is a line of the users, and the ingest reports (counts
   lowered by what was removed, so accepted + quarantined = rows in still holds; examples of the
   users dropped), in the partition, its manifest and ``interactions/_ingests``;
5. ``user_profiles`` and 6. ``recommendations``: every partition, republished whole through the
   lake's staged swap with a manifest whose rows, checksum (and for recommendations users,
   ``content_digest`` and user counts) match the new files; ``_latest.json`` stays valid;
7. ``training``: prepared datasets in ``<data_root>/work/train/*/`` that hold the users are deleted
   (checkpoints and bundles hold weights only: user features are embedded per age bucket, gender
   and occupation, never per user);
8. ``registry``: model versions trained on data up to a date on or after the users' earliest
   removed row are tagged ``contains_forgotten_users=true``.

Files outside complete partitions (``_staging``/``_trash`` leftovers of other stages) are scrubbed
file by file too. The users' hashes are in the journal before anything is removed, so an ingest
that starts later quarantines their events as ``forgotten``. A rerun of a finished request
changes nothing; a rerun after ``kill -9`` finishes it: a file's change is journalled before the
rename and confirmed by the rerun's scan, so each removed row is counted exactly once.

Not rewritten: ``item_features`` (per-item aggregates, no user rows; the next features run
recomputes them without the users) and the embedding cache (keyed by item content).
"""

from __future__ import annotations

import gzip
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recsys_core.config import Settings
from recsys_core.contracts import INTERACTIONS, QUARANTINE, RAW_EVENTS, RAW_USERS, RECOMMENDATIONS, USER_PROFILES, Table
from recsys_core.features.forget import line_belongs, line_pattern, split_keep, user_hash
from recsys_core.features.ingest import PARQUET_SUFFIX, decompress
from recsys_core.io.forget_log import BadRequest, ForgetLog, salt
from recsys_core.io.lake import MANIFEST, STAGING, Lake
from recsys_core.io.tables import ingest_manifest_path
from recsys_core.serving.output import content_digest

log = logging.getLogger(__name__)

STEPS = ("raw_events", "raw_users", "interactions", "quarantine", "user_profiles", "recommendations", "training", "registry")
TMP_PREFIX = ".forget-"
STAGING_LABEL = "forget-"
REPORT_FILE = "_report.json"
JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
TAG = "contains_forgotten_users"
# Keys lake.publish computes for the new files; the rest of a manifest is carried over.
COMPUTED_KEYS = ("rows", "files", "checksum_sha256", "created_at")


@dataclass
class FileChange:
    table: str
    path: str
    before: int
    after: int


@dataclass
class ForgetReport:
    request_id: str
    users: int
    tables: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> files, rows_before, rows_after
    changes: list[FileChange] = field(default_factory=list)
    tagged_versions: list[str] = field(default_factory=list)
    already_done: bool = False
    seconds: float = 0.0

    @property
    def rows_removed(self) -> dict[str, int]:
        return {t: v["rows_before"] - v["rows_after"] for t, v in self.tables.items()}


class Forgetter:
    def __init__(self, settings: Settings, users: list[str], request_id: str):
        clean = sorted({u.strip() for u in users})
        if not clean or "" in clean:
            raise BadRequest(f"no user ids to forget in {users!r}")
        self.settings = settings
        self.lake = Lake(settings.lake)
        self.log = ForgetLog(self.lake)
        self.users = set(clean)
        self.pattern = line_pattern(clean)
        self.regex = self.pattern.pattern.decode()  # RE2 reads the same pattern (pyarrow's compute)
        secret = salt(settings)
        assert secret is not None  # made on first use
        self.hashes = sorted(user_hash(secret, u) for u in clean)
        self.request_id = request_id
        self.log.journal_path(request_id)  # validates the id
        self.journal: dict[str, Any] = {}
        self.report = ForgetReport(request_id, len(clean))

    # Journal -----------------------------------------------------------------------------------
    def open_journal(self) -> None:
        journal = self.log.read_journal(self.request_id)
        if journal is not None and journal["user_hashes"] != self.hashes:
            raise BadRequest(f"request {self.request_id} was started for other users; a request id names one set of users")
        if journal is None:
            journal = {
                "request_id": self.request_id,
                "user_hashes": self.hashes,
                "started_at": datetime.now(UTC).isoformat(),
                "status": "running",
                "steps_done": [],
                "files": {},
            }
        self.report.already_done = journal["status"] == "done"
        self.journal = journal
        self.log.write_journal(journal)

    def _save(self) -> None:
        self.log.write_journal(self.journal)

    def _intent(self, table: str, path: str, before: int, after: int, **detail) -> None:
        self.journal["files"][path] = {"table": table, "before": before, "after": after, "state": "intent", **detail}
        self._save()

    def _done(self, path: str) -> None:
        self.journal["files"][path]["state"] = "done"
        self._save()

    def _count(self, table: str, path: str, rows_now: int, removable: int) -> None:
        """Add one scanned file to the table's totals: a file changed by this request (now or by a killed
        run) counts with its journalled rows before; any other file with its rows as they are."""
        totals = self.report.tables.setdefault(table, {"files": 0, "rows_before": 0, "rows_after": 0})
        totals["files"] += 1
        entry = self.journal["files"].get(path)
        if entry is not None and removable == 0:
            if entry["state"] != "done":  # killed after the rename, before the journal said so
                self._done(path)
            totals["rows_before"] += entry["before"]
            totals["rows_after"] += entry["after"]
            self.report.changes.append(FileChange(table, path, entry["before"], entry["after"]))
        else:
            totals["rows_before"] += rows_now
            totals["rows_after"] += rows_now - removable

    # Row rules -------------------------------------------------------------------------------------
    def user_mask(self, column: pa.ChunkedArray) -> pa.ChunkedArray:
        """True for rows of the users: the id as text, trimmed (as the ingest reads it)."""
        text = pc.utf8_trim_whitespace(column.cast(pa.string()))
        return pc.fill_null(pc.is_in(text, pa.array(sorted(self.users), pa.string())), False)

    def raw_mask(self, column: pa.ChunkedArray) -> pa.ChunkedArray:
        """True for quarantined rows whose raw text is a line of the users."""
        candidates = pc.fill_null(pc.match_substring_regex(column, self.regex), False)
        if not pc.any(candidates).as_py():
            return candidates
        values = column.to_pylist()
        flags = candidates.to_pylist()
        return pa.chunked_array([[bool(f) and line_belongs(v, self.users, self.pattern) for v, f in zip(values, flags)]])

    def mask(self, table: pa.Table, contract: Table) -> pa.ChunkedArray:
        if contract is QUARANTINE:
            return self.raw_mask(table["raw"])
        return self.user_mask(table["user_id"])

    # Files ---------------------------------------------------------------------------------------------
    def _tmp(self, path: str) -> str:
        folder, name = path.rsplit("/", 1)
        return f"{folder}/{TMP_PREFIX}{name}.tmp"

    def _replace(self, path: str, write: Callable[[str], None]) -> None:
        tmp = self._tmp(path)
        write(tmp)
        self.lake.fs.move(tmp, path)

    def scrub_parquet_file(self, contract: Table, path: str, table_name: str | None = None, **detail) -> None:
        """One Parquet file without the users' rows (temp file + rename)."""
        name = table_name or contract.name
        column = "raw" if contract is QUARANTINE else "user_id"
        with self.lake.fs.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle)
            names, rows = meta.schema_arrow.names, meta.metadata.num_rows
        if column not in names:
            self._count(name, path, rows, 0)
            return
        # The key column first: most files hold none of the users and are never read whole.
        hit = self.mask(pq.read_table(path, filesystem=self.lake.fs, columns=[column], partitioning=None), contract)
        removable = pc.sum(hit).as_py() or 0
        if not removable:
            self._count(name, path, rows, 0)
            return
        table = pq.read_table(path, filesystem=self.lake.fs, partitioning=None)
        kept = table.filter(pc.invert(hit))
        self._intent(name, path, table.num_rows, kept.num_rows, **detail)
        self._replace(path, lambda tmp: pq.write_table(kept, tmp, filesystem=self.lake.fs, compression="zstd"))
        self._count(name, path, kept.num_rows, 0)

    def scrub_json_file(self, path: str) -> None:
        with self.lake.fs.open_input_stream(path, compression=None) as stream:  # the bytes as stored
            content = stream.read()
        compressed = path.endswith(".gz") or content[:2] == b"\x1f\x8b"
        data = decompress(path, content)
        kept, lines, removed = split_keep(data, self.users, self.pattern)
        if not removed:
            self._count(RAW_EVENTS.name, path, lines, 0)
            return
        self._intent(RAW_EVENTS.name, path, lines, lines - removed)
        payload = gzip.compress(kept, compresslevel=6, mtime=0) if compressed else kept

        def write(tmp: str) -> None:
            with self.lake.fs.open_output_stream(tmp) as out:
                out.write(payload)

        self._replace(path, write)
        self._count(RAW_EVENTS.name, path, lines - removed, 0)

    def files_under(self, folder: str) -> list[str]:
        """Data files under a folder (hidden ones too, but not this stage's own temp files, which go)."""
        if not self.lake.exists(folder):
            return []
        out = []
        for info in self.lake.fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            if info.base_name.startswith(TMP_PREFIX):
                self.lake.fs.delete_file(info.path)  # left by a killed run: the original is still in place
                continue
            out.append(info.path)
        return sorted(out)

    # Steps ---------------------------------------------------------------------------------------------
    def step_raw_events(self) -> None:
        for path in self.files_under(self.lake.table_path(RAW_EVENTS)):
            if path.endswith(PARQUET_SUFFIX):
                self.scrub_parquet_file(RAW_EVENTS, path)
            elif path.endswith(JSON_SUFFIXES):
                self.scrub_json_file(path)

    def step_raw_users(self) -> None:
        for path in self.files_under(self.lake.table_path(RAW_USERS)):
            if path.endswith(PARQUET_SUFFIX):
                self.scrub_parquet_file(RAW_USERS, path)

    def step_interactions(self) -> None:
        for path in self.files_under(self.lake.table_path(INTERACTIONS)):
            if path.endswith(PARQUET_SUFFIX):
                self.scrub_parquet_file(INTERACTIONS, path, **_hive_values(path))

    def step_quarantine(self) -> None:
        self.scrub_partitioned(QUARANTINE)
        # Every arrival day whose rows this request removed gets its report lowered (once).
        days = sorted({e["ingest_dt"] for e in self.journal["files"].values() if e.get("ingest_dt")})
        for day in days:
            self._update_reports(day)

    def step_user_profiles(self) -> None:
        self.scrub_partitioned(USER_PROFILES)

    def step_recommendations(self) -> None:
        self.scrub_partitioned(RECOMMENDATIONS, manifest_update=_recommendations_manifest)

    def step_training(self) -> None:
        import json

        root = self.settings.work_dir / "train"
        for prepared in sorted(root.glob("*/prepared-*.pt")) if root.exists() else []:
            import torch

            content = torch.load(prepared, map_location="cpu", weights_only=True)
            ids = json.loads(content["user_ids_json"])
            hit = sum(1 for u in ids if u in self.users)
            path = str(prepared)
            if hit:
                self._intent("training_workspace", path, len(ids), 0, as_of=prepared.parent.name)
                # The protocol's dataset first: a prepared file left alone still says the pair held the users.
                dataset = prepared.with_name(prepared.name.replace("prepared-", "dataset-"))
                dataset.unlink(missing_ok=True)
                prepared.unlink()
            else:
                self._count("training_workspace", path, len(ids), 0)
        # A dataset whose prepared file is gone was the pair of a deleted one (killed between the two).
        for dataset in sorted(root.glob("*/dataset-*.pt")) if root.exists() else []:
            if str(dataset.with_name(dataset.name.replace("dataset-", "prepared-"))) in self.journal["files"]:
                dataset.unlink()
        # Files a killed run of this request deleted still count, with their journalled rows.
        for path, entry in list(self.journal["files"].items()):
            if entry["table"] == "training_workspace" and not Path(path).exists():
                self._count("training_workspace", path, 0, 0)

    def step_registry(self) -> None:
        earliest = self._earliest_removed()
        if earliest is None:
            return
        database = self.settings.tracking_uri.removeprefix("sqlite:///")
        if self.settings.tracking_uri.startswith("sqlite:///") and not Path(database).exists():
            return
        import mlflow

        from recsys_core.io.registry import configure_tracking

        configure_tracking(self.settings)
        client = mlflow.MlflowClient()
        name = self.settings.train.model_name
        try:
            versions = client.search_model_versions(f"name='{name}'")
        except mlflow.exceptions.MlflowException:
            return
        for version in versions:
            as_of = _version_as_of(client, version)
            if as_of is None or as_of < earliest:
                continue
            requests = set(filter(None, (version.tags.get("forgotten_requests") or "").split(",")))
            client.set_model_version_tag(name, version.version, TAG, "true")
            requests.add(self.request_id)
            client.set_model_version_tag(name, version.version, "forgotten_requests", ",".join(sorted(requests)))
            self.report.tagged_versions.append(str(version.version))

    # Partitions with manifests ---------------------------------------------------------------------------------
    def scrub_partitioned(self, contract: Table, manifest_update: Callable | None = None) -> None:
        """Complete partitions are republished whole through the lake's staged swap; any other file of the
        table (leftovers in _staging/_trash) is scrubbed on its own."""
        lake = self.lake
        staging = lake.path(contract.name, STAGING)
        if lake.exists(staging):
            for info in lake.fs.get_file_info(pafs.FileSelector(staging)):
                if info.base_name.startswith(STAGING_LABEL):
                    lake.fs.delete_dir(info.path)
        values = lake.partitions(contract, complete_only=False)
        for value in values:
            lake.recover(contract, value)
        complete = [v for v in values if lake.is_complete(contract, v)]
        inside = tuple(lake.partition_path(contract, v) + "/" for v in complete)
        for path in self.files_under(lake.table_path(contract)):
            if path.endswith(PARQUET_SUFFIX) and not path.startswith(inside):
                self.scrub_parquet_file(contract, path)
        for value in complete:
            self.scrub_partition(contract, value, manifest_update)

    def scrub_partition(self, contract: Table, value: str, manifest_update: Callable | None) -> None:
        lake = self.lake
        path = lake.partition_path(contract, value)
        files = lake.data_files(path)
        tables = {f: pq.read_table(f, filesystem=lake.fs, partitioning=None) for f in files}
        masks = {f: self.mask(t, contract) for f, t in tables.items()}
        rows_now = sum(t.num_rows for t in tables.values())
        removable = sum(pc.sum(m).as_py() or 0 for m in masks.values())
        detail: dict[str, Any] = {"partition": value}
        if contract is QUARANTINE:
            detail["ingest_dt"] = value
            removed_reasons: dict[str, int] = defaultdict(int)
            for f, t in tables.items():
                for reason in t.filter(masks[f])["reason"].to_pylist():
                    removed_reasons[reason] += 1
            detail["reasons"] = dict(removed_reasons)
        if not removable:
            self._count(contract.name, path, rows_now, 0)
            return
        staged = lake.new_staging_path(contract, f"{STAGING_LABEL}{value}")
        removed = []
        for f, t in tables.items():
            lake.write_parquet(t.filter(pc.invert(masks[f])), staged, name=f.rsplit("/", 1)[-1])
            removed.append(t.filter(masks[f]))
        for info in lake.fs.get_file_info(pafs.FileSelector(path)):  # _report.json and other sidecars
            if info.type == pafs.FileType.File and info.base_name not in (MANIFEST,) and info.path not in tables:
                lake.fs.copy_file(info.path, f"{staged}/{info.base_name}")
        manifest = {k: v for k, v in lake.read_manifest(path).items() if k not in COMPUTED_KEYS}
        kept = pa.concat_tables([t.filter(pc.invert(masks[f])) for f, t in tables.items()])
        manifest.setdefault("forgotten", {})[self.request_id] = {"rows_removed": removable}
        if manifest_update is not None:
            manifest = manifest_update(manifest, kept, pa.concat_tables(removed), staged)
        self._intent(contract.name, path, rows_now, rows_now - removable, **detail)
        lake.publish(contract, value, staged, manifest)
        self._count(contract.name, path, rows_now - removable, 0)

    # Ingest reports (the report inside a quarantine partition, its manifest, interactions/_ingests)
    def _report_delta(self, day: str) -> dict[str, Any]:
        delta: dict[str, Any] = {"rows_accepted": 0, "rows_quarantined": 0}
        delta.update(reasons=defaultdict(int), event_dates=defaultdict(int))
        for entry in self.journal["files"].values():
            if entry.get("ingest_dt") != day:
                continue
            removed = entry["before"] - entry["after"]
            if entry["table"] == INTERACTIONS.name:
                delta["rows_accepted"] += removed
                delta["event_dates"][entry["dt"]] += removed
            elif entry["table"] == QUARANTINE.name:
                delta["rows_quarantined"] += removed
                for reason, n in entry.get("reasons", {}).items():
                    delta["reasons"][reason] += n
        return delta

    def _adjust(self, report: dict, delta: dict) -> dict:
        """The report less this request's rows (once: it remembers the requests applied), without
        examples of the users."""
        report = dict(report)
        report["examples"] = {
            reason: ex
            for reason, ex in (report.get("examples") or {}).items()
            if not line_belongs(str(ex.get("raw", "")), self.users, self.pattern)
        }
        applied = dict(report.get("forgotten") or {})
        if self.request_id in applied:
            return report
        accepted, quarantined = delta["rows_accepted"], delta["rows_quarantined"]
        report["rows_accepted"] = report.get("rows_accepted", 0) - accepted
        report["rows_quarantined"] = report.get("rows_quarantined", 0) - quarantined
        report["rows_in"] = report.get("rows_in", 0) - accepted - quarantined
        reasons = dict(report.get("reasons") or {})
        for reason, n in delta["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) - n
        report["reasons"] = {k: v for k, v in sorted(reasons.items()) if v}
        by_date = dict(report.get("accepted_by_event_date") or {})
        for day, n in delta["event_dates"].items():
            by_date[day] = by_date.get(day, 0) - n
        report["accepted_by_event_date"] = {k: v for k, v in sorted(by_date.items()) if v}
        rows_in = report["rows_in"]
        report["reject_rate"] = round(report["rows_quarantined"] / rows_in, 6) if rows_in else 0.0
        applied[self.request_id] = {"rows_accepted": accepted, "rows_quarantined": quarantined}
        report["forgotten"] = applied
        return report

    def _update_reports(self, day: str) -> None:
        lake, delta = self.lake, self._report_delta(day)
        partition = lake.partition_path(QUARANTINE, day)
        targets = [f"{partition}/{REPORT_FILE}", f"{partition}/{MANIFEST}", ingest_manifest_path(lake, date.fromisoformat(day))]
        for target in targets:
            if not lake.exists(target):
                continue
            payload = lake.read_json(target)
            if target.endswith(REPORT_FILE):
                new = self._adjust(payload, delta)
            elif "report" in payload:
                new = {**payload, "report": self._adjust(payload["report"], delta)}
            else:
                continue
            if new != payload:
                lake.write_json(target, new)

    def _earliest_removed(self) -> date | None:
        dates = [
            e.get("dt") or e.get("partition")
            for e in self.journal["files"].values()
            if e["table"] in (INTERACTIONS.name, USER_PROFILES.name) and e["before"] > e["after"]
        ]
        found = [date.fromisoformat(d) for d in dates if d]
        return min(found) if found else None

    # Run -------------------------------------------------------------------------------------------------------------
    def run(self, on_step: Callable[[str], None] | None = None) -> ForgetReport:
        started = time.monotonic()
        self.open_journal()
        for step in STEPS:
            getattr(self, f"step_{step}")()
            if step not in self.journal["steps_done"]:
                self.journal["steps_done"].append(step)
            self._save()
            log.info("forget %s: %s done", self.request_id, step)
            if on_step is not None:
                on_step(step)
        self.journal["status"] = "done"
        self.journal.setdefault("finished_at", datetime.now(UTC).isoformat())
        self._save()
        self.log.append_tombstone(
            {
                "request_id": self.request_id,
                "user_hashes": self.hashes,
                "hash": "sha256(salt + user_id)",
                "requested_at": self.journal["started_at"],
                "completed_at": self.journal["finished_at"],
                "rows_removed": self.report.rows_removed,
                "files_changed": len(self.journal["files"]),
                "model_versions_tagged": self.report.tagged_versions,
            }
        )
        self.report.seconds = round(time.monotonic() - started, 2)
        return self.report


def run_forget(settings: Settings, users: list[str], request_id: str) -> ForgetReport:
    report = Forgetter(settings, users, request_id).run()
    log.info(
        "forget %s: %d user(s), %d rows removed in %d files (%s) in %.1fs",
        request_id,
        report.users,
        sum(report.rows_removed.values()),
        len([c for c in report.changes if c.before != c.after]),
        ", ".join(f"{t} {n}" for t, n in report.rows_removed.items() if n),
        report.seconds,
    )
    return report


def forget_lineage(settings: Settings) -> dict[str, str]:
    """What a training run records of the forget requests before it: the cut its data reflects."""
    records = ForgetLog(Lake(settings.lake)).tombstones()
    if not records:
        return {"forget.requests": "0"}
    return {
        "forget.requests": str(len(records)),
        "forget.users": str(len({h for r in records for h in r["user_hashes"]})),
        "forget.last_request": records[-1]["request_id"],
        "forget.last_completed_at": records[-1]["completed_at"],
    }


def _version_as_of(client, version) -> date | None:
    """The training date of a registered model version (its run's ``as_of`` tag)."""
    if not version.run_id:
        return None
    as_of = client.get_run(version.run_id).data.tags.get("as_of")
    return date.fromisoformat(as_of) if as_of else None


def _hive_values(path: str) -> dict[str, str]:
    """``dt`` and ``ingest_dt`` of an interactions leaf file from its folders."""
    out = {}
    for part in path.split("/"):
        if part.startswith(("dt=", "ingest_dt=")):
            key, value = part.split("=", 1)
            out[key] = value
    return out


def _recommendations_manifest(manifest: dict, kept: pa.Table, removed: pa.Table, staged: str) -> dict:
    """Counts and digest that describe the rows left; the model's quality figures stay those of the night."""
    users = pc.count_distinct(kept["user_id"]).as_py() if kept.num_rows else 0
    sources = {}
    if kept.num_rows:
        first = kept.filter(pc.equal(kept["rank"], 1))
        sources = {r["values"]: r["counts"] for r in pc.value_counts(first["source"]).to_pylist()}
    report = dict(manifest.get("report") or {})
    model, fallback = sources.get("model", 0), sources.get("fallback", 0)
    report.update(
        {
            "users": users,
            "users_source_model": model,
            "users_source_fallback": fallback,
            "fallback_users": fallback,
            "fallback_share": round(fallback / users, 6) if users else 0.0,
        }
    )
    return {**manifest, "users": users, "content_digest": content_digest(kept), "report": report}
