"""A copy of the cache read back: a snapshot downloaded from S3 and unpacked, opened read-only.

Owns every SQLite read of such a copy: whether it is sound (`problem`), whether it holds rows
for a bucket, its rows for a bucket (in the cache's own row type), its `targets` table (the
bucket names in use) and its remembered mount points. A snapshot from an older version lacks
some columns and tables: they read as absent. Opened and its rows streamed as `store` reads the
cache. Writes nothing; which of these rows recovery may take is decided in recovery/. Imports
nothing of S3.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator
from pathlib import Path

from .store import Stored, open_readonly, stream_rows

Known = dict[str, tuple[str, str | None]]  # target path -> (bucket, root), as StateStore.known_targets


def problem(db: Path) -> str | None:
    """None when the copy is a sound cache database, else why not (integrity_check's complaint,
    or the sqlite3 error of reading it)."""
    try:
        conn = open_readonly(db)
        try:
            verdict = conn.execute("PRAGMA integrity_check(1)").fetchone()
            if not verdict or verdict[0] != "ok":
                return f"integrity_check: {verdict[0] if verdict else 'no answer'}"
            conn.execute("SELECT bucket, path, size, mtime_ns, checksum FROM files LIMIT 1").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"not a readable cache ({exc})"
    return None


def holds(db: Path, bucket: str) -> bool:
    """Whether the copy has any row for `bucket`."""
    conn = open_readonly(db)
    try:
        return conn.execute("SELECT 1 FROM files WHERE bucket=? LIMIT 1", (bucket,)).fetchone() is not None
    finally:
        conn.close()


def rows_of(db: Path, bucket: str) -> Generator[Stored, None, None]:
    """The copy's rows for `bucket`, streamed (`store.stream_rows`), with the columns an older copy
    lacks as NULL (an unsure row stays unsure: its contents are still to be compared)."""
    conn = open_readonly(db)
    try:
        for row in stream_rows(conn, bucket):
            yield Stored.of(bucket, row)
    finally:
        conn.close()


def targets_of(db: Path) -> Known:
    """The copy's `targets` rows; none from a snapshot written before the table existed."""
    conn = open_readonly(db)
    try:
        rows = conn.execute("SELECT path, bucket, root FROM targets").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {str(p): (str(b), None if r is None else str(r)) for p, b, r in rows}


def mounts_of(db: Path, target: str) -> list[tuple[bytes, int | None]]:
    """The mount points the copy remembered inside `target` (none in a snapshot from before they
    were remembered), as (folder, device)."""
    conn = open_readonly(db)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='mounts'").fetchone() is None:
            return []
        return [(bytes(p), d) for p, d in conn.execute("SELECT path, device FROM mounts WHERE target=?", (target,))]
    finally:
        conn.close()
