"""A large file's multipart upload cut off by SIGTERM goes on in the next run.

A 30 MiB file in six 5 MiB parts goes through the recording proxy, each UploadPart held 0.7 s, so
the run is still sending parts when the signal comes. The next run continues the upload: it asks
ListParts, sends only the parts S3 does not hold, and completes it with every part; the object's
bytes and its full-object CRC32 (combined from the parts' CRC32s, the held ones included) are the
file's. A file changed between the runs, and an upload S3
forgot (aborted behind the tool's back, as the lifecycle rule would), are sent again from the start.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import key_of, run_cli, write_config
from s3proxy import Delay, PacedBody, ProxyServer

from async_backup.settings.naming import stable_bucket_name

MiB = 1024 * 1024
PARTS = 6
PART_BYTES = 5 * MiB
IN_FLIGHT = 2
TUNING = {"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": IN_FLIGHT, "workers": 2}


@dataclass
class Cut:
    root: Path
    cache: Path
    bucket: str
    key: str
    path: Path
    upload_id: str
    answered: int  # UploadPart requests S3 answered in the cut run


def cache_checksum(cache: Path, bucket: str, path: Path) -> str | None:
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        sql = "SELECT checksum FROM files WHERE bucket=? AND path=?"
        row = conn.execute(sql, (bucket, os.fsencode(path))).fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


def open_upload_ids(client: Any, bucket: str) -> list[str]:
    return [u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def recorded_parts(cache: Path) -> int:
    """The parts the cache records of open uploads (0 before the run made its cache)."""
    db = cache / "async-backup.db"
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM multipart_parts").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet (or, on the old code, never)
        return 0
    finally:
        conn.close()


def cut_by_sigterm(
    tmp_path: Path, proxy: ProxyServer, prefix: str, s3_inspect: Any, signum: int = signal.SIGTERM
) -> Cut:
    """A first run over the 30 MiB file, stopped by `signum` once S3 answered two of its parts."""
    root = tmp_path / "tree"
    root.mkdir()
    path = root / "volume.tif"
    path.write_bytes(random.Random(7).randbytes(PARTS * PART_BYTES))
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=prefix, tuning=TUNING)
    bucket = stable_bucket_name(prefix, str(root))
    proxy.set_faults(Delay(seconds=0.7, ops={"UploadPart"}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "async_backup", "--cache", str(cache), "--no-cache-backup"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if proxy.count("UploadPart", status=200) >= 2 and recorded_parts(cache) >= 1:
            break  # S3 answered two parts, and the cache committed one at least
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (130 if signum == signal.SIGTERM else -signum), stderr.decode()
    assert b"Traceback" not in stderr
    proxy.wait_done()
    answered = proxy.count("UploadPart", status=200)
    assert answered < PARTS, "the run sent every part before the signal"
    ids = open_upload_ids(s3_inspect, bucket)
    assert len(ids) == 1, "the cut upload stays open for the next run"
    held = s3_inspect.list_parts(Bucket=bucket, Key=key_of(path), UploadId=ids[0]).get("Parts", [])
    assert len(held) >= 2
    proxy.clear()
    return Cut(root, cache, bucket, key_of(path), path, ids[0], answered)


def assert_object_is_the_file(client: Any, cut: Cut) -> None:
    data = cut.path.read_bytes()
    # DEEP_ARCHIVE: read back after a restore (moto's completes at once).
    client.restore_object(Bucket=cut.bucket, Key=cut.key, RestoreRequest={"Days": 1})
    got = client.get_object(Bucket=cut.bucket, Key=cut.key)["Body"].read()
    assert got == data, "the object's bytes are the file's"
    whole = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert cache_checksum(cut.cache, cut.bucket, cut.path) == f"crc32:{whole}", "the whole file's CRC32"
    head = client.head_object(Bucket=cut.bucket, Key=cut.key, ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == whole, "S3 stores the whole file's CRC32 (FULL_OBJECT)"
    assert head["ChecksumType"] == "FULL_OBJECT"
    assert open_upload_ids(client, cut.bucket) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_cut_upload_goes_on_sending_only_the_parts_s3_lacks(
    signum: int, tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    with ProxyServer(moto_endpoint) as proxy:
        cut = cut_by_sigterm(tmp_path, proxy, bucket_prefix, s3_inspect, signum)
        in_s3 = len(s3_inspect.list_parts(Bucket=cut.bucket, Key=cut.key, UploadId=cut.upload_id)["Parts"])
        # A signal may land between S3's storing a part and its commit (SIGTERM: before the reply
        # is read): such a part is in flight, and goes again.
        held = recorded_parts(cut.cache)
        assert 1 <= held <= in_s3
        again = run_cli("--cache", str(cut.cache), "--no-cache-backup")
        assert again.returncode == 0, again.stderr
        sent = proxy.wait_done()
    ops = [r.op for r in sent]
    assert ops.count("CreateMultipartUpload") == 0, "the upload is continued, not begun again"
    assert ops.count("ListParts") == 1
    assert ops.count("AbortMultipartUpload") == 0
    assert ops.count("UploadPart") == PARTS - held, "only the parts S3 did not hold are sent"
    # Across both runs: every part once, but for those in flight when the signal came.
    assert cut.answered + ops.count("UploadPart") <= PARTS + IN_FLIGHT
    complete = [r for r in sent if r.op == "CompleteMultipartUpload"]
    assert len(complete) == 1 and f"uploadId={cut.upload_id}" in complete[0].query
    assert_object_is_the_file(s3_inspect, cut)
    assert "continuing the multipart upload" in again.stderr


@pytest.mark.slow
def test_a_file_changed_between_the_runs_is_sent_again_and_the_old_upload_aborted(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    with ProxyServer(moto_endpoint) as proxy:
        cut = cut_by_sigterm(tmp_path, proxy, bucket_prefix, s3_inspect)
        with open(cut.path, "r+b") as f:  # same size, new bytes in the first part, a new mtime
            f.write(b"rescanned" * 1000)
        again = run_cli("--cache", str(cut.cache), "--no-cache-backup")
        assert again.returncode == 0, again.stderr
        sent = proxy.wait_done()
    ops = [r.op for r in sent]
    aborts = [r for r in sent if r.op == "AbortMultipartUpload"]
    assert len(aborts) == 1 and f"uploadId={cut.upload_id}" in aborts[0].query
    assert ops.count("CreateMultipartUpload") == 1
    assert ops.count("UploadPart") == PARTS
    assert_object_is_the_file(s3_inspect, cut)


@pytest.mark.slow
def test_an_upload_s3_forgot_is_started_over(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    with ProxyServer(moto_endpoint) as proxy:
        cut = cut_by_sigterm(tmp_path, proxy, bucket_prefix, s3_inspect)
        # What the lifecycle rule does a week after the upload began.
        s3_inspect.abort_multipart_upload(Bucket=cut.bucket, Key=cut.key, UploadId=cut.upload_id)
        again = run_cli("--cache", str(cut.cache), "--no-cache-backup")
        assert again.returncode == 0, again.stderr
        sent = proxy.wait_done()
    ops = [r.op for r in sent]
    assert ops.count("ListParts") == 1
    assert ops.count("CreateMultipartUpload") == 1
    assert ops.count("UploadPart") == PARTS
    assert "is gone from S3" in again.stderr
    assert_object_is_the_file(s3_inspect, cut)
    conn = sqlite3.connect(cut.cache / "async-backup.db")
    try:
        for table in ("multipart_uploads", "multipart_files", "multipart_parts"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
    finally:
        conn.close()


def test_a_cache_from_before_resumable_uploads_opens_with_its_rows_and_open_uploads(tmp_path: Path) -> None:
    """An existing cache gains the new tables; its rows and its recorded upload ids stay, and an
    upload recorded without its file is one to abort (no run can tell whether its file changed)."""
    from async_backup.cache.store import StateStore
    from async_backup.disk.lock import cache_lock

    db = tmp_path / "async-backup.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE files (bucket TEXT NOT NULL, path BLOB NOT NULL, size INTEGER, mtime_ns INTEGER NOT NULL,
            checksum TEXT, PRIMARY KEY (bucket, path)) WITHOUT ROWID;
        CREATE TABLE multipart_uploads (bucket TEXT NOT NULL, key TEXT NOT NULL, upload_id TEXT NOT NULL,
            started REAL NOT NULL, PRIMARY KEY (bucket, upload_id));
        INSERT INTO files VALUES ('b', X'2f612f78', 3, 7, 'crc32:AAAAAA==');
        INSERT INTO multipart_uploads VALUES ('b', 'a/big', 'id-1', 1.0);
        """
    )
    conn.commit()
    conn.close()
    with cache_lock(tmp_path):
        store = StateStore(tmp_path)
        try:
            assert store.count("b") == 1
            (upload,) = store.open_uploads("b")
            assert (upload.key, upload.upload_id, upload.file) == ("a/big", "id-1", None)
            assert store.sent_parts("b", "id-1") == {}
        finally:
            store.close()


@pytest.mark.slow
def test_an_upload_cut_by_the_window_goes_on_next_run_without_a_confirmed_part_again(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """The nightly window ends in the middle of a large file: the run exits 4 with the file left,
    and the next night sends only the parts S3 had not confirmed (issue 24's check)."""
    root = tmp_path / "tree"
    root.mkdir()
    path = root / "volume.tif"
    path.write_bytes(random.Random(11).randbytes(PARTS * PART_BYTES))
    cache = tmp_path / "cache"
    bucket = stable_bucket_name(bucket_prefix, str(root))
    with ProxyServer(moto_endpoint) as proxy:
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, tuning=TUNING,
                     backup_extra={"window": {"grace_s": 1}})  # fmt: skip
        proxy.set_faults(Delay(seconds=0.3, ops={"UploadPart"}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "async_backup", "--cache", str(cache), "--no-cache-backup", "--max-duration", "8s"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and proxy.count("UploadPart", status=200) < 2:
            time.sleep(0.02)
        # From now on a part crawls (5 MiB at 100 kB/s is 52 s): the window ends while it is sent.
        proxy.set_faults(PacedBody(bytes_per_s=100_000, ops={"UploadPart"}))
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 4, stderr.decode()  # the window ended with work left
        assert b"Traceback" not in stderr
        # (The crawling parts' handlers are still reading a closed connection: no wait_done.)
        answered = proxy.count("UploadPart", status=200)
        assert 2 <= answered < PARTS
        held = recorded_parts(cache)
        assert held == answered, "every part S3 confirmed is recorded"
        (upload_id,) = open_upload_ids(s3_inspect, bucket)
        proxy.set_faults()
        proxy.clear()
        again = run_cli("--cache", str(cache), "--no-cache-backup")
        assert again.returncode == 0, again.stderr
        sent = proxy.wait_done()
    ops = [r.op for r in sent]
    assert ops.count("CreateMultipartUpload") == 0, "the upload is continued, not begun again"
    assert ops.count("UploadPart") == PARTS - held, "no part S3 confirmed is sent again"
    complete = [r for r in sent if r.op == "CompleteMultipartUpload"]
    assert len(complete) == 1 and f"uploadId={upload_id}" in complete[0].query
    cut = Cut(root, cache, bucket, key_of(path), path, upload_id, answered)
    assert_object_is_the_file(s3_inspect, cut)
