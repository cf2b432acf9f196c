"""Verify: compare each target's bucket, the cache and the disk, without restoring anything.

Owns the run: per target the listing spilled to disk (`spill`), the cache's rows and the walk
merged by `compare` (the rules live there) in a worker thread, HeadObject for the checksums that
need one, `--repair` (cache corrections that make the next backup put things right) and the
report. The only module of verify/ that opens task groups. Talks to S3 only through `s3.S3`, reads
the disk only through `walk`, and writes the cache only with --repair, under the backup's lock.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ..cache.store import Change, StateStore
from ..cache.writes import CacheWrites
from ..disk.keys import display_path
from ..disk.lock import cache_lock
from ..disk.walk import MOUNT_ABSENT, Excluder, MountWatch, mount_absent, walk_target
from ..errors import EXIT_FAILURES, EXIT_OK, Failure, S3Error, unwrapped_group
from ..recovery.accountnames import with_account_names
from ..recovery.snapshots import CACHE_BUCKET
from ..report.progress import Ticker
from ..report.summary import format_bytes, format_requests
from ..s3.checksums import MD5_ETAG, s3_value
from ..s3.client import S3, open_s3
from ..settings.config import Config
from ..settings.targets import Target, discover_targets, select_targets
from ..wording import counted, noun_for
from ..workpool import work_through
from .compare import ChecksumCheck, Kind, TargetCheck, compare, compare_checksum, settle_checksum
from .options import VerifyOptions
from .spill import Spill

log = logging.getLogger(__name__)

SHOWN_PER_KIND = 20  # problem lines printed per kind and target; the counts are always complete


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
                rows = self.store.recorded(target.bucket)
                # Remembered mount points that are absent are holes: their rows are neither reported
                # as gone nor repaired away, and objects under them get no "gone" row.
                remembered = frozenset(await anyio.to_thread.run_sync(self.store.mounts, target.path))

                def absent(path: bytes, why: str) -> None:
                    failures.append(mount_absent(target.path, path, why))

                watch = MountWatch(remembered, absent=absent)
                disk = (
                    None
                    if target.missing
                    else walk_target(target.path_bytes, excluder, failures.append, target.path, mounts=watch)
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
        stored = s3_value(item.cached)
        if stored.startswith("md5:"):
            return bool(MD5_ETAG.match(item.etag))
        return stored.startswith("crc32:") and self.checksums

    async def _checksums(self, s3: S3, check: TargetCheck, spill: Spill) -> None:
        """The checksums left for a HeadObject each, read back from the spill in chunks."""
        wanted = spill.checks_count
        if wanted:
            log.info(
                "s3://%s: comparing %s, one HeadObject each (--no-checksums skips the CRC32 ones)",
                check.target.bucket,
                counted(wanted, "checksum"),
            )
        self.phase, self.done, self.total = f"checksums of s3://{check.target.bucket}", 0, wanted

        async def compare_one(item: ChecksumCheck) -> None:
            try:
                head = await s3.head_object(check.target.bucket, item.key)
            except S3Error as exc:
                check.errors.append(f"{display_path(item.path)}: checksum not compared: {exc}")
                self.done += 1
                return
            if head is None:
                check.add(Kind.MISSING, item.path, "listed, then gone before its HeadObject")
            else:
                settle_checksum(check, item, head)
            self.done += 1

        await work_through(spill.checks(), compare_one, min(self.config.tuning.workers, wanted))
        check.checked = wanted


def _report(check: TargetCheck) -> Iterator[str]:
    t = check.target
    disk = "folder not readable" if check.on_disk is None else f"{check.on_disk} on disk"
    head = f"{t.path} -> s3://{t.bucket}: {counted(check.objects, 'object')} ({format_bytes(check.object_bytes)}), "
    head += f"{check.cached} cached, {disk}"
    if check.bucket_missing:
        head += "; the bucket does not exist"
    if check.errors:
        head += f"; not fully verified: {counted(len(check.errors), 'request')} failed"
    if not check.problems:
        if check.errors:
            yield head
        elif check.unsure:
            unsure = counted(check.unsure, "file")
            yield head + f": no problems found, but {unsure} unsure (not proven to be what S3 holds)"
        else:
            yield head + ": whole"
    else:
        kinds = Counter(p.kind for p in check.problems)
        each = ", ".join(f"{n} {k}" for k, n in kinds.items())
        yield head + f": {counted(len(check.problems), 'problem')} ({each})"
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
        n = check.not_backed_up
        pending.append(f"{counted(n, 'file')} on disk {noun_for(n, 'is')} new or changed")
    if check.unsure:
        pending.append(
            f"{counted(check.unsure, 'file')} {noun_for(check.unsure, 'is')} unsure (written just before their "
            "backup read them, or their inode or ctime moved since): it compares their contents and uploads "
            "those that differ"
        )
    if check.gone_from_disk:
        n = check.gone_from_disk
        pending.append(f"{counted(n, 'cached file')} {noun_for(n, 'is')} gone from disk")
    if check.uncached_objects:
        n = check.uncached_objects
        pending.append(f"{counted(n, 'object')} {noun_for(n, 'has')} a file but no cache row")
    if pending:
        yield f"  not a problem, the next backup settles it: {'; '.join(pending)}"
    for failure in check.walk_failures[:SHOWN_PER_KIND]:
        label = "not mounted" if failure.code == MOUNT_ABSENT else "unreadable on disk"
        yield f"  {label}: {failure.path}: {failure.message}"


def run(config: Config, cache_dir: Path, options: VerifyOptions) -> int:
    """`async-backup verify`: 0 when every target is whole, 1 with a summary when not."""
    checksums = options.checksums
    lock: AbstractContextManager[None] = cache_lock(cache_dir) if options.repair else nullcontext()
    with lock:
        store = StateStore(cache_dir, readonly=not options.repair)
        try:
            known = store.known_targets()
            config = with_account_names(config, known, store.get_meta(CACHE_BUCKET))
            targets = select_targets(discover_targets(config, known), options.targets, "--target")
            for unusable in (t for t in targets if t.problem):
                print(f"{unusable.path}: not checked: {unusable.problem}")
            for new in (t for t in targets if t.missing_key):  # nothing of it was ever backed up
                print(f"{new.path}: not checked: {new.missing_key} is missing and was never backed up")
            targets = [t for t in targets if not t.problem and not t.missing_key]
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
            if options.repair and repairs:
                anyio.run(CacheWrites(store).repair, repairs)
            errors = sum(len(c.errors) for c in job.results)
            summary = _summary(job.results, problems, errors, repairs, options.repair, time.monotonic() - started)
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
    unfinished = ""
    if errors:
        unfinished = f"; {counted(errors, 'request')} failed, so not everything was verified: run it again"
    if not problems:
        unsure = sum(c.unsure for c in results)
        if errors:
            return f"verify: no problems found{unfinished} ({took_s:.1f} s)"
        if unsure:
            return (
                f"verify: no problems found; {counted(unsure, 'file')} unsure, the next backup compares their contents "
                f"({took_s:.1f} s)"
            )
        return f"verify: {'' if len(results) == 1 else 'all '}{counted(len(results), 'target')} whole ({took_s:.1f} s)"
    broken = sum(1 for c in results if c.problems)
    manual = sum(c.no_repair for c in results)
    text = f"verify: {counted(problems, 'problem')} in {broken} of {counted(len(results), 'target')}{unfinished}"
    if repaired:
        text += f"; the cache was corrected for {counted(len(repairs), 'file')}: run a backup now to put them right"
    elif repairs:
        text += "; run `async-backup verify --repair`, then a backup, to put them right"
    if manual:
        text += f"; {manual} need a look by hand (see above)"
    return text + f" ({took_s:.1f} s)"
