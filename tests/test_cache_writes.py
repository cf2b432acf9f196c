"""Who writes the cache: the run's writer task and the `cache.writes` facade, nothing else, and
only under the cache directory's lock."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from async_backup.cache.store import StateStore
from async_backup.disk.lock import cache_lock

PACKAGE = Path(__file__).resolve().parent.parent / "async_backup"
# The store itself, its one writer task, and the facade for every other write.
WRITERS = {PACKAGE / "cache" / "store.py", PACKAGE / "cache" / "writer.py", PACKAGE / "cache" / "writes.py"}


def write_methods() -> set[str]:
    """The StateStore methods that open a write transaction."""
    found = set()
    for name, member in vars(StateStore).items():
        if callable(member) and "with self._write_lock, self._conn" in inspect.getsource(member):
            found.add(name)
    return found


def test_only_the_writer_and_the_facade_call_the_stores_write_methods() -> None:
    methods = write_methods()
    assert {"apply", "reset", "set_meta", "insert_adopted", "forget_target"} <= methods
    callers = []
    for source in sorted(PACKAGE.rglob("*.py")):
        if source in WRITERS:
            continue
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if not (isinstance(node, ast.Attribute) and node.attr in methods):
                continue
            owner = node.value
            named = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            if named == "store":  # `store.apply`, `self.store.set_meta`, passed on or called
                callers.append(f"{source.relative_to(PACKAGE)}:{node.lineno} store.{node.attr}")
    assert callers == [], "write through cache.writer (a Change) or cache.writes.CacheWrites"


def test_the_cache_is_opened_writable_only_under_its_lock(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="only under its lock"):
        StateStore(tmp_path)
    assert not (tmp_path / "async-backup.db").exists()
    with cache_lock(tmp_path):
        StateStore(tmp_path).close()
    StateStore(tmp_path, readonly=True).close()  # a reader needs no lock
