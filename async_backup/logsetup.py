"""Logging: stderr and backup.log in the cache directory, with secrets scrubbed from every line.

Owns handler setup only; modules log through `logging.getLogger(__name__)`. Scrubbing is
`redact.RedactingFilter` on every handler, so no record from any logger reaches a file unscrubbed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

from .redact import RedactingFilter, Redactor

LOG_NAME = "backup.log"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _CurrentStderr(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is now, so a live progress display can redirect it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(cache_dir: Path | None, redactor: Redactor, *, verbosity: int = 0) -> None:
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
    stderr.setFormatter(logging.Formatter(_FORMAT))
    stderr.addFilter(scrubber)
    root.addHandler(stderr)
    if cache_dir is not None:
        try:
            to_file = logging.FileHandler(cache_dir / LOG_NAME, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            root.warning("cannot write %s (%s); logging to stderr only", cache_dir / LOG_NAME, exc.strerror)
        else:
            to_file.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
            to_file.setFormatter(logging.Formatter(_FORMAT))
            to_file.addFilter(scrubber)
            root.addHandler(to_file)
    # botocore and aiohttp chatter stays out unless asked for with -vv; when asked, it is scrubbed too.
    for noisy in ("botocore", "aiobotocore", "aiohttp", "urllib3"):
        other = logging.getLogger(noisy)
        other.setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
        other.handlers = [h for h in root.handlers]
        other.propagate = False
