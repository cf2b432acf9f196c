"""What the tool sends to S3, request by request: real CLI runs through the recording proxy.

The proxy (`s3proxy.ProxyServer`) names every request's S3 operation, bucket and key, so these tests
pin the request mix of a first run, a run without changes, an incremental run, a multipart upload
(and its clean-up when parts fail) and a dry run. What S3 and the cache hold afterwards is read back
with a separate boto3 client and sqlite3.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from conftest import all_keys, four_target_site, key_of, make_tree, run_cli, write_config
from s3proxy import ProxyServer, Record, internal_error

from async_backup.recovery.snapshots import cache_bucket_name
from async_backup.settings.config import load_config
from async_backup.settings.naming import stable_bucket_name

# Bucket-level reads: the bucket's settings. Never a write, never a request for an object, and no
# ListMultipartUploads: only uploads the cache recorded are aborted (another installation's would be listed).
BUCKET_CHECKS = frozenset({"HeadBucket", "GetBucketVersioning", "GetBucketLifecycleConfiguration"})
# Setting up a new versioned bucket; each must happen once per bucket per run, not per file.
BUCKET_SETUP = ("CreateBucket", "PutPublicAccessBlock", "PutBucketVersioning", "PutBucketLifecycleConfiguration")
WRITES = frozenset(
    {
        "PutObject",
        "CopyObject",
        "UploadPart",
        "CreateMultipartUpload",
        "CompleteMultipartUpload",
        "DeleteObject",
        "DeleteObjects",
    }
)
MiB = 1024 * 1024


def listing(records: list[Record]) -> str:
    """The requests as one line each, for assertion messages."""
    return "\n".join(f"  {r.op} {r.bucket}/{r.key or ''} -> {r.status}" for r in records)


def by_bucket(records: list[Record]) -> dict[str | None, Counter[str]]:
    out: dict[str | None, Counter[str]] = {}
    for r in records:
        out.setdefault(r.bucket, Counter())[r.op] += 1
    return out


@pytest.fixture
def site(tmp_path: Path, proxy: ProxyServer, bucket_prefix: str) -> dict[str, Any]:
    """conftest's four targets, backed up through the proxy; plus the bucket of the cache's copy."""
    site = four_target_site(tmp_path, proxy.url, bucket_prefix)
    return {**site, "cache_bucket": cache_bucket_name(load_config(site["cache"]))}


def backup(cache: Path, *extra: str) -> Any:
    return run_cli("--cache", str(cache), *extra)


@pytest.mark.slow
def test_first_run_sends_one_put_per_file_and_sets_each_bucket_up_once(
    site: dict[str, Any], proxy: ProxyServer, s3_inspect: Any
) -> None:
    result = backup(site["cache"])
    assert result.returncode == 0, result.stderr
    records = proxy.wait_done()
    data, buckets = site["data"], site["buckets"]
    shown = listing(records)

    puts: dict[str, list[str]] = {}
    for r in records:
        if r.op == "PutObject" and r.bucket in buckets.values():
            assert r.bucket is not None and r.key is not None
            puts.setdefault(r.bucket, []).append(r.key)
    for name, bucket in buckets.items():
        expected = sorted(key_of(data / rel) for rel in site["files"] if rel.startswith(name + "/"))
        assert sorted(puts.get(bucket, [])) == expected, f"{name}:\n{shown}"
        assert all_keys(s3_inspect, bucket) == expected

    ops = by_bucket(records)
    probed = next(r.bucket for r in records if r.op == "GetBucketVersioning")  # the endpoint probe
    for bucket in buckets.values():
        for op in BUCKET_SETUP:
            assert ops[bucket][op] == 1, f"{op} on {bucket}:\n{shown}"
        # One versioning check per bucket decides on setup; the endpoint probe's is the first one's.
        assert ops[bucket]["GetBucketVersioning"] == 1, shown
        # The cache holds no rows: one listing per bucket looks for objects to rebuild rows from
        # (404 here), except in the bucket the probe already found missing.
        assert ops[bucket]["ListObjectsV2"] == (0 if bucket == probed else 1), shown
        unexpected = set(ops[bucket]) - {"PutObject", "GetBucketVersioning", "ListObjectsV2", *BUCKET_SETUP}
        assert not unexpected, f"{bucket}: {unexpected}\n{shown}"
    assert sum(ops[b]["GetBucketVersioning"] for b in buckets.values()) == len(buckets), shown
    assert sum(1 for r in records if r.op == "PutObject" and r.bucket in buckets.values()) == len(site["files"])
    assert not any(r.op in ("UploadPart", "CreateMultipartUpload", "DeleteObjects") for r in records), shown
    # A cache that knows no target yet asks once whether the old script left this directory's
    # caches in its cache bucket, and whether its bucket of each target holds the target's files
    # (a forgotten "naming": "legacy" on a new machine): one listing each.
    assert ops["image-backup-cache"] == Counter({"ListObjectsV2": 1}), shown
    old = {b for b in ops if b and b.startswith("images--")}
    assert all(ops[b] == Counter({"ListObjectsV2": 1}) for b in old) and len(old) <= len(buckets), shown
    assert set(ops) <= {*buckets.values(), site["cache_bucket"], "image-backup-cache", *old}, shown


@pytest.mark.slow
def test_second_run_without_changes_writes_nothing_to_any_target_bucket(
    site: dict[str, Any], proxy: ProxyServer
) -> None:
    assert backup(site["cache"]).returncode == 0
    proxy.clear()
    result = backup(site["cache"])
    assert result.returncode == 0, result.stderr
    records = proxy.wait_done()
    shown = listing(records)
    print(f"a run without changes sent {len(records)} requests:\n{shown}")

    targets = set(site["buckets"].values())
    assert {r.bucket for r in records} <= targets | {site["cache_bucket"]}, shown
    for r in records:
        if r.bucket in targets:
            assert r.op in BUCKET_CHECKS and r.key is None, f"{r.op} {r.bucket}/{r.key}:\n{shown}"
        else:
            raise AssertionError(f"the cache did not change, so no snapshot is due:\n{shown}")
    assert len(records) == 1, shown  # the endpoint check, one GetBucketVersioning
    target_writes = [r for r in records if r.op in WRITES and r.bucket in targets]
    assert target_writes == [], shown
    assert not any(r.op in ("UploadPart", "CreateMultipartUpload", "DeleteObjects") for r in records), shown


@pytest.mark.slow
def test_incremental_run_sends_three_puts_and_one_delete_batch(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any
) -> None:
    data = tmp_path / "volume"
    make_tree(data, {f"box-{i // 5}/img-{i:03d}.tif": bytes([65 + i]) * (50 + i) for i in range(20)})
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(data)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(data))
    assert backup(cache).returncode == 0
    assert len(all_keys(s3_inspect, bucket)) == 20

    changed = [data / "box-0/img-001.tif", data / "box-2/img-012.tif"]
    for path in changed:
        path.write_bytes(b"modified, and of another size")
    gone = data / "box-3/img-017.tif"
    gone.unlink()
    added = data / "box-4/img-new.tif"
    make_tree(data, {"box-4/img-new.tif": b"new file"})
    proxy.clear()

    result = backup(cache)
    assert result.returncode == 0, result.stderr
    records = proxy.wait_done()
    shown = listing(records)
    puts = sorted(r.key or "" for r in records if r.bucket == bucket and r.op == "PutObject")
    assert puts == sorted(key_of(p) for p in [*changed, added]), shown
    assert [r.op for r in records if r.bucket == bucket].count("DeleteObjects") == 1, shown
    assert {r.op for r in records if r.bucket == bucket} <= {"PutObject", "DeleteObjects", *BUCKET_CHECKS}, shown
    assert key_of(gone) not in all_keys(s3_inspect, bucket)
    assert key_of(added) in all_keys(s3_inspect, bucket)
    assert "1 new, 2 updated, 1 deleted" in result.stderr


def test_multipart_upload_sends_parts_and_a_failed_one_is_aborted_and_not_cached(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any
) -> None:
    data = tmp_path / "big"
    make_tree(data, {"volume.tif": os.urandom(12 * MiB + 4321), "small.txt": b"s"})
    cache = tmp_path / "cache"
    write_config(
        cache,
        proxy.url,
        folders=[str(data)],
        bucket_prefix=bucket_prefix,
        # Two attempts per request keep botocore's backoff on the failing parts short.
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5, "max_attempts": 2},
    )
    bucket = stable_bucket_name(bucket_prefix, str(data))
    key = key_of(data / "volume.tif")

    # Phase 1: every UploadPart of the big file fails with 500 InternalError.
    proxy.set_faults(internal_error(ops={"UploadPart"}, keys={key}))
    result = backup(cache)
    assert result.returncode == 1, result.stderr
    records = proxy.wait_done()
    shown = listing(records)
    mine = [r for r in records if r.key == key]
    assert [r.op for r in mine if r.op == "CreateMultipartUpload"] == ["CreateMultipartUpload"], shown
    assert any(r.op == "UploadPart" for r in mine), shown
    assert all(r.fault == "error" for r in mine if r.op == "UploadPart"), shown
    assert not any(r.op == "CompleteMultipartUpload" for r in mine), shown
    assert sum(1 for r in mine if r.op == "AbortMultipartUpload" and r.status == 204) == 1, shown
    assert s3_inspect.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert all_keys(s3_inspect, bucket) == [key_of(data / "small.txt")]
    assert key in result.stderr or str(data / "volume.tif") in result.stderr
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        rows = conn.execute(
            "SELECT count(*) FROM files WHERE bucket = ? AND path = ?", (bucket, os.fsencode(data / "volume.tif"))
        ).fetchone()
        open_uploads = conn.execute("SELECT count(*) FROM multipart_uploads").fetchone()
        small = conn.execute("SELECT count(*) FROM files WHERE bucket = ?", (bucket,)).fetchone()
    finally:
        conn.close()
    assert rows == (0,), "a file whose upload failed must not be in the cache"
    assert open_uploads == (0,), "an aborted upload must not stay recorded as open"
    assert small == (1,)

    # Phase 2: no faults; the rerun uploads it in three parts and nothing else.
    proxy.clear()
    result = backup(cache)
    assert result.returncode == 0, result.stderr
    records = proxy.wait_done()
    shown = listing(records)
    ops = Counter(r.op for r in records if r.key == key)
    assert ops == Counter({"CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1}), shown
    parts = sorted(parse_qs(r.query)["partNumber"][0] for r in records if r.op == "UploadPart")
    assert parts == ["1", "2", "3"], shown
    assert not any(r.op in ("PutObject", "AbortMultipartUpload") and r.bucket == bucket for r in records), shown
    assert sorted(all_keys(s3_inspect, bucket)) == sorted([key, key_of(data / "small.txt")])
    assert s3_inspect.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-3")
    assert s3_inspect.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_dry_run_after_changes_sends_no_request_at_all(site: dict[str, Any], proxy: ProxyServer) -> None:
    data, cache = site["data"], site["cache"]
    assert backup(cache).returncode == 0
    (data / "letters/x.jpg").write_bytes(b"different size now")
    (data / "scans/1901/page-002.tif").unlink()
    make_tree(data, {"registers/parish-b/s2.tif": b"new"})
    proxy.clear()
    result = backup(cache, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would upload 1 file " in result.stdout and "delete 1" in result.stdout
    records = proxy.wait_done()
    assert records == [], listing(records)
