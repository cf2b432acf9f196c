"""backup.object_lock: targets' buckets keep every version its retention's days, the tool's own
runs keep working in them, and the cache bucket is never locked.

Against moto over HTTP through the recording proxy: moto implements Object Lock, refuses a PutObject
without Content-MD5 or an SDK checksum header in a locked bucket (as S3 does), and refuses to lock
a bucket that holds objects already (S3 allows that since 2023), which stands in for a server that
will not.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import REGION, all_keys, in_process, key_of, make_tree, write_config
from s3proxy import ProxyServer, Record

from async_backup.recovery.snapshots import cache_bucket_name
from async_backup.settings.config import load_config
from async_backup.settings.naming import stable_bucket_name

MiB = 1024 * 1024
LOCK = {"mode": "GOVERNANCE", "days": 3}
BODY_WRITES = ("PutObject", "UploadPart")


def locked_site(
    tmp_path: Path, endpoint: str, bucket_prefix: str, files: dict[str, bytes], **aws: Any
) -> tuple[Path, Path, str]:
    """A folder of `files` with backup.object_lock on; returns the folder, the cache and its bucket."""
    root = tmp_path / "data"
    make_tree(root, files)
    cache = tmp_path / "cache"
    write_config(
        cache,
        endpoint,
        folders=[str(root)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5},
        backup_extra={"object_lock": LOCK},
        aws_extra=aws,
    )
    return root, cache, stable_bucket_name(bucket_prefix, str(root))


def ops_in(records: list[Record], bucket: str) -> Counter[str]:
    return Counter(r.op for r in records if r.bucket == bucket)


def carries_lock_checksum(record: Record) -> bool:
    """What a locked bucket demands of a body: Content-MD5, or a checksum with its algorithm named."""
    names = record.header_names
    crc = any(n.startswith("x-amz-checksum-") for n in names)
    if record.op == "DeleteObjects":
        return "content-md5" in names or crc
    return "content-md5" in names or (crc and "x-amz-sdk-checksum-algorithm" in names)


def lock_of(s3: Any, bucket: str) -> tuple[str, str, int] | None:
    """Whether Object Lock is on, and the default retention's mode and days; None without Object Lock."""
    try:
        found = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ObjectLockConfigurationNotFoundError"
        return None
    retention = found.get("Rule", {}).get("DefaultRetention", {})
    return found["ObjectLockEnabled"], retention.get("Mode", ""), retention.get("Days", 0)


def versions_of(s3: Any, bucket: str, key: str) -> tuple[list[str], list[str]]:
    """The key's version ids and delete-marker ids, newest first."""
    reply = s3.list_object_versions(Bucket=bucket, Prefix=key)
    versions = [v["VersionId"] for v in reply.get("Versions", []) if v["Key"] == key]
    markers = [m["VersionId"] for m in reply.get("DeleteMarkers", []) if m["Key"] == key and m["IsLatest"]]
    return versions, markers


def make_existing_bucket(s3: Any, bucket: str, *, holding: str | None = None) -> None:
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    if holding:
        s3.put_object(Bucket=bucket, Key=holding, Body=b"there before")


@pytest.mark.parametrize("mode", ["when_supported", "when_required"])
@pytest.mark.parametrize("direct_put", [True, False], ids=["fast-path", "botocore"])
def test_a_locked_bucket_keeps_its_versions_and_the_tools_own_runs_keep_working(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any, direct_put: bool, mode: str
) -> None:
    files = {"a.tif": b"A" * 1000, "b.tif": b"B" * 1000, "c.tif": b"C" * 1000, "big.tif": b"D" * (11 * MiB)}
    root, cache, bucket = locked_site(
        tmp_path, proxy.url, bucket_prefix, files, direct_put=direct_put, checksum_calculation=mode
    )
    first = in_process("--cache", str(cache))
    assert first.returncode == 0, first.stderr[-2000:]

    assert lock_of(s3_inspect, bucket) == ("Enabled", "GOVERNANCE", 3)
    cache_bucket = cache_bucket_name(load_config(cache))
    assert all_keys(s3_inspect, cache_bucket), "the cache snapshot was uploaded"
    assert lock_of(s3_inspect, cache_bucket) is None
    records = proxy.wait_done()
    setup = ops_in(records, bucket)
    assert setup["CreateBucket"] == 1 and setup["PutObjectLockConfiguration"] == 1
    assert setup["GetObjectLockConfiguration"] == 0, "a bucket created now needs no reading"
    assert setup["UploadPart"] == 3 and setup["PutObject"] == 3
    bodies = [r for r in records if r.bucket == bucket and r.op in BODY_WRITES]
    assert all(carries_lock_checksum(r) for r in bodies), [(r.op, sorted(r.header_names)) for r in bodies]
    key_a, key_b = key_of(root / "a.tif"), key_of(root / "b.tif")
    assert s3_inspect.head_object(Bucket=bucket, Key=key_a)["ObjectLockMode"] == "GOVERNANCE"

    # The tool's own credentials cannot delete a locked version (no s3:BypassGovernanceRetention sent).
    (first_a,), _ = versions_of(s3_inspect, bucket, key_a)
    with pytest.raises(ClientError) as refused:
        s3_inspect.delete_object(Bucket=bucket, Key=key_a, VersionId=first_a)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # An update and a delete: a new version and a delete marker, the locked versions untouched.
    proxy.clear()
    (root / "a.tif").write_bytes(b"a" * 1200)
    (root / "b.tif").unlink()
    second = in_process("--cache", str(cache), "--no-cache-backup")
    assert second.returncode == 0, second.stderr[-2000:]
    versions_a, _ = versions_of(s3_inspect, bucket, key_a)
    assert len(versions_a) == 2 and versions_a[-1] == first_a
    versions_b, markers_b = versions_of(s3_inspect, bucket, key_b)
    assert len(versions_b) == 1 and len(markers_b) == 1
    records = proxy.wait_done()
    ops = ops_in(records, bucket)
    assert ops["GetObjectLockConfiguration"] == 1 and ops["PutObjectLockConfiguration"] == 0
    writes = [r for r in records if r.bucket == bucket and r.op in (*BODY_WRITES, "DeleteObjects", "DeleteObject")]
    assert {r.op for r in writes} == {"PutObject", "DeleteObjects"}
    assert all(carries_lock_checksum(r) and r.status == 200 for r in writes), [(r.op, r.status) for r in writes]


def test_an_existing_versioned_bucket_gets_object_lock_and_a_later_run_only_reads_it(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any
) -> None:
    root, cache, bucket = locked_site(tmp_path, proxy.url, bucket_prefix, {"a.tif": b"A" * 100})
    make_existing_bucket(s3_inspect, bucket)

    first = in_process("--cache", str(cache), "--no-cache-backup")
    assert first.returncode == 0, first.stderr[-2000:]
    assert lock_of(s3_inspect, bucket) == ("Enabled", "GOVERNANCE", 3)
    ops = ops_in(proxy.wait_done(), bucket)
    assert ops["GetObjectLockConfiguration"] == 1 and ops["PutObjectLockConfiguration"] == 1

    proxy.clear()
    (root / "new.tif").write_bytes(b"N" * 100)
    second = in_process("--cache", str(cache), "--no-cache-backup")
    assert second.returncode == 0, second.stderr[-2000:]
    ops = ops_in(proxy.wait_done(), bucket)
    assert ops["GetObjectLockConfiguration"] == 1 and ops["PutObjectLockConfiguration"] == 0
    assert ops["PutObject"] == 1


def test_a_bucket_the_server_will_not_lock_is_backed_up_and_one_line_says_what_to_do(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any
) -> None:
    root, cache, bucket = locked_site(tmp_path, proxy.url, bucket_prefix, {"a.tif": b"A" * 100})
    make_existing_bucket(s3_inspect, bucket, holding="elsewhere/kept.txt")  # moto locks empty buckets only

    result = in_process("--cache", str(cache), "--no-cache-backup")

    assert result.returncode == 1
    assert key_of(root / "a.tif") in all_keys(s3_inspect, bucket), "backed up without the lock"
    assert lock_of(s3_inspect, bucket) is None
    lines = [line for line in result.stderr.splitlines() if "Object Lock" in line]
    assert len(lines) == 1, result.stderr
    assert bucket in lines[0] and "backed up without it" in lines[0] and "backup.object_lock" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("GOVERNANCE", "backup.object_lock must be an object"),
        ({"mode": "governance", "days": 30}, "backup.object_lock.mode is 'governance'; use \"GOVERNANCE\""),
        ({"mode": "COMPLIANCE"}, "backup.object_lock.days is None; give a whole number of days"),
        ({"mode": "COMPLIANCE", "days": 0}, "backup.object_lock.days is 0"),
        ({"mode": "COMPLIANCE", "days": "30"}, "backup.object_lock.days is '30'"),
        ({"mode": "GOVERNANCE", "days": 30, "years": 1}, "backup.object_lock has unknown keys ['years']"),
    ],
)
def test_a_bad_object_lock_is_one_line_and_exit_2(tmp_path: Path, value: Any, expected: str) -> None:
    (tmp_path / "data").mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    doc = {"backup": {"folders": [str(tmp_path / "data")], "object_lock": value}}
    (cache / "config.json").write_text(json.dumps(doc))
    (cache / "config.json").chmod(0o600)
    result = in_process("--cache", str(cache), "--dry-run")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
