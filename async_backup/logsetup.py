"""Logging: stderr and backup.log in the cache directory, with secrets scrubbed from every line.

Owns handler setup only; modules log through `logging.getLogger(__name__)`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

LOG_NAME = "backup.log"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class SecretFilter(logging.Filter):
    """Replaces every known secret in the formatted message with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if record.exc_info:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        record.msg, record.args = clean, None
        return True


def setup_logging(cache_dir: Path | None, secrets: Iterable[str], *, verbosity: int = 0) -> SecretFilter:
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    scrubber = SecretFilter(secrets)
    root = logging.getLogger("async_backup")
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stderr = logging.StreamHandler(sys.stderr)
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
    # botocore and aiohttp chatter stays out unless asked for with -vv.
    for noisy in ("botocore", "aiobotocore", "aiohttp", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
    return scrubber
