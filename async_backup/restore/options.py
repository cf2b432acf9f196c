"""What `async-backup restore` is asked to do. Data only, apart from `command` so that the command
line can build it without loading the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Tier = Literal["Bulk", "Standard"]
TIERS: tuple[Tier, ...] = ("Bulk", "Standard")
DEFAULT_TIER: Tier = "Bulk"
DEFAULT_DAYS = 7


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    target: str  # the target's folder path or bucket name, or a path inside a target
    path: str | None = None  # only files under this path, relative to the target
    to: str | None = None  # restore under this directory instead of the original location
    as_of: str | None = None  # ISO 8601: the versions current then
    tier: Tier = DEFAULT_TIER
    days: int = DEFAULT_DAYS  # days a restored copy stays readable
    overwrite: bool = False
    yes: bool = False  # start without asking
    dry_run: bool = False
