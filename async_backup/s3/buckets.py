"""Bucket setup: created on first need, private, versioned, with our lifecycle rules, and with
Object Lock's default retention where backup.object_lock asks for it.

Owns what a target bucket must look like. Checked and set once per bucket per run by the
pipeline, never per file, and never in a dry run.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import S3Error
from ..settings.config import ObjectLock
from .client import S3, foreign_bucket_message

log = logging.getLogger(__name__)

RULE_PREFIX = "async-backup-"
# Incomplete multipart uploads cost storage until aborted; a week covers any run.
ABORT_INCOMPLETE_DAYS = 7
DENIED_CODES = ("AccessDenied", "403", "Forbidden")
FOREIGN_CODE = "BucketOwnedByAnotherAccount"


class ObjectLockRefused(S3Error):
    """The bucket is set up and usable, but S3 refused to turn Object Lock on in it: the target
    is backed up without, and the run says so."""


async def owned_elsewhere(s3: S3, bucket: str, denied: S3Error) -> bool:
    """Whether `denied`, S3's answer to a request on `bucket`, means the bucket is another
    account's: AWS denies such a bucket (unless its policy shares it), and one of our own would be
    in the credentials' bucket list. False when that list is denied too (unknown)."""
    if denied.code not in DENIED_CODES:
        return False
    try:
        return await s3.owns_bucket(bucket) is False
    except S3Error:
        return False


def lifecycle_rules(noncurrent_days: int) -> list[dict[str, Any]]:
    """Our rules: old versions expire, stale multipart uploads are aborted, and delete markers
    left with no versions behind them are removed."""
    everything = {"Prefix": ""}
    return [
        {
            "ID": f"{RULE_PREFIX}noncurrent-versions",
            "Status": "Enabled",
            "Filter": everything,
            "NoncurrentVersionExpiration": {"NoncurrentDays": noncurrent_days},
        },
        {
            "ID": f"{RULE_PREFIX}incomplete-uploads",
            "Status": "Enabled",
            "Filter": everything,
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_DAYS},
        },
        {
            "ID": f"{RULE_PREFIX}expired-delete-markers",
            "Status": "Enabled",
            "Filter": everything,
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        },
    ]


def _rule_core(rule: dict[str, Any]) -> dict[str, Any]:
    """The parts of a rule we set, for comparing with what the server returns."""
    keys = ("ID", "Status", "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload", "Expiration")
    core = {k: rule[k] for k in keys if k in rule}
    if "NoncurrentVersionExpiration" in core:
        core["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": core["NoncurrentVersionExpiration"].get("NoncurrentDays")
        }
    return core


async def ensure_bucket(
    s3: S3,
    bucket: str,
    noncurrent_days: int,
    *,
    versioned: bool = True,
    chosen: bool = False,
    object_lock: ObjectLock | None = None,
) -> bool:
    """Make `bucket` exist with our settings; returns True when it was created now.

    A generated name found on another account's bucket is a collision (names are global on AWS);
    a name the operator `chosen` (pinned) may be another account's bucket shared on purpose, a
    central backup account's, say. With `object_lock` (versioned buckets only) the bucket gets
    Object Lock and its default retention last: ObjectLockRefused when S3 will not, with the
    bucket otherwise ready."""
    try:
        status = None if s3.known_missing(bucket) else await s3.bucket_versioning(bucket)
    except S3Error as exc:
        if await owned_elsewhere(s3, bucket, exc):
            raise S3Error(FOREIGN_CODE, foreign_bucket_message(bucket)) from None
        raise
    created = status is None
    locking = object_lock is not None and versioned
    if created:
        await s3.create_bucket(bucket, object_lock=locking)
        await s3.block_public_access(bucket)
        log.info("created bucket %s", bucket)
    elif not chosen and await s3.owns_bucket(bucket) is False:
        # Another account's bucket under our generated name: never configure or upload into it.
        raise S3Error(FOREIGN_CODE, foreign_bucket_message(bucket))
    if not versioned:
        return created
    if status != "Enabled":
        if not created:
            log.warning("bucket %s had versioning %s; enabling it", bucket, status or "off")
        await s3.enable_versioning(bucket)
    wanted = lifecycle_rules(noncurrent_days)
    current = [] if created else await s3.lifecycle_rules(bucket)
    ours = [_rule_core(r) for r in current if str(r.get("ID", "")).startswith(RULE_PREFIX)]
    if sorted(map(repr, ours)) != sorted(repr(_rule_core(r)) for r in wanted):
        foreign = [r for r in current if not str(r.get("ID", "")).startswith(RULE_PREFIX)]
        await s3.put_lifecycle_rules(bucket, foreign + wanted)
    if object_lock is not None:
        await _ensure_lock(s3, bucket, object_lock, created)
    return created


async def _ensure_lock(s3: S3, bucket: str, lock: ObjectLock, created: bool) -> None:
    """Object Lock on with our default retention: read first, so a run that finds it set sends
    nothing more. An existing versioned bucket gets it through PutObjectLockConfiguration where the
    server allows that (AWS does since 2023; some servers want the bucket created with it)."""
    enabled = False
    try:
        if not created:
            enabled, mode, days = await s3.object_lock(bucket)
            if enabled:
                s3.mark_locked(bucket)  # locked already: its bodies need their checksum headers whatever comes
            if enabled and (mode, days) == (lock.mode, lock.days):
                return
        await s3.put_object_lock(bucket, lock.mode, lock.days)
    except S3Error as exc:
        if enabled:
            raise ObjectLockRefused(
                exc.code,
                f"bucket {bucket} has Object Lock, but its default retention could not be set to {lock.mode} "
                f"{lock.days} days ({exc.code}: {exc.message}); new versions keep the bucket's own: change it "
                "in the S3 console or make backup.object_lock match it",
            ) from None
        raise ObjectLockRefused(
            exc.code,
            f"Object Lock could not be turned on in bucket {bucket} ({exc.code}: {exc.message}); the target was "
            "backed up without it: turn Object Lock on for the bucket in the S3 console (or allow "
            "s3:PutBucketObjectLockConfiguration, see the README's IAM policy), pin a new bucket for the folder "
            '({"path": ..., "bucket": ...} in backup.folders: new buckets are created locked), '
            "or remove backup.object_lock",
        ) from None
    s3.mark_locked(bucket)
