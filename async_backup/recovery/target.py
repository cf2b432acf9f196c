"""What recovery needs of one target's run: its target, its counters and its hold-back flag.

backup/'s `TargetRun` has these and more; recovery names only this shape, so it never imports the
command that calls it. Data only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..report.summary import TargetStats
from ..settings.targets import Target


class RecoveringRun(Protocol):
    target: Target
    stats: TargetStats  # rebuilt_rows, rebuilt_gone, adopted, content_read_bytes, rebuilt_from
    held_back: bool  # set when its cache could not be rebuilt: nothing is uploaded or deleted
    old_cache: Path | None  # a dry run plans against the old script's cache it would adopt
