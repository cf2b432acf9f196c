"""verify's spill: a target's bucket listing and the checksums still to compare, on disk.

Owns the two tables of one temporary SQLite file (opened by `cache.spill`), so that verify's
memory does not grow with the bucket.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from ..cache.spill import open_spill
from ..disk.keys import path_for_key
from ..s3.objects import ListedObject
from .compare import ChecksumCheck

SPILL_CHUNK = 1000  # rows read from or written to the spill at a time


class Spill:
    """A target's bucket listing and the checksums still to compare, in a temporary SQLite file:
    verify's memory then does not grow with the bucket. Objects come back in path-byte order
    (the order of the cache's rows and of the walk), whatever order the keys were listed in."""

    def __init__(self, path: Path) -> None:
        self._conn = open_spill(path)
        self._conn.execute(
            "CREATE TABLE objects (path BLOB PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL, "
            "class TEXT NOT NULL, etag TEXT NOT NULL) WITHOUT ROWID"
        )
        self._conn.execute(
            "CREATE TABLE checks (path BLOB PRIMARY KEY, key TEXT NOT NULL, cached TEXT NOT NULL, "
            "etag TEXT NOT NULL, disk INTEGER) WITHOUT ROWID"
        )
        self._pending: list[tuple[bytes, str, str, str, int | None]] = []
        self.checks_count = 0

    def add_objects(self, page: Sequence[ListedObject]) -> None:
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                [(path_for_key(o.key), o.key, o.size, o.storage_class, o.etag) for o in page],
            )

    def objects(self) -> Iterator[tuple[bytes, ListedObject]]:
        cursor = self._conn.execute("SELECT path, key, size, class, etag FROM objects ORDER BY path")
        while rows := cursor.fetchmany(SPILL_CHUNK):
            for path, key, size, cls, etag in rows:
                yield bytes(path), ListedObject(str(key), int(size), str(cls), str(etag))
        self._flush_checks()

    def add_check(self, item: ChecksumCheck) -> None:
        disk = None if item.disk_present is None else int(item.disk_present)
        self._pending.append((item.path, item.key, item.cached, item.etag, disk))
        self.checks_count += 1
        if len(self._pending) >= SPILL_CHUNK:
            self._flush_checks()

    def _flush_checks(self) -> None:
        if self._pending:
            self._conn.executemany("INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?)", self._pending)
            self._pending = []

    def checks(self) -> Iterator[ChecksumCheck]:
        self._flush_checks()
        self._conn.commit()
        after = b""
        while True:
            rows = self._conn.execute(
                "SELECT path, key, cached, etag, disk FROM checks WHERE path > ? ORDER BY path LIMIT ?",
                (after, SPILL_CHUNK),
            ).fetchall()
            if not rows:
                return
            for path, key, cached, etag, disk in rows:
                yield ChecksumCheck(bytes(path), str(key), str(cached), str(etag), None if disk is None else bool(disk))
            after = bytes(rows[-1][0])

    def close(self) -> None:
        self._conn.close()
