"""Snapshots of the cache in S3: which bucket they go to, how one is packed, finding the newest.

Owns the cache bucket's name (from config.json alone, and the older host-derived one still
read), the `snapshot_due` meta flag, the consistent gzipped copy of the cache and the bounded
tail of the log that go up beside it, and the shelf a rebuild picks the newest sound snapshot
from. Key layout and the checks on a downloaded snapshot live in `rebuild`; backup's
`backup.snapshot` decides when one is due and uploads it.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import socket
from pathlib import Path

import anyio

from ..cache import snapshotdb
from ..cache.store import StateStore
from ..s3.client import S3
from ..settings.config import Config
from ..settings.naming import cache_bucket_of, stable_bucket_name
from .rebuild import (
    Snapshot,
    SnapshotUnusable,
    download_snapshot,
    find_snapshots,
)

log = logging.getLogger(__name__)

SNAPSHOT_DUE = "snapshot_due"  # meta flag: "0" once the cache as it is now has reached S3


CACHE_BUCKET = "cache_bucket"  # meta: the default cache bucket this installation writes its snapshots to


def cache_bucket_name(config: Config) -> str | None:
    """backup.cache_bucket, or `<prefix>cache-` + 8 hex digits of the prefix's SHA-256.

    Derived from config.json alone, so a new machine given the same config.json finds the
    snapshots of the old one (each installation writes under a key of its own). On AWS with the
    default prefix the one in use, or else the one of the account's tagged prefix, as the run
    learnt it (`Config.account_names`); None when that needs the account's tag and there is none."""
    if config.cache_bucket:
        return config.cache_bucket
    names = config.account_names
    if config.account_scoped and names is not None and not names.offline:
        return names.cache_bucket
    return cache_bucket_of(config.bucket_prefix)


def host_cache_bucket_name(config: Config) -> str:
    """The default cache bucket before the rebuild existed: derived from the host name and the
    cache directory's path. Still read for snapshots an installation wrote there."""
    host = socket.gethostname().split(".")[0] or "host"
    return stable_bucket_name(config.bucket_prefix + "cache-", "/" + host + str(config.source.parent))


def snapshot_buckets(config: Config) -> list[str]:
    """Where a rebuild looks for snapshots: the cache bucket, and the older host-derived one.

    On AWS with the default prefix, the untagged default and host-derived buckets only where this
    account owns them: under those shared names another organisation's snapshots may lie."""
    if config.cache_bucket:
        return [config.cache_bucket]
    names = config.account_names
    untagged = [cache_bucket_of(config.bucket_prefix), host_cache_bucket_name(config)]
    if not config.account_scoped or names is None or names.offline:
        return untagged
    chosen = [names.cache_bucket] if names.cache_bucket else []
    return chosen + [b for b in untagged if b in names.owned and b not in chosen]


class SnapshotShelf:
    """Every snapshot in the cache buckets, listed once per run and each downloaded at most once."""

    def __init__(self, s3: S3, buckets: list[str], tmp: Path) -> None:
        self._s3 = s3
        self._buckets = buckets
        self._tmp = tmp
        self._found: list[Snapshot] | None = None
        self._opened: dict[Snapshot, Path | None] = {}

    async def newest_holding(self, bucket: str) -> tuple[Snapshot, Path] | None:
        """The newest sound snapshot with rows for `bucket`, and its unpacked database."""
        if self._found is None:
            self._found = await find_snapshots(self._s3, self._buckets)
        for snapshot in self._found:
            if snapshot not in self._opened:
                try:
                    path: Path | None = await download_snapshot(
                        self._s3, snapshot, self._tmp, f"snapshot-{len(self._opened)}"
                    )
                except SnapshotUnusable as exc:
                    log.warning("%s cannot be used (%s); passed over", snapshot.describe(), exc)
                    path = None
                self._opened[snapshot] = path
            db = self._opened[snapshot]
            if db is not None and await anyio.to_thread.run_sync(snapshotdb.holds, db, bucket):
                return snapshot, db
        return None


def pack_snapshot(store: StateStore, snapshot: Path) -> Path:
    """A consistent copy of the cache, gzipped into a temporary file: streamed, never whole in memory."""
    store.snapshot(snapshot)
    packed = snapshot.with_suffix(".db.gz")
    with open(snapshot, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    os.unlink(snapshot)
    return packed


def log_tail(path: Path, max_bytes: int) -> bytes:
    """The current backup.log, its last `max_bytes` at most (it is rotated at that size, but a log
    written before rotation existed may be larger): the uploaded copy is bounded."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - max_bytes))
        return f.read(max_bytes)
