"""Before targets are named on a cache without targets: the names in use, from S3.

Owns the one S3 session that runs ahead of naming. A legacy name depends on the common path of
every target, so after the config changed (a root added outside the old common path, a root
removed) the old rule gives every target a new name; a lost cache would then upload everything
into new buckets. The newest snapshot's `targets` table (`cache.recall`) gives the names back.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..cache.rebuild import snapshot_key
from ..cache.recall import Known, recall_targets
from ..cache.snapshot import snapshot_buckets
from ..s3.client import open_s3
from ..settings.config import Config

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
    if known:
        log.info("bucket names of %d targets recalled from %s", len(known), source)
    return known
