"""One fixity check: a file read on disk, or one object's HeadObject, against its cache row.

Owns the verdicts. A file is read at idle I/O priority (`idle_io`) and its checksum recomputed
in the form its row records (CRC32 or MD5 of the whole file, or the composite of its parts at the
recorded part size); a row whose checksum cannot be recomputed gets a whole-file CRC32, taken in
the same read ("first": nothing compared). A file whose size or mtime is no longer its row's is
passed over (the backup uploads it); bytes that differ under the recorded size and mtime are bit
rot. An object's checksum as S3 stores it (HeadObject with ChecksumMode=ENABLED, which answers
for DEEP_ARCHIVE without a restore) is compared with the row's. Reads files and nothing else;
imports no cache store and no S3 client.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import platform
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..cache.records import Recorded, is_unchanged
from ..disk.entries import DiskFile
from ..s3.checksums import MD5_ETAG, StreamSum, recomputable, s3_value, split_checksum, split_stored
from ..s3.objects import ObjectHead

READ_CHUNK_BYTES = 1024 * 1024

# ioprio_set(2) / ioprio_get(2) by machine (no libc wrapper exists); IOPRIO_WHO_PROCESS with who 0
# names the calling thread, so only the reading thread drops to the idle class.
_IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31), "i686": (289, 290), "armv7l": (314, 315)}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13


@contextlib.contextmanager
def idle_io() -> Iterator[bool]:
    """The calling thread reads at the idle I/O class (CFQ/BFQ: only when the disk is otherwise
    idle), and gets its old class back after (it is a pooled thread). Yields whether the kernel
    took it; elsewhere (not Linux, an unknown machine) the reads go at normal priority."""
    numbers = _IOPRIO_SYSCALLS.get(platform.machine()) if os.uname().sysname == "Linux" else None
    if numbers is None:
        yield False
        return
    libc = ctypes.CDLL(None, use_errno=True)
    set_nr, get_nr = numbers
    old = libc.syscall(get_nr, _IOPRIO_WHO_PROCESS, 0)
    idle = _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT
    took = old >= 0 and libc.syscall(set_nr, _IOPRIO_WHO_PROCESS, 0, idle) == 0
    try:
        yield took
    finally:
        if took:
            libc.syscall(set_nr, _IOPRIO_WHO_PROCESS, 0, old)


@dataclass(frozen=True, slots=True)
class LocalVerdict:
    result: str  # "ok", "first", "rot", "changed", "absent", "unreadable"
    bytes_read: int = 0
    checksum: str | None = None  # the whole-file CRC32 taken for a row without a recomputable one
    detail: str = ""



def check_file(row: Recorded, first_checksum: str | None, buffer: bytearray) -> LocalVerdict:
    """Read one file (in a worker thread) and compare it with its row. `first_checksum`: the
    whole-file CRC32 an earlier first pass took for a row whose own cannot be recomputed."""
    try:
        fd = os.open(row.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return LocalVerdict("absent")
    except OSError as exc:
        return LocalVerdict("unreadable", detail=exc.strerror or str(exc))
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return LocalVerdict("absent")
        file = DiskFile(row.path, before.st_size, before.st_mtime_ns)
        if not is_unchanged(file, row):
            return LocalVerdict("changed")
        size = before.st_size
        expected = row.checksum if recomputable(row.checksum, row.part_bytes, size) else first_checksum
        algorithm, digest, parts = split_checksum(expected) if expected else ("crc32", "", None)
        sums = StreamSum(algorithm, row.part_bytes if parts is not None else None)
        with contextlib.suppress(OSError, AttributeError):  # advice only
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        view = memoryview(buffer)
        read = 0
        while n := os.readv(fd, [view]):
            sums.update(bytes(view[:n]))
            read += n
        with contextlib.suppress(OSError, AttributeError):
            # The image server's users keep the page cache: drop what this read brought in.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        after = os.fstat(fd)
    except OSError as exc:
        return LocalVerdict("unreadable", detail=exc.strerror or str(exc))
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or read != size:
        return LocalVerdict("changed", read)
    whole = "crc32:" + base64.b64encode((sums.crc32 & 0xFFFFFFFF).to_bytes(4, "big")).decode("ascii")
    if not expected:
        return LocalVerdict("first", read, whole)
    got = sums.result()
    same = got == digest if algorithm == "crc32" else got == digest.lower()
    if same and (parts is None or sums.part_count == parts):
        return LocalVerdict("ok", read)
    shown = f"{algorithm}:{got}" + (f"-{sums.part_count}" if parts is not None else "")
    return LocalVerdict("rot", read, detail=f"its bytes now give {shown}, the backup recorded {expected}")


def full_crc32(data: bytes) -> str:
    """A whole body's CRC32 in the cache's form (tests plant and compare with it)."""
    return "crc32:" + base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")


def compare_head(cached: str | None, first_checksum: str | None, head: ObjectHead) -> tuple[str, str]:
    """What S3 stores against the cache: ("ok", ""), ("mismatch", detail) or ("not checkable",
    why). A CRC32 S3 stores is compared with the row's, or (a row without one) with the whole-file
    CRC32 a first pass took when S3 stores a full-object value; an MD5 row with the ETag."""
    # A row's second value, when it has one, is what S3 stores (a composite CRC32 or the MD5 ETag);
    # its first, the whole file's CRC32, is compared only where S3 stores that.
    reference = s3_value(cached) if cached else ""
    algorithm, digest, parts = split_checksum(reference) if reference else ("", "", None)
    if algorithm == "md5":
        etag = head.etag.strip('"').lower()
        want = digest.lower() + (f"-{parts}" if parts is not None else "")
        if head.encrypted_with_key or not MD5_ETAG.match(etag):
            return "not checkable", "the ETag is not an MD5"
        return ("ok", "") if etag == want else ("mismatch", f"S3 has ETag {etag}, the cache md5 {want}")
    if head.checksum_crc32 is None:
        return "not checkable", "S3 reports another checksum" if head.other_checksum else "S3 stores no CRC32"
    stored, stored_parts = split_stored(head.checksum_crc32)
    if algorithm != "crc32":
        if first_checksum and stored_parts is None and head.checksum_type != "COMPOSITE":
            algorithm, digest, parts = split_checksum(first_checksum)
            reference = first_checksum
        else:
            return "not checkable", "the cache holds no checksum S3 stores"
    if stored == digest and (stored_parts is None or parts is None or stored_parts == parts):
        return "ok", ""
    return "mismatch", f"S3 stores CRC32 {head.checksum_crc32}, the cache {reference.partition(':')[2]}"
