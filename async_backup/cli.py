"""The command line: parse arguments, load the config, run a command, map the outcome to an exit code.

Exit codes (the table is in `errors`): 0 all done; 1 finished but something failed; 2 configuration
or usage error; 3 another run holds this cache's lock; 4 the backup's window ended with work left
for the next run; 130 interrupted. Each command is a package's
`run(config, cache_dir, options) -> exit code` with an options dataclass; `COMMANDS` maps each
command word to its arguments, the options built from them and its run. Help texts take their
defaults from those dataclasses and from the config's own (`settings.config`).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import __version__
from .backup import command as backup
from .backup.command import DEFAULT_PROGRESS_INTERVAL_S, BackupOptions
from .errors import (
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
    BackupError,
    ConfigError,
    LockHeldError,
)
from .fixity.options import FixityOptions
from .interrupts import stop_like_ctrl_c
from .report import status
from .report.logsetup import LOG_FORMATS, setup_logging
from .report.publish import redactor_for
from .report.status import StatusOptions
from .restore.options import DEFAULT_DAYS, DEFAULT_TIER, TIERS, RestoreOptions
from .settings.bandwidth import parse_bandwidth
from .settings.config import Config, Tuning, load_config
from .settings.window import with_flags
from .verify.options import VerifyOptions

log = logging.getLogger("async_backup")

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
DEFAULT_CACHE = "~/.local/async-backup/"

Opts = TypeVar("Opts")
Run = Callable[[Config, Path, Opts], int]
# argparse's parser and its argument groups share `add_argument`; typeshed names the base class so.
Arguments = argparse._ActionsContainer


@dataclasses.dataclass(frozen=True)
class Command(Generic[Opts]):
    """One command word: its help line, its arguments, the options built from them, its run."""

    help: str
    arguments: Callable[[Arguments], None]
    options: Callable[[argparse.Namespace], Opts]
    run: Callable[[], Run[Opts]]  # imported when used: a backup does not load verify or restore


# Arguments


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
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default(None),
        help="stderr lines: 'text' (timestamp and level) or 'journal' (<N> syslog priority, no timestamp); "
        "default: journal when stderr is systemd's journal stream (JOURNAL_STREAM), else text",
    )


def _concurrency(parser: Arguments, what: str) -> None:
    parser.add_argument(
        "--concurrency", type=int, metavar="N", help=f"{what} (default: tuning.workers, {Tuning().workers})"
    )


def _backup_arguments(parser: Arguments) -> None:
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
        "(Deep Archive bills each copy for 180 days); not with --reset",
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
    _concurrency(parser, "upload workers")
    parser.add_argument(
        "--bandwidth",
        metavar="LIMIT",
        help='bytes per second for all uploads together, instead of tuning.bandwidth: "20MB", "150MiB", '
        '"off", or a timetable such as "06:00,20MB 19:00,off" (times in the host\'s zone)',
    )
    parser.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="let deletes through the deletion guard (an emptied folder, or more than the allowed share)",
    )
    parser.add_argument(
        "--accept-change",
        action="append",
        default=[],
        metavar="PATH",
        help="upload this file's new bytes although a fixity check found them changed under the same size "
        "and mtime (bit rot is held back until then); repeatable",
    )
    parser.add_argument(
        "--allow-mass-change",
        action="store_true",
        help="let updates through the change guard (more than tuning.max_change_percent of a target's files "
        "overwritten, or images that no longer begin like images); only with --only TARGET",
    )
    parser.add_argument(
        "--forget-target",
        metavar="PATH",
        help="drop a removed target from the cache (its bucket is left as it is) and exit; "
        "PATH must be a target the cache knows (async-backup status lists them)",
    )
    parser.add_argument("--no-cache-backup", action="store_true", help="do not upload the cache snapshot after the run")
    parser.add_argument("--print-card", action="store_true", help="print the Teams card as JSON instead of posting it")
    parser.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write Prometheus textfile metrics here (atomically), e.g. /var/lib/node_exporter/async_backup.prom",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print progress and the run's summary on stdout as JSON, one object a line (no live display)",
    )
    parser.add_argument(
        "--stop-at",
        metavar="HH:MM",
        help="the window's end in the host's time zone (a time earlier than now is tomorrow's): from then on "
        "no upload starts, uploads that finish within backup.window.grace_s finish, the rest are left for the "
        "next run (exit 4); overrides backup.window.stop_at",
    )
    parser.add_argument(
        "--max-duration",
        metavar="DURATION",
        help='the window\'s length from the start, e.g. "5h", "90m", "600s"; with --stop-at the earlier end '
        "counts; overrides backup.window.max_duration",
    )
    interval_s = DEFAULT_PROGRESS_INTERVAL_S
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=interval_s,
        metavar="S",
        help=f"off a terminal, log one progress line every S seconds (default {interval_s:g})",
    )


def _backup_options(args: argparse.Namespace) -> BackupOptions:
    return BackupOptions(
        dry_run=args.dry_run,
        allow_mass_delete=args.allow_mass_delete,
        allow_mass_change=args.allow_mass_change,
        backup_cache=not args.no_cache_backup,
        rebuild=not args.upload_everything_again,
        reset=args.reset,
        only=tuple(args.only),
        forget_target=args.forget_target,
        print_card=args.print_card,
        metrics_file=args.metrics_file,
        progress_interval_s=args.progress_interval,
        quiet=args.quiet,
        json_lines=args.json,
        accept_change=tuple(args.accept_change),
    )


def _verify_arguments(parser: Arguments) -> None:
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
    _concurrency(parser, "requests in flight")


def _verify_options(args: argparse.Namespace) -> VerifyOptions:
    return VerifyOptions(targets=tuple(args.target), repair=args.repair, checksums=not args.no_checksums)


def _verify_run() -> Run[VerifyOptions]:
    from .verify.command import run

    return run


def _fixity_arguments(parser: Arguments) -> None:
    parser.add_argument(
        "--only", action="append", default=[], metavar="TARGET", help="check only this target (folder path or bucket)"
    )
    parser.add_argument("--no-s3", action="store_true", help="read the files on disk only: no HeadObject per object")
    _concurrency(parser, "HeadObject requests in flight")


def _fixity_options(args: argparse.Namespace) -> FixityOptions:
    return FixityOptions(only=tuple(args.only), s3=not args.no_s3)


def _fixity_run() -> Run[FixityOptions]:
    from .fixity.command import run

    return run


def _restore_arguments(parser: Arguments) -> None:
    parser.add_argument("target", metavar="TARGET", help="the target's folder path or its bucket name")
    parser.add_argument(
        "--path", metavar="PREFIX", help="restore only files under this path (default: the whole target)"
    )
    parser.add_argument("--to", metavar="DIR", help="restore under this directory instead of the original location")
    parser.add_argument(
        "--as-of", metavar="TIME", help="restore the versions current at this time (ISO 8601, e.g. 2026-10-01T00:00)"
    )
    parser.add_argument("--tier", choices=TIERS, default=DEFAULT_TIER, help=f"retrieval tier (default {DEFAULT_TIER})")
    parser.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"days the restored copy stays readable (default {DEFAULT_DAYS})"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files that exist at the destination")
    parser.add_argument("--yes", action="store_true", help="start without asking (needed when not on a terminal)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list and plan only: print the estimate; nothing is requested or written"
    )
    _concurrency(parser, "requests in flight")


def _restore_options(args: argparse.Namespace) -> RestoreOptions:
    return RestoreOptions(
        target=args.target,
        path=args.path,
        to=args.to,
        as_of=args.as_of,
        tier=args.tier,
        days=args.days,
        overwrite=args.overwrite,
        yes=args.yes,
        dry_run=args.dry_run,
    )


def _restore_run() -> Run[RestoreOptions]:
    from .restore.command import run

    return run


def _status_arguments(parser: Arguments) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of the table")


def _status_options(args: argparse.Namespace) -> StatusOptions:
    return StatusOptions(json=args.json)


# Options that contradict each other: (option, option, why), refused in one line before anything
# runs, so neither silently wins. Options a command does not take are never set on its namespace.
_RUN_OPTIONS = (
    "--dry-run",
    "--reset",
    "--upload-everything-again",
    "--only",
    "--allow-mass-delete",
    "--allow-mass-change",
)
CONFLICTS: tuple[tuple[str, str, str], ...] = (
    (
        "--reset",
        "--upload-everything-again",
        "--reset rebuilds the cache from S3 and uploads only what S3 lacks, --upload-everything-again "
        "uploads every file again; give one of them",
    ),
    ("-q", "-v", "-q shows warnings and errors only, -v adds detail; give one of them"),
    ("--json", "--print-card", "both print on stdout (JSON lines, the card); give one of them"),
    *(
        (
            "--forget-target",
            option,
            "--forget-target only drops a target from the cache and runs no backup; give it alone",
        )
        for option in (*_RUN_OPTIONS, "--print-card", "--metrics-file")
    ),
)
_DESTS = {"-q": "quiet", "-v": "verbose"}


def conflict(args: argparse.Namespace) -> str | None:
    """The one-line error for the first pair of contradicting options given, or None."""
    for first, second, why in CONFLICTS:
        given = [getattr(args, _DESTS.get(o, o.lstrip("-").replace("-", "_")), None) for o in (first, second)]
        if all(given):
            return f"{first} and {second} exclude each other: {why}"
    return None


# The dispatch table: command word -> arguments, options built from them, run.
COMMANDS: dict[str, Command[Any]] = {
    "backup": Command("back up every target (the default)", _backup_arguments, _backup_options, lambda: backup.run),
    "verify": Command(
        "compare S3, the cache and the disk without restoring anything", _verify_arguments, _verify_options, _verify_run
    ),
    "restore": Command(
        "restore files from S3, requesting Deep Archive retrievals first",
        _restore_arguments,
        _restore_options,
        _restore_run,
    ),
    "fixity": Command(
        "read every file and HEAD every object now, comparing both with the cache (progress and ETA)",
        _fixity_arguments,
        _fixity_options,
        _fixity_run,
    ),
    "status": Command(
        "what S3 holds per target and its monthly price, from the cache (no requests)",
        _status_arguments,
        _status_options,
        lambda: status.run,
    ),
}
DEFAULT_COMMAND = "backup"


class _HelpWithBackupOptions(argparse.Action):
    """`async-backup --help`: the top-level help, then the backup's options, which a command line
    without a command word takes. Only shown there: before a command word they are not accepted."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        shown = build_parser(usage=parser.format_usage().removeprefix("usage: "))
        COMMANDS[DEFAULT_COMMAND].arguments(
            shown.add_argument_group(f"{DEFAULT_COMMAND} options (also without the command word)")
        )
        shown.print_help()
        parser.exit()


def build_parser(usage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="async-backup",
        usage=usage,
        description="Back up folders to versioned S3 Deep Archive buckets, one bucket per target. "
        "Without a command word it runs a backup.",
        epilog="Exit codes: 0 all done, 1 some files failed, 2 configuration or usage error, "
        "3 another run holds the lock, 4 the window ended with files left for the next run, 130 interrupted.",
        add_help=False,
    )
    parser.add_argument("-h", "--help", action=_HelpWithBackupOptions, help="show this help message and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        _common_options(sub, top=False)
        command.arguments(sub)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, running `backup` when no command word is given (the existing script's usage)."""
    words = list(sys.argv[1:] if argv is None else argv)
    asks_for_help = any(w in ("-h", "--help", "--version") for w in words)
    if not asks_for_help and not any(w in COMMANDS for w in words):
        words.insert(0, DEFAULT_COMMAND)  # every common option is accepted after the command word too
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
    stop_like_ctrl_c(signal.SIGTERM)
    args = parse_args(argv)
    if args.command is None:  # only --help or --version get here, and they exit before
        return EXIT_USAGE
    contradiction = conflict(args)
    if contradiction:
        print(f"async-backup: error: {contradiction}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "allow_mass_change", False) and not args.only:
        print(
            "async-backup: error: --allow-mass-change needs --only TARGET: it lets one folder's intended "
            "re-scan through the change guard, never every target's at once",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if getattr(args, "concurrency", None) is not None and args.concurrency < 1:
        print("async-backup: error: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    command = COMMANDS[args.command]
    options = command.options(args)
    cache_dir = Path(os.path.expanduser(args.cache)).resolve()
    try:
        config = load_config(cache_dir)
    except ConfigError as exc:
        print(f"async-backup: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop_at, max_duration = getattr(args, "stop_at", None), getattr(args, "max_duration", None)
    if stop_at is not None or max_duration is not None:
        try:
            config = dataclasses.replace(config, window=with_flags(config.window, stop_at, max_duration))
        except ConfigError as exc:
            print(f"async-backup: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if getattr(args, "concurrency", None):
        config = dataclasses.replace(config, tuning=dataclasses.replace(config.tuning, workers=args.concurrency))
    if getattr(args, "bandwidth", None) is not None:
        try:
            bandwidth = parse_bandwidth(args.bandwidth, "command line", "--bandwidth")
        except ConfigError as exc:
            print(f"async-backup: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        config = dataclasses.replace(config, tuning=dataclasses.replace(config.tuning, bandwidth=bandwidth))
    verbosity = -1 if args.quiet else args.verbose
    dry_run = bool(getattr(args, "dry_run", False))
    setup_logging(None if dry_run else cache_dir, redactor_for(config), verbosity=verbosity, log_format=args.log_format)
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        run: Run[Any] = command.run()
        return run(config, cache_dir, options)
    except LockHeldError as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except BackupError as exc:
        log.error("%s", exc)
        return EXIT_FAILURES
