"""Verify: compare each target's bucket, the cache and the disk, without restoring anything.

Owns the comparison rules (what counts as missing from S3, unexplained in S3, a size, storage-class
or checksum mismatch, and what cannot be checked) and `--repair` (cache corrections that make the next
backup put things right). Talks to S3 only through `s3.S3`, reads the disk only through `walk`,
and writes the cache only with --repair, under the backup's lock.
"""

from __future__ import annotations

import argparse
import enum
import logging
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ..cache.records import Recorded, is_unchanged
from ..cache.spill import open_spill
from ..cache.store import Change, Removed, StateStore, Stored, iter_rows
from ..disk.entries import DiskFile, Hole, Skipped, WalkEntry
from ..disk.keys import display_path, path_for_key
from ..disk.lock import cache_lock
from ..disk.walk import Excluder, walk_target
from ..errors import EXIT_FAILURES, EXIT_OK, Failure, S3Error, unwrapped_group
from ..report.progress import Ticker
from ..report.summary import format_bytes, format_requests
from ..s3.checksums import split_checksum
from ..s3.client import S3, open_s3
from ..s3.objects import ListedObject, ObjectHead
from ..settings.config import Config
from ..settings.targets import Target, discover_targets, select_targets

log = logging.getLogger(__name__)

SHOWN_PER_KIND = 20  # problem lines printed per kind and target; the counts are always complete
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")
SPILL_CHUNK = 1000  # rows read from or written to the spill at a time


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


# Checksums: what is comparable, and what is not


def compare_checksum(cached: str, etag: str, head: ObjectHead | None) -> tuple[bool | None, str]:
    """Compare the cache's value with what S3 stored: (True, "") match, (False, detail) mismatch,
    (None, reason) not checkable. `head` is None when no HeadObject was sent (md5 values are
    compared with the listing's ETag alone). Never reports a mismatch it cannot prove."""
    algorithm, digest, parts = split_checksum(cached)
    if algorithm == "md5":
        want = digest + (f"-{parts}" if parts is not None else "")
        if not _MD5_ETAG.match(etag):
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
    stored, stored_parts = head.checksum_crc32, None
    if "-" in stored:
        stored, _, tail = stored.rpartition("-")
        stored_parts = int(tail) if tail.isdigit() else None
    if stored == digest and (stored_parts is None or parts is None or stored_parts == parts):
        return True, ""
    return False, f"S3 stored CRC32 {head.checksum_crc32}, the cache {digest}" + (f"-{parts}" if parts else "")


# The comparison of one target


def _under(path: bytes, prefixes: Sequence[bytes]) -> bool:
    return any(path.startswith(p) for p in prefixes)


def compare(
    target: Target,
    storage_class: str,
    objects: Iterable[tuple[bytes, ListedObject]],
    rows: Iterable[tuple[bytes, int | None, int, str | None]],
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

    def on_row(
        row: tuple[bytes, int | None, int, str | None], entry: WalkEntry | None, obj: ListedObject | None
    ) -> None:
        path, size, mtime_ns, checksum = row
        check.cached += 1
        on_disk: bool | None
        if disk is None or isinstance(entry, Skipped) or (entry is None and _under(path, holes)):
            on_disk = None  # unknown, or no regular file: the backup keeps such rows as they are
        else:
            on_disk = isinstance(entry, DiskFile)
        if isinstance(entry, DiskFile):
            check.on_disk = (check.on_disk or 0) + 1
            if not is_unchanged(entry, Recorded(path, size, mtime_ns)):
                check.not_backed_up += 1
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
        path = min(x for x in (d.path if d else None, r[0] if r else None, o[0] if o else None) if x is not None)
        entry = d if d is not None and d.path == path else None
        row = r if r is not None and r[0] == path else None
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


# The run


@dataclass(slots=True)
class Verify:
    config: Config
    store: StateStore
    targets: list[Target]
    checksums: bool
    counts: Counter[str] = field(default_factory=Counter)
    results: list[TargetCheck] = field(default_factory=list)
    phase: str = "starting"
    done: int = 0
    total: int = 0

    def progress(self) -> str:
        if self.total:
            return f"verify: {self.phase}: {self.done}/{self.total}; requests so far {sum(self.counts.values())}"
        return f"verify: {self.phase}; requests so far {sum(self.counts.values())}"

    async def run(self) -> None:
        async with open_s3(self.config.aws, self.config.tuning) as s3:
            self.counts = s3.count_requests()
            async with unwrapped_group() as tg:
                Ticker(self.progress).start(tg)
                for target in self.targets:
                    try:
                        self.results.append(await self._target(s3, target))
                    except S3Error as exc:  # the listing failed: nothing to compare for this target
                        failed = TargetCheck(target)
                        failed.errors.append(str(exc))
                        self.results.append(failed)
                tg.cancel_scope.cancel()

    async def _target(self, s3: S3, target: Target) -> TargetCheck:
        self.phase, self.done, self.total = f"listing s3://{target.bucket}", 0, 0
        with tempfile.TemporaryDirectory(prefix="async-backup-verify-") as tmp:
            spill = Spill(Path(tmp) / "listing.db")
            try:
                bucket_missing = False
                try:
                    async for page in s3.list_current(target.bucket):
                        await anyio.to_thread.run_sync(spill.add_objects, page)
                        self.done += len(page)
                except S3Error as exc:
                    if exc.code != "NoSuchBucket":
                        raise
                    bucket_missing = True
                self.phase = f"reading {target.path} and the cache"
                excluder = Excluder(self.config.exclude)
                failures: list[Failure] = []
                rows = iter_rows(self.store, target.bucket)
                disk = (
                    None if target.missing else walk_target(target.path_bytes, excluder, failures.append, target.path)
                )

                def on_check(check: TargetCheck, item: ChecksumCheck) -> None:
                    if self._needs_head(item):
                        spill.add_check(item)  # compared once the merge is done, one HeadObject each
                    else:
                        settle_checksum(check, item, None)

                check = await anyio.to_thread.run_sync(
                    compare, target, self.config.storage_class, spill.objects(), rows, disk, excluder, on_check
                )
                check.walk_failures = failures
                check.bucket_missing = bucket_missing
                await self._checksums(s3, check, spill)
            finally:
                spill.close()
        return check

    def _needs_head(self, item: ChecksumCheck) -> bool:
        """md5 values are compared with the listing's ETag (free); CRC32 values need a HeadObject.
        An ETag mismatch is confirmed by a HEAD, even with --no-checksums."""
        verdict, _ = compare_checksum(item.cached, item.etag, None)
        if verdict is not None:
            return False
        if item.cached.startswith("md5:"):
            return bool(_MD5_ETAG.match(item.etag))
        return item.cached.startswith("crc32:") and self.checksums

    async def _checksums(self, s3: S3, check: TargetCheck, spill: Spill) -> None:
        """The checksums left for a HeadObject each, read back from the spill in chunks."""
        wanted = spill.checks_count
        if wanted:
            log.info(
                "s3://%s: comparing %d checksums, one HeadObject each (--no-checksums skips the CRC32 ones)",
                check.target.bucket,
                wanted,
            )
        self.phase, self.done, self.total = f"checksums of s3://{check.target.bucket}", 0, wanted
        work = spill.checks()

        async def next_item() -> ChecksumCheck | None:
            return await anyio.to_thread.run_sync(next, work, None)

        lock = anyio.Lock()

        async def worker() -> None:
            while True:
                async with lock:  # one reader of the spill at a time
                    item = await next_item()
                if item is None:
                    return
                try:
                    head = await s3.head_object(check.target.bucket, item.key)
                except S3Error as exc:
                    check.errors.append(f"{display_path(item.path)}: checksum not compared: {exc}")
                    self.done += 1
                    continue
                if head is None:
                    check.add(Kind.MISSING, item.path, "listed, then gone before its HeadObject")
                else:
                    settle_checksum(check, item, head)
                self.done += 1

        async with unwrapped_group() as tg:
            for _ in range(min(self.config.tuning.workers, wanted)):
                tg.start_soon(worker)
        check.checked = wanted


class Spill:
    """A target's bucket listing and the checksums still to compare, in a temporary SQLite file:
    verify's memory then does not grow with the bucket. Objects come back in path-byte order
    (the order of the cache's rows and of the walk), whatever order the keys were listed in."""

    def __init__(self, path: Path) -> None:
        self._conn = open_spill(path)
        self._conn.execute(
            "CREATE TABLE objects (path BLOB PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL, "
            "class TEXT NOT NULL, etag TEXT NOT NULL) WITHOUT ROWID"
        )
        self._conn.execute(
            "CREATE TABLE checks (path BLOB PRIMARY KEY, key TEXT NOT NULL, cached TEXT NOT NULL, "
            "etag TEXT NOT NULL, disk INTEGER) WITHOUT ROWID"
        )
        self._pending: list[tuple[bytes, str, str, str, int | None]] = []
        self.checks_count = 0

    def add_objects(self, page: Sequence[ListedObject]) -> None:
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                [(path_for_key(o.key), o.key, o.size, o.storage_class, o.etag) for o in page],
            )

    def objects(self) -> Iterator[tuple[bytes, ListedObject]]:
        cursor = self._conn.execute("SELECT path, key, size, class, etag FROM objects ORDER BY path")
        while rows := cursor.fetchmany(SPILL_CHUNK):
            for path, key, size, cls, etag in rows:
                yield bytes(path), ListedObject(str(key), int(size), str(cls), str(etag))
        self._flush_checks()

    def add_check(self, item: ChecksumCheck) -> None:
        disk = None if item.disk_present is None else int(item.disk_present)
        self._pending.append((item.path, item.key, item.cached, item.etag, disk))
        self.checks_count += 1
        if len(self._pending) >= SPILL_CHUNK:
            self._flush_checks()

    def _flush_checks(self) -> None:
        if self._pending:
            self._conn.executemany("INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?)", self._pending)
            self._pending = []

    def checks(self) -> Iterator[ChecksumCheck]:
        self._flush_checks()
        self._conn.commit()
        after = b""
        while True:
            rows = self._conn.execute(
                "SELECT path, key, cached, etag, disk FROM checks WHERE path > ? ORDER BY path LIMIT ?",
                (after, SPILL_CHUNK),
            ).fetchall()
            if not rows:
                return
            for path, key, cached, etag, disk in rows:
                yield ChecksumCheck(bytes(path), str(key), str(cached), str(etag), None if disk is None else bool(disk))
            after = bytes(rows[-1][0])

    def close(self) -> None:
        self._conn.close()


def _report(check: TargetCheck) -> Iterator[str]:
    t = check.target
    disk = "folder not readable" if check.on_disk is None else f"{check.on_disk} on disk"
    head = f"{t.path} -> s3://{t.bucket}: {check.objects} objects ({format_bytes(check.object_bytes)}), "
    head += f"{check.cached} cached, {disk}"
    if check.bucket_missing:
        head += "; the bucket does not exist"
    if check.errors:
        head += f"; not fully verified: {len(check.errors)} requests failed"
    if not check.problems:
        yield head + ("" if check.errors else ": whole")
    else:
        kinds = Counter(p.kind for p in check.problems)
        yield head + f": {len(check.problems)} problems (" + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")"
    for error in check.errors[:SHOWN_PER_KIND]:
        yield f"  error: {error}"
    if len(check.errors) > SHOWN_PER_KIND:
        yield f"  error: ... and {len(check.errors) - SHOWN_PER_KIND} more"
    if check.problems:
        for kind in Kind:
            shown = [p for p in check.problems if p.kind == kind]
            for p in shown[:SHOWN_PER_KIND]:
                yield f"  {kind}: {display_path(p.path)}: {p.detail}"
            if len(shown) > SHOWN_PER_KIND:
                yield f"  {kind}: ... and {len(shown) - SHOWN_PER_KIND} more"
    parts = [f"{check.checksums_match} match"]
    parts.extend(f"{n} not checkable ({reason})" for reason, n in sorted(check.not_checkable.items()))
    if check.checksums_skipped:
        parts.append(f"{check.checksums_skipped} not compared (--no-checksums)")
    yield f"  checksums: {', '.join(parts)}"
    pending = []
    if check.not_backed_up:
        pending.append(f"{check.not_backed_up} files on disk are new or changed")
    if check.gone_from_disk:
        pending.append(f"{check.gone_from_disk} cached files are gone from disk")
    if check.uncached_objects:
        pending.append(f"{check.uncached_objects} objects have a file but no cache row")
    if pending:
        yield f"  not a problem, the next backup settles it: {'; '.join(pending)}"
    for failure in check.walk_failures[:SHOWN_PER_KIND]:
        yield f"  unreadable on disk: {failure.path}: {failure.message}"


def run_verify(config: Config, cache_dir: Path, args: argparse.Namespace) -> int:
    """`async-backup verify`: 0 when every target is whole, 1 with a summary when not."""
    checksums = not getattr(args, "no_checksums", False)
    lock: AbstractContextManager[None] = cache_lock(cache_dir) if args.repair else nullcontext()
    with lock:
        store = StateStore(cache_dir, readonly=not args.repair)
        try:
            targets = select_targets(discover_targets(config, store.known_targets()), args.target, "--target")
            for unusable in (t for t in targets if t.problem):
                print(f"{unusable.path}: not checked: {unusable.problem}")
            targets = [t for t in targets if not t.problem]
            job = Verify(config, store, targets, checksums)
            started = time.monotonic()
            anyio.run(job.run)
            problems = sum(len(c.problems) for c in job.results)
            for check in job.results:
                for line in _report(check):
                    print(line)
            print(f"requests sent: {format_requests(job.counts)}")
            if checksums:
                print("  CRC32 checks cost one HeadObject per object; --no-checksums skips them")
            else:
                print("  CRC32 values not compared (--no-checksums); MD5 values compared with the listing's ETags")
            repairs = [change for c in job.results for change in c.repairs.values()]
            if args.repair and repairs:
                store.apply(repairs)
            errors = sum(len(c.errors) for c in job.results)
            summary = _summary(job.results, problems, errors, repairs, args.repair, time.monotonic() - started)
            print(summary)
            return EXIT_FAILURES if problems or errors else EXIT_OK
        finally:
            store.close()


def _summary(
    results: Sequence[TargetCheck],
    problems: int,
    errors: int,
    repairs: Sequence[Change],
    repaired: bool,
    took_s: float,
) -> str:
    unfinished = f"; {errors} requests failed, so not everything was verified: run it again" if errors else ""
    if not problems:
        if errors:
            return f"verify: no problems found{unfinished} ({took_s:.1f} s)"
        return f"verify: all {len(results)} targets whole ({took_s:.1f} s)"
    broken = sum(1 for c in results if c.problems)
    manual = sum(c.no_repair for c in results)
    text = f"verify: {problems} problems in {broken} of {len(results)} targets{unfinished}"
    if repaired:
        text += f"; the cache was corrected for {len(repairs)} files: run a backup now to put them right"
    elif repairs:
        text += "; run `async-backup verify --repair`, then a backup, to put them right"
    if manual:
        text += f"; {manual} need a look by hand (see above)"
    return text + f" ({took_s:.1f} s)"
