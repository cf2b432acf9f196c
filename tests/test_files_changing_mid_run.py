"""Files that change, vanish or cannot be read while a run goes on."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ACCESS_KEY, REGION, SECRET_KEY, run_cli, write_config
from faultcheck import bucket_objects, cache_rows

from async_backup.backup.budget import ByteBudget
from async_backup.backup.upload import MemoryLimits, MultipartLog, UploadSettings, upload_file
from async_backup.disk.entries import DiskFile, Hole
from async_backup.disk.read import FileChanged, FileVanished, open_regular, read_exact
from async_backup.disk.walk import Excluder, walk_target
from async_backup.s3.client import open_s3
from async_backup.settings.config import AwsSettings, Tuning
from async_backup.settings.naming import stable_bucket_name


def test_a_file_written_during_its_upload_is_not_recorded(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    root = tmp_path / "tree"
    root.mkdir()
    growing = root / "being-scanned.tif"
    growing.write_bytes(os.urandom(30 * 1024 * 1024))
    (root / "calm.tif").write_bytes(b"calm")
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(root)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 1},
    )
    stop = threading.Event()

    def keep_writing() -> None:
        with open(growing, "r+b") as f:
            while not stop.is_set():
                f.seek(0)
                f.write(os.urandom(16))
                f.flush()
                os.utime(growing)
                time.sleep(0.005)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = run_cli("--cache", str(cache))
    finally:
        stop.set()
        writer.join()
    bucket = stable_bucket_name(bucket_prefix, str(root))
    assert result.returncode == 0, result.stderr  # a warning, not a failure: the next run takes it
    assert "changed while reading" in result.stderr and "being-scanned.tif" in result.stderr
    assert list(cache_rows(cache, bucket)) == [os.fsencode(root / "calm.tif")]
    assert os.fsencode(growing) not in bucket_objects(s3_inspect, bucket)
    assert s3_inspect.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    settled = run_cli("--cache", str(cache))
    assert settled.returncode == 0, settled.stderr
    assert cache_rows(cache, bucket)[os.fsencode(growing)] == growing.stat().st_size


def test_read_exact_reads_no_more_than_the_fstat_size_and_notices_a_change(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    fd, st = open_regular(os.fsencode(path))
    try:
        assert read_exact(fd, st.st_size, st.st_mtime_ns) == b"x" * 1000
        with open(path, "ab") as f:
            f.write(b"grown")
        with pytest.raises(FileChanged):
            read_exact(fd, st.st_size, st.st_mtime_ns)
        os.truncate(path, 10)
        with pytest.raises(FileChanged):
            read_exact(fd, st.st_size, st.st_mtime_ns)
    finally:
        os.close(fd)


def test_a_file_that_vanished_after_the_walk_is_a_skip(tmp_path: Path, moto_endpoint: str):
    gone = DiskFile(os.fsencode(tmp_path / "gone.tif"), 10, 1)
    settings = UploadSettings("DEEP_ARCHIVE", 16 * 1024 * 1024, 16 * 1024 * 1024)
    aws = AwsSettings(ACCESS_KEY, SECRET_KEY, REGION, moto_endpoint)

    async def attempt() -> None:
        async with open_s3(aws, Tuning()) as s3:
            limits = MemoryLimits(ByteBudget(1 << 20), anyio.Semaphore(1))
            await upload_file(s3, "no-bucket-needed", "k", gone, settings, limits, MultipartLog())

    with pytest.raises(FileVanished):
        anyio.run(attempt)


def test_a_directory_that_vanishes_mid_walk_keeps_its_cached_files(tmp_path: Path):
    for rel in ("a/1.tif", "b/2.tif", "c/3.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    walk = walk_target(os.fsencode(tmp_path), Excluder(()), lambda f: None, "t")
    first = next(walk)
    assert isinstance(first, DiskFile) and first.path.endswith(b"a/1.tif")
    for name in ("b/2.tif", "b"):
        target = tmp_path / name
        target.unlink() if target.is_file() else target.rmdir()
    rest = list(walk)
    assert isinstance(rest[0], Hole) and rest[0].reason == "vanished" and rest[0].path.endswith(b"/b/")
    assert isinstance(rest[1], DiskFile) and rest[1].path.endswith(b"c/3.tif")
