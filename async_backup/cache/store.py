"""The local cache: what S3 has confirmed, per bucket and path, in SQLite.

Owns the schema, the mapping of sqlite3 errors to our FatalError (`_mapped`, the one SQLite
boundary of the cache), the one read-only opener (`open_readonly`, for the cache, a downloaded
copy of it and the old script's caches), the one read of rows (`stream_rows` and `row`, both as
`records.Recorded`), the insertion of rows adopted from the old script's caches, the restores
table, and `apply`, which the single writer task (`writer`) calls with batched changes. Its write
methods are called by two modules only: `writer` (a run's rows) and `writes` (everything else,
each committed at once); every one holds the store's write lock. A row is
written only after S3 confirmed the upload or delete it describes, so a crash at any moment loses
nothing: at most the files in flight are sent again. Reads for the planner open their own
connection (WAL lets them run beside the writer). Imports nothing of S3.
Opened writable only under the cache's lock (`disk.lock`): `status`, `verify` and `restore` read
it read-only, which never moves a damaged database aside (restore's own requests: `restores`).
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from ..disk.cachedir import mount_point, why_unwritable
from ..disk.lock import holds
from ..errors import FatalError
from .records import OpenUpload, Recorded, SentPart, UploadFile

log = logging.getLogger(__name__)

STATE_NAME = "async-backup.db"
# meta row "device:<target path>" -> st_dev of the target's folder (a meta row: no schema change)
DEVICE_META = "device:"
# Columns of `files` added after its first version, and how `connect` adds them to an older cache.
_ADDED_COLUMNS = {
    "legacy_mtime": "REAL",  # a cache made before adoption kept the old mtime
    "ino": "INTEGER",  # the racy-clean rule and inode/ctime evidence
    "ctime_ns": "INTEGER",
    "unsure": "INTEGER NOT NULL DEFAULT 0",
    "part_bytes": "INTEGER",
    "kind": "TEXT",  # what the file's first bytes showed (disk.kinds); NULL: not known yet
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    bucket   TEXT    NOT NULL,
    path     BLOB    NOT NULL,   -- absolute path bytes; BLOB order is the walk's order
    size     INTEGER,            -- NULL for rows adopted from the old script's cache
    mtime_ns INTEGER NOT NULL,
    checksum TEXT,               -- the whole file's "crc32:<b64>" [then S3's value if another]; see s3/checksums.py
    legacy_mtime REAL,           -- the old script's float st_mtime, for rows adopted from its cache
    ino      INTEGER,            -- st_ino and st_ctime_ns when the file was read (NULL: not known,
    ctime_ns INTEGER,            --   in rows written before they were kept)
    unsure   INTEGER NOT NULL DEFAULT 0,  -- 1: read racily, the next run compares its contents
    part_bytes INTEGER,          -- the part size of a multipart upload (its composite checksum's)
    kind     TEXT,               -- what its first bytes showed: "tiff", "jpeg", ..., "other" (NULL: not known)
    PRIMARY KEY (bucket, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS targets (
    path      TEXT PRIMARY KEY,
    bucket    TEXT NOT NULL,
    root      TEXT,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS multipart_uploads (
    bucket    TEXT NOT NULL,
    key       TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    started   REAL NOT NULL,
    PRIMARY KEY (bucket, upload_id)
);
CREATE TABLE IF NOT EXISTS multipart_files (   -- the file of an open upload, so a later run can continue it
    bucket    TEXT    NOT NULL,
    upload_id TEXT    NOT NULL,
    path      BLOB    NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ino       INTEGER,
    ctime_ns  INTEGER,
    part_bytes INTEGER NOT NULL,   -- the upload's part size, whatever tuning says later
    algorithm TEXT    NOT NULL,    -- the parts' body checksum ("crc32/full": a FULL_OBJECT upload)
    storage_class TEXT NOT NULL,
    PRIMARY KEY (bucket, upload_id)
);
CREATE TABLE IF NOT EXISTS multipart_parts (   -- the parts S3 confirmed of an open upload
    bucket    TEXT    NOT NULL,
    upload_id TEXT    NOT NULL,
    number    INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    etag      TEXT    NOT NULL,
    digest    TEXT    NOT NULL,    -- hex digest of the body checksum it was sent with
    PRIMARY KEY (bucket, upload_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mounts (
    target TEXT    NOT NULL,   -- the target's path, as in `targets`
    path   BLOB    NOT NULL,   -- a directory inside it that is (or was) a file system of its own
    device INTEGER,            -- its st_dev when last seen mounted; NULL: suspected, never seen mounted
    PRIMARY KEY (target, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fixity (     -- the last checks of a file's bytes, on disk and in S3 (fixity/)
    bucket   TEXT    NOT NULL,
    path     BLOB    NOT NULL,
    mtime_ns INTEGER,            -- the file's mtime as checked: a row re-uploaded since is due again
    local_at REAL,               -- Unix seconds of the last read on disk, and what it found:
    local_result TEXT,           --   "ok", "first", "rot", "changed", "absent", "unreadable"
    good_at  REAL,               -- the last read that found the recorded bytes (NULL: none yet)
    checksum TEXT,               -- "crc32:<b64>" of the whole file, for rows whose own is not recomputable
    s3_at    REAL,               -- the last HeadObject compared, and what it found:
    s3_result TEXT,              --   "ok", "mismatch", "missing", "not checkable"
    PRIMARY KEY (bucket, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unsettled (
    bucket TEXT    NOT NULL,
    path   BLOB    NOT NULL,
    runs   INTEGER NOT NULL,     -- runs in a row that found the file changed while reading it
    PRIMARY KEY (bucket, path)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Stored:
    """S3 confirmed this file's upload (or, rebuilt from a snapshot, an earlier run's row as it was)."""

    bucket: str
    path: bytes
    size: int | None
    mtime_ns: int
    checksum: str | None
    legacy_mtime: float | None = None  # kept from a snapshot row adopted from the old script
    ino: int | None = None  # st_ino and st_ctime_ns of the file as it was read (None: not known)
    ctime_ns: int | None = None
    unsure: bool = False  # read racily: the next run compares its contents (records.is_racy)
    part_bytes: int | None = None  # a multipart upload's part size, to recompute its checksum locally
    kind: str | None = None  # what its first bytes showed (disk.kinds); None: not known

    @classmethod
    def of(cls, bucket: str, row: Recorded) -> Stored:
        """A row read back (a snapshot's), written again as it was."""
        return cls(
            bucket,
            row.path,
            row.size,
            row.mtime_ns,
            row.checksum,
            row.legacy_mtime,
            row.ino,
            row.ctime_ns,
            row.unsure,
            row.part_bytes,
            row.kind,
        )


@dataclass(frozen=True, slots=True)
class FixityHold:
    """A file a fixity read found changed while its size and mtime were not: when, and the last
    read before that found its recorded bytes (None: none did since its upload)."""

    found_at: float
    good_at: float | None


@dataclass(frozen=True, slots=True)
class FixityRow:
    """A row's last fixity check, on disk or in S3 (None: never, or not since it was re-uploaded),
    the last good read on disk, and the whole-file CRC32 a first pass took for it."""

    checked_at: float | None
    result: str | None
    good_at: float | None
    checksum: str | None


@dataclass(frozen=True, slots=True)
class Evidence:
    """A file matched its row by size and mtime, and the row had no inode or ctime yet: record them
    (nothing was read or sent), so that from now on a replacement or an edit with its mtime put
    back is seen."""

    bucket: str
    path: bytes
    ino: int
    ctime_ns: int


@dataclass(frozen=True, slots=True)
class Removed:
    """S3 confirmed this key's delete."""

    bucket: str
    path: bytes


@dataclass(frozen=True, slots=True)
class UploadStarted:
    """A multipart upload was created; remembered so a crash cannot leave it open for good, and
    with its file (when given) so that a later run can continue it."""

    bucket: str
    key: str
    upload_id: str
    file: UploadFile | None = None


@dataclass(frozen=True, slots=True)
class PartSent:
    """S3 confirmed one part of an open multipart upload."""

    bucket: str
    upload_id: str
    part: SentPart


@dataclass(frozen=True, slots=True)
class UploadEnded:
    """A multipart upload was completed or aborted: it, its file and its parts are forgotten."""

    bucket: str
    upload_id: str


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """A run walked a target's folder to the end on this st_dev, and the device guard let it be."""

    target: str
    device: int


@dataclass(frozen=True, slots=True)
class MountsSeen:
    """A walk to the end found these mount points inside a target (path, st_dev: new ones, or a
    new st_dev after a remount), and these remembered ones are to be forgotten."""

    target: str
    found: tuple[tuple[bytes, int | None], ...]
    gone: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class LocalChecked:
    """A fixity read of one file on disk: what it found (`result`), when, the whole-file CRC32 it
    took for a row whose own checksum cannot be recomputed, and whether the recorded bytes were
    found (then `good_at` moves to `at`). A "rot" result holds the file's uploads back."""

    bucket: str
    path: bytes
    mtime_ns: int
    at: float
    result: str
    good: bool
    checksum: str | None = None


@dataclass(frozen=True, slots=True)
class S3Checked:
    """A fixity HeadObject of one object: when, and what it found."""

    bucket: str
    path: bytes
    at: float
    result: str


@dataclass(frozen=True, slots=True)
class UnsettledKept:
    """After a target's walk and uploads: the files of `bucket` a run found changing (`paths`)
    keep their count of runs in a row; every other file's count ends."""

    bucket: str
    paths: frozenset[bytes]


Change = (
    Stored
    | Removed
    | UploadStarted
    | PartSent
    | UploadEnded
    | Evidence
    | DeviceSeen
    | MountsSeen
    | UnsettledKept
    | LocalChecked
    | S3Checked
)


# SQLite's answers that say the storage under the cache failed, not the database itself
# [sqlite.org/rescode.html]; a damaged database is SQLITE_CORRUPT or SQLITE_NOTADB.
_FULL = ("SQLITE_FULL",)
_LOCKED = ("SQLITE_BUSY", "SQLITE_LOCKED")
_IOERR = ("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")


def is_storage_error(exc: sqlite3.Error) -> bool:
    """The disk, a lock held by another program or the filesystem failed, not the database."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    return (
        name.startswith(_FULL + _LOCKED + _IOERR)
        or "disk is full" in text
        or "is locked" in text
        or "disk I/O error" in text
        or "readonly database" in text
        or "unable to open database" in text
    )


def storage_error(path: Path, exc: sqlite3.Error) -> FatalError:
    """One line for an operator: which file, what failed, what to do. Nothing unconfirmed was
    recorded (every row follows S3's confirmation), so after the fix the next run uploads only
    what this one missed."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    after = "then run again: the next run uploads only what this one missed"
    if name.startswith(_FULL) or "disk is full" in text:
        return FatalError(
            f"cache {path} cannot be written: the disk is full; free space on {mount_point(path)}, {after}"
        )
    if name.startswith(_LOCKED) or "is locked" in text:
        return FatalError(
            f"cache {path} is locked by another program (an sqlite3 shell, a file-level backup?); "
            f"stop the program holding {path}, {after}"
        )
    opening = name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM")) or "unable to open database" in text
    if opening or name.startswith("SQLITE_READONLY") or "readonly database" in text:
        # A read-only mount, or a directory this user may not write (SQLite cannot make its WAL there).
        why = why_unwritable(path)
        if why is not None:
            return FatalError(f"cache {path} cannot be written: {why}, {after}")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return FatalError(
            f"cache {path} cannot be written (read-only); check its permissions and that "
            f"{mount_point(path)} is mounted read-write, {after}"
        )
    return FatalError(f"cache {path}: {text or name} (an I/O error); check the disk holding it (dmesg), {after}")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _mapped(method: Callable[Concatenate[StateStore, _P], _R]) -> Callable[Concatenate[StateStore, _P], _R]:
    """sqlite3 errors of a StateStore method become our one-line FatalError at this boundary."""

    def wrapper(self: StateStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from None

    functools.update_wrapper(wrapper, method)
    return wrapper


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to a SQLite file: the cache, a downloaded copy of it, or one of the
    old script's caches. Never creates, migrates or moves anything."""
    # Quoted: a "%" or "?" in the path (the old script's quote_plus names) would change a URI's meaning.
    return sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, check_same_thread=False)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = open_readonly(path)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable to the last checkpoint-safe commit
        conn.executescript(_SCHEMA)
        present = file_columns(conn)
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                conn.execute(f"ALTER TABLE files ADD COLUMN {column} {kind}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def file_columns(conn: sqlite3.Connection) -> set[str]:
    """The columns of a cache's `files` table (snapshots from older versions lack some)."""
    return {str(row[1]) for row in conn.execute("PRAGMA table_info(files)")}


def row_columns(conn: sqlite3.Connection) -> str:
    """The columns of a `Recorded` for a SELECT, with NULL (0 for `unsure`) for those an older
    cache (a read-only one not migrated, a snapshot) lacks."""
    present = file_columns(conn)
    return ", ".join(c if c in present else ("0" if c == "unsure" else "NULL") for c in _ROW_COLUMNS)


# The columns of `files` a `Recorded` is made of, in its fields' order.
_ROW_COLUMNS = (
    "path",
    "size",
    "mtime_ns",
    "legacy_mtime",
    "ino",
    "ctime_ns",
    "unsure",
    "checksum",
    "part_bytes",
    "kind",
)


def _recorded(row: tuple[object, ...]) -> Recorded:
    path, size, mtime_ns, legacy_mtime, ino, ctime_ns, unsure, checksum, part_bytes, kind = row
    return Recorded(
        bytes(path),  # type: ignore[call-overload]
        None if size is None else int(size),  # type: ignore[call-overload]
        int(mtime_ns),  # type: ignore[call-overload]
        None if legacy_mtime is None else float(legacy_mtime),  # type: ignore[arg-type]
        None if ino is None else int(ino),  # type: ignore[call-overload]
        None if ctime_ns is None else int(ctime_ns),  # type: ignore[call-overload]
        bool(unsure),
        None if checksum is None else str(checksum),
        None if part_bytes is None else int(part_bytes),  # type: ignore[call-overload]
        None if kind is None else str(kind),
    )


def stream_rows(conn: sqlite3.Connection, bucket: str) -> Iterator[Recorded]:
    """One bucket's rows in path order, a thousand at a time from SQLite (never a list of all):
    the one streamed read of `files`, for the cache and a downloaded copy of it alike."""
    cursor = conn.execute(f"SELECT {row_columns(conn)} FROM files WHERE bucket=? ORDER BY path", (bucket,))
    cursor.arraysize = 1000
    while rows := cursor.fetchmany():
        for row in rows:
            yield _recorded(row)


def quick_check(conn: sqlite3.Connection) -> str | None:
    """SQLite's quick_check (every page and index, without matching index contents to rows):
    None when the database is sound, else its first complaint. Reads the whole file once."""
    rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    verdict = str(rows[0][0]) if rows else "no answer from quick_check"
    if verdict == "ok":
        return None
    # SQLite's report spans lines ("*** in database main ***\nPage 3: ..."): one line for the log.
    return " ".join(verdict.replace("*** in database main ***", "").split()) or "quick_check failed"


def move_aside(path: Path) -> Path:
    """Rename a damaged database (and its WAL and shared-memory files, which belong to it) to
    `<name>.damaged-<UTC time>`, so that nothing is planned from it and it stays for inspection."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.damaged-{stamp}")
    serial = 1
    while dest.exists():
        serial += 1
        dest = path.with_name(f"{path.name}.damaged-{stamp}-{serial}")
    os.replace(path, dest)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, dest.with_name(dest.name + suffix))
    return dest


class StateStore:
    """Synchronous access to the cache; call its methods from worker threads, not the event loop."""

    def __init__(self, cache_dir: Path, *, readonly: bool = False) -> None:
        if not readonly and not holds(cache_dir):
            # Two writers on one cache (a second run, verify --repair beside a backup) would
            # interleave their rows; the lock's own error tells the operator which run holds it.
            raise RuntimeError(f"the cache {cache_dir} is opened writable only under its lock (disk.lock.cache_lock)")
        self.cache_dir = cache_dir
        self.path = cache_dir / STATE_NAME
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        # Every write holds it: worker threads share one connection, and two interleaved transactions
        # on it end in "cannot commit - no transaction is active".
        self._write_lock = threading.Lock()
        self.damaged: str | None = None  # why the database could not be used, when it could not
        self._row_columns: str | None = None  # `row`'s SELECT list, read once from the schema
        if readonly and not self.path.exists():
            return  # a dry run on a fresh cache: everything is new
        problem = self._open(readonly)
        if problem is None:
            return
        self.damaged = problem
        if readonly:
            log.warning(
                "cache %s is damaged (%s); left as it is (read-only here): a real backup run moves it aside "
                "and rebuilds it from S3, this run treats it as empty",
                self.path,
                problem,
            )
            return
        moved = move_aside(self.path)
        log.warning(
            "cache %s is damaged (%s); moved it to %s, a backup rebuilds its rows from S3 before planning",
            self.path,
            problem,
            moved,
        )
        problem = self._open(readonly)
        if problem is not None:
            raise FatalError(f"cache {self.path} cannot be created ({problem}); check the cache directory") from None

    def _open(self, readonly: bool) -> str | None:
        """Open the database and check its pages; returns what is wrong, or None."""
        try:
            self._conn = connect(self.path, readonly=readonly)
            problem = quick_check(self._conn)
        except sqlite3.Error as exc:
            if is_storage_error(exc):  # a full disk or a lock held elsewhere: the database is not damaged
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise storage_error(self.path, exc) from None
            problem = str(exc) or type(exc).__name__
        if problem is not None and self._conn is not None:
            self._conn.close()
            self._conn = None
        return problem

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @_mapped
    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if self._conn is None:
            return []
        return list(self._conn.execute(sql, params))

    def known_targets(self) -> dict[str, tuple[str, str | None]]:
        rows = self._query("SELECT path, bucket, root FROM targets")
        known = {str(p): (str(b), None if r is None else str(r)) for p, b, r in rows}
        # A bucket with rows but no targets entry (an adopted old cache) still counts as known.
        return known

    @_mapped
    def remember_targets(self, targets: Iterable[tuple[str, str, str | None]]) -> None:
        assert self._conn is not None
        now = time.time()
        with self._write_lock, self._conn:
            self._conn.executemany(
                "INSERT INTO targets(path, bucket, root, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET bucket=excluded.bucket, root=excluded.root, "
                "last_seen=excluded.last_seen",
                [(p, b, r, now) for p, b, r in targets],
            )

    @_mapped
    def forget_target(self, path: str) -> int:
        """Drop a target and its rows (its bucket stays as it is in S3); returns rows dropped."""
        assert self._conn is not None
        with self._write_lock, self._conn:
            row = self._conn.execute("SELECT bucket FROM targets WHERE path=?", (path,)).fetchone()
            if row is None:
                return 0
            n = self._conn.execute("DELETE FROM files WHERE bucket=?", (row[0],)).rowcount
            self._conn.execute("DELETE FROM targets WHERE path=?", (path,))
            self._conn.execute("DELETE FROM meta WHERE name=?", (DEVICE_META + path,))
            self._conn.execute("DELETE FROM mounts WHERE target=?", (path,))
            return int(n)

    @_mapped
    def holdings(self) -> dict[str, tuple[int, int, int]]:
        """Per bucket: (rows, sum of known sizes, rows whose size is unknown), from the cache alone."""
        rows = self._query(
            "SELECT bucket, COUNT(*), COALESCE(SUM(size), 0), SUM(size IS NULL) FROM files GROUP BY bucket"
        )
        return {str(b): (int(n), int(size), int(null or 0)) for b, n, size, null in rows}  # type: ignore[call-overload]

    @_mapped
    def count(self, bucket: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM files WHERE bucket=?", (bucket,))
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def recorded(self, bucket: str) -> Iterator[Recorded]:
        """Stream one bucket's rows in path order over a connection of its own (for the walk
        thread, and verify's merge in a worker thread), so no list of all is ever held."""
        if self._conn is None or not self.path.exists():
            return  # no cache, or a damaged one (a read-only look leaves it as it is)
        try:
            conn = open_readonly(self.path)
            try:
                yield from stream_rows(conn, bucket)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from None

    @_mapped
    def row(self, bucket: str, path: bytes) -> Recorded | None:
        """One file's row, or None: for restore one file at a time, and for the few files whose
        contents are compared with what was sent."""
        if self._conn is None:
            return None
        with self._write_lock:  # the connection is shared with the writer's thread
            if self._row_columns is None:
                self._row_columns = row_columns(self._conn)
            found = self._conn.execute(
                f"SELECT {self._row_columns} FROM files WHERE bucket=? AND path=?", (bucket, path)
            ).fetchone()
        return None if found is None else _recorded(found)

    def open_uploads(self, bucket: str, key: str | None = None) -> list[OpenUpload]:
        """The multipart uploads of `bucket` (of one `key`, when given) this cache recorded and no
        run ended, oldest first, each with its file when one was recorded with it."""
        with self._write_lock:  # the connection is shared with the writer's thread
            rows = self._query(
                "SELECT u.key, u.upload_id, u.started, f.path, f.size, f.mtime_ns, f.ino, f.ctime_ns, "
                "f.part_bytes, f.algorithm, f.storage_class FROM multipart_uploads u LEFT JOIN multipart_files f "
                "ON f.bucket = u.bucket AND f.upload_id = u.upload_id WHERE u.bucket=? AND (? IS NULL OR u.key=?) "
                "ORDER BY u.started",
                (bucket, key, key),
            )
        found = []
        for k, upload_id, started, path, size, mtime_ns, ino, ctime_ns, part_bytes, algorithm, storage_class in rows:
            file = None
            if path is not None:
                file = UploadFile(
                    bytes(path),  # type: ignore[call-overload]
                    int(size),  # type: ignore[call-overload]
                    int(mtime_ns),  # type: ignore[call-overload]
                    None if ino is None else int(ino),  # type: ignore[call-overload]
                    None if ctime_ns is None else int(ctime_ns),  # type: ignore[call-overload]
                    int(part_bytes),  # type: ignore[call-overload]
                    str(algorithm),
                    str(storage_class),
                )
            found.append(OpenUpload(str(k), str(upload_id), float(started), file))  # type: ignore[arg-type]
        return found

    def sent_parts(self, bucket: str, upload_id: str) -> dict[int, SentPart]:
        """The parts S3 confirmed of an open upload, by number."""
        with self._write_lock:
            rows = self._query(
                "SELECT number, size, etag, digest FROM multipart_parts WHERE bucket=? AND upload_id=?",
                (bucket, upload_id),
            )
        return {
            int(n): SentPart(int(n), int(size), str(etag), str(digest))  # type: ignore[call-overload]
            for n, size, etag, digest in rows
        }

    @_mapped
    def apply(self, changes: Iterable[Change]) -> None:
        """Apply confirmed changes in one transaction."""
        assert self._conn is not None
        stored, removed, started, ended, evidence = [], [], [], [], []
        files: list[tuple[object, ...]] = []
        parts: list[tuple[object, ...]] = []
        rare: list[DeviceSeen | MountsSeen | UnsettledKept] = []  # a few per target and run
        local: list[tuple[object, ...]] = []
        remote: list[tuple[object, ...]] = []
        for c in changes:
            if isinstance(c, Stored):
                stored.append(
                    (
                        c.bucket,
                        c.path,
                        c.size,
                        c.mtime_ns,
                        c.checksum,
                        c.legacy_mtime,
                        c.ino,
                        c.ctime_ns,
                        int(c.unsure),
                        c.part_bytes,
                        c.kind,
                    )
                )
            elif isinstance(c, Evidence):
                evidence.append((c.ino, c.ctime_ns, c.bucket, c.path))
            elif isinstance(c, Removed):
                removed.append((c.bucket, c.path))
            elif isinstance(c, UploadStarted):
                started.append((c.bucket, c.key, c.upload_id, time.time()))
                if c.file is not None:
                    f = c.file
                    evidence_of_file = (f.path, f.size, f.mtime_ns, f.ino, f.ctime_ns)
                    files.append((c.bucket, c.upload_id, *evidence_of_file, f.part_bytes, f.algorithm, f.storage_class))
            elif isinstance(c, PartSent):
                p = c.part
                parts.append((c.bucket, c.upload_id, p.number, p.size, p.etag, p.digest_hex))
            elif isinstance(c, UploadEnded):
                ended.append((c.bucket, c.upload_id))
            elif isinstance(c, LocalChecked):
                good_at = c.at if c.good else None
                local.append((c.bucket, c.path, c.mtime_ns, c.at, c.result, good_at, c.checksum))
            elif isinstance(c, S3Checked):
                remote.append((c.bucket, c.path, c.at, c.result))
            else:
                rare.append(c)
        with self._write_lock, self._conn:
            if stored:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO files(bucket, path, size, mtime_ns, checksum, legacy_mtime, "
                    "ino, ctime_ns, unsure, part_bytes, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    stored,
                )
            if evidence:
                self._conn.executemany(
                    "UPDATE files SET ino=?, ctime_ns=? "
                    "WHERE bucket=? AND path=? AND (ino IS NULL OR ctime_ns IS NULL)",
                    evidence,
                )
            if removed:
                self._conn.executemany("DELETE FROM files WHERE bucket=? AND path=?", removed)
            if started:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO multipart_uploads(bucket, key, upload_id, started) VALUES (?, ?, ?, ?)",
                    started,
                )
            if files:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO multipart_files(bucket, upload_id, path, size, mtime_ns, ino, ctime_ns, "
                    "part_bytes, algorithm, storage_class) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    files,
                )
            if parts:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO multipart_parts(bucket, upload_id, number, size, etag, digest) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    parts,
                )
            if ended:
                for table in ("multipart_uploads", "multipart_files", "multipart_parts"):
                    self._conn.executemany(f"DELETE FROM {table} WHERE bucket=? AND upload_id=?", ended)
            self._settle(stored, removed)
            if local:
                # A checksum taken at a first pass stays until the file's row changes (a new mtime).
                self._conn.executemany(
                    "INSERT INTO fixity(bucket, path, mtime_ns, local_at, local_result, good_at, checksum) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(bucket, path) DO UPDATE SET "
                    "checksum = CASE WHEN fixity.mtime_ns IS excluded.mtime_ns AND excluded.checksum IS NULL "
                    "THEN fixity.checksum ELSE excluded.checksum END, "
                    "good_at = CASE WHEN excluded.good_at IS NOT NULL THEN excluded.good_at "
                    "WHEN fixity.mtime_ns IS excluded.mtime_ns THEN fixity.good_at END, "
                    "mtime_ns = excluded.mtime_ns, local_at = excluded.local_at, "
                    "local_result = excluded.local_result",
                    local,
                )
            if remote:
                self._conn.executemany(
                    "INSERT INTO fixity(bucket, path, s3_at, s3_result) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(bucket, path) DO UPDATE SET s3_at = excluded.s3_at, s3_result = excluded.s3_result",
                    remote,
                )
            for change in rare:
                self._apply_rare(change)

    def _apply_rare(self, change: DeviceSeen | MountsSeen | UnsettledKept) -> None:
        """A target's device, its mount points, the end of its unsettled counts (in `apply`'s
        transaction, under the write lock)."""
        assert self._conn is not None
        if isinstance(change, DeviceSeen):
            self._conn.execute(
                "INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)",
                (DEVICE_META + change.target, str(change.device)),
            )
        elif isinstance(change, MountsSeen):
            self._conn.executemany(
                "INSERT OR REPLACE INTO mounts(target, path, device) VALUES (?, ?, ?)",
                [(change.target, p, d) for p, d in change.found],
            )
            self._conn.executemany(
                "DELETE FROM mounts WHERE target=? AND path=?", [(change.target, p) for p in change.gone]
            )
        else:
            rows = self._conn.execute("SELECT path FROM unsettled WHERE bucket=?", (change.bucket,)).fetchall()
            stale = [(change.bucket, bytes(p)) for (p,) in rows if bytes(p) not in change.paths]
            self._conn.executemany("DELETE FROM unsettled WHERE bucket=? AND path=?", stale)

    def _settle(self, stored: Sequence[tuple[object, ...]], removed: Sequence[tuple[object, ...]]) -> None:
        """A file recorded or deleted holds still again: its count of unsettled runs ends. Looked up
        only while the table holds rows (rarely), so a batch of millions of rows pays nothing."""
        assert self._conn is not None
        if not (stored or removed) or self._conn.execute("SELECT 1 FROM unsettled LIMIT 1").fetchone() is None:
            return
        self._conn.executemany(
            "DELETE FROM unsettled WHERE bucket=? AND path=?", [row[:2] for row in (*stored, *removed)]
        )

    @_mapped
    def note_unsettled(self, bucket: str, path: bytes) -> int:
        """Count one more run in a row that found this file changed while reading it; returns the
        count (committed at once: it must survive the run's end however it ends)."""
        assert self._conn is not None
        with self._write_lock, self._conn:
            row = self._conn.execute(
                "INSERT INTO unsettled(bucket, path, runs) VALUES (?, ?, 1) "
                "ON CONFLICT(bucket, path) DO UPDATE SET runs = runs + 1 RETURNING runs",
                (bucket, path),
            ).fetchone()
        return int(row[0])

    @_mapped
    def reset(self) -> None:
        """Forget every recorded file (--reset); targets and adoption marks stay."""
        assert self._conn is not None
        with self._write_lock, self._conn:
            self._conn.execute("DELETE FROM files")
            self._conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('reset_at', ?)", (str(time.time()),))

    @_mapped
    def fixity_holds(self, bucket: str) -> dict[bytes, FixityHold]:
        """The files of `bucket` a fixity read found rotten, which no upload may replace until the
        operator accepts the change (a handful at most; read whole before a walk)."""
        if self._conn is None or not _has_table(self._conn, "fixity"):
            return {}
        with self._write_lock:
            rows = self._conn.execute(
                "SELECT path, local_at, good_at FROM fixity WHERE bucket=? AND local_result='rot'", (bucket,)
            ).fetchall()
        return {bytes(p): FixityHold(float(at), None if good is None else float(good)) for p, at, good in rows}

    def fixity_due(self, bucket: str, *, s3: bool) -> Iterator[tuple[Recorded, FixityRow]]:
        """A bucket's rows, the ones most due for a fixity check first: on disk (`s3` False) rotten
        ones first (each run reads them again, so a restored file is released), then rows never
        checked or re-uploaded since their last check, then the oldest checked; in S3 the same
        without the rot rule. Streamed over a connection of its own; the caller stops at its budget."""
        if self._conn is None or not self.path.exists():
            return
        at, result = ("x.s3_at", "x.s3_result") if s3 else ("x.local_at", "x.local_result")
        # An object re-uploaded since its HeadObject is not due again sooner: S3 checked it on receipt.
        moved = f"({at} IS NULL OR x.mtime_ns IS NOT f.mtime_ns)"
        due = f"({at} IS NULL)" if s3 else f"(x.local_result IS 'rot') DESC, {moved}"
        columns = ", ".join(f"f.{c}" for c in _ROW_COLUMNS)
        try:
            conn = open_readonly(self.path)
            try:
                cursor = conn.execute(
                    f"SELECT {columns}, {at}, {result}, x.good_at, x.checksum, x.mtime_ns FROM files f "
                    "LEFT JOIN fixity x ON x.bucket = f.bucket AND x.path = f.path WHERE f.bucket=? "
                    f"ORDER BY {due} DESC, {at}, f.path",
                    (bucket,),
                )
                cursor.arraysize = 1000
                while rows := cursor.fetchmany():
                    for row in rows:
                        checked_at, checked, good_at, checksum, checked_mtime = row[len(_ROW_COLUMNS) :]
                        recorded = _recorded(row[: len(_ROW_COLUMNS)])
                        same = checked_mtime is not None and int(checked_mtime) == recorded.mtime_ns
                        yield (
                            recorded,
                            FixityRow(
                                None if checked_at is None else float(checked_at),
                                None if checked is None else str(checked),
                                None if good_at is None or not same else float(good_at),
                                None if checksum is None or not same else str(checksum),
                            ),
                        )
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from None

    @_mapped
    def fixity_oldest(self) -> dict[str, tuple[int, int, float | None, float | None]]:
        """Per bucket: (rows, rows never checked on disk, the oldest check on disk, the oldest in S3);
        an oldest date is None while a row was never checked there."""
        if self._conn is None or not _has_table(self._conn, "fixity"):
            return {}
        rows = self._query(
            "SELECT f.bucket, COUNT(*), SUM(x.local_at IS NULL), "
            "CASE WHEN SUM(x.local_at IS NULL) THEN NULL ELSE MIN(x.local_at) END, "
            "CASE WHEN SUM(x.s3_at IS NULL) THEN NULL ELSE MIN(x.s3_at) END "
            "FROM files f LEFT JOIN fixity x ON x.bucket = f.bucket AND x.path = f.path GROUP BY f.bucket"
        )
        return {
            str(b): (int(n), int(never or 0), None if lo is None else float(lo), None if so is None else float(so))  # type: ignore[call-overload, arg-type]
            for b, n, never, lo, so in rows
        }

    @_mapped
    def accept_change(self, path: bytes) -> list[str]:
        """--accept-change: release a rotten file's hold and mark its row unsure, so the next walk
        compares its contents and uploads them; returns the buckets it was held in."""
        assert self._conn is not None
        with self._write_lock, self._conn:
            rows = self._conn.execute(
                "SELECT bucket FROM fixity WHERE path=? AND local_result='rot'", (path,)
            ).fetchall()
            buckets = [str(b) for (b,) in rows]
            for bucket in buckets:
                self._conn.execute(
                    "UPDATE fixity SET local_result='accepted', good_at=NULL WHERE bucket=? AND path=?", (bucket, path)
                )
                self._conn.execute("UPDATE files SET unsure=1 WHERE bucket=? AND path=?", (bucket, path))
        return buckets

    def target_device(self, path: str) -> int | None:
        """The st_dev of a target's folder as the last run that walked it without doubt found it."""
        value = self.get_meta(DEVICE_META + path)
        try:
            return None if value is None else int(value)
        except ValueError:
            return None

    @_mapped
    def mounts(self, target: str) -> dict[bytes, int | None]:
        """The mount points remembered inside a target: path -> st_dev when last seen mounted."""
        if self._conn is None or not _has_table(self._conn, "mounts"):
            return {}  # no cache, or a read-only look at one from before mount points were remembered
        rows = self._conn.execute("SELECT path, device FROM mounts WHERE target=?", (target,))
        return {bytes(p): None if d is None else int(d) for p, d in rows}

    @_mapped
    def remember_mounts(self, target: str, mounts: Iterable[tuple[bytes, int | None]]) -> None:
        """Remember (or refresh the device of) mount points inside a target."""
        assert self._conn is not None
        with self._write_lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO mounts(target, path, device) VALUES (?, ?, ?)",
                [(target, p, d) for p, d in mounts],
            )

    def get_meta(self, name: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE name=?", (name,))
        return str(rows[0][0]) if rows else None

    @_mapped
    def set_meta(self, name: str, value: str) -> None:
        assert self._conn is not None
        with self._write_lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", (name, value))

    @_mapped
    def clear_meta(self, name: str) -> None:
        assert self._conn is not None
        with self._write_lock, self._conn:
            self._conn.execute("DELETE FROM meta WHERE name=?", (name,))

    @_mapped
    def insert_adopted(self, bucket: str, rows: Iterable[tuple[bytes, int, float, str | None, int | None]]) -> int:
        """Rows adopted from the old script's cache: (path, size S3 listed, its float st_mtime,
        the checksum its listed ETag states and that checksum's part size).

        INSERT OR IGNORE: a row this tool already wrote (an upload S3 confirmed) always wins."""
        assert self._conn is not None
        batch = [(bucket, path, size, round(ts * 1e9), checksum, ts, part) for path, size, ts, checksum, part in rows]
        with self._write_lock, self._conn:
            cursor = self._conn.executemany(
                "INSERT OR IGNORE INTO files(bucket, path, size, mtime_ns, checksum, legacy_mtime, part_bytes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                batch,
            )
        return int(cursor.rowcount)

    def restore_requested(self, bucket: str, key: str, version_id: str) -> bool:
        """Whether a retrieval of this version was recorded here by a version of restore that kept
        its requests in the cache (they now go to `restores.RestoreLog`); one lookup."""
        if self._conn is None:
            return False  # no cache, or a damaged one restore only reads
        try:
            row = self._conn.execute(
                "SELECT 1 FROM restores WHERE bucket=? AND key=? AND version_id=?", (bucket, key, version_id)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return False  # no restore was ever requested from this cache
            raise storage_error(self.path, exc) from None
        return row is not None

    @_mapped
    def snapshot(self, dest: Path) -> None:
        """A consistent copy of the live database through SQLite's backup API."""
        assert self._conn is not None
        target = sqlite3.connect(dest)
        try:
            self._conn.backup(target)
        finally:
            target.close()
