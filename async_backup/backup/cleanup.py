"""Crash clean-up: multipart uploads an earlier run left open, aborted instead of paid for.

Owns finding them (the ids the cache recorded, and a bucket's own list of uploads begun before
this run) and aborting them, each abort recorded in the cache. Talks to S3 through `s3.S3` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from ..cache.store import StateStore, UploadEnded
from ..errors import S3Error
from ..s3.client import S3
from .runs import TargetRun

log = logging.getLogger(__name__)

# Clocks of server and client may differ a little; uploads this much older than the run are stale.
STALE_UPLOAD_GRACE_S = 60.0


class CrashCleanup:
    def __init__(self, s3: S3, store: StateStore, started_at: float) -> None:
        self.s3 = s3
        self.store = store
        self.started_at = started_at

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
                await anyio.to_thread.run_sync(self.store.apply, [UploadEnded(run.target.bucket, upload_id)])

    async def abort_stale_uploads(self, bucket: str) -> None:
        """Multipart uploads in our bucket that began before this run are leftovers of a crash
        (the lock rules out a concurrent run of ours): abort them instead of paying for them."""
        for key, upload_id, initiated in await self.s3.list_multipart_uploads(bucket):
            if initiated and initiated >= self.started_at - STALE_UPLOAD_GRACE_S:
                continue
            await self.s3.abort_multipart_upload(bucket, key, upload_id)
            await anyio.to_thread.run_sync(self.store.apply, [UploadEnded(bucket, upload_id)])
            log.info("aborted a multipart upload of %s left by an earlier run", key)
