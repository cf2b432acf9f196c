"""The content proof of an unsure row: the file's checksum, in the form its row recorded first.

Owns `read_content`, which reads a file whose size and mtime match its row but whose row is unsure
(read racily) or whose inode or ctime moved, and computes its checksum exactly as the upload
recorded it (CRC32 or MD5 of the whole body; for a multipart object the composite of its parts'
checksums at the recorded part size), so the policy can compare without a request. The read goes
through one chunk buffer of the shared pool, whatever the file's size. Talks to no S3 and no cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import anyio

from ..disk.entries import DiskFile
from ..disk.read import check_unchanged, feed_range, open_regular
from ..s3.checksums import PartChecksum, RunningChecksum, composite_checksum, split_checksum
from .plan import part_ranges
from .upload import MemoryLimits


@dataclass(frozen=True, slots=True)
class ContentSeen:
    """The file's checksum in the recorded form, and the evidence of this read."""

    checksum: str
    ino: int
    ctime_ns: int
    read_started_ns: int



def checksum_of_file(
    file: DiskFile, recorded: str, part_bytes: int | None, buffer: bytearray
) -> ContentSeen | None:
    """Read the file through `buffer` and compute its checksum in `recorded`'s form (in a worker
    thread). None when its size or mtime is no longer the walk's: it changed since, and is simply
    uploaded. Raises FileVanished, FileChanged or FileUnreadable as the upload's reads do."""
    algorithm, _, parts = split_checksum(recorded)
    started_ns = time.time_ns()
    fd, st = open_regular(file.path)  # non-blocking, a regular file or FileVanished
    try:
        if (st.st_size, st.st_mtime_ns) != (file.size, file.mtime_ns):
            return None
        ranges = part_ranges(file.size, part_bytes) if parts is not None and part_bytes else [(0, file.size)]
        sums: list[PartChecksum] = []
        for offset, length in ranges:
            running = RunningChecksum(algorithm)
            feed_range(fd, offset, length, buffer, running.update)
            sums.append(running.result())
        check_unchanged(fd, file.size, file.mtime_ns)
    finally:
        os.close(fd)
    # A whole body: crc32:<base64> or md5:<hex>, as the row's first value has it (`file_value`).
    whole = sums[0]
    if parts is not None:
        checksum = composite_checksum(sums)
    elif whole.algorithm == "crc32":
        checksum = f"crc32:{whole.b64}"
    else:
        checksum = f"md5:{whole.digest.hex()}"
    return ContentSeen(checksum, st.st_ino, st.st_ctime_ns, started_ns)


async def read_content(
    limits: MemoryLimits, file: DiskFile, recorded: str, part_bytes: int | None
) -> ContentSeen | None:
    """`checksum_of_file` with a buffer from the pool and a turn among the checksum threads."""
    pool = limits.buffers
    pair = await pool.take_pair()
    try:
        async with limits.checksum_slots:
            seen = await anyio.to_thread.run_sync(checksum_of_file, file, recorded, part_bytes, pair.buffers[0])
    except BaseException:
        pool.discard(pair)
        raise
    pool.give(pair)
    return seen
