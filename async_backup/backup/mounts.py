"""Shares mounted inside a target: remembered, and never taken for deleted when they are absent.

Owns the rule for mount points inside a target (a directory whose st_dev differs from its
parent's): the walk reports the ones it finds, the cache remembers them, and a remembered one that
is later not mounted, empty or missing is held as a hole (everything cached under it is kept, not
deleted from S3) with a failure naming it. An empty folder or another device is no evidence that
files were deleted; only the operator's --allow-mass-delete lets those deletes through, after which
the mount point is forgotten. The target's own folder is the device guard's (policy.Guards).
Opens no task group and no stream; what it learns goes to the cache writer as `MountsSeen`.
"""

from __future__ import annotations

import threading

from ..cache.store import MountsSeen
from ..disk.walk import MountWatch, mount_absent
from ..errors import FailureCollector


class TargetMounts:
    """One target's mount points during one run: what the cache remembers, what the walk found."""

    def __init__(self, target: str, remembered: dict[bytes, int | None], collector: FailureCollector) -> None:
        self.target = target
        self.remembered = remembered
        self.collector = collector
        self.found: dict[bytes, int] = {}
        self.unmounted: set[bytes] = set()  # suspected mount points that hold files on the parent's device
        self.absent: set[bytes] = set()
        self._lock = threading.Lock()  # the walk thread reports, the event loop records afterwards

    def watch(self, *, allow_mass_delete: bool) -> MountWatch:
        """What the walk is given. With --allow-mass-delete the operator said that what is gone is
        gone: remembered mount points are walked like any folder (and forgotten afterwards)."""
        remembered = frozenset() if allow_mass_delete else frozenset(self.remembered)
        suspected = frozenset(p for p in remembered if self.remembered[p] is None)
        return MountWatch(
            remembered=remembered,
            found=self._found,
            absent=self._absent,
            suspected=suspected,
            unmounted=self._unmounted,
        )

    def unproven(self) -> tuple[bytes, ...]:
        """Prefixes of the suspected mount points: the rebuild wrote no rows under them, so a file
        that comes back there may be in S3 already (its upload is to be proven first)."""
        return tuple(p + b"/" for p, device in self.remembered.items() if device is None)

    def _found(self, path: bytes, device: int) -> None:
        with self._lock:
            self.found[path] = device

    def _unmounted(self, path: bytes) -> None:
        with self._lock:
            self.unmounted.add(path)

    def _absent(self, path: bytes, why: str) -> None:
        with self._lock:
            self.absent.add(path)
        self.collector.add(mount_absent(self.target, path, why))

    def seen(self, *, allow_mass_delete: bool) -> MountsSeen | None:
        """After a walk that went to the end (never in a dry run), what the cache writer is to
        record: the mount points found (a new one, or a new st_dev after a remount) are
        remembered; the suspected ones that are back with their files on the parent's device,
        and, with --allow-mass-delete, the remembered ones no longer mounted, are forgotten.
        None when nothing changed."""
        changed = tuple((p, d) for p, d in self.found.items() if self.remembered.get(p, -1) != d)
        gone = [p for p in self.remembered if p not in self.found] if allow_mass_delete else []
        gone.extend(p for p in self.unmounted if p not in gone)  # back with its files: no share after all
        if not changed and not gone:
            return None
        return MountsSeen(self.target, changed, tuple(gone))
