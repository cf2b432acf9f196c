"""`async-backup fixity`: a whole fixity pass now, every file read and every object HEADed.

Owns the command's run: under the cache's lock (it records check dates, as a backup does), each
chosen target's rows read on disk at idle I/O priority and compared with the cache, then its
objects' stored checksums compared (no restore needed, DEEP_ARCHIVE included), with a progress
line and an ETA by bytes; a summary per target; exit 1 when anything is not what was backed up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ..cache.store import StateStore
from ..cache.writes import CacheWrites
from ..disk.lock import cache_lock
from ..errors import EXIT_FAILURES, EXIT_OK, Failure, unwrapped_group
from ..recovery.accountnames import with_account_names
from ..recovery.snapshots import CACHE_BUCKET
from ..report.progress import Ticker
from ..report.summary import FixityCounts, format_bytes
from ..s3.client import open_s3
from ..settings.config import Config
from ..settings.targets import Target, discover_targets, select_targets
from ..wording import counted
from .options import FixityOptions
from .rotation import Rotation

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pass:
    config: Config
    store: StateStore
    targets: list[Target]
    options: FixityOptions
    counts: dict[str, FixityCounts] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    total_bytes: int = 0
    read_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"

    def progress(self) -> str:
        """e.g. "fixity: reading /srv/img: 12.0 GB of 40.0 GB (30%), ETA 0:41:10"."""
        if not self.total_bytes:
            return f"fixity: {self.phase}"
        share = self.read_bytes / self.total_bytes
        elapsed = time.monotonic() - self.started
        eta = ""
        if self.read_bytes and share < 1:
            left_s = int(elapsed * (1 - share) / share)
            eta = f", ETA {left_s // 3600}:{left_s // 60 % 60:02d}:{left_s % 60:02d}"
        done, total = format_bytes(self.read_bytes), format_bytes(self.total_bytes)
        return f"fixity: {self.phase}: {done} of {total} ({100 * share:.0f}%){eta}"

    def _read(self, n: int) -> None:
        self.read_bytes += n

    async def run(self) -> None:
        writes = CacheWrites(self.store)
        holdings = await anyio.to_thread.run_sync(self.store.holdings)
        self.total_bytes = sum(holdings.get(t.bucket, (0, 0, 0))[1] for t in self.targets)
        async with open_s3(self.config.aws, self.config.tuning) as s3, unwrapped_group() as tg:
            Ticker(self.progress).start(tg)
            for target in self.targets:
                counts = self.counts[target.path] = FixityCounts()
                rotation = Rotation(
                    self.store, target, counts, writes.fixity_checked, self.failures.append, on_file=self._read
                )
                self.phase = f"reading {target.path}"
                await rotation.on_disk(None)
                if self.options.s3:
                    self.phase = f"HeadObject in s3://{target.bucket}"
                    await rotation.in_s3(s3, None, self.config.tuning.workers)
            tg.cancel_scope.cancel()


def run(config: Config, cache_dir: Path, options: FixityOptions) -> int:
    """`async-backup fixity [--only T] [--no-s3]`: 0 when every file and object is as backed up."""
    with cache_lock(cache_dir):
        store = StateStore(cache_dir)
        try:
            known = store.known_targets()
            config = with_account_names(config, known, store.get_meta(CACHE_BUCKET))
            targets = select_targets(discover_targets(config, known), options.only, "--only")
            for skipped in (t for t in targets if t.problem or t.missing or t.bucket not in _buckets(known)):
                print(f"{skipped.path}: not checked: {skipped.problem or 'never backed up, or its folder is missing'}")
            targets = [t for t in targets if not t.problem and not t.missing and t.bucket in _buckets(known)]
            job = Pass(config, store, targets, options)
            anyio.run(job.run)
        finally:
            store.close()
    for target in targets:
        print(f"{target.path} -> s3://{target.bucket}: {job.counts[target.path].line()}")
    for failure in job.failures:
        print(f"  {failure.kind.value}: {failure.path}: {failure.message}")
    took_s = time.monotonic() - job.started
    if job.failures:
        print(f"fixity: {counted(len(job.failures), 'problem')} ({took_s:.1f} s)")
        return EXIT_FAILURES
    print(f"fixity: {counted(len(targets), 'target')} as backed up ({took_s:.1f} s)")
    return EXIT_OK


def _buckets(known: dict[str, tuple[str, str | None]]) -> set[str]:
    return {bucket for bucket, _root in known.values()}
