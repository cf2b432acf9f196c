"""Upload one file: a single PutObject for small files, a multipart upload for large ones.

Owns the upload policy: which body goes how, detecting files that change while read, and aborting
multipart uploads that fail. A file is opened without blocking and must be a regular file (else
it counts as vanished); it goes by the size its fstat gives then, not the walk's, so a file that
grew since the walk never makes a read pass what was reserved for it. A file of at most one chunk
(256 KiB) is opened, read whole and checksummed in one worker-thread call. A larger body (a file
up to the multipart threshold, or one part) is streamed: its checksum is taken in a worker thread,
the file is checked unchanged, then the fast path sends it from the file through the two chunk
buffers it took from the pool, so a body's size never shows in memory. Through botocore (buckets
the fast path cannot sign), bodies are read whole into memory instead. Either way, file contents
in memory never exceed the byte budget of `config.Tuning`.

A multipart upload cut off (a signal, the run's window, a fatal error elsewhere, or SIGKILL) with
parts in S3 stays open: its id, its file's evidence and each part S3 confirmed are in the cache
(`MultipartLog`), and the next upload of the same key continues it when the file is unchanged,
sending only the parts S3 does not hold as recorded. It is aborted when the file changed, and
started again when S3 no longer knows it (the bucket's lifecycle rule). The parts not sent again
are still read and checksummed: the whole file's CRC32 is combined from every part's, and a part
whose bytes no longer match its record is sent again.

Every upload records the whole file's CRC32, taken in the read that checksums its bodies (no pass
of its own): a single PutObject's body CRC32, or for a multipart upload the parts' CRC32s combined
(`s3.checksums.crc32_combine`). With CRC32 bodies, a multipart upload is created with
ChecksumType=FULL_OBJECT and completed with that value, so S3 stores the same CRC32 for an object
of any size; its record says "crc32/full" for the parts' algorithm, so a continued upload is
completed the way it was created.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio

from ..cache.records import OpenUpload, SentPart, UploadFile
from ..disk.entries import DiskFile
from ..disk.kinds import HEAD_BYTES, kind_of
from ..disk.read import (
    RangeReader,
    check_unchanged,
    feed_range,
    open_regular,
    os_error,
    read_exact,
    read_range,
)
from ..errors import S3Error, unwrapped_group
from ..s3.buckets import ABORT_INCOMPLETE_DAYS
from ..s3.checksums import PartChecksum, RunningChecksum, multipart_recorded, whole_crc32
from ..s3.client import S3, CompletedPart, ListedPart
from ..s3.fastput.bodies import BodyStream
from ..s3.objects import mtime_metadata
from .budget import BufferPool, ByteBudget
from .cutoff import part_confirmed
from .plan import part_ranges, part_size_for

log = logging.getLogger(__name__)
T = TypeVar("T")

# An abort of a failed or cancelled multipart upload runs shielded from cancellation, but no longer
# than this (botocore's own timeouts and retries apply inside it).
ABORT_TIMEOUT_S = 90
# The buffers of streamed bodies: a body goes to the socket in views of this size. Files of at most
# this size are read whole instead (one read and one checksum in a single worker-thread call).
CHUNK_BYTES = 256 * 1024
# The recorded algorithm of a multipart upload created with ChecksumType=FULL_OBJECT (CRC32 parts).
FULL_OBJECT_CRC32 = "crc32/full"


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What S3 confirmed: the file as it was read, and the checksum S3 verified."""

    size: int
    mtime_ns: int
    checksum: str
    # The evidence the row keeps (see Opened), and the part size of a multipart upload, which its
    # composite checksum needs to be recomputed from the file.
    ino: int = 0
    ctime_ns: int = 0
    read_started_ns: int = 0
    part_bytes: int | None = None
    kind: str | None = None  # what its first bytes showed (disk.kinds)


class HeldBack(Exception):
    """The upload's `admit` refused the file by the kind its first bytes show: nothing was sent."""


def admit_all(_kind: str) -> None:
    """An `admit` that lets every file go."""


@dataclass(frozen=True, slots=True)
class UploadSettings:
    storage_class: str
    multipart_threshold_bytes: int
    part_size_bytes: int


class MemoryLimits:
    """What all uploads share: bytes of file contents held at once (whole small files, chunk
    buffers of streamed bodies, idle or in use), multipart parts in flight, and the threads that
    checksum streamed bodies before they are sent."""

    def __init__(
        self,
        budget: ByteBudget,
        part_slots: anyio.Semaphore,
        chunk_bytes: int = CHUNK_BYTES,
        checksum_threads: int | None = None,
    ) -> None:
        self.budget = budget
        self.part_slots = part_slots
        self.buffers = BufferPool(budget, min(chunk_bytes, max(1, budget.total_bytes // 2)))
        # One checksum pass per core at once; the others wait their turn (anyio's limiter is first
        # come, first served). When every body hashed at once, a run's first send waited until nearly
        # all of them were done; in turn, the first bodies are ready early and go out while the
        # next ones are hashed.
        self.checksum_slots = anyio.CapacityLimiter(checksum_threads or usable_cores())


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Opened:
    """A file opened for upload and its fstat: the size every read of it goes by. Its inode and
    ctime, and the wall clock just before the open (the moment the read began, for the racy-clean
    rule: a write after it gets a later tick unless the file's last change lies within one), are
    what the row keeps as evidence."""

    fd: int
    size: int
    mtime_ns: int
    ino: int = 0
    ctime_ns: int = 0
    read_started_ns: int = 0


@dataclass(frozen=True, slots=True)
class WholeBody:
    """A file read whole, consistently, and its checksum."""

    data: bytes
    size: int
    mtime_ns: int
    checksum: PartChecksum
    opened: Opened  # its evidence


def open_for_upload(path: bytes) -> Opened:
    started_ns = time.time_ns()
    fd, st = open_regular(path)
    return Opened(fd, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, started_ns)


def read_and_sum(opened: Opened, algorithm: str) -> WholeBody:
    """An open file read whole (never past its fstat size) and its checksum."""
    data = read_exact(opened.fd, opened.size, opened.mtime_ns)
    return WholeBody(data, opened.size, opened.mtime_ns, PartChecksum.of(data, algorithm), opened)


def open_and_read_small(path: bytes, reserved_bytes: int, algorithm: str) -> WholeBody | Opened:
    """Open a file, and when its fstat size fits the bytes reserved for it by the walk's size,
    read it whole and checksum it: one worker-thread call for the common small file. A file that
    grew past the reservation since the walk comes back open and unread, for the caller to send by
    its fstat size."""
    opened = open_for_upload(path)
    if opened.size > reserved_bytes:
        return opened
    try:
        return read_and_sum(opened, algorithm)
    finally:
        os.close(opened.fd)


def checksum_range(
    fd: int,
    offset: int,
    length: int,
    algorithm: str,
    buffer: bytearray,
    settled: tuple[int, int],
    head: bytearray | None = None,
) -> PartChecksum:
    """The checksum of a range of the file, read through `buffer` (in a worker thread); raises
    FileChanged when the file's (size, mtime_ns) no longer is `settled` after the pass, so a body
    already known to be inconsistent is never sent. `head`, when given, receives the range's first
    HEAD_BYTES bytes as they pass (the file's kind, from the read the checksum does anyway)."""
    running = RunningChecksum(algorithm)
    if head is None:
        feed_range(fd, offset, length, buffer, running.update)
    else:

        def update(view: memoryview) -> None:
            if len(head) < HEAD_BYTES:
                head.extend(view[: HEAD_BYTES - len(head)])
            running.update(view)

        feed_range(fd, offset, length, buffer, update)
    check_unchanged(fd, *settled)
    return running.result()


class MultipartLog:
    """Where one key's multipart uploads are recorded. This base records nothing and knows no
    earlier upload (an upload that is never continued); the backup's keeps them in the cache."""

    async def open_upload(self) -> OpenUpload | None:
        """The newest upload of this key an earlier run left open, if any."""
        return None

    async def sent_parts(self, upload_id: str) -> dict[int, SentPart]:
        return {}

    async def started(self, upload_id: str, file: UploadFile) -> None:
        return None

    async def part_sent(self, upload_id: str, part: SentPart) -> None:
        return None

    async def ended(self, upload_id: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class UploadContext:
    """Everything one file's upload goes by but the file itself: where it goes, how its bodies go
    (streamed from the file on the fast path, else read whole, and their checksum), what it shares
    with every other upload, and who records its multipart upload id. One per file; every step of
    the upload takes it and the open file."""

    s3: S3
    bucket: str
    key: str
    path: bytes
    settings: UploadSettings
    limits: MemoryLimits
    streaming: bool  # S3.can_stream(bucket)
    algorithm: str  # S3.body_checksum(streaming, bucket)
    multipart_log: MultipartLog
    # Told the kind of the file's first bytes once they are read and before anything is sent;
    # raises HeldBack to stop the upload there (the change guard's "no longer an image").
    admit: Callable[[str], None] = admit_all

    def read_whole(self, size: int) -> bool:
        """Whether a body of `size` is read whole into memory (a single PutObject of at most one
        chunk, or any single PutObject through botocore) rather than streamed or sent in parts."""
        if size >= self.settings.multipart_threshold_bytes:
            return False
        return size <= self.limits.buffers.chunk_bytes or not self.streaming


async def upload_file(
    s3: S3,
    bucket: str,
    key: str,
    file: DiskFile,
    settings: UploadSettings,
    limits: MemoryLimits,
    multipart_log: MultipartLog,
    admit: Callable[[str], None] = admit_all,
) -> Uploaded:
    """Upload `file` to bucket/key; raises FileVanished, FileChanged, FileUnreadable, S3Error, or
    HeldBack when `admit` refuses the kind its first bytes show (told before anything is sent).

    The file goes by the size its fstat gives when it is opened, not by the walk's: a file that grew
    since the walk is streamed or sent in parts, never read whole past what was reserved for it."""
    streaming = await s3.can_stream(bucket)
    ctx = UploadContext(
        s3,
        bucket,
        key,
        file.path,
        settings,
        limits,
        streaming,
        s3.body_checksum(streaming, bucket),
        multipart_log,
        admit,
    )
    if ctx.read_whole(file.size):
        async with limits.budget.hold(file.size):
            # Open, read and checksum in one worker-thread call: hashing never holds up the event loop.
            read = await anyio.to_thread.run_sync(open_and_read_small, file.path, file.size, ctx.algorithm)
            if isinstance(read, WholeBody):
                return await _put_whole(ctx, read)
        opened = read  # grown past its reservation since the walk
    else:
        opened = await _open(file.path)
    try:
        if ctx.read_whole(opened.size):
            async with limits.budget.hold(opened.size):
                body = await anyio.to_thread.run_sync(read_and_sum, opened, ctx.algorithm)
                return await _put_whole(ctx, body)
        if opened.size < settings.multipart_threshold_bytes:
            return await _put_streamed(ctx, opened)
        return await _upload_multipart(ctx, opened)
    finally:
        await _close(opened.fd)


async def _put_whole(ctx: UploadContext, body: WholeBody) -> Uploaded:
    """PutObject of a file read whole: it was found consistent before a byte was sent."""
    kind = kind_of(body.data[:HEAD_BYTES])
    ctx.admit(kind)
    etag = await ctx.s3.put_object(
        ctx.bucket,
        ctx.key,
        body.data,
        storage_class=ctx.settings.storage_class,
        metadata=mtime_metadata(body.mtime_ns),
        checksum=body.checksum,
    )
    opened = body.opened
    recorded = body.checksum.recorded(etag)
    return Uploaded(
        body.size, body.mtime_ns, recorded, opened.ino, opened.ctime_ns, opened.read_started_ns, kind=kind
    )


async def _open(path: bytes) -> Opened:
    return await anyio.to_thread.run_sync(open_for_upload, path)


@contextmanager
def _refusal_is_a_change(opened: Opened) -> Iterator[None]:
    """S3 refuses a body that does not match its checksum: after a refusal, a file that was written
    to since its checksum was taken is a change (read it again), not an S3 failure."""
    try:
        yield
    except S3Error:
        check_unchanged(opened.fd, opened.size, opened.mtime_ns)
        raise


async def _close(fd: int) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(os.close, fd)


SendBody = Callable[[BodyStream, PartChecksum], Awaitable[T]]


async def _send_streamed(
    ctx: UploadContext,
    reader: RangeReader,
    opened: Opened,
    offset: int,
    length: int,
    send: SendBody[T],
    head: bytearray | None = None,
) -> tuple[T, PartChecksum]:
    """Checksum a range of the file, check that the file did not change meanwhile, then send the
    range streamed from the file through two leased buffers; returns what `send` returned and the
    checksum. The lease gives the buffers back at its end, or drops them when the send failed or
    was cut off mid-body (the body spoils the lease then). With `head` (the range starts the file),
    the checksum pass fills it and `ctx.admit` is told the file's kind before the send."""
    async with ctx.limits.buffers.lease() as lease:
        async with ctx.limits.checksum_slots:  # a turn first, then one of the file threads
            checksum = await anyio.to_thread.run_sync(
                checksum_range,
                reader.fd,
                offset,
                length,
                ctx.algorithm,
                lease.buffers[0],
                (opened.size, opened.mtime_ns),
                head,
            )
        if head is not None:
            ctx.admit(kind_of(bytes(head)))
        result = await send(BodyStream(reader, offset, length, lease), checksum)
    return result, checksum


async def _put_streamed(ctx: UploadContext, opened: Opened) -> Uploaded:
    """PutObject streamed from the open file.

    A change during the checksum pass is caught before the send; one during the send makes S3
    refuse the body (it no longer matches the checksum) or ends it early. A change after S3 stored
    the body is not a reason to leave the object unrecorded: S3 verified that it holds exactly the
    checksummed bytes, which were the file as of (size, mtime) (the fstat after the checksum pass
    said so), so the row is true of it; the next run sees the newer mtime and uploads again.
    Not recording it would leave the unrecorded version this check exists to avoid."""

    async def send(stream: BodyStream, checksum: PartChecksum) -> str:
        return await ctx.s3.put_object(
            ctx.bucket,
            ctx.key,
            stream,
            storage_class=ctx.settings.storage_class,
            metadata=mtime_metadata(opened.mtime_ns),
            checksum=checksum,
        )

    head = bytearray()
    with _refusal_is_a_change(opened):
        etag, checksum = await _send_streamed(ctx, RangeReader(opened.fd), opened, 0, opened.size, send, head)
    recorded = checksum.recorded(etag)
    return Uploaded(
        opened.size,
        opened.mtime_ns,
        recorded,
        opened.ino,
        opened.ctime_ns,
        opened.read_started_ns,
        kind=kind_of(bytes(head)),
    )


@dataclass(frozen=True, slots=True)
class Begun:
    """A multipart upload to send the file's parts to: new, or an earlier run's continued, with the
    parts S3 holds as the cache recorded them (which are not sent again)."""

    upload_id: str
    part_bytes: int
    held: dict[int, SentPart]
    full_object: bool  # created with ChecksumType=FULL_OBJECT: completed with the whole file's CRC32


async def _upload_multipart(ctx: UploadContext, opened: Opened) -> Uploaded:
    """A multipart upload of the open file by its fstat size; checked unchanged before Complete and
    aborted otherwise, so a body found inconsistent never becomes an object. Cut off by
    cancellation once S3 holds a part of it, it stays open for the next run to continue."""
    s3, limits = ctx.s3, ctx.limits
    # The one read beyond the body's own: the parts are read only after CreateMultipartUpload, and
    # the kind must be known before it. A few bytes of a file of the multipart size, on the open fd.
    kind = kind_of(await anyio.to_thread.run_sync(read_head, opened.fd))
    ctx.admit(kind)
    begun = await _continued_or_created(ctx, opened)
    upload_id, part_bytes = begun.upload_id, begun.part_bytes
    ranges = part_ranges(opened.size, part_bytes)
    reader = RangeReader(opened.fd)
    parts: list[CompletedPart | None] = [None] * len(ranges)

    async def held_in_s3(number: int, offset: int, length: int) -> bool:
        """A part S3 holds as recorded: read and checksummed (for the composite checksum, and to
        see that the file's bytes are still the ones sent), never sent again. A part whose bytes
        differ from its record is sent again."""
        sent = begun.held.get(number)
        if sent is None or sent.size != length:
            return False
        async with limits.buffers.lease() as lease, limits.checksum_slots:
            checksum = await anyio.to_thread.run_sync(
                checksum_range,
                opened.fd,
                offset,
                length,
                ctx.algorithm,
                lease.buffers[0],
                (opened.size, opened.mtime_ns),
            )
        if checksum.digest.hex() != sent.digest_hex:
            return False
        parts[number - 1] = CompletedPart(number, sent.etag, checksum)
        return True

    async def confirmed(part: CompletedPart, length: int) -> None:
        parts[part.number - 1] = part
        part_confirmed(length)  # the window's estimate measures this upload's rate by its parts
        with anyio.CancelScope(shield=True):  # S3 holds it: a signal now must not lose its record
            await ctx.multipart_log.part_sent(
                upload_id, SentPart(part.number, length, part.etag, part.checksum.digest.hex())
            )

    async def send_streamed(number: int, offset: int, length: int) -> None:
        try:
            if await held_in_s3(number, offset, length):
                return

            async def send(stream: BodyStream, checksum: PartChecksum) -> CompletedPart:
                return await s3.upload_part(ctx.bucket, ctx.key, upload_id, number, stream, checksum)

            part, _ = await _send_streamed(ctx, reader, opened, offset, length, send)
            await confirmed(part, length)
        finally:
            limits.part_slots.release()

    async def send_whole(number: int, offset: int, length: int) -> None:
        # Through botocore: the part is read whole, holding its length of the budget.
        try:
            if await held_in_s3(number, offset, length):
                return
            taken = await limits.budget.acquire(length)
            try:
                data = await anyio.to_thread.run_sync(read_range, opened.fd, offset, length)
                # Hashing a part takes tens of ms: in a thread (hashlib releases the GIL).
                checksum = await anyio.to_thread.run_sync(PartChecksum.of, data, ctx.algorithm)
                part = await s3.upload_part(ctx.bucket, ctx.key, upload_id, number, data, checksum)
            finally:
                limits.budget.release(taken)
            await confirmed(part, length)
        finally:
            limits.part_slots.release()

    try:
        with _refusal_is_a_change(opened):
            async with unwrapped_group() as tg:
                for number, (offset, length) in enumerate(ranges, start=1):
                    # A slot first: parts in flight are bounded across all files; the memory each
                    # one holds is taken from the budget inside its task, in the order they started.
                    await limits.part_slots.acquire()
                    tg.start_soon(send_streamed if ctx.streaming else send_whole, number, offset, length)
        check_unchanged(opened.fd, opened.size, opened.mtime_ns)
        completed = [p for p in parts if p is not None]
        lengths = [length for _, length in ranges]
        full_crc32 = whole_crc32([(p.checksum.body_crc32, n) for p, n in zip(completed, lengths, strict=True)])
        await s3.complete_multipart_upload(
            ctx.bucket, ctx.key, upload_id, completed, full_crc32=full_crc32 if begun.full_object else None
        )
    except BaseException as exc:
        cut = isinstance(exc, anyio.get_cancelled_exc_class())
        if cut and (begun.held or any(p is not None for p in parts)):
            # Stopped, not failed: S3 holds parts of it and the cache records them, so the next
            # run continues it. Should no run come back to it, the bucket's lifecycle rule aborts it.
            log.info("the multipart upload of %s stays open; the next run continues it", ctx.key)
            raise
        await _abort(ctx, upload_id)
        raise
    await ctx.multipart_log.ended(upload_id)
    recorded = multipart_recorded(
        [p.checksum for p in completed], lengths, [p.etag for p in completed], full_object=begun.full_object
    )
    return Uploaded(
        opened.size, opened.mtime_ns, recorded, opened.ino, opened.ctime_ns, opened.read_started_ns, part_bytes, kind
    )


def read_head(fd: int) -> bytes:
    """The file's first HEAD_BYTES bytes (fewer for a shorter file)."""
    try:
        return os.pread(fd, HEAD_BYTES, 0)
    except OSError as exc:
        raise os_error(exc) from None


async def _continued_or_created(ctx: UploadContext, opened: Opened) -> Begun:
    """The upload an earlier run left open for this key, continued when its file is the same
    (size, mtime, inode and ctime as recorded, and the same checksum and storage class), with the
    parts ListParts shows as the cache recorded them (number, size, ETag, CRC32); else that upload
    is aborted (the file changed) or forgotten (S3 no longer knows it) and a new one created."""
    earlier = await ctx.multipart_log.open_upload()
    if earlier is not None:
        file = earlier.file
        why = _why_not_continued(ctx, opened, file)
        if why is None and file is not None:
            listed = await ctx.s3.list_parts(ctx.bucket, ctx.key, earlier.upload_id)
            if listed is None:
                log.info(
                    "the multipart upload of %s that an earlier run left open is gone from S3 (the bucket's "
                    "lifecycle rule aborts uploads after %d days); sending the file again from its start",
                    ctx.key,
                    ABORT_INCOMPLETE_DAYS,
                )
                with anyio.CancelScope(shield=True):
                    await ctx.multipart_log.ended(earlier.upload_id)
            else:
                recorded = await ctx.multipart_log.sent_parts(earlier.upload_id)
                held = {n: p for n, p in recorded.items() if _same_part(p, listed.get(n), _parts_algorithm(file))}
                ctx.s3.continue_upload(earlier.upload_id, file.storage_class)
                log.info(
                    "continuing the multipart upload of %s an earlier run left open: %d of its parts are in S3",
                    ctx.key,
                    len(held),
                )
                return Begun(earlier.upload_id, file.part_bytes, held, file.algorithm == FULL_OBJECT_CRC32)
        else:
            log.info("%s: %s since its multipart upload began; starting it again", ctx.key, why)
            await _abort(ctx, earlier.upload_id)
    part_bytes = part_size_for(opened.size, ctx.settings.part_size_bytes)
    upload_id, full_object = await _create_recorded(ctx, opened, part_bytes)
    return Begun(upload_id, part_bytes, {}, full_object)


def _why_not_continued(ctx: UploadContext, opened: Opened, file: UploadFile | None) -> str | None:
    """Why an earlier run's open upload cannot go on with the file as it is now opened, or None."""
    if file is None:
        return "an older version recorded no file"
    if file.size != opened.size or file.mtime_ns != opened.mtime_ns:
        return "the file's size or mtime changed"
    if file.ino is not None and opened.ino and file.ino != opened.ino:
        return "the file was replaced"
    if file.ctime_ns is not None and opened.ctime_ns and file.ctime_ns != opened.ctime_ns:
        return "the file's ctime moved"
    if _parts_algorithm(file) != ctx.algorithm:
        return "the body checksum changed"
    if file.storage_class != ctx.settings.storage_class:
        return "the storage class changed"
    return None


def _parts_algorithm(file: UploadFile) -> str:
    """The body checksum of an upload's parts ("crc32" for a FULL_OBJECT upload too)."""
    return file.algorithm.partition("/")[0]


def _same_part(sent: SentPart, listed: ListedPart | None, algorithm: str) -> bool:
    """Whether S3 holds a part as the cache recorded it: same size and ETag, and the same CRC32
    where both have one."""
    if listed is None or listed.size != sent.size or listed.etag.strip('"') != sent.etag.strip('"'):
        return False
    if algorithm == "crc32" and listed.checksum_crc32 is not None:
        return listed.checksum_crc32 == PartChecksum("crc32", bytes.fromhex(sent.digest_hex)).b64
    return True


async def _create_recorded(ctx: UploadContext, opened: Opened, part_bytes: int) -> tuple[str, bool]:
    """CreateMultipartUpload and the record of its id and file, as one region a cancellation
    cannot split: once S3 has created the upload, it is either recorded (so the next run can
    continue or abort it) or aborted here. Only SIGKILL leaves one unrecorded, and it holds no
    part. botocore's timeouts and retries bound the wait for the reply. Returns the upload id and
    whether S3 keeps a FULL_OBJECT checksum of it."""
    with anyio.CancelScope(shield=True):
        upload_id, full_object = await ctx.s3.create_multipart_upload(
            ctx.bucket,
            ctx.key,
            storage_class=ctx.settings.storage_class,
            metadata=mtime_metadata(opened.mtime_ns),
        )
        file = UploadFile(
            ctx.path,
            opened.size,
            opened.mtime_ns,
            opened.ino or None,
            opened.ctime_ns or None,
            part_bytes,
            FULL_OBJECT_CRC32 if full_object else ctx.algorithm,
            ctx.settings.storage_class,
        )
        try:
            await ctx.multipart_log.started(upload_id, file)
        except BaseException:  # the cache could not record it (a full disk): abort it now
            await _abort(ctx, upload_id, record=False)
            raise
    return upload_id, full_object


async def _abort(ctx: UploadContext, upload_id: str, *, record: bool = True) -> None:
    """Abort a multipart upload, shielded from cancellation and bounded by ABORT_TIMEOUT_S. An
    upload that cannot be aborted keeps its id in the cache, and the next run aborts it."""
    key = ctx.key
    with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_TIMEOUT_S) as deadline:
        try:
            await ctx.s3.abort_multipart_upload(ctx.bucket, key, upload_id)
        except Exception as exc:
            log.warning("could not abort multipart upload of %s: %s; the next run aborts it", key, exc)
            return
    if deadline.cancelled_caught:
        log.warning("aborting the multipart upload of %s took over %d s; the next run aborts it", key, ABORT_TIMEOUT_S)
        return
    if record:
        try:
            with anyio.CancelScope(shield=True):
                await ctx.multipart_log.ended(upload_id)
        except Exception as exc:  # its id stays in the cache; the next run finds the upload gone
            log.warning("the abort of %s's multipart upload was not recorded: %s", key, exc)
