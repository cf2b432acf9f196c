"""The MD5 of a file as it is on disk, for comparing with an object's ETag.

Owns one consistent read of a file to its MD5 (a single-part upload's ETag) or to its multipart
ETag at a given part size (the MD5 of the parts' MD5s, `-<parts>`), and which part sizes are
worth a read for an ETag: opened without following a symlink and without
blocking on a FIFO, required to be a regular file of the expected size and mtime, read in
bounded chunks, and given up on when its size or mtime moves meanwhile. Used where an object
carries no `mtime` metadata (the old script's uploads) and only its content can prove it.
Imports nothing of the package.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable

CHUNK_BYTES = 256 * 1024  # the only buffer a digest holds (one per upload worker at most)
# boto3's upload_file (the old script's uploads): multipart from 8 MiB on, in 8 MiB parts, the
# part size doubled until the parts are 10,000 at most.
OLD_PART_BYTES = 8 * 1024 * 1024
MAX_PARTS = 10_000


def file_md5(path: bytes, size: int, mtime_ns: int) -> str | None:
    """The hex MD5 of the file at `path`, read whole, or None when it is not (or no longer) a
    regular file of this size and mtime, changed while read, or cannot be read: no proof then.
    Blocking I/O: call it from a worker thread."""
    return _read_etag(path, size, mtime_ns, None)


def file_multipart_etag(path: bytes, size: int, mtime_ns: int, part_bytes: int) -> str | None:
    """The multipart ETag (`<hex md5 of the parts' md5s>-<parts>`) the file has when uploaded in
    parts of `part_bytes`, or None as `file_md5`. Blocking I/O: call it from a worker thread."""
    return _read_etag(path, size, mtime_ns, part_bytes)


def _read_etag(path: bytes, size: int, mtime_ns: int, part_bytes: int | None) -> str | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or (before.st_size, before.st_mtime_ns) != (size, mtime_ns):
            return None
        digest = hashlib.md5(usedforsecurity=False)
        part_digests: list[bytes] = []
        read = 0
        part_left = part_bytes or 0
        while read <= size:  # one read past the size notices a file that grew
            chunk = os.read(fd, min(CHUNK_BYTES, part_left) if part_bytes else CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            read += len(chunk)
            if part_bytes:
                part_left -= len(chunk)
                if part_left == 0:  # a part ends here: its MD5 goes into the ETag
                    part_digests.append(digest.digest())
                    digest = hashlib.md5(usedforsecurity=False)
                    part_left = part_bytes
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if read != size or (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
        return None
    if part_bytes is None:
        return digest.hexdigest()
    if part_left != part_bytes or not part_digests:  # the last part, shorter than the others
        part_digests.append(digest.digest())
    combined = hashlib.md5(b"".join(part_digests), usedforsecurity=False)
    return f"{combined.hexdigest()}-{len(part_digests)}"


def old_part_bytes(size: int) -> int:
    """The part size boto3's upload_file used for a file of `size` bytes (see OLD_PART_BYTES)."""
    part = OLD_PART_BYTES
    while -(-size // part) > MAX_PARTS:
        part *= 2
    return part


def multipart_etag(etag: str) -> tuple[str, int] | None:
    """(hex MD5 of the parts' MD5s, parts) that a multipart ETag states, or None."""
    value, _, parts = etag.strip('"').lower().rpartition("-")
    if single_part_md5(value) is None or not parts.isdigit() or not 0 < int(parts) <= MAX_PARTS:
        return None
    return value, int(parts)


def etag_part_sizes(etag: str, size: int, part_sizes: Iterable[int | None]) -> list[int]:
    """The part sizes among `part_sizes` (None and repeats skipped) that cut a file of `size`
    bytes into as many parts as the multipart `etag` states: only those are worth a read."""
    parsed = multipart_etag(etag)
    if parsed is None or size <= 0:
        return []
    parts = parsed[1]
    return [p for p in dict.fromkeys(part_sizes) if p is not None and p > 0 and -(-size // p) == parts]


def etag_computable(etag: str, size: int, part_sizes: Iterable[int | None] = ()) -> bool:
    """Whether `content_proves_etag` would read the file at all: a single-part MD5, or a multipart
    ETag whose part count one of the part sizes gives."""
    return single_part_md5(etag) is not None or bool(etag_part_sizes(etag, size, [old_part_bytes(size), *part_sizes]))


def content_proves_etag(
    path: bytes, size: int, mtime_ns: int, etag: str, part_sizes: Iterable[int | None] = ()
) -> tuple[bool, int | None]:
    """Whether the file, read now as it is (this size and mtime), has the object's ETag: the MD5
    of a single-part upload, or the multipart ETag at the old script's part size for this size or
    at one of `part_sizes` (a part size our cache recorded). Returns (proven, the part size that
    proved it, None for a single part). At most one read per fitting part size, usually one.
    Blocking I/O: call it from a worker thread."""
    md5 = single_part_md5(etag)
    if md5 is not None:
        return file_md5(path, size, mtime_ns) == md5, None
    wanted = etag.strip('"').lower()
    for part in etag_part_sizes(etag, size, [old_part_bytes(size), *part_sizes]):
        if file_multipart_etag(path, size, mtime_ns, part) == wanted:
            return True, part
    return False, None


def single_part_md5(etag: str) -> str | None:
    """The MD5 a listed or head ETag states, when it states one: a single-part upload's ETag is
    the hex MD5 of the body (unless the object is encrypted with KMS or a customer key: then it
    differs from every MD5, and a comparison fails safe); a multipart ETag ends in `-<parts>`."""
    value = etag.strip('"').lower()
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        return None
    return value
