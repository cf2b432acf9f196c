"""Whatever ends a run, it ends with a report, a metrics file and a card.

Faults are real, injected at the wire by the proxy: a CreateMultipartUpload reply that lacks its
UploadId (a foreign exception, KeyError, above the S3 adapter), and SIGTERM while an abort of a
failed multipart upload hangs in the proxy.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import last_report, run_cli, write_config
from faultcheck import cache_rows, open_uploads
from s3proxy import ErrorReply, FakeReply, ProxyServer, SlowReply, Stall

from async_backup.settings.naming import stable_bucket_name

TUNING = {"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 2, "workers": 4}
NO_UPLOAD_ID = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Bucket>b</Bucket><Key>k</Key></InitiateMultipartUploadResult>"
)


def make_site(tmp_path: Path, endpoint: str, prefix: str) -> tuple[Path, Path, str]:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(20):
        (root / f"page-{i:02d}.tif").write_bytes(bytes([i]) * 3000)
    (root / "volume.tif").write_bytes(b"v" * (11 * 1024 * 1024))
    cache = tmp_path / "cache"
    write_config(cache, endpoint, folders=[str(root)], bucket_prefix=prefix, tuning=TUNING)
    return root, cache, stable_bucket_name(prefix, str(root))


def test_a_foreign_exception_ends_the_run_with_report_metrics_and_card(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    with ProxyServer(moto_endpoint) as proxy:
        _root, cache, _bucket = make_site(tmp_path, proxy.url, bucket_prefix)
        proxy.set_faults(FakeReply(ops={"CreateMultipartUpload"}, body=NO_UPLOAD_ID))
        metrics = tmp_path / "metrics" / "async_backup.prom"
        result = run_cli("--cache", str(cache), "--no-cache-backup", "--print-card", "--metrics-file", str(metrics))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "internal error" in result.stderr and "KeyError: 'UploadId'" in result.stderr
    report = last_report(cache)
    internal = [f for f in report["failures"] if f["kind"] == "internal error"]
    assert len(internal) == 1 and "KeyError" in internal[0]["message"], report["failures"]
    assert report["exit_code"] == 1
    assert metrics.exists()
    card = json.dumps(json.loads(result.stdout))
    assert "internal error" in card and "KeyError" in card
    log = (cache / "backup.log").read_text()
    assert "Traceback (most recent call last)" in log and "KeyError: 'UploadId'" in log


@pytest.mark.slow
def test_sigterm_while_an_abort_is_in_flight_exits_130_with_a_report(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    with ProxyServer(moto_endpoint) as proxy:
        _root, cache, bucket = make_site(tmp_path, proxy.url, bucket_prefix)
        proxy.set_faults(
            ErrorReply(ops={"UploadPart"}, status=400, code="InvalidRequest", message="refused by the test"),
            Stall(ops={"AbortMultipartUpload"}, seconds=6.0, max_hits=1),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "async_backup", "--cache", str(cache), "--no-cache-backup"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while proxy.count("AbortMultipartUpload") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.count("AbortMultipartUpload") == 1, "the abort never started"
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # a second one, impatient: still a report
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr.decode()
        assert b"Traceback" not in stderr
        assert proxy.count("AbortMultipartUpload") >= 2, "the stalled abort was retried"
    report = last_report(cache)
    assert report["interrupted"] is True and report["exit_code"] == 130
    assert open_uploads(s3_inspect, bucket) == []
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM multipart_uploads").fetchone()[0] == 0
    finally:
        conn.close()
    assert all(not p.endswith(b"volume.tif") for p in cache_rows(cache, bucket))


def test_sigterm_while_create_multipart_upload_is_answered_leaves_no_upload_open(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """The upload exists in S3 before its reply arrives: the reply is still read, the id recorded
    and the upload aborted, instead of leaving it to the next run's sweep."""
    with ProxyServer(moto_endpoint) as proxy:
        _root, cache, bucket = make_site(tmp_path, proxy.url, bucket_prefix)
        proxy.set_faults(SlowReply(ops={"CreateMultipartUpload"}, seconds=4.0))
        proc = subprocess.Popen(
            [sys.executable, "-m", "async_backup", "--cache", str(cache), "--no-cache-backup"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while proxy.count("CreateMultipartUpload") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr.decode()
        assert proxy.count("CreateMultipartUpload") == 1
    assert open_uploads(s3_inspect, bucket) == [], "the upload was created, so it must be aborted"
    assert last_report(cache)["interrupted"] is True
