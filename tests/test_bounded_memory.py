"""Bounded memory: verify and restore spill the bucket listing to disk and merge it in path order;
the cache snapshot is sent from its temporary file (in parts when large); backup.log is rotated
and its uploaded copy bounded; a run starts at most `tuning.file_threads` threads for files. (The
1,000,000-object figures: benchmarks/memory_listing.py.)"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import in_process, run_cli, write_config
from s3proxy import Delay, ProxyServer

from async_backup.recovery.snapshots import cache_bucket_name, log_key
from async_backup.report.logsetup import LOG_MAX_BYTES
from async_backup.s3.client import open_s3
from async_backup.settings.config import load_config
from async_backup.settings.naming import stable_bucket_name


def make_tree(root: Path) -> None:
    """Names whose keys sort otherwise than their paths: escaped keys ("/" + ...) come first in
    S3's key order, their paths anywhere in the walk's byte order."""
    sub = root / "sub"
    sub.mkdir(parents=True)
    for name in (b"a.tif", b"caf\xe9.tif", b"tab\there.tif", b"z.tif", b"sub/b.tif", b"sub/\xff.tif", b"sub-x.tif"):
        with open(os.fsencode(root) + b"/" + name, "wb") as f:
            f.write(name * 10)


@pytest.mark.slow
def test_verify_merges_the_listing_in_path_order_whatever_the_key_order(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    root = tmp_path / "tree"
    make_tree(root)
    time.sleep(2.2)  # past the racy-clean margin: files written just before their backup are never whole
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
    whole = in_process("--cache", str(cache), "verify")
    assert whole.returncode == 0, whole.stdout
    assert "7 objects (570 B), 7 cached, 7 on disk: whole" in whole.stdout, whole.stdout
    # A row the cache lost, for an escaped key: the object and the file still meet in the merge.
    conn = sqlite3.connect(cache / "async-backup.db")
    with conn:
        conn.execute("DELETE FROM files WHERE path=?", (os.fsencode(root) + b"/sub/\xff.tif",))
    conn.close()
    lost = in_process("--cache", str(cache), "verify")
    assert lost.returncode == 0, lost.stdout
    assert "1 object has a file but no cache row" in lost.stdout


def test_restore_dry_run_prints_the_estimate_and_sends_nothing_but_the_listing(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    root = tmp_path / "tree"
    make_tree(root)
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix)
        assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
        proxy.clear()
        dest = tmp_path / "restored"
        result = in_process("--cache", str(cache), "restore", str(root), "--to", str(dest), "--dry-run")
        assert result.returncode == 0, result.stdout
        assert "7 objects" in result.stdout and "7 retrieval requests to send" in result.stdout
        assert "restore: dry run: nothing was requested or written" in result.stdout
        assert set(proxy.ops()) == {"ListObjectVersions"}
    assert not dest.exists()


def test_a_large_snapshot_is_sent_from_its_file_in_parts(tmp_path: Path, moto_endpoint: str, s3_inspect: Any) -> None:
    cache = tmp_path / "cache"
    big = tmp_path / "snapshot.db.gz"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    bucket = "t-plain-file-parts"
    s3_inspect.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    with ProxyServer(moto_endpoint) as proxy:
        write_config(cache, proxy.url, folders=[str(tmp_path)])
        config = load_config(cache)

        async def send() -> int:
            async with open_s3(config.aws, config.tuning) as s3:
                return await s3.put_plain_file(bucket, "k/snapshot.db.gz", str(big), part_bytes=5 * 1024 * 1024)

        assert anyio.run(send) == big.stat().st_size
        assert proxy.count("CreateMultipartUpload") == 1 and proxy.count("UploadPart") == 3
        assert proxy.count("PutObject") == 0
    body = s3_inspect.get_object(Bucket=bucket, Key="k/snapshot.db.gz")["Body"].read()
    assert body == big.read_bytes()


def test_backup_log_is_rotated_and_its_uploaded_copy_bounded(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root = tmp_path / "tree"
    make_tree(root)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    old_line = b"an old line of a log that was never rotated\n"
    (cache / "backup.log").write_bytes(old_line * (LOG_MAX_BYTES // len(old_line) + 50_000))
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    assert (cache / "backup.log").stat().st_size < 1024 * 1024
    assert (cache / "backup.log.1").stat().st_size > LOG_MAX_BYTES
    config = load_config(cache)
    uploaded = s3_inspect.head_object(Bucket=cache_bucket_name(config), Key=log_key(cache.resolve()))
    assert uploaded["ContentLength"] <= LOG_MAX_BYTES
    assert stable_bucket_name(bucket_prefix, str(root))  # the target itself was backed up as usual


def _peak_threads(cache: Path, seconds_limit: float = 120) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run a backup as a subprocess and sample its thread count until it exits."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "async_backup", "--cache", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    deadline = time.monotonic() + seconds_limit
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, len(os.listdir(f"/proc/{proc.pid}/task")))
        except FileNotFoundError:
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=seconds_limit)
    return peak, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_file_threads_bounds_the_threads_a_run_starts(tmp_path: Path, moto_endpoint: str, bucket_prefix: str) -> None:
    """Each idle thread keeps its stack and its malloc arena: the threads that read and checksum
    files are `tuning.file_threads`, not anyio's default of 40, however many uploads run at once."""
    peaks = {}
    for threads in (3, 40):
        root = tmp_path / f"tree-{threads}"
        for i in range(400):
            (root / f"vol{i % 4}").mkdir(parents=True, exist_ok=True)
            (root / f"vol{i % 4}" / f"page-{i:04d}.tif").write_bytes(os.urandom(200_000))
        cache = tmp_path / f"cache-{threads}"
        with ProxyServer(moto_endpoint) as proxy:
            proxy.set_faults(Delay(seconds=0.05, ops={"PutObject"}))
            tuning = {"workers": 128, "file_threads": threads, "walk_threads": 1}
            write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, tuning=tuning)
            peaks[threads], done = _peak_threads(cache)
        assert done.returncode == 0, done.stderr[-2000:]
    # The main thread, the file threads, one walk thread, libuv's resolver pool (four): at most 9 more.
    assert peaks[3] <= 3 + 9, peaks
    assert peaks[40] >= peaks[3] + 4, peaks  # the sampling does see the threads a run starts
