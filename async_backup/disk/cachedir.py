"""Why a file in the cache directory cannot be written, as one line naming it and what to do.

Owns the diagnosis shared by every write the cache directory takes at the start of a run (the lock
file, the SQLite cache and its WAL): a file system mounted, or turned, read-only; a directory this
user may not write; a full disk. Pure look-ups (statvfs, access), no writes of its own.
"""

from __future__ import annotations

import errno
import os
import pwd
from pathlib import Path

from ..errors import FatalError


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem that holds `path` (for "free space on ...")."""
    current = path.absolute()
    while not current.exists():
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def read_only_mount(path: Path) -> bool:
    """The file system holding `path` is mounted read-only (or the kernel turned it so after errors)."""
    try:
        return bool(os.statvfs(mount_point(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def why_unwritable(path: Path, err: int | None = None) -> str | None:
    """What keeps `path` (a file in the cache directory) from being written, with the fix; None
    when nothing can be told (then the caller's own reason stands). `err` is the errno seen, if any."""
    directory = path.parent
    if err == errno.EROFS or read_only_mount(directory):
        mounted = mount_point(directory)
        where = "its file system" if mounted == directory else f"the file system at {mounted}"
        return (
            f"{where} is mounted read-only (the kernel does that after disk errors: check dmesg); "
            "remount it read-write, or give --cache a writable directory"
        )
    if err in (errno.EACCES, errno.EPERM) or not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"the cache directory {directory} is not writable for user {_user()}; "
            f"give that user write access to it (chown or chmod), or run the backup as its owner"
        )
    if err in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full; free space on {mount_point(directory)}"
    return None


def unwritable(path: Path, exc: OSError) -> FatalError:
    """Our one-line error for an OSError writing `path` (the lock file: nothing was done yet)."""
    reason = exc.strerror or type(exc).__name__
    fix = why_unwritable(path, exc.errno) or "check the disk holding it (dmesg)"
    return FatalError(f"{path} cannot be written ({reason}): {fix}")
