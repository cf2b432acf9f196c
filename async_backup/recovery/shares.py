"""Where a lost cache's rebuild must not conclude that files were deleted: absent shares.

A listed object whose file is missing normally gets a "gone" row, so the run deletes it. Not when
it lies under a share that is simply not mounted: a remembered mount point (the cache's `mounts`
table, when it survived, e.g. after --reset) that is missing, empty or on its parent's device, or,
when nothing is remembered, the deepest existing folder above the file that is empty. An empty
folder or another device is no evidence that files were deleted. The empty folders found this way
are reported, so the rebuild can remember them as suspected mount points (the walk then holds
them as holes, with a failure, until the share is back or the operator lets the deletes through).

Owns this disk check, and carrying a snapshot's remembered mount points over into a rebuilt
cache (`mounts_from_snapshot`: rows a snapshot restores under an unmounted share must be held by
the walk, not deleted; `cache.snapshotdb` reads them). The disk check costs one lstat and one
listing per folder, each answered once per rebuild, and only for objects whose file is missing.
Imports nothing of S3 or the planner.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from ..cache import snapshotdb
from ..cache.writes import CacheWrites


class AbsentShares:
    """Answers, for a missing file under `root`, whether it lies under an absent share."""

    def __init__(self, root: bytes, remembered: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        self.root = root.rstrip(b"/")
        self.remembered = remembered
        self.suspected: set[bytes] = set()  # empty folders that are not remembered mount points
        self._absent: dict[bytes, bool] = {}  # folder -> a remembered mount point that is absent
        self._empty: dict[bytes, bool | None] = {}  # folder -> empty (None: missing or not a folder)

    def holds(self, path: bytes) -> bool:
        """Whether the missing file `path` lies under an absent share (its objects keep no "gone" row)."""
        folder = os.path.dirname(path)
        deepest_existing: bytes | None = None
        while len(folder) > len(self.root) and folder.startswith(self.root + b"/"):
            if folder in self.remembered and self._remembered_absent(folder):
                return True
            if deepest_existing is None and self._is_empty(folder) is not None:
                deepest_existing = folder
            folder = os.path.dirname(folder)
        if deepest_existing is not None and self._is_empty(deepest_existing):
            if deepest_existing not in self.remembered:
                self.suspected.add(deepest_existing)
            return True
        return False

    def _remembered_absent(self, folder: bytes) -> bool:
        known = self._absent.get(folder)
        if known is None:
            known = self._absent[folder] = self._check_remembered(folder)
        return known

    def _check_remembered(self, folder: bytes) -> bool:
        try:
            device = os.lstat(folder).st_dev
            parent_device = os.stat(os.path.dirname(folder)).st_dev
        except FileNotFoundError:
            return True  # missing: a removed mount point looks the same as an unmounted one
        except OSError:
            return True  # unreadable: no evidence either way, so no "gone" row
        return device == parent_device or bool(self._is_empty(folder))

    def _is_empty(self, folder: bytes) -> bool | None:
        if folder not in self._empty:
            try:
                with os.scandir(folder) as entries:
                    self._empty[folder] = next(entries, None) is None
            except OSError:
                self._empty[folder] = None
        return self._empty[folder]


async def mounts_from_snapshot(db: Path, target: str, writes: CacheWrites) -> int:
    """Remember the mount points a snapshot remembered inside `target` (none in a snapshot from
    before they were remembered); returns how many."""
    rows = await anyio.to_thread.run_sync(snapshotdb.mounts_of, db, target)
    await writes.remember_mounts(target, rows)
    return len(rows)
