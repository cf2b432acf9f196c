"""What the walk yields: a file, something skipped, a hole (a directory whose contents are unknown).

Owns these data types only, so that the pure planner and the cache's records can name them
without importing the walk. Pure: imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DiskFile:
    """A regular file as the walk saw it: its lstat's size, mtime, inode and ctime (None where a
    caller did not take them: no evidence)."""

    path: bytes
    size: int
    mtime_ns: int
    ino: int | None = None
    ctime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something on disk that is not backed up: a symlink, socket, FIFO, device, or excluded file."""

    path: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Hole:
    """A directory whose contents are unknown this run (unreadable, vanished or excluded).

    `path` is the directory with a trailing slash: every cached file under it is kept as it is,
    neither uploaded nor deleted.
    """

    path: bytes
    reason: str


WalkEntry = DiskFile | Skipped | Hole
