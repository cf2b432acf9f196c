"""`restore` stays inside its root, never replaces a file that appeared meanwhile, and leaves the
cache of a running backup alone (issue 20). Real backups into moto's server, restores through the CLI.

The moment between a file's last check and its placement is reached by a hook: the primitives that
put a file in place (`os.replace`, `os.rename`, `os.link`, restore's own no-replace rename) are
wrapped so that a file appears at the destination just before they run, the latest moment a
racing program could create it. The S3 client is never patched.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Ran, in_process, key_of, make_tree, run_cli, write_config
from s3proxy import ProxyServer, SlowReply

from async_backup.restore import place

FILES = {"a.txt": b"hello", "sub/b.txt": b"bee", "sub/c.txt": b"sea"}


def restore(cache: Path, *args: str) -> Ran:
    return in_process("restore", *args, "--cache", str(cache))


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() or p.is_symlink()]


def backed_up(tmp_path: Path, endpoint: str, bucket_prefix: str, storage_class: str = "STANDARD") -> tuple[Path, Path]:
    """A target of three files, backed up; STANDARD (readable at once) unless told otherwise."""
    docs = tmp_path / "docs"
    make_tree(docs, FILES)
    cache = tmp_path / "cache"
    write_config(
        cache, endpoint, folders=[str(docs)], bucket_prefix=bucket_prefix, backup_extra={"storage_class": storage_class}
    )
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    return docs, cache


def lines_naming(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


# Restore stays inside --to


def test_a_link_planted_below_the_to_folder_is_refused_and_nothing_lands_outside(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    docs, cache = backed_up(tmp_path, moto_endpoint, bucket_prefix)
    outside = tmp_path / "etc"
    outside.mkdir()

    # A shared folder where someone else planted DIR/<first component of the path> -> outside.
    shared = tmp_path / "shared" / "restored"
    shared.mkdir(parents=True)
    first = shared / docs.parts[1]
    first.symlink_to(outside)
    result = restore(cache, str(docs), "--to", str(shared), "--yes")
    assert files_under(outside) == []
    assert result.returncode == 1, result.stdout + result.stderr
    named = lines_naming(result.stdout, str(first))
    assert len(named) == 1, result.stdout
    assert f"3 files below it not restored: a symbolic link (to {outside})" in named[0]
    assert "remove the link" in named[0] and "--to" in named[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert os.readlink(first) == str(outside)  # the link is reported, not removed
    dry = restore(cache, str(docs), "--to", str(shared), "--dry-run")
    assert dry.returncode == 0 and lines_naming(dry.stdout, f"refused: {first}: 3 files below it not restored")

    # Deeper: the folders down to the target are real, one below it is a link. The rest lands.
    other = tmp_path / "shared" / "other"
    (other / docs.relative_to("/")).mkdir(parents=True)
    sub = other / docs.relative_to("/") / "sub"
    sub.symlink_to(outside)
    deeper = restore(cache, str(docs), "--to", str(other), "--yes")
    assert files_under(outside) == []
    assert deeper.returncode == 1, deeper.stdout + deeper.stderr
    assert (other / docs.relative_to("/") / "a.txt").read_bytes() == b"hello"
    assert len(lines_naming(deeper.stdout, f"{sub}: 2 files below it not restored: a symbolic link")) == 1
    assert "restore: 1 restored" in deeper.stdout and "1 failed" in deeper.stdout


def test_in_place_the_configured_folder_may_be_a_link_but_nothing_below_it_is_followed(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    """The target as configured is the operator's path (a link to the disk is common); a link that
    appears inside it since the backup is not followed."""
    disk = tmp_path / "disk1" / "docs"
    make_tree(disk, FILES)
    docs = tmp_path / "docs"
    docs.symlink_to(disk)
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(docs)],
        bucket_prefix=bucket_prefix,
        backup_extra={"storage_class": "STANDARD"},
    )
    assert run_cli("--cache", str(cache)).returncode == 0
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (disk / "a.txt").unlink()
    for name in ("b.txt", "c.txt"):
        (disk / "sub" / name).unlink()
    (disk / "sub").rmdir()
    (disk / "sub").symlink_to(outside)

    result = restore(cache, str(docs), "--yes")
    assert files_under(outside) == []
    assert result.returncode == 1, result.stdout + result.stderr
    assert (disk / "a.txt").read_bytes() == b"hello"  # through the configured link
    named = lines_naming(result.stdout, f"{docs}/sub: 2 files below it not restored: a symbolic link (to {outside})")
    assert len(named) == 1, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# Never replace a file that appeared meanwhile


@pytest.fixture
def plant_before_placing(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], list[str]]:
    """Wrap every call that can put a finished file in place so that `dest` appears just before it."""

    def arm(dest: Path) -> list[str]:
        planted: list[str] = []

        def wrap(real: Callable[..., Any], name: str) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not dest.exists():
                    dest.write_bytes(b"planted meanwhile")
                    planted.append(name)
                return real(*args, **kwargs)

            return wrapper

        for name in ("replace", "rename", "link"):
            monkeypatch.setattr(os, name, wrap(getattr(os, name), f"os.{name}"))
        real_noreplace = getattr(place, "rename_noreplace", None)
        if real_noreplace is not None:
            monkeypatch.setattr(place, "rename_noreplace", wrap(real_noreplace, "rename_noreplace"))
        return planted

    return arm


@pytest.mark.parametrize("primitive", ["renameat2", "hard link"])
def test_a_file_appearing_just_before_placement_is_not_replaced(
    tmp_path: Path,
    moto_endpoint: str,
    bucket_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    plant_before_placing: Callable[[Path], list[str]],
    primitive: str,
) -> None:
    docs, cache = backed_up(tmp_path, moto_endpoint, bucket_prefix)
    out = tmp_path / "out"
    dest = out / docs.relative_to("/") / "a.txt"
    if primitive == "hard link":  # a file system without renameat2 (older kernels, some network file systems)
        monkeypatch.setattr(place, "_renameat2", None, raising=False)
    planted = plant_before_placing(dest)

    result = restore(cache, str(docs), "--path", "a.txt", "--to", str(out), "--yes")
    assert planted, "the hook never ran"
    assert dest.read_bytes() == b"planted meanwhile", f"replaced after {planted}"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restore: 0 restored" in result.stdout and "1 left alone" in result.stdout
    assert [p.name for p in files_under(out)] == ["a.txt"]  # no temporary file left beside it

    # With --overwrite the same moment ends with the restored file: replacing is what was asked.
    dest.unlink()
    forced = restore(cache, str(docs), "--path", "a.txt", "--to", str(out), "--yes", "--overwrite")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert dest.read_bytes() == b"hello"


def test_without_renameat2_or_hard_links_restore_refuses_to_place(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where neither atomic way exists (a file system without hard links), check-then-rename would
    race: the file is refused with one line, nothing is left behind."""
    docs, cache = backed_up(tmp_path, moto_endpoint, bucket_prefix)
    out = tmp_path / "out"
    monkeypatch.setattr(place, "_renameat2", None, raising=False)

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    result = restore(cache, str(docs), "--path", "a.txt", "--to", str(out), "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    dest = out / docs.relative_to("/") / "a.txt"
    assert not dest.exists() and files_under(out) == []
    failed = lines_naming(result.stdout, "failed:")
    assert len(failed) == 1 and str(dest) in failed[0] and "neither renameat2" in failed[0], result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_a_file_appearing_while_the_download_is_held_is_left_alone(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    """The proxy holds the GetObject reply; the file is created meanwhile. (Today's check before the
    rename caught this window too: a guard, not the race above.)"""
    docs = tmp_path / "docs"
    make_tree(docs, FILES)
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        write_config(
            cache,
            proxy.url,
            folders=[str(docs)],
            bucket_prefix=bucket_prefix,
            backup_extra={"storage_class": "STANDARD"},
        )
        assert run_cli("--cache", str(cache)).returncode == 0
        out = tmp_path / "out"
        dest = out / docs.relative_to("/") / "a.txt"
        key = key_of(docs / "a.txt")
        proxy.clear()
        proxy.set_faults(SlowReply(ops={"GetObject"}, keys={key}, seconds=4))

        def plant_while_held() -> None:
            deadline = time.monotonic() + 20
            while not any(r.op == "GetObject" and r.key == key for r in proxy.requests):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(b"planted meanwhile")

        planter = threading.Thread(target=plant_while_held)
        planter.start()
        result = restore(cache, str(docs), "--path", "a.txt", "--to", str(out), "--yes")
        planter.join()
    assert dest.read_bytes() == b"planted meanwhile"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restore: 0 restored" in result.stdout and "1 left alone" in result.stdout
    assert [p.name for p in files_under(out)] == ["a.txt"]


# The cache of a running backup


@pytest.fixture
def backup_holds_the_lock() -> Iterator[Callable[[Path], None]]:
    """Hold a cache's lock as a running backup does (flock, its pid written in the file)."""
    fds: list[int] = []

    def hold(cache: Path) -> None:
        fd = os.open(cache / "async-backup.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fds.append(fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"424242\n")

    yield hold
    for fd in fds:
        os.close(fd)


def cache_state(cache: Path) -> dict[str, str]:
    """The database and its WAL as bytes (hashed), and every file the cache directory holds."""
    state = {p.name: "" for p in cache.iterdir()}
    for name in ("async-backup.db", "async-backup.db-wal"):
        path = cache / name
        if path.exists():
            state[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    # What SQLite makes for any reader of a WAL database: the shared-memory index, an empty WAL.
    state.pop("async-backup.db-shm", None)
    if (cache / "async-backup.db-wal").exists() and not (cache / "async-backup.db-wal").stat().st_size:
        state.pop("async-backup.db-wal")
    state.pop("restores.db", None)
    state.pop("restores.db-wal", None)
    state.pop("restores.db-shm", None)
    return state


def test_restore_beside_a_running_backup_leaves_its_cache_untouched(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, backup_holds_the_lock: Callable[[Path], None]
) -> None:
    docs, cache = backed_up(tmp_path, moto_endpoint, bucket_prefix, storage_class="DEEP_ARCHIVE")
    backup_holds_the_lock(cache)
    before = cache_state(cache)
    out = tmp_path / "out"

    first = restore(cache, str(docs), "--to", str(out), "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 pending (3 retrievals requested now)" in first.stdout
    assert cache_state(cache) == before
    with sqlite3.connect(cache / "restores.db") as db:
        assert db.execute("SELECT COUNT(*) FROM restores").fetchone()[0] == 3

    second = restore(cache, str(docs), "--to", str(out), "--yes")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "restore: 3 restored" in second.stdout
    assert "RestoreObject" not in lines_naming(second.stdout, "requests sent:")[0]  # none sent twice
    assert cache_state(cache) == before
    assert (out / docs.relative_to("/") / "sub" / "c.txt").read_bytes() == b"sea"


def test_restore_never_moves_a_damaged_cache_aside_under_a_running_backup(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, backup_holds_the_lock: Callable[[Path], None]
) -> None:
    """Only a backup, under the lock, may move a damaged cache aside; restore reads around it."""
    docs, cache = backed_up(tmp_path, moto_endpoint, bucket_prefix)
    db = cache / "async-backup.db"
    with sqlite3.connect(db) as conn:  # fold the WAL in, so the damage below is all there is
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    assert len(data) >= 3 * page
    data[page : 3 * page] = os.urandom(2 * page)  # the pages after the header page
    db.write_bytes(bytes(data))
    backup_holds_the_lock(cache)
    before = cache_state(cache)

    out = tmp_path / "out"
    result = restore(cache, str(docs), "--to", str(out), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert cache_state(cache) == before
    assert not list(cache.glob("*.damaged-*"))
    assert len(lines_naming(result.stderr, "is damaged")) == 1, result.stderr
    assert (out / docs.relative_to("/") / "a.txt").read_bytes() == b"hello"


def test_requests_recorded_in_the_cache_by_an_earlier_version_are_not_sent_again(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    """Before restores.db, requests went into the cache's own restores table: still honoured there."""
    docs, cache = backed_up(tmp_path, moto_endpoint, bucket_prefix, storage_class="DEEP_ARCHIVE")
    out = tmp_path / "out"
    first = restore(cache, str(docs), "--path", "a.txt", "--to", str(out), "--yes")
    assert first.returncode == 0 and "1 retrieval requested now" in first.stdout, first.stdout + first.stderr
    with sqlite3.connect(cache / "restores.db") as log:
        rows = log.execute("SELECT bucket, key, version_id, tier, days, requested FROM restores").fetchall()
    assert len(rows) == 1
    with sqlite3.connect(cache / "async-backup.db") as db:  # where an earlier version kept them
        db.execute(
            "CREATE TABLE restores (bucket TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT NOT NULL, "
            "tier TEXT NOT NULL, days INTEGER NOT NULL, requested REAL NOT NULL, "
            "PRIMARY KEY (bucket, key, version_id)) WITHOUT ROWID"
        )
        db.executemany("INSERT INTO restores VALUES (?, ?, ?, ?, ?, ?)", rows)
    for name in ("restores.db", "restores.db-wal", "restores.db-shm"):
        (cache / name).unlink(missing_ok=True)

    second = restore(cache, str(docs), "--path", "a.txt", "--to", str(out), "--yes")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "RestoreObject" not in lines_naming(second.stdout, "requests sent:")[0]
    assert (out / docs.relative_to("/") / "a.txt").read_bytes() == b"hello"
