"""The cache snapshot after a run: due when the run changed the cache, uploaded with the log's tail.

Owns the `snapshot_due` decision and the upload to the cache bucket; a failed upload is one
failure of kind CACHE_BACKUP and leaves the snapshot due. What a snapshot is, where it goes and
how it is packed live in `snapshots`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import anyio

from ..cache.store import StateStore
from ..cache.writes import CacheWrites
from ..errors import Failure, FailureCollector, FailureKind, S3Error
from ..report.summary import format_bytes
from ..s3.buckets import ensure_bucket
from ..s3.client import S3
from ..settings.config import Config
from .snapshots import CACHE_BUCKET, SNAPSHOT_DUE, cache_bucket_name, log_key, log_tail, pack_snapshot, snapshot_key

log = logging.getLogger(__name__)


async def snapshot_due(store: StateStore, changed: bool) -> bool:
    """A snapshot is due when the cache changed since the last one that reached S3. A no-op
    night then costs no request beyond the first bucket check."""
    if changed:
        await CacheWrites(store).set_meta(SNAPSHOT_DUE, "1")
        return True
    return await anyio.to_thread.run_sync(store.get_meta, SNAPSHOT_DUE) != "0"


async def upload_snapshot(
    s3: S3, config: Config, store: StateStore, collector: FailureCollector, log_path: Path, log_max_bytes: int
) -> None:
    """A consistent snapshot of the cache, and the log, to their own non-versioned bucket."""
    bucket = cache_bucket_name(config)
    if bucket is None:
        names = config.account_names
        problem = names.problem if names is not None else "not looked up"
        collector.add(
            Failure(
                FailureKind.CACHE_BACKUP,
                "cache",
                "cache bucket",
                "the cache snapshot was not uploaded: on AWS the default cache bucket must carry the account's tag, "
                f"which could not be learnt ({problem}); set backup.bucket_prefix (or backup.cache_bucket) in "
                "config.json to a name unique to your organisation, or let this machine reach AWS STS",
            )
        )
        return
    try:
        with tempfile.TemporaryDirectory(prefix="async-backup-") as tmp:
            snapshot = Path(tmp) / "snapshot.db"
            packed = await anyio.to_thread.run_sync(pack_snapshot, store, snapshot)
            chosen = bool(config.cache_bucket)
            await ensure_bucket(s3, bucket, config.noncurrent_days, versioned=False, chosen=chosen)
            key = snapshot_key(store.cache_dir)
            sent = await s3.put_plain_file(bucket, key, str(packed))
            if log_path.exists():  # noqa: ASYNC240 - one stat of a local file, as it always was
                log_body = await anyio.to_thread.run_sync(log_tail, log_path, log_max_bytes)
                await s3.put_plain_object(bucket, log_key(store.cache_dir), log_body)
    except (S3Error, OSError) as exc:
        collector.add(
            Failure(
                FailureKind.CACHE_BACKUP,
                "cache",
                f"s3://{bucket}",
                f"the cache snapshot was not uploaded: {exc}",
            )
        )
    else:
        writes = CacheWrites(store)
        await writes.set_meta(SNAPSHOT_DUE, "0")
        if not config.cache_bucket:  # the default one in use: later runs need not ask AWS for it
            await writes.set_meta(CACHE_BUCKET, bucket)
        log.info("cache snapshot (%s) uploaded to s3://%s/%s", format_bytes(sent), bucket, key)
