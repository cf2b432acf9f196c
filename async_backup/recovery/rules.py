"""Which cache row a rebuild may take from which proof: pure decisions, no I/O.

A rebuild takes a row only where S3 proves it (Deep Archive bills every copy for 180 days, and a
wrong row would skip a file that S3 does not hold):

- a snapshot row, where the bucket's listing holds its key with the same size and an object not
  newer than the snapshot (`snapshot_row_holds`);
- a row of the old script's cache, where its mtime predates the upload by `OLD_UPLOAD_MARGIN_S`
  (`old_row_predates_upload`; else the file's content decides, in `oldscript`);
- a listed object no row covers, where the listed size matches a regular file on disk
  (`needs_head`) and HeadObject's `mtime` metadata matches its st_mtime_ns (`proves_row`);
- only rows inside the target's folder (`under_root`); the checksum S3 stored becomes the row's
  (`checksum_of`).

Imports the row and object types only: nothing of SQLite, S3's client or the disk.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..cache.records import Listed
from ..s3.objects import ObjectHead, parse_mtime_metadata

# An old script's row is taken on time alone only where its mtime is older than the object's
# LastModified by this much. The mtime comes from the server's clock, LastModified from S3's: S3
# refuses requests signed more than 15 minutes off (RequestTimeTooSkewed), so the old script's
# clock was within 15 minutes of S3's. A PutObject's LastModified may be when it completed, not
# when its body was read: up to 8 MiB (the old script's multipart threshold; a multipart object's
# LastModified is when the upload was created, before any part was read), under 5 minutes on any
# usable link. And a listing gives whole seconds. A row inside the margin needs the ETag proof.
OLD_UPLOAD_MARGIN_S = 15 * 60 + 5 * 60 + 1


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
