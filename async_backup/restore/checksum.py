"""Checksums while a download streams: the value expected (S3's own CRC32, else the cache's) and the
running sum of what arrives, part by part for a multipart object.

Owns `Expected`, `StreamSum` and `expected_checksum`; the cache's value form is `s3.checksums`'.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass
from typing import Any

from ..s3.checksums import split_checksum
from ..s3.objects import ObjectHead, ObjectVersion, parse_mtime_metadata


@dataclass(frozen=True, slots=True)
class Expected:
    algorithm: str  # "crc32" or "md5"
    digest: str  # base64 CRC32 or hex MD5
    parts: int | None  # a composite value over this many parts
    source: str  # "S3" or "the cache"


class StreamSum:
    """CRC32 (or MD5) of a download as it streams; per part as well, for composite values."""

    def __init__(self, algorithm: str, part_bytes: int | None) -> None:
        self.algorithm = algorithm
        self.part_bytes = part_bytes
        self._whole = self._new()
        self._part = self._new()
        self._part_filled = 0
        self._digests: list[bytes] = []
        self.crc32 = 0

    def _new(self) -> Any:
        return hashlib.md5(usedforsecurity=False) if self.algorithm == "md5" else _Crc32()

    def update(self, data: bytes) -> None:
        self.crc32 = zlib.crc32(data, self.crc32)
        if self.part_bytes is None:
            self._whole.update(data)
            return
        view = memoryview(data)
        while view:
            room = self.part_bytes - self._part_filled
            self._part.update(view[:room])
            self._part_filled += min(room, len(view))
            view = view[room:]
            if self._part_filled == self.part_bytes:
                self._end_part()

    def _end_part(self) -> None:
        self._digests.append(self._part.digest())
        self._part, self._part_filled = self._new(), 0

    def result(self) -> str:
        """The value in the form S3 stores it: base64 CRC32 or hex MD5, composite ones without "-N"."""
        if self.part_bytes is None:
            digest = self._whole.digest()
        else:
            if self._part_filled or not self._digests:
                self._end_part()
            combined = self._new()
            combined.update(b"".join(self._digests))
            digest = combined.digest()
        return digest.hex() if self.algorithm == "md5" else base64.b64encode(digest).decode("ascii")

    @property
    def part_count(self) -> int:
        return len(self._digests)


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def expected_checksum(
    head: ObjectHead, version: ObjectVersion, row: tuple[int | None, int, str | None] | None
) -> Expected | None:
    """What the download must match: the object's stored CRC32, else the cache's value when the row
    describes this very upload (current version, same size, same mtime metadata). None: not checkable."""
    if head.checksum_crc32:
        digest, _, tail = head.checksum_crc32.partition("-")
        parts = int(tail) if tail.isdigit() else None
        if parts is None and head.checksum_type != "FULL_OBJECT":
            # Some servers omit "-N" on composite values; the ETag still tells a multipart object.
            etag_parts = head.etag.rpartition("-")[2] if "-" in head.etag else ""
            parts = int(etag_parts) if etag_parts.isdigit() else None
        return Expected("crc32", digest, parts, "S3")
    if row is None or not version.is_latest:
        return None
    size, mtime_ns, cached = row
    if not cached or size != head.size or parse_mtime_metadata(head.metadata) != mtime_ns:
        return None
    algorithm, digest, parts = split_checksum(cached)
    if algorithm not in ("crc32", "md5"):
        return None
    return Expected(algorithm, digest, parts, "the cache")
