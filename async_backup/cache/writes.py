"""Every cache write that does not go through the run's writer: one async facade, `CacheWrites`.

Who writes the cache: while a backup run's stages run, what they learn (`Stored`, `Removed`,
`Evidence`, a target's `DeviceSeen`, `MountsSeen` and `UnsettledKept`) goes as `Change`s to the
one writer task (`writer`), which batches them. Everything else is a method of `CacheWrites`,
and nothing else calls the store's write methods (tests/test_cache_writes.py checks it). Each
method runs one `StateStore` write in a worker thread under the store's write lock (the one
connection is shared with the writer's thread) and commits it in a transaction of its own, at
once; it says why it cannot wait for the writer's next batch (a row that must survive a crash
right after, a count read back, a run whose writer has not started yet or has ended, a command
that has no writer at all). The store is opened writable only under the cache's lock (`disk.lock`), so these writes
and the writer's are the only ones on the file.

Imports the store only. Must not import s3/, report/, recovery/ or any command.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import anyio

from .records import SentPart, UploadFile
from .store import Change, PartSent, StateStore, Stored, UploadEnded, UploadStarted


class CacheWrites:
    """The writes outside the writer's stream, each committed at once in a worker thread."""

    def __init__(self, store: StateStore) -> None:
        self.store = store  # a dry run's read-only store: never called

    # A backup run, beside the writer

    async def upload_started(self, bucket: str, key: str, upload_id: str, file: UploadFile | None = None) -> None:
        """A multipart upload was created. Committed at once, not batched through the writer: a
        crash right after must still leave the id behind for the next run to continue or abort."""
        await anyio.to_thread.run_sync(self.store.apply, [UploadStarted(bucket, key, upload_id, file)])

    async def part_sent(self, bucket: str, upload_id: str, part: SentPart) -> None:
        """S3 confirmed a part. Committed at once: a SIGKILL right after must not cost the part
        (a part that missed its record is only sent again). One small transaction per part of
        several MiB; the connection's WAL with synchronous=NORMAL does not wait for the disk."""
        await anyio.to_thread.run_sync(self.store.apply, [PartSent(bucket, upload_id, part)])

    async def upload_ended(self, bucket: str, upload_id: str) -> None:
        """A multipart upload was completed or aborted. Committed at once too, not through the
        writer's stream: an abort that finishes after a signal may find the writer gone."""
        await anyio.to_thread.run_sync(self.store.apply, [UploadEnded(bucket, upload_id)])

    async def note_unsettled(self, bucket: str, path: bytes) -> int:
        """One more run in a row found this file changing while read; returns the count, which
        decides between a warning and a failure now (so it cannot wait for a batch)."""
        return await anyio.to_thread.run_sync(self.store.note_unsettled, bucket, path)

    # A backup run, before its writer starts or after it ended

    async def remember_targets(self, targets: Iterable[tuple[str, str, str | None]]) -> None:
        """The targets a run is about to back up: (path, bucket, root)."""
        rows = list(targets)
        await anyio.to_thread.run_sync(self.store.remember_targets, rows)

    async def set_meta(self, name: str, value: str) -> None:
        """A mark of the run's own (a rebuild under way, a snapshot due or uploaded, the cache
        bucket in use): committed at once, so that a crash leaves it as the run last knew it."""
        await anyio.to_thread.run_sync(self.store.set_meta, name, value)

    async def clear_meta(self, name: str) -> None:
        await anyio.to_thread.run_sync(self.store.clear_meta, name)

    # A lost cache's rebuild, which finishes before the run's writer starts

    async def remember_mounts(self, target: str, mounts: Sequence[tuple[bytes, int | None]]) -> None:
        """Mount points a rebuild must hold: a snapshot's remembered ones, or empty folders S3
        holds files under (suspected, st_dev None). A walk's go through the writer (`MountsSeen`)."""
        if mounts:
            await anyio.to_thread.run_sync(self.store.remember_mounts, target, mounts)

    async def rebuilt(self, rows: Sequence[Stored]) -> None:
        """Rows a rebuild copied from a snapshot, one transaction per batch, written from the copy's
        worker thread as it marks their keys covered (those proven by HeadObject go through the
        writer). A crash keeps what it copied."""
        await anyio.to_thread.run_sync(self.store.apply, rows)

    async def adopted(self, bucket: str, rows: Sequence[tuple[bytes, int, float, str | None, int | None]]) -> int:
        """Rows adopted from the old script's cache (path, size, float mtime, the checksum its listed
        ETag states and its part size); a row this tool wrote always wins. Returns
        rows written."""
        return await anyio.to_thread.run_sync(self.store.insert_adopted, bucket, rows)

    # Outside a run

    async def reset(self) -> None:
        """--reset and --upload-everything-again: forget every recorded file, before the run."""
        await anyio.to_thread.run_sync(self.store.reset)

    async def forget_target(self, path: str) -> int:
        """--forget-target: drop a target and its rows; returns rows dropped."""
        return await anyio.to_thread.run_sync(self.store.forget_target, path)

    async def repair(self, changes: Sequence[Change]) -> None:
        """verify --repair: the corrections verify found, in one transaction, after its checks."""
        if changes:
            await anyio.to_thread.run_sync(self.store.apply, changes)

    async def accept_change(self, path: bytes) -> list[str]:
        """--accept-change: a rotten file's hold ends and its next walk compares and uploads it;
        committed before the walk reads the holds. Returns the buckets it was held in."""
        return await anyio.to_thread.run_sync(self.store.accept_change, path)

    async def fixity_checked(self, changes: Sequence[Change]) -> None:
        """The `fixity` command's results (it has no writer), one transaction per batch, so a pass
        cut short keeps the dates of what it checked."""
        if changes:
            await anyio.to_thread.run_sync(self.store.apply, changes)
