"""The backup run: walk -> plan -> upload/delete -> record, as concurrent stages.

The only module of backup/ that wires stages together, and it holds no policy. Task groups
and streams it does not wire: a multipart upload's parts (a task group in `upload`) and a lost
cache's rebuild, which wires its own HeadObject fan-out (`recovery.run`: a task group and two
bounded memory streams) and which this run awaits before any walk starts. `Backup.run`
reads top to bottom like a script: check the endpoint, abort what a crash left, rebuild lost
cache rows, start the cache writer and the upload workers, walk every target (each walk in a
worker thread, merged with the cache into actions), let each target delete what vanished once
its uploads are done, then close each stage's input in order and wait, and upload the cache
snapshot if it is due. Every arrow between stages is bounded, so a fast walk can never run ahead
of the uploads by more than the queue size: a memory stream, except from the walks to the upload
workers, where each target has a lane of its own (`lanes`), taken from by turns weighted by the
target's `priority`, so that every target advances however large another one's upload is.

The rooms it calls: `setup` (endpoint check, buckets on first need), `cleanup` (crash
leftovers), `policy` (each upload's rules, the deletion and device guards), `plan` (pure merge);
from recovery/: `run` and `oldscript` (lost rows, the old script's cache), `save` (the cache
snapshot).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import anyio
from anyio.streams.memory import MemoryObjectSendStream as ObjectSendStream

from ..cache.store import Change, Evidence, Removed, StateStore
from ..cache.writer import run_writer
from ..cache.writes import CacheWrites
from ..disk.entries import WalkEntry
from ..disk.keys import display_path
from ..disk.walk import Excluder, device_of, walk_target
from ..errors import Failure, FailureCollector, FailureKind, unwrapped_group
from ..fixity.rotation import Budget, Rotation, held_failure
from ..recovery.oldscript import OldCaches
from ..recovery.rebuild import needs_rebuild
from ..recovery.run import Rebuild
from ..recovery.save import snapshot_due, upload_snapshot
from ..report.logsetup import LOG_MAX_BYTES, LOG_NAME
from ..report.progress import Progress
from ..report.summary import TargetStats
from ..s3.client import S3, open_s3
from ..s3.pricing import RequestTally, upload_requests
from ..settings.config import Config
from ..settings.targets import Target, old_script_buckets
from .budget import ByteBudget
from .cleanup import CrashCleanup
from .cutoff import Cutoff, WindowCut
from .delete import KeyFailure, delete_paths
from .lanes import Lane, Lanes
from .mounts import TargetMounts
from .plan import MAX_DELETE_BATCH, Observed, Proof, Upload, merge, part_size_for
from .policy import Guards, UploadPolicy, target_missing, target_unusable
from .runs import RunOptions, TargetRun, UploadJob
from .setup import BucketSetup
from .upload import MemoryLimits, UploadSettings

log = logging.getLogger(__name__)

# Actions cross from the walk thread to the event loop in chunks: one thread hop per chunk,
# not per file. Small enough that an incremental run starts uploading almost at once.
CHUNK_FILES = 32


class Backup:
    def __init__(
        self,
        config: Config,
        targets: list[Target],
        store: StateStore,
        collector: FailureCollector,
        options: RunOptions,
        progress: Progress | None = None,
        window_ends_at: float | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.store = store
        self.writes = CacheWrites(store)  # what the run writes beside its writer task
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
        self._mounts: dict[str, TargetMounts] = {}  # per target path, once its walk began
        self.started_at = time.time()
        self.guards = Guards(config, store, options, collector)
        self.old_caches = OldCaches(config, store, collector)
        self._s3: S3 | None = None
        self._buckets: BucketSetup | None = None
        self._uploads: UploadPolicy | None = None
        self.sent = RequestTally()  # every S3 request of the run, once the client is open
        # The window: at `window_ends_at` (wall clock) no upload starts, those in flight finish
        # within the grace or are cut; what is left is counted for the report.
        self.cutoff = Cutoff(window_ends_at, config.window.grace_s, self._bytes_confirmed)
        self._limits = MemoryLimits(
            budget=ByteBudget(config.tuning.memory_budget_bytes),
            part_slots=anyio.Semaphore(config.tuning.parts_in_flight),
        )

    @property
    def s3(self) -> S3:
        assert self._s3 is not None, "S3 is used only inside Backup.run"
        return self._s3

    @property
    def buckets(self) -> BucketSetup:
        assert self._buckets is not None, "buckets are set up only inside Backup.run"
        return self._buckets

    @property
    def uploads(self) -> UploadPolicy:
        assert self._uploads is not None, "uploads run only inside Backup.run"
        return self._uploads

    async def run(self) -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = self.config.tuning.file_threads
        await anyio.to_thread.run_sync(self.guards.read_recorded_devices, self.runs)
        if self.options.dry_run:
            self.old_caches.check_naming()  # from the local db/ only: a dry run sends no request
            await self._plan_only()
            return
        tuning = self.config.tuning
        async with open_s3(self.config.aws, tuning) as s3:
            self._s3 = s3
            self.sent = s3.sent
            cleanup = CrashCleanup(s3, self.store)
            self._buckets = BucketSetup(s3, self.config, self.collector)
            self._uploads = UploadPolicy(
                s3, self.config, self.store, self.collector, self.settings, self._limits, self._buckets
            )
            await self.buckets.check_endpoint(self.runs)
            # The old script's cache bucket is listed once where its copies matter: legacy naming,
            # and a cache that knows no target yet (a new machine, a lost cache), where its copies
            # of this directory's db/ stop a run that would start new buckets beside them by mistake.
            # A cache that has run before sends nothing more; the local db/ is looked at every run.
            first_here = not await anyio.to_thread.run_sync(self.store.known_targets)
            if self.config.naming == "legacy" or first_here:
                await self.old_caches.read_bucket(s3)
            if self.config.naming != "legacy" and first_here:
                # ... and the old script's bucket of each target, for its files (MaxKeys=1 each).
                paths = [r.target.path for r in self.runs if not r.target.missing]
                old = await anyio.to_thread.run_sync(old_script_buckets, self.config, paths)
                await self.old_caches.find_old_buckets(s3, old)
            self.old_caches.check_naming()
            # Only now: a stopped run must not remember names the operator is about to change.
            await self._remember_targets()
            await cleanup.abort_leftover_uploads(self.runs)
            if self.options.rebuild:
                await Rebuild(s3, self.config, self.store, self.collector, self.old_caches).rebuild_caches(self.runs)
            # One bounded lane per target, emptied by turns: a huge first upload cannot hold back
            # the other targets' changes (lanes.py).
            lanes: Lanes[UploadJob] = Lanes(_job_bytes)
            runs = self.runs
            change_send, change_receive = anyio.create_memory_object_stream[Change](4 * tuning.queue_size)
            try:
                async with unwrapped_group() as stages:
                    stages.start_soon(run_writer, self.store, change_receive)
                    progress_scope = anyio.CancelScope()
                    stages.start_soon(self._show_progress, progress_scope)
                    window_scope = anyio.CancelScope()
                    stages.start_soon(self._watch_window, window_scope)
                    with change_send:
                        # Every lane is open before any worker looks: the workers end when all are closed.
                        target_lanes = [lanes.open(priority=r.target.priority, limit=tuning.queue_size) for r in runs]
                        async with unwrapped_group() as workers:
                            for _ in range(tuning.workers):
                                workers.start_soon(self._upload_worker, lanes, change_send.clone())
                            walk_slots = anyio.CapacityLimiter(tuning.walk_threads)
                            async with unwrapped_group() as producers:
                                for run, lane in zip(runs, target_lanes, strict=True):
                                    producers.start_soon(self._run_target, run, lane, change_send.clone(), walk_slots)
                    window_scope.cancel()  # every upload is done or left: the window has nothing more to stop
                    progress_scope.cancel()  # every stage is done: the last progress line is the summary
            finally:
                self._stopping.set()
            await self._fixity_slices(s3)
            if self.options.backup_cache and await snapshot_due(self.store, self._cache_changed()):
                log_path = self.store.cache_dir / LOG_NAME
                await upload_snapshot(s3, self.config, self.store, self.collector, log_path, LOG_MAX_BYTES)

    def _bytes_confirmed(self) -> int:
        return sum(r.stats.bytes_uploaded for r in self.runs)

    async def _watch_window(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self.cutoff.watch()

    async def _fixity_slices(self, s3: S3) -> None:
        """After the uploads: each target's nightly fixity slice, about 1/fixity_days of its bytes
        read on disk (idle I/O priority) and of its objects HEADed in S3, the most due first."""
        days = self.config.fixity_days
        if not days:
            return
        ends_at = self.cutoff.ends_at

        def past_end() -> bool:  # the window bounds the slices too: what they leave is due next run
            return ends_at is not None and time.time() >= ends_at

        for run in self.runs:
            if past_end():
                log.info("the window ended: no fixity slice this run; the files due are checked first next run")
                return
            target = run.target
            if target.missing or target.problem or run.held_back or not run.stats.walk_finished:
                continue
            budget = await anyio.to_thread.run_sync(Budget.slice_of, self.store, target.bucket, days)
            rotation = Rotation(
                self.store, target, run.stats.fixity, self.writes.fixity_checked, self.collector.add, past_end=past_end
            )
            await rotation.on_disk(budget.bytes)
            await rotation.in_s3(s3, budget.objects, self.config.tuning.workers)
            log.info("%s: %s", target.path, run.stats.fixity.line())

    async def _remember_targets(self) -> None:
        usable = [r.target for r in self.runs if not r.target.missing and not r.target.problem]
        await self.writes.remember_targets((t.path, t.bucket, t.root) for t in usable)

    def _cache_changed(self) -> bool:
        return any(r.stats.new or r.stats.updated or r.stats.deleted or r.device_recorded for r in self.runs)

    async def _show_progress(self, scope: anyio.CancelScope) -> None:
        if self.progress is None:
            return
        with scope:
            await self.progress.run([r.stats for r in self.runs])

    # Stage: walk and plan one target, then its deletes once its uploads are done

    async def _run_target(
        self,
        run: TargetRun,
        lane: Lane[UploadJob],
        change_send: ObjectSendStream[Change],
        walk_slots: anyio.CapacityLimiter,
    ) -> None:
        target = run.target
        try:
            with change_send:
                with lane:
                    if target.missing:
                        target_missing(run, self.collector)
                        return
                    if target.problem:
                        target_unusable(run, self.collector)
                        return
                    if run.held_back:
                        return
                    await anyio.to_thread.run_sync(self.guards.open_change_guard, run)
                    async with walk_slots:
                        await self._walk_in_thread(run, lane, change_send)
                run.walk_done()
                await run.uploads_done.wait()
                await self._after_change_guard(run, change_send)
                await self._delete_vanished(run, change_send)
                await self.guards.record_device(run, change_send)
                await self._record_mounts(run, change_send)
                await self.uploads.end_target(run, change_send)
        finally:
            run.stats.finished_at = time.time()
            run.stats.failed = self.collector.count_for(target.path)
            log.info("%s", run.stats.line())

    async def _walk_in_thread(
        self,
        run: TargetRun,
        lane: Lane[UploadJob] | None,
        change_send: ObjectSendStream[Change] | None = None,
    ) -> None:
        """The walk runs in a worker thread. On cancellation (SIGTERM, a fatal error) the thread is
        told to stop and left to notice it, so a walk of millions of files cannot hold up a stop."""
        try:
            await anyio.to_thread.run_sync(self._produce, run, lane, change_send, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self._stopping.set()
            raise

    def _produce(
        self,
        run: TargetRun,
        lane: Lane[UploadJob] | None,
        change_send: ObjectSendStream[Change] | None = None,
    ) -> None:
        """Runs in a worker thread: the sorted walk merged with the cache's rows. Inodes and ctimes
        that old rows lack go to the cache writer in chunks (not in a dry run: no `change_send`)."""
        target = run.target
        root = target.path_bytes
        excluded: Callable[[bytes], bool] = (
            (lambda p: self.excluder.excludes_any_part(root, p)) if self.excluder else (lambda _p: False)
        )
        run.device = device_of(root)
        mounts = self._mounts[target.path] = TargetMounts(target.path, self.store.mounts(target.path), self.collector)
        watch = mounts.watch(allow_mass_delete=self.options.allow_mass_delete)
        unproven = mounts.unproven()
        walk = _until_stopped(
            walk_target(root, self.excluder, self.collector.add, target.path, self.collector.warn, watch),
            self._stopping,
        )
        chunk: list[UploadJob] = []
        observed: list[Change] = []
        bucket = target.bucket
        # Files a fixity read found rotten: never uploaded over the good version, whatever their
        # mtime says now, until restored or accepted (--accept-change). Reported every run.
        holds = self.store.fixity_holds(bucket) if change_send is not None else {}
        for path, hold in holds.items():
            self.collector.add(held_failure(target, path, hold))
        guard = run.change_guard

        def queue(upload: Upload) -> None:
            nonlocal chunk
            if lane is not None:
                chunk.append(UploadJob(run, upload))
                if len(chunk) >= CHUNK_FILES:
                    anyio.from_thread.run(self._enqueue, chunk, lane)
                    chunk = []

        try:
            for action in merge(walk, self.old_caches.recorded(run), run.counts, excluded):
                if holds and isinstance(action, Upload) and action.file.path in holds:
                    continue
                if isinstance(action, Observed):
                    if change_send is not None:
                        file = action.file
                        assert file.ino is not None and file.ctime_ns is not None
                        observed.append(Evidence(bucket, file.path, file.ino, file.ctime_ns))
                        if len(observed) >= CHUNK_FILES:
                            anyio.from_thread.run(self._record, observed, change_send)
                            observed = []
                    continue
                if isinstance(action, Upload):
                    if unproven and action.is_new and action.file.path.startswith(unproven):
                        # Its row was not rebuilt while the share was away: prove before sending.
                        action = Upload(action.file, is_new=True, proof=Proof.HEAD)
                    if action.proof is not Proof.CONTENT:  # a content check sends nothing when it matches
                        run.stats.planned_uploads += 1
                        run.stats.planned_upload_bytes += action.file.size
                        self._plan_requests(run, action.file.size)
                    # The change guard holds updates until their share is known (changeguard.py).
                    for upload in [action] if guard is None else guard.planned(action, run.counts.recorded):
                        queue(upload)
                else:
                    run.deletes.append(action.path)
            if guard is not None:
                for upload in guard.walk_ended():
                    queue(upload)
        except _Stopped:
            if guard is not None:
                guard.walk_cut()
            return  # the run is being cancelled: its plan is dropped unused
        if chunk and lane is not None:
            anyio.from_thread.run(self._enqueue, chunk, lane)
        if observed and change_send is not None:
            anyio.from_thread.run(self._record, observed, change_send)
        counts = run.counts
        run.stats.planned_deletes = len(run.deletes)
        if run.deletes:
            batches = -(-len(run.deletes) // MAX_DELETE_BATCH)
            run.stats.planned_requests["DeleteObjects"] = run.stats.planned_requests.get("DeleteObjects", 0) + batches
        run.stats.unchanged += counts.unchanged  # += : files a proof settled count there too
        run.stats.unsure = counts.unsure
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

    async def _enqueue(self, chunk: list[UploadJob], lane: Lane[UploadJob]) -> None:
        for job in chunk:
            job.run.pending += 1
            await lane.put(job)

    async def _record(self, changes: list[Change], change_send: ObjectSendStream[Change]) -> None:
        for change in changes:
            await change_send.send(change)

    async def _after_change_guard(self, run: TargetRun, change_send: ObjectSendStream[Change]) -> None:
        """After a target's uploads: the few images that lost their signature below the alarm go
        after all; otherwise the guard's one failure says what it held back."""
        guard = run.change_guard
        if guard is None or not run.stats.walk_finished:
            return
        for upload in guard.kept_aside():
            await self.uploads.upload(UploadJob(run, upload), change_send, guarded=False)
        self.guards.changes_held_back(run)

    async def _delete_vanished(self, run: TargetRun, change_send: ObjectSendStream[Change]) -> None:
        if not run.deletes:
            return
        if self.guards.deletes_held_back(run) or not await self.buckets.ready(run):
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

    async def _record_mounts(self, run: TargetRun, change_send: ObjectSendStream[Change]) -> None:
        mounts = self._mounts.get(run.target.path)
        if mounts is None or not run.stats.walk_finished:
            return  # a walk cut short may not have reached every mount point
        seen = mounts.seen(allow_mass_delete=self.options.allow_mass_delete)
        if seen is not None:
            await change_send.send(seen)

    # Stage: upload workers

    async def _upload_worker(self, lanes: Lanes[UploadJob], change_send: ObjectSendStream[Change]) -> None:
        with change_send:
            while (job := await lanes.get()) is not None:
                try:
                    if self.cutoff.closed:  # after the window's end no upload starts
                        self._left_by_window(job)
                        continue
                    with self.cutoff.flight(job.upload.file.size) as flight:
                        try:
                            await self.uploads.upload(job, change_send)
                        except WindowCut:
                            # Parts S3 confirmed of a cut multipart upload stay for the next run.
                            self._left_by_window(job, flight.confirmed_bytes if flight else 0)
                finally:
                    job.run.job_finished()

    def _left_by_window(self, job: UploadJob, sent_bytes: int = 0) -> None:
        if job.upload.proof is not Proof.CONTENT:  # a content check is no planned upload
            self.cutoff.leave(max(0, job.upload.file.size - sent_bytes))

    # Dry run: the walk stage alone, against the cache (or the old cache a real run would adopt)

    async def _plan_only(self) -> None:
        walk_slots = anyio.CapacityLimiter(self.config.tuning.walk_threads)

        async def plan(run: TargetRun) -> None:
            if run.target.missing:
                target_missing(run, self.collector)
                return
            if run.target.problem:
                target_unusable(run, self.collector)
                return
            if self.options.rebuild:
                run.old_cache = await anyio.to_thread.run_sync(self.old_caches.to_adopt, run)
                if run.old_cache is None:
                    run.stats.rebuild_due = await anyio.to_thread.run_sync(needs_rebuild, self.store, run.target.bucket)
            await anyio.to_thread.run_sync(self.guards.open_change_guard, run)
            async with walk_slots:
                await self._walk_in_thread(run, None)
            self.guards.changes_held_back(run)
            self.guards.deletes_held_back(run)
            run.stats.finished_at = time.time()

        async with unwrapped_group() as tg:
            for run in self.runs:
                tg.start_soon(plan, run)


def _job_bytes(job: UploadJob) -> int:
    return job.upload.file.size


class _Stopped(Exception):
    """Raised inside the walk thread when the run is being cancelled."""


def _until_stopped(entries: Iterator[WalkEntry], stopping: threading.Event, every: int = 1000) -> Iterator[WalkEntry]:
    """Pass walk entries through, checking every `every` entries whether the run is stopping."""
    for n, entry in enumerate(entries):
        if n % every == 0 and stopping.is_set():
            raise _Stopped
        yield entry
