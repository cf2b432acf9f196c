"""Rebuilding a lost or damaged cache from S3, so that no file S3 already holds is uploaded again.

Deep Archive bills every copy for 180 days, so when the cache holds no rows for a target whose
bucket has objects (a new machine, a deleted or damaged database, --reset) its rows are rebuilt
before planning, from what S3 proves:

1. the newest cache snapshot (in the cache bucket) holding rows for the bucket, each row kept only
   where the bucket's current listing holds its key with the same size and an object not newer
   than the snapshot (`snapshot_row_holds`);
2. else, for a legacy-named target, the old script's own cache of it (`db/<quote_plus(name)>.db`),
   each row kept only where the listing holds its key and the row is proven (`old_row_mtime`:
   older than the upload by a margin, or the file's content has the listed ETag, single-part or
   multipart at the old script's part size; a stale row whose file's content has the ETag takes
   the file's mtime now) (that is how an
   installation of the old script is adopted: it is a cache that holds no rows yet);
3. for listed objects neither covers: the listing's size against the file on disk, and where that
   matches a regular file, the object's `mtime` user metadata (HeadObject) against its
   st_mtime_ns, and for an object without it (the old script's), the ETag against the file's
   content (`content_proves_etag`, the file read once); a listed object whose file is gone gets a
   "gone" row (records.GONE_MTIME_NS), which the planner never takes as proof of anything (a file
   back at it goes through HeadObject).

Owns: the pure decisions (`needs_head`, `proves_row`, `snapshot_row_holds`, `old_row_mtime`), the
listing of one bucket kept in a
temporary SQLite file (a million keys never sit in memory), finding, downloading (streamed to a
temporary file), unpacking and checking snapshots, and checking snapshot rows against the listing.
The HeadObject fan-out is wired in `backup/recovery.py`, which owns its task group and streams.
Imports the S3 adapter and the cache store's types; must not import backup/, the planner or the walk.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import socket
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio

from ..cache import snapshotdb
from ..cache.legacy import OldCache
from ..cache.listing import Listed, Listing
from ..cache.records import stat_float_mtime
from ..cache.store import StateStore, Stored
from ..disk.digest import content_proves_etag
from ..disk.keys import ESCAPED_KEY_MARK, key_for_path, path_for_key
from ..errors import S3Error
from ..s3.client import S3
from ..s3.objects import ListedObject, ObjectHead, parse_mtime_metadata
from .shares import AbsentShares

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "async-backup.db.gz"
LOG_NAME = "backup.log"
REBUILDING_MARK = "rebuilding:"  # meta name prefix: a rebuild of this bucket began and has not finished
ROW_BATCH = 5_000  # snapshot rows written to the cache per transaction
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# An old script's row is taken on time alone only where its mtime is older than the object's
# LastModified by this much. The mtime comes from the server's clock, LastModified from S3's: S3
# refuses requests signed more than 15 minutes off (RequestTimeTooSkewed), so the old script's
# clock was within 15 minutes of S3's. A PutObject's LastModified may be when it completed, not
# when its body was read: up to 8 MiB (the old script's multipart threshold; a multipart object's
# LastModified is when the upload was created, before any part was read), under 5 minutes on any
# usable link. And a listing gives whole seconds. A row inside the margin needs the ETag proof.
OLD_UPLOAD_MARGIN_S = 15 * 60 + 5 * 60 + 1


# ----------------------------------------------------------------------------- pure decisions


@dataclass(frozen=True, slots=True)
class DiskStat:
    """What the walk would see of a file: only what a rebuild compares."""

    is_regular: bool
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> DiskStat:
        return cls(stat.S_ISREG(st.st_mode), st.st_size, st.st_mtime_ns)


def needs_head(listed_size: int, disk: DiskStat | None) -> bool:
    """Whether a HeadObject can prove anything: only where the listed size matches a regular
    file on disk. A file that is gone, or differs in size, is uploaded anyway: no HEAD for it."""
    return disk is not None and disk.is_regular and disk.size == listed_size


def proves_row(listed_size: int, disk: DiskStat | None, metadata: dict[str, str]) -> bool:
    """Whether S3 proves that the object is the file as it is on disk now: the same size (the
    listing) and the same mtime to the nanosecond (our `mtime` metadata, set on every upload)."""
    if not needs_head(listed_size, disk):
        return False
    assert disk is not None
    mtime_ns = parse_mtime_metadata(metadata)
    return mtime_ns is not None and mtime_ns == disk.mtime_ns


def snapshot_row_holds(listed: Listed, snapshot_time_s: float) -> bool:
    """A snapshot row tells what an object was when the snapshot was written: it still holds only
    where the object was not replaced since, i.e. its LastModified is not newer than the snapshot's
    (both from listings of the same S3, so one clock). A newer object goes to the HeadObject proof."""
    return listed.last_modified_s is not None and listed.last_modified_s <= snapshot_time_s


def old_row_predates_upload(timestamp: float, listed: Listed) -> bool:
    """Whether the old script's float mtime is older than the object's LastModified by the margin:
    then the file was last written before that upload read it, and the row describes its bytes."""
    return listed.last_modified_s is not None and timestamp < listed.last_modified_s - OLD_UPLOAD_MARGIN_S


def old_row_mtime(path: bytes, timestamp: float, listed: Listed) -> float | None:
    """The float mtime a row of the old script's cache becomes ours with, or None: held out for
    want of proof (blocking: a worker thread).

    The old script stat'ed each file *after* uploading it, so a file rewritten during its upload
    left a row with the new mtime over the old bytes. A row the file still matches (listed size,
    the same float mtime) is taken where its mtime predates the upload by the margin; else only
    where the file's content has the listed ETag (`content_proves_etag`: the file is read).
    A row the file no longer matches at the listed size is stale (the old script's last run
    changed the file and died before it copied its cache): the content decides too, and where it
    proves the object, the row takes the file's mtime now. Any other row that cannot call the
    file unchanged (gone, another size, content not proven) is taken as it is: it only makes the
    run delete or upload that file, as no row would (and a gone file's object is then deleted,
    not left current for good)."""
    predates = old_row_predates_upload(timestamp, listed)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return timestamp
    except OSError:
        return timestamp if predates else None  # unreadable: no knowledge beyond the row's own
    if not stat.S_ISREG(st.st_mode) or st.st_size != listed.size:
        return timestamp
    now = stat_float_mtime(st.st_mtime_ns)
    if now == timestamp and predates:
        return timestamp
    if content_proves_etag(path, st.st_size, st.st_mtime_ns, listed.etag)[0]:
        return now
    return timestamp if now != timestamp else None


def checksum_of(head: ObjectHead) -> str | None:
    """The checksum S3 stored, in the cache's form (what an upload would have recorded)."""
    if head.checksum_crc32:
        return f"crc32:{head.checksum_crc32}"
    if head.etag and not head.encrypted_with_key and not head.other_checksum:
        return f"md5:{head.etag}"
    return None


def under_root(path: bytes, root: bytes) -> bool:
    """Only rows inside the target's folder: a row the walk cannot see would be planned as a delete."""
    return path.startswith(root.rstrip(b"/") + b"/")


# ----------------------------------------------------------------------------- where snapshots live


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


def needs_rebuild(store: StateStore, bucket: str) -> bool:
    """No rows for the bucket, or a rebuild of it that began and never finished."""
    return store.count(bucket) == 0 or store.get_meta(REBUILDING_MARK + bucket) is not None


# ----------------------------------------------------------------------------- the listing


def _listed(o: ListedObject) -> Listed:
    return Listed(o.key, o.size, None if o.last_modified is None else o.last_modified.timestamp(), o.etag)


async def list_bucket(s3: S3, bucket: str, dest: Path) -> Listing | None:
    """The bucket's current objects, one ListObjectsV2 per 1,000; None when there is no bucket."""
    if s3.known_missing(bucket):
        return None
    listing = Listing(dest)
    try:
        async for page in s3.list_current(bucket):
            listing.requests += 1
            if page:
                await anyio.to_thread.run_sync(listing.add, [_listed(o) for o in page])
    except S3Error as exc:
        listing.close()
        if exc.code == "NoSuchBucket":
            return None
        raise
    return listing


# ----------------------------------------------------------------------------- the two sources


def rows_from_snapshot(
    db: Path, bucket: str, root: bytes, listing: Listing, store: StateStore, snapshot_time_s: float
) -> int:
    """Copy the snapshot's rows for `bucket` into the cache where the listing holds the key with
    the same size (rows adopted from the old script carry no size: the key must be listed) and an
    object not newer than the snapshot (`snapshot_row_holds`). The keys taken are marked covered
    in the listing; the others are left to the HeadObject proof. Runs in a worker thread;
    returns rows written."""
    written = 0
    batch: list[Stored] = []
    keys: list[str] = []
    rows = snapshotdb.rows_of(db, bucket)
    try:
        for row in rows:
            if not under_root(row.path, root):
                continue
            key = key_for_path(row.path)
            listed = listing.get(key)
            if listed is None or (row.size is not None and int(row.size) != listed.size):
                continue
            if not snapshot_row_holds(listed, snapshot_time_s):
                continue  # replaced after the snapshot: the row may describe other bytes
            batch.append(row)
            keys.append(key)
            if len(batch) >= ROW_BATCH:
                store.apply(batch)
                listing.cover(keys)
                written += len(batch)
                batch, keys = [], []
        if batch:
            store.apply(batch)
            listing.cover(keys)
            written += len(batch)
    finally:
        rows.close()
    return written


@dataclass(frozen=True, slots=True)
class Adopted:
    """What adopting an old cache did: rows written, and rows held out for want of proof."""

    rows: int = 0
    unproven: int = 0


def rows_from_old_cache(old: OldCache, bucket: str, root: bytes, listing: Listing, store: StateStore) -> Adopted:
    """Adopt the old script's cache: a listed key it holds becomes a row with the listed size and
    the float st_mtime the old script saw (the planner compares at that precision), where
    `old_row_mtime` says so. Keys taken are marked covered; a row held out stays uncovered, for
    the listing's own proof (a HeadObject, a gone row) and else an upload. A key the old cache
    holds but S3 does not list stays out: its file is uploaded. Runs in a worker thread."""
    written = 0
    unproven = 0
    for chunk in iter_chunks(listing):
        # The old script's keys are str(path).lstrip("/"); keys in our escaped form are ours.
        listed = {"/" + e.key: e for e in chunk if not e.key.startswith(ESCAPED_KEY_MARK)}
        stamps = old.lookup(list(listed))
        rows = []
        for old_key, ts in stamps.items():
            path = path_for_key(old_key[1:])
            if not under_root(path, root):
                continue
            mtime = old_row_mtime(path, ts, listed[old_key])
            if mtime is not None:
                rows.append((path, listed[old_key].size, mtime))
            else:
                unproven += 1
        if rows:
            written += store.insert_adopted(bucket, rows)
            listing.cover([key_for_path(p) for p, _size, _ts in rows])
    return Adopted(written, unproven)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A listed object whose size matches a regular file on disk: a HeadObject may prove it."""

    key: str
    path: bytes
    listed_size: int
    disk: DiskStat


def candidates(
    entries: Sequence[Listed], root: bytes, absent: AbsentShares | None = None
) -> tuple[list[Candidate], list[tuple[bytes, int]]]:
    """The entries worth a HeadObject, and the (path, listed size) of those whose file is gone
    from disk (lstat of each local path; runs in a worker thread).

    A gone file's object gets a row, so the run deletes it like any vanished file (a delete marker,
    restorable for noncurrent_days; the deletion guard applies): otherwise a file deleted while the
    cache was lost would stay current in S3 for good. Only "no such file" counts as gone; a path
    that cannot be read (EACCES, EIO) is no knowledge and gets no row, and so is a file under an
    absent share (`absent`: an unmounted share leaves an empty folder, which proves nothing)."""
    found = []
    gone = []
    for entry in entries:
        path = path_for_key(entry.key)
        if not under_root(path, root):
            continue
        try:
            disk = DiskStat.of(os.lstat(path))
        except (FileNotFoundError, NotADirectoryError):
            if absent is None or not absent.holds(path):
                gone.append((path, entry.size))
            continue
        except OSError:
            continue  # unreadable: left alone, as the walk leaves it
        if needs_head(entry.size, disk):
            found.append(Candidate(entry.key, path, entry.size, disk))
    return found, gone


def iter_chunks(listing: Listing, limit: int = 1000) -> Iterator[list[Listed]]:
    after = ""
    while chunk := listing.uncovered(after, limit):
        yield chunk
        after = chunk[-1].key
