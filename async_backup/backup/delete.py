"""Delete keys from one bucket with DeleteObjects, reading the per-key errors in each reply.

Owns batching deletes (at most 1,000 keys a request) and turning the reply into confirmed deletes
and per-key failures. In a versioned bucket a delete only adds a delete marker: the last version
stays restorable until the lifecycle rule expires it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..disk.keys import key_for_path
from ..errors import S3Error
from ..s3.client import S3
from .plan import MAX_DELETE_BATCH, batches


@dataclass(frozen=True, slots=True)
class KeyFailure:
    path: bytes
    code: str
    message: str


async def delete_paths(
    s3: S3,
    bucket: str,
    paths: Sequence[bytes],
    on_deleted: Callable[[bytes], Awaitable[None]],
    on_failed: Callable[[KeyFailure], Awaitable[None]],
    batch_size: int = MAX_DELETE_BATCH,
) -> int:
    """Delete the objects of `paths` batch by batch; returns how many S3 confirmed."""
    confirmed = 0
    for batch in batches(paths, batch_size):
        by_key = {key_for_path(p): p for p in batch}
        try:
            deleted, errors = await s3.delete_objects(bucket, list(by_key))
        except S3Error as exc:
            for path in batch:
                await on_failed(KeyFailure(path, exc.code, exc.message))
            continue
        for key in deleted:
            if (done := by_key.get(key)) is not None:
                await on_deleted(done)
                confirmed += 1
        for key, code, message in errors:
            if (refused := by_key.get(key)) is not None:
                await on_failed(KeyFailure(refused, code or "DeleteError", message))
    return confirmed
