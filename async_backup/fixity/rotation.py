"""A target's fixity slice (a backup run's, within its budget) or whole pass (`fixity` command).

Owns the order and the budget: on disk the rows most due first (rotten ones, then never checked or
re-uploaded since, then the oldest check) until `budget_bytes` are read, the last file read to
its end, so a run reads less than its budget plus one file; in S3 as many of the rows most due
for a HeadObject as `objects`. Results go to the cache through the caller's `record` (the run's
writer, or `CacheWrites` for the command); failures to the caller's `fail`. A file found rotten
is named with the date of its last good read and the `restore` command for the good version.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from ..cache.records import Recorded, is_gone
from ..cache.store import Change, FixityHold, FixityRow, LocalChecked, S3Checked, StateStore
from ..disk.keys import display_path, key_for_path
from ..errors import Failure, FailureKind, S3Error, shell_quote
from ..report.summary import FixityCounts
from ..s3.client import S3
from ..settings.targets import Target
from ..workpool import work_through
from .check import READ_CHUNK_BYTES, LocalVerdict, check_file, compare_head, idle_io

RECORD_EVERY = 64  # results cross to the event loop (and the cache) in batches of this many
ROT_CODE = "bit rot"


@dataclass(frozen=True, slots=True)
class Budget:
    """What one run may check of a target: bytes read on disk and objects HEADed in S3 (None: all)."""

    bytes: int | None
    objects: int | None

    @classmethod
    def slice_of(cls, store: StateStore, bucket: str, days: int) -> Budget:
        """About 1/days of the target's recorded bytes and objects, so that every file is read and
        every object HEADed once in `days` runs (a run reads at least its budget while any is due)."""
        rows, size_bytes, _unknown = store.holdings().get(bucket, (0, 0, 0))
        return cls(math.ceil(size_bytes / days), math.ceil(rows / days))


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def restore_command(path: bytes, good_at: float | None, found_at: float) -> str:
    """The `async-backup restore` command that puts the good version back in place: the version
    current at the last good read (or, with none, when the rot was found: uploads of the file have
    been held back since, so S3's version then is the one backed up)."""
    as_of = datetime.fromtimestamp(math.floor(good_at if good_at is not None else found_at), UTC)
    return f"async-backup restore {shell_quote(os.fsdecode(path))} --as-of {as_of.isoformat()} --overwrite"


def rot_message(path: bytes, good_at: float | None, found_at: float, detail: str = "") -> str:
    good = f"last good check {when(good_at)}" if good_at is not None else "no good check since its upload"
    what = f" ({detail})" if detail else ""
    return (
        f"bit rot: the file changed while its size and mtime did not{what}; {good}; its uploads are held back. "
        f"Restore the good version: {restore_command(path, good_at, found_at)}; "
        f"or keep the new bytes: async-backup --accept-change {shell_quote(os.fsdecode(path))}"
    )


def held_failure(target: Target, path: bytes, hold: FixityHold) -> Failure:
    """A file an earlier run found rotten, reported by every run until it is restored or accepted."""
    return Failure(
        FailureKind.FIXITY,
        target.path,
        display_path(path),
        rot_message(path, hold.good_at, hold.found_at) + f" (found {when(hold.found_at)})",
        ROT_CODE,
    )


class Rotation:
    """One target's checks, on disk then in S3."""

    def __init__(
        self,
        store: StateStore,
        target: Target,
        counts: FixityCounts,
        record: Callable[[Sequence[Change]], Coroutine[Any, Any, None]],
        fail: Callable[[Failure], None],
        on_file: Callable[[int], None] | None = None,
        past_end: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.target = target
        self.counts = counts
        self.record = record
        self.fail = fail
        self.on_file = on_file  # bytes read, after each file (the command's progress)
        self.past_end = past_end  # the run's window ended: no further file or object is checked

    async def on_disk(self, budget_bytes: int | None) -> None:
        """Read the most due files until `budget_bytes` are read (None: every row), in a worker
        thread at idle I/O priority; results recorded in batches as they come."""
        self.counts.budget_bytes = budget_bytes or 0
        due = self.store.fixity_due(self.target.bucket, s3=False)
        await anyio.to_thread.run_sync(self._read_slice, due, budget_bytes, abandon_on_cancel=True)

    def _read_slice(self, due: Iterator[tuple[Recorded, FixityRow]], budget_bytes: int | None) -> None:
        buffer = bytearray(READ_CHUNK_BYTES)
        batch: list[Change] = []
        bucket = self.target.bucket
        with idle_io():
            for row, mark in due:
                if (budget_bytes is not None and self.counts.bytes_read >= budget_bytes) or self.past_end():
                    break
                if is_gone(row):
                    continue  # a rebuilt row of an object whose file was not on disk
                verdict = check_file(row, mark.checksum, buffer)
                now = time.time()
                self._count(row, mark, verdict, now)
                good = verdict.result in ("ok", "first")
                result = verdict.result
                batch.append(LocalChecked(bucket, row.path, row.mtime_ns, now, result, good, verdict.checksum))
                if len(batch) >= RECORD_EVERY:
                    anyio.from_thread.run(self.record, batch)
                    batch = []
            if batch:
                anyio.from_thread.run(self.record, batch)
        due.close()  # type: ignore[attr-defined]

    def _count(self, row: Recorded, mark: FixityRow, verdict: LocalVerdict, now: float) -> None:
        counts = self.counts
        counts.bytes_read += verdict.bytes_read
        if verdict.result in ("ok", "first", "rot"):
            counts.files += 1
        if verdict.result == "ok":
            counts.ok += 1
        elif verdict.result == "first":
            counts.first += 1
        elif verdict.result == "rot":
            counts.rot += 1
            if mark.result != "rot":  # a file already held is reported by the run's hold, once
                message = rot_message(row.path, mark.good_at, now, verdict.detail)
                self.fail(Failure(FailureKind.FIXITY, self.target.path, display_path(row.path), message, ROT_CODE))
        else:
            counts.passed_over += 1
        if self.on_file is not None:
            self.on_file(verdict.bytes_read)

    async def in_s3(self, s3: S3, objects: int | None, workers: int) -> None:
        """HeadObject (checksum mode) for the `objects` rows most due (None: every row)."""
        due = self.store.fixity_due(self.target.bucket, s3=True)
        rows = await anyio.to_thread.run_sync(_take, due, objects)
        bucket = self.target.bucket
        batch: list[Change] = []

        async def head(item: tuple[Recorded, FixityRow]) -> None:
            row, mark = item
            if self.past_end():
                return
            key = key_for_path(row.path)
            try:
                found = await s3.head_object(bucket, key)
            except S3Error as exc:
                self.fail(Failure(FailureKind.S3, self.target.path, display_path(row.path), str(exc), exc.code))
                return
            self.counts.objects += 1
            if found is None:
                result, detail = "missing", f"s3://{bucket}/{key} is missing: S3 holds no current version of it"
            else:
                result, detail = compare_head(row.checksum, mark.checksum, found)
            if result == "ok":
                self.counts.objects_ok += 1
            elif result == "not checkable":
                self.counts.objects_uncheckable += 1
            else:
                self.counts.objects_bad += 1
                if result == "mismatch":
                    detail = f"s3://{bucket}/{key}: {detail}"
                again = f"async-backup verify --target {shell_quote(self.target.path)} --repair"
                fix = f"{again}, then a backup, sends it again"
                self.fail(
                    Failure(
                        FailureKind.FIXITY,
                        self.target.path,
                        display_path(row.path),
                        f"the copy in S3 is not what was backed up: {detail}; {fix}",
                        f"S3 {result}",
                    )
                )
            batch.append(S3Checked(bucket, row.path, time.time(), result))
            if len(batch) >= RECORD_EVERY:
                sent = batch[:]
                batch.clear()
                await self.record(sent)

        await work_through(iter(rows), head, max(0, min(workers, len(rows))))
        if batch:
            await self.record(batch)


def _take(due: Iterator[tuple[Recorded, FixityRow]], n: int | None) -> list[tuple[Recorded, FixityRow]]:
    taken: list[tuple[Recorded, FixityRow]] = []
    for item in due:
        if n is not None and len(taken) >= n:
            break
        taken.append(item)
    due.close()  # type: ignore[attr-defined]
    return taken
