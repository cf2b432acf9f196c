"""Choosing what to restore: the version of each key current at --as-of, and whether a path may be written.

Owns what one restore item is (`Item`, `Action`), the choice of versions (delete markers and
ties in time included), prefixes and the path safety check. Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from ..s3.objects import ObjectVersion


class Action(enum.Enum):
    DOWNLOAD = "download"  # readable now
    REQUEST = "request"  # archived, never asked for: RestoreObject
    CHECK = "check"  # archived, asked for before: HeadObject tells pending or ready


@dataclass(frozen=True, slots=True)
class Item:
    version: ObjectVersion
    path: bytes  # the original absolute path
    dest: bytes
    action: Action


def choose_versions(versions: Iterable[ObjectVersion], as_of: datetime | None) -> Iterator[ObjectVersion]:
    """Per key, the version to restore: the current one, or the newest one at `as_of`. A key whose
    choice is a delete marker (deleted by then) yields nothing. Ties in time go to the version S3
    lists first, the newer one. (Holds every version: for tests and small sets; `Restore` streams
    the same choice, `choose_one`, over a spilled listing.)"""
    groups: dict[str, list[ObjectVersion]] = {}
    for v in versions:
        groups.setdefault(v.key, []).append(v)
    for key in sorted(groups):
        chosen = choose_one(groups[key], as_of)
        if chosen is not None:
            yield chosen


def choose_one(versions: Iterable[ObjectVersion], as_of: datetime | None) -> ObjectVersion | None:
    """One key's versions in listing order: the version to restore, or None (deleted by then)."""
    best: ObjectVersion | None = None
    for v in versions:
        if as_of is None:
            if v.is_latest:
                best = v
            continue
        if v.last_modified > as_of:
            continue
        if best is None or v.last_modified > best.last_modified:
            best = v
    return None if best is None or best.is_delete_marker else best


def under_prefix(path: bytes, prefix: bytes | None) -> bool:
    if prefix is None or prefix == b"/":
        return True
    return path == prefix or path.startswith(prefix.rstrip(b"/") + b"/")


def list_prefixes(prefix: bytes | None) -> list[str]:
    """S3 prefixes that hold every key under `prefix`: its plain key form, and "/" for escaped keys."""
    if prefix is None or prefix == b"/":
        return [""]
    try:
        plain = prefix[1:].decode("utf-8")
    except UnicodeDecodeError:
        return [""]
    if any(ord(c) < 0x20 or c in "\x7f%" for c in plain):
        return [""]
    return [plain, "/"]


def is_safe(path: bytes) -> bool:
    """An absolute path without "." or ".." parts: it cannot climb out of --to DIR."""
    parts = path.split(b"/")
    return path.startswith(b"/") and b".." not in parts and b"." not in parts and b"\x00" not in path
