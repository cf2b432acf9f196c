"""restore's log of the retrievals S3 accepted: a SQLite file of its own in the cache directory.

Owns `restores.db`, so that a rerun of a restore sends no RestoreObject twice. It is not the cache
(`store`): restore never opens the cache writable, so it needs no lock and can run beside the
nightly backup, whose lock and whose cache it leaves alone. Nothing else writes this file and
nothing moves it aside; SQLite itself keeps two restores at once apart. Rows written by earlier
versions into the cache's own `restores` table are still read there (`StateStore.restore_requested`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

from ..errors import FatalError

RESTORES_NAME = "restores.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS restores (
    bucket     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    version_id TEXT    NOT NULL,   -- "" when the bucket lists no version ids
    tier       TEXT    NOT NULL,
    days       INTEGER NOT NULL,
    requested  REAL    NOT NULL,   -- Unix time S3 accepted the RestoreObject request
    PRIMARY KEY (bucket, key, version_id)
) WITHOUT ROWID;
"""


class RestoreLog:
    """The retrievals requested from this cache directory; call it from worker threads."""

    def __init__(self, cache_dir: Path, *, readonly: bool = False) -> None:
        self.path = cache_dir / RESTORES_NAME
        self._lock = threading.Lock()  # one connection shared by worker threads
        self._conn: sqlite3.Connection | None = None
        try:
            if not readonly:
                self._conn = sqlite3.connect(self.path, check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.executescript(_SCHEMA)
            elif self.path.exists():  # a dry run writes nothing, not even an empty log
                uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            if self._conn is not None:
                self._conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            self.close()
            raise self._error(exc) from None

    def requested(self, bucket: str, key: str, version_id: str) -> bool:
        """Whether S3 accepted a retrieval of this version before (one lookup, no dict of them all)."""
        if self._conn is None:
            return False
        try:
            with self._lock:
                row = self._conn.execute(
                    "SELECT 1 FROM restores WHERE bucket=? AND key=? AND version_id=?", (bucket, key, version_id)
                ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a read-only look at a log never written to
                return False
            raise self._error(exc) from None
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return row is not None

    def record(self, bucket: str, key: str, version_id: str, tier: str, days: int) -> None:
        """Remember one accepted RestoreObject request (a transaction of its own: it survives a crash)."""
        assert self._conn is not None, "a read-only restore log records nothing"
        try:
            with self._lock, self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO restores(bucket, key, version_id, tier, days, requested) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (bucket, key, version_id, tier, days, time.time()),
                )
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _error(self, exc: sqlite3.Error) -> FatalError:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return FatalError(
            f"restore log {self.path}: {text}; check the disk and the permissions of {self.path.parent}, or move "
            "the file away to start it afresh (the next run then asks S3 again for the retrievals it lists; "
            "S3 starts none twice)"
        )
