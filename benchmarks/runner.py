"""The benchmark run: chains of runs per data set, contender and repetition, each on a fresh bucket.

Owns: the order of runs (repetition-major, so slow drift of the machine hits every contender alike,
and the contenders' order rotated from one repetition to the next, so the first runs after the server
started, the slowest for every tool, do not always fall on the same one), the chains (small: full ->
no-op -> incremental on one bucket and one state dir; large and pages: full; big:
one full upload, then no-op repetitions), turning one measured run into a ``RunRecord``, and the
proxy-overhead check. A failed or missing contender becomes a record saying so; the run goes on.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.contenders import Contender, Target
from benchmarks.datasets import Generator, Mutation, listing, read_through
from benchmarks.measure import RecordingProxy, run_measured
from benchmarks.procs import tail
from benchmarks.servers import S3Server, wait_until_quiet
from benchmarks.verify import admin_client, drop_bucket, make_bucket, verify

DATASETS = ("small", "noop", "incremental", "large", "pages", "bignoop")
SMALL_CHAIN = ("small", "noop", "incremental")
# Records that the big chain makes besides "bignoop": its one full upload (setup, reported too).
BIG_SETUP = "bigfull"
T = TypeVar("T")


@dataclass
class RunRecord:
    contender: str
    dataset: str
    rep: int
    status: str  # ok | failed | timeout | verify-failed | skipped
    detail: str = ""
    files: int = 0
    changed_files: int = 0
    exit_code: int | None = None
    wall_s: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    maxrss_kib: int | None = None
    ru_maxrss_kib: int | None = None
    minor_faults: int | None = None
    tree_bytes: int = 0  # bytes of the files in the tree (what a full upload sends)
    requests: dict[str, int] = field(default_factory=dict)
    body_bytes: dict[str, int] = field(default_factory=dict)
    proxy_cpu_s: float | None = None
    verification: dict[str, Any] | None = None
    counted: bool = True  # False with --no-proxy: no request figures
    bucket: str = ""
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Bench:
    def __init__(
        self,
        server: S3Server,
        proxy: RecordingProxy | None,
        gen: Generator,
        run_dir: Path,
        timeout_s: float,
        keep_buckets: bool = False,
        progress: Callable[[str], None] = print,
        warmup_gen: Generator | None = None,
    ) -> None:
        self.server = server
        self.warmup_gen = warmup_gen  # trees for each contender's unmeasured first run, or None
        self.proxy = proxy
        self.gen = gen
        self.run_dir = run_dir
        self.timeout_s = timeout_s
        self.keep_buckets = keep_buckets
        self.progress = progress
        self.s3 = admin_client(server)
        self.records: list[RunRecord] = []
        self._buckets_before: set[str] = set()

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint if self.proxy else self.server.endpoint

    # --- one run ----------------------------------------------------------------------------------
    def run_one(
        self,
        c: Contender,
        dataset: str,
        rep: int,
        target: Target,
        mutation: Mutation | None = None,
        record: bool = True,
    ) -> RunRecord:
        argv, env = c.command(target)
        log = self.run_dir / "logs" / f"{c.name}-{dataset}-r{rep}.log"
        expected = listing(target.src)
        rec = RunRecord(
            c.name,
            dataset,
            rep,
            "failed",
            files=len(expected),
            tree_bytes=sum(expected.values()),
            bucket=target.bucket,
            log=str(log),
            changed_files=mutation.changed_count() if mutation else 0,
            counted=self.proxy is not None,
        )
        if self.proxy:
            self.proxy.counts(reset=True)
            cpu0 = self.proxy.cpu_s()
        m = run_measured(argv, env, log, self.timeout_s, cwd=Path(__file__).resolve().parent.parent)
        if self.proxy:
            counts = self.proxy.counts(reset=True)
            rec.requests, rec.body_bytes = counts["requests"], counts["body_bytes"]
            rec.proxy_cpu_s = round(self.proxy.cpu_s() - cpu0, 3)
        rec.exit_code, rec.wall_s, rec.user_s, rec.sys_s, rec.maxrss_kib, rec.ru_maxrss_kib = (
            m.exit_code,
            m.wall_s,
            m.user_s,
            m.sys_s,
            m.maxrss_kib,
            m.ru_maxrss_kib,
        )
        rec.minor_faults = m.minor_faults
        if m.timed_out:
            rec.status, rec.detail = "timeout", f"killed after {self.timeout_s:.0f} s"
        elif m.exit_code != 0:
            rec.status, rec.detail = "failed", f"exit {m.exit_code}: {_last_line(log)}"
        else:
            try:
                v = verify(self.s3, target.bucket, {k: s for k, s in expected.items()}, mutation)
                rec.verification = v.as_dict()
                rec.status = "ok" if v.ok else "verify-failed"
                rec.detail = v.summary()
            except Exception as e:  # a listing error is this contender's failure, not the harness's
                rec.status, rec.detail = "verify-failed", f"listing failed: {e}"
        if record:
            self.records.append(rec)
        self.progress(
            f"  {c.name:16s} {dataset:12s} r{rep}  {rec.status:13s} "
            f"{(rec.wall_s or 0):8.2f} s  {sum(rec.requests.values()):7d} req  {rec.detail[:90]}"
        )
        return rec

    def skip(self, c: Contender, dataset: str, rep: int, why: str) -> None:
        self.records.append(RunRecord(c.name, dataset, rep, "skipped", detail=why))

    # --- chains -----------------------------------------------------------------------------------
    def _fresh(self, c: Contender, tree: str, rep: int, src: Path, endpoint: str | None = None) -> Target:
        self._buckets_before = self._bucket_names()
        bucket = f"bench-{c.name}-{tree}-r{rep}-{uuid.uuid4().hex[:8]}"[:63]
        state = self.run_dir / "state" / bucket
        if state.exists():
            shutil.rmtree(state)
        state.mkdir(parents=True)
        if not c.creates_bucket:
            make_bucket(self.s3, bucket)
        read_through(src)  # every run reads its tree from the page cache, none from disk
        # The last run's dropped bucket is still being reclaimed, or the server has just started:
        # every run starts on a quiet server, so none carries another's cost.
        waited = wait_until_quiet(self.server.pids)
        if waited > 2:
            self.progress(f"  (waited {waited:.1f} s for the server to settle)")
        return Target(endpoint or self.endpoint, self.server, bucket, src, state)

    def _bucket_names(self) -> set[str]:
        try:
            return {b["Name"] for b in self.s3.list_buckets().get("Buckets", [])}
        except Exception:
            return set()

    def _drop(self, t: Target) -> None:
        """Drop the run's bucket and any other bucket the contender made (async-backup keeps a cache
        snapshot in one of its own), so servers holding data in RAM do not fill up."""
        if self.keep_buckets:
            return
        for bucket in sorted({t.bucket} | (self._bucket_names() - self._buckets_before)):
            try:
                drop_bucket(self.s3, bucket)
            except Exception as e:  # cleanup must not end the benchmark
                self.progress(f"  (could not drop bucket {bucket}: {e})")
        # Ceph would reclaim the dropped objects on its own every 15 s, often inside the next
        # contender's run: 0.3-1 s of the server's CPU taken from whoever happened to be running.
        failed = self.server.reclaim()
        if failed:
            self.progress(f"  (the server could not reclaim dropped objects: {failed})")

    def small_chain(self, c: Contender, rep: int, wanted: Sequence[str]) -> None:
        src = self.gen.ensure("small")
        t = self._fresh(c, "small", rep, src)
        try:
            full = self.run_one(c, "small", rep, t, record="small" in wanted)
            if not full.ok:
                for ds in ("noop", "incremental"):
                    if ds in wanted:
                        self.skip(c, ds, rep, f"full run of small {full.status}")
                return
            if "noop" in wanted:
                self.run_one(c, "noop", rep, t)
            if "incremental" in wanted:
                mutation = self.gen.mutate_small(rep)
                try:
                    self.run_one(c, "incremental", rep, t, mutation)
                finally:
                    self.gen.restore_small()
        finally:
            self._drop(t)

    def large_run(self, c: Contender, rep: int) -> None:
        t = self._fresh(c, "large", rep, self.gen.ensure("large"))
        try:
            self.run_one(c, "large", rep, t)
        finally:
            self._drop(t)

    def pages_run(self, c: Contender, rep: int) -> None:
        t = self._fresh(c, "pages", rep, self.gen.ensure("pages"))
        try:
            self.run_one(c, "pages", rep, t)
        finally:
            self._drop(t)

    def big_chain(self, c: Contender, repeat: int) -> None:
        t = self._fresh(c, "big", 0, self.gen.ensure("big"))
        try:
            full = self.run_one(c, BIG_SETUP, 0, t)
            for rep in range(repeat):
                if full.ok:
                    self.run_one(c, "bignoop", rep, t)
                else:
                    self.skip(c, "bignoop", rep, f"full upload of big {full.status}")
        finally:
            self._drop(t)

    def warm_up(self, c: Contender, gen: Generator) -> None:
        """One unmeasured run of `c` on each of a small tree's data sets (a few small files, two
        files of 12 MiB), like hyperfine's --warmup. The first run of a contender after the
        server's warm-up otherwise read its own program from disk: async-backup's interpreter,
        its libraries and botocore's service models took 2 s more to start than in later runs
        here, and a Go binary is read the same way. The figures measure uploading, not that."""
        for tree in ("small", "large"):
            t = self._fresh(c, f"warmup-{tree}", 0, gen.ensure(tree))
            try:
                rec = self.run_one(c, f"warmup-{tree}", 0, t, record=False)
                if not rec.ok:
                    self.progress(f"  ({c.name}: its warm-up run {rec.status}; measuring anyway)")
            finally:
                self._drop(t)

    def run_all(self, contenders: Sequence[Contender], datasets: Sequence[str], repeat: int) -> None:
        runnable = []
        for c in contenders:
            why = c.missing()
            if why:
                self.progress(f"  {c.name:16s} skipped ({why})")
                for ds in datasets:
                    for rep in range(repeat):
                        self.skip(c, ds, rep, why)
            else:
                runnable.append(c)
        small_wanted = [d for d in SMALL_CHAIN if d in datasets]
        if self.warmup_gen is not None:
            for c in runnable:
                self.warm_up(c, self.warmup_gen)
        for rep in range(repeat):
            for c in rotated(runnable, rep):
                if small_wanted:
                    self.small_chain(c, rep, small_wanted)
                if "large" in datasets:
                    self.large_run(c, rep)
                if "pages" in datasets:
                    self.pages_run(c, rep)
        if "bignoop" in datasets:
            for c in rotated(runnable, repeat):
                self.big_chain(c, repeat)

    # --- the proxy's own cost ---------------------------------------------------------------------
    def proxy_overhead(self, c: Contender, pairs: int = 3) -> dict[str, Any]:
        """Full uploads of the small tree by ``c`` through the proxy and straight at the server.

        Pairs alternate which goes first, so the server's warm-up (its first buckets, pools, caches)
        does not count against one side; the figure compares the medians.
        """
        via: list[float] = []
        direct: list[float] = []
        proxy_cpu: list[float] = []
        src = self.gen.ensure("small")
        for i in range(pairs):
            order = (True, False) if i % 2 else (False, True)
            for through_proxy in order:
                t = self._fresh(c, "ovh", i, src, None if through_proxy else self.server.endpoint)
                try:
                    rec = self.run_one(c, "proxy-overhead" if through_proxy else "direct", i, t, record=False)
                finally:
                    self._drop(t)
                if not rec.ok or rec.wall_s is None:
                    return {"contender": c.name, "error": rec.detail}
                if through_proxy:
                    via.append(rec.wall_s)
                    proxy_cpu.append(rec.proxy_cpu_s or 0.0)
                else:
                    direct.append(rec.wall_s)
        v, d = statistics.median(via), statistics.median(direct)
        return {
            "contender": c.name,
            "dataset": "small",
            "via_proxy_wall_s": [round(x, 3) for x in via],
            "direct_wall_s": [round(x, 3) for x in direct],
            "overhead_pct": round(100 * (v - d) / d, 1),
            "proxy_cpu_s": [round(x, 3) for x in proxy_cpu],
        }


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """``items`` rotated left by ``rep``: with n contenders, each runs first in every n-th repetition."""
    if not items:
        return []
    k = rep % len(items)
    return [*items[k:], *items[:k]]


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in tail(log, 4000).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def python_version() -> str:
    return sys.version.split()[0]
