"""What S3 tells about objects (a listing row, a version, a head) and the metadata we write on them.

Owns the data types the S3 adapter returns to verify, restore and the cache rebuild, and the
`mtime` user metadata that backup writes and rebuild and restore read back. Pure: imports
nothing of the package, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One current object from ListObjectsV2."""

    key: str
    size: int
    storage_class: str
    etag: str  # without quotes
    last_modified: datetime | None = None


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One version (or delete marker) from ListObjectVersions."""

    key: str
    version_id: str  # "" on a bucket that never had versioning ("null" as S3 lists it otherwise)
    last_modified: datetime
    is_latest: bool
    is_delete_marker: bool
    size: int = 0
    storage_class: str = "STANDARD"
    etag: str = ""


@dataclass(frozen=True, slots=True)
class ObjectHead:
    """What HeadObject or GetObject tells about one object version."""

    size: int
    etag: str
    storage_class: str
    version_id: str
    metadata: dict[str, str]
    restore: str | None  # the x-amz-restore value, None when no retrieval was ever asked for
    checksum_crc32: str | None  # base64, "-N" appended by S3 for a composite multipart value
    other_checksum: bool  # a checksum of another algorithm is stored (not comparable with ours)
    checksum_type: str  # "COMPOSITE", "FULL_OBJECT", or "" when the server does not say
    parts_count: int | None
    encrypted_with_key: bool  # SSE-KMS or SSE-C: the ETag is then not an MD5 of the content

    @property
    def restore_state(self) -> str:
        """One of "none" (never asked for, or the copy expired), "pending" or "ready"."""
        if not self.restore:
            return "none"
        return "pending" if 'ongoing-request="true"' in self.restore else "ready"


def mtime_metadata(mtime_ns: int) -> dict[str, str]:
    """The file's mtime as user metadata, in seconds with nanoseconds (rclone reads the same key)."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    return {"mtime": f"{seconds}.{nanos:09d}"}


def parse_mtime_metadata(metadata: dict[str, str]) -> int | None:
    value = metadata.get("mtime")
    if not value:
        return None
    seconds, _, fraction = value.partition(".")
    try:
        return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    except ValueError:
        return None
