"""Upload one file: a single PutObject for small files, a multipart upload for large ones.

Owns reading files for upload with bounded memory, detecting files that change while read, and
aborting multipart uploads that fail. Small files are read whole in one worker-thread call;
multipart parts are read one at a time with aiofiles and sent with bounded concurrency, so file
contents in memory never exceed the formula in `config.Tuning`.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiofiles
import anyio

from ..disk.entries import DiskFile
from ..errors import unwrapped_group
from ..s3.checksums import PartChecksum, composite_checksum
from ..s3.client import S3
from ..s3.objects import mtime_metadata
from .budget import ByteBudget
from .plan import part_ranges, part_size_for

log = logging.getLogger(__name__)

# An abort of a failed or cancelled multipart upload runs shielded from cancellation, but no longer
# than this (botocore's own timeouts and retries apply inside it).
ABORT_TIMEOUT_S = 90


class FileVanished(Exception):
    """The file disappeared between the walk and the upload."""


class FileChanged(Exception):
    """The file's size or mtime moved while it was read: what was read is not a consistent copy."""


class FileUnreadable(Exception):
    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))
        self.errno_name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What S3 confirmed: the file as it was read, and the checksum S3 verified."""

    size: int
    mtime_ns: int
    checksum: str


@dataclass(frozen=True, slots=True)
class UploadSettings:
    storage_class: str
    multipart_threshold_bytes: int
    part_size_bytes: int


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """What all uploads share: bytes of file contents held at once, and multipart parts in flight."""

    budget: ByteBudget
    part_slots: anyio.Semaphore


def _open_nofollow(path: bytes) -> int:
    # O_NOFOLLOW: a file replaced by a symlink since the walk is not followed.
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))


def _os_error(exc: OSError) -> Exception:
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP:
        return FileVanished(str(exc))
    return FileUnreadable(exc)


def read_whole(path: bytes) -> tuple[bytes, int, int]:
    """Read a small file in one go; returns (data, size, mtime_ns) of a consistent read."""
    try:
        fd = _open_nofollow(path)
    except OSError as exc:
        raise _os_error(exc) from None
    try:
        before = os.fstat(fd)
        chunks = []
        remaining = before.st_size
        while True:
            chunk = os.read(fd, max(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        after = os.fstat(fd)
    except OSError as exc:
        raise _os_error(exc) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise FileChanged("size or modification time changed while the file was read")
    return data, after.st_size, after.st_mtime_ns


def read_and_sum(path: bytes, algorithm: str) -> tuple[bytes, int, int, PartChecksum]:
    data, size, mtime_ns = read_whole(path)
    return data, size, mtime_ns, PartChecksum.of(data, algorithm)


UploadHook = Callable[[str], Awaitable[None]]


async def upload_file(
    s3: S3,
    bucket: str,
    key: str,
    file: DiskFile,
    settings: UploadSettings,
    limits: MemoryLimits,
    on_multipart_started: UploadHook,
    on_multipart_ended: UploadHook,
) -> Uploaded:
    """Upload `file` to bucket/key; raises FileVanished, FileChanged, FileUnreadable or S3Error."""
    if file.size < settings.multipart_threshold_bytes:
        async with limits.budget.hold(file.size):
            # Read and checksum in one worker-thread call: hashing never holds up the event loop.
            data, size, mtime_ns, checksum = await anyio.to_thread.run_sync(
                read_and_sum, file.path, s3.checksum_algorithm
            )
            if size < settings.multipart_threshold_bytes or size == 0:
                await s3.put_object(
                    bucket,
                    key,
                    data,
                    storage_class=settings.storage_class,
                    metadata=mtime_metadata(mtime_ns),
                    checksum=checksum,
                )
                return Uploaded(size, mtime_ns, checksum.cache_value())
            del data  # grew past the threshold since the walk: take the multipart path
    return await _upload_multipart(s3, bucket, key, file, settings, limits, on_multipart_started, on_multipart_ended)


async def _upload_multipart(
    s3: S3,
    bucket: str,
    key: str,
    file: DiskFile,
    settings: UploadSettings,
    limits: MemoryLimits,
    on_started: UploadHook,
    on_ended: UploadHook,
) -> Uploaded:
    try:
        f = await aiofiles.open(file.path, "rb", opener=lambda p, _flags: _open_nofollow(os.fsencode(p)))
    except OSError as exc:
        raise _os_error(exc) from None
    try:
        before = os.fstat(f.fileno())
        size, mtime_ns = before.st_size, before.st_mtime_ns
        part_bytes = part_size_for(size, settings.part_size_bytes)
        ranges = part_ranges(size, part_bytes)
        upload_id = await _create_recorded(s3, bucket, key, settings, mtime_ns, on_started, on_ended)
        parts: list[dict[str, Any]] = [{} for _ in ranges]
        sums: list[PartChecksum | None] = [None] * len(ranges)

        def give_back(taken: int) -> None:
            limits.budget.release(taken)
            limits.part_slots.release()

        async def send_part(number: int, data: bytes, taken: int) -> None:
            try:
                # MD5 of a 16 MiB part takes tens of ms: in a thread (hashlib releases the GIL).
                checksum = await anyio.to_thread.run_sync(PartChecksum.of, data, s3.checksum_algorithm)
                sums[number - 1] = checksum
                parts[number - 1] = await s3.upload_part(bucket, key, upload_id, number, data, checksum)
            finally:
                give_back(taken)

        try:
            async with unwrapped_group() as tg:
                for number, (_offset, length) in enumerate(ranges, start=1):
                    # A slot and the part's bytes from the budget: reading waits while memory is taken.
                    await limits.part_slots.acquire()
                    try:
                        taken = await limits.budget.acquire(length)
                    except BaseException:
                        limits.part_slots.release()
                        raise
                    try:
                        data = await f.read(length)
                    except OSError as exc:
                        give_back(taken)
                        raise _os_error(exc) from None
                    except BaseException:
                        give_back(taken)
                        raise
                    if len(data) != length:
                        give_back(taken)
                        raise FileChanged("the file became shorter while it was read")
                    tg.start_soon(send_part, number, data, taken)
                    del data  # the part task owns the buffer now
            after = os.fstat(f.fileno())
            if (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
                raise FileChanged("size or modification time changed while the file was read")
            await s3.complete_multipart_upload(bucket, key, upload_id, parts)
        except BaseException:
            await _abort(s3, bucket, key, upload_id, on_ended)
            raise
    finally:
        with anyio.CancelScope(shield=True):
            await f.close()
    await on_ended(upload_id)
    checksums = [s for s in sums if s is not None]
    return Uploaded(size, mtime_ns, composite_checksum(checksums))


async def _create_recorded(
    s3: S3,
    bucket: str,
    key: str,
    settings: UploadSettings,
    mtime_ns: int,
    on_started: UploadHook,
    on_ended: UploadHook,
) -> str:
    """CreateMultipartUpload and the record of its id, as one region a cancellation cannot split:
    once S3 has created the upload, it is either recorded (so the next run can abort it) or
    aborted here. Only SIGKILL leaves one open, and then S3 lists it for the next run's sweep.
    botocore's timeouts and retries bound the wait for the reply."""
    with anyio.CancelScope(shield=True):
        upload_id = await s3.create_multipart_upload(
            bucket, key, storage_class=settings.storage_class, metadata=mtime_metadata(mtime_ns)
        )
        try:
            await on_started(upload_id)
        except BaseException:  # the cache could not record it (a full disk): abort it now
            await _abort(s3, bucket, key, upload_id, on_ended, record=False)
            raise
    return upload_id


async def _abort(s3: S3, bucket: str, key: str, upload_id: str, on_ended: UploadHook, *, record: bool = True) -> None:
    """Abort a multipart upload, shielded from cancellation and bounded by ABORT_TIMEOUT_S. An
    upload that cannot be aborted keeps its id in the cache, and the next run aborts it."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_TIMEOUT_S) as deadline:
        try:
            await s3.abort_multipart_upload(bucket, key, upload_id)
        except Exception as exc:
            log.warning("could not abort multipart upload of %s: %s; the next run aborts it", key, exc)
            return
    if deadline.cancelled_caught:
        log.warning("aborting the multipart upload of %s took over %d s; the next run aborts it", key, ABORT_TIMEOUT_S)
        return
    if record:
        try:
            with anyio.CancelScope(shield=True):
                await on_ended(upload_id)
        except Exception as exc:  # its id stays in the cache; the next run finds the upload gone
            log.warning("the abort of %s's multipart upload was not recorded: %s", key, exc)
