"""Placing a restored file: a hidden file beside the destination that becomes it only once
complete and checked, with the original mtime and mode; never outside the restore's root.

Owns the temporary file's name (`TEMP_MARK`), the way down from the root to a file's folder
(`Folders`: every folder below the root opened with O_NOFOLLOW, relative to its parent's
descriptor, so a symbolic link planted anywhere below the root is refused, never followed),
writing the temporary file while the checksum is summed, and putting it in place: a plain rename
with --overwrite, otherwise a rename that cannot replace (renameat2's RENAME_NOREPLACE, or a hard
link where the file system has no renameat2), so a file that appears at the destination at any
moment is never replaced. The root itself (--to DIR, or a target's folder as configured) is
opened as given: an operator may name a link there. OSError is the caller's to report; `Refused`
carries the one line for a destination restore will not write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable

from ..s3.checksums import StreamSum

TEMP_MARK = b".async-backup-restore-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
RENAME_NOREPLACE = 1  # <linux/fs.h>
# renameat2 answers these where the kernel or the file system lacks it; link() where hard links are missing.
_NO_RENAMEAT2 = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS})


class Refused(Exception):
    """A destination restore will not write: `where` names it, `why` says why and what to do."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


def _find_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _find_renameat2()


def shown(path: bytes) -> str:
    """A path for the one-line messages: undecodable bytes as \\xNN, control characters escaped
    (a link's target is anyone's text: a newline in it must not split the line)."""
    text = path.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def rename_noreplace(dir_fd: int, src: bytes, dst: bytes, dst_shown: str) -> bool:
    """Rename `src` to `dst` inside one folder unless `dst` exists (as anything, a dangling link
    too): True when moved, False when `dst` was there. Atomic: there is no moment between a check
    and the rename in which a file appearing at `dst` could be replaced."""
    if _renameat2 is not None:
        if _renameat2(dir_fd, src, dir_fd, dst, RENAME_NOREPLACE) == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            return False
        if code not in _NO_RENAMEAT2:
            raise OSError(code, os.strerror(code), os.fsdecode(dst))
    # No renameat2 here (an old kernel, some network file systems): a hard link refuses an
    # existing name just as atomically; the temporary name is removed afterwards.
    try:
        os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in _NO_HARD_LINKS:
            raise Refused(
                dst_shown,
                "this file system has neither renameat2 (RENAME_NOREPLACE) nor hard links, so restore cannot "
                "place a file without risking to replace one that appears meanwhile; nothing was written there: "
                "restore to another file system with --to, or add --overwrite if nothing else writes there",
            ) from None
        raise
    os.unlink(src, dir_fd=dir_fd)
    return True


def _components(rel: bytes) -> list[bytes]:
    return [part for part in rel.split(b"/") if part]


class Folders:
    """The way from a root down to a file's folder: the root opened as given, every folder below it
    opened relative to its parent with O_NOFOLLOW. Remembers the last folder reached (files come in
    key order, so neighbours share it); one per thread."""

    def __init__(self, root: bytes) -> None:
        self.root = root.rstrip(b"/") or b"/"
        self._last: tuple[bytes, int] | None = None

    def open(self, rel_dir: bytes, *, create: bool) -> int:
        """A new descriptor of the folder `rel_dir` below the root (the caller closes it);
        FileNotFoundError when a folder is missing and `create` is off; Refused at a link."""
        if self._last is not None and self._last[0] == rel_dir:
            return os.dup(self._last[1])
        fd = self._open_root(create)
        try:
            walked = self.root
            for part in _components(rel_dir):
                if part in (b".", b".."):
                    raise Refused(shown(os.path.join(walked, part)), "not a plain folder name; skipped")
                walked = os.path.join(walked, part)
                child = self._open_child(fd, part, walked, create)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self.forget()
        self._last = (rel_dir, os.dup(fd))
        return fd

    def forget(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def _open_root(self, create: bool) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
        os.makedirs(self.root, exist_ok=True)
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _open_child(self, parent_fd: int, name: bytes, walked: bytes, create: bool) -> int:
        for _ in range(2):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            except FileNotFoundError:
                if not create:
                    raise
                # another worker may make it meanwhile: then open what is there (a link is refused)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=parent_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise self._refusal(parent_fd, name, walked) from None
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)

    def _refusal(self, parent_fd: int, name: bytes, walked: bytes) -> Refused:
        where = shown(walked)
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            try:
                to = shown(os.readlink(name, dir_fd=parent_fd))
            except OSError:
                to = "?"
            return Refused(
                where,
                f"a symbolic link (to {to}) below {shown(self.root)}; restore follows no link there, "
                "so nothing was written through it: remove the link (someone may have planted it) and run again, "
                "or restore into a new, empty folder with --to",
            )
        return Refused(
            where,
            "not a folder, but a file restore needs as its folder is there: "
            "move it away and run again, or restore elsewhere with --to",
        )


class TempFile:
    """A hidden file beside the destination that becomes it only once complete and checked."""

    def __init__(self, dir_fd: int, name: bytes, temp_name: bytes, fd: int, dest: bytes) -> None:
        self.dir_fd: int | None = dir_fd
        self.dest = dest  # the whole path, for messages
        self.name = name
        self.temp_name = temp_name
        self.fd: int | None = fd
        self.temp_exists = True

    @classmethod
    def create(cls, folders: Folders, rel_path: bytes) -> TempFile:
        """Make the folders down to `rel_path` (below the root) and a temporary file in the last."""
        rel_dir, name = os.path.split(rel_path)
        dir_fd = folders.open(rel_dir, create=True)
        temp_name = b"." + name[:180] + TEMP_MARK + secrets.token_hex(4).encode()
        try:
            fd = os.open(
                temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
            )
        except BaseException:
            os.close(dir_fd)
            raise
        return cls(dir_fd, name, temp_name, fd, os.path.join(folders.root, rel_path.lstrip(b"/")))

    def write(self, data: bytes, summer: StreamSum) -> None:
        assert self.fd is not None
        summer.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def place(self, mtime_ns: int, mode: int, overwrite: bool) -> bool:
        """Give the file its mode and mtime, flush it, and move it into place; False when the
        destination exists (appeared meanwhile) and may not be replaced."""
        assert self.fd is not None and self.dir_fd is not None
        os.fchmod(self.fd, mode)
        os.utime(self.fd, ns=(mtime_ns, mtime_ns))
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        if overwrite:
            os.replace(self.temp_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            placed = True
        else:
            placed = rename_noreplace(self.dir_fd, self.temp_name, self.name, shown(self.dest))
        self.temp_exists = not placed
        return placed

    def discard(self) -> None:
        """Close what is open and remove the temporary file unless it became the destination."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.dir_fd is None:
            return
        try:
            if self.temp_exists:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.temp_name, dir_fd=self.dir_fd)
                self.temp_exists = False
        finally:
            os.close(self.dir_fd)
            self.dir_fd = None


def lookup(folders: Folders, rel_path: bytes) -> os.stat_result | None:
    """The destination's lstat, reached without following a link below the root; None when it
    (or a folder on its way) does not exist. Refused at a link on the way."""
    rel_dir, name = os.path.split(rel_path)
    try:
        dir_fd = folders.open(rel_dir, create=False)
    except FileNotFoundError:
        return None
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dir_fd)
