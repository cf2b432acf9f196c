"""Bucket names: the stable rule, the old script's legacy rule, and the checks S3 puts on a name.

Owns the naming rules only; pure string and path arithmetic (os.path, no filesystem access).
Both `config` (the bucket prefix check) and `targets` (naming each target) use it, so neither
imports the other. Must not import anything outside `errors`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError

BUCKET_MIN_LEN = 3


BUCKET_MAX_LEN = 63  # [S3 user guide, "General purpose bucket naming rules"]


HASH_LEN = 8


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")


_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")


_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", "--x-s3", "--table-s3")


_PREFIX_MAX_LEN = 40  # leaves room for a readable slug and the hash


def bucket_name_problem(name: str) -> str | None:
    """Why `name` is not a valid S3 bucket name, or None when it is."""
    if not BUCKET_MIN_LEN <= len(name) <= BUCKET_MAX_LEN:
        return f"must be {BUCKET_MIN_LEN} to {BUCKET_MAX_LEN} characters long"
    if not _BUCKET_RE.match(name):
        return "may hold only lowercase letters, digits and hyphens, and must start and end with a letter or digit"
    if name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        return "uses a prefix or suffix that S3 reserves"
    return None


def check_bucket_prefix(prefix: str, where: str) -> None:
    if not prefix:
        return
    if len(prefix) > _PREFIX_MAX_LEN or not re.match(r"^[a-z0-9][a-z0-9-]*$", prefix):
        raise ConfigError(
            f"{where}: backup.bucket_prefix {prefix!r} must be at most {_PREFIX_MAX_LEN} lowercase letters, "
            "digits and hyphens, starting with a letter or digit"
        )
    if prefix.startswith(_RESERVED_PREFIXES):
        raise ConfigError(f"{where}: backup.bucket_prefix {prefix!r} starts with a prefix that S3 reserves")


def stable_bucket_name(prefix: str, path: str) -> str:
    """`prefix` + a slug of the path + 8 hex digits of its SHA-256.

    Depends on nothing but the prefix and the target's own path, so adding or removing other
    targets never renames a bucket; the hash keeps /a/b-c and /a/b/c apart. A slug too long for
    63 characters keeps its end, the most specific part of the path.
    """
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:HASH_LEN]
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")
    room = BUCKET_MAX_LEN - len(prefix) - HASH_LEN - 1
    if len(slug) > room:
        slug = slug[len(slug) - room :].lstrip("-")
    name = f"{prefix}{slug}-{digest}" if slug else f"{prefix}{digest}"
    if len(name) < BUCKET_MIN_LEN or not name[0].isalnum():
        name = f"b{name}"
    return name


ACCOUNT_TAG_LEN = 8


def account_tag(account_id: str) -> str:
    """8 hex digits of the SHA-256 of the AWS account id: the same on every machine with the
    account's credentials, and no account id spelled out in bucket names (they are public)."""
    return hashlib.sha256(account_id.encode("ascii")).hexdigest()[:ACCOUNT_TAG_LEN]


def account_prefix(prefix: str, tag: str) -> str:
    """The default prefix made unique to an AWS account: `backup-` becomes `backup-<tag>-`."""
    return f"{prefix}{tag}-"


def cache_bucket_of(prefix: str) -> str:
    """The default cache bucket of a prefix: `<prefix>cache-` + 8 hex digits of the prefix's SHA-256."""
    return f"{prefix}cache-{hashlib.sha256(prefix.encode('utf-8')).hexdigest()[:HASH_LEN]}"


def _tag_in(name: str, prefix: str) -> str | None:
    """The account tag `name` carries after `prefix`, if it has the shape of one."""
    tag = name[len(prefix) : len(prefix) + ACCOUNT_TAG_LEN]
    if not name.startswith(prefix) or name[len(prefix) + ACCOUNT_TAG_LEN : len(prefix) + ACCOUNT_TAG_LEN + 1] != "-":
        return None
    return tag if re.fullmatch(r"[0-9a-f]+", tag) and len(tag) == ACCOUNT_TAG_LEN else None


def is_default_name(bucket: str, prefix: str, path: str) -> bool:
    """Whether `bucket` is a default name of `path` under `prefix`: the stable name, or the stable
    name under the prefix with some account's tag (which the name itself carries, so a recorded
    name is recognised without asking AWS for the account)."""
    if bucket == stable_bucket_name(prefix, path):
        return True
    tag = _tag_in(bucket, prefix)
    return tag is not None and bucket == stable_bucket_name(account_prefix(prefix, tag), path)


def is_default_bucket(bucket: str, path: str) -> bool:
    """Whether `bucket` looks like the stable name of `path` under any prefix: it ends with the
    path's hash, which no name an operator picks by hand carries. For showing a bucket only where
    it is not the default (the Teams card), when the prefix is not at hand."""
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:HASH_LEN]
    return bucket.endswith(digest) and (len(bucket) == HASH_LEN or bucket[-HASH_LEN - 1] == "-")


def is_default_cache_bucket(bucket: str, prefix: str) -> bool:
    """Whether `bucket` is the default cache bucket of `prefix`, with or without an account's tag."""
    if bucket == cache_bucket_of(prefix):
        return True
    tag = _tag_in(bucket, prefix)
    return tag is not None and bucket == cache_bucket_of(account_prefix(prefix, tag))


@dataclass(frozen=True, slots=True)
class AccountNames:
    """What one run learnt for naming on AWS with the default prefix.

    `owned`: the buckets among the names asked about that exist and belong to this account (an
    installation's buckets made before names carried a tag keep their names). `tag`: the account's
    tag, None when it was not needed or could not be had (`problem` says why; a target that needs
    a new name then fails alone). `cache_bucket`: the cache bucket in use or to be made, None when
    it needs the tag and there is none. `offline`: a dry run, which asks nothing."""

    tag: str | None = None
    problem: str | None = None
    owned: frozenset[str] = frozenset()
    cache_bucket: str | None = None
    offline: bool = False


LEGACY_PREFIX = "images--"


def legacy_name(target: str, common: str) -> str:
    """The old script's name of a target: its path relative to the common path (`.` when alone)."""
    return os.path.relpath(target, common)


def legacy_bucket_name(path: str, common: str) -> str:
    """The old script's bucket: "images--" + the name, every character outside [a-zA-Z0-9]
    replaced by "-", lowercased (`archives/Archive 3` -> `images--archives-archive-3`)."""
    return legacy_bucket_of(legacy_name(path, common))


def legacy_bucket_of(name: str) -> str:
    """The old script's bucket of a target's name (as its cache file `db/<quote_plus(name)>.db` keeps it)."""
    return LEGACY_PREFIX + re.sub(r"[^a-zA-Z0-9]", "-", name).lower()


def legacy_common(paths: Sequence[str]) -> str:
    return os.path.commonpath(list(paths)) if paths else "/"


def infer_common(path: str, bucket: str) -> str | None:
    """The common path under which `path` got the legacy bucket `bucket`, if any ancestor gives it.

    Lets a cache that recorded legacy names (but not the common path) name a new subfolder the way
    its siblings were named."""
    candidate = path
    while True:
        parent = os.path.dirname(candidate)
        if legacy_bucket_name(path, parent) == bucket:
            return parent
        if parent == candidate:
            return None
        candidate = parent
