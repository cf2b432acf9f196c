"""Reading files for upload: consistent whole reads of small files, checksummed ranges of large ones.

Owns the local side of a request body: opening a file without following a symlink that replaced
it, noticing a file that changes or shrinks while it is read, and the two reads of a streamed
range (the checksum pass in a worker thread, then the chunks the socket sends). A streamed body
never holds the file in memory: both passes go through the two chunk buffers its stream took from
the pool (backup/budget.BufferPool). The chunks are read on the event loop only when the page cache
already holds them (RWF_NOWAIT: the checksum pass just read them), else in a worker thread, so a
slow disk or a stalled NFS server never holds up the loop. Knows no checksum (the caller's `update`
computes it) and imports nothing of the package: no S3, no aiohttp, no botocore.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import anyio


class FileVanished(Exception):
    """The file disappeared between the walk and the upload."""


class FileChanged(Exception):
    """The file's size or mtime moved while it was read: what was read is not a consistent copy."""


class FileUnreadable(Exception):
    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))
        self.errno_name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)


# preadv flags that mean "this file system cannot do RWF_NOWAIT": read in a thread instead.
_NOWAIT_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})


def open_nofollow(path: bytes) -> int:
    # O_NOFOLLOW: a file replaced by a symlink since the walk is not followed.
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))


def os_error(exc: OSError) -> Exception:
    """Ours for an OSError of reading a file: vanished (gone, or now a symlink) or unreadable."""
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP:
        return FileVanished(str(exc))
    return FileUnreadable(exc)


def read_whole(path: bytes) -> tuple[bytes, int, int, os.stat_result]:
    """Read a small file in one go; returns (data, size, mtime_ns) of a consistent read, and the
    fstat taken before the read (its inode and ctime are the row's evidence)."""
    try:
        fd = open_nofollow(path)
    except OSError as exc:
        raise os_error(exc) from None
    try:
        before = os.fstat(fd)
        chunks = []
        remaining = before.st_size
        while True:
            chunk = os.read(fd, max(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        after = os.fstat(fd)
    except OSError as exc:
        raise os_error(exc) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise FileChanged("size or modification time changed while the file was read")
    return data, after.st_size, after.st_mtime_ns, before


def size_and_mtime(fd: int) -> tuple[int, int]:
    """The open file's size and mtime (ns), as a change check compares them."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise os_error(exc) from None
    return st.st_size, st.st_mtime_ns


def check_unchanged(fd: int, size: int, mtime_ns: int) -> None:
    """Raise FileChanged unless the open file still has this size and mtime."""
    if size_and_mtime(fd) != (size, mtime_ns):
        raise FileChanged("size or modification time changed while the file was read")


def read_range(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes at `offset`, read whole (a part through botocore); FileChanged when the file
    ends first."""
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise os_error(exc) from None
    if len(data) != length:
        raise FileChanged("the file became shorter while it was read")
    return data


def feed_range(fd: int, offset: int, length: int, buffer: bytearray, update: Callable[[memoryview], None]) -> None:
    """Read `length` bytes at `offset` through `buffer` and hand each piece to `update` (a checksum
    being computed; run in a worker thread: hashlib and zlib release the GIL). Raises FileChanged
    when the file ends before the range."""
    view = memoryview(buffer)
    position, end = offset, offset + length
    try:
        while position < end:
            n = os.preadv(fd, [view[: min(len(view), end - position)]], position)
            if n == 0:
                raise FileChanged("the file became shorter while it was read")
            update(view[:n])
            position += n
    except OSError as exc:
        raise os_error(exc) from None
    finally:
        view.release()


class RangeReader:
    """Reads chunks of one open file for a streamed body, at given positions."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._nowait = hasattr(os, "RWF_NOWAIT")

    async def read_into(self, view: memoryview, position: int) -> int:
        """Fill `view` from `position` as far as one read goes; raises FileChanged at the end of
        the file (the body's range was checksummed, so the file became shorter since)."""
        n = -1
        if self._nowait:
            try:
                # Only from the page cache, so the event loop never waits for a disk.
                n = os.preadv(self.fd, [view], position, os.RWF_NOWAIT)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno not in _NOWAIT_UNSUPPORTED:
                    raise os_error(exc) from None
                self._nowait = False
        if n < 0:
            try:
                n = await anyio.to_thread.run_sync(os.preadv, self.fd, [view], position)
            except OSError as exc:
                raise os_error(exc) from None
        if n == 0:
            raise FileChanged("the file became shorter while it was read")
        return n
