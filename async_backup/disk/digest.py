"""The MD5 of a file as it is on disk, for comparing with a single-part object's ETag.

Owns one consistent read of a file to its MD5: opened without following a symlink and without
blocking on a FIFO, required to be a regular file of the expected size and mtime, read in
bounded chunks, and given up on when its size or mtime moves meanwhile. Used where an object
carries no `mtime` metadata (the old script's uploads) and only its content can prove it.
Imports nothing of the package.
"""

from __future__ import annotations

import hashlib
import os
import stat

CHUNK_BYTES = 256 * 1024  # the only buffer a digest holds (one per upload worker at most)


def file_md5(path: bytes, size: int, mtime_ns: int) -> str | None:
    """The hex MD5 of the file at `path`, read whole, or None when it is not (or no longer) a
    regular file of this size and mtime, changed while read, or cannot be read: no proof then.
    Blocking I/O: call it from a worker thread."""
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
        read = 0
        while read <= size:  # one read past the size notices a file that grew
            chunk = os.read(fd, CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            read += len(chunk)
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if read != size or (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
        return None
    return digest.hexdigest()


def single_part_md5(etag: str) -> str | None:
    """The MD5 a listed or head ETag states, when it states one: a single-part upload's ETag is
    the hex MD5 of the body (unless the object is encrypted with KMS or a customer key: then it
    differs from every MD5, and a comparison fails safe); a multipart ETag ends in `-<parts>`."""
    value = etag.strip('"').lower()
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        return None
    return value
