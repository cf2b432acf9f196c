"""Snapshots of the cache in S3: which bucket they go to, how one is packed, finding the newest.

Owns the cache bucket's name (from config.json alone, and the older host-derived one still
read), the key layout (one key per installation sharing a cache bucket), the `snapshot_due` and
`cache_bucket` meta names, the consistent gzipped copy of the cache and the bounded tail of the
log that go up beside it, finding snapshots, downloading one (streamed to a temporary file,
gunzipped and checked: `cache.snapshotdb` reads it), and the shelf a rebuild picks the newest
sound snapshot from. `save` decides when one is due and uploads it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio

from ..cache import snapshotdb
from ..cache.store import StateStore
from ..errors import S3Error
from ..s3.client import S3
from ..settings.config import Config
from ..settings.naming import cache_bucket_of, stable_bucket_name

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "async-backup.db.gz"
LOG_NAME = "backup.log"
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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


def installation_id(cache_dir: Path) -> str:
    """Snapshot keys are distinct per installation sharing a cache bucket: host + hash of the path."""
    host = socket.gethostname().split(".")[0] or "host"
    digest = hashlib.sha256(os.fsencode(str(cache_dir))).hexdigest()[:8]
    return f"{host}-{digest}"


def snapshot_key(cache_dir: Path) -> str:
    return f"{installation_id(cache_dir)}/{SNAPSHOT_NAME}"


def log_key(cache_dir: Path) -> str:
    return f"{installation_id(cache_dir)}/{LOG_NAME}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    bucket: str
    key: str
    last_modified: datetime

    def describe(self) -> str:
        when = self.last_modified.strftime("%Y-%m-%d %H:%M UTC")
        return f"snapshot s3://{self.bucket}/{self.key} of {when}"


async def find_snapshots(s3: S3, buckets: Sequence[str]) -> list[Snapshot]:
    """Every cache snapshot in these buckets, newest first. A bucket that does not exist or
    cannot be listed is passed over: the bucket listing alone is still a safe source."""
    found: list[Snapshot] = []
    for bucket in buckets:
        try:
            async for page in s3.list_current(bucket):
                found.extend(
                    Snapshot(bucket, o.key, o.last_modified or EPOCH) for o in page if o.key.endswith(SNAPSHOT_NAME)
                )
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                log.warning("cache snapshots in s3://%s could not be listed (%s); passed over", bucket, exc.message)
    found.sort(key=lambda s: s.last_modified, reverse=True)
    return found


class SnapshotUnusable(Exception):
    """A snapshot that cannot be downloaded, unpacked or read as a sound SQLite database."""


async def download_snapshot(s3: S3, snapshot: Snapshot, dest_dir: Path, name: str) -> Path:
    """GetObject streamed to a temporary file, gunzipped to another, checked with integrity_check."""
    packed = dest_dir / f"{name}.db.gz"
    unpacked = dest_dir / f"{name}.db"
    try:
        async with s3.open_object(snapshot.bucket, snapshot.key) as reader, await anyio.open_file(packed, "wb") as out:
            while chunk := await reader.read(DOWNLOAD_CHUNK_BYTES):
                await out.write(chunk)
    except S3Error as exc:
        raise SnapshotUnusable(f"download failed: {exc.message}") from None
    await anyio.to_thread.run_sync(_unpack_and_check, packed, unpacked)
    return unpacked


def _unpack_and_check(packed: Path, unpacked: Path) -> None:
    try:
        with gzip.open(packed, "rb") as src, open(unpacked, "wb") as dst:
            shutil.copyfileobj(src, dst, DOWNLOAD_CHUNK_BYTES)
    except (OSError, EOFError) as exc:
        raise SnapshotUnusable(f"not a gzip file ({exc})") from None
    finally:
        packed.unlink(missing_ok=True)
    trouble = snapshotdb.problem(unpacked)
    if trouble is not None:
        raise SnapshotUnusable(trouble)


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
