"""Default bucket names on AWS that no other account can hold: what the run learns before naming.

Owns the look-up behind `Config.account_names`. On AWS bucket names are global, so with the
default prefix two organisations backing up the same `/srv/images/...` would meet on one name.
A new default name therefore carries the account's tag (from STS GetCallerIdentity, found again
on any machine with the same credentials), while a name in use is kept: a recorded one (the cache
knows it; a tagged name carries its tag), or the untagged name where this account owns that bucket
(an installation made before names carried a tag). The same for the cache bucket, whose choice
is recorded in the cache's meta once a snapshot reached it.

Requests, only where a name must be settled (a target without a recorded name, or no cache
bucket recorded): one ListBuckets narrowed to the prefix, and one GetCallerIdentity unless every
name asked about is an untagged bucket of this account. Where ListBuckets is denied, one
HeadBucket with ExpectedBucketOwner per name asked about. Imports the S3 adapter and the naming
rules, nothing of the commands.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import anyio

from ..errors import S3Error
from ..s3.client import caller_account, open_s3
from ..settings.config import Config
from ..settings.naming import (
    AccountNames,
    account_prefix,
    account_tag,
    cache_bucket_of,
    is_default_cache_bucket,
    stable_bucket_name,
)
from ..settings.targets import paths_needing_names
from .snapshots import host_cache_bucket_name

log = logging.getLogger(__name__)


def with_account_names(
    config: Config,
    known: Mapping[str, tuple[str, str | None]],
    recorded_cache: str | None,
    *,
    offline: bool = False,
    needing: list[str] | None = None,
) -> Config:
    """`config` with what AWS says about its default names (unchanged where names do not depend
    on the account). `offline` (a dry run) asks nothing: names in use are kept, a target without
    one is shown under its untagged name."""
    if not config.account_scoped:
        return config
    if offline:
        return dataclasses.replace(config, account_names=AccountNames(offline=True))
    paths = paths_needing_names(config, known) if needing is None else needing
    names = anyio.run(learn_account_names, config, paths, recorded_cache)
    return dataclasses.replace(config, account_names=names)


async def learn_account_names(config: Config, needing: list[str], recorded_cache: str | None) -> AccountNames:
    prefix = config.bucket_prefix
    in_use = None
    if not config.cache_bucket and recorded_cache and is_default_cache_bucket(recorded_cache, prefix):
        in_use = recorded_cache
    cache_settled = bool(config.cache_bucket) or in_use is not None
    if not needing and cache_settled:
        return AccountNames(cache_bucket=in_use)
    untagged = {stable_bucket_name(prefix, p) for p in needing}
    asked = set(untagged)
    if not cache_settled:
        asked |= {cache_bucket_of(prefix), host_cache_bucket_name(config)}
    account: str | None = None
    problem: str | None = None
    async with open_s3(config.aws, config.tuning) as s3:
        try:
            mine = await s3.own_buckets(prefix)
        except S3Error as exc:
            # Unknown is not "none": a name in use must never be replaced by a new one.
            log.warning("which buckets this account owns could not be learnt: %s", exc)
            return AccountNames(problem=f"ListBuckets failed: {exc}", cache_bucket=in_use)
        wanted_untagged = untagged | (set() if cache_settled else {cache_bucket_of(prefix)})
        if mine is None or not wanted_untagged <= mine:
            try:
                account = await caller_account(config.aws, config.tuning)
            except S3Error as exc:
                problem = str(exc)
                log.warning("the AWS account could not be learnt, so no new default bucket name can be made: %s", exc)
        if mine is None:
            # No s3:ListAllMyBuckets: ask per name whether it is this account's bucket.
            if account is None:
                return AccountNames(problem=problem, cache_bucket=in_use)
            try:
                mine = {b for b in sorted(asked) if await s3.bucket_of_account(b, account)}
            except S3Error as exc:
                return AccountNames(problem=f"HeadBucket failed: {exc}", cache_bucket=in_use)
    tag = account_tag(account) if account else None
    owned = frozenset(asked & mine)
    cache = in_use
    if cache is None and not config.cache_bucket:
        if cache_bucket_of(prefix) in owned:
            cache = cache_bucket_of(prefix)
        elif tag:
            cache = cache_bucket_of(account_prefix(prefix, tag))
    new = sorted(p for p in needing if stable_bucket_name(prefix, p) not in owned)
    if tag and new:
        log.info(
            "%d new targets get bucket names that carry this AWS account's tag (%s...)",
            len(new),
            account_prefix(prefix, tag),
        )
    return AccountNames(tag=tag, problem=problem, owned=owned, cache_bucket=cache)
