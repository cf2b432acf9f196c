"""Multipart uploads an earlier run of this installation left open: continued, or aborted
instead of paid for.

Owns the cache's record of a key's multipart uploads (`CachedUploads`, which `upload` continues
an upload from) and the sweep at a run's start over the uploads this cache recorded: one whose
file is still as it was when the upload began stays open for its file's upload to continue; the
others (the file changed or is gone, or an older version recorded no file) are aborted, each
abort recorded in the cache. A target whose folder is missing now (an unmounted share) keeps its
uploads for a run that sees it again. Only uploads this cache recorded: another installation
(another cache directory) may write to the same bucket, and an upload it has in flight looks just
like a leftover in ListMultipartUploads, which shows key, id, initiator and date but no metadata,
so no mark of ours could tell them apart. Uploads this cache never recorded are left to the
bucket's lifecycle rule (`s3.buckets.ABORT_INCOMPLETE_DAYS`), which is also the last resort for
one of ours no run comes back to. Of ours, only one whose CreateMultipartUpload reply a SIGKILL
cut off from its record is unrecorded, and it holds no part: parts are sent only after the id is
committed. Talks to S3 through `s3.S3` only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import anyio

from ..cache.records import OpenUpload, SentPart, UploadFile
from ..cache.store import StateStore
from ..cache.writes import CacheWrites
from ..errors import S3Error
from ..s3.client import S3
from .runs import TargetRun
from .upload import MultipartLog

log = logging.getLogger(__name__)


class CachedUploads(MultipartLog):
    """One key's multipart uploads as the cache records them: each write committed at once."""

    def __init__(self, store: StateStore, writes: CacheWrites, bucket: str, key: str) -> None:
        self.store = store
        self.writes = writes
        self.bucket = bucket
        self.key = key

    async def open_upload(self) -> OpenUpload | None:
        found = await anyio.to_thread.run_sync(self.store.open_uploads, self.bucket, self.key)
        return found[-1] if found else None  # the newest; the run's sweep aborted older ones

    async def sent_parts(self, upload_id: str) -> dict[int, SentPart]:
        return await anyio.to_thread.run_sync(self.store.sent_parts, self.bucket, upload_id)

    async def started(self, upload_id: str, file: UploadFile) -> None:
        # Committed at once, not batched: a crash right after must still leave the id behind.
        await self.writes.upload_started(self.bucket, self.key, upload_id, file)

    async def part_sent(self, upload_id: str, part: SentPart) -> None:
        await self.writes.part_sent(self.bucket, upload_id, part)

    async def ended(self, upload_id: str) -> None:
        # Committed directly too, not through the writer's stream: an abort that finishes after a
        # signal may find the writer gone.
        await self.writes.upload_ended(self.bucket, upload_id)


def still_as_recorded(file: UploadFile) -> bool:
    """Whether the file an open upload was created for is still as it was then (lstat)."""
    try:
        st = os.stat(file.path, follow_symlinks=False)
    except OSError:
        return False
    return (
        st.st_size == file.size
        and st.st_mtime_ns == file.mtime_ns
        and (file.ino is None or st.st_ino == file.ino)
        and (file.ctime_ns is None or st.st_ctime_ns == file.ctime_ns)
    )


def to_continue(uploads: Sequence[OpenUpload]) -> set[str]:
    """The ids of the uploads a run may continue: per key the newest, when its file is unchanged."""
    newest = {u.key: u for u in uploads}  # oldest first: the last one of a key wins
    return {u.upload_id for u in newest.values() if u.file is not None and still_as_recorded(u.file)}


class CrashCleanup:
    def __init__(self, s3: S3, store: StateStore) -> None:
        self.s3 = s3
        self.store = store
        self.writes = CacheWrites(store)

    async def abort_leftover_uploads(self, runs: Sequence[TargetRun]) -> None:
        """Multipart uploads an earlier run left open (a crash, a signal, its window): those it can
        continue stay open, the others are aborted."""
        for run in runs:
            if run.target.missing:
                continue  # its files cannot be looked at now: a run that sees them decides
            bucket = run.target.bucket
            leftovers = await anyio.to_thread.run_sync(self.store.open_uploads, bucket)
            kept = await anyio.to_thread.run_sync(to_continue, leftovers)
            if kept:
                log.info("%d multipart uploads an earlier run left open in %s are continued", len(kept), bucket)
            for upload in leftovers:
                if upload.upload_id in kept:
                    continue
                try:
                    await self.s3.abort_multipart_upload(bucket, upload.key, upload.upload_id)
                except S3Error as exc:
                    if exc.code != "NoSuchBucket":
                        log.warning("could not abort an earlier multipart upload of %s: %s", upload.key, exc)
                        continue
                await self.writes.upload_ended(bucket, upload.upload_id)
                log.info("aborted a multipart upload of %s left by an earlier run", upload.key)
