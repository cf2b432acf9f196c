"""The backup run: walk -> plan -> upload/delete -> record, as concurrent stages.

The only module that wires stages together. `Backup.run` reads top to bottom like a script:
check the endpoint, start the cache writer and the upload workers, walk every target (each walk
in a worker thread, merged with the cache into actions), let each target delete what vanished
once its uploads are done, then close each stage's input in order and wait. Every arrow between
stages is a bounded memory stream, so a fast walk can never run ahead of the uploads by more
than the queue size.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream as ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream as ObjectSendStream

from ..cache.legacy import LEGACY_CACHE_BUCKET, OldCache, OldCacheError, old_cache_name, old_cache_path
from ..cache.rebuild import (
    REBUILDING_MARK,
    Candidate,
    Listing,
    Snapshot,
    SnapshotUnusable,
    candidates,
    checksum_of,
    download_snapshot,
    find_snapshots,
    list_bucket,
    log_key,
    proves_row,
    rows_from_old_cache,
    rows_from_snapshot,
    snapshot_holds,
    snapshot_key,
)
from ..cache.records import Recorded
from ..cache.store import Change, Removed, StateStore, Stored, UploadEnded, UploadStarted, run_writer
from ..disk.entries import WalkEntry
from ..disk.keys import KeyTooLongError, check_key_length, display_path, key_for_path
from ..disk.walk import Excluder, walk_target
from ..errors import Failure, FailureCollector, FailureKind, FatalError, S3Error, unwrapped_group
from ..report.logsetup import LOG_MAX_BYTES, LOG_NAME
from ..report.progress import Progress
from ..report.summary import TargetStats, format_bytes
from ..s3.buckets import ensure_bucket
from ..s3.client import S3, endpoint_name, open_s3
from ..s3.pricing import RequestTally, upload_requests
from ..settings.config import Config
from ..settings.targets import Target
from .budget import ByteBudget
from .delete import KeyFailure, delete_paths
from .plan import (
    MAX_DELETE_BATCH,
    MAX_OBJECT_BYTES,
    PlanCounts,
    Upload,
    deletion_guard,
    device_guard,
    merge,
    part_size_for,
)
from .upload import FileChanged, FileUnreadable, FileVanished, MemoryLimits, UploadSettings, upload_file

log = logging.getLogger(__name__)

# Actions cross from the walk thread to the event loop in chunks: one thread hop per chunk,
# not per file. Small enough that an incremental run starts uploading almost at once.
CHUNK_FILES = 32
# Rows proven by HeadObject are written to the cache in transactions of this many.
REBUILD_WRITE_ROWS = 500
# Clocks of server and client may differ a little; uploads this much older than the run are stale.
STALE_UPLOAD_GRACE_S = 60.0
# So many requests in a row failing at the transport level (after botocore's retries) means the
# endpoint is gone: stop with one error rather than thousands.
TRANSPORT_FAILURES_FATAL = 20
TRANSPORT_CODES = frozenset(
    {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError"}
)
SNAPSHOT_DUE = "snapshot_due"  # meta flag: "0" once the cache as it is now has reached S3


@dataclass(frozen=True, slots=True)
class RunOptions:
    dry_run: bool = False
    allow_mass_delete: bool = False
    backup_cache: bool = True
    rebuild: bool = True  # False only with --upload-everything-again


@dataclass(eq=False)
class TargetRun:
    """One target's progress through the run."""

    target: Target
    stats: TargetStats
    counts: PlanCounts = field(default_factory=PlanCounts)
    deletes: list[bytes] = field(default_factory=list)
    pending: int = 0
    walk_finished: bool = False
    uploads_done: anyio.Event = field(default_factory=anyio.Event)
    bucket_ready: bool = False
    bucket_failed: bool = False
    bucket_lock: anyio.Lock = field(default_factory=anyio.Lock)
    old_cache: Path | None = None  # a dry run plans against the old script's cache it would adopt
    device: int | None = None  # st_dev of the folder as this run's walk found it
    recorded_device: int | None = None  # st_dev the cache holds from an earlier run
    device_held_back: bool = False  # the device guard held back this run's deletes
    device_recorded: bool = False
    held_back: bool = False  # its cache could not be rebuilt: nothing is uploaded or deleted

    def job_finished(self) -> None:
        self.pending -= 1
        self._check_done()

    def walk_done(self) -> None:
        self.walk_finished = True
        self._check_done()

    def _check_done(self) -> None:
        if self.walk_finished and self.pending == 0:
            self.uploads_done.set()


@dataclass(frozen=True, slots=True)
class UploadJob:
    run: TargetRun
    upload: Upload


class Backup:
    def __init__(
        self,
        config: Config,
        targets: list[Target],
        store: StateStore,
        collector: FailureCollector,
        options: RunOptions,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.store = store
        self.collector = collector
        self.options = options
        self.runs = [TargetRun(t, TargetStats(name=t.path, bucket=t.bucket)) for t in targets]
        self.excluder = Excluder(config.exclude)
        self.settings = UploadSettings(
            storage_class=config.storage_class,
            multipart_threshold_bytes=config.tuning.multipart_threshold_bytes,
            part_size_bytes=config.tuning.part_size_bytes,
        )
        self._stopping = threading.Event()
        self._old_cache_bucket_keys: list[str] = []  # keys in the old script's cache bucket (legacy naming)
        self.started_at = time.time()
        self._transport_failures_in_a_row = 0
        self._s3: S3 | None = None
        self.sent = RequestTally()  # every S3 request of the run, once the client is open
        self._limits = MemoryLimits(
            budget=ByteBudget(config.tuning.memory_budget_bytes),
            part_slots=anyio.Semaphore(config.tuning.parts_in_flight),
        )

    @property
    def s3(self) -> S3:
        assert self._s3 is not None, "S3 is used only inside Backup.run"
        return self._s3

    async def run(self) -> None:
        await anyio.to_thread.run_sync(self._read_recorded_devices)
        if self.options.dry_run:
            await self._plan_only()
            return
        tuning = self.config.tuning
        async with open_s3(self.config.aws, tuning) as s3:
            self._s3 = s3
            self.sent = s3.sent
            await self._check_endpoint()
            if self.config.naming == "legacy":
                await self._read_old_cache_bucket()
            await self._abort_leftover_uploads()
            if self.options.rebuild:
                await self._rebuild_caches()
            upload_send, upload_receive = anyio.create_memory_object_stream[UploadJob](tuning.queue_size)
            change_send, change_receive = anyio.create_memory_object_stream[Change](4 * tuning.queue_size)
            try:
                async with unwrapped_group() as stages:
                    stages.start_soon(run_writer, self.store, change_receive)
                    progress_scope = anyio.CancelScope()
                    stages.start_soon(self._show_progress, progress_scope)
                    with change_send:
                        async with unwrapped_group() as workers:
                            with upload_receive:
                                for _ in range(tuning.workers):
                                    workers.start_soon(self._upload_worker, upload_receive.clone(), change_send.clone())
                            walk_slots = anyio.CapacityLimiter(tuning.walk_threads)
                            with upload_send:
                                async with unwrapped_group() as producers:
                                    for run in self.runs:
                                        producers.start_soon(
                                            self._run_target,
                                            run,
                                            upload_send.clone(),
                                            change_send.clone(),
                                            walk_slots,
                                        )
                    progress_scope.cancel()  # every stage is done: the last progress line is the summary
            finally:
                self._stopping.set()
            if self.options.backup_cache and await self._snapshot_due():
                await self._backup_cache()

    async def _show_progress(self, scope: anyio.CancelScope) -> None:
        if self.progress is None:
            return
        with scope:
            await self.progress.run([r.stats for r in self.runs])

    # Stage: walk and plan one target, then its deletes once its uploads are done

    async def _run_target(
        self,
        run: TargetRun,
        upload_send: ObjectSendStream[UploadJob],
        change_send: ObjectSendStream[Change],
        walk_slots: anyio.CapacityLimiter,
    ) -> None:
        target = run.target
        try:
            with change_send:
                with upload_send:
                    if target.missing:
                        self._target_missing(run)
                        return
                    if target.problem:
                        self._target_unusable(run)
                        return
                    if run.held_back:
                        return
                    async with walk_slots:
                        await self._walk_in_thread(run, upload_send)
                run.walk_done()
                await run.uploads_done.wait()
                await self._delete_vanished(run, change_send)
                await self._record_device(run)
        finally:
            run.stats.finished_at = time.time()
            run.stats.failed = self.collector.count_for(target.path)
            log.info("%s", run.stats.line())

    async def _walk_in_thread(self, run: TargetRun, upload_send: ObjectSendStream[UploadJob] | None) -> None:
        """The walk runs in a worker thread. On cancellation (SIGTERM, a fatal error) the thread is
        told to stop and left to notice it, so a walk of millions of files cannot hold up a stop."""
        try:
            await anyio.to_thread.run_sync(self._produce, run, upload_send, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self._stopping.set()
            raise

    def _produce(self, run: TargetRun, upload_send: ObjectSendStream[UploadJob] | None) -> None:
        """Runs in a worker thread: the sorted walk merged with the cache's rows."""
        target = run.target
        root = target.path_bytes
        excluded: Callable[[bytes], bool] = (
            (lambda p: self.excluder.excludes_any_part(root, p)) if self.excluder else (lambda _p: False)
        )
        run.device = _device_of(root)
        walk = _until_stopped(
            walk_target(root, self.excluder, self.collector.add, target.path, self.collector.warn), self._stopping
        )
        chunk: list[UploadJob] = []
        try:
            for action in merge(walk, self._recorded(run), run.counts, excluded):
                if isinstance(action, Upload):
                    run.stats.planned_uploads += 1
                    run.stats.planned_upload_bytes += action.file.size
                    self._plan_requests(run, action.file.size)
                    if upload_send is not None:
                        chunk.append(UploadJob(run, action))
                        if len(chunk) >= CHUNK_FILES:
                            anyio.from_thread.run(self._enqueue, chunk, upload_send)
                            chunk = []
                else:
                    run.deletes.append(action.path)
        except _Stopped:
            return  # the run is being cancelled: its plan is dropped unused
        if chunk and upload_send is not None:
            anyio.from_thread.run(self._enqueue, chunk, upload_send)
        counts = run.counts
        run.stats.planned_deletes = len(run.deletes)
        if run.deletes:
            batches = -(-len(run.deletes) // MAX_DELETE_BATCH)
            run.stats.planned_requests["DeleteObjects"] = run.stats.planned_requests.get("DeleteObjects", 0) + batches
        run.stats.unchanged = counts.unchanged
        run.stats.skipped += counts.skipped
        if run.old_cache is not None:
            run.stats.adopted = counts.unchanged  # what a real run would adopt, if S3 lists it
        run.stats.walk_finished = True

    def _plan_requests(self, run: TargetRun, size_bytes: int) -> None:
        """Count the object requests one planned upload sends (its part size as upload.py picks it)."""
        settings = self.settings
        part_bytes = part_size_for(size_bytes, settings.part_size_bytes)
        planned = run.stats.planned_requests
        for operation, n in upload_requests(size_bytes, settings.multipart_threshold_bytes, part_bytes).items():
            planned[operation] = planned.get(operation, 0) + n

    def _recorded(self, run: TargetRun) -> Iterator[Recorded]:
        """The cache's rows for the target, or in a dry run the old script's cache it would adopt."""
        if run.old_cache is None:
            yield from self.store.recorded(run.target.bucket)
            return
        old = OldCache(run.old_cache)
        try:
            for row in old.rows():
                yield Recorded(row.path, None, round(row.timestamp * 1e9), row.timestamp)
        finally:
            old.close()

    async def _enqueue(self, chunk: list[UploadJob], upload_send: ObjectSendStream[UploadJob]) -> None:
        for job in chunk:
            job.run.pending += 1
            await upload_send.send(job)

    def _target_missing(self, run: TargetRun) -> None:
        target = run.target
        if target.root is not None:
            message = (
                f"this subfolder of root {target.root} is gone (renamed, removed, or the share unmounted?); "
                "nothing was uploaded or deleted. If it is gone for good, run "
                f"async-backup --forget-target '{target.path}' (its bucket s3://{target.bucket} stays as it is)"
            )
        else:
            message = (
                "the folder is missing (an unmounted share?); nothing was uploaded or deleted. "
                "Mount it, or remove it from config.json and run with --forget-target if it is gone for good"
            )
        self.collector.add(Failure(FailureKind.TARGET_MISSING, target.path, target.path, message))

    def _target_unusable(self, run: TargetRun) -> None:
        assert run.target.problem is not None
        self.collector.add(Failure(FailureKind.BUCKET, run.target.path, run.target.path, run.target.problem))

    def _old_cache_of(self, run: TargetRun) -> Path | None:
        """The old script's cache of a legacy-named target, if it left one."""
        if run.target.legacy_name is None:
            return None
        # config.json's folder, not the store's: a dry run with --reset reads an empty stand-in store.
        path = old_cache_path(self.config.source.parent, run.target.legacy_name)
        return path if path.is_file() else None

    def _old_cache_to_adopt(self, run: TargetRun) -> Path | None:
        """For a dry run: the old cache a real run would adopt (the cache holds no rows for it yet)."""
        path = self._old_cache_of(run)
        return path if path is not None and self._needs_rebuild(run.target.bucket) else None

    def _adopt(self, run: TargetRun, path: Path, listing: Listing) -> int:
        """Adopt the old script's cache of the target, checked against the listing (worker thread).
        An old cache that cannot be read is one warning: its files are then treated as new."""
        target = run.target
        try:
            old = OldCache(path)
        except OldCacheError as exc:
            log.warning("old cache of %s: %s; its files are treated as new", target.path, exc)
            return 0
        try:
            old_rows = old.count()
            adopted = rows_from_old_cache(old, target.bucket, target.path_bytes, listing, self.store)
        except OldCacheError as exc:
            log.warning("old cache of %s: %s; what it did not yield is treated as new", target.path, exc)
            return 0
        finally:
            old.close()
        missing = old_rows - adopted
        log.info(
            "%s: adopted %d of %d files from the old cache %s (checked against %d ListObjectsV2 pages)%s",
            target.path,
            adopted,
            old_rows,
            path,
            listing.requests,
            f"; {missing} are not in s3://{target.bucket} and are uploaded if still on disk" if missing else "",
        )
        return adopted

    async def _read_old_cache_bucket(self) -> None:
        """List the old script's cache bucket once (a few objects per installation): its copies of
        config.json are warned about, its copies of db/*.db can stand in for lost local ones."""
        found: list[str] = []
        try:
            async for page in self.s3.list_current(LEGACY_CACHE_BUCKET):
                found.extend(o.key for o in page)
        except S3Error as exc:
            log.debug("bucket %s not read: %s", LEGACY_CACHE_BUCKET, exc)
            return
        self._old_cache_bucket_keys = found
        self._warn_about_old_config_copy([k for k in found if k == "config.json" or k.endswith("/config.json")])

    async def _fetch_old_cache_copy(self, run: TargetRun, tmp: Path) -> Path | None:
        """The old script's cache of the target as it last copied it to its cache bucket, for when
        the local db/ file is gone (a new server): this cache directory's copy first, else the one
        other installation's copy of that name (several: none is chosen, the choice would be a guess)."""
        if run.target.legacy_name is None or not self._old_cache_bucket_keys:
            return None
        name = old_cache_name(run.target.legacy_name)
        own = str(self.config.source.parent).lstrip("/") + "/" + name
        matches = [k for k in self._old_cache_bucket_keys if k == own or k.endswith("/" + name)]
        key = own if own in matches else matches[0] if len(matches) == 1 else None
        if key is None:
            if matches:
                log.warning(
                    "%s: %d copies of the old cache %s in s3://%s, none from this cache directory; none used",
                    run.target.path,
                    len(matches),
                    name,
                    LEGACY_CACHE_BUCKET,
                )
            return None
        dest = tmp / f"old-{run.target.bucket}.db"
        try:
            async with (
                self.s3.open_object(LEGACY_CACHE_BUCKET, key) as reader,
                await anyio.open_file(dest, "wb") as out,
            ):
                while chunk := await reader.read(1024 * 1024):
                    await out.write(chunk)
        except (S3Error, OSError) as exc:
            log.warning(
                "%s: the old cache s3://%s/%s could not be read (%s)", run.target.path, LEGACY_CACHE_BUCKET, key, exc
            )
            return None
        log.info("%s: no local old cache; using its copy s3://%s/%s", run.target.path, LEGACY_CACHE_BUCKET, key)
        return dest

    def _warn_about_old_config_copy(self, keys: list[str]) -> None:
        """The old script copied config.json, AWS keys included, to its cache bucket after every run.
        Say so once per run (never delete it: it may be someone's only copy of that config)."""
        if not keys:
            return
        own = str(self.store.cache_dir).lstrip("/") + "/config.json"  # this cache directory's copy first
        keys.sort(key=lambda k: k != own)
        more = f" (and {len(keys) - 1} more config.json objects)" if len(keys) > 1 else ""
        message = (
            f"bucket {LEGACY_CACHE_BUCKET} still holds the old script's copy of config.json with the AWS keys, "
            f"s3://{LEGACY_CACHE_BUCKET}/{keys[0]}{more}: rotate those keys and delete that object "
            "(async-backup never deletes it)"
        )
        self.collector.warn(Failure(FailureKind.SECRETS_EXPOSED, "cache", f"s3://{LEGACY_CACHE_BUCKET}", message))

    async def _delete_vanished(self, run: TargetRun, change_send: ObjectSendStream[Change]) -> None:
        if not run.deletes:
            return
        if self._deletes_held_back(run) or not await self._bucket_ready(run):
            return
        bucket = run.target.bucket

        async def deleted(path: bytes) -> None:
            run.stats.deleted += 1
            await change_send.send(Removed(bucket, path))

        async def failed(failure: KeyFailure) -> None:
            self.collector.add(
                Failure(FailureKind.S3, run.target.path, display_path(failure.path), failure.message, failure.code)
            )

        await delete_paths(self.s3, bucket, run.deletes, deleted, failed)

    def _deletes_held_back(self, run: TargetRun) -> bool:
        """Apply the device and deletion guards to a target's planned deletes; a held-back target
        is a failure."""
        moved = device_guard(
            target=run.target.path,
            device=run.device,
            recorded_device=run.recorded_device,
            deletes=len(run.deletes),
            allow_mass_delete=self.options.allow_mass_delete,
        )
        if moved:
            run.device_held_back = True
            self.collector.add(Failure(FailureKind.DELETION_GUARD, run.target.path, run.target.path, moved))
            return True
        reason = deletion_guard(
            recorded=run.counts.recorded,
            deletes=len(run.deletes),
            on_disk=run.counts.on_disk,
            max_delete_percent=self.config.tuning.max_delete_percent,
            allow_mass_delete=self.options.allow_mass_delete,
        )
        if reason:
            self.collector.add(Failure(FailureKind.DELETION_GUARD, run.target.path, run.target.path, reason))
        return reason is not None

    def _read_recorded_devices(self) -> None:
        for run in self.runs:
            run.recorded_device = self.store.target_device(run.target.path)

    async def _record_device(self, run: TargetRun) -> None:
        """Remember the folder's device once a run walked it to the end and the device guard did
        not hold it back (with --allow-mass-delete it never does): a share that is not mounted must
        not make its empty mount point the device the next runs compare with."""
        if run.device is None or run.device_held_back or not run.stats.walk_finished:
            return
        if run.device != run.recorded_device:
            await anyio.to_thread.run_sync(self.store.set_target_device, run.target.path, run.device)
            run.device_recorded = True

    # Stage: upload workers

    async def _upload_worker(self, jobs: ObjectReceiveStream[UploadJob], change_send: ObjectSendStream[Change]) -> None:
        with jobs, change_send:
            async for job in jobs:
                try:
                    await self._upload_one(job, change_send)
                finally:
                    job.run.job_finished()

    async def _upload_one(self, job: UploadJob, change_send: ObjectSendStream[Change]) -> None:
        run, file = job.run, job.upload.file
        bucket = run.target.bucket
        shown = display_path(file.path)

        def fail(kind: FailureKind, message: str, code: str = "") -> None:
            self.collector.add(Failure(kind, run.target.path, shown, message, code))

        try:
            key = key_for_path(file.path)
            check_key_length(key)
        except KeyTooLongError as exc:
            fail(FailureKind.KEY_TOO_LONG, f"{exc}; shorten the path")
            return
        if file.size > MAX_OBJECT_BYTES:
            fail(
                FailureKind.S3,
                f"the file is larger than S3's {format_bytes(MAX_OBJECT_BYTES)} object limit",
                "TooLarge",
            )
            return
        if not await self._bucket_ready(run):
            return

        async def started(upload_id: str) -> None:
            # Committed at once, not batched: a crash right after must still leave the id behind
            # for the next run to abort.
            await anyio.to_thread.run_sync(self.store.apply, [UploadStarted(bucket, key, upload_id)])

        async def ended(upload_id: str) -> None:
            # Committed directly too, not through the writer's stream: an abort that finishes
            # after a signal may find the writer gone.
            await anyio.to_thread.run_sync(self.store.apply, [UploadEnded(bucket, upload_id)])

        for attempt in (1, 2):
            try:
                done = await upload_file(self.s3, bucket, key, file, self.settings, self._limits, started, ended)
            except FileChanged as exc:
                if attempt == 1:
                    continue  # one more read: a file being written often settles quickly
                run.stats.skipped += 1
                self.collector.warn(
                    Failure(
                        FailureKind.CHANGED_WHILE_READING,
                        run.target.path,
                        shown,
                        f"{exc}; left for the next run",
                    )
                )
                return
            except FileVanished:
                run.stats.skipped += 1  # deleted after the walk: the next run deletes it from S3
                return
            except FileUnreadable as exc:
                fail(FailureKind.UNREADABLE, f"{exc}; check its permissions", exc.errno_name)
                return
            except S3Error as exc:
                fail(FailureKind.S3, exc.message, exc.code)
                self._note_transport(exc)
                return
            self._transport_failures_in_a_row = 0
            await change_send.send(Stored(bucket, file.path, done.size, done.mtime_ns, done.checksum))
            if job.upload.is_new:
                run.stats.new += 1
            else:
                run.stats.updated += 1
            run.stats.bytes_uploaded += done.size
            return

    def _note_transport(self, exc: S3Error) -> None:
        if exc.code not in TRANSPORT_CODES:
            self._transport_failures_in_a_row = 0
            return
        self._transport_failures_in_a_row += 1
        if self._transport_failures_in_a_row >= TRANSPORT_FAILURES_FATAL:
            raise FatalError(
                f"S3 at {endpoint_name(self.config.aws)} stopped answering ({exc.code} on "
                f"{TRANSPORT_FAILURES_FATAL} requests in a row); the run stopped. Check the server and the network"
            )

    async def _bucket_ready(self, run: TargetRun) -> bool:
        """Create and configure the target's bucket on first need, once per run."""
        if run.bucket_ready:
            return True
        async with run.bucket_lock:
            if run.bucket_ready or run.bucket_failed:
                return run.bucket_ready
            try:
                created = await ensure_bucket(self.s3, run.target.bucket, self.config.noncurrent_days)
                if not created:
                    await self._abort_stale_uploads(run.target.bucket)
            except S3Error as exc:
                run.bucket_failed = True
                self.collector.add(
                    Failure(
                        FailureKind.BUCKET,
                        run.target.path,
                        f"s3://{run.target.bucket}",
                        f"{exc.message}; nothing of this target was backed up",
                        exc.code,
                    )
                )
                return False
            run.bucket_ready = True
            return True

    # Stage: rebuild lost cache rows from S3, before any target is planned

    def _needs_rebuild(self, bucket: str) -> bool:
        """No rows for the bucket, or a rebuild of it that began and never finished."""
        return self.store.count(bucket) == 0 or self.store.get_meta(REBUILDING_MARK + bucket) is not None

    async def _rebuild_caches(self) -> None:
        runs = [
            r
            for r in self.runs
            if not r.target.missing
            and not r.target.problem
            and await anyio.to_thread.run_sync(self._needs_rebuild, r.target.bucket)
        ]
        if not runs:
            return
        with tempfile.TemporaryDirectory(prefix="async-backup-rebuild-") as tmp:
            snapshots = _SnapshotShelf(self.s3, snapshot_buckets(self.config), Path(tmp))
            for run in runs:
                await self._rebuild_target(run, snapshots, Path(tmp))

    async def _rebuild_target(self, run: TargetRun, snapshots: _SnapshotShelf, tmp: Path) -> None:
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
                await anyio.to_thread.run_sync(self.store.set_meta, mark, str(time.time()))
                sources = []
                found = await snapshots.newest_holding(bucket)
                old_cache = self._old_cache_of(run)
                if found is None and old_cache is None:
                    old_cache = await self._fetch_old_cache_copy(run, tmp)
                if found is not None:
                    snapshot, db = found
                    rows = await anyio.to_thread.run_sync(
                        rows_from_snapshot, db, bucket, run.target.path_bytes, listing, self.store
                    )
                    run.stats.rebuilt_rows += rows
                    sources.append(snapshot.describe())
                elif old_cache is not None:
                    run.stats.adopted = await anyio.to_thread.run_sync(self._adopt, run, old_cache, listing)
                heads, rows = await self._rebuild_from_listing(run, listing)
                run.stats.rebuilt_rows += rows
                if found is None and old_cache is None:
                    sources.append(f"bucket listing ({listing.requests:,} ListObjectsV2) + {heads:,} HeadObject")
                elif heads:
                    held = "the snapshot" if found is not None else "the old cache"
                    sources.append(f"{heads:,} HeadObject for objects {held} does not hold")
                run.stats.rebuilt_from = " + ".join(sources)
                await anyio.to_thread.run_sync(self.store.clear_meta, mark)
                await anyio.to_thread.run_sync(self.store.set_meta, SNAPSHOT_DUE, "1")
                log.info(
                    "%s -> s3://%s: the cache held no rows; %d of %d objects rebuilt from %s%s",
                    run.target.path,
                    bucket,
                    run.stats.rebuilt_rows,
                    listing.count,
                    run.stats.rebuilt_from,
                    f"; {run.stats.rebuilt_gone:,} of them for files gone from disk, deleted from S3 by this run "
                    "unless the deletion guard holds them back"
                    if run.stats.rebuilt_gone
                    else "",
                )
            finally:
                listing.close()
        except S3Error as exc:
            run.held_back = True
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

    async def _rebuild_from_listing(self, run: TargetRun, listing: Listing) -> tuple[int, int]:
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

        async def produce(rows: ObjectSendStream[Stored]) -> None:
            with cand_send, rows:
                after = ""
                while chunk := await anyio.to_thread.run_sync(listing.uncovered, after, 1000):
                    after = chunk[-1].key
                    found, gone = await anyio.to_thread.run_sync(candidates, chunk, root)
                    for path, size in gone:  # no file: a row so the run deletes the object
                        run.stats.rebuilt_gone += 1
                        await rows.send(Stored(bucket, path, size, 0, None))
                    for candidate in found:
                        await cand_send.send(candidate)

        async def prove(jobs: ObjectReceiveStream[Candidate], rows: ObjectSendStream[Stored]) -> None:
            nonlocal heads
            with jobs, rows:
                async for c in jobs:
                    heads += 1
                    try:
                        head = await self.s3.head_object(bucket, c.key)
                    except S3Error as exc:
                        errors.append(exc)
                        continue
                    if head is not None and proves_row(c.listed_size, c.disk, head.metadata):
                        await rows.send(Stored(bucket, c.path, c.disk.size, c.disk.mtime_ns, checksum_of(head)))

        async def record() -> None:
            nonlocal written
            batch: list[Change] = []
            with row_receive:
                async for row in row_receive:
                    batch.append(row)
                    if len(batch) >= REBUILD_WRITE_ROWS:
                        await anyio.to_thread.run_sync(self.store.apply, batch)
                        written += len(batch)
                        batch = []
            if batch:
                await anyio.to_thread.run_sync(self.store.apply, batch)
                written += len(batch)

        async with unwrapped_group() as tg:
            tg.start_soon(record)
            with row_send, cand_receive:
                for _ in range(workers):
                    tg.start_soon(prove, cand_receive.clone(), row_send.clone())
                tg.start_soon(produce, row_send.clone())
        if errors:
            first = errors[0]
            raise S3Error(first.code, f"{len(errors):,} HeadObject requests failed, the first: {first.message}")
        return heads, written

    # Before and after

    async def _check_endpoint(self) -> None:
        """One cheap request before any work: bad credentials or an unreachable endpoint stop the
        run here, with one clear error, instead of as thousands of per-file failures."""
        probe = self.runs[0].target.bucket if self.runs else "async-backup-probe"
        try:
            await self.s3.bucket_versioning(probe)
        except S3Error as exc:
            where = endpoint_name(self.config.aws)
            if exc.code in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
                raise FatalError(f"cannot reach S3 at {where}: check aws.endpoint_url and the network") from None
            if exc.code in ("AccessDenied", "403", "Forbidden"):
                raise FatalError(
                    f"S3 at {where} denied access to bucket {probe} ({exc.code}); check the credentials' "
                    "permissions (see the README's IAM policy)"
                ) from None
            raise FatalError(f"S3 at {where} failed the first request ({exc}); check the endpoint") from None

    async def _abort_leftover_uploads(self) -> None:
        """Multipart uploads an earlier run started but could not finish or abort (a crash)."""
        for run in self.runs:
            leftovers = await anyio.to_thread.run_sync(self.store.open_uploads, run.target.bucket)
            for key, upload_id in leftovers:
                try:
                    await self.s3.abort_multipart_upload(run.target.bucket, key, upload_id)
                except S3Error as exc:
                    if exc.code != "NoSuchBucket":
                        log.warning("could not abort an earlier multipart upload of %s: %s", key, exc)
                        continue
                await anyio.to_thread.run_sync(self.store.apply, [UploadEnded(run.target.bucket, upload_id)])

    async def _abort_stale_uploads(self, bucket: str) -> None:
        """Multipart uploads in our bucket that began before this run are leftovers of a crash
        (the lock rules out a concurrent run of ours): abort them instead of paying for them."""
        for key, upload_id, initiated in await self.s3.list_multipart_uploads(bucket):
            if initiated and initiated >= self.started_at - STALE_UPLOAD_GRACE_S:
                continue
            await self.s3.abort_multipart_upload(bucket, key, upload_id)
            await anyio.to_thread.run_sync(self.store.apply, [UploadEnded(bucket, upload_id)])
            log.info("aborted a multipart upload of %s left by an earlier run", key)

    async def _snapshot_due(self) -> bool:
        """A snapshot is due when the cache changed since the last one that reached S3. A no-op
        night then costs no request beyond the first bucket check."""
        changed = any(r.stats.new or r.stats.updated or r.stats.deleted or r.device_recorded for r in self.runs)
        if changed:
            await anyio.to_thread.run_sync(self.store.set_meta, SNAPSHOT_DUE, "1")
            return True
        return await anyio.to_thread.run_sync(self.store.get_meta, SNAPSHOT_DUE) != "0"

    async def _backup_cache(self) -> None:
        """A consistent snapshot of the cache, and the log, to their own non-versioned bucket."""
        bucket = cache_bucket_name(self.config)
        try:
            with tempfile.TemporaryDirectory(prefix="async-backup-") as tmp:
                snapshot = Path(tmp) / "snapshot.db"
                packed = await anyio.to_thread.run_sync(_snapshot_gz, self.store, snapshot)
                await ensure_bucket(self.s3, bucket, self.config.noncurrent_days, versioned=False)
                key = snapshot_key(self.store.cache_dir)
                sent = await self.s3.put_plain_file(bucket, key, str(packed))
                log_path = self.store.cache_dir / LOG_NAME
                if log_path.exists():
                    log_body = await anyio.to_thread.run_sync(_log_tail, log_path)
                    await self.s3.put_plain_object(bucket, log_key(self.store.cache_dir), log_body)
        except (S3Error, OSError) as exc:
            self.collector.add(
                Failure(
                    FailureKind.CACHE_BACKUP,
                    "cache",
                    f"s3://{bucket}",
                    f"the cache snapshot was not uploaded: {exc}",
                )
            )
        else:
            await anyio.to_thread.run_sync(self.store.set_meta, SNAPSHOT_DUE, "0")
            log.info("cache snapshot (%s) uploaded to s3://%s/%s", format_bytes(sent), bucket, key)

    # Dry run

    async def _plan_only(self) -> None:
        walk_slots = anyio.CapacityLimiter(self.config.tuning.walk_threads)

        async def plan(run: TargetRun) -> None:
            if run.target.missing:
                self._target_missing(run)
                return
            if run.target.problem:
                self._target_unusable(run)
                return
            if self.options.rebuild:
                run.old_cache = await anyio.to_thread.run_sync(self._old_cache_to_adopt, run)
                if run.old_cache is None:
                    run.stats.rebuild_due = await anyio.to_thread.run_sync(self._needs_rebuild, run.target.bucket)
            async with walk_slots:
                await self._walk_in_thread(run, None)
            self._deletes_held_back(run)
            run.stats.finished_at = time.time()

        async with unwrapped_group() as tg:
            for run in self.runs:
                tg.start_soon(plan, run)


class _Stopped(Exception):
    """Raised inside the walk thread when the run is being cancelled."""


def _until_stopped(entries: Iterator[WalkEntry], stopping: threading.Event, every: int = 1000) -> Iterator[WalkEntry]:
    """Pass walk entries through, checking every `every` entries whether the run is stopping."""
    for n, entry in enumerate(entries):
        if n % every == 0 and stopping.is_set():
            raise _Stopped
        yield entry


def _device_of(folder: bytes) -> int | None:
    """st_dev of a target's folder (following a symlink, as the walk's scandir does)."""
    try:
        return os.stat(folder).st_dev
    except OSError:
        return None  # the walk reports the folder; no device decides anything this run


def cache_bucket_name(config: Config) -> str:
    """backup.cache_bucket, or `<prefix>cache-` + 8 hex digits of the prefix's SHA-256.

    Derived from config.json alone, so a new machine given the same config.json finds the
    snapshots of the old one (each installation writes under a key of its own)."""
    if config.cache_bucket:
        return config.cache_bucket
    digest = hashlib.sha256(config.bucket_prefix.encode("utf-8")).hexdigest()[:8]
    return f"{config.bucket_prefix}cache-{digest}"


def host_cache_bucket_name(config: Config) -> str:
    """The default cache bucket before the rebuild existed: derived from the host name and the
    cache directory's path. Still read for snapshots an installation wrote there."""
    from ..settings.naming import stable_bucket_name

    host = socket.gethostname().split(".")[0] or "host"
    return stable_bucket_name(config.bucket_prefix + "cache-", "/" + host + str(config.source.parent))


def snapshot_buckets(config: Config) -> list[str]:
    """Where a rebuild looks for snapshots: the cache bucket, and the older host-derived one."""
    if config.cache_bucket:
        return [config.cache_bucket]
    return [cache_bucket_name(config), host_cache_bucket_name(config)]


class _SnapshotShelf:
    """Every snapshot in the cache buckets, listed once per run and each downloaded at most once."""

    def __init__(self, s3: S3, buckets: list[str], tmp: Path) -> None:
        self._s3 = s3
        self._buckets = buckets
        self._tmp = tmp
        self._found: list[Snapshot] | None = None
        self._opened: dict[Snapshot, Path | None] = {}

    async def newest_holding(self, bucket: str) -> tuple[Snapshot, Path] | None:
        """The newest sound snapshot with rows for `bucket`, and its unpacked database."""
        if self._found is None:
            self._found = await find_snapshots(self._s3, self._buckets)
        for snapshot in self._found:
            if snapshot not in self._opened:
                try:
                    path: Path | None = await download_snapshot(
                        self._s3, snapshot, self._tmp, f"snapshot-{len(self._opened)}"
                    )
                except SnapshotUnusable as exc:
                    log.warning("%s cannot be used (%s); passed over", snapshot.describe(), exc)
                    path = None
                self._opened[snapshot] = path
            db = self._opened[snapshot]
            if db is not None and await anyio.to_thread.run_sync(snapshot_holds, db, bucket):
                return snapshot, db
        return None


def _snapshot_gz(store: StateStore, snapshot: Path) -> Path:
    """A consistent copy of the cache, gzipped into a temporary file: streamed, never whole in memory."""
    store.snapshot(snapshot)
    packed = snapshot.with_suffix(".db.gz")
    with open(snapshot, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    os.unlink(snapshot)
    return packed


def _log_tail(path: Path) -> bytes:
    """The current backup.log, its last LOG_MAX_BYTES at most (it is rotated at that size, but a log
    written before rotation existed may be larger): the uploaded copy is bounded."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - LOG_MAX_BYTES))
        return f.read(LOG_MAX_BYTES)
