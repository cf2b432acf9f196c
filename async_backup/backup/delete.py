"""Delete keys from one bucket with DeleteObjects, reading the per-key errors in each reply.

Owns batching deletes (at most 1,000 keys a request), splitting a batch S3 refuses as malformed
so the other keys go through, deleting a key that releases before the XML rule gave its path
(`keys.superseded_key`), and turning the replies into confirmed deletes and per-key failures. In
a versioned bucket a delete only adds a delete marker: the last version stays restorable until
the lifecycle rule expires it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..disk.keys import key_for_path, superseded_key
from ..errors import S3Error
from ..s3.client import S3
from .plan import MAX_DELETE_BATCH, batches

log = logging.getLogger(__name__)

# Codes by which S3 refuses a DeleteObjects request for its body as a whole: a key the server
# cannot parse in XML (MalformedXML), or a body too large for it. Halving the batch isolates such
# a key, and the others go through. Any other whole-request failure (a server error after
# botocore's retries, a lost connection, a missing bucket) is not about one key: its batch fails.
SPLIT_CODES = frozenset({"MalformedXML", "MaxMessageLengthExceeded", "EntityTooLarge"})

KeyRefusal = tuple[str, str, str]  # (key, code, message)


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
        deleted, errors = await delete_keys(s3, bucket, list(by_key))
        for key in deleted:
            if (done := by_key.get(key)) is None:
                continue
            failure = await delete_superseded(s3, bucket, done, key)
            if failure is not None:
                await on_failed(failure)
                continue
            await on_deleted(done)
            confirmed += 1
        for key, code, message in errors:
            if (refused := by_key.get(key)) is not None:
                await on_failed(KeyFailure(refused, code or "DeleteError", message))
    return confirmed


async def delete_keys(s3: S3, bucket: str, keys: Sequence[str]) -> tuple[list[str], list[KeyRefusal]]:
    """DeleteObjects for up to 1,000 keys; returns the keys deleted and (key, code, message) per
    failed key. A batch refused as malformed is sent again in halves, down to single keys, and a
    single key still refused goes alone by DeleteObject, which carries the key in the URL."""
    try:
        return await s3.delete_objects(bucket, keys)
    except S3Error as exc:
        if exc.code not in SPLIT_CODES:
            return [], [(k, exc.code, exc.message) for k in keys]
        if len(keys) == 1:
            log.warning("DeleteObjects refused the key %s (%s); deleting it by DeleteObject", keys[0], exc.code)
            return await _delete_one(s3, bucket, keys[0])
    middle = len(keys) // 2
    first_deleted, first_errors = await delete_keys(s3, bucket, keys[:middle])
    second_deleted, second_errors = await delete_keys(s3, bucket, keys[middle:])
    return first_deleted + second_deleted, first_errors + second_errors


async def delete_superseded(s3: S3, bucket: str, path: bytes, key: str) -> KeyFailure | None:
    """Delete the key an earlier release gave `path`, if it had another (`keys.superseded_key`):
    its object would otherwise stay current beside the one under `key`. By DeleteObject, since
    that old key holds a character no XML body can carry. None when done or not needed."""
    old = superseded_key(path, key)
    if old is None:
        return None
    try:
        await s3.delete_object(bucket, old)
    except S3Error as exc:
        return KeyFailure(path, exc.code, f"{exc.message} (the key an earlier release gave this file)")
    return None


async def _delete_one(s3: S3, bucket: str, key: str) -> tuple[list[str], list[KeyRefusal]]:
    try:
        await s3.delete_object(bucket, key)
    except S3Error as exc:
        return [], [(key, exc.code, exc.message)]
    return [key], []
