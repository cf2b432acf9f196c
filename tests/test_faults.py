"""A backup under injected faults: throttling, server errors, resets mid-body, stalls past the
read timeout, and DeleteObjects replies with per-key errors. Nothing may be lost or misrecorded."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, write_config
from faultcheck import (
    assert_whole,
    bucket_objects,
    cache_rows,
    reported_failures,
    run_stopped,
    tree_files,
    uploads_holding_parts,
)
from s3proxy import DeleteKeyErrors, ProxyServer, ResetBody, Stall, internal_error, slow_down

from async_backup.disk.keys import display_path
from async_backup.settings.naming import stable_bucket_name

FAULT_SHARE = 0.05


def make_files(root: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(count):
        path = root / f"d{i % 40:02d}" / f"page-{i:05d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(100, 3000)))
    for i in range(2):  # two multipart files of two parts each
        (root / f"volume-{i}.tif").write_bytes(rng.randbytes(6 * 1024 * 1024))


def faults() -> list[Any]:
    return [
        slow_down(FAULT_SHARE),
        internal_error(FAULT_SHARE),
        ResetBody(FAULT_SHARE, fraction=0.5),
        Stall(FAULT_SHARE, seconds=4.0, forward=True),
        DeleteKeyErrors(key_share=FAULT_SHARE),
    ]


def check_nothing_misrecorded(client: Any, bucket: str, root: Path, cache: Path, gone: set[bytes]) -> int:
    """Every file is in S3 and in the cache, or reported failed and absent from the cache; every
    deleted file is gone from both, or reported failed and still in the cache. Returns failures."""
    tree = tree_files(root)
    objects = bucket_objects(client, bucket)
    rows = cache_rows(cache, bucket)
    failed = reported_failures(cache)
    # A changed file whose upload failed keeps its old row (S3 still holds that version) and is
    # reported; a run that stopped early (20 transport failures in a row, as a loaded machine's
    # timeouts can give) names the stop, not each file it never reached.
    stopped = run_stopped(cache)
    for path, size in tree.items():
        if path in rows:
            if rows[path] != size:
                assert display_path(path) in failed or stopped, f"{display_path(path)}: stale row, not reported"
                assert path in objects, display_path(path)
                continue
            assert objects.get(path) == size, display_path(path)
        else:
            assert display_path(path) in failed, f"{display_path(path)} neither recorded nor reported"
    for path in gone:
        if path in rows:
            assert display_path(path) in failed, f"{display_path(path)} still cached but not reported"
        else:
            assert path not in objects, f"{display_path(path)} forgotten by the cache but still in S3"
    # A key whose DeleteObjects entry came back as an error may really be gone (the proxy's reply
    # rewrite, like a lost reply on real S3): its row stays, the run reports it, the next run deletes again.
    unconfirmed_deletes = {p for p in gone if display_path(p) in failed}
    assert set(rows) - unconfirmed_deletes <= set(objects), "the cache records something S3 does not hold"
    return len(failed)


@pytest.mark.slow
def test_faults_lose_nothing_and_a_clean_rerun_makes_the_bucket_whole(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    root = tmp_path / "archive"
    make_files(root, 2000, seed=7)
    cache = tmp_path / "cache"
    bucket = stable_bucket_name(bucket_prefix, str(root))
    with ProxyServer(moto_endpoint, seed=11) as proxy:
        write_config(
            cache,
            proxy.url,
            folders=[str(root)],
            bucket_prefix=bucket_prefix,
            tuning={
                "multipart_threshold_mib": 5,
                "part_size_mib": 5,
                "read_timeout_s": 1.5,
                "connect_timeout_s": 2,
                "max_attempts": 3,
                "workers": 16,
                # 1,500 of 2,000 files are rewritten on purpose: not the ransomware the guard stops.
                "max_change_percent": 100,
            },
        )
        # The bucket is set up before the faults start: bucket setup is all-or-nothing per target.
        (root / "d00/page-00000.tif").touch()
        assert run_cli("--cache", str(cache), "--only", str(root), "--no-cache-backup").returncode == 0
        for path in list(tree_files(root))[:1500]:
            os.utime(path, ns=(1, 1))  # changed mtime: 1,500 of the files are uploaded again below
        proxy.set_faults(*faults())
        first = run_cli("--cache", str(cache), "--no-cache-backup", timeout_s=600)
        assert first.returncode in (0, 1), first.stderr
        assert "Traceback" not in first.stderr
        assert proxy.count(faulted=True) > 50, "the faults must actually have fired"
        check_nothing_misrecorded(s3_inspect, bucket, root, cache, set())

        # Deletes and changes under faults, including per-key DeleteObjects errors.
        rng = random.Random(3)
        files = sorted(tree_files(root))
        gone = set(rng.sample(files, 300))
        for path in gone:
            os.unlink(path)
        for path in rng.sample(sorted(set(files) - gone), 100):
            with open(path, "ab") as f:
                f.write(b"more")
        second = run_cli("--cache", str(cache), "--no-cache-backup", timeout_s=600)
        assert second.returncode in (0, 1), second.stderr
        check_nothing_misrecorded(s3_inspect, bucket, root, cache, gone)

        proxy.clear()
        clean = run_cli("--cache", str(cache), "--no-cache-backup", timeout_s=600)
        assert clean.returncode == 0, clean.stderr
    # A stalled CreateMultipartUpload reply leaves an upload nobody recorded: see assert_whole.
    assert_whole(s3_inspect, bucket, root, cache, unrecorded_creates=True)
    assert uploads_holding_parts(s3_inspect, bucket) == []
