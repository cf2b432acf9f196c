"""Logging: stderr and backup.log in the cache directory, with secrets scrubbed from every line.

Owns handler setup only; modules log through `logging.getLogger(__name__)`. Scrubbing is
`redact.RedactingFilter` on every handler, so no record from any logger reaches a file unscrubbed.

backup.log is rotated at LOG_MAX_BYTES and LOG_BACKUPS old files are kept, so the log on disk
is bounded at (1 + LOG_BACKUPS) x LOG_MAX_BYTES. Tracebacks go to the TRACEBACK_LOGGER, which
reaches backup.log only: stderr (and so cron mail) gets the one line that goes with them.

Every message is one line: control characters in it (a newline in a file name) are escaped by
the formatters (`redact.printable`, as reports and cards show them), so no call site can forget.
On systemd's journal stream (or with --log-format journal) stderr lines start with a `<N>` syslog
priority (sd-daemon(3)) and carry no timestamp: the journal adds its own. backup.log keeps its
timestamps.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import TextIO

from .redact import RedactingFilter, Redactor, printable

LOG_NAME = "backup.log"
LOG_MAX_BYTES = 16 * 1024 * 1024
LOG_BACKUPS = 3
TRACEBACK_LOGGER = "async_backup.traceback"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_JOURNAL_FORMAT = "<%(priority)d>%(message)s"
LOG_FORMATS = ("text", "journal")
# sd-daemon(3) prefixes: the syslog priorities of logging's levels.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def on_journal_stream(environ: dict[str, str] | None = None) -> bool:
    """True when stderr is systemd's journal stream: JOURNAL_STREAM names its device and inode
    ("<dev>:<ino>", systemd.exec(5)); a child whose stderr was redirected inherits the variable
    but not the stream, so both must match."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):  # unset or malformed; stderr closed or not a file
        return False


class _OneLine(logging.Formatter):
    """Escapes control characters in the message (not in an appended traceback, which is meant to
    span lines), and gives each record its syslog `priority` for the journal format."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        saved = record.message
        record.message = printable(saved)
        record.priority = _PRIORITY.get(record.levelno, 3 if record.levelno > logging.WARNING else 6)
        try:
            return super().formatMessage(record)
        finally:
            record.message = saved


class _LogFile(logging.handlers.RotatingFileHandler):
    """backup.log. When it cannot be written (the disk is full) it says so once on stderr and
    falls silent, instead of printing a traceback for every record."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or exc
        sys.stderr.write(f"async-backup: {self.baseFilename} cannot be written ({reason}); logging to stderr only\n")


class _NoTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != TRACEBACK_LOGGER


class _OneLineForeign(_OneLine):
    """botocore, aiohttp and friends log some warnings with a traceback (botocore's "Refreshing
    temporary credentials failed", whose error then ends the run with our own line). On stderr
    they get one line, the exception's name and text appended; backup.log keeps the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_info or record.name.startswith("async_backup"):
            return super().format(record)
        exc = record.exc_info[1]
        saved = record.exc_info, record.exc_text, record.stack_info, record.msg, record.args
        if exc is not None:
            record.msg, record.args = f"{record.getMessage()} ({type(exc).__name__}: {exc})", None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return " ".join(super().format(record).split("\n"))
        finally:
            record.exc_info, record.exc_text, record.stack_info, record.msg, record.args = saved


class _CurrentStderr(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is now, so a live progress display can redirect it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(
    cache_dir: Path | None, redactor: Redactor, *, verbosity: int = 0, log_format: str | None = None
) -> None:
    """`log_format`: "text", "journal", or None to choose journal on systemd's journal stream."""
    journal = log_format == "journal" or (log_format is None and on_journal_stream())
    stderr_format = _JOURNAL_FORMAT if journal else _FORMAT
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    scrubber = RedactingFilter(redactor)
    root = logging.getLogger("async_backup")
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stderr = _CurrentStderr()
    stderr.setLevel(level)
    stderr.setFormatter(_OneLine(stderr_format) if verbosity > 1 else _OneLineForeign(stderr_format))
    stderr.addFilter(scrubber)
    root.addHandler(stderr)
    if cache_dir is not None:
        try:
            to_file = _LogFile(
                cache_dir / LOG_NAME,
                maxBytes=LOG_MAX_BYTES,
                backupCount=LOG_BACKUPS,
                encoding="utf-8",
                errors="backslashreplace",
            )
        except OSError as exc:
            root.warning("cannot write %s (%s); logging to stderr only", cache_dir / LOG_NAME, exc.strerror)
        else:
            to_file.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
            to_file.setFormatter(_OneLine(_FORMAT))
            to_file.addFilter(scrubber)
            root.addHandler(to_file)
            stderr.addFilter(_NoTracebacks())  # the traceback has a file to go to: stderr gets one line
    # botocore and aiohttp chatter stays out unless asked for with -vv; when asked, it is scrubbed too.
    for noisy in ("botocore", "aiobotocore", "aiohttp", "urllib3"):
        other = logging.getLogger(noisy)
        other.setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
        other.handlers = [h for h in root.handlers]
        other.propagate = False
