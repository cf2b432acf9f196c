"""A copy of the cache read back: a snapshot downloaded from S3 and unpacked, opened read-only.

Owns every SQLite read of such a copy: whether it is sound (`problem`), whether it holds rows
for a bucket, its rows for a bucket (in the cache's own row type), its `targets` table (the
bucket names in use) and its remembered mount points. A snapshot from an older version lacks
some columns and tables: they read as absent. Writes nothing; which of these rows recovery may
take is decided in recovery/. Imports nothing of S3.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path

from .store import Stored, evidence_columns, file_columns

Known = dict[str, tuple[str, str | None]]  # target path -> (bucket, root), as StateStore.known_targets


def open_readonly(path: Path) -> sqlite3.Connection:
    # Quoted: a path may hold "%" or "?", which a SQLite URI would decode.
    return sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, check_same_thread=False)


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
    """The copy's rows for `bucket`, streamed (a thousand at a time from SQLite), with the evidence
    columns an older copy lacks as NULL (an unsure row stays unsure: its contents are still to be
    compared) and `legacy_mtime` NULL in a copy from before adoption existed."""
    conn = open_readonly(db)
    try:
        legacy = "legacy_mtime" if "legacy_mtime" in file_columns(conn) else "NULL"
        evidence = evidence_columns(conn)
        cursor = conn.execute(
            f"SELECT path, size, mtime_ns, checksum, {legacy}, {evidence} FROM files WHERE bucket=?", (bucket,)
        )
        cursor.arraysize = 1000
        while rows := cursor.fetchmany():
            for path, size, mtime_ns, checksum, legacy_mtime, ino, ctime_ns, unsure, part_bytes in rows:
                row = Stored(bucket, bytes(path), size, int(mtime_ns), checksum, legacy_mtime)
                yield replace(row, ino=ino, ctime_ns=ctime_ns, unsure=bool(unsure), part_bytes=part_bytes)
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
