"""Rebuilding a lost or damaged cache from S3, so that no file S3 already holds is uploaded again.

Deep Archive bills every copy for 180 days, so when the cache holds no rows for a target whose
bucket has objects (a new machine, a deleted or damaged database, --reset) its rows are rebuilt
before planning, from what S3 proves:

1. the newest cache snapshot (in the cache bucket) holding rows for the bucket, each row kept only
   where the bucket's current listing holds its key with the same size and an object not newer
   than the snapshot (`rules.snapshot_row_holds`);
2. else, for a legacy-named target, the old script's own cache of it (`db/<quote_plus(name)>.db`),
   each row kept only where the listing holds its key and the row is proven (`oldscript.old_row_mtime`:
   older than the upload by a margin, or the file's content has the listed ETag, single-part or
   multipart at the old script's part size; a stale row whose file's content has the ETag takes
   the file's mtime now) (that is how an installation of the old script is adopted: it is a
   cache that holds no rows yet);
3. for listed objects neither covers: the listing's size against the file on disk, and where that
   matches a regular file, the object's `mtime` user metadata (HeadObject) against its
   st_mtime_ns, and for an object without it (the old script's), the ETag against the file's
   content (`content_proves_etag`, the file read once); a listed object whose file is gone gets a
   "gone" row (records.GONE_MTIME_NS), which the planner never takes as proof of anything (a file
   back at it goes through HeadObject).

Owns: whether a bucket needs a rebuild (`needs_rebuild`, the `rebuilding:` meta mark), listing a
bucket into the temporary `cache.listing`, checking a snapshot's rows against it
(`rows_from_snapshot`), and the lstat of each uncovered key's file that picks HeadObject's
candidates and the "gone" rows (`candidates`). The rules live in `rules`, the old script's cache in
`oldscript`, the snapshots in `snapshots`; `run` wires the HeadObject fan-out.
Must not import backup/, the planner or the walk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from ..cache import snapshotdb
from ..cache.listing import Listing
from ..cache.records import Listed
from ..cache.store import StateStore, Stored
from ..cache.writes import CacheWrites
from ..disk.keys import key_for_path, path_for_key
from ..errors import S3Error
from ..s3.client import S3
from ..s3.objects import ListedObject
from .rules import DiskStat, needs_head, snapshot_row_holds, under_root
from .shares import AbsentShares

log = logging.getLogger(__name__)

REBUILDING_MARK = "rebuilding:"  # meta name prefix: a rebuild of this bucket began and has not finished
ROW_BATCH = 5_000  # snapshot rows written to the cache per transaction


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


# ----------------------------------------------------------------------------- the sources


def rows_from_snapshot(
    db: Path, bucket: str, root: bytes, listing: Listing, writes: CacheWrites, snapshot_time_s: float
) -> int:
    """Copy the snapshot's rows for `bucket` into the cache where the listing holds the key with
    the same size (rows adopted from the old script carry no size: the key must be listed) and an
    object not newer than the snapshot (`snapshot_row_holds`). The keys taken are marked covered
    in the listing; the others are left to the HeadObject proof. Runs in a worker thread of the
    event loop (the rows go back to it for `writes`); returns rows written."""
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
                anyio.from_thread.run(writes.rebuilt, batch)
                listing.cover(keys)
                written += len(batch)
                batch, keys = [], []
        if batch:
            anyio.from_thread.run(writes.rebuilt, batch)
            listing.cover(keys)
            written += len(batch)
    finally:
        rows.close()
    return written


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


