"""The cache directory's lock: one run per cache at a time.

Owns the lock file. flock is released by the kernel when the process dies, so a crashed run never
leaves a stale lock; the holder's pid is written into the file for the error message. Which cache
directories this process holds is kept (`holds`), so that the cache is opened writable only under
its lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import LockHeldError
from .cachedir import unwritable

LOCK_NAME = "async-backup.lock"

_held: set[Path] = set()  # the cache directories whose lock this process holds


def holds(cache_dir: Path) -> bool:
    """Whether this process holds `cache_dir`'s lock (taken with `cache_lock` and not released)."""
    return cache_dir.absolute() in _held


@contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    path = cache_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # the first write of a run: a read-only or unwritable cache directory shows here
        raise unwritable(path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(str(path), _read_pid(fd)) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk
            raise unwritable(path, exc) from None
        _held.add(cache_dir.absolute())
        try:
            yield
        finally:
            _held.discard(cache_dir.absolute())
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
