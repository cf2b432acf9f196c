"""Temporary SQLite files that keep a command's large working sets off the heap.

Owns opening one: no journal and no fsync (the file is thrown away when the command ends) and, by
default, a page cache of 8 MiB at most. verify's listing, restore's versions and the cache
rebuild's listing are spilled here; each keeps its own schema. cache/ is the one package that
imports sqlite3, so the commands name no SQLite module themselves.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SPILL_PAGE_CACHE_KIB = 8192


def open_spill(path: Path, *, page_cache_kib: int | None = SPILL_PAGE_CACHE_KIB) -> sqlite3.Connection:
    """A connection to a new scratch database at `path`, usable from worker threads."""
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    if page_cache_kib is not None:
        conn.execute(f"PRAGMA cache_size=-{page_cache_kib}")  # negative: in KiB rather than pages
    return conn
