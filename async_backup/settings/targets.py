"""Turn configured folders and roots into targets with stable, valid, collision-free bucket names.

Owns the bucket naming rules (stable and legacy) and the checks on them. `discover_targets`
lists each root's direct subfolders and checks which folders exist; everything else here is pure.
Imports nothing of S3.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..cache.legacy import infer_common, legacy_bucket_name, legacy_common, legacy_name, legacy_target_list
from ..errors import ConfigError
from .config import Config

BUCKET_MIN_LEN = 3
BUCKET_MAX_LEN = 63  # [S3 user guide, "General purpose bucket naming rules"]
HASH_LEN = 8
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", "--x-s3", "--table-s3")
_PREFIX_MAX_LEN = 40  # leaves room for a readable slug and the hash


@dataclass(frozen=True, slots=True)
class Target:
    """One backup target: a folder tree that goes to one bucket."""

    path: str  # absolute, normalised
    bucket: str
    root: str | None = None  # the root it was found under, if any
    missing: bool = False  # known from earlier runs but not on disk now
    legacy_name: str | None = None  # the old script's name for it (legacy naming): finds its old cache
    problem: str | None = None  # why it cannot be backed up (an invalid generated bucket name); fails alone

    @property
    def path_bytes(self) -> bytes:
        return os.fsencode(self.path)


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


def discover_targets(config: Config, known: Mapping[str, tuple[str, str | None]]) -> list[Target]:
    """List roots and check folders on disk, then name every target.

    `known` maps target paths seen by earlier runs to (bucket, root). A configured folder that is
    missing now is a ConfigError unless an earlier run backed it up: then it is returned with
    missing=True, so the run reports it and holds back its deletes (likewise a root's subfolder
    that is gone). A root's subfolders include symlinks to folders, as the old script had them.
    A root's subfolder that is also configured in backup.folders is that folder (with its pinned
    bucket, if any). A generated name that is no valid bucket fails that target alone.
    """
    where = str(config.source)
    candidates: list[tuple[str, str | None, str | None, bool]] = []  # path, pinned bucket, root, missing
    folder_paths = {f.path for f in config.folders}
    for i, folder in enumerate(config.folders):
        exists = os.path.isdir(folder.path)
        if not exists and folder.path not in known:
            raise ConfigError(
                f"{where}: backup.folders[{i}] {folder.path} is not a directory and was never backed up; "
                "fix the path or mount the share"
            )
        candidates.append((folder.path, folder.bucket, None, not exists))
    for i, root in enumerate(config.roots):
        known_under_root = sorted(p for p, (_, r) in known.items() if r == root and p not in folder_paths)
        try:
            with os.scandir(root) as entries:
                children = sorted(os.path.join(root, e.name) for e in entries if _is_folder(e))
        except OSError as exc:
            if not known_under_root:
                reason = exc.strerror or type(exc).__name__
                raise ConfigError(
                    f"{where}: backup.roots[{i}] {root} cannot be listed ({reason}) and was never backed up; "
                    "fix the path or mount the share"
                ) from None
            children = []
        children = [c for c in children if c not in folder_paths]
        present = set(children)
        candidates.extend((child, None, root, False) for child in children)
        candidates.extend((p, None, root, True) for p in known_under_root if p not in present)

    common = _legacy_common(config, known, [c[0] for c in candidates]) if config.naming == "legacy" else "/"
    targets: list[Target] = []
    seen_paths: set[str] = set()
    for path, pinned, found_under, missing in candidates:
        if path in seen_paths:
            raise ConfigError(f"{where}: {path} is configured twice in backup.folders; keep one")
        seen_paths.add(path)
        recorded = known.get(path)
        bucket: str
        old_name = legacy_name(path, common) if config.naming == "legacy" else None
        if pinned:
            bucket = pinned
        elif config.naming == "legacy":
            # Legacy names depend on every target, so a name once used is kept (recorded in the cache).
            bucket = recorded[0] if recorded else legacy_bucket_name(path, common)
        else:
            bucket = stable_bucket_name(config.bucket_prefix, path)
        problem = bucket_name_problem(bucket)
        if problem and pinned:
            raise ConfigError(
                f'{where}: bucket name {bucket!r} for {path} {problem}; pin a valid one with "bucket" in backup.folders'
            )
        unusable: str | None = None
        if problem:
            # Only a generated legacy name can be invalid (`neu ö` gives `images--neu--`): that
            # target fails alone, the others run.
            unusable = (
                f"its bucket name {bucket!r} (the old script's rule) {problem}, so it cannot be backed up; "
                f'add {{"path": "{path}", "bucket": "<a valid name>"}} to backup.folders, or rename the folder'
            )
        targets.append(
            Target(path=path, bucket=bucket, root=found_under, missing=missing, legacy_name=old_name, problem=unusable)
        )
    check_collisions([t for t in targets if t.problem is None], where, config.cache_bucket)
    return targets


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows a symlink: a linked folder is a target, keyed under the link
    except OSError:
        return False


def _legacy_common(config: Config, known: Mapping[str, tuple[str, str | None]], candidates: list[str]) -> str:
    """The common path legacy names are relative to.

    Once the cache knows legacy-named targets, the common path their names were made with is kept,
    so a subfolder added later is named like its siblings (the old script would have renamed every
    bucket instead). Before that, the old script's own rule over its own list of targets."""
    inferred = {infer_common(path, bucket) for path, (bucket, _root) in known.items()}
    inferred.discard(None)
    if len(inferred) == 1:
        common = inferred.pop()
        assert common is not None
        outside = [c for c in candidates if c != common and not c.startswith(common.rstrip("/") + "/")]
        return legacy_common([common, *outside]) if outside else common
    return legacy_common(legacy_target_list([f.path for f in config.folders], config.roots) or candidates)


def check_collisions(targets: list[Target], where: str, cache_bucket: str | None) -> None:
    by_bucket: dict[str, str] = {}
    for t in targets:
        if t.bucket in by_bucket:
            raise ConfigError(
                f"{where}: {by_bucket[t.bucket]} and {t.path} would both go to bucket {t.bucket}; "
                'give one of them its own "bucket" in backup.folders'
            )
        by_bucket[t.bucket] = t.path
    if cache_bucket and cache_bucket in by_bucket:
        raise ConfigError(
            f"{where}: backup.cache_bucket {cache_bucket} is also the bucket of {by_bucket[cache_bucket]}"
        )


def nested_target_warnings(targets: list[Target]) -> list[str]:
    """Targets inside other targets are backed up twice; legal, but worth a warning."""
    paths = {t.path for t in targets}
    warnings = []
    for inner in sorted(paths):
        parent = os.path.dirname(inner)
        while parent and parent != os.path.dirname(parent):
            if parent in paths:
                warnings.append(f"target {inner} lies inside target {parent}: its files go to both buckets")
                break
            parent = os.path.dirname(parent)
    return warnings
