"""Placing a restored file: a hidden file beside the destination that becomes it only once
complete and checked, with the original mtime and mode.

Owns the temporary file's name (`TEMP_MARK`), writing it while the checksum is summed, and the
rename into place (never over a file unless --overwrite). OSError is the caller's to report.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from .checksum import StreamSum

TEMP_MARK = b".async-backup-restore-"


class TempFile:
    """A hidden file beside the destination that becomes it only once complete and checked."""

    def __init__(self, path: bytes, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd
        self.placed = False

    @classmethod
    def create(cls, dest: bytes) -> TempFile:
        parent, name = os.path.split(dest)
        os.makedirs(parent, exist_ok=True)
        path = os.path.join(parent, b"." + name[:180] + TEMP_MARK + secrets.token_hex(4).encode())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        return cls(path, fd)

    def write(self, data: bytes, summer: StreamSum) -> None:
        assert self.fd is not None
        summer.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def place(self, dest: bytes, mtime_ns: int, mode: int, overwrite: bool) -> bool:
        """Give the file its mode and mtime, flush it, and rename it into place; False when the
        destination appeared meanwhile and may not be replaced."""
        assert self.fd is not None
        os.fchmod(self.fd, mode)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.utime(self.path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        if not overwrite and os.path.lexists(dest):
            return False
        os.replace(self.path, dest)
        self.placed = True
        return True

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not self.placed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
