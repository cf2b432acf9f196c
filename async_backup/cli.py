"""The command line: parse arguments, load the config, run a command, map the outcome to an exit code.

Exit codes (the table is in `errors`): 0 all done; 1 finished but something failed; 2 configuration
or usage error; 3 another run holds this cache's lock; 130 interrupted. What the end of a backup
run publishes is `report.publish`'s.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import anyio

from . import __version__
from .backup.pipeline import Backup
from .backup.runs import RunOptions
from .cache.store import StateStore
from .disk.lock import cache_lock
from .errors import (
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
    BackupError,
    ConfigError,
    Failure,
    FailureCollector,
    FailureKind,
    LockHeldError,
    unwrapped_group,
)
from .recovery.accountnames import with_account_names
from .recovery.names import recall_target_names, recall_target_names_offline
from .recovery.snapshots import CACHE_BUCKET
from .report.logsetup import TRACEBACK_LOGGER, setup_logging
from .report.progress import Progress
from .report.publish import publish, redactor_for, tell_outcome
from .report.summary import RunSummary
from .s3.pricing import planned_counts, price_requests, prices_for
from .settings.config import Config, load_config
from .settings.targets import Target, discover_targets, nested_target_warnings, select_targets

log = logging.getLogger("async_backup")

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
DEFAULT_CACHE = "~/.local/async-backup/"


COMMANDS = ("backup", "verify", "restore", "status")


def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options every command takes, before or after the command word.

    On the subcommands they default to SUPPRESS, so a value given before the command word is
    not overwritten by the subcommand's default."""
    default = (lambda value: value) if top else (lambda _value: argparse.SUPPRESS)
    parser.add_argument(
        "--cache",
        default=default(DEFAULT_CACHE),
        metavar="DIR",
        help=f"cache directory holding config.json (default {DEFAULT_CACHE})",
    )
    parser.add_argument("-v", "--verbose", action="count", default=default(0), help="more detail (-vv adds botocore)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False), help="warnings and errors only")


def _backup_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reset",
        action="store_true",
        help="forget the local file cache and rebuild it from S3 (snapshot, else listing + HeadObject); "
        "only files S3 does not hold as they are on disk are uploaded",
    )
    parser.add_argument(
        "--upload-everything-again",
        action="store_true",
        help="forget the local file cache and do NOT rebuild it: every file is uploaded again "
        "(Deep Archive bills each copy for 180 days)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="walk and plan only: no upload, no delete, no notification"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TARGET",
        help="back up only this target (folder path or bucket); repeatable",
    )
    parser.add_argument("--concurrency", type=int, metavar="N", help="upload workers (default: tuning.workers, 64)")
    parser.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="let deletes through the deletion guard (an emptied folder, or more than the allowed share)",
    )
    parser.add_argument(
        "--forget-target",
        metavar="PATH",
        help="drop a removed target from the cache (its bucket is left as it is) and exit",
    )
    parser.add_argument("--no-cache-backup", action="store_true", help="do not upload the cache snapshot after the run")
    parser.add_argument("--print-card", action="store_true", help="print the Teams card as JSON instead of posting it")
    parser.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write Prometheus textfile metrics here (atomically), e.g. /var/lib/node_exporter/async_backup.prom",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="off a terminal, log one progress line every S seconds (default 60)",
    )


def _verify_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", action="append", default=[], metavar="T", help="check only this target (folder path or bucket)"
    )
    parser.add_argument(
        "--repair", action="store_true", help="correct the cache so the next backup re-uploads what is missing or wrong"
    )
    parser.add_argument(
        "--no-checksums",
        action="store_true",
        help="skip the HeadObject per object that comparing CRC32 checksums needs (MD5 values are still compared)",
    )
    parser.add_argument("--concurrency", type=int, metavar="N", help="requests in flight (default 16)")


def _restore_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET", help="the target's folder path or its bucket name")
    parser.add_argument(
        "--path", metavar="PREFIX", help="restore only files under this path (default: the whole target)"
    )
    parser.add_argument("--to", metavar="DIR", help="restore under this directory instead of the original location")
    parser.add_argument(
        "--as-of", metavar="TIME", help="restore the versions current at this time (ISO 8601, e.g. 2026-10-01T00:00)"
    )
    parser.add_argument("--tier", choices=("Bulk", "Standard"), default="Bulk", help="retrieval tier (default Bulk)")
    parser.add_argument("--days", type=int, default=7, help="days the restored copy stays readable (default 7)")
    parser.add_argument("--overwrite", action="store_true", help="replace files that exist at the destination")
    parser.add_argument("--yes", action="store_true", help="start without asking (needed when not on a terminal)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list and plan only: print the estimate; nothing is requested or written"
    )
    parser.add_argument("--concurrency", type=int, metavar="N", help="requests in flight (default 16)")


def _status_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of the table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="async-backup",
        description="Back up folders to versioned S3 Deep Archive buckets, one bucket per target. "
        "Without a command word it runs a backup.",
        epilog="Exit codes: 0 all done, 1 some files failed, 2 configuration or usage error, "
        "3 another run holds the lock, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="{backup,verify,restore,status}")
    for name, help_text, add in (
        ("backup", "back up every target (the default)", _backup_options),
        ("verify", "compare S3, the cache and the disk without restoring anything", _verify_options),
        ("restore", "restore files from S3, requesting Deep Archive retrievals first", _restore_options),
        ("status", "what S3 holds per target and its monthly price, from the cache (no requests)", _status_options),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common_options(sub, top=False)
        add(sub)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, running `backup` when no command word is given (the existing script's usage)."""
    words = list(sys.argv[1:] if argv is None else argv)
    asks_for_help = any(w in ("-h", "--help", "--version") for w in words)
    if not asks_for_help and not any(w in COMMANDS for w in words):
        words.insert(0, "backup")  # every common option is accepted after the command word too
    return build_parser().parse_args(words)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # stdout closed early (piped into head): not an error of the backup
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line for the operator, the traceback with -v
        log.debug("internal error", exc_info=True)
        print(f"async-backup: internal error: {type(exc).__name__}: {exc} (rerun with -v for details)", file=sys.stderr)
        return EXIT_FAILURES


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _keep_large_buffers_out_of_the_heap() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which our multipart
    part buffers (16 MiB) land in the heap and fragment it: peak RSS then drifts above the memory
    formula. A fixed threshold keeps every buffer of 4 MiB and more in its own mapping, returned to
    the system when freed."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tame


def _main(argv: Sequence[str] | None) -> int:
    _keep_large_buffers_out_of_the_heap()
    # Until the event loop watches for it, SIGTERM stops the tool like Ctrl-C: exit 130, no traceback.
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    if args.command is None:  # only --help or --version get here, and they exit before
        return EXIT_USAGE
    if getattr(args, "concurrency", None) is not None and args.concurrency < 1:
        print("async-backup: error: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    cache_dir = Path(os.path.expanduser(args.cache)).resolve()
    try:
        config = load_config(cache_dir)
    except ConfigError as exc:
        print(f"async-backup: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "concurrency", None):
        config = dataclasses.replace(config, tuning=dataclasses.replace(config.tuning, workers=args.concurrency))
    verbosity = -1 if args.quiet else args.verbose
    dry_run = bool(getattr(args, "dry_run", False))
    setup_logging(None if dry_run else cache_dir, redactor_for(config), verbosity=verbosity)
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        if args.command == "verify":
            from .verify.command import run_verify

            return run_verify(config, cache_dir, args)
        if args.command == "restore":
            from .restore.command import run_restore

            return run_restore(config, cache_dir, args)
        if args.command == "status":
            from .report.status import run_status

            return run_status(config, cache_dir, args)
        return _backup(config, cache_dir, args)
    except LockHeldError as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except BackupError as exc:
        log.error("%s", exc)
        return EXIT_FAILURES


@dataclasses.dataclass
class _Held:
    """What a run built before it ended, however it ended: the report is made from it."""

    backup: Backup | None = None


def _backup(config: Config, cache_dir: Path, args: argparse.Namespace) -> int:
    """The backup command. Whatever ends the run (our errors, a foreign exception, MemoryError,
    SIGINT or SIGTERM at any moment), the report, the metrics file and the card are published.

    Only a run that never began publishes nothing: --forget-target, another run holding the lock
    (exit 3; its cache is not ours to write), a usage error (exit 2)."""
    if args.forget_target:
        with cache_lock(cache_dir):
            store = StateStore(cache_dir)
            try:
                dropped = store.forget_target(os.path.normpath(args.forget_target))
            finally:
                store.close()
        log.info("forgot target %s (%d cached files); its bucket is unchanged", args.forget_target, dropped)
        return EXIT_OK
    collector = FailureCollector()
    summary = RunSummary(host=socket.gethostname(), started_at=time.time(), dry_run=args.dry_run)
    held = _Held()
    interrupted = False
    try:
        with nullcontext() if args.dry_run else cache_lock(cache_dir):
            interrupted = _run(config, cache_dir, args, collector, held)
    except (LockHeldError, ConfigError):
        raise
    except KeyboardInterrupt:  # SIGINT or SIGTERM outside the event loop's watch
        interrupted = True
        log.warning("interrupted; finished uploads are recorded")
    except BackupError as exc:  # logged once, with every failure, by _report
        collector.add(Failure(FailureKind.FATAL, "run", "", str(exc)))
    except Exception as exc:  # not one of ours: a bug, a foreign library's error, MemoryError
        collector.add(internal_failure(exc, logged_to_file=not args.dry_run))
    summary.finished_at = time.time()
    summary.targets = [r.stats for r in held.backup.runs] if held.backup is not None else []
    summary.failures = collector.failures
    summary.warnings = collector.warnings
    summary.interrupted = interrupted
    summary.exit_code = EXIT_INTERRUPTED if interrupted else EXIT_FAILURES if summary.failures else EXIT_OK
    prices = prices_for(config.aws.region, config.pricing)
    if args.dry_run:
        planned = planned_counts((t.planned_requests for t in summary.targets), config.storage_class)
        summary.requests = price_requests(planned, prices, estimated=True)
    elif held.backup is not None:
        summary.requests = price_requests(held.backup.sent.counts, prices)
    with _LateSignals() as late:
        try:
            tell_outcome(summary, args.dry_run)
            publish(config, cache_dir, summary, metrics_file=args.metrics_file, print_card=args.print_card)
        except Exception as exc:  # publishing failed itself (MemoryError, a bug): the exit code still tells
            log.error("the run report could not be published: %s", one_line(exc))
            logging.getLogger(TRACEBACK_LOGGER).error("publishing failed", exc_info=exc)
    return EXIT_INTERRUPTED if late.received else summary.exit_code


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


class _LateSignals:
    """While the report, metrics and card are written, SIGINT and SIGTERM are noted, not raised:
    an interrupted publication would leave monitoring without a report. The exit code is then 130."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _LateSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, _frame: object) -> None:
        self.received = signum
        log.warning("%s received: the run report is finished first", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)


def _run(config: Config, cache_dir: Path, args: argparse.Namespace, collector: FailureCollector, held: _Held) -> bool:
    """Open the cache, choose the targets and run the backup; True when a signal stopped it."""
    store = StateStore(cache_dir, readonly=args.dry_run)
    try:
        if args.upload_everything_again and not args.dry_run:
            store.reset()
            log.info("cache reset (--upload-everything-again): every file will be uploaded again")
        elif args.reset and not args.dry_run:
            store.reset()
            log.info("cache reset: its rows are rebuilt from S3 before planning")
        # On AWS with the default prefix, what the account owns and its tag, before naming (and
        # before the legacy names are read back from the snapshots, whose bucket it settles).
        config = with_account_names(config, store.known_targets(), store.get_meta(CACHE_BUCKET), offline=args.dry_run)
        known = _known_targets(config, store, cache_dir, dry_run=args.dry_run)
        targets = select_targets(discover_targets(config, known), args.only, "--only")
        for warning in nested_target_warnings(targets):
            log.warning("%s", warning)
        if args.dry_run and (args.reset or args.upload_everything_again):
            store.close()
            store = StateStore(cache_dir / "nonexistent-for-dry-reset", readonly=True)
        return _execute(config, targets, store, collector, held, args)
    finally:
        store.close()


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
    args: argparse.Namespace,
) -> bool:
    options = RunOptions(
        dry_run=args.dry_run,
        allow_mass_delete=args.allow_mass_delete,
        backup_cache=not args.no_cache_backup,
        rebuild=not args.upload_everything_again,
    )
    progress = Progress.for_stderr(max(1.0, args.progress_interval), quiet=args.quiet)
    held.backup = Backup(config, targets, store, collector, options, progress)
    log.info(
        "%s %d targets%s",
        "planning" if args.dry_run else "backing up",
        len(targets),
        " (dry run)" if args.dry_run else "",
    )
    return anyio.run(_run_until_signal, held.backup, backend_options=event_loop_options())


async def _run_until_signal(backup: Backup) -> bool:
    """Run the backup; SIGINT or SIGTERM cancels it gracefully. Returns True when interrupted.

    The signals are watched until the backup has wound down, shielded aborts of multipart uploads
    included: a second signal then only says so, it cannot kill the run before its report."""
    interrupted = False
    async with unwrapped_group() as tg:
        work = anyio.CancelScope()

        async def watch_signals() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if interrupted:
                        log.warning("%s received again: still stopping (aborting uploads in flight)", name)
                        continue
                    interrupted = True
                    log.warning("%s received: stopping; finished uploads are recorded", name)
                    work.cancel()

        tg.start_soon(watch_signals)
        with work:
            await backup.run()
        tg.cancel_scope.cancel()
    # Leaving the receiver gave the signals back to their defaults: stop like Ctrl-C again.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    return interrupted
