"""Scan one target's tree in the order of its object keys.

Owns directory traversal. `walk_target` is a synchronous generator meant to run in a worker
thread (the event loop never blocks on the disk). It yields entries sorted by their path bytes,
the same order SQLite gives the cache's BLOB keys, so the planner can merge the two in one pass.
Imports nothing of S3 and does not read the cache.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import Failure, FailureKind
from .keys import display_path


@dataclass(frozen=True, slots=True)
class DiskFile:
    """A regular file as the walk saw it."""

    path: bytes
    size: int
    mtime_ns: int


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


class Excluder:
    """Glob patterns from backup.exclude: a pattern without "/" matches a file or directory name
    anywhere; a pattern with "/" matches the path relative to the target."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        names = [p for p in patterns if "/" not in p]
        paths = [p.strip("/") for p in patterns if "/" in p]
        self._names = re.compile("|".join(fnmatch.translate(p) for p in names)) if names else None
        self._paths = re.compile("|".join(fnmatch.translate(p) for p in paths)) if paths else None

    def __bool__(self) -> bool:
        return self._names is not None or self._paths is not None

    def excludes(self, target_path: bytes, path: bytes) -> bool:
        if not self:
            return False
        text = os.fsdecode(path)
        if self._names is not None and self._names.match(text.rsplit("/", 1)[-1]):
            return True
        if self._paths is not None:
            relative = os.fsdecode(path[len(target_path) :]).lstrip("/")
            return self._paths.match(relative) is not None
        return False

    def excludes_any_part(self, target_path: bytes, path: bytes) -> bool:
        """For a cached path: excluded itself, or lying under an excluded directory."""
        if not self:
            return False
        relative = path[len(target_path) :].strip(b"/")
        parts = relative.split(b"/")
        for i in range(1, len(parts) + 1):
            if self.excludes(target_path, target_path + b"/" + b"/".join(parts[:i])):
                return True
        return False


def walk_target(
    target_path: bytes,
    excluder: Excluder,
    report: Callable[[Failure], None],
    target_name: str,
) -> Iterator[WalkEntry]:
    """Yield every entry under `target_path` in path-byte order, without following symlinks.

    Directories sort as if their name ended with "/", which makes a depth-first walk emit paths in
    exactly the byte order of the full paths ("a-c" < "a/b" because "-" < "/").
    """
    stack: list[Iterator[tuple[bytes, os.DirEntry[bytes]]]] = []
    listing = _list_dir(target_path, report, target_name)
    if isinstance(listing, Hole):
        yield listing
        return
    stack.append(iter(listing))
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        _, entry = item
        path = entry.path
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            if excluder and excluder.excludes(target_path, path):
                yield Hole(path + b"/", "excluded")
                continue
            sub = _list_dir(path, report, target_name)
            if isinstance(sub, Hole):
                yield sub
            else:
                stack.append(iter(sub))
            continue
        if excluder and excluder.excludes(target_path, path):
            yield Skipped(path, "excluded")
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # vanished between listing and stat: as if it had never been there
        except OSError as exc:
            report(_unreadable(target_name, path, exc))
            yield Skipped(path, "unreadable")
            continue
        mode = st.st_mode
        if stat.S_ISREG(mode):
            yield DiskFile(path, st.st_size, st.st_mtime_ns)
        elif stat.S_ISLNK(mode):
            yield Skipped(path, "symlink")
        else:
            yield Skipped(path, "special file")


def _list_dir(
    path: bytes, report: Callable[[Failure], None], target_name: str
) -> list[tuple[bytes, os.DirEntry[bytes]]] | Hole:
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except FileNotFoundError:
        # Vanished mid-walk: keep what the cache knows under it; the next run settles it.
        return Hole(path + b"/", "vanished")
    except OSError as exc:
        report(_unreadable(target_name, path, exc))
        return Hole(path + b"/", "unreadable")
    keyed = []
    for e in entries:
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        keyed.append((e.name + b"/" if is_dir else e.name, e))
    keyed.sort(key=lambda pair: pair[0])
    return keyed


def _unreadable(target_name: str, path: bytes, exc: OSError) -> Failure:
    code = errno.errorcode.get(exc.errno or 0, "") if exc.errno else type(exc).__name__
    return Failure(
        kind=FailureKind.UNREADABLE,
        target=target_name,
        path=display_path(path),
        message=f"{exc.strerror or exc}; check its permissions",
        code=code,
    )
