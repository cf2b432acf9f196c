"""What `async-backup fixity` is asked to do. Data only, so that the command line can build it
without loading the run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FixityOptions:
    only: tuple[str, ...] = ()  # targets by folder path or bucket; all when empty
    s3: bool = True  # False with --no-s3: no HeadObject, the disk alone
