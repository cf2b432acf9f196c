"""Pure planning: merge what is on disk with what the cache recorded, and size the requests.

Owns the decisions of a run: which files to upload, which keys to delete, how large the
multipart parts are, how deletes are batched, and when deletes are held back. Synchronous and
free of I/O: the inputs are iterators, so it runs inside the walk's worker thread and under
Hypothesis alike. Imports nothing of S3, the filesystem or the cache.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..cache.records import Recorded, is_gone, is_unchanged, lacks_evidence, needs_proof
from ..disk.entries import DiskFile, Hole, Skipped, WalkEntry
from ..settings.config import MAX_PART_BYTES, MAX_PARTS, MIN_PART_BYTES, MiB
from ..wording import counted

MAX_OBJECT_BYTES = 5 * 1024**4  # the largest object S3 stores, 5 TiB
MAX_DELETE_BATCH = 1_000  # DeleteObjects takes at most 1,000 keys [S3 API reference]


class Proof(enum.Enum):
    """What settles, before a planned upload is sent, whether S3 already holds the file as it is."""

    CONTENT = "content"  # an unsure row: the file's checksum against the one the row recorded
    HEAD = "head"  # a rebuilt "gone" row met by a file of the listed size: HeadObject's mtime metadata


@dataclass(frozen=True, slots=True)
class Upload:
    file: DiskFile
    is_new: bool
    # None: upload. Otherwise prove first, and upload only what the proof does not settle.
    proof: Proof | None = None
    # The kind its row recorded (disk.kinds; None: new, or not known): the change guard compares
    # it with what the upload's first read shows.
    was_kind: str | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    path: bytes


@dataclass(frozen=True, slots=True)
class Observed:
    """An unchanged file whose row has no inode or ctime yet (written before they were kept):
    record the walk's, without a read or a request."""

    file: DiskFile


Action = Upload | Delete | Observed


@dataclass(slots=True)
class PlanCounts:
    """What the merge saw, besides the actions it yielded."""

    on_disk: int = 0
    recorded: int = 0
    unchanged: int = 0
    unsure: int = 0  # size and mtime match, but the contents are to be compared (Proof.CONTENT)
    skipped: int = 0
    kept: int = 0  # cached files under a hole or excluded: neither uploaded nor deleted
    holes: int = 0
    disk_bytes: int = 0


def merge(
    disk: Iterable[WalkEntry],
    recorded: Iterable[Recorded],
    counts: PlanCounts,
    is_excluded: Callable[[bytes], bool] = lambda _path: False,
) -> Iterator[Action]:
    """Merge two streams sorted by path bytes into upload and delete actions.

    A file on disk and not in the cache, or with another size or mtime, is uploaded; one that
    meets a rebuilt "gone" row with the row's size is uploaded only if HeadObject does not prove
    that S3 holds it (Proof.HEAD). A file whose size and mtime match but whose row is unsure (read
    racily) or whose inode or ctime moved is an upload with Proof.CONTENT: its contents are
    compared first. A cached
    path that is no longer on disk is deleted, unless it lies under a Hole (the walk could not
    see there) or is excluded. Everything else is left alone. An entry whose type the walk could
    not read comes as Skipped(path) and Hole(path + "/"), each in its place in the order: the
    cached row for the path itself and every row under it are kept.
    """
    disk_it = iter(disk)
    rec_it = iter(recorded)
    d = next(disk_it, None)
    r = next(rec_it, None)
    while d is not None or r is not None:
        if d is not None and (r is None or d.path < r.path):
            if isinstance(d, Hole) and r is not None and r.path.startswith(d.path):
                counts.recorded += 1
                counts.kept += 1
                r = next(rec_it, None)
                continue
            yield from _disk_only(d, counts)
            d = next(disk_it, None)
        elif d is None or (r is not None and r.path < d.path):
            assert r is not None
            counts.recorded += 1
            if is_excluded(r.path):
                counts.kept += 1
            else:
                yield Delete(r.path)
            r = next(rec_it, None)
        else:  # the same path on both sides
            assert r is not None and d is not None
            counts.recorded += 1
            if isinstance(d, DiskFile):
                counts.on_disk += 1
                counts.disk_bytes += d.size
                if not is_unchanged(d, r):
                    if is_gone(r) and r.size == d.size:
                        # The file is back with the size S3 listed: S3 may hold it already.
                        yield Upload(d, is_new=False, proof=Proof.HEAD, was_kind=r.kind)
                    else:
                        yield Upload(d, is_new=False, was_kind=r.kind)
                elif r.ino == d.ino and r.ctime_ns == d.ctime_ns and not r.unsure:
                    counts.unchanged += 1  # the common case, settled without a call (millions of files)
                elif needs_proof(d, r):
                    counts.unsure += 1
                    yield Upload(d, is_new=False, proof=Proof.CONTENT, was_kind=r.kind)
                else:
                    counts.unchanged += 1
                    if lacks_evidence(d, r):
                        yield Observed(d)
            else:
                # Now a symlink or special file (or excluded): keep the last backed-up copy.
                counts.skipped += 1
                counts.kept += 1
            d = next(disk_it, None)
            r = next(rec_it, None)


def _disk_only(d: WalkEntry, counts: PlanCounts) -> Iterator[Action]:
    if isinstance(d, DiskFile):
        counts.on_disk += 1
        counts.disk_bytes += d.size
        yield Upload(d, is_new=True)
    elif isinstance(d, Skipped):
        counts.skipped += 1
    else:
        counts.holes += 1


def part_size_for(size_bytes: int, preferred_part_bytes: int) -> int:
    """The part size for a multipart upload of `size_bytes`: the preferred size, grown in whole
    MiB when needed so the file fits in 10,000 parts, and kept within S3's 5 MiB..5 GiB."""
    part = max(preferred_part_bytes, MIN_PART_BYTES)
    if math.ceil(size_bytes / part) > MAX_PARTS:
        part = math.ceil(size_bytes / MAX_PARTS / MiB) * MiB
    return min(part, MAX_PART_BYTES)


def part_ranges(size_bytes: int, part_bytes: int) -> list[tuple[int, int]]:
    """(offset, length) of each part, in order; an empty file is one empty part."""
    if size_bytes == 0:
        return [(0, 0)]
    return [(off, min(part_bytes, size_bytes - off)) for off in range(0, size_bytes, part_bytes)]


T = TypeVar("T")


def batches(items: Sequence[T], size: int = MAX_DELETE_BATCH) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items (DeleteObjects takes at most 1,000 keys)."""
    if not 1 <= size <= MAX_DELETE_BATCH:
        raise ValueError(f"batch size must be 1..{MAX_DELETE_BATCH}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def deletion_guard(
    *, recorded: int, deletes: int, on_disk: int, max_delete_percent: float, allow_mass_delete: bool
) -> str | None:
    """Why deletes for a target must be held back, or None when they may go ahead.

    An unmounted or emptied share looks exactly like a mass deletion; only an explicit
    --allow-mass-delete lets one through.
    """
    if deletes == 0 or allow_mass_delete:
        return None
    if on_disk == 0:
        return (
            f"the folder is empty but the cache lists {counted(recorded, 'file')}; is the share mounted? "
            "run with --allow-mass-delete if the files were removed on purpose"
        )
    share = 100.0 * deletes / max(recorded, 1)
    if share > max_delete_percent:
        return (
            f"{deletes} of {counted(recorded, 'file')} ({share:.0f}%) would be deleted, more than the "
            f"{max_delete_percent:g}% allowed; run with --allow-mass-delete if that is intended"
        )
    return None


def device_guard(
    *, target: str, device: int | None, recorded_device: int | None, deletes: int, allow_mass_delete: bool
) -> str | None:
    """Why a target's deletes must be held back because its folder is on another device than the
    last time it was backed up, or None when they may go ahead.

    An unmounted share leaves the empty mount point of the parent file system: the same path on
    another st_dev. Its planned deletes are not to be trusted, whether or not the deletion guard's
    counts would let them through. Uploads of the files that are there are not held back: a
    folder moved to a new disk legitimately has its files. An unknown device on either side (no
    run recorded one yet, or the folder could not be stat'ed) decides nothing.
    """
    if deletes == 0 or allow_mass_delete or device is None or recorded_device is None:
        return None
    if device == recorded_device:
        return None
    return (
        f"{target} is now on another device (st_dev {device}, was {recorded_device}): an unmounted share? "
        "deletes held back; mount it, or run with --allow-mass-delete if the move was intended"
    )
