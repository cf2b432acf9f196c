"""The exception hierarchy and the failure collector.

Owns: every error type the tool raises on purpose, the kinds of per-item failure, the one
collector that gathers failures for the run's report and Teams card, and the one table of exit
codes; the exact command of each `Fix`, quoted for the shell, for messages and the card alike.
Imports nothing of S3, the filesystem or the network: adapters map their foreign errors onto
these types.
"""

from __future__ import annotations

import enum
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

# The one table of exit codes, for every command (backup, verify, restore, status).
EXIT_OK = 0  # done; verify: nothing wrong found
EXIT_FAILURES = 1  # some items failed (backup, restore), or verify found problems
EXIT_USAGE = 2  # bad arguments or configuration; argparse exits with 2 as well
EXIT_LOCKED = 3  # another run holds the cache directory's lock
EXIT_WINDOW = 4  # backup: its window ended with uploads left for the next run (a normal outcome)
EXIT_INTERRUPTED = 130  # stopped by SIGINT or SIGTERM: 128 + SIGINT, as shells report it


class BackupError(Exception):
    """Base of every error the tool raises on purpose; its text is one line fit for an operator."""


class ConfigError(BackupError):
    """config.json or the command line cannot work; raised before any I/O against S3 (exit 2)."""


class LockHeldError(BackupError):
    """Another run holds this cache's lock (exit 3)."""

    def __init__(self, lock_path: str, holder_pid: int | None) -> None:
        holder = f"process {holder_pid}" if holder_pid else "another process"
        super().__init__(
            f"{lock_path} is locked by {holder}: another async-backup run uses this cache; "
            "wait for it to finish or stop it"
        )
        self.holder_pid = holder_pid


class FatalError(BackupError):
    """Nothing more can succeed in this run (bad credentials, unreachable endpoint): stop at once."""


class S3Error(BackupError):
    """One S3 request failed after botocore's retries; `code` is S3's error code or a transport name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class FailureKind(enum.StrEnum):
    """What went wrong with one item; the Teams card and the report group failures by kind."""

    UNREADABLE = "unreadable"  # a file or directory the OS refused to read
    CHANGED_WHILE_READING = "changed while reading"  # size or mtime moved during the upload
    NEVER_STILL = "never holds still"  # changed while reading in several runs in a row: no backup
    S3 = "S3 error"  # an S3 request failed after retries; the code says which
    DELETION_GUARD = "deletion guard"  # deletes held back for a target
    CHANGE_GUARD = "change guard"  # updates held back for a target (mass overwrite, images lost their signature)
    TARGET_MISSING = "target missing"  # a known target's folder is gone (unmounted share?)
    KEY_TOO_LONG = "key too long"  # S3 keys are limited to 1,024 bytes
    BUCKET = "bucket setup"  # a bucket could not be created or configured
    ADOPTION = "adoption"  # the old script's cache could not be checked against its bucket
    SECRETS_EXPOSED = "secrets exposed"  # AWS keys lie readable somewhere (a warning only)
    CACHE_BACKUP = "cache backup"  # the cache snapshot could not be uploaded
    REBUILD = "cache rebuild"  # a lost cache could not be rebuilt from S3: the target was held back
    FATAL = "fatal"  # the run stopped early
    INTERNAL = "internal error"  # an exception that is not one of ours (a bug, MemoryError): the run stopped
    NOTIFICATION = "notification"  # the Teams card could not be delivered (a warning only)
    VANISHED = "vanished"  # a folder removed while the walk read it (a warning only)
    FIXITY = "fixity"  # bit rot on disk (uploads held back), or an S3 copy that is not what was sent


class Fix(enum.StrEnum):
    """The one command that settles a failure for good, where there is one: the Teams card spells
    it out for each target, quoted for the shell."""

    FORGET_SUBFOLDER = "forget subfolder"  # a root's subfolder is gone: async-backup --forget-target '<target>'
    FORGET_TARGET = "forget target"  # a listed folder is gone: out of config.json, then --forget-target
    ALLOW_MASS_DELETE = "allow mass delete"  # deletes held back: async-backup --allow-mass-delete --only '<target>'
    ALLOW_MASS_CHANGE = "allow mass change"  # updates held back: async-backup --allow-mass-change --only '<target>'


def shell_quote(text: str) -> str:
    """`text` as one shell word, always quoted so the card shows where it starts and ends.

    Single quotes (a quote inside closed, escaped and reopened) for printable text; bash's
    ANSI-C quoting (``$'...'``) where the name holds control characters or bytes that are not
    UTF-8 (surrogate escapes), which no single-quoted word can carry.
    """
    plain = all(c.isprintable() and not 0xDC80 <= ord(c) <= 0xDCFF for c in text)
    if plain:
        return "'" + text.replace("'", "'\\''") + "'"
    out = []
    for c in text:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of one undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif c in "\\'":
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))
    return "$'" + "".join(out) + "'"


def fix_command(fix: Fix, target: str) -> str:
    """The exact command line that settles a failure of `target` for good."""
    if fix is Fix.ALLOW_MASS_DELETE:
        return f"async-backup --allow-mass-delete --only {shell_quote(target)}"
    if fix is Fix.ALLOW_MASS_CHANGE:
        return f"async-backup --allow-mass-change --only {shell_quote(target)}"
    return f"async-backup --forget-target {shell_quote(target)}"


@dataclass(frozen=True, slots=True)
class Failure:
    """One thing that did not get backed up (or deleted), and why.

    `path` is the local path or object key as text that is safe to print (undecodable bytes
    are already escaped); `code` refines the kind (an S3 error code, an errno name). `folder`
    marks a directory: nothing under it was backed up, though it is one path. `fix`: the command
    that settles it for good, when the operator decides to (run it for `target`).
    """

    kind: FailureKind
    target: str
    path: str
    message: str
    code: str = ""
    folder: bool = False
    fix: Fix | None = None

    @property
    def group(self) -> str:
        """The heading this failure is grouped under: the kind (of a folder), refined by its code."""
        kind = f"folder {self.kind.value}" if self.folder else self.kind.value
        return f"{kind}: {self.code}" if self.code else kind


class FailureCollector:
    """Gathers every failure of a run, from any task or worker thread, in arrival order.

    Warnings (a failed notification, a skipped special file) are kept apart: they are reported
    but do not make the run fail.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[Failure] = []
        self._warnings: list[Failure] = []

    def add(self, failure: Failure) -> None:
        with self._lock:
            self._failures.append(failure)

    def warn(self, warning: Failure) -> None:
        with self._lock:
            self._warnings.append(warning)

    @property
    def failures(self) -> list[Failure]:
        with self._lock:
            return list(self._failures)

    @property
    def warnings(self) -> list[Failure]:
        with self._lock:
            return list(self._warnings)

    def __len__(self) -> int:
        return len(self._failures)

    def __iter__(self) -> Iterator[Failure]:
        return iter(self.failures)

    def count_for(self, target: str) -> int:
        with self._lock:
            return sum(1 for f in self._failures if f.target == target)

    def counts_by_group(self) -> Counter[str]:
        with self._lock:
            return Counter(f.group for f in self._failures)


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (nested) group that is not a cancellation, else the first one."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    cancelled = anyio.get_cancelled_exc_class()
    for leaf in leaves:
        if not isinstance(leaf, cancelled):
            return leaf
    return leaves[0]


@asynccontextmanager
async def unwrapped_group() -> AsyncIterator[TaskGroup]:
    """A task group that re-raises its first real error as itself, not wrapped in a group,
    so callers can catch our error types plainly. Fatal errors win over per-item ones."""
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        fatal = group.subgroup(lambda e: isinstance(e, FatalError))
        raise first_leaf(fatal if fatal is not None else group) from None
