"""A cache row as the planner and verify read it, and whether a file on disk still matches it.

Owns `Recorded` (what S3 confirmed for one path) and the comparison of a row with a disk file,
including the old script's float mtimes. Pure: imports only `disk.entries`; no SQLite, no S3.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..disk.entries import DiskFile

# Old caches stored st_mtime as a float; a double near 1.7e9 s is exact to about 0.24 us.
LEGACY_MTIME_TOLERANCE_NS = 2_000
# The mtime of a "gone" row: one the rebuild wrote for a listed object whose file it did not find
# (deleted, or on a share not mounted then). Its size is the listed one; nothing proves what its
# file is, so a file of that size that turns up there goes through the HeadObject proof. A row of
# a file whose mtime really is 0 reads as gone too: it only costs that file a HeadObject.
GONE_MTIME_NS = 0


@dataclass(frozen=True, slots=True)
class Recorded:
    """A cache row: what S3 confirmed for one path.

    Rows adopted from the old script carry its float st_mtime in `legacy_mtime` (and the size the
    bucket listing showed, or None in a dry run, which sends no listing); rows adopted by earlier
    versions of this tool have neither a size nor a legacy_mtime."""

    path: bytes
    size: int | None
    mtime_ns: int
    legacy_mtime: float | None = None


def stat_float_mtime(mtime_ns: int) -> float:
    """`os.stat().st_mtime` as CPython computes it from the nanoseconds (sec + nsec * 1e-9), so an
    mtime the old script stored compares at exactly the float precision it had."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    return float(seconds) + nanos * 1e-9


def is_unchanged(file: DiskFile, row: Recorded) -> bool:
    if row.legacy_mtime is not None:
        return (row.size is None or row.size == file.size) and stat_float_mtime(file.mtime_ns) == row.legacy_mtime
    if row.size is None:
        return abs(file.mtime_ns - row.mtime_ns) <= LEGACY_MTIME_TOLERANCE_NS
    return file.size == row.size and file.mtime_ns == row.mtime_ns


def is_gone(row: Recorded) -> bool:
    """A row the rebuild wrote for an object whose file was not on disk (see GONE_MTIME_NS)."""
    return row.mtime_ns == GONE_MTIME_NS and row.size is not None and row.legacy_mtime is None
