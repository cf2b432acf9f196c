"""restore's spill: the versions listed, the version chosen per key and the plan, on disk.

Owns the three tables of one temporary SQLite file (opened by `cache.spill`), so that memory
does not grow with the bucket or its number of versions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..cache.spill import open_spill
from ..disk.keys import path_for_key
from ..s3.objects import ObjectVersion
from .choose import Action, Item, choose_one

SPILL_CHUNK = 1000  # rows read from or written to the spill at a time


_ACTIONS = {a.value: a for a in Action}


class VersionSpill:
    """Restore's listing of versions, the version chosen per key and the plan, in a temporary
    SQLite file, so memory does not grow with the bucket (or with its number of versions).

    Versions are kept in listing order per key (`seq`): S3 lists a key's versions newest first,
    which `choose_one` relies on to break ties in time."""

    def __init__(self, path: Path) -> None:
        self._conn = open_spill(path)
        self._conn.executescript(
            """
            CREATE TABLE versions (key TEXT NOT NULL, seq INTEGER NOT NULL, version_id TEXT NOT NULL,
                modified REAL NOT NULL, latest INTEGER NOT NULL, marker INTEGER NOT NULL,
                size INTEGER NOT NULL, class TEXT NOT NULL, etag TEXT NOT NULL,
                PRIMARY KEY (key, seq)) WITHOUT ROWID;
            CREATE TABLE chosen (key TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE items (n INTEGER PRIMARY KEY, key TEXT NOT NULL, seq INTEGER NOT NULL,
                dest BLOB NOT NULL, action TEXT NOT NULL);
            """
        )
        self._seq = 0
        self._items: list[tuple[str, int, bytes, str]] = []

    def add_versions(self, versions: Sequence[ObjectVersion]) -> None:
        batch = []
        for v in versions:
            self._seq += 1
            batch.append(
                (
                    v.key,
                    self._seq,
                    v.version_id,
                    v.last_modified.timestamp(),
                    int(v.is_latest),
                    int(v.is_delete_marker),
                    v.size,
                    v.storage_class,
                    v.etag,
                )
            )
        with self._conn:
            self._conn.executemany("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)

    def _versions(self, sql: str, params: tuple[object, ...] = ()) -> Iterator[tuple[int, ObjectVersion]]:
        cursor = self._conn.execute(sql, params)
        while rows := cursor.fetchmany(SPILL_CHUNK):
            for row in rows:
                yield int(row[1]), _version_of(row)

    def choose(self, as_of: datetime | None) -> tuple[int, int, int]:
        """Choose per key (worker thread); returns (keys, versions chosen, their bytes)."""
        keys = chosen_count = chosen_bytes = 0
        picked: list[tuple[str, int]] = []
        group: list[tuple[int, ObjectVersion]] = []

        def settle() -> None:
            nonlocal keys, chosen_count, chosen_bytes
            keys += 1
            best = choose_one((v for _, v in group), as_of)
            if best is not None:
                chosen_count += 1
                chosen_bytes += best.size
                picked.append((best.key, next(seq for seq, v in group if v is best)))

        for seq, v in self._versions("SELECT * FROM versions ORDER BY key, seq"):
            if group and group[0][1].key != v.key:
                settle()
                group = []
                if len(picked) >= SPILL_CHUNK:
                    self._add_chosen(picked)
                    picked = []
            group.append((seq, v))
        if group:
            settle()
        self._add_chosen(picked)
        return keys, chosen_count, chosen_bytes

    def _add_chosen(self, picked: list[tuple[str, int]]) -> None:
        with self._conn:
            self._conn.executemany("INSERT INTO chosen VALUES (?, ?)", picked)

    def chosen(self) -> Iterator[tuple[int, ObjectVersion]]:
        """The chosen versions in key order, read in chunks (so items can be written meanwhile)."""
        after = ""
        while True:
            rows = list(
                self._versions(
                    "SELECT v.* FROM chosen c JOIN versions v ON v.key = c.key AND v.seq = c.seq "
                    "WHERE c.key > ? ORDER BY c.key LIMIT ?",
                    (after, SPILL_CHUNK),
                )
            )
            if not rows:
                return
            yield from rows
            after = rows[-1][1].key

    def add_item(self, seq: int, item: Item) -> None:
        """Plan `item`, the chosen version `seq` of its key."""
        self._items.append((item.version.key, seq, item.dest, item.action.value))
        if len(self._items) >= SPILL_CHUNK:
            self.items_done()

    def items_done(self) -> None:
        if self._items:
            with self._conn:
                self._conn.executemany("INSERT INTO items(key, seq, dest, action) VALUES (?, ?, ?, ?)", self._items)
            self._items = []

    def items(self) -> Iterator[Item]:
        """The plan, in key order, read back in chunks."""
        after = 0
        while True:
            rows = self._conn.execute(
                "SELECT i.n, i.dest, i.action, v.* FROM items i JOIN versions v ON v.key = i.key AND v.seq = i.seq "
                "WHERE i.n > ? ORDER BY i.n LIMIT ?",
                (after, SPILL_CHUNK),
            ).fetchall()
            if not rows:
                return
            for n, dest, action, *columns in rows:
                version = _version_of(columns)
                yield Item(version, path_for_key(version.key), bytes(dest), _ACTIONS[str(action)])
                after = int(n)

    def close(self) -> None:
        self._conn.close()


def _version_of(row: Sequence[Any]) -> ObjectVersion:
    """A row of the spill's versions table (key, seq, version_id, modified, latest, marker, size,
    class, etag) as the ObjectVersion it was written from."""
    key, _seq, version_id, modified, latest, marker, size, cls, etag = row
    return ObjectVersion(
        key=str(key),
        version_id=str(version_id),
        last_modified=datetime.fromtimestamp(float(modified), UTC),
        is_latest=bool(latest),
        is_delete_marker=bool(marker),
        size=int(size),
        storage_class=str(cls),
        etag=str(etag),
    )
