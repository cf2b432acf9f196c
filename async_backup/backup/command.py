"""`async-backup backup` (also without a command word): the run from its options to its exit code.

Owns `BackupOptions` (what the operator asked; the stages see its `RunOptions` part) and `run`:
--forget-target; the cache lock; the store opened, reset on request, and its targets chosen;
`pipeline.Backup` run until it finishes or a signal stops it; then, however it ended, the
summary, its request prices and the exit code, published through `report.publish`. Holds no
pipeline stage and no publishing rule of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from ..cache.store import StateStore
from ..cache.writes import CacheWrites
from ..disk.lock import cache_lock
from ..errors import (
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_WINDOW,
    BackupError,
    ConfigError,
    Failure,
    FailureCollector,
    FailureKind,
    LockHeldError,
)
from ..interrupts import LateSignals, run_until_signal
from ..recovery.accountnames import with_account_names
from ..recovery.names import recall_target_names, recall_target_names_offline
from ..recovery.snapshots import CACHE_BUCKET
from ..report.backlog import SendRate, plan_lines
from ..report.jsonlines import emit, summary_line
from ..report.logsetup import TRACEBACK_LOGGER
from ..report.progress import Progress
from ..report.publish import publish, redactor_for, tell_outcome
from ..report.runreport import measured_upload_rate
from ..report.summary import RunSummary
from ..s3.pricing import planned_counts, price_requests, prices_for
from ..settings.config import Config
from ..settings.targets import Target, discover_targets, nested_target_warnings, select_targets
from ..settings.window import window_seconds
from ..wording import counted
from .pipeline import Backup
from .runs import RunOptions

log = logging.getLogger("async_backup")

DEFAULT_PROGRESS_INTERVAL_S = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class BackupOptions(RunOptions):
    """The backup's options. The stages read only the `RunOptions` fields; `rebuild` is False
    with --upload-everything-again."""

    reset: bool = False  # --reset: forget the cache's rows and rebuild them from S3
    only: tuple[str, ...] = ()  # targets by folder path or bucket; all when empty
    forget_target: str | None = None  # drop this target from the cache and do nothing else
    print_card: bool = False
    metrics_file: str | None = None
    progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S
    quiet: bool = False  # no progress display
    json_lines: bool = False  # --json: status and summary lines on stdout, no live display
    accept_change: tuple[str, ...] = ()  # --accept-change: files whose bit-rot hold ends (their new bytes go)


@dataclasses.dataclass
class _Held:
    """What a run built before it ended, however it ended: the report is made from it."""

    backup: Backup | None = None
    window_ends_at: float | None = None  # wall clock; None without a window


def run(config: Config, cache_dir: Path, options: BackupOptions) -> int:
    """The backup command. Whatever ends the run (our errors, a foreign exception, MemoryError,
    SIGINT or SIGTERM at any moment), the report, the metrics file and the card are published.

    Only a run that never began publishes nothing: --forget-target, another run holding the lock
    (exit 3; its cache is not ours to write), a usage error (exit 2)."""
    if options.forget_target:
        return _forget_target(cache_dir, options.forget_target)
    collector = FailureCollector()
    summary = RunSummary(host=socket.gethostname(), started_at=time.time(), dry_run=options.dry_run)
    held = _Held()
    # The window counts from now; a --stop-at earlier than now is tomorrow's.
    summary.window_s = window_seconds(config.window, datetime.now())
    if summary.window_s is not None and not options.dry_run:
        held.window_ends_at = summary.started_at + summary.window_s
        log.info("window: %s, grace %g s", config.window.describe(), config.window.grace_s)
    interrupted = False
    try:
        with nullcontext() if options.dry_run else cache_lock(cache_dir):
            interrupted = _run(config, cache_dir, options, collector, held)
    except (LockHeldError, ConfigError):
        raise
    except KeyboardInterrupt:  # SIGINT or SIGTERM outside the event loop's watch
        interrupted = True
        log.warning("interrupted; finished uploads are recorded")
    except BackupError as exc:  # logged once, with every failure, by tell_outcome
        collector.add(Failure(FailureKind.FATAL, "run", "", str(exc)))
    except Exception as exc:  # not one of ours: a bug, a foreign library's error, MemoryError
        collector.add(internal_failure(exc, logged_to_file=not options.dry_run))
    summary.finished_at = time.time()
    summary.targets = [r.stats for r in held.backup.runs] if held.backup is not None else []
    summary.failures = collector.failures
    summary.warnings = collector.warnings
    summary.interrupted = interrupted
    if held.backup is not None and not interrupted:
        summary.left_files = held.backup.cutoff.left_files
        summary.left_bytes = held.backup.cutoff.left_bytes
    summary.exit_code = (
        EXIT_INTERRUPTED
        if interrupted
        else EXIT_FAILURES
        if summary.failures
        else EXIT_WINDOW
        if summary.ended_by_window
        else EXIT_OK
    )
    prices = prices_for(config.aws.region, config.pricing)
    if options.dry_run:
        planned = planned_counts((t.planned_requests for t in summary.targets), config.storage_class)
        summary.requests = price_requests(planned, prices, estimated=True)
        summary.plan = plan_lines(
            sum(t.planned_uploads for t in summary.targets),
            sum(t.planned_upload_bytes for t in summary.targets),
            rate=send_rate(config, cache_dir, summary.window_s, datetime.now()),
            window_s=summary.window_s,
            requests=summary.requests,
            storage_class=config.storage_class,
            prices=prices,
        )
    elif held.backup is not None:
        summary.requests = price_requests(held.backup.sent.counts, prices)
    with LateSignals() as late:
        try:
            # With --print-card, stdout carries the card alone, so it parses as JSON; with --json,
            # JSON lines alone.
            tell_outcome(
                summary,
                options.dry_run,
                plan_to=sys.stderr if options.print_card else sys.stdout,
                plan=not options.json_lines,
            )
            publish(config, cache_dir, summary, metrics_file=options.metrics_file, print_card=options.print_card)
        except Exception as exc:  # publishing failed itself (MemoryError, a bug): the exit code still tells
            log.error("the run report could not be published: %s", one_line(exc))
            logging.getLogger(TRACEBACK_LOGGER).error("publishing failed", exc_info=exc)
    exit_code = EXIT_INTERRUPTED if late.received else summary.exit_code
    if options.json_lines:
        emit(summary_line(summary, exit_code, redactor_for(config)))
    return exit_code


MAX_TARGETS_NAMED = 10


def _forget_target(cache_dir: Path, name: str) -> int:
    """--forget-target: drop one target the cache knows. A path it does not know (a typo, a
    target never backed up) is a usage error naming the known ones: nothing is changed."""
    path = os.path.normpath(os.path.abspath(name))
    with cache_lock(cache_dir):
        store = StateStore(cache_dir)
        try:
            known = sorted(store.known_targets())
            if path not in known:
                raise ConfigError(f"--forget-target {name}: {unknown_target(known)}")
            dropped = anyio.run(CacheWrites(store).forget_target, path)
        finally:
            store.close()
    log.info("forgot target %s (%s); its bucket is unchanged", path, counted(dropped, "cached file"))
    return EXIT_OK


def unknown_target(known: list[str]) -> str:
    if not known:
        return "the cache knows no target yet, so there is nothing to forget"
    named = ", ".join(known[:MAX_TARGETS_NAMED])
    left = len(known) - MAX_TARGETS_NAMED
    more = f" and {left:,} more (async-backup status lists them)" if left > 0 else ""
    return f"the cache knows no target of that path; give one of its {counted(len(known), 'target')}: {named}{more}"


def send_rate(config: Config, cache_dir: Path, window_s: float | None, now: datetime) -> SendRate | None:
    """The rate a dry run plans with: the bandwidth limit's mean over the window from now (a day
    without a window) when it limits all of that time, else what the last runs measured (their
    reports), else None."""
    table = config.tuning.bandwidth
    if table is not None:
        minutes = math.ceil((window_s if window_s is not None else 86_400) / 60)
        limit = table.mean_rate(now.hour * 60 + now.minute, minutes)
        if limit is not None:
            return SendRate(limit, f"tuning.bandwidth ({table.text})")
    measured = measured_upload_rate(cache_dir)
    if measured is None:
        return None
    rate, runs = measured
    return SendRate(rate, f"the measured rate of the last {counted(runs, 'run')}")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def internal_failure(exc: BaseException, *, logged_to_file: bool) -> Failure:
    """A foreign exception as the run's failure: one line for the card and stderr, the traceback
    only in backup.log (a dry run writes no backup.log: there it goes to stderr)."""
    where = "the traceback is in backup.log" if logged_to_file else "traceback above"
    message = f"{one_line(exc)[:500]}; the run stopped ({where})"
    logging.getLogger(TRACEBACK_LOGGER).error("internal error", exc_info=exc)
    return Failure(FailureKind.INTERNAL, "run", "", message)


def _run(config: Config, cache_dir: Path, options: BackupOptions, collector: FailureCollector, held: _Held) -> bool:
    """Open the cache, choose the targets and run the backup; True when a signal stopped it."""
    store = StateStore(cache_dir, readonly=options.dry_run)
    try:
        if not options.rebuild and not options.dry_run:
            anyio.run(CacheWrites(store).reset)
            log.info("cache reset (--upload-everything-again): every file will be uploaded again")
        elif options.reset and not options.dry_run:
            anyio.run(CacheWrites(store).reset)
            log.info("cache reset: its rows are rebuilt from S3 before planning")
        # On AWS with the default prefix, what the account owns and its tag, before naming (and
        # before the legacy names are read back from the snapshots, whose bucket it settles).
        config = with_account_names(
            config, store.known_targets(), store.get_meta(CACHE_BUCKET), offline=options.dry_run
        )
        known = _known_targets(config, store, cache_dir, dry_run=options.dry_run)
        targets = select_targets(discover_targets(config, known), options.only, "--only")
        for warning in nested_target_warnings(targets):
            log.warning("%s", warning)
        if options.accept_change and not options.dry_run:
            _accept_changes(store, options.accept_change)
        if options.dry_run and (options.reset or not options.rebuild):
            store.close()
            store = StateStore(cache_dir / "nonexistent-for-dry-reset", readonly=True)
        return _execute(config, targets, store, collector, held, options)
    finally:
        store.close()


def _accept_changes(store: StateStore, paths: tuple[str, ...]) -> None:
    """--accept-change: the operator keeps a rotten file's new bytes; its hold ends and this run
    compares its contents and uploads them."""
    writes = CacheWrites(store)
    for name in paths:
        path = os.path.normpath(os.path.abspath(name))
        buckets = anyio.run(writes.accept_change, os.fsencode(path))
        if buckets:
            log.info("%s: change accepted; its new bytes are uploaded by this run", path)
        else:
            log.warning("--accept-change %s: no upload of this file is held back (nothing to accept)", path)


def _known_targets(
    config: Config, store: StateStore, cache_dir: Path, *, dry_run: bool
) -> dict[str, tuple[str, str | None]]:
    """The cache's targets; on a cache without any, legacy names in use are read back from the
    newest snapshot first: they cannot be computed again once the config changed."""
    known = store.known_targets()
    if known or config.naming != "legacy":
        return known
    if dry_run:  # a dry run sends no request before planning
        return recall_target_names_offline(config, cache_dir)
    return anyio.run(recall_target_names, config, cache_dir)


def event_loop_options() -> dict[str, Any]:
    """uvloop where it is installed: it trims the event loop's share of each request's CPU."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def _execute(
    config: Config,
    targets: list[Target],
    store: StateStore,
    collector: FailureCollector,
    held: _Held,
    options: BackupOptions,
) -> bool:
    progress = Progress.for_stderr(
        max(1.0, options.progress_interval_s), quiet=options.quiet, json_lines=options.json_lines
    )
    held.backup = Backup(config, targets, store, collector, options, progress, held.window_ends_at)
    log.info(
        "%s %s%s",
        "planning" if options.dry_run else "backing up",
        counted(len(targets), "target"),
        " (dry run)" if options.dry_run else "",
    )
    return anyio.run(_run_until_signal, held.backup, backend_options=event_loop_options())


async def _run_until_signal(backup: Backup) -> bool:
    return await run_until_signal(
        backup.run,
        stopping="%s received: stopping; finished uploads are recorded",
        again="%s received again: still stopping",
    )
