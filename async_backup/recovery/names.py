"""Before targets are named on a cache without targets: the names in use, from S3.

Owns the one S3 session that runs ahead of naming. A legacy name depends on the common path of
every target, so after the config changed (a root added outside the old common path, a root
removed) the old rule gives every target a new name; a lost cache would then upload everything
into new buckets. The newest snapshot's `targets` table (`recall`) gives the names back;
where no snapshot names a configured target (none written yet, or every run with
`--no-cache-backup`), the old script's own caches do for the targets it named: their file names are
its names, so the common path it used is the one that gives them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
from collections import Counter
from pathlib import Path

from ..errors import S3Error
from ..s3.client import S3, open_s3
from ..settings.config import Config
from ..settings.naming import legacy_bucket_name
from ..wording import counted
from .oldscript import LEGACY_CACHE_BUCKET, LEGACY_DB_DIR
from .recall import Known, recall_targets
from .snapshots import snapshot_buckets, snapshot_key

log = logging.getLogger(__name__)


async def recall_target_names(config: Config, cache_dir: Path) -> Known:
    """The recorded (bucket, root) of configured folders and of subfolders of configured roots."""
    folders = {f.path for f in config.folders}
    roots = set(config.roots)

    def wanted(path: str, root: str | None) -> bool:
        # Another installation's snapshot in the same cache bucket names other paths: never ours.
        return path in folders or (root in roots and os.path.dirname(path) == root)

    async with open_s3(config.aws, config.tuning) as s3:
        with tempfile.TemporaryDirectory(prefix="async-backup-names-") as tmp:
            source, known = await recall_targets(
                s3, snapshot_buckets(config), snapshot_key(cache_dir), Path(tmp), wanted
            )
        if not known:
            source, names = await _old_cache_names(s3, cache_dir)
            known = names_from_old_caches(config, names)
    if known:
        log.info("bucket names of %s recalled from %s", counted(len(known), "target"), source)
    return known


def recall_target_names_offline(config: Config, cache_dir: Path) -> Known:
    """A dry run sends no request: the names the old script's db/ folder here gives, if any."""
    source, names = _local_old_cache_names(cache_dir)
    known = names_from_old_caches(config, names)
    if known:
        log.info("bucket names of %s recalled from %s", counted(len(known), "target"), source)
    return known


def _local_old_cache_names(cache_dir: Path) -> tuple[str, set[str]]:
    local = cache_dir / LEGACY_DB_DIR
    try:
        files = [f for f in os.listdir(local) if f.endswith(".db")]
    except OSError:
        return "", set()
    return str(local), {urllib.parse.unquote_plus(f[: -len(".db")]) for f in files}


async def _old_cache_names(s3: S3, cache_dir: Path) -> tuple[str, set[str]]:
    """The old script's target names, from its db/ folder here, else from this cache directory's
    copies in its cache bucket (one ListObjectsV2)."""
    source, local = _local_old_cache_names(cache_dir)
    if local:
        return source, local
    prefix = str(cache_dir).lstrip("/") + f"/{LEGACY_DB_DIR}/"
    keys: list[str] = []
    try:
        async for page in s3.list_current(LEGACY_CACHE_BUCKET, prefix):
            keys.extend(o.key for o in page)
    except S3Error:
        return "", set()  # no old script's cache bucket: nothing to recall
    names = {urllib.parse.unquote_plus(k[len(prefix) : -len(".db")]) for k in keys if k.endswith(".db")}
    return f"s3://{LEGACY_CACHE_BUCKET}/{prefix}", names - {""}


def names_from_old_caches(config: Config, names: set[str]) -> Known:
    """Configured targets the old script named, with its buckets: the common path is the ancestor
    under which the most of them have a name among `names` (its caches' file names)."""
    candidates: list[tuple[str, str | None]] = [(f.path, None) for f in config.folders]
    for root in config.roots:
        try:
            with os.scandir(root) as entries:
                candidates.extend((os.path.join(root, e.name), root) for e in entries if e.is_dir())
        except OSError:
            continue  # reported where targets are found
    votes: Counter[str] = Counter()
    for path, _root in candidates:
        ancestor = os.path.dirname(path)
        while True:
            if os.path.relpath(path, ancestor) in names:
                votes[ancestor] += 1
            if ancestor == os.path.dirname(ancestor):
                break
            ancestor = os.path.dirname(ancestor)
    if not votes:
        return {}
    common = votes.most_common(1)[0][0]
    return {
        path: (legacy_bucket_name(path, common), root)
        for path, root in candidates
        if os.path.relpath(path, common) in names
    }
