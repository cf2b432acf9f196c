"""verify's rules: what counts as missing from S3, unexplained in S3, a size, storage-class or
checksum mismatch, and what cannot be checked, for one target.

Owns the problem kinds and the per-target result, the checksum comparison (what is comparable
and what is not) and `compare`, which merges the bucket listing, the cache's rows and the walk in
one pass, all sorted by path bytes. Synchronous and free of I/O: the inputs are iterators, so it
runs in a worker thread and in tests alike. `command` wires it to S3, the cache and the disk.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..cache.records import Recorded, is_unchanged, needs_proof
from ..cache.store import Change, Removed, Stored
from ..disk.entries import DiskFile, Hole, Skipped, WalkEntry
from ..disk.walk import Excluder
from ..errors import Failure
from ..report.summary import format_bytes
from ..s3.checksums import MD5_ETAG, s3_value, split_checksum, split_stored
from ..s3.objects import ListedObject, ObjectHead
from ..settings.targets import Target


class Kind(enum.StrEnum):
    """What is wrong with one path; the summary groups problems by kind."""

    MISSING = "missing from S3"
    UNEXPLAINED = "unexplained in S3"
    SIZE = "size mismatch"
    STORAGE_CLASS = "wrong storage class"
    CHECKSUM = "checksum mismatch"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: Kind
    path: bytes
    detail: str


@dataclass(frozen=True, slots=True)
class ChecksumCheck:
    """A cache row and an object of the same size and class, whose checksums are yet to be compared."""

    path: bytes
    key: str
    cached: str
    etag: str
    disk_present: bool | None


@dataclass(slots=True)
class TargetCheck:
    """The outcome of verifying one target."""

    target: Target
    objects: int = 0
    object_bytes: int = 0
    cached: int = 0
    on_disk: int | None = None  # None: the folder could not be read (not mounted?)
    problems: list[Problem] = field(default_factory=list)
    checksums_match: int = 0
    checksums_skipped: int = 0  # not compared because of --no-checksums
    not_checkable: Counter[str] = field(default_factory=Counter)  # reason -> count
    not_backed_up: int = 0  # on disk, new or changed since the last backup
    # Matching by size and mtime, but not proven to be what S3 holds: read racily, or the inode or
    # ctime moved since. Never called whole; the next backup compares their contents.
    unsure: int = 0
    gone_from_disk: int = 0  # cached, no longer on disk: the next backup deletes them
    uncached_objects: int = 0  # in S3 and on disk but not in the cache: the next backup uploads them
    walk_failures: list[Failure] = field(default_factory=list)
    repairs: dict[bytes, Change] = field(default_factory=dict)
    no_repair: int = 0  # problems --repair cannot correct through the cache
    checks: list[ChecksumCheck] = field(default_factory=list)
    checked: int = 0
    bucket_missing: bool = False
    errors: list[str] = field(default_factory=list)  # requests that failed: this target is not fully verified

    def add(self, kind: Kind, path: bytes, detail: str) -> None:
        self.problems.append(Problem(kind, path, detail))


def compare_checksum(cached: str, etag: str, head: ObjectHead | None) -> tuple[bool | None, str]:
    """Compare the cache's value with what S3 stored: (True, "") match, (False, detail) mismatch,
    (None, reason) not checkable. `head` is None when no HeadObject was sent (md5 values are
    compared with the listing's ETag alone). Never reports a mismatch it cannot prove. Of a row
    with two values, the second: what S3 stores where the whole file's CRC32 is not it."""
    algorithm, digest, parts = split_checksum(s3_value(cached))
    if algorithm == "md5":
        want = digest + (f"-{parts}" if parts is not None else "")
        if not MD5_ETAG.match(etag):
            return None, "the ETag is not an MD5"
        if etag == want:
            return True, ""
        if head is None:
            return None, "ETag differs; HeadObject needed"
        if head.encrypted_with_key:
            return None, "the ETag of a KMS or SSE-C encrypted object is not an MD5"
        return False, f"S3 has ETag {etag}, the cache md5 {want}"
    if algorithm != "crc32":
        return None, "unknown checksum kind in the cache"
    if head is None:
        return None, "not compared"
    if head.checksum_crc32 is None:
        return None, "S3 reports another checksum" if head.other_checksum else "S3 stores no checksum"
    stored, stored_parts = split_stored(head.checksum_crc32)
    if stored == digest and (stored_parts is None or parts is None or stored_parts == parts):
        return True, ""
    return False, f"S3 stored CRC32 {head.checksum_crc32}, the cache {digest}" + (f"-{parts}" if parts else "")


def _under(path: bytes, prefixes: Sequence[bytes]) -> bool:
    return any(path.startswith(p) for p in prefixes)


def compare(
    target: Target,
    storage_class: str,
    objects: Iterable[tuple[bytes, ListedObject]],
    rows: Iterable[Recorded],
    disk: Iterable[WalkEntry] | None,
    excluder: Excluder,
    on_check: Callable[[TargetCheck, ChecksumCheck], None] | None = None,
) -> TargetCheck:
    """Classify every path seen in S3, the cache or on disk.

    One pass merges three streams, each sorted by path bytes: the listing (path, object), the
    cache's rows and the walk, as the planner merges walk and cache. Synchronous, for a worker
    thread; nothing is held per object, so memory does not grow with the bucket: only problems
    (and the directories the walk could not see into) are kept. Each object whose checksum is
    still to be compared goes to `on_check` (by default appended to `check.checks`).
    `disk` is None when the folder is not there: then nothing is concluded from the disk."""
    check = TargetCheck(target)
    check.on_disk = None if disk is None else 0
    holes: list[bytes] = []  # directories the walk could not see into (or excluded ones)
    root = target.path_bytes.rstrip(b"/") + b"/"
    checked = on_check or (lambda c, item: c.checks.append(item))

    def repair_wrong(path: bytes, on_disk: bool | None) -> None:
        # With the file on disk, dropping the row makes the next backup upload it again. Without it,
        # the row stays: the next backup deletes the object, as it deletes every vanished file.
        if on_disk is not False:
            check.repairs[path] = Removed(target.bucket, path)

    def on_row(row: Recorded, entry: WalkEntry | None, obj: ListedObject | None) -> None:
        path, size, checksum = row.path, row.size, row.checksum
        check.cached += 1
        on_disk: bool | None
        if disk is None or isinstance(entry, Skipped) or (entry is None and _under(path, holes)):
            on_disk = None  # unknown, or no regular file: the backup keeps such rows as they are
        else:
            on_disk = isinstance(entry, DiskFile)
        if isinstance(entry, DiskFile):
            check.on_disk = (check.on_disk or 0) + 1
            if not is_unchanged(entry, row):
                check.not_backed_up += 1
            elif needs_proof(entry, row):
                check.unsure += 1
        elif row.unsure and on_disk is None:
            check.unsure += 1  # the disk cannot be seen: the row alone says it is not proven
        elif on_disk is False:
            check.gone_from_disk += 1
        if obj is None:
            cached_size = "size unknown" if size is None else format_bytes(size)
            check.add(Kind.MISSING, path, f"cached ({cached_size}) but no current object")
            check.repairs[path] = Removed(target.bucket, path)
            return
        wrong = False
        if size is not None and obj.size != size:
            check.add(Kind.SIZE, path, f"S3 has {obj.size} bytes, the cache {size}")
            wrong = True
        if obj.storage_class != storage_class:
            check.add(Kind.STORAGE_CLASS, path, f"S3 has {obj.storage_class}, the config asks for {storage_class}")
            wrong = True
        if wrong:
            repair_wrong(path, on_disk)
        elif checksum:
            checked(check, ChecksumCheck(path, obj.key, checksum, obj.etag, on_disk))
        else:
            check.not_checkable["no checksum in the cache (adopted from the old script)"] += 1

    def on_disk_only(entry: WalkEntry, obj: ListedObject | None) -> None:
        if isinstance(entry, Hole):
            holes.append(entry.path)
            if obj is not None:
                unexplained(entry.path, obj, skipped=False)
        elif isinstance(entry, Skipped):
            if obj is not None:
                unexplained(entry.path, obj, skipped=True)
        else:
            check.on_disk = (check.on_disk or 0) + 1
            check.not_backed_up += 1  # new since the last backup, or the cache forgot it
            if obj is not None:
                check.uncached_objects += 1

    def unexplained(path: bytes, obj: ListedObject, *, skipped: bool) -> None:
        """An object with no cache row; the walk has passed its path, so every hole above it is known."""
        if not path.startswith(root):
            check.add(Kind.UNEXPLAINED, path, f"key {obj.key!r} lies outside the target's folder; remove it by hand")
            check.no_repair += 1
        elif disk is None or _under(path, holes):
            check.uncached_objects += 1  # the disk cannot be seen there: nothing to explain it with
        elif skipped or excluder.excludes_any_part(target.path_bytes, path):
            check.add(Kind.UNEXPLAINED, path, "a symlink, special or excluded file stands there; remove it by hand")
            check.no_repair += 1
        else:
            check.add(Kind.UNEXPLAINED, path, "no file and no cache row explain it")
            # A row for it makes the next backup delete the object (a delete marker: the versions stay).
            check.repairs[path] = Stored(target.bucket, path, obj.size, 0, None)

    disk_it = iter(disk if disk is not None else ())
    rows_it = iter(rows)
    objects_it = iter(objects)
    d = next(disk_it, None)
    r = next(rows_it, None)
    o = next(objects_it, None)
    while d is not None or r is not None or o is not None:
        path = min(x for x in (d.path if d else None, r.path if r else None, o[0] if o else None) if x is not None)
        entry = d if d is not None and d.path == path else None
        row = r if r is not None and r.path == path else None
        obj = o[1] if o is not None and o[0] == path else None
        if obj is not None:
            check.objects += 1
            check.object_bytes += obj.size
        if row is not None:
            on_row(row, entry, obj)
        elif entry is not None:
            on_disk_only(entry, obj)
        elif obj is not None:
            unexplained(path, obj, skipped=False)
        if entry is not None:
            d = next(disk_it, None)
        if row is not None:
            r = next(rows_it, None)
        if obj is not None:
            o = next(objects_it, None)
    return check


def settle_checksum(check: TargetCheck, item: ChecksumCheck, head: ObjectHead | None) -> None:
    verdict, detail = compare_checksum(item.cached, item.etag, head)
    if verdict is True:
        check.checksums_match += 1
    elif verdict is False:
        check.add(Kind.CHECKSUM, item.path, detail)
        if item.disk_present is not False:
            check.repairs[item.path] = Removed(check.target.bucket, item.path)
    elif detail == "not compared":
        check.checksums_skipped += 1
    else:
        check.not_checkable[detail] += 1
