"""A cache row as the planner and verify read it, and whether a file on disk still matches it.

Owns `Recorded` (what S3 confirmed for one path), `Listed` (one object of a bucket listing),
the comparison of a row with a disk file (including the old script's float mtimes), and when a
match of size and mtime is not proof enough: the racy-clean rule and the inode/ctime evidence.
Pure: imports only `disk.entries`; no SQLite, no S3.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..disk.entries import DiskFile

# Old caches stored st_mtime as a float; a double near 1.7e9 s is exact to about 0.24 us.
LEGACY_MTIME_TOLERANCE_NS = 2_000
# A file whose mtime or ctime is not this much older than the moment its read began may be written
# again in the same timestamp tick without its mtime moving (git's "racily clean"). One margin for
# every file system: what one shows is not what it keeps (ext2/ext3, and ext4 with 128-byte inodes,
# show the clock's tick but keep whole seconds on disk; NFS keeps what the server's file system
# keeps; FAT steps 2 s), so no cheap detection is trustworthy. 2 s covers all of them and a small
# clock skew to an NFS server; the cost is one more read of files written just before their backup.
RACY_MARGIN_NS = 2_000_000_000
# The mtime of a "gone" row: one the rebuild wrote for a listed object whose file it did not find
# (deleted, or on a share not mounted then). Its size is the listed one; nothing proves what its
# file is, so a file of that size that turns up there goes through the HeadObject proof. A row of
# a file whose mtime really is 0 reads as gone too: it only costs that file a HeadObject.
GONE_MTIME_NS = 0


@dataclass(frozen=True, slots=True)
class Recorded:
    """A cache row: what S3 confirmed for one path, as every read of the cache returns it.

    Rows adopted from the old script carry its float st_mtime in `legacy_mtime` (and the size the
    bucket listing showed, or None in a dry run, which sends no listing); rows adopted by earlier
    versions of this tool have neither a size nor a legacy_mtime."""

    path: bytes
    size: int | None
    mtime_ns: int
    legacy_mtime: float | None = None
    # The file's inode and ctime when it was read; None for rows written before they were kept
    # (no evidence either way, filled in by the next run that sees the file match).
    ino: int | None = None
    ctime_ns: int | None = None
    unsure: bool = False  # read racily (see RACY_MARGIN_NS): its contents are compared next run
    # The whole file's "crc32:<b64>", then what S3 stores when that differs (a composite CRC32 or an
    # MD5 ETag); older rows: "crc32:<b64>[-parts]" or "md5:<hex>[-parts]" alone. The forms are
    # described in `s3.checksums`. None: not known
    checksum: str | None = None
    part_bytes: int | None = None  # a multipart upload's part size, to recompute its checksum locally
    # What its first bytes showed when it was sent (`disk.kinds`); None for rows written before
    # kinds were kept: unknown, filled in by the next upload.
    kind: str | None = None


def stat_float_mtime(mtime_ns: int) -> float:
    """`os.stat().st_mtime` as CPython computes it from the nanoseconds (sec + nsec * 1e-9), so an
    mtime the old script stored compares at exactly the float precision it had."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    return float(seconds) + nanos * 1e-9


def is_unchanged(file: DiskFile, row: Recorded) -> bool:
    if row.legacy_mtime is not None:
        return (row.size is None or row.size == file.size) and stat_float_mtime(file.mtime_ns) == row.legacy_mtime
    if row.size is None:
        return abs(file.mtime_ns - row.mtime_ns) <= LEGACY_MTIME_TOLERANCE_NS
    return file.size == row.size and file.mtime_ns == row.mtime_ns


def needs_proof(file: DiskFile, row: Recorded) -> bool:
    """For a file whose size and mtime match its row: whether its contents must be compared with
    what was sent, because the row was read racily or the file's inode or ctime moved since (a
    replacement by rename, an edit with the mtime put back, or only a chmod). Unknown values on
    either side are no evidence."""
    return (
        row.unsure
        or (row.ino is not None and file.ino is not None and row.ino != file.ino)
        or (row.ctime_ns is not None and file.ctime_ns is not None and row.ctime_ns != file.ctime_ns)
    )


def lacks_evidence(file: DiskFile, row: Recorded) -> bool:
    """A row written before inodes and ctimes were kept, for a file that has them: worth filling in."""
    return (row.ino is None or row.ctime_ns is None) and file.ino is not None and file.ctime_ns is not None


def is_racy(mtime_ns: int, ctime_ns: int, read_started_ns: int) -> bool:
    """Whether a read that began at `read_started_ns` (wall clock) may have missed a write that
    left the mtime as it was: a write after that moment gets an mtime (and ctime) in a later tick,
    unless the file's last change is within one tick (RACY_MARGIN_NS at most) of it."""
    return max(mtime_ns, ctime_ns) > read_started_ns - RACY_MARGIN_NS


def is_gone(row: Recorded) -> bool:
    """A row the rebuild wrote for an object whose file was not on disk (see GONE_MTIME_NS)."""
    return row.mtime_ns == GONE_MTIME_NS and row.size is not None and row.legacy_mtime is None


@dataclass(frozen=True, slots=True)
class Listed:
    """One current object as a bucket listing gives it (a rebuild's `cache.listing` keeps them)."""

    key: str
    size: int
    # LastModified as Unix seconds (whole seconds in a listing); None where the server gave none
    last_modified_s: float | None = None
    etag: str = ""


@dataclass(frozen=True, slots=True)
class UploadFile:
    """The file a multipart upload was created for, as it was when opened, and how its parts go:
    what a later run must find unchanged to continue the upload rather than start it again."""

    path: bytes
    size: int
    mtime_ns: int
    ino: int | None
    ctime_ns: int | None
    part_bytes: int  # the upload's part size, kept even if tuning.part_size_mib changes
    # the parts' body checksum ("crc32", "md5" or "sha256"); "crc32/full": CRC32 parts of an upload
    # created with ChecksumType=FULL_OBJECT (completed with the whole file's CRC32)
    algorithm: str
    storage_class: str  # the object's, fixed by CreateMultipartUpload


@dataclass(frozen=True, slots=True)
class SentPart:
    """One part S3 confirmed: its size, the ETag S3 answered and the hex digest it was sent with."""

    number: int
    size: int
    etag: str
    digest_hex: str


@dataclass(frozen=True, slots=True)
class OpenUpload:
    """A multipart upload this cache recorded and no run completed or aborted yet. `file` is None
    for uploads recorded before runs could continue them (they are aborted, as they always were)."""

    key: str
    upload_id: str
    started: float  # Unix seconds
    file: UploadFile | None = None
