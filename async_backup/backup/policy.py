"""Backup's policy: what one planned upload becomes, and when deletes are held back.

Owns the rules around each upload (a key too long or a file too large fails alone, a file that
meets a rebuilt "gone" row is first proven by HeadObject (Proof.HEAD), one whose row is unsure
(read racily, or its inode or ctime moved) is first compared by content (Proof.CONTENT) and sent
only when it differs, a file that
changes while read gets one more read and is then left for the next run, and fails from the
third run in a row that finds it changing, a vanished file (or one that is no longer a regular
file) is skipped, an unreadable one fails, a run of transport failures ends the run as fatal), the
device and deletion guards applied to a target's deletes, and the failures of targets that
cannot run. The pipeline calls these; they open no task group and no stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import anyio
from anyio.streams.memory import MemoryObjectSendStream as ObjectSendStream

from ..cache.records import is_racy
from ..cache.store import Change, DeviceSeen, StateStore, Stored, UnsettledKept
from ..cache.writes import CacheWrites
from ..disk.digest import content_proves_etag
from ..disk.keys import KeyTooLongError, check_key_length, display_path, key_for_path
from ..disk.read import FileChanged, FileUnreadable, FileVanished
from ..errors import Failure, FailureCollector, FailureKind, FatalError, Fix, S3Error, fix_command
from ..recovery.rules import checksum_of
from ..report.summary import format_bytes
from ..s3.checksums import file_value, recomputable
from ..s3.client import S3, endpoint_name
from ..s3.objects import parse_mtime_metadata
from ..settings.config import Config
from .changeguard import ChangeGuard
from .cleanup import CachedUploads
from .content import read_content
from .cutoff import sending
from .delete import delete_superseded
from .plan import MAX_OBJECT_BYTES, Proof, deletion_guard, device_guard
from .runs import RunOptions, TargetRun, UploadJob
from .setup import BucketSetup
from .upload import HeldBack, MemoryLimits, UploadSettings, upload_file

# So many requests in a row failing at the transport level (after botocore's retries) means the
# endpoint is gone: stop with one error rather than thousands.
TRANSPORT_FAILURES_FATAL = 20
TRANSPORT_CODES = frozenset(
    {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError"}
)
# A file found changed while read in so many runs in a row never holds still long enough to be
# backed up (a log, a file being scanned into): from then on it is a failure, not a warning.
UNSETTLED_RUNS_FAIL = 3


class UploadPolicy:
    """One planned upload, from the key check to the Stored row sent to the cache writer."""

    def __init__(
        self,
        s3: S3,
        config: Config,
        store: StateStore,
        collector: FailureCollector,
        settings: UploadSettings,
        limits: MemoryLimits,
        buckets: BucketSetup,
    ) -> None:
        self.s3 = s3
        self.config = config
        self.store = store
        self.writes = CacheWrites(store)
        self.collector = collector
        self.settings = settings
        self._limits = limits
        self.buckets = buckets
        self._transport_failures_in_a_row = 0
        # Per bucket, the files this run found changed while reading (their counts go on).
        self._unsettled_paths: dict[str, set[bytes]] = {}

    async def upload(self, job: UploadJob, change_send: ObjectSendStream[Change], *, guarded: bool = True) -> None:
        """`guarded`: the change guard is told each file's kind before it is sent and may hold it
        back (not for the few files it let through after all at the target's end)."""
        by_etag = False  # a row with no checksum to compare with: S3's ETag is compared instead
        if job.upload.proof is Proof.CONTENT:
            same = await self._same_content(job, change_send)
            if same:
                return
            by_etag = same is None
        run, file = job.run, job.upload.file
        bucket = run.target.bucket

        def fail(kind: FailureKind, message: str, code: str = "") -> None:
            # The path is shown only in a failure: not worked out for the millions of files that upload.
            self.collector.add(Failure(kind, run.target.path, display_path(file.path), message, code))

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
        if not await self.buckets.ready(run):
            return
        if job.upload.proof is Proof.HEAD or by_etag:
            try:
                if await self.proven_by_head(job, key, change_send, by_content=by_etag):
                    return
            except S3Error as exc:
                fail(
                    FailureKind.S3,
                    f"HeadObject failed ({exc.message}); not uploaded, so that nothing S3 already holds is "
                    "uploaded twice: the next run checks it again",
                    exc.code,
                )
                self._note_transport(exc)
                return

        multipart_log = CachedUploads(self.store, self.writes, bucket, key)
        guard = run.change_guard if guarded else None

        def admit(kind: str) -> None:
            if guard is not None and not guard.admit(job.upload, kind):
                raise HeldBack

        for attempt in (1, 2):
            try:
                with sending():  # the window's end may cut this, never the recording below
                    done = await upload_file(
                        self.s3, bucket, key, file, self.settings, self._limits, multipart_log, admit
                    )
            except HeldBack:
                return  # not sent, not recorded: the change guard names it at the target's end
            except FileChanged as exc:
                if attempt == 1:
                    continue  # one more read: a file being written often settles quickly
                run.stats.skipped += 1
                await self._unsettled(run, file.path, str(exc))
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
            superseded = await delete_superseded(self.s3, bucket, file.path, key)
            if superseded is not None:
                # Not recorded: the next run uploads it again and retries the old key's delete, so
                # no restore finds the old object beside the new one.
                fail(FailureKind.S3, superseded.message, superseded.code)
                return
            unsure = is_racy(done.mtime_ns, done.ctime_ns, done.read_started_ns)
            await change_send.send(
                Stored(
                    bucket,
                    file.path,
                    done.size,
                    done.mtime_ns,
                    done.checksum,
                    ino=done.ino,
                    ctime_ns=done.ctime_ns,
                    unsure=unsure,
                    part_bytes=done.part_bytes,
                    kind=done.kind,
                )
            )
            if job.upload.is_new:
                run.stats.new += 1
            else:
                run.stats.updated += 1
            run.stats.bytes_uploaded += done.size
            return

    async def _same_content(self, job: UploadJob, change_send: ObjectSendStream[Change]) -> bool | None:
        """Proof.CONTENT: the file matches its row by size and mtime, but the row was read racily
        or the file's inode or ctime moved. Read it and compare its checksum with the one the row
        recorded: the same, and the row is written again with this read's evidence (no request);
        True also for a file gone meanwhile. False: it is uploaded (contents differ, or the read
        failed: the upload reads it again and reports). None: the row keeps no checksum that can be
        recomputed (a row adopted from the old script's cache, or one S3 answered no MD5 for), so
        the object's ETag decides (`proven_by_head` with `by_content`): a `chmod -R` over an
        adopted archive costs a HeadObject and a read per file, never an upload."""
        run, file = job.run, job.upload.file
        bucket = run.target.bucket
        sent = await anyio.to_thread.run_sync(self.store.row, bucket, file.path)
        if sent is None:
            return False
        checksum, part_bytes = sent.checksum, sent.part_bytes
        if checksum is None or not recomputable(checksum, part_bytes, file.size):
            return None
        try:
            seen = await read_content(self._limits, file, checksum, part_bytes)
        except FileVanished:
            run.stats.skipped += 1  # deleted after the walk: the next run deletes it from S3
            return True
        except (FileChanged, FileUnreadable):
            return False
        if seen is None or seen.checksum != file_value(checksum):
            return False
        row = Stored(
            bucket,
            file.path,
            file.size,
            file.mtime_ns,
            checksum,
            ino=seen.ino,
            ctime_ns=seen.ctime_ns,
            unsure=is_racy(file.mtime_ns, seen.ctime_ns, seen.read_started_ns),
            part_bytes=part_bytes,
            kind=sent.kind,
        )
        await change_send.send(row)
        run.stats.unchanged += 1
        return True

    async def proven_by_head(
        self, job: UploadJob, key: str, change_send: ObjectSendStream[Change], *, by_content: bool = False
    ) -> bool:
        """Proof.HEAD, for a file that came back to a rebuilt "gone" row with the listed size:
        whether S3 holds it as it is, so that it gets its row and no upload. HeadObject: an
        object with our `mtime` metadata is the file when that equals its mtime to the nanosecond
        (as the rebuild proves rows); one without it (the old script set none) when its ETag is
        the file's (`content_proves_etag`: the file is read once; single-part MD5, or multipart at
        the old script's part size or the part size the row recorded). Raises S3Error when
        HeadObject fails. `by_content`: the row is in doubt about the bytes, not the mtime (read
        racily, or the inode or ctime moved), so the `mtime` metadata proves nothing and only the
        ETag against the file's content does."""
        run, file = job.run, job.upload.file
        head = await self.s3.head_object(run.target.bucket, key)
        if head is None or head.size != file.size:
            return False
        mtime_ns = None if by_content else parse_mtime_metadata(head.metadata)
        if mtime_ns is not None:
            if mtime_ns != file.mtime_ns:
                return False
        elif head.encrypted_with_key:
            return False  # its ETag is no MD5 of anything on disk
        else:
            sent = await anyio.to_thread.run_sync(self.store.row, run.target.bucket, file.path)
            recorded_part_bytes = None if sent is None else sent.part_bytes
            proven, part_bytes = await anyio.to_thread.run_sync(
                content_proves_etag, file.path, file.size, file.mtime_ns, head.etag, (recorded_part_bytes,)
            )
            if not proven:
                return False
        row = Stored(run.target.bucket, file.path, file.size, file.mtime_ns, checksum_of(head))
        await change_send.send(row if mtime_ns is not None else replace(row, part_bytes=part_bytes))
        run.stats.unchanged += 1
        return True

    async def _unsettled(self, run: TargetRun, path: bytes, reason: str) -> None:
        """A file left unrecorded because it changed while read: a warning, and from the
        UNSETTLED_RUNS_FAIL-th run in a row a failure, since such a file is never backed up."""
        self._unsettled_paths.setdefault(run.target.bucket, set()).add(path)
        runs = await self.writes.note_unsettled(run.target.bucket, path)
        if runs < UNSETTLED_RUNS_FAIL:
            self.collector.warn(
                Failure(
                    FailureKind.CHANGED_WHILE_READING,
                    run.target.path,
                    display_path(path),
                    f"{reason}; left for the next run",
                )
            )
            return
        self.collector.add(
            Failure(
                FailureKind.NEVER_STILL,
                run.target.path,
                display_path(path),
                f"changed while it was read in {runs} runs in a row ({reason}), so it has no backup; "
                "exclude it with backup.exclude, or back up a copy made while nothing writes to it",
            )
        )

    async def end_target(self, run: TargetRun, change_send: ObjectSendStream[Change]) -> None:
        """After a target's walk and uploads: a file this run did not find changing (it was not
        tried, it vanished, it failed otherwise) no longer counts runs in a row; a file that was
        deleted or excluded before it was ever recorded would else keep its count for good. Not
        after a walk cut short, which did not look at every file."""
        if run.stats.walk_finished:
            noted = self._unsettled_paths.pop(run.target.bucket, set())
            await change_send.send(UnsettledKept(run.target.bucket, frozenset(noted)))

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


class Guards:
    """The device and deletion guards over a target's planned deletes, and the device they remember."""

    def __init__(self, config: Config, store: StateStore, options: RunOptions, collector: FailureCollector) -> None:
        self.config = config
        self.store = store
        self.options = options
        self.collector = collector

    def read_recorded_devices(self, runs: Sequence[TargetRun]) -> None:
        for run in runs:
            run.recorded_device = self.store.target_device(run.target.path)

    def open_change_guard(self, run: TargetRun) -> None:
        """The target's change guard, from the count of its cached files (before its walk)."""
        tuning = self.config.tuning
        cached = self.store.count(run.target.bucket) if run.target.bucket else 0
        run.change_guard = ChangeGuard(
            cached=cached,
            max_change_percent=tuning.max_change_percent,
            alarm=tuning.unrecognised_images_alarm,
            off=self.options.allow_mass_change,
        )

    def changes_held_back(self, run: TargetRun) -> bool:
        """The change guard's one failure for a target whose updates it held back."""
        guard = run.change_guard
        reason = None if guard is None else guard.verdict()
        if reason:
            target = run.target.path
            self.collector.add(
                Failure(FailureKind.CHANGE_GUARD, target, target, reason, fix=Fix.ALLOW_MASS_CHANGE)
            )
        return reason is not None

    def deletes_held_back(self, run: TargetRun) -> bool:
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
            self.collector.add(
                Failure(FailureKind.DELETION_GUARD, run.target.path, run.target.path, moved, fix=Fix.ALLOW_MASS_DELETE)
            )
            return True
        reason = deletion_guard(
            recorded=run.counts.recorded,
            deletes=len(run.deletes),
            on_disk=run.counts.on_disk,
            max_delete_percent=self.config.tuning.max_delete_percent,
            allow_mass_delete=self.options.allow_mass_delete,
        )
        if reason:
            self.collector.add(
                Failure(FailureKind.DELETION_GUARD, run.target.path, run.target.path, reason, fix=Fix.ALLOW_MASS_DELETE)
            )
        return reason is not None

    async def record_device(self, run: TargetRun, change_send: ObjectSendStream[Change]) -> None:
        """Remember the folder's device once a run walked it to the end and the device guard did
        not hold it back (with --allow-mass-delete it never does): a share that is not mounted must
        not make its empty mount point the device the next runs compare with."""
        if run.device is None or run.device_held_back or not run.stats.walk_finished:
            return
        if run.device != run.recorded_device:
            await change_send.send(DeviceSeen(run.target.path, run.device))
            run.device_recorded = True


def target_missing(run: TargetRun, collector: FailureCollector) -> None:
    target = run.target
    fix: Fix | None = None
    if target.missing_key is not None:
        # Never backed up: a typo or a share not mounted yet, in a line just added to config.json.
        section = target.missing_key.split("[", 1)[0]
        if target.bucket:
            what = f"is not there ({target.missing_reason}) and was never backed up; nothing of it was backed up"
        else:  # a root: which subfolders it holds is unknown, so it fails as a whole
            what = (
                f"cannot be listed ({target.missing_reason}) and none of its subfolders was ever backed up; "
                "nothing under it was backed up"
            )
        message = (
            f"{target.missing_key} {target.path} {what}, the other targets ran. "
            f"Fix the path in {section} in config.json, or mount the share"
        )
    elif target.root is not None:
        message = (
            f"this subfolder of root {target.root} is gone (renamed, removed, or the share unmounted?); "
            "nothing was uploaded or deleted. If it is gone for good, run "
            f"{fix_command(Fix.FORGET_SUBFOLDER, target.path)} (its bucket s3://{target.bucket} stays as it is)"
        )
        fix = Fix.FORGET_SUBFOLDER
    else:
        message = (
            "the folder is missing (an unmounted share?); nothing was uploaded or deleted. "
            "Mount it, or remove it from config.json and run with --forget-target if it is gone for good"
        )
        fix = Fix.FORGET_TARGET
    collector.add(Failure(FailureKind.TARGET_MISSING, target.path, target.path, message, fix=fix))


def target_unusable(run: TargetRun, collector: FailureCollector) -> None:
    assert run.target.problem is not None
    collector.add(Failure(FailureKind.BUCKET, run.target.path, run.target.path, run.target.problem))
