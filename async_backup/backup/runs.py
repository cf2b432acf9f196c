"""What the backup stages share about a run: its options, and each target's progress through it.

Owns `RunOptions`, `TargetRun` (one target's counters, plan and state flags, updated by the
stages) and `UploadJob` (one planned upload on its way to a worker). Data only: imports no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ..report.summary import TargetStats
from ..settings.targets import Target
from .changeguard import ChangeGuard
from .plan import PlanCounts, Upload


@dataclass(frozen=True, slots=True)
class RunOptions:
    dry_run: bool = False
    allow_mass_delete: bool = False
    allow_mass_change: bool = False
    backup_cache: bool = True
    rebuild: bool = True  # False only with --upload-everything-again


@dataclass(eq=False)
class TargetRun:
    """One target's progress through the run."""

    target: Target
    stats: TargetStats
    counts: PlanCounts = field(default_factory=PlanCounts)
    deletes: list[bytes] = field(default_factory=list)
    pending: int = 0
    walk_finished: bool = False
    uploads_done: anyio.Event = field(default_factory=anyio.Event)
    bucket_ready: bool = False
    bucket_failed: bool = False
    bucket_lock: anyio.Lock = field(default_factory=anyio.Lock)
    old_cache: Path | None = None  # a dry run plans against the old script's cache it would adopt
    device: int | None = None  # st_dev of the folder as this run's walk found it
    recorded_device: int | None = None  # st_dev the cache holds from an earlier run
    device_held_back: bool = False  # the device guard held back this run's deletes
    device_recorded: bool = False
    held_back: bool = False  # its cache could not be rebuilt: nothing is uploaded or deleted
    change_guard: ChangeGuard | None = None  # set before its walk starts

    def job_finished(self) -> None:
        self.pending -= 1
        self._check_done()

    def walk_done(self) -> None:
        self.walk_finished = True
        self._check_done()

    def _check_done(self) -> None:
        if self.walk_finished and self.pending == 0:
            self.uploads_done.set()


@dataclass(frozen=True, slots=True)
class UploadJob:
    run: TargetRun
    upload: Upload
