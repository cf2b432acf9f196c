"""The existing script's rules and the state it leaves behind, read exactly as it writes them.

Owns everything that must match the old script byte for byte: its list of targets and their
names (`relpath` to the common path of every configured folder and every entry of every root,
files and symlinks included), its bucket rule (`images--` + the name with each character outside
[a-zA-Z0-9] turned into `-`, lowercased), where it keeps a target's cache
(`db/<quote_plus(name)>.db`, table `files(key TEXT PRIMARY KEY, timestamp REAL)`, key = the file's
absolute path, timestamp = `os.stat().st_mtime`), and the bucket it copies its cache directory to
(`image-backup-cache`, config.json with the AWS keys included). Reads the disk and the old SQLite
files; imports nothing of S3 and writes nothing.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LEGACY_PREFIX = "images--"
LEGACY_DB_DIR = "db"
# The old script copies its whole cache directory here after every run, config.json included.
LEGACY_CACHE_BUCKET = "image-backup-cache"
# SQLite's default limit on host parameters in one statement is 32,766 (999 before 3.32).
LOOKUP_CHUNK = 900


def legacy_name(target: str, common: str) -> str:
    """The old script's name of a target: its path relative to the common path (`.` when alone)."""
    return os.path.relpath(target, common)


def legacy_bucket_name(path: str, common: str) -> str:
    """The old script's bucket: "images--" + the name, every character outside [a-zA-Z0-9]
    replaced by "-", lowercased (`archives/Archive 3` -> `images--archives-archive-3`)."""
    return LEGACY_PREFIX + re.sub(r"[^a-zA-Z0-9]", "-", legacy_name(path, common)).lower()


def legacy_target_list(folders: Sequence[str], roots: Sequence[str]) -> list[str]:
    """The old script's list: every folder, and every entry of every root (files and symlinks
    too, which shape the common path even though they hold nothing to back up)."""
    paths = [os.path.expanduser(f) for f in folders]
    for root in roots:
        try:
            paths.extend(os.path.join(root, entry) for entry in os.listdir(root))
        except OSError:
            continue  # an unreadable root: its own failure is reported where targets are found
    return sorted(paths)


def legacy_common(paths: Sequence[str]) -> str:
    return os.path.commonpath(list(paths)) if paths else "/"


def infer_common(path: str, bucket: str) -> str | None:
    """The common path under which `path` got the legacy bucket `bucket`, if any ancestor gives it.

    Lets a cache that recorded legacy names (but not the common path) name a new subfolder the way
    its siblings were named."""
    candidate = path
    while True:
        parent = os.path.dirname(candidate)
        if legacy_bucket_name(path, parent) == bucket:
            return parent
        if parent == candidate:
            return None
        candidate = parent


def old_cache_name(name: str) -> str:
    """A target's cache relative to the old script's cache directory: the name before cleaning,
    quote_plus-ed (`db/archives%2FArchive+3.db`)."""
    return f"{LEGACY_DB_DIR}/{urllib.parse.quote_plus(name)}.db"


def old_cache_path(cache_dir: Path, name: str) -> Path:
    """Where the old script keeps a target's cache."""
    return cache_dir / old_cache_name(name)


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
            # Quoted: the old names hold "%" (quote_plus), which a SQLite URI would decode.
            uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
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
