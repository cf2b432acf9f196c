"""The old script's cache of one target, read exactly as it writes it.

Owns reading its SQLite file read-only: table `files(key TEXT PRIMARY KEY, timestamp REAL)`,
key = the file's absolute path, timestamp = `os.stat().st_mtime` (float seconds), rows without
a usable key or timestamp passed over. Imports nothing of S3 and writes nothing. Where the old
script keeps these files (`db/<quote_plus(name)>.db`) and the bucket it copies them to live in
`recovery.oldscript`; its naming rules and list of targets in `settings.naming` and
`settings.targets`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .store import open_readonly

log = logging.getLogger(__name__)

# SQLite's default limit on host parameters in one statement is 32,766 (999 before 3.32).
LOOKUP_CHUNK = 900


@dataclass(frozen=True, slots=True)
class OldRow:
    """One row of the old script's cache: a path it uploaded and the float st_mtime it saw."""

    path: bytes
    timestamp: float


class OldCacheError(Exception):
    """The old cache file cannot be read as the old script writes it."""


class OldCache:
    """Read-only access to one of the old script's `db/*.db` files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._conn = open_readonly(path)  # the old names hold "%" (quote_plus): quoted there
            columns = {str(r[1]) for r in self._conn.execute("PRAGMA table_info(files)")}
        except sqlite3.Error as exc:
            raise OldCacheError(f"{path} cannot be read as SQLite ({exc})") from None
        if not {"key", "timestamp"} <= columns:
            self._conn.close()
            raise OldCacheError(f"{path} has no table files(key, timestamp)")

    def close(self) -> None:
        self._conn.close()

    def count(self) -> int:
        try:
            return int(self._conn.execute("SELECT COUNT(*) FROM files").fetchone()[0])
        except sqlite3.Error as exc:
            raise OldCacheError(f"{self.path} cannot be read ({exc})") from None

    def lookup(self, paths: Sequence[str]) -> dict[str, float]:
        """The recorded float mtime of each of `paths` that the old cache holds."""
        found: dict[str, float] = {}
        try:
            for start in range(0, len(paths), LOOKUP_CHUNK):
                chunk = paths[start : start + LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, timestamp in self._conn.execute(
                    f"SELECT key, timestamp FROM files WHERE key IN ({marks})", tuple(chunk)
                ):
                    if _valid(key, timestamp):
                        found[str(key)] = float(timestamp)
        except sqlite3.Error as exc:
            raise OldCacheError(f"{self.path} cannot be read ({exc})") from None
        return found

    def rows(self) -> Iterator[OldRow]:
        """Every usable row in path-byte order (TEXT compares as UTF-8 bytes), streamed."""
        try:
            cursor = self._conn.execute("SELECT key, timestamp FROM files ORDER BY key")
            cursor.arraysize = 1000
            while batch := cursor.fetchmany():
                for key, timestamp in batch:
                    if _valid(key, timestamp):
                        yield OldRow(os.fsencode(key), float(timestamp))
        except sqlite3.Error as exc:
            raise OldCacheError(f"{self.path} cannot be read ({exc})") from None


def _valid(key: object, timestamp: object) -> bool:
    return (
        isinstance(key, str)
        and key.startswith("/")
        and isinstance(timestamp, int | float)
        and timestamp == timestamp  # not NaN
    )
