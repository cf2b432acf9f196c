"""Checksum arithmetic: the value sent with a body, the whole file's CRC32 combined from its parts',
the composite value of a multipart object, the running sum of a download, and the forms S3 and the
cache write them in taken apart.

Owns the checksum forms S3 and the cache use and every computation of them; backup computes them,
verify, restore and fixity decide what to compare. Pure: imports nothing of the package, no I/O.

The forms of a cache row's checksum (`Recorded.checksum`), one or two values separated by a space:
- `crc32:<b64>`: the CRC32 of the whole file (big-endian, base64, as S3 writes it), whatever its
  size: a single PutObject's body checksum, or a multipart upload's FULL_OBJECT checksum combined
  from its parts' CRC32s (`crc32_combine`). Every upload records it first, on every request path.
- `crc32:<b64>-N`: a COMPOSITE checksum of N parts (the CRC32 of the parts' CRC32s), as S3 stores
  it for a multipart upload without a full-object type; only rows written before full-object
  checksums, or rebuilt from such an object, hold it (their `part_bytes` says how to recompute it).
- `md5:<hex>` / `md5:<hex>-N`: the ETag S3 answered (MD5 of the body, or of the parts' MD5s).
- `crc32:<b64> md5:<hex>[-N]`: an upload to a server without flexible checksums (Content-MD5 or
  the SHA-256 payload hash covered the bodies): the whole file's CRC32 (taken in the same read)
  first, then the ETag S3 answered, which is what that server can be compared with.
`split_checksum` reads the first value; `file_crc32` the whole-file CRC32 if a row has one;
`s3_value` the value to compare with what S3 stores.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The header naming a body's flexible checksum, as the SDKs send it: moto keeps a CRC32 only with it,
# and a bucket with Object Lock (like S3 once) takes a CRC32 in place of Content-MD5 only with it.
SDK_CHECKSUM_HEADER = "x-amz-sdk-checksum-algorithm"

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
    # The body's CRC32 taken in the same read when the algorithm is another (for the whole file's
    # CRC32); None: not taken (the digest is the CRC32 for "crc32").
    crc32: int | None = None

    @classmethod
    def of(cls, data: bytes, algorithm: str) -> PartChecksum:
        running = RunningChecksum(algorithm)
        running.update(data)
        return running.result()

    @property
    def b64(self) -> str:
        return base64.b64encode(self.digest).decode("ascii")

    @property
    def body_crc32(self) -> int:
        """The body's CRC32, whatever the algorithm it was sent with."""
        if self.algorithm == "crc32":
            return int.from_bytes(self.digest, "big")
        if self.crc32 is None:
            raise ValueError(f"no CRC32 was taken with this {self.algorithm} checksum")
        return self.crc32

    def request_args(self) -> dict[str, str]:
        """The value as botocore parameters (never "sha256": botocore computes payload hashes itself)."""
        if self.algorithm == "crc32":
            # The algorithm named as well (x-amz-sdk-checksum-algorithm, as the SDKs send it): S3
            # keeps the value either way, moto only with it, and a bucket with Object Lock takes a
            # CRC32 in place of Content-MD5 only with it; botocore computes nothing when the value
            # is given.
            return {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": self.b64}
        if self.algorithm == "md5":
            return {"ContentMD5": self.b64}
        raise ValueError(f"botocore takes no {self.algorithm} body checksum")

    def request_headers(self) -> dict[str, str]:
        """The same value as a raw HTTP header, for requests the tool signs itself."""
        if self.algorithm == "crc32":
            return {"x-amz-checksum-crc32": self.b64, SDK_CHECKSUM_HEADER: "CRC32"}
        if self.algorithm == "sha256":
            return {"x-amz-content-sha256": self.digest.hex()}
        return {"content-md5": self.b64}

    def recorded(self, etag: str) -> str:
        """What the cache keeps for a single PutObject of this body (the whole file): its CRC32,
        then for a body not sent with one the ETag S3 answered (its MD5), when it is an MD5."""
        whole = f"crc32:{crc32_b64(self.body_crc32)}"
        if self.algorithm == "crc32":
            return whole
        if self.algorithm == "sha256":
            tag = etag.strip('"').lower()
            return f"{whole} md5:{tag}" if _MD5_HEX.match(tag) else whole
        return f"{whole} md5:{self.digest.hex()}"


class RunningChecksum:
    """A PartChecksum computed over a body fed in pieces (memoryviews of a reused buffer). The
    CRC32 is always taken, in the same read: for "md5" and "sha256" bodies it is the whole file's
    checksum the cache keeps (zlib's CRC32 costs a fraction of either hash, benchmarks/RESULTS.md)."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in ("crc32", "md5", "sha256"):
            raise ValueError(f"unknown body checksum {algorithm!r}")
        self.algorithm = algorithm
        self._crc = 0
        self._hash = None if algorithm == "crc32" else hashlib.new(algorithm, usedforsecurity=False)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._crc = zlib.crc32(data, self._crc)
        if self._hash is not None:
            self._hash.update(data)

    def result(self) -> PartChecksum:
        if self._hash is None:
            return PartChecksum("crc32", self._crc.to_bytes(4, "big"))
        return PartChecksum(self.algorithm, self._hash.digest(), self._crc)


def crc32_b64(crc: int) -> str:
    """A CRC32 as S3 writes it: the four bytes big-endian, base64."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


# zlib's CRC32 polynomial, reflected (x^32 + x^26 + ... + 1, bit 0 the highest power).
_CRC32_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial, both reflected (zlib's multmodp)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC32_POLY if b & 1 else b >> 1


def _x2n_table() -> tuple[int, ...]:
    """x^(2^n) modulo the polynomial for n in 0..31, x^1 being 1 << 30 when reflected."""
    p = 1 << 30
    table = [p]
    for _ in range(31):
        p = _multmodp(p, p)
        table.append(p)
    return tuple(table)


_X2N = _x2n_table()


def _x8nmodp(length: int) -> int:
    """x^(8 * length) modulo the polynomial: the shift of a CRC past `length` bytes of zeros."""
    p = 1 << 31  # x^0
    k = 3  # 8 = 2^3: each byte is eight bits
    while length:
        if length & 1:
            p = _multmodp(_X2N[k & 31], p)
        length >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC32 of A + B from crc32(A), crc32(B) and len(B), without the bytes (zlib's
    crc32_combine by the x^n mod P method; Python's zlib module does not expose it)."""
    return _multmodp(_x8nmodp(length2), crc1) ^ crc2


def whole_crc32(parts: Sequence[tuple[int, int]]) -> int:
    """The CRC32 of a file from its parts' (CRC32, length), in order."""
    crc = 0
    for part_crc, length in parts:
        crc = crc32_combine(crc, part_crc, length)
    return crc


def file_value(value: str) -> str:
    """A row's first value: the one computed from the file (see the forms above)."""
    return value.partition(" ")[0]


def s3_value(value: str) -> str:
    """A row's value to compare with what S3 stores: the second when there are two."""
    first, _, second = value.partition(" ")
    return second or first


def file_crc32(value: str | None) -> str | None:
    """The whole file's CRC32 (base64) a row records, or None (a composite or MD5 value only)."""
    if not value:
        return None
    algorithm, digest, parts = split_checksum(value)
    return digest if algorithm == "crc32" and parts is None and digest else None


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


def multipart_recorded(
    parts: Sequence[PartChecksum], lengths: Sequence[int], etags: Sequence[str], *, full_object: bool
) -> str:
    """What the cache keeps for a multipart upload: the whole file's CRC32, combined from the
    parts' (no second read), then, unless S3 stores that very value (a FULL_OBJECT upload), the
    composite value S3 stores (empty for SHA-256 bodies whose ETags are no MD5s)."""
    whole = f"crc32:{crc32_b64(whole_crc32([(p.body_crc32, n) for p, n in zip(parts, lengths, strict=True)]))}"
    if full_object:
        return whole
    composite = composite_checksum(parts, etags)
    return f"{whole} {composite}" if composite else whole


def split_checksum(value: str) -> tuple[str, str, int | None]:
    """ "crc32:AbCd==-3" -> ("crc32", "AbCd==", 3); the part count is None for a single upload
    or a whole-file value. Of a row with two values, the first (`file_value`)."""
    algorithm, _, rest = file_value(value).partition(":")
    digest, dash, parts = rest.rpartition("-") if "-" in rest else (rest, "", "")
    count = int(parts) if dash and parts.isdigit() else None
    return algorithm, digest if count is not None else rest, count


def recomputable(checksum: str | None, part_bytes: int | None, size: int) -> bool:
    """Whether a recorded checksum can be recomputed from the file alone: CRC32 or MD5, and for a
    composite one the part size it was built with (adopted rows and rows from before it was kept
    have none). The content check before an upload and the fixity read both ask this."""
    if not checksum:
        return False
    algorithm, digest, parts = split_checksum(checksum)
    if algorithm not in ("crc32", "md5") or not digest:
        return False
    if parts is None:
        return True
    return part_bytes is not None and part_bytes > 0 and max(1, -(-size // part_bytes)) == parts


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
