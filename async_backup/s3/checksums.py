"""Checksum arithmetic: the value sent with a body, the composite value of a multipart object,
and the cache's `algorithm:digest[-parts]` form taken apart.

Owns the checksum forms S3 and the cache use; backup computes them, verify and restore compare
them. Pure: imports nothing of the package, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartChecksum:
    """The integrity value sent with one body, which S3 verifies on receipt."""

    algorithm: str  # "crc32" or "md5"
    digest: bytes

    @classmethod
    def of(cls, data: bytes, algorithm: str) -> PartChecksum:
        if algorithm == "crc32":
            return cls("crc32", zlib.crc32(data).to_bytes(4, "big"))
        return cls("md5", hashlib.md5(data, usedforsecurity=False).digest())

    @property
    def b64(self) -> str:
        return base64.b64encode(self.digest).decode("ascii")

    def request_args(self) -> dict[str, str]:
        if self.algorithm == "crc32":
            return {"ChecksumCRC32": self.b64}
        return {"ContentMD5": self.b64}

    def request_headers(self) -> dict[str, str]:
        """The same value as a raw HTTP header, for requests the tool signs itself."""
        if self.algorithm == "crc32":
            return {"x-amz-checksum-crc32": self.b64}
        return {"content-md5": self.b64}

    def cache_value(self) -> str:
        """What the cache keeps, in the form S3 reports it (base64 CRC32, or the hex ETag)."""
        if self.algorithm == "crc32":
            return f"crc32:{self.b64}"
        return f"md5:{self.digest.hex()}"


def composite_checksum(parts: Sequence[PartChecksum]) -> str:
    """The value S3 stores for a multipart object: a checksum of the part checksums, then -N."""
    algorithm = parts[0].algorithm
    joined = b"".join(p.digest for p in parts)
    whole = PartChecksum.of(joined, algorithm)
    if algorithm == "crc32":
        return f"crc32:{whole.b64}-{len(parts)}"
    return f"md5:{whole.digest.hex()}-{len(parts)}"


def split_checksum(value: str) -> tuple[str, str, int | None]:
    """ "crc32:AbCd==-3" -> ("crc32", "AbCd==", 3); the part count is None for a single upload."""
    algorithm, _, rest = value.partition(":")
    digest, dash, parts = rest.rpartition("-") if "-" in rest else (rest, "", "")
    count = int(parts) if dash and parts.isdigit() else None
    return algorithm, digest if count is not None else rest, count
