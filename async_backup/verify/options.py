"""What `async-backup verify` is asked to do. Data only, apart from `command` so that the command
line can build it without loading the run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    targets: tuple[str, ...] = ()  # by folder path or bucket; all when empty
    repair: bool = False  # correct the cache so the next backup puts right what is missing or wrong
    checksums: bool = True  # False with --no-checksums: no HeadObject for the CRC32 comparisons
