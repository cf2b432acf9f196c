"""Adopt the old script's cache of one target: what it recorded and the bucket still holds becomes ours.

Owns the import step. Each page of the bucket's listing (one ListObjectsV2 request per 1,000
objects) is looked up in the old cache; a listed key the old cache holds becomes a row with the
size S3 listed and the float st_mtime the old script saw, which the planner compares at that
float precision. A key the old cache holds but S3 does not (a failed upload, a delete) stays out,
so its file is uploaded. Memory is one page at a time, whatever the bucket's size.
Imports S3 only through `s3.S3`; the old cache only through `legacy`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import anyio

from .errors import S3Error
from .keys import ESCAPED_KEY_MARK, path_for_key
from .legacy import OldCache
from .s3 import S3
from .state import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Adoption:
    """What adopting one old cache did."""

    old_cache: Path
    old_rows: int  # rows in the old cache
    adopted: int  # rows that S3's listing confirmed and the cache now holds
    listed: int  # objects in the bucket's listing
    requests: int  # ListObjectsV2 requests sent


async def adopt_old_cache(s3: S3, store: StateStore, bucket: str, old: OldCache) -> Adoption:
    """Import `old` into `store` for `bucket`, checked against the bucket's current listing."""
    old_rows = await anyio.to_thread.run_sync(old.count)
    adopted = listed = requests = 0
    try:
        async for page in s3.list_current(bucket):
            requests += 1
            listed += len(page)
            # The old script's keys are str(path).lstrip("/"); keys in our escaped form are ours.
            sizes = {"/" + o.key: o.size for o in page if not o.key.startswith(ESCAPED_KEY_MARK)}
            stamps = await anyio.to_thread.run_sync(old.lookup, list(sizes))
            rows = [(path_for_key(key[1:]), sizes[key], ts) for key, ts in stamps.items()]
            if rows:
                adopted += await anyio.to_thread.run_sync(store.insert_adopted, bucket, rows)
    except S3Error as exc:
        if exc.code != "NoSuchBucket":
            raise
        requests += 1  # the bucket was never created: nothing of the old cache reached S3
    return Adoption(old.path, old_rows, adopted, listed, requests)
