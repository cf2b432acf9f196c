"""What a run did, per target and in total: the input of the log summary, the report and the card.

Owns the counters only. Stages increment them as work is confirmed; nothing here does I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import Failure
from ..s3.pricing import RequestCost
from ..wording import counted


@dataclass(slots=True)
class FixityCounts:
    """One fixity slice or pass of a target: files read on disk and what they showed, objects
    HEADed in S3 and what they showed (fixity/)."""

    budget_bytes: int = 0  # what the slice was allowed to read (0: a whole pass, no budget)
    files: int = 0  # files read to the end
    bytes_read: int = 0
    ok: int = 0  # the recorded bytes
    first: int = 0  # no recomputable checksum yet: one taken, nothing compared
    rot: int = 0  # changed while size and mtime did not (held back from upload)
    passed_over: int = 0  # changed, gone or unreadable since the row: the backup's business
    objects: int = 0  # HeadObject sent
    objects_ok: int = 0
    objects_bad: int = 0  # a checksum that differs from the cache's, or no object at all
    objects_uncheckable: int = 0  # no comparable checksum on either side

    def line(self) -> str:
        return (
            f"fixity: {counted(self.files, 'file')} ({format_bytes(self.bytes_read)}) read on disk: {self.ok} as "
            f"recorded, {self.first} first checked, {self.rot} bit rot, {self.passed_over} changed or gone; "
            f"{counted(self.objects, 'object')} in S3: {self.objects_ok} as recorded, {self.objects_bad} differ or "
            f"missing, {self.objects_uncheckable} not checkable"
        )


@dataclass(slots=True)
class TargetStats:
    """Counters for one target; `bytes_uploaded` counts only what S3 confirmed."""

    name: str  # the target's folder path, as configured
    bucket: str
    new: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    unsure: int = 0  # size and mtime matched, the contents were to be compared (racy row, inode or ctime moved)
    skipped: int = 0  # symlinks, sockets, FIFOs, devices, excluded, vanished before reading
    failed: int = 0
    bytes_uploaded: int = 0
    planned_uploads: int = 0
    planned_upload_bytes: int = 0
    planned_deletes: int = 0
    adopted: int = 0  # rows taken from the old script's cache (a dry run: that would be)
    rebuilt_rows: int = 0  # cache rows rebuilt from S3 before planning
    rebuilt_gone: int = 0  # of those, objects whose file is gone from disk (so the run deletes them)
    content_read_bytes: int = 0  # read by the rebuild to compare objects without mtime metadata by ETag
    rebuilt_from: str = ""  # e.g. "snapshot s3://b/k of 2026-12-01 03:12 UTC" or "bucket listing + N HeadObject"
    rebuild_due: bool = False  # dry run: the cache holds no rows, a real run rebuilds them first
    walk_finished: bool = False
    # The object requests its plan needs (PutObject, UploadPart, ...): what a dry run would send.
    planned_requests: dict[str, int] = field(default_factory=dict)
    fixity: FixityCounts = field(default_factory=FixityCounts)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def duration_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)

    @property
    def destination(self) -> str:
        """The target's bucket as a URL; a root that could not be listed has none."""
        return f"s3://{self.bucket}" if self.bucket else "no bucket (a root that cannot be listed)"

    def line(self) -> str:
        """The one summary line per target that the log carries."""
        adopted = f"{self.adopted} adopted from the old cache, " if self.adopted else ""
        unsure = f", {self.unsure} compared by content" if self.unsure else ""
        return (
            f"{self.name} -> {self.destination}: {adopted}{self.new} new, {self.updated} updated, "
            f"{self.deleted} deleted, {self.unchanged} unchanged{unsure}, {self.skipped} skipped, "
            f"{self.failed} failed, {format_bytes(self.bytes_uploaded)} uploaded "
            f"in {self.duration_s:.1f} s{self.rebuilt_note()}"
        )

    def rebuilt_note(self) -> str:
        if not self.rebuilt_from:
            return ""
        return f"; {counted(self.rebuilt_rows, 'cache row')} rebuilt from {self.rebuilt_from}"


@dataclass(slots=True)
class RunSummary:
    """The whole run: targets in configuration order, every failure, and the outcome."""

    host: str
    started_at: float
    dry_run: bool = False
    finished_at: float | None = None
    targets: list[TargetStats] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)
    exit_code: int = 0
    interrupted: bool = False
    requests: RequestCost | None = None  # the S3 requests sent (a dry run: would send) and their price
    window_s: float | None = None  # the window this run had (--stop-at, --max-duration), if any
    left_files: int = 0  # planned uploads its end left for the next runs (not started, or cut)
    left_bytes: int = 0
    plan: list[str] = field(default_factory=list)  # a dry run's plan: nights to send it all, its cost

    @property
    def duration_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)

    @property
    def files_uploaded(self) -> int:
        return sum(t.new + t.updated for t in self.targets)

    @property
    def files_deleted(self) -> int:
        return sum(t.deleted for t in self.targets)

    @property
    def bytes_uploaded(self) -> int:
        return sum(t.bytes_uploaded for t in self.targets)

    @property
    def rows_rebuilt(self) -> int:
        return sum(t.rebuilt_rows for t in self.targets)

    @property
    def ended_by_window(self) -> bool:
        return self.left_files > 0

    @property
    def nights_left(self) -> int | None:
        """More runs like this one the backlog takes at tonight's rate (bytes sent / window length,
        times the window length: tonight's bytes per night); None when nothing went out tonight."""
        if not self.left_files:
            return 0
        if self.bytes_uploaded <= 0:
            return None
        return max(1, math.ceil(self.left_bytes / self.bytes_uploaded))

    def backlog_line(self) -> str:
        """What the window's end left, e.g. "left for the next runs: 1,204 files (3.1 TiB), about 6
        more nights at tonight's rate (52.3 MiB/s over a 5 h 00 min window)"."""
        head = f"left for the next runs: {counted(self.left_files, 'file')} ({format_bytes(self.left_bytes)})"
        nights = self.nights_left
        if nights is None or not self.window_s:
            return f"{head}; nothing was sent tonight, so how many nights it takes is unknown"
        rate = format_bytes(int(self.bytes_uploaded / self.window_s))
        window = _hours_minutes(self.window_s)
        more = "1 more night" if nights == 1 else f"{nights:,} more nights"
        return f"{head}, about {more} at tonight's rate ({rate}/s over a {window} window)"


def format_bytes(n: int) -> str:
    """Human-readable size with binary units, e.g. 1.5 GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _hours_minutes(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min"


def format_requests(counts: Mapping[str, int]) -> str:
    """ "12 (ListObjectsV2 2, HeadObject 10)": every request sent, retries included."""
    total = sum(counts.values())
    detail = ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return f"{total} ({detail})" if detail else "0"
