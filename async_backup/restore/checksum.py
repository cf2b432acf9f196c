"""Which checksum a download must match: S3's own CRC32, else the cache's value where its row
describes this very upload.

Owns `Expected` and `expected_checksum`, the decision, and `recorded_part_bytes`, the part size
a composite value is summed over when the row knows it (else one HeadObject with PartNumber=1
tells it); parsing the values and the running sum of what arrives (`StreamSum`) are
`s3.checksums`'. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cache.records import Recorded
from ..s3.checksums import etag_parts, split_checksum, split_stored
from ..s3.objects import ObjectHead, ObjectVersion, parse_mtime_metadata


@dataclass(frozen=True, slots=True)
class Expected:
    algorithm: str  # "crc32" or "md5"
    digest: str  # base64 CRC32 or hex MD5
    parts: int | None  # a composite value over this many parts
    source: str  # "S3" or "the cache"


def expected_checksum(
    head: ObjectHead, version: ObjectVersion, row: Recorded | None
) -> Expected | None:
    """What the download must match: the object's stored CRC32, else the cache's value when the row
    describes this very upload (current version, same size, same mtime metadata). None: not checkable."""
    if head.checksum_crc32:
        digest, parts = split_stored(head.checksum_crc32)
        if parts is None and head.checksum_type != "FULL_OBJECT":
            # Some servers omit "-N" on composite values; the ETag still tells a multipart object.
            parts = etag_parts(head.etag)
        return Expected("crc32", digest, parts, "S3")
    if row is None or not describes(row, head, version):
        return None
    cached = row.checksum
    if not cached:
        return None
    algorithm, digest, parts = split_checksum(cached)
    if algorithm not in ("crc32", "md5"):
        return None
    return Expected(algorithm, digest, parts, "the cache")


def describes(row: Recorded, head: ObjectHead, version: ObjectVersion) -> bool:
    """Whether the cache's row describes this very upload: the current version, the same size and
    the same mtime metadata."""
    return version.is_latest and row.size == head.size and parse_mtime_metadata(head.metadata) == row.mtime_ns


def recorded_part_bytes(head: ObjectHead, version: ObjectVersion, row: Recorded | None, parts: int) -> int | None:
    """The part size of a multipart object of `parts` parts as the row recorded it at upload, when
    the row describes this very upload and the size splits into that many parts; else None."""
    if row is None or not row.part_bytes or row.part_bytes < 1 or not describes(row, head, version):
        return None
    return row.part_bytes if -(-head.size // row.part_bytes) == parts else None
