"""What cannot work stops in seconds with one clear error, not thousands of per-file failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import error_lines, free_port, run_cli, write_config
from s3proxy import ErrorReply, ProxyServer, access_denied


def small_tree(root: Path, count: int = 50) -> None:
    for i in range(count):
        path = root / f"d{i % 5}" / f"f{i}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i + 1))


def test_an_unreachable_endpoint_stops_the_run_at_once(tmp_path: Path, bucket_prefix: str):
    small_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    write_config(
        cache,
        f"http://127.0.0.1:{free_port()}",
        folders=[str(tmp_path / "tree")],
        bucket_prefix=bucket_prefix,
        tuning={"max_attempts": 2, "connect_timeout_s": 1},
    )
    began = time.monotonic()
    result = run_cli("--cache", str(cache), "--print-card")
    assert result.returncode == 1
    assert time.monotonic() - began < 30
    assert "cannot reach S3" in result.stderr and "Traceback" not in result.stderr
    assert len([ln for ln in error_lines(result.stderr) if "cannot reach" in ln]) <= 2  # the error and its failure line
    card = json.loads(result.stdout)  # exactly one card
    assert "fatal" in json.dumps(card)


def test_rejected_credentials_stop_the_run_after_one_request(tmp_path: Path, moto_endpoint: str, bucket_prefix: str):
    small_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(access_denied())
        write_config(cache, proxy.url, folders=[str(tmp_path / "tree")], bucket_prefix=bucket_prefix)
        result = run_cli("--cache", str(cache))
        sent = proxy.count()
    assert result.returncode == 1
    assert "refused the credentials (InvalidAccessKeyId)" in result.stderr
    assert sent <= 2, f"{sent} requests sent after the credentials were refused"


def test_a_missing_permission_stops_the_run_with_one_error(tmp_path: Path, moto_endpoint: str, bucket_prefix: str):
    small_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(ErrorReply(status=403, code="AccessDenied", message="Access Denied"))
        write_config(cache, proxy.url, folders=[str(tmp_path / "tree")], bucket_prefix=bucket_prefix)
        result = run_cli("--cache", str(cache))
        sent = proxy.count()
    assert result.returncode == 1
    assert "denied access" in result.stderr and "IAM policy" in result.stderr
    assert sent <= 2


@pytest.mark.slow
def test_a_server_that_dies_mid_run_stops_it_instead_of_failing_every_file(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
):
    small_tree(tmp_path / "tree", count=400)
    cache = tmp_path / "cache"
    proxy = ProxyServer(moto_endpoint)
    proxy.start()
    try:
        write_config(
            cache,
            proxy.url,
            folders=[str(tmp_path / "tree")],
            bucket_prefix=bucket_prefix,
            tuning={"max_attempts": 2, "connect_timeout_s": 1, "workers": 4},
        )
        import subprocess
        import sys

        proc = subprocess.Popen(
            [sys.executable, "-m", "async_backup", "--cache", str(cache), "--no-cache-backup"],
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while proxy.count("PutObject") < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.stop()  # connections are refused from now on
        _, stderr = proc.communicate(timeout=90)
    finally:
        proxy.stop()
    assert proc.returncode == 1
    assert "stopped answering" in stderr and "Traceback" not in stderr
