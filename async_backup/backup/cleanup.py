"""Crash clean-up: multipart uploads an earlier run of this installation left open, aborted
instead of paid for.

Owns aborting the uploads whose ids this cache recorded, each abort recorded in the cache. Only
those: another installation (another cache directory) may write to the same bucket, and an upload
it has in flight looks just like a leftover in ListMultipartUploads, which shows key, id, initiator
and date but no metadata, so no mark of ours could tell them apart. Uploads this cache never
recorded are left to the bucket's lifecycle rule (`s3.buckets.ABORT_INCOMPLETE_DAYS`). Of ours
that is only one whose CreateMultipartUpload reply a SIGKILL cut off from its record, and it holds
no part: parts are sent only after the id is committed. Talks to S3 through `s3.S3` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from ..cache.store import StateStore
from ..cache.writes import CacheWrites
from ..errors import S3Error
from ..s3.client import S3
from .runs import TargetRun

log = logging.getLogger(__name__)


class CrashCleanup:
    def __init__(self, s3: S3, store: StateStore) -> None:
        self.s3 = s3
        self.store = store
        self.writes = CacheWrites(store)

    async def abort_leftover_uploads(self, runs: Sequence[TargetRun]) -> None:
        """Multipart uploads an earlier run started but could not finish or abort (a crash)."""
        for run in runs:
            leftovers = await anyio.to_thread.run_sync(self.store.open_uploads, run.target.bucket)
            for key, upload_id in leftovers:
                try:
                    await self.s3.abort_multipart_upload(run.target.bucket, key, upload_id)
                except S3Error as exc:
                    if exc.code != "NoSuchBucket":
                        log.warning("could not abort an earlier multipart upload of %s: %s", key, exc)
                        continue
                await self.writes.upload_ended(run.target.bucket, upload_id)
                log.info("aborted a multipart upload of %s left by an earlier run", key)
