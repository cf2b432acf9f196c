"""Checksum arithmetic: the value sent with a body, the composite value of a multipart object,
the running sum of a download, and the forms S3 and the cache write them in taken apart.

Owns the checksum forms S3 and the cache use (`algorithm:digest[-parts]` in the cache, S3's
`<base64>[-parts]` CRC32 values, MD5 ETags) and every computation of them; backup computes them,
verify and restore decide what to compare. Pure: imports nothing of the package, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The ETag of a single PUT or of one part: the MD5 of its bytes (unless encrypted with KMS or SSE-C).
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
# An ETag that is an MD5: of the body (single part), or of the parts' MD5s followed by -N.
MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")


@dataclass(frozen=True, slots=True)
class PartChecksum:
    """The integrity value sent with one body, which S3 verifies on receipt.

    "crc32": the x-amz-checksum-crc32 header (servers with flexible checksums: AWS). "md5":
    Content-MD5 (servers without them, through botocore). "sha256": the body's SHA-256 as the
    signed payload hash (x-amz-content-sha256), for the same servers on the fast path: SigV4 makes
    the server check it (XAmzContentSHA256Mismatch), and SHA-256 costs a third of MD5's CPU where
    the processor has SHA instructions. What the cache keeps is then the ETag S3 answered (its
    MD5 of the bytes that matched our SHA-256), so `verify` compares ETags as for "md5"."""

    algorithm: str  # "crc32", "md5" or "sha256"
    digest: bytes

    @classmethod
    def of(cls, data: bytes, algorithm: str) -> PartChecksum:
        running = RunningChecksum(algorithm)
        running.update(data)
        return running.result()

    @property
    def b64(self) -> str:
        return base64.b64encode(self.digest).decode("ascii")

    def request_args(self) -> dict[str, str]:
        """The value as botocore parameters (never "sha256": botocore computes payload hashes itself)."""
        if self.algorithm == "crc32":
            return {"ChecksumCRC32": self.b64}
        if self.algorithm == "md5":
            return {"ContentMD5": self.b64}
        raise ValueError(f"botocore takes no {self.algorithm} body checksum")

    def request_headers(self) -> dict[str, str]:
        """The same value as a raw HTTP header, for requests the tool signs itself."""
        if self.algorithm == "crc32":
            return {"x-amz-checksum-crc32": self.b64}
        if self.algorithm == "sha256":
            return {"x-amz-content-sha256": self.digest.hex()}
        return {"content-md5": self.b64}

    def recorded(self, etag: str) -> str:
        """What the cache keeps, in the form S3 reports it (base64 CRC32, or the hex ETag); empty
        when S3 answered an ETag that is no MD5 for a body sent with its SHA-256."""
        if self.algorithm == "crc32":
            return f"crc32:{self.b64}"
        if self.algorithm == "sha256":
            tag = etag.strip('"').lower()
            return f"md5:{tag}" if _MD5_HEX.match(tag) else ""
        return f"md5:{self.digest.hex()}"


class RunningChecksum:
    """A PartChecksum computed over a body fed in pieces (memoryviews of a reused buffer)."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in ("crc32", "md5", "sha256"):
            raise ValueError(f"unknown body checksum {algorithm!r}")
        self.algorithm = algorithm
        self._crc = 0
        self._hash = None if algorithm == "crc32" else hashlib.new(algorithm, usedforsecurity=False)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._hash is None:
            self._crc = zlib.crc32(data, self._crc)
        else:
            self._hash.update(data)

    def result(self) -> PartChecksum:
        if self._hash is None:
            return PartChecksum("crc32", self._crc.to_bytes(4, "big"))
        return PartChecksum(self.algorithm, self._hash.digest())


def composite_checksum(parts: Sequence[PartChecksum], etags: Sequence[str] = ()) -> str:
    """The value S3 stores for a multipart object: a checksum of the part checksums, then -N. For
    parts sent with their SHA-256 it is built from the parts' ETags (S3's MD5 of each); empty
    when one of them is no MD5."""
    algorithm = parts[0].algorithm
    if algorithm == "sha256":
        tags = [e.strip('"').lower() for e in etags]
        if len(tags) != len(parts) or not all(_MD5_HEX.match(t) for t in tags):
            return ""
        parts = [PartChecksum("md5", bytes.fromhex(t)) for t in tags]
        algorithm = "md5"
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


def split_stored(value: str) -> tuple[str, int | None]:
    """S3's stored checksum value "AbCd==-3" -> ("AbCd==", 3); the part count is None for a
    full-object value (base64 holds no "-")."""
    if "-" not in value:
        return value, None
    digest, _, tail = value.rpartition("-")
    return digest, int(tail) if tail.isdigit() else None


def etag_parts(etag: str) -> int | None:
    """The part count a multipart ETag ends in ("<hex>-3" -> 3), else None."""
    tail = etag.rpartition("-")[2] if "-" in etag else ""
    return int(tail) if tail.isdigit() else None


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
