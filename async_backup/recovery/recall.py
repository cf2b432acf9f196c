"""The bucket names in use, read back from the newest cache snapshot when the cache has none.

Owns picking the snapshot whose `targets` table (read in `cache.snapshotdb`) names configured
targets. Legacy names depend on every target (the common path), so a name once used cannot be
computed again after the config changed; a lost cache must find it in S3 before targets are
named, or a target that has a bucket would get a new one. Imports the snapshot shelf's pieces,
nothing of the backup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from ..cache import snapshotdb
from ..s3.client import S3
from .snapshots import SnapshotUnusable, download_snapshot, find_snapshots

log = logging.getLogger(__name__)

# Snapshots of other installations may share the cache bucket: at most this many (newest first)
# are downloaded to find one that names configured targets; each costs one GetObject.
MAX_SNAPSHOTS_READ = 3

Known = snapshotdb.Known  # target path -> (bucket, root), as StateStore.known_targets


async def recall_targets(
    s3: S3, buckets: Sequence[str], own_key: str, tmp: Path, wanted: Callable[[str, str | None], bool]
) -> tuple[str, Known]:
    """The targets the newest snapshot naming any `wanted` (path, root) holds, and where they came
    from; ("", {}) when no snapshot does (none written yet, or all unusable). This installation's
    own snapshot (`own_key`) is read first; a new machine has none and reads the newest others."""
    found = await find_snapshots(s3, buckets)
    found.sort(key=lambda s: s.key != own_key)  # stable: newest first within each group
    for i, snapshot in enumerate(found[:MAX_SNAPSHOTS_READ]):
        try:
            db = await download_snapshot(s3, snapshot, tmp, f"names-{i}")
        except SnapshotUnusable as exc:
            log.warning("%s cannot be used (%s); passed over", snapshot.describe(), exc)
            continue
        known = await anyio.to_thread.run_sync(snapshotdb.targets_of, db)
        chosen = {p: v for p, v in known.items() if wanted(p, v[1])}
        if chosen:
            return snapshot.describe(), chosen
    return "", {}
