"""The change guard: a run that would overwrite much of a target, or images whose bytes no longer
look like images, holds those uploads back instead of sending them.

Ransomware that encrypts an archive in place rewrites every file at about the same size with a
new mtime: without a guard the next run uploads all of it again (every byte billed again for 180
days in Deep Archive, and the good versions start their noncurrent expiry). Two signs hold back a
target's updates (files the cache knows whose size or mtime moved; new files always go):

- the share: more than `tuning.max_change_percent` of the target's cached files would be
  overwritten (never fewer than MIN_GUARDED_UPDATES: a share of a small target says little);
- lost signatures: `tuning.unrecognised_images_alarm` files whose row recorded an image kind
  (disk.kinds) now begin with bytes of no known kind. Encrypted files lose their signature.

How the share is decided before anything is sent. The walk streams; the total is known only at
its end. Updates are held (not queued) while the walk goes on, and let go as soon as the count
proves the share stays below the limit: updates so far plus the cached rows the walk has not
reached yet is at most the limit (for a target whose cached rows are all within the limit, at
once: no wait at all). Past the limit the held ones are dropped and every further update only
counted. Held updates wait in memory up to HELD_IN_MEMORY, then in a scratch SQLite file, so a
target of millions of files never holds millions of objects. New files and unchanged ones are
not held, so the uploads of new scans never wait for the walk.

Lost signatures are decided at upload, from the first bytes of the read the upload does anyway:
such a file is not sent but kept aside; at the end of the target's uploads, fewer than the alarm
are sent after all, the alarm or more hold back the target (and are named in the failure).

Imports the cache's scratch file and the plan's data; no S3, no streams.
"""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..cache.spill import open_spill
from ..disk.entries import DiskFile
from ..disk.keys import display_path
from ..disk.kinds import lost_signature
from ..wording import counted
from .plan import Upload

# Up to so many updates a target always lets through, whatever its share: 3 of 10 files edited
# is no attack, and the signature check still sees an encrypted image among them.
MIN_GUARDED_UPDATES = 10
# Held updates kept as objects before they go to a scratch file (a few MB at most).
HELD_IN_MEMORY = 10_000
# Paths the failure names.
EXAMPLES = 3


@dataclass(slots=True)
class _Held:
    """Updates waiting for the share to be known: a list, then a scratch SQLite file."""

    files: list[Upload] = field(default_factory=list)
    _spill_dir: tempfile.TemporaryDirectory[str] | None = None
    _spilled: int = 0

    def add(self, upload: Upload) -> None:
        self.files.append(upload)
        if len(self.files) >= HELD_IN_MEMORY:
            self._spill()

    def _spill(self) -> None:
        if self._spill_dir is None:
            self._spill_dir = tempfile.TemporaryDirectory(prefix="async-backup-held-")
        conn = open_spill(Path(self._spill_dir.name) / "held.db")
        try:
            with conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS held (n INTEGER PRIMARY KEY, path BLOB, size INTEGER, "
                    "mtime_ns INTEGER, ino INTEGER, ctime_ns INTEGER, was_kind TEXT)"
                )
                conn.executemany(
                    "INSERT INTO held(path, size, mtime_ns, ino, ctime_ns, was_kind) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (u.file.path, u.file.size, u.file.mtime_ns, u.file.ino, u.file.ctime_ns, u.was_kind)
                        for u in self.files
                    ],
                )
        finally:
            conn.close()
        self._spilled += len(self.files)
        self.files = []

    def drain(self) -> Iterator[Upload]:
        """Every held update, in walk order; the holder is empty afterwards."""
        if self._spill_dir is not None:
            conn = open_spill(Path(self._spill_dir.name) / "held.db")
            try:
                cursor = conn.execute("SELECT path, size, mtime_ns, ino, ctime_ns, was_kind FROM held ORDER BY n")
                cursor.arraysize = 1000
                while rows := cursor.fetchmany():
                    for path, size, mtime_ns, ino, ctime_ns, was_kind in rows:
                        yield Upload(DiskFile(bytes(path), size, mtime_ns, ino, ctime_ns), False, None, was_kind)
            finally:
                conn.close()
            self.drop()
        files, self.files = self.files, []
        yield from files

    def drop(self) -> None:
        self.files = []
        if self._spill_dir is not None:
            self._spill_dir.cleanup()
            self._spill_dir = None
            self._spilled = 0


class ChangeGuard:
    """One target's change guard for one run. The walk thread calls `planned` and `walk_ended`;
    the upload workers (on the event loop) call `admit`; `verdict` comes after both."""

    def __init__(self, *, cached: int, max_change_percent: float, alarm: int, off: bool) -> None:
        self.cached = cached
        self.max_change_percent = max_change_percent
        self.limit = max(math.floor(cached * max_change_percent / 100), MIN_GUARDED_UPDATES)
        self.alarm = alarm
        self.off = off  # --allow-mass-change: the operator said the re-scan is intended
        self.updates = 0
        self.examples: list[bytes] = []
        self.over = False  # the share went past the limit: updates held back
        # No wait at all when even every cached file changed would stay within the limit.
        self.proven = off or cached <= self.limit
        self._held = _Held()
        self._lock = threading.Lock()  # `lost` and `held_later` are written by the event loop
        self.lost: list[tuple[Upload, str]] = []  # kept aside, with the kind the upload saw
        self.held_later = 0  # updates refused at upload once the lost signatures set off the alarm

    # The walk thread

    def planned(self, upload: Upload, visited_rows: int) -> list[Upload]:
        """The uploads to queue now for this planned one: itself (a new file, or the share is
        proven below the limit), it and every held update (the count just proved it), or none
        (held, or held back)."""
        if upload.is_new or upload.proof is not None:
            return [upload]  # new files always go; a proof sends only what it finds changed
        self.updates += 1
        if self.proven:
            return [upload]
        if len(self.examples) < EXAMPLES:
            self.examples.append(upload.file.path)
        if self.over:
            return []
        if self.updates > self.limit:
            self.over = True
            self._held.drop()
            return []
        self._held.add(upload)
        if self.updates + max(0, self.cached - visited_rows) <= self.limit:
            self.proven = True
            return list(self._held.drain())
        return []

    def walk_ended(self) -> Iterator[Upload]:
        """The walk went to its end: the held updates go unless the share was over the limit."""
        if self.over:
            return iter(())
        self.proven = True
        return self._held.drain()

    def walk_cut(self) -> None:
        self._held.drop()

    # The upload workers

    def admit(self, upload: Upload, kind: str) -> bool:
        """Whether an upload may be sent, now that its first bytes show `kind`: False for an image
        that lost its signature (kept aside for `verdict`) and for any update once the alarm went off."""
        if self.off or upload.is_new:
            return True
        with self._lock:
            if len(self.lost) >= self.alarm:
                self.held_later += 1
                return False
            if lost_signature(upload.was_kind, kind):
                self.lost.append((upload, kind))
                return False
        return True

    def kept_aside(self) -> list[Upload]:
        """After the target's uploads: the files that lost their signature, to be sent after all
        when they stayed below the alarm and the share was within the limit."""
        if self.over or len(self.lost) >= self.alarm:
            return []
        aside, self.lost = [u for u, _ in self.lost], []
        return aside

    def verdict(self) -> str | None:
        """The one failure message for the target, or None when nothing was held back."""
        lost = len(self.lost) >= self.alarm
        if not (self.over or lost):
            return None
        clauses = []
        if self.over:
            share = 100.0 * self.updates / max(self.cached, 1)
            names = ", ".join(display_path(p) for p in self.examples)
            clauses.append(
                f"{self.updates} of {counted(self.cached, 'file')} ({share:.0f}%) would be overwritten, more "
                f"than the {self.max_change_percent:g}% allowed (e.g. {names})"
            )
        if lost:
            names = ", ".join(f"{display_path(u.file.path)} ({u.was_kind} -> {k})" for u, k in self.lost[:EXAMPLES])
            clauses.append(
                f"{counted(len(self.lost), 'image')} no longer begin like one (encrypted files lose their "
                f"signature: {names})"
            )
        return (
            "; ".join(clauses) + "; these uploads were held back (ransomware encrypting in place looks like "
            "this). If the change was intended, run with --allow-mass-change --only for this folder"
        )
