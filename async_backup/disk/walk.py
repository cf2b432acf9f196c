"""Scan one target's tree in the order of its object keys.

Owns directory traversal. `walk_target` is a synchronous generator meant to run in a worker
thread (the event loop never blocks on the disk). It yields entries sorted by their path bytes,
the same order SQLite gives the cache's BLOB keys, so the planner can merge the two in one pass.
Imports nothing of S3 and does not read the cache.
"""

from __future__ import annotations

import enum
import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from ..errors import Failure, FailureKind, Fix, fix_command
from .entries import DiskFile, Hole, Skipped, WalkEntry
from .keys import display_path


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


# Why a remembered mount point counts as absent (MountWatch.absent's second argument).
NOT_MOUNTED = "not mounted"  # the folder is on its parent's file system again
EMPTY = "empty"
MISSING = "missing"
MOUNT_ABSENT = "mount point absent"  # the code of the failure for an absent mount point


_WHY = {
    NOT_MOUNTED: "no longer a mount point (an empty folder of the parent file system: the share is not mounted?)",
    EMPTY: "empty (the share is not mounted, or was emptied?)",
    MISSING: "missing (the share is not mounted, or its folder was removed?)",
}


def mount_absent(target_name: str, path: bytes, why: str) -> Failure:
    """The failure for a remembered mount point that is absent: what was kept, and the way out."""
    shown = display_path(path)
    message = (
        f"{shown} is a file system mounted inside this target and is now {_WHY.get(why, why)}; nothing under "
        "it was uploaded or deleted, its cached files were kept (not deleted from S3). Mount it; if it was "
        f"removed on purpose, run {fix_command(Fix.ALLOW_MASS_DELETE, target_name)} (its files are then "
        "deleted from S3 and the mount point is forgotten)"
    )
    return Failure(
        FailureKind.DELETION_GUARD, target_name, shown, message, MOUNT_ABSENT, folder=True, fix=Fix.ALLOW_MASS_DELETE
    )


def _no_mount(_path: bytes, _device: int) -> None:
    pass


def _no_absence(_path: bytes, _why: str) -> None:
    pass


def _no_absence_of(_path: bytes) -> None:
    pass


@dataclass(frozen=True, slots=True)
class MountWatch:
    """What the walk knows and tells about file systems mounted inside a target, as plain data
    (the walk does not read the cache: the caller passes the remembered mount points in).

    `remembered`: mount points (paths without a trailing slash) earlier runs found inside the
    target. `found(path, st_dev)`: a non-empty directory on another device than its parent.
    `suspected`: those of them never seen mounted (empty folders a lost cache's rebuild found
    objects under): only empty or missing counts as absent for these; found with files on the
    parent's device, such a folder is reported to `unmounted` (it was no share after all).
    `absent(path, why)`: a remembered mount point that is not mounted, empty or missing; the
    walk yields it as a Hole, so nothing cached under it is deleted.
    """

    remembered: frozenset[bytes] = frozenset()
    found: Callable[[bytes, int], None] = _no_mount
    absent: Callable[[bytes, str], None] = _no_absence
    suspected: frozenset[bytes] = frozenset()
    unmounted: Callable[[bytes], None] = _no_absence_of
    # every folder above a remembered mount point: only these are checked for a missing one
    _above: frozenset[bytes] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        above = set()
        for path in self.remembered:
            while (path := os.path.dirname(path)) and path not in above and path != b"/":
                above.add(path)
        object.__setattr__(self, "_above", frozenset(above))

    def above(self, folder: bytes) -> bool:
        """Whether a remembered mount point lies below `folder`."""
        return folder in self._above

    def missing_below(self, folder: bytes, listed_dirs: set[bytes]) -> list[bytes]:
        """Remembered mount points under `folder` cut off because the folder's child on the way
        to them is not among `listed_dirs` (names): the outermost of each, sorted."""
        prefix = folder.rstrip(b"/") + b"/"
        cut = sorted(
            m for m in self.remembered if m.startswith(prefix) and m[len(prefix) :].split(b"/")[0] not in listed_dirs
        )
        outermost: list[bytes] = []
        for m in cut:
            if not outermost or not m.startswith(outermost[-1] + b"/"):
                outermost.append(m)
        return outermost


def walk_target(
    target_path: bytes,
    excluder: Excluder,
    report: Callable[[Failure], None],
    target_name: str,
    warn: Callable[[Failure], None] | None = None,
    mounts: MountWatch | None = None,
) -> Iterator[WalkEntry]:
    """Yield every entry under `target_path` in path-byte order, without following symlinks.

    Directories sort as if their name ended with "/", which makes a depth-first walk emit paths in
    exactly the byte order of the full paths ("a-c" < "a/b" because "-" < "/").

    An entry whose type or status cannot be read (lstat fails with EIO, ESTALE, EACCES, which on
    NFS, FUSE or XFS without ftype is also what DirEntry.is_dir() falls back to) may be a file or
    a directory: it is yielded twice, as Skipped(path) at the place of a file and as
    Hole(path + "/") at the place of a directory, so the planner keeps whatever the cache holds
    for the path itself and for everything under it. Not knowing is never a reason to delete.

    A directory that cannot be listed is reported (a failure, marked as a folder); one that
    vanished between its parent's listing and its own goes to `warn`, if given.

    Mount points (see MountWatch) cost one lstat per directory, none per file: a directory's
    st_dev is compared with its parent's.
    """
    watch = mounts or MountWatch()
    try:
        root_device = os.stat(target_path).st_dev
    except OSError:
        root_device = -1  # _list_dir reports the folder
    # (the directory's entries, its st_dev)
    stack: list[tuple[Iterator[_Listed], int]] = []
    listing = _list_dir(target_path, target_path, excluder, report, target_name, warn)
    if isinstance(listing, Hole):
        yield listing
        return
    stack.append((iter(_with_missing_mounts(target_path, listing, watch)), root_device))
    while stack:
        item = next(stack[-1][0], None)
        if item is None:
            stack.pop()
            continue
        kind = item[1]
        if kind is _Kind.ABSENT_MOUNT:
            absent = cast(bytes, item[2])
            watch.absent(absent, MISSING)
            yield Hole(absent + b"/", "mount point missing")
            continue
        entry: os.DirEntry[bytes] = item[2]  # type: ignore[assignment]  # no cast() call per file
        path = entry.path
        if kind is _Kind.UNKNOWN:
            yield Skipped(path, "unreadable")
        elif kind is _Kind.UNKNOWN_BELOW:
            yield Hole(path + b"/", "unreadable")
        elif kind is _Kind.EXCLUDED_DIR:
            yield Hole(path + b"/", "excluded")
        elif kind is _Kind.EXCLUDED:
            yield Skipped(path, "excluded")
        elif kind is _Kind.DIR:
            parent_device = stack[-1][1]
            device: int | None
            try:
                device = entry.stat(follow_symlinks=False).st_dev  # the one lstat per directory
            except OSError:
                device = None  # vanished or unreadable: _list_dir says which
            remembered = path in watch.remembered
            if remembered and device == parent_device and path not in watch.suspected:
                watch.absent(path, NOT_MOUNTED)
                yield Hole(path + b"/", "not mounted")
                continue
            sub = _list_dir(path, target_path, excluder, report, target_name, warn)
            if isinstance(sub, Hole):
                yield sub
            elif not sub and remembered:
                watch.absent(path, EMPTY)  # an empty share is no evidence that its files were deleted
                yield Hole(path + b"/", "mount point empty")
            else:
                if device is None:
                    device = parent_device
                elif device != parent_device and sub:
                    watch.found(path, device)
                elif remembered:
                    watch.unmounted(path)  # a suspected one, with files on its parent's device
                stack.append((iter(_with_missing_mounts(path, sub, watch)), device))
        else:
            mode = item[3]
            if stat.S_ISREG(mode):
                st = entry.stat(follow_symlinks=False)  # cached by _list_dir: no second lstat
                yield DiskFile(path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
            elif stat.S_ISLNK(mode):
                yield Skipped(path, "symlink")
            else:
                yield Skipped(path, "special file")


def device_of(folder: bytes) -> int | None:
    """st_dev of a target's folder (following a symlink, as the walk's scandir does)."""
    try:
        return os.stat(folder).st_dev
    except OSError:
        return None  # the walk reports the folder; no device decides anything this run


class _Kind(enum.Enum):
    DIR = "dir"
    OTHER = "other"  # a regular file, symlink or special file, its lstat done
    EXCLUDED = "excluded"
    EXCLUDED_DIR = "excluded dir"
    UNKNOWN = "unknown"  # type or status unreadable: placed where a file of that name sorts...
    UNKNOWN_BELOW = "unknown below"  # ...and again where a directory of that name sorts
    ABSENT_MOUNT = "absent mount"  # a remembered mount point (or a folder above it) is missing


# (sort key, kind, entry (for ABSENT_MOUNT: the mount point's path), st_mode for OTHER else 0)
_Listed = tuple[bytes, _Kind, "os.DirEntry[bytes] | bytes", int]


def _with_missing_mounts(folder: bytes, listing: list[_Listed], watch: MountWatch) -> list[_Listed]:
    """The listing, with a place for each remembered mount point below `folder` that the listing
    has no way down to (the mount point, or a folder above it, is missing)."""
    if not watch.above(folder):
        return listing  # the common case: one set lookup, nothing built per entry
    # a folder the walk enters, or holds as a Hole (excluded, unreadable): a way down either way
    dirs = {item[0][:-1] for item in listing if item[0].endswith(b"/")}
    missing = watch.missing_below(folder, dirs)
    if not missing:
        return listing
    prefix = len(folder.rstrip(b"/")) + 1
    listing = listing + [(m[prefix:] + b"/", _Kind.ABSENT_MOUNT, m, 0) for m in missing]
    listing.sort(key=lambda item: item[0])
    return listing


def _list_dir(
    path: bytes,
    target_path: bytes,
    excluder: Excluder,
    report: Callable[[Failure], None],
    target_name: str,
    warn: Callable[[Failure], None] | None = None,
) -> list[_Listed] | Hole:
    """One directory's entries, classified and sorted by their key in the walk's order.

    Every entry's type and status is settled here, before sorting: an entry whose type cannot be
    read must take two places in the order (as a file and as a directory), which only the sort
    can give it. The lstat each file needs is done once, here; DirEntry caches it for the walk.
    """
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except FileNotFoundError:
        # Vanished mid-walk: keep what the cache knows under it; the next run settles it.
        if warn is not None:
            shown = display_path(path)
            message = (
                f"folder {shown} vanished while it was read: nothing under it was backed up; "
                "its cached files were kept (the next run deletes them from S3 if it stays gone)"
            )
            warn(Failure(FailureKind.VANISHED, target_name, shown, message, "ENOENT", folder=True))
        return Hole(path + b"/", "vanished")
    except OSError as exc:
        report(_unreadable(target_name, path, exc, "directory"))
        return Hole(path + b"/", "unreadable")
    keyed: list[_Listed] = []
    for e in entries:
        excluded = bool(excluder) and excluder.excludes(target_path, e.path)
        try:
            is_dir = e.is_dir(follow_symlinks=False)  # lstat when the file system gives no d_type
            if is_dir:
                keyed.append((e.name + b"/", _Kind.EXCLUDED_DIR if excluded else _Kind.DIR, e, 0))
                continue
            if excluded:
                keyed.append((e.name, _Kind.EXCLUDED, e, 0))
                continue
            mode = e.stat(follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue  # vanished between listing and stat: as if it had never been there
        except OSError as exc:
            if excluded:
                # Excluded by name whatever its type; the planner keeps cached rows under it too.
                keyed.append((e.name, _Kind.EXCLUDED, e, 0))
                continue
            report(_unreadable(target_name, e.path, exc, "entry"))
            keyed.append((e.name, _Kind.UNKNOWN, e, 0))
            keyed.append((e.name + b"/", _Kind.UNKNOWN_BELOW, e, 0))
            continue
        keyed.append((e.name, _Kind.OTHER, e, mode))
    keyed.sort(key=lambda item: item[0])
    return keyed


def _unreadable(target_name: str, path: bytes, exc: OSError, what: str) -> Failure:
    code = errno.errorcode.get(exc.errno or 0, "") if exc.errno else type(exc).__name__
    shown = display_path(path)
    if what == "directory":
        return Failure(
            kind=FailureKind.UNREADABLE,
            target=target_name,
            path=shown,
            message=(
                f"folder {shown} unreadable ({exc.strerror or exc}): nothing under it was backed up; "
                "its cached files were kept (not deleted from S3); check its permissions and the file system"
            ),
            code=code,
            folder=True,
        )
    kept = "its type is unknown, so it and any cached files under it were kept (not deleted from S3)"
    return Failure(
        kind=FailureKind.UNREADABLE,
        target=target_name,
        path=shown,
        message=f"{exc.strerror or exc}; {kept}; check its permissions and the file system",
        code=code,
    )
