"""Bodies corrupted on the way, length unchanged: never recorded as backed up.

The proxy flips one byte in the middle of PutObject and UploadPart bodies. Checking them against
the checksum the client sent, as S3 does, it answers 400 BadDigest: the file fails (or is retried),
is reported, is not recorded, and the next run uploads it whole. Without that check (moto's own
behaviour) the corruption is stored, and the fault checks' content comparison catches it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, write_config
from faultcheck import assert_contents, assert_whole, bucket_etags, cache_rows, etag_matches_file, reported_failures
from s3proxy import CorruptBody, ProxyServer

from async_backup.disk.keys import display_path, key_for_path
from async_backup.settings.naming import stable_bucket_name

TUNING = {"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 2, "workers": 4}


def make_tree(root: Path) -> list[Path]:
    rng = random.Random(11)
    files = []
    for i in range(30):
        path = root / f"page-{i:02d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1000, 40_000)))
        files.append(path)
    volume = root / "volume.tif"
    volume.write_bytes(rng.randbytes(11 * 1024 * 1024))
    return [*files, volume]


@pytest.mark.parametrize("algorithm", ["when_supported", "when_required"])
def test_a_corrupted_body_is_refused_reported_and_never_recorded(
    algorithm: str, tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """CRC32 headers (when_supported) or the signed SHA-256 payload hash (when_required) both expose
    the flipped byte."""
    root = tmp_path / "tree"
    files = make_tree(root)
    cache = tmp_path / "cache"
    bucket = stable_bucket_name(bucket_prefix, str(root))
    corrupted = {key_for_path(os.fsencode(files[3])), key_for_path(os.fsencode(files[-1]))}
    with ProxyServer(moto_endpoint) as proxy:
        write_config(
            cache,
            proxy.url,
            folders=[str(root)],
            bucket_prefix=bucket_prefix,
            tuning=TUNING,
            aws_extra={"checksum_calculation": algorithm},
        )
        proxy.set_faults(CorruptBody(ops={"PutObject", "UploadPart"}, keys=corrupted, max_hits=2))
        first = run_cli("--cache", str(cache), "--no-cache-backup")
        assert proxy.count(faulted=True) == 2
        assert proxy.count(status=400) == 2, "the proxy refused both corrupted bodies"
        rows = cache_rows(cache, bucket)
        failed = reported_failures(cache)
        for key in corrupted:
            path = b"/" + key.encode()
            if path in rows:  # retried within the run: what is stored is whole
                assert etag_matches_file(path, bucket_etags(s3_inspect, bucket)[path])
            else:
                assert first.returncode == 1 and display_path(path) in failed, first.stderr
        # BadDigest for a CRC32 header; a body sent with its SHA-256 as the signed payload hash
        # (when_required, on the fast path) is refused as XAmzContentSHA256Mismatch, as S3 and Ceph do.
        refusal = "BadDigest" if algorithm == "when_supported" else "XAmzContentSHA256Mismatch"
        assert refusal in first.stderr or first.returncode == 0
        assert_contents(s3_inspect, bucket, rows)  # nothing recorded that S3 holds corrupted
        second = run_cli("--cache", str(cache), "--no-cache-backup")
        assert second.returncode == 0, second.stderr
    assert_whole(s3_inspect, bucket, root, cache)


def test_the_fault_checks_catch_a_corrupted_body_a_server_stored(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """A server that checks nothing stores the flipped byte; sizes agree, contents do not."""
    root = tmp_path / "tree"
    files = make_tree(root)
    cache = tmp_path / "cache"
    bucket = stable_bucket_name(bucket_prefix, str(root))
    with ProxyServer(moto_endpoint) as proxy:
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, tuning=TUNING)
        proxy.set_faults(
            CorruptBody(ops={"PutObject"}, keys={key_for_path(os.fsencode(files[5]))}, verify=False, max_hits=1)
        )
        run_cli("--cache", str(cache), "--no-cache-backup")
        assert proxy.count(faulted=True) == 1
    with pytest.raises(AssertionError, match="contents differ"):
        assert_whole(s3_inspect, bucket, root, cache)
