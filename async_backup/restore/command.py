"""Restore: bring files back from a target's bucket, asking for Deep Archive retrievals first.

Owns the run: listing versions into the spill (`spill`), choosing per key (`choose`: a path
prefix, the version current at --as-of), the estimate shown before anything is sent,
RestoreObject requests and their record (`RestoreLog`: a rerun sends none twice and reports
pending, ready and failed counts), and downloads: streamed in chunks to a temporary file beside
the destination (`place`), checked against the stored checksum (`checksum`), given the original
mtime, then moved into place (never through a link below the root, never over a file without
--overwrite). The only module of restore/ that opens task groups. Talks to S3 only through
`s3.S3`. Reads the cache read-only (no lock: the nightly backup may run meanwhile, and a damaged
cache is left for the backup to move aside) and writes only its own log of requests (`RestoreLog`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio

from ..cache.records import Recorded
from ..cache.restores import RestoreLog
from ..cache.store import StateStore
from ..disk.keys import display_path, path_for_key
from ..errors import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ConfigError, S3Error, unwrapped_group
from ..interrupts import run_until_signal
from ..recovery.accountnames import with_account_names
from ..recovery.snapshots import CACHE_BUCKET
from ..report.progress import Ticker
from ..report.summary import format_bytes, format_requests
from ..s3.checksums import StreamSum
from ..s3.client import S3, open_s3
from ..s3.objects import ObjectVersion, parse_mtime_metadata
from ..s3.pricing import format_usd, prices_for, restore_cost
from ..settings.config import Config
from ..settings.naming import bucket_name_problem
from ..settings.targets import Target, default_bucket, discover_targets, paths_needing_names, select_targets
from ..wording import counted, noun_for
from ..workpool import work_through
from .checksum import expected_checksum, recorded_part_bytes
from .choose import Action, Item, is_safe, list_prefixes, under_prefix
from .options import RestoreOptions
from .place import Folders, Refused, TempFile, lookup
from .spill import VersionSpill

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024  # per download in flight: memory is about workers x CHUNK_BYTES
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})  # unreadable until RestoreObject completes
# Deep Archive retrieval times [S3 user guide, "Archive retrieval options"]; GLACIER is faster.
READY_WITHIN = {"Bulk": "up to 48 h", "Standard": "up to 12 h"}
SHOWN_FAILURES = 50


@dataclass(slots=True)
class Stats:
    selected: int = 0
    selected_bytes: int = 0
    deleted_then: int = 0  # keys whose version at --as-of is a delete marker
    present_same: int = 0  # at the destination already with the same size: left alone
    present_other: int = 0  # at the destination with another size: left alone without --overwrite
    restored: int = 0
    restored_bytes: int = 0
    requested: int = 0  # RestoreObject requests accepted in this run
    pending: int = 0
    verified: int = 0
    not_checkable: int = 0
    failures: list[str] = field(default_factory=list)
    handled: int = 0
    received_bytes: int = 0  # downloaded so far, finished files or not (for the progress line)


# The run


class Restore:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        requests: RestoreLog,
        target: Target,
        prefix: bytes | None,
        dest_root: bytes | None,
        as_of: datetime | None,
        options: RestoreOptions,
    ) -> None:
        self.config = config
        self.store = store
        self.requests = requests
        self.target = target
        self.bucket = target.bucket
        self.prefix = prefix
        self.dest_root = dest_root
        self.as_of = as_of
        self.tier: str = options.tier
        self.days: int = options.days
        self.overwrite: bool = options.overwrite
        self.yes: bool = options.yes
        self.stats = Stats()
        self.counts: Counter[str] = Counter()
        self.spill: VersionSpill | None = None  # the listing, the choice and the plan, on disk
        self.item_count = 0
        self.planned: Counter[Action] = Counter()
        self.archived_bytes = 0
        self.request_bytes = 0  # of those, the ones that need a new retrieval (priced per GB)
        self.item_bytes = 0  # everything to download
        self.dry_run: bool = options.dry_run
        self.interrupted = False
        self._record_lock = anyio.Lock()
        mask = os.umask(0)
        os.umask(mask)
        self._file_mode = 0o666 & ~mask

    def progress(self) -> str:
        s = self.stats
        return (
            f"restore: {s.handled}/{self.item_count} handled, {s.restored} restored "
            f"({format_bytes(s.received_bytes)} downloaded), {s.pending} pending, {len(s.failures)} failed"
        )

    async def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="async-backup-restore-") as tmp:
            self.spill = VersionSpill(Path(tmp) / "versions.db")
            try:
                return await self._run()
            finally:
                self.spill.close()

    async def _run(self) -> int:
        async with open_s3(self.config.aws, self.config.tuning) as s3:
            self.counts = s3.count_requests()
            await self._select(s3)
            await anyio.to_thread.run_sync(self._plan)
            for line in self._estimate():
                print(line)
            if not self.stats.selected:
                print(f"restore: nothing to restore: no objects under {self._where()} in s3://{self.bucket}")
                print(f"requests sent: {format_requests(self.counts)}")
                return EXIT_FAILURES
            if self.dry_run:
                for failure in self.stats.failures[:SHOWN_FAILURES]:
                    print(f"  refused: {failure}")
                print("restore: dry run: nothing was requested or written")
                return EXIT_OK
            if not self.item_count:
                self._print_summary()
                return EXIT_FAILURES if self.stats.failures else EXIT_OK
            if not self.yes:
                if not (sys.stdin.isatty() and sys.stdout.isatty()):
                    print(
                        "async-backup: error: restore asks before it starts; add --yes to run it without a terminal",
                        file=sys.stderr,
                    )
                    return EXIT_USAGE
                answer = await anyio.to_thread.run_sync(input, "Start? [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    print("restore: not started; nothing was requested or written")
                    return EXIT_FAILURES
            await self._work(s3)
        self._print_summary()
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURES if self.stats.failures else EXIT_OK

    def _where(self) -> str:
        return "the whole target" if self.prefix is None else display_path(self.prefix)

    async def _select(self, s3: S3) -> None:
        """List every version under the prefix into the spill, then choose one per key there."""
        assert self.spill is not None
        spill = self.spill
        try:
            for s3_prefix in list_prefixes(self.prefix):
                async for page in s3.list_versions(self.bucket, s3_prefix):
                    chosen = [v for v in page if under_prefix(path_for_key(v.key), self.prefix)]
                    await anyio.to_thread.run_sync(spill.add_versions, chosen)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                raise ConfigError(
                    f"bucket {self.bucket} does not exist at this endpoint; give a target's folder path or its bucket"
                ) from None
            raise
        keys, chosen_count, chosen_bytes = await anyio.to_thread.run_sync(spill.choose, self.as_of)
        self.stats.deleted_then = keys - chosen_count
        self.stats.selected = chosen_count
        self.stats.selected_bytes = chosen_bytes

    def _root_of(self, path: bytes) -> tuple[bytes, bytes]:
        """The root a file is placed under and its path below it. With --to, DIR; in place, the
        target's folder as configured (it may be a link, as the backup read it), else "/". Below
        the root no link is followed (`place.Folders`)."""
        if self.dest_root is not None:
            return self.dest_root, path
        base = os.fsencode(self.target.path).rstrip(b"/") if self.target.path else b""
        if base and path.startswith(base + b"/"):
            return base, path[len(base) :]
        return b"/", path

    def _plan(self) -> None:
        """Decide per chosen version (worker thread): left alone, download, request or check."""
        assert self.spill is not None
        folders: dict[bytes, Folders] = {}
        refused: Counter[tuple[str, str]] = Counter()  # a link below the root: one line for all files under it
        try:
            for seq, v in self.spill.chosen():
                self._plan_one(seq, v, folders, refused)
        finally:
            for walker in folders.values():
                walker.forget()
        for (where, why), files in refused.items():
            self.stats.failures.append(f"{where}: {counted(files, 'file')} below it not restored: {why}")
        self.spill.items_done()

    def _plan_one(
        self, seq: int, v: ObjectVersion, folders: dict[bytes, Folders], refused: Counter[tuple[str, str]]
    ) -> None:
        assert self.spill is not None
        path = path_for_key(v.key)
        if not is_safe(path):
            self.stats.failures.append(f'{v.key!r}: the key is not a safe path ("." or ".."); skipped')
            return
        root, rel = self._root_of(path)
        walker = folders.setdefault(root, Folders(root))
        dest = os.path.join(walker.root, rel.lstrip(b"/"))
        try:
            st = lookup(walker, rel)
        except Refused as exc:
            refused[exc.where, exc.why] += 1
            return
        except OSError as exc:
            self.stats.failures.append(f"{display_path(dest)}: {exc.strerror}; check the destination")
            return
        if st is not None and not self.overwrite:
            if st.st_size == v.size:
                self.stats.present_same += 1
            else:
                self.stats.present_other += 1
            return
        if v.storage_class not in ARCHIVE_CLASSES:
            action = Action.DOWNLOAD
        elif self.requests.requested(self.bucket, v.key, v.version_id) or self.store.restore_requested(
            self.bucket, v.key, v.version_id
        ):
            action = Action.CHECK
        else:
            action = Action.REQUEST
        self.spill.add_item(seq, Item(v, path, dest, action))
        self.item_count += 1
        self.planned[action] += 1
        self.item_bytes += v.size
        if action is not Action.DOWNLOAD:
            self.archived_bytes += v.size
        if action is Action.REQUEST:
            self.request_bytes += v.size

    def _estimate(self) -> Iterator[str]:
        s = self.stats
        when = "" if self.as_of is None else f" as of {self.as_of.isoformat(timespec='seconds')}"
        to = "its original place" if self.dest_root is None else os.fsdecode(self.dest_root)
        yield f"restore {self.target.path or self._where()} from s3://{self.bucket}{when} to {to}:"
        line = f"  {counted(s.selected, 'object')}, {format_bytes(s.selected_bytes)}"
        if self.prefix is not None:
            line += f" under {display_path(self.prefix)}"
        if s.deleted_then and self.as_of is not None:
            line += f"; {s.deleted_then} more {noun_for(s.deleted_then, 'was')} deleted by then and not restored"
        elif s.deleted_then:
            deleted = f"{s.deleted_then} more {noun_for(s.deleted_then, 'is')} deleted"
            line += f"; {deleted} (older versions remain: see --as-of)"
        yield line
        if s.present_same or s.present_other:
            yield (
                f"  left alone: {s.present_same + s.present_other} already at the destination "
                f"({s.present_other} of them differ in size; --overwrite replaces them)"
            )
        counts = self.planned
        new, asked, now = counts[Action.REQUEST], counts[Action.CHECK], counts[Action.DOWNLOAD]
        archived_bytes = self.archived_bytes
        if new or asked:
            parts = []
            if new:
                parts.append(
                    f"{counted(new, 'retrieval request')} to send (tier {self.tier}, {READY_WITHIN[self.tier]}, "
                    f"copies readable for {self.days} days)"
                )
            if asked:
                parts.append(f"{asked} requested before (one HeadObject each tells pending or ready)")
            yield f"  archived: {counted(new + asked, 'object')} ({format_bytes(archived_bytes)}): {'; '.join(parts)}"
        if now:
            yield f"  readable now: {counted(now, 'object')} {noun_for(now, 'downloads', 'download')} at once"
        yield (
            f"  requests: {new} RestoreObject, {asked} HeadObject, up to {now + asked + new} GetObject "
            f"(sent so far: {format_requests(self.counts)})"
        )
        prices = prices_for(self.config.aws.region, self.config.pricing)
        new_bytes = self.request_bytes
        for tier in READY_WITHIN:
            cost = restore_cost(
                tier,
                retrievals=new,
                archived_bytes=new_bytes,
                downloaded_bytes=self.item_bytes,
                read_requests=asked + now + asked + new,
                days=self.days,
                prices=prices,
            )
            chosen = " (this restore)" if tier == self.tier else ""
            yield (
                f"  price at tier {tier}{chosen}: {format_usd(cost.usd)} = {format_usd(cost.requests_usd)} for "
                f"{counted(new, 'retrieval')} + {format_usd(cost.retrieval_usd)} for {format_bytes(new_bytes)} "
                "retrieved + "
                f"{format_usd(cost.copy_usd)} for the copies at STANDARD for {self.days} days + "
                f"{format_usd(cost.gets_usd)} for HEAD/GET + {format_usd(cost.transfer_usd)} transfer out"
            )
        yield f"  prices: {prices.describe()}"

    async def _work(self, s3: S3) -> None:
        assert self.spill is not None
        spill = self.spill

        async def handle(item: Item) -> None:
            await self._handle(s3, item)
            self.stats.handled += 1

        async def run_workers() -> None:
            async with unwrapped_group() as outer:
                Ticker(self.progress).start(outer)
                await work_through(spill.items(), handle, min(self.config.tuning.workers, self.item_count))
                outer.cancel_scope.cancel()

        self.interrupted = await run_until_signal(
            run_workers,
            stopping="%s received: stopping; rerun the same command to resume",
            again="%s received again: still stopping",
        )

    async def _handle(self, s3: S3, item: Item) -> None:
        v = item.version
        try:
            if item.action is Action.DOWNLOAD:
                await self._download(s3, item)
            elif item.action is Action.REQUEST:
                await self._request(s3, item)
            else:
                head = await s3.head_object(self.bucket, v.key, version_id=v.version_id)
                if head is None:
                    self._fail(item, "the object version is gone from S3")
                elif head.restore_state == "pending":
                    self.stats.pending += 1
                elif head.restore_state == "ready":
                    await self._download(s3, item)
                else:
                    log.info("%s: the restored copy expired; asking again", display_path(item.path))
                    await self._request(s3, item)
        except S3Error as exc:
            self._fail(item, f"{exc}")
        except Refused as exc:
            self._fail(item, f"{exc}")
        except OSError as exc:
            self._fail(item, f"{exc.strerror or exc}; check the destination")

    async def _request(self, s3: S3, item: Item) -> None:
        v = item.version
        state = await s3.restore_object(self.bucket, v.key, version_id=v.version_id, days=self.days, tier=self.tier)
        async with self._record_lock:
            await anyio.to_thread.run_sync(self.requests.record, self.bucket, v.key, v.version_id, self.tier, self.days)
        if state == "ready":
            await self._download(s3, item)
            return
        self.stats.pending += 1
        if state == "accepted":
            self.stats.requested += 1

    async def _cached_row(self, path: bytes) -> Recorded | None:
        return await anyio.to_thread.run_sync(self.store.row, self.bucket, path)

    async def _download(self, s3: S3, item: Item) -> None:
        v = item.version
        row = await self._cached_row(item.path) if v.is_latest else None
        async with s3.open_object(self.bucket, v.key, version_id=v.version_id) as obj:
            head = obj.head
            expected = expected_checksum(head, v, row)
            part_bytes: int | None = None
            if expected is not None and expected.parts is not None:
                if expected.parts == 1:
                    part_bytes = max(head.size, 1)
                else:
                    part_bytes = recorded_part_bytes(head, v, row, expected.parts)
                    if part_bytes is None:  # not recorded: S3 tells it by the first part's size
                        first = await s3.head_object(self.bucket, v.key, version_id=v.version_id, part_number=1)
                        part_bytes = first.size if first is not None and first.size > 0 else None
                    if part_bytes is None:
                        expected = None
            summer = StreamSum(expected.algorithm if expected else "crc32", part_bytes)
            root, rel = self._root_of(item.path)
            temp = await anyio.to_thread.run_sync(TempFile.create, Folders(root), rel)
            try:
                received = 0
                while chunk := await obj.read(CHUNK_BYTES):
                    await anyio.to_thread.run_sync(temp.write, chunk, summer)
                    received += len(chunk)
                    self.stats.received_bytes += len(chunk)
                if received != head.size:
                    raise S3Error("IncompleteBody", f"GetObject {v.key}: got {received} of {head.size} bytes")
                if expected is not None:
                    got = summer.result()
                    if got != expected.digest or (expected.parts and summer.part_count != expected.parts):
                        raise S3Error(
                            "ChecksumMismatch",
                            f"the download has {expected.algorithm} {got}, "
                            f"{expected.source} says {expected.digest}; nothing was written",
                        )
                mtime_ns = parse_mtime_metadata(head.metadata)
                if mtime_ns is None:
                    mtime_ns = int(v.last_modified.timestamp() * 1_000_000_000)
                placed = await anyio.to_thread.run_sync(temp.place, mtime_ns, self._file_mode, self.overwrite)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(temp.discard)
        if not placed:
            self.stats.present_other += 1
            return
        self.stats.restored += 1
        self.stats.restored_bytes += received
        if expected is None:
            self.stats.not_checkable += 1
        else:
            self.stats.verified += 1

    def _fail(self, item: Item, message: str) -> None:
        self.stats.failures.append(f"{display_path(item.path)}: {message}")

    def _print_summary(self) -> None:
        s = self.stats
        for failure in s.failures[:SHOWN_FAILURES]:
            print(f"  failed: {failure}")
        if len(s.failures) > SHOWN_FAILURES:
            print(f"  ... and {counted(len(s.failures) - SHOWN_FAILURES, 'more failure')}")
        checked = f"{counted(s.verified, 'checksum')} verified"
        if s.not_checkable:
            checked += f", {s.not_checkable} not checkable (no stored checksum for that version)"
        print(
            f"restore: {s.restored} restored ({format_bytes(s.restored_bytes)}; {checked}), "
            f"{s.pending} pending ({counted(s.requested, 'retrieval')} requested now), {len(s.failures)} failed, "
            f"{s.present_same + s.present_other} left alone"
        )
        print(f"requests sent: {format_requests(self.counts)}")
        if self.interrupted:
            print("restore: interrupted; run the same command again to resume")
        elif s.pending:
            print(
                f"restore: {counted(s.pending, 'retrieval')} {noun_for(s.pending, 'is')} not ready yet "
                f"(tier {self.tier}: {READY_WITHIN[self.tier]}); "
                "run the same command again later: it sends no request twice"
            )


# Entry point


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without a zone is local time."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--as-of {text!r} is not a time; give ISO 8601 such as 2026-10-01 or 2026-10-01T18:30"
        ) from None
    return value.astimezone() if value.tzinfo is None else value


def find_target(config: Config, store: StateStore, name: str) -> tuple[Target, str | None]:
    """The target named by folder path or bucket, and a path inside it when `name` names one.

    Works with the disk gone (the case a restore is for): then configured folders and targets the
    cache knows are matched without reading the disk, and a bucket name that is no configured
    target is used as it is."""
    known = store.known_targets()
    try:
        needing = paths_needing_names(config, known)
    except ConfigError:  # the disk is gone: the configured folders without a recorded name
        needing = [f.path for f in config.folders if not f.bucket and f.path not in known]
    config = with_account_names(config, known, store.get_meta(CACHE_BUCKET), needing=needing)
    try:
        targets = discover_targets(config, known)
    except ConfigError:
        targets = _targets_without_disk(config, known)
    try:
        return select_targets(targets, [name], "TARGET")[0], None
    except ConfigError:
        if "/" not in name and bucket_name_problem(name) is None:
            log.info("%s is no configured target; restoring from the bucket of that name", name)
            return Target(path="", bucket=name), None
        inside = os.path.normpath(os.path.abspath(name))
        holders = [t for t in targets if t.path and t.bucket and inside.startswith(t.path.rstrip("/") + "/")]
        if holders:  # a file or folder inside a target: the deepest target holds it
            return max(holders, key=lambda t: len(t.path)), inside
        raise


def _targets_without_disk(config: Config, known: dict[str, tuple[str, str | None]]) -> list[Target]:
    targets = {p: Target(p, b, r, missing=True) for p, (b, r) in known.items()}
    for folder in config.folders:
        if folder.path in targets:
            continue
        if folder.bucket:
            targets[folder.path] = Target(folder.path, folder.bucket, None, missing=True)
        elif config.naming == "stable":
            targets[folder.path] = Target(folder.path, default_bucket(config, folder.path, None)[0], None, missing=True)
    return list(targets.values())


def run(config: Config, cache_dir: Path, options: RestoreOptions) -> int:
    """`async-backup restore TARGET ...`: 0 done (or waiting for retrievals), 1 failures, 2 usage, 130 interrupted."""
    as_of = parse_time(options.as_of) if options.as_of else None
    if as_of is not None and as_of > datetime.now(UTC):
        raise ConfigError(f"--as-of {options.as_of} lies in the future; leave it out to restore the current versions")
    if options.days < 1:
        raise ConfigError(f"--days is {options.days}; a restored copy must stay readable at least 1 day")
    # Read-only, without the lock: a backup may hold both (see RestoreLog for the requests).
    store = StateStore(cache_dir, readonly=True)
    requests: RestoreLog | None = None
    try:
        target, inside = find_target(config, store, options.target)
        if inside is not None and options.path:
            raise ConfigError(f"TARGET {options.target} already names a path inside {target.path}; drop --path")
        prefix: bytes | None = os.fsencode(inside) if inside is not None else None
        if options.path:
            base = target.path if target.path else "/"
            prefix = os.fsencode(os.path.normpath(os.path.join(base, options.path)))
        dest_root = os.fsencode(os.path.abspath(options.to)) if options.to else None
        requests = RestoreLog(cache_dir, readonly=options.dry_run)
        job = Restore(config, store, requests, target, prefix, dest_root, as_of, options)
        return anyio.run(job.run)
    finally:
        if requests is not None:
            requests.close()
        store.close()
