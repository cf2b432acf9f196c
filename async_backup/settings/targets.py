"""Turn configured folders and roots into targets with stable, valid, collision-free bucket names.

Owns targets: which folders and roots' subfolders are backed up, the bucket each one gets (by
the rules in `naming`), and the checks across targets (collisions, nesting). `discover_targets`
lists each root's direct subfolders and checks which folders exist, as does `legacy_target_list`
for the old script's list; everything else here is pure. Imports nothing of S3 or the cache.

A folder or root that is not there is never a configuration error: it may be a share that is not
mounted tonight, or a typo in a line just added. Either way that target fails alone ("target
missing", naming the config key) and the others run; only a file that cannot be read as a config
stops everything (exit 2).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from .config import Config
from .naming import (
    account_prefix,
    bucket_name_problem,
    infer_common,
    is_default_name,
    legacy_bucket_name,
    legacy_common,
    legacy_name,
    stable_bucket_name,
)


@dataclass(frozen=True, slots=True)
class Target:
    """One backup target: a folder tree that goes to one bucket."""

    path: str  # absolute, normalised
    bucket: str
    root: str | None = None  # the root it was found under, if any
    missing: bool = False  # not on disk now (known from earlier runs, or see `missing_key`)
    legacy_name: str | None = None  # the old script's name for it (legacy naming): finds its old cache
    problem: str | None = None  # why it cannot be backed up (an invalid generated bucket name); fails alone
    # A missing folder or root no run ever backed up: its config key ("backup.folders[2]") and why it
    # is missing. A root that cannot be listed is one such target of its own, without a bucket.
    missing_key: str | None = None
    missing_reason: str = ""
    priority: int = 1  # its share of the upload workers against other targets with files waiting

    @property
    def path_bytes(self) -> bytes:
        return os.fsencode(self.path)


def old_script_buckets(config: Config, paths: Sequence[str]) -> dict[str, str]:
    """The old script's buckets for these targets (path -> bucket), whatever `config.naming` says:
    where a forgotten "naming": "legacy" would have found them. Valid names only."""
    wanted = set(paths)
    legacy = discover_targets(dataclasses.replace(config, naming="legacy"), {})
    return {t.path: t.bucket for t in legacy if t.path in wanted and t.bucket and not t.problem and not t.missing}


def discover_targets(config: Config, known: Mapping[str, tuple[str, str | None]]) -> list[Target]:
    """List roots and check folders on disk, then name every target.

    `known` maps target paths seen by earlier runs to (bucket, root). A configured folder that is
    missing now is returned with missing=True, so the run reports it and holds back its deletes
    (likewise a root's subfolder that is gone); one no earlier run backed up also carries its config
    key (`missing_key`). A root that cannot be listed, none of whose subfolders an earlier run
    backed up, becomes one missing target of its own, without a bucket: what lies under it is
    unknown, so it fails as a whole. A root's subfolders include symlinks to folders, as the old
    script had them.
    A root's subfolder that is also configured in backup.folders is that folder (with its pinned
    bucket, if any). A generated name that is no valid bucket fails that target alone.
    """
    where = str(config.source)
    candidates: list[tuple[str, str | None, str | None, bool]] = []  # path, pinned bucket, root, missing
    priorities = {f.path: f.priority for f in config.folders}
    never_seen: dict[str, str] = {}  # path of a missing folder no run backed up -> its config key
    missing_roots: list[Target] = []
    folder_paths = {f.path for f in config.folders}
    for i, folder in enumerate(config.folders):
        exists = os.path.isdir(folder.path)
        if not exists and folder.path not in known:
            never_seen[folder.path] = f"backup.folders[{i}]"
        candidates.append((folder.path, folder.bucket, None, not exists))
    for i, root in enumerate(config.roots):
        known_under_root = sorted(p for p, (_, r) in known.items() if r == root and p not in folder_paths)
        try:
            with os.scandir(root) as entries:
                children = sorted(os.path.join(root, e.name) for e in entries if _is_folder(e))
        except OSError as exc:
            if not known_under_root:
                reason = exc.strerror or type(exc).__name__
                missing_roots.append(
                    Target(path=root, bucket="", missing=True, missing_key=f"backup.roots[{i}]", missing_reason=reason)
                )
                continue
            children = []
        children = [c for c in children if c not in folder_paths]
        present = set(children)
        candidates.extend((child, None, root, False) for child in children)
        candidates.extend((p, None, root, True) for p in known_under_root if p not in present)

    common_for = _legacy_commons(config, known, [c[0] for c in candidates])
    targets: list[Target] = []
    seen_paths: set[str] = set()
    for path, pinned, found_under, missing in candidates:
        if path in seen_paths:
            raise ConfigError(f"{where}: {path} is configured twice in backup.folders; keep one")
        seen_paths.add(path)
        recorded = known.get(path)
        bucket: str
        no_name: str | None = None
        common = common_for(path, recorded[0] if recorded else None)
        old_name = legacy_name(path, common) if config.naming == "legacy" else None
        if pinned:
            bucket = pinned
        elif config.naming == "legacy":
            # Legacy names depend on every target, so a name once used is kept (recorded in the cache).
            bucket = recorded[0] if recorded else legacy_bucket_name(path, common)
        else:
            bucket, no_name = default_bucket(config, path, recorded[0] if recorded else None)
        problem = bucket_name_problem(bucket)
        if problem and pinned:
            raise ConfigError(
                f'{where}: bucket name {bucket!r} for {path} {problem}; pin a valid one with "bucket" in backup.folders'
            )
        unusable: str | None = None
        if no_name:  # on AWS with the default prefix, a new name that could not be settled
            unusable = no_name
        elif problem:
            # Only a generated legacy name can be invalid (`neu ö` gives `images--neu--`): that
            # target fails alone, the others run.
            unusable = (
                f"its bucket name {bucket!r} (the old script's rule) {problem}, so it cannot be backed up; "
                f'add {{"path": "{path}", "bucket": "<a valid name>"}} to backup.folders, or rename the folder'
            )
        targets.append(
            Target(
                path=path,
                bucket=bucket,
                root=found_under,
                missing=missing,
                legacy_name=old_name,
                problem=unusable,
                missing_key=never_seen.get(path) if missing else None,
                missing_reason="not a directory" if missing and path in never_seen else "",
                priority=priorities.get(path, config.root_priorities.get(found_under or "", 1)),
            )
        )
    check_collisions([t for t in targets if t.problem is None], where, config.cache_bucket)
    return targets + missing_roots


def default_bucket(config: Config, path: str, recorded: str | None) -> tuple[str, str | None]:
    """The stable bucket of an unpinned target, and why it cannot have one (None when it can).

    `prefix` + slug + hash of the path, except on AWS with the default prefix (`account_scoped`):
    there a name already in use is kept (the recorded one, or the untagged name when this account
    owns that bucket, as every installation before names carried a tag has it), and a new name
    carries the account's tag: `backup-<tag>-...`. Without the tag (STS could not be asked) a
    target that needs a new name fails alone, and never gets another name."""
    untagged = stable_bucket_name(config.bucket_prefix, path)
    names = config.account_names
    if not config.account_scoped:
        return untagged, None
    if recorded and is_default_name(recorded, config.bucket_prefix, path):
        return recorded, None
    if names is None or names.offline or untagged in names.owned:
        # Not looked up: a dry run asks nothing, and a real run looks up first (`account_names`).
        return untagged, None
    if names.tag:
        return stable_bucket_name(account_prefix(config.bucket_prefix, names.tag), path), None
    return untagged, (
        "it has no bucket yet, and a new default bucket name on AWS carries the account's tag, which could not "
        f"be settled ({names.problem}): set backup.bucket_prefix in config.json to a prefix unique to your "
        "organisation, or let this machine reach AWS STS (GetCallerIdentity, which needs no permission)"
    )


def paths_needing_names(config: Config, known: Mapping[str, tuple[str, str | None]]) -> list[str]:
    """The targets whose default bucket depends on what AWS says: unpinned, stable-named, and
    without a recorded default name. None where names do not depend on the account."""
    if not config.account_scoped or config.naming != "stable":
        return []
    bare = dataclasses.replace(config, account_names=None)
    pinned = {f.path for f in config.folders if f.bucket}
    return [
        t.path
        for t in discover_targets(bare, known)
        if t.bucket
        and not t.missing_key
        and t.path not in pinned
        and not (t.path in known and is_default_name(known[t.path][0], config.bucket_prefix, t.path))
    ]


def legacy_target_list(folders: Sequence[str], roots: Sequence[str]) -> list[str]:
    """The old script's list: every folder, and every entry of every root (files and symlinks
    too, which shape the common path even though they hold nothing to back up)."""
    paths = [os.path.expanduser(f) for f in folders]
    for root in roots:
        try:
            paths.extend(os.path.join(root, entry) for entry in os.listdir(root))
        except OSError:
            continue  # an unreadable root: its own failure is reported where targets are found
    return sorted(paths)


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows a symlink: a linked folder is a target, keyed under the link
    except OSError:
        return False


def _legacy_commons(
    config: Config, known: Mapping[str, tuple[str, str | None]], candidates: list[str]
) -> Callable[[str, str | None], str]:
    """For a target path (and its recorded bucket), the common path its legacy name is relative to.

    Once the cache knows legacy-named targets, the common paths their names were made with are
    kept: a recorded target keeps its own, and a subfolder added later is named relative to the
    deepest remembered common path holding it, like its nearest siblings (the old script would have
    renamed every bucket instead), also after a root outside it was added. Only a path outside every
    remembered common path is named relative to the common path of those and the new paths. Before
    any is known, the old script's own rule over its own list of targets."""
    if config.naming != "legacy":
        return lambda _path, _bucket: "/"  # unused: stable names depend on no other target
    inferred = {infer_common(path, bucket) for path, (bucket, _root) in known.items()}
    remembered = sorted((c for c in inferred if c is not None), key=len, reverse=True)  # deepest first
    if not remembered:
        fresh = legacy_common(legacy_target_list([f.path for f in config.folders], config.roots) or candidates)
        return lambda _path, _bucket: fresh
    outside = [c for c in candidates if not any(_inside(c, r) for r in remembered)]
    wide = legacy_common([*remembered, *outside])

    def common_for(path: str, bucket: str | None) -> str:
        own = infer_common(path, bucket) if bucket else None
        if own is not None:
            return own
        return next((r for r in remembered if _inside(path, r)), wide)

    return common_for


def _inside(path: str, common: str) -> bool:
    return path != common and path.startswith(common.rstrip("/") + "/")


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
    paths = {t.path for t in targets if t.bucket}  # a root that cannot be listed holds no files of its own
    warnings = []
    for inner in sorted(paths):
        parent = os.path.dirname(inner)
        while parent and parent != os.path.dirname(parent):
            if parent in paths:
                warnings.append(f"target {inner} lies inside target {parent}: its files go to both buckets")
                break
            parent = os.path.dirname(parent)
    return warnings


def select_targets(targets: Sequence[Target], names: Sequence[str], option: str) -> list[Target]:
    """The targets named by folder path or bucket name, in configuration order; all when none are named.

    The one selection for `--only` (backup), `--target` (verify) and restore's TARGET; `option` names
    the argument in the error. A relative path is taken from the working directory."""
    if not names:
        return list(targets)
    chosen: list[Target] = []
    for name in names:
        as_path = os.path.normpath(os.path.abspath(name))
        # A root that cannot be listed stands for its unknown subfolders: never one a name can select.
        found = [t for t in targets if t.bucket and (t.bucket == name or t.path == as_path)]
        if not found:
            raise ConfigError(
                f"{option} {name} names no configured target; give a target's folder path or its bucket name"
            )
        chosen.extend(t for t in found if t not in chosen)
    return [t for t in targets if t in chosen]
