"""The cache's own storage fails mid-run: its disk fills up (a small tmpfs, for real).

The run stops with one line naming the file and what to do, records nothing S3 did not confirm,
and once space is freed the next run uploads only what the first one missed.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, write_config
from faultcheck import assert_whole, cache_rows, stored_versions, tree_files
from s3proxy import Delay, ProxyServer

from async_backup.cache.store import StateStore, storage_error
from async_backup.disk.lock import cache_lock
from async_backup.errors import FatalError
from async_backup.settings.naming import stable_bucket_name

FS_BYTES = 4 * 1024 * 1024
FREE_BYTES = 320 * 1024  # what is left for the cache once the ballast is in (its schema and a few batches)
FILES = 1500


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FS_BYTES mounted for the test (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "cachefs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave_bytes: int) -> Path:
    st = os.statvfs(mnt)
    ballast = mnt / "ballast"
    ballast.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
    return ballast


@pytest.mark.slow
def test_a_full_cache_disk_stops_the_run_with_one_line_and_the_next_run_uploads_only_what_was_missed(
    small_fs: Path, tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root = tmp_path / "tree"
    long = "a-rather-long-folder-name-as-archives-have-them-" * 3
    for i in range(FILES):
        path = root / long / f"scan-{i:05d}-{'x' * 60}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(4, "big") * 100)
    cache = small_fs
    bucket = stable_bucket_name(bucket_prefix, str(root))
    with ProxyServer(moto_endpoint) as proxy:
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, tuning={"workers": 16})
        ballast = fill(cache, FREE_BYTES)
        # Each PutObject held 0.05 s, so the cache is written in several timed batches and the disk
        # fills after the first ones (unslowed, the first batch can hold 500 rows and fill it alone).
        proxy.set_faults(Delay(seconds=0.05, ops={"PutObject"}))
        first = run_cli("--cache", str(cache), "--no-cache-backup", "--print-card")
        assert first.returncode == 1, first.stderr
        db = cache / "async-backup.db"
        cause = [line for line in first.stderr.splitlines() if str(db) in line]
        assert len(cause) == 1, first.stderr
        assert "the disk is full; free space on " + str(cache) in cause[0]
        assert "Traceback" not in first.stderr
        assert "disk is full" in json.dumps(json.loads(first.stdout)), "the card says it"
        rows = cache_rows(cache, bucket)
        assert 0 < len(rows) < FILES, f"{len(rows)} rows: the disk did not fill up mid-run"
        stored = stored_versions(s3_inspect, bucket)
        assert all((path, size) in stored for path, size in rows.items()), "a row S3 did not confirm"

        ballast.unlink()  # the operator frees space
        proxy.clear()
        second = run_cli("--cache", str(cache), "--no-cache-backup")
        assert second.returncode == 0, second.stderr
        assert proxy.count("PutObject") == FILES - len(rows), "only what the first run missed"
    assert_whole(s3_inspect, bucket, root, cache)
    assert len(tree_files(root)) == FILES


def test_a_cache_locked_by_another_program_is_one_line_not_a_damaged_cache(tmp_path: Path) -> None:
    """A lock held elsewhere is not damage: the cache is not moved aside, the line says what to do."""
    with cache_lock(tmp_path):  # ours: the other program holds SQLite's own lock
        StateStore(tmp_path).close()
        other = sqlite3.connect(tmp_path / "async-backup.db", isolation_level=None)
        try:
            other.execute("PRAGMA locking_mode=EXCLUSIVE")
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(FatalError) as caught:
                store = StateStore(tmp_path)
                store.close()
        finally:
            other.close()
    assert "is locked by another program" in str(caught.value)
    assert f"stop the program holding {tmp_path / 'async-backup.db'}" in str(caught.value)
    assert not list(tmp_path.glob("*.damaged-*"))


def test_storage_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "async-backup.db"
    io = sqlite3.OperationalError("disk I/O error")
    assert str(storage_error(db, io)).startswith(f"cache {db}: disk I/O error")
    assert "check the disk" in str(storage_error(db, io))
