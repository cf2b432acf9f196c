"""One bucket's current objects as a rebuild sees them, kept in a temporary SQLite file.

Owns the listing's scratch table (key, size, LastModified, ETag, and whether a snapshot or
old-cache row already covers the key): a million keys never sit in memory. Filled by recovery/
from ListObjectsV2 pages; imports nothing of S3.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .records import Listed
from .spill import open_spill


class Listing:
    """One bucket's current objects (key, size, LastModified, ETag), kept in a temporary SQLite
    file. `covered` marks keys a snapshot or old-cache row already accounts for; the rest are
    for HeadObject to prove."""

    def __init__(self, path: Path) -> None:
        self._conn = open_spill(path, page_cache_kib=None)
        self._conn.execute(
            "CREATE TABLE objects (key TEXT PRIMARY KEY, size INTEGER NOT NULL, last_modified_s REAL, "
            "etag TEXT NOT NULL DEFAULT '', covered INTEGER NOT NULL DEFAULT 0)"
        )
        self.count = 0
        self.requests = 0  # ListObjectsV2 pages

    def add(self, objects: Sequence[Listed]) -> None:
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO objects(key, size, last_modified_s, etag) VALUES (?, ?, ?, ?)",
                [(o.key, o.size, o.last_modified_s, o.etag) for o in objects],
            )
        self.count += len(objects)

    def get(self, key: str) -> Listed | None:
        row = self._conn.execute("SELECT size, last_modified_s, etag FROM objects WHERE key=?", (key,)).fetchone()
        return None if row is None else _listed(key, *row)

    def cover(self, keys: Sequence[str]) -> None:
        with self._conn:
            self._conn.executemany("UPDATE objects SET covered=1 WHERE key=?", [(k,) for k in keys])

    def uncovered(self, after: str, limit: int) -> list[Listed]:
        """The next `limit` keys after `after` that no snapshot row covers, in key order."""
        rows = self._conn.execute(
            "SELECT key, size, last_modified_s, etag FROM objects WHERE covered=0 AND key>? ORDER BY key LIMIT ?",
            (after, limit),
        )
        return [_listed(*row) for row in rows]

    def close(self) -> None:
        self._conn.close()


def _listed(key: object, size: object, last_modified_s: object, etag: object) -> Listed:
    return Listed(
        str(key),
        int(size),  # type: ignore[call-overload]
        None if last_modified_s is None else float(last_modified_s),  # type: ignore[arg-type]
        str(etag or ""),
    )
