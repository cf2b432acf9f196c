"""Reading files for upload: consistent whole reads of small files, checksummed ranges of large ones.

Owns the local side of a request body: opening a file without blocking and without following a
symlink, and only while it is a regular file (a FIFO or a device that replaced it since the walk
counts as vanished); reads bounded by the size its fstat gave; noticing a file that changes or
shrinks while it is read; and the two reads of a streamed range (the checksum pass in a worker
thread, then the chunks the socket sends). A streamed body
never holds the file in memory: both passes go through the two chunk buffers its stream took from
the pool (backup/budget.BufferPool). The chunks are read on the event loop only when the page cache
already holds them (RWF_NOWAIT: the checksum pass just read them), else in a worker thread, so a
slow disk or a stalled NFS server never holds up the loop. Knows no checksum (the caller's `update`
computes it) and imports nothing of the package: no S3, no aiohttp, no botocore.
"""

from __future__ import annotations

import errno
import os
import stat
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


# Flags of every open of a file for upload. O_NOFOLLOW: a file replaced by a symlink since the walk
# is not followed. O_NONBLOCK: a FIFO put in its place must not block the open until a writer comes
# (it is cleared again once fstat shows a regular file).
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: bytes) -> tuple[int, os.stat_result]:
    """Open a file for reading and fstat it; raises FileVanished unless it is (still) a regular
    file: a FIFO or a device put in its place since the walk is skipped like a deleted file, before
    a byte of it is read. The size to read is the returned stat's, never the walk's."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except BlockingIOError:
        # Only a write lease of another program (Samba's kernel oplocks) refuses a non-blocking open
        # of a regular file: it is being written, as a change while reading is.
        raise FileChanged("held open for writing by another program (a lease)") from None
    except OSError as exc:
        raise os_error(exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileVanished("no longer a regular file (replaced by a FIFO, a device or a socket)")
        os.set_blocking(fd, True)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise os_error(exc) from None
        raise
    return fd, st


def os_error(exc: OSError) -> Exception:
    """Ours for an OSError of reading a file: vanished (gone, or now a symlink) or unreadable."""
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP:
        return FileVanished(str(exc))
    return FileUnreadable(exc)


def read_exact(fd: int, size: int, mtime_ns: int) -> bytes:
    """The first `size` bytes of an open file whose fstat gave (size, mtime_ns); never reads past
    `size` (what the caller reserved), and raises FileChanged unless the file still has that size
    and mtime afterwards."""
    chunks = []
    remaining = size
    try:
        while remaining > 0:
            chunk = os.pread(fd, remaining, size - remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise os_error(exc) from None
    if remaining:
        raise FileChanged("the file became shorter while it was read")
    check_unchanged(fd, size, mtime_ns)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
