"""Recovery of lost cache rows from S3, before any target is planned: the run.

Owns the rebuild stage: for each target whose cache holds no rows (or whose rebuild never
finished), the newest snapshot that holds it, else the old script's cache, then HeadObject for
listed objects still unproven. A rebuild that fails holds its target back. The rules for what a
listing, a snapshot or a head proves live in `rules`, the sources in `rebuild`, `snapshots` and
`oldscript`; this module runs them.

It wires its own stage, apart from backup's pipeline, which calls it before any walk starts: the
HeadObject fan-out (`rebuild_from_listing`) is one task group of a producer (lstat of the listed
keys no row covers), `workers` provers and the cache's one writer (`cache.writer`, as in the
pipeline), joined by two memory streams of `queue_size` items each, closed the same way as the
pipeline's.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream as ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream as ObjectSendStream

from ..cache.listing import Listing
from ..cache.records import GONE_MTIME_NS
from ..cache.store import StateStore, Stored
from ..cache.writer import run_writer
from ..cache.writes import CacheWrites
from ..disk.digest import content_proves_etag, etag_computable
from ..disk.keys import display_path
from ..errors import Failure, FailureCollector, FailureKind, S3Error, unwrapped_group
from ..report.summary import format_bytes
from ..s3.buckets import FOREIGN_CODE, owned_elsewhere
from ..s3.client import S3, foreign_bucket_message
from ..s3.objects import parse_mtime_metadata
from ..settings.config import Config
from ..wording import counted
from .oldscript import OldCaches
from .rebuild import (
    REBUILDING_MARK,
    Candidate,
    candidates,
    list_bucket,
    needs_rebuild,
    rows_from_snapshot,
)
from .rules import checksum_of, proves_row
from .shares import AbsentShares, mounts_from_snapshot
from .snapshots import SNAPSHOT_DUE, SnapshotShelf, snapshot_buckets
from .target import RecoveringRun

log = logging.getLogger(__name__)


class Rebuild:
    def __init__(
        self, s3: S3, config: Config, store: StateStore, collector: FailureCollector, old_caches: OldCaches
    ) -> None:
        self.s3 = s3
        self.config = config
        self.store = store
        self.writes = CacheWrites(store)
        self.collector = collector
        self.old_caches = old_caches

    async def rebuild_caches(self, runs: Sequence[RecoveringRun]) -> None:
        runs = [
            r
            for r in runs
            if not r.target.missing
            and not r.target.problem
            and await anyio.to_thread.run_sync(needs_rebuild, self.store, r.target.bucket)
        ]
        if not runs:
            return
        with tempfile.TemporaryDirectory(prefix="async-backup-rebuild-") as tmp:
            snapshots = SnapshotShelf(self.s3, snapshot_buckets(self.config), Path(tmp))
            for run in runs:
                await self.rebuild_target(run, snapshots, Path(tmp))

    async def rebuild_target(self, run: RecoveringRun, snapshots: SnapshotShelf, tmp: Path) -> None:
        """Snapshot rows the listing confirms, then HeadObject for listed objects still unproven.
        A rebuild that fails holds the target back: planning from a half-rebuilt cache would
        upload again what S3 already holds."""
        bucket = run.target.bucket
        mark = REBUILDING_MARK + bucket
        try:
            listing = await list_bucket(self.s3, bucket, tmp / f"listing-{bucket}.db")
            if listing is None:
                return  # a new target: nothing in S3 to rebuild from
            try:
                if listing.count == 0:
                    return
                await self.writes.set_meta(mark, str(time.time()))
                sources = []
                adopted_from = ""  # the log line's source; the summary counts adopted rows apart
                found = await snapshots.newest_holding(bucket)
                old_cache = self.old_caches.of(run)
                if found is None and old_cache is None:
                    old_cache = await self.old_caches.fetch_copy(self.s3, run, tmp)
                if found is not None:
                    snapshot, db = found
                    rows = await anyio.to_thread.run_sync(
                        rows_from_snapshot,
                        db,
                        bucket,
                        run.target.path_bytes,
                        listing,
                        self.writes,
                        snapshot.last_modified.timestamp(),
                    )
                    # before any "gone" row is decided: its rows under an unmounted share stay held
                    await mounts_from_snapshot(db, run.target.path, self.writes)
                    run.stats.rebuilt_rows += rows
                    sources.append(snapshot.describe())
                elif old_cache is not None:
                    run.stats.adopted = await anyio.to_thread.run_sync(
                        self.old_caches.adopt, run, old_cache, listing, self.writes
                    )
                    if run.stats.adopted:  # an unreadable old cache was one warning and yields nothing
                        described = self.old_caches.describe(old_cache)
                        rows_adopted = counted(run.stats.adopted, "row")
                        adopted_from = f"the old script's cache {described} ({rows_adopted} adopted)"
                heads, rows = await self.rebuild_from_listing(run, listing)
                run.stats.rebuilt_rows += rows
                if found is None and not adopted_from:
                    sources.append(f"bucket listing ({listing.requests:,} ListObjectsV2) + {heads:,} HeadObject")
                elif heads:
                    held = "the snapshot" if found is not None else "the old cache"
                    sources.append(f"{heads:,} HeadObject for objects {held} does not hold")
                run.stats.rebuilt_from = " + ".join(sources)
                await self.writes.clear_meta(mark)
                await self.writes.set_meta(SNAPSHOT_DUE, "1")
                log.info(
                    "%s -> s3://%s: the cache held no rows; %d of %s rebuilt from %s%s",
                    run.target.path,
                    bucket,
                    run.stats.rebuilt_rows + (run.stats.adopted if adopted_from else 0),
                    counted(listing.count, "object"),
                    " + ".join(x for x in (adopted_from, run.stats.rebuilt_from) if x),
                    f"; {run.stats.rebuilt_gone:,} of them for files gone from disk, deleted from S3 by this run "
                    "unless the deletion guard holds them back"
                    if run.stats.rebuilt_gone
                    else "",
                )
                if run.stats.content_read_bytes:
                    log.info(
                        "%s: %s read to compare objects without mtime metadata with their ETag",
                        run.target.path,
                        format_bytes(run.stats.content_read_bytes),
                    )
            finally:
                listing.close()
        except S3Error as exc:
            run.held_back = True
            if await owned_elsewhere(self.s3, bucket, exc):
                message = foreign_bucket_message(bucket)
                self.collector.add(
                    Failure(FailureKind.BUCKET, run.target.path, f"s3://{bucket}", message, FOREIGN_CODE)
                )
                return
            self.collector.add(
                Failure(
                    FailureKind.REBUILD,
                    run.target.path,
                    f"s3://{bucket}",
                    f"the cache could not be rebuilt from S3 ({exc.message}); nothing of this target was "
                    "uploaded or deleted, so that nothing S3 holds is uploaded twice; the next run tries again",
                    exc.code,
                )
            )

    async def _remember_suspected(self, run: RecoveringRun, absent: AbsentShares) -> None:
        """Empty folders that S3 holds files under: remembered as mount points not yet seen mounted,
        so the walk holds them (a failure names each) until the share is back or the operator lets
        the deletes through."""
        await self.writes.remember_mounts(run.target.path, [(folder, None) for folder in sorted(absent.suspected)])
        for folder in sorted(absent.suspected):
            log.warning(
                "%s: the cache was rebuilt while %s is empty, though S3 holds files under it (a share not "
                "mounted?): no row says they were deleted, they stay in S3",
                run.target.path,
                display_path(folder),
            )

    async def rebuild_from_listing(self, run: RecoveringRun, listing: Listing) -> tuple[int, int]:
        """Listed objects no snapshot row covers: lstat in worker threads, HeadObject only where
        the size matches a regular file, a row only where the mtime metadata matches too.
        Returns (HeadObject requests, rows written). A failed HeadObject fails the rebuild."""
        bucket = run.target.bucket
        root = run.target.path_bytes
        workers = max(1, min(self.config.tuning.workers, 64))
        cand_send, cand_receive = anyio.create_memory_object_stream[Candidate](self.config.tuning.queue_size)
        row_send, row_receive = anyio.create_memory_object_stream[Stored](self.config.tuning.queue_size)
        heads = 0
        written = 0
        errors: list[S3Error] = []
        remembered = await anyio.to_thread.run_sync(self.store.mounts, run.target.path)
        absent = AbsentShares(root, frozenset(remembered))

        async def produce(rows: ObjectSendStream[Stored]) -> None:
            nonlocal written
            with cand_send, rows:
                after = ""
                while chunk := await anyio.to_thread.run_sync(listing.uncovered, after, 1000):
                    after = chunk[-1].key
                    found, gone = await anyio.to_thread.run_sync(candidates, chunk, root, absent)
                    for path, size in gone:  # no file: a row so the run deletes the object
                        run.stats.rebuilt_gone += 1
                        await rows.send(Stored(bucket, path, size, GONE_MTIME_NS, None))
                        written += 1
                    for candidate in found:
                        await cand_send.send(candidate)

        async def prove(jobs: ObjectReceiveStream[Candidate], rows: ObjectSendStream[Stored]) -> None:
            nonlocal heads, written
            with jobs, rows:
                async for c in jobs:
                    heads += 1
                    try:
                        head = await self.s3.head_object(bucket, c.key)
                    except S3Error as exc:
                        errors.append(exc)
                        continue
                    if head is None or head.size != c.listed_size:
                        continue
                    if proves_row(c.listed_size, c.disk, head.metadata):
                        await rows.send(Stored(bucket, c.path, c.disk.size, c.disk.mtime_ns, checksum_of(head)))
                        written += 1
                    elif (
                        parse_mtime_metadata(head.metadata) is None
                        and not head.encrypted_with_key
                        and etag_computable(head.etag, c.disk.size)
                    ):
                        # no metadata (the old script's upload): the file's content against the ETag
                        proven, part_bytes = await anyio.to_thread.run_sync(
                            content_proves_etag, c.path, c.disk.size, c.disk.mtime_ns, head.etag
                        )
                        run.stats.content_read_bytes += c.disk.size
                        if proven:
                            row = Stored(bucket, c.path, c.disk.size, c.disk.mtime_ns, checksum_of(head))
                            await rows.send(replace(row, part_bytes=part_bytes))
                            written += 1

        async with unwrapped_group() as tg:
            # The cache's one writer, as in the backup's pipeline: proven rows in short
            # transactions, and those already proven still written when the rebuild is cancelled.
            tg.start_soon(run_writer, self.store, row_receive)
            with row_send, cand_receive:
                for _ in range(workers):
                    tg.start_soon(prove, cand_receive.clone(), row_send.clone())
                tg.start_soon(produce, row_send.clone())
        if absent.suspected:
            await self._remember_suspected(run, absent)
        if errors:
            first = errors[0]
            raise S3Error(first.code, f"{len(errors):,} HeadObject requests failed, the first: {first.message}")
        return heads, written
