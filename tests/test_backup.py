"""End-to-end backups through the real CLI against moto's S3 server over HTTP.

Every check reads S3 back with a separate boto3 client: keys, storage class, versions, delete
markers, bucket settings and metadata.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import ACCESS_KEY, SECRET_KEY, all_keys, four_target_site, key_of, make_tree, run_cli, write_config

from async_backup.recovery.snapshots import cache_bucket_name
from async_backup.settings.config import load_config
from async_backup.settings.naming import stable_bucket_name


def read_archived(client: Any, bucket: str, key: str) -> bytes:
    """Deep Archive objects are unreadable until restored; moto completes a restore at once."""
    client.restore_object(Bucket=bucket, Key=key, RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}})
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def versions(client: Any, bucket: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    reply = client.list_object_versions(Bucket=bucket)
    return reply.get("Versions", []), reply.get("DeleteMarkers", [])


@pytest.fixture
def site(tmp_path: Path, moto_endpoint: str, bucket_prefix: str) -> dict[str, Any]:
    """conftest's four targets, backed up straight to moto."""
    return four_target_site(tmp_path, moto_endpoint, bucket_prefix)


def backup(cache: Path, *extra: str) -> Any:
    return run_cli("--cache", str(cache), *extra)


def test_first_run_puts_every_file_in_its_own_versioned_deep_archive_bucket(site: dict[str, Any], s3_inspect: Any):
    result = backup(site["cache"])
    assert result.returncode == 0, result.stderr
    data, buckets = site["data"], site["buckets"]
    expected = {
        "scans": ["scans/1901/page-001.tif", "scans/1901/page-002.tif", "scans/1902/page-001.tif"],
        "letters": ["letters/deep/er/y.jpg", "letters/x.jpg"],
        "registers/parish-a": ["registers/parish-a/r1.tif", "registers/parish-a/r2.tif"],
        "registers/parish-b": ["registers/parish-b/s1.tif"],
    }
    for target, rels in expected.items():
        bucket = buckets[target]
        assert all_keys(s3_inspect, bucket) == sorted(key_of(data / r) for r in rels)
        for rel in rels:
            key = key_of(data / rel)
            assert not key.startswith("/") and key == str(data / rel)[1:]
            head = s3_inspect.head_object(Bucket=bucket, Key=key)
            assert head["StorageClass"] == "DEEP_ARCHIVE"
            assert head["ContentLength"] == (data / rel).stat().st_size
            seconds, _, nanos = head["Metadata"]["mtime"].partition(".")
            assert int(seconds) * 10**9 + int(nanos) == (data / rel).stat().st_mtime_ns
        assert s3_inspect.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        rules = {r["ID"]: r for r in s3_inspect.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
        assert rules["async-backup-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 180
        assert rules["async-backup-incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
        assert rules["async-backup-expired-delete-markers"]["Expiration"]["ExpiredObjectDeleteMarker"] is True
        block = s3_inspect.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        # A custom endpoint (moto here) gets all but BlockPublicAcls, which breaks PutObject on Ceph.
        assert block == {
            "BlockPublicAcls": False,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        }
    assert "4 targets" in result.stderr and "8 files uploaded" in result.stderr


def test_second_run_without_changes_uploads_and_deletes_nothing(site: dict[str, Any], s3_inspect: Any):
    assert backup(site["cache"]).returncode == 0
    before = {b: versions(s3_inspect, b) for b in site["buckets"].values()}
    result = backup(site["cache"])
    assert result.returncode == 0, result.stderr
    assert "0 files uploaded" in result.stderr and "0 deleted" in result.stderr
    # Every PutObject adds a version and every delete a marker: unchanged listings prove no requests.
    assert {b: versions(s3_inspect, b) for b in site["buckets"].values()} == before


def test_incremental_run_uploads_changes_and_deletes_vanished_files(site: dict[str, Any], s3_inspect: Any):
    data, bucket = site["data"], site["buckets"]["scans"]
    assert backup(site["cache"]).returncode == 0
    changed = data / "scans/1901/page-001.tif"
    changed.write_bytes(b"changed content")
    (data / "scans/1902/page-001.tif").unlink()
    make_tree(data, {"scans/1903/page-001.tif": b"new"})
    result = backup(site["cache"])
    assert result.returncode == 0, result.stderr
    assert all_keys(s3_inspect, bucket) == sorted(
        key_of(data / r) for r in ["scans/1901/page-001.tif", "scans/1901/page-002.tif", "scans/1903/page-001.tif"]
    )
    assert read_archived(s3_inspect, bucket, key_of(changed)) == b"changed content"
    vers, markers = versions(s3_inspect, bucket)
    assert len([v for v in vers if v["Key"] == key_of(changed)]) == 2  # the old content stays as a version
    assert [m["Key"] for m in markers] == [key_of(data / "scans/1902/page-001.tif")]
    assert "1 new, 1 updated, 1 deleted" in result.stderr


def test_dry_run_touches_neither_s3_nor_the_cache(site: dict[str, Any], s3_inspect: Any):
    data, cache = site["data"], site["cache"]
    result = backup(cache, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would upload 3 files" in result.stdout
    names = {b["Name"] for b in s3_inspect.list_buckets()["Buckets"]}
    assert not set(site["buckets"].values()) & names, "a dry run must not create buckets"
    assert not (cache / "async-backup.db").exists()

    assert backup(cache).returncode == 0
    (data / "letters/x.jpg").write_bytes(b"different size now")
    (data / "scans/1901/page-002.tif").unlink()
    db_before = _cache_rows(cache)
    s3_before = {b: versions(s3_inspect, b) for b in site["buckets"].values()}
    result = backup(cache, "--dry-run")
    assert result.returncode == 0
    assert "would upload 1 file " in result.stdout and "delete 1" in result.stdout
    assert _cache_rows(cache) == db_before
    assert {b: versions(s3_inspect, b) for b in site["buckets"].values()} == s3_before


def test_upload_everything_again_uploads_everything_again(site: dict[str, Any], s3_inspect: Any):
    assert backup(site["cache"]).returncode == 0
    result = backup(site["cache"], "--upload-everything-again")
    assert result.returncode == 0
    assert "8 files uploaded" in result.stderr
    vers, _ = versions(s3_inspect, site["buckets"]["scans"])
    assert len(vers) == 6  # three files, two versions each


def test_multipart_upload_of_a_large_file(tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any):
    data = tmp_path / "big"
    payload = os.urandom(12 * 1024 * 1024 + 12345)  # three parts of 5 MiB
    make_tree(data, {"volume.tif": payload, "small.txt": b"s"})
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(data)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 2},
    )
    result = backup(cache)
    assert result.returncode == 0, result.stderr
    bucket = stable_bucket_name(bucket_prefix, str(data))
    key = key_of(data / "volume.tif")
    assert s3_inspect.head_object(Bucket=bucket, Key=key)["StorageClass"] == "DEEP_ARCHIVE"
    assert read_archived(s3_inspect, bucket, key) == payload
    assert s3_inspect.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-3")  # three parts
    assert s3_inspect.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    row = _cache_rows(cache)
    checksum = next(c for (_b, p, _s, _m, c) in row if p.endswith(b"volume.tif"))
    # The whole file's CRC32, which S3 stores as a FULL_OBJECT checksum of the three parts.
    assert checksum == "crc32:" + base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()


def test_deletion_guard_holds_back_deletes_of_an_emptied_folder(site: dict[str, Any], s3_inspect: Any):
    data, cache = site["data"], site["cache"]
    assert backup(cache).returncode == 0
    for f in (data / "scans").rglob("*.tif"):
        f.unlink()
    result = backup(cache)
    assert result.returncode == 1
    assert "deletion guard" in result.stderr and "--allow-mass-delete" in result.stderr
    assert len(all_keys(s3_inspect, site["buckets"]["scans"])) == 3
    _, markers = versions(s3_inspect, site["buckets"]["scans"])
    assert markers == []
    result = backup(cache, "--allow-mass-delete")
    assert result.returncode == 0, result.stderr
    assert all_keys(s3_inspect, site["buckets"]["scans"]) == []


def test_deletion_guard_holds_back_deleting_more_than_half(site: dict[str, Any], s3_inspect: Any):
    data, cache = site["data"], site["cache"]
    assert backup(cache).returncode == 0
    (data / "scans/1901/page-001.tif").unlink()
    (data / "scans/1901/page-002.tif").unlink()  # 2 of 3: 67 %
    result = backup(cache)
    assert result.returncode == 1
    assert "2 of 3 files (67%)" in result.stderr
    assert len(all_keys(s3_inspect, site["buckets"]["scans"])) == 3


def test_a_missing_known_folder_fails_alone_and_deletes_nothing(site: dict[str, Any], s3_inspect: Any):
    data, cache = site["data"], site["cache"]
    assert backup(cache).returncode == 0
    (data / "letters").rename(data / "letters-unmounted")
    make_tree(data, {"scans/new.tif": b"n"})
    result = backup(cache)
    assert result.returncode == 1
    assert "target missing" in result.stderr and str(data / "letters") in result.stderr
    assert len(all_keys(s3_inspect, site["buckets"]["letters"])) == 2  # nothing deleted
    assert key_of(data / "scans/new.tif") in all_keys(s3_inspect, site["buckets"]["scans"])  # others go on


def test_a_missing_new_folder_or_root_fails_alone_and_the_others_run(
    site: dict[str, Any], s3_inspect: Any, tmp_path: Path
):
    """A line just added to config.json that names nothing on disk (a typo, a share not mounted yet)
    fails that target alone: the others are backed up, the report, metrics and card are written."""
    data, cache = site["data"], site["cache"]
    config = json.loads((cache / "config.json").read_text())
    config["backup"]["folders"].append(str(data / "typo"))
    config["backup"]["roots"].append(str(data / "share-not-mounted"))
    (cache / "config.json").write_text(json.dumps(config))
    metrics = tmp_path / "metrics.prom"
    result = backup(cache, "--metrics-file", str(metrics), "--print-card")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if "target missing" in line]
    assert len(failed) == 2, result.stderr
    assert any(f"backup.folders[2] {data / 'typo'}" in line and "never backed up" in line for line in failed)
    assert any(f"backup.roots[1] {data / 'share-not-mounted'}" in line for line in failed)
    assert all("config.json" in line and "mount the share" in line for line in failed)
    for name in ("scans", "letters", "registers/parish-a", "registers/parish-b"):  # every other target ran
        assert all_keys(s3_inspect, site["buckets"][name]), name
    report = json.loads(max((cache / "reports").glob("*.json")).read_text())
    assert sorted(f["kind"] for f in report["failures"]) == ["target missing", "target missing"]
    assert report["exit_code"] == 1
    assert "async_backup_exit_code 1" in metrics.read_text()
    assert "target missing" in result.stdout  # the card
    # Once the share is mounted, the next run backs it up like any target.
    make_tree(data, {"share-not-mounted/vol1/a.tif": b"a", "typo/b.tif": b"b"})
    assert backup(cache).returncode == 0


def test_a_config_that_cannot_be_read_is_still_exit_2(tmp_path: Path, moto_endpoint: str):
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(tmp_path / "nope")])
    (cache / "config.json").write_text('{"backup": {"folders": "/srv/not-a-list"}}')
    result = backup(cache)
    assert result.returncode == 2
    assert "backup.folders must be a list" in result.stderr and "Traceback" not in result.stderr


def test_a_second_run_on_a_locked_cache_exits_3_naming_the_holder(site: dict[str, Any]):
    lock_path = site["cache"] / "async-backup.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"424242\n")
        result = backup(site["cache"])
        assert result.returncode == 3
        assert "424242" in result.stderr
    finally:
        os.close(fd)


def test_symlinks_and_special_files_are_skipped(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    data = tmp_path / "tree"
    make_tree(data, {"real.tif": b"r"})
    (data / "link.tif").symlink_to(data / "real.tif")
    os.mkfifo(data / "pipe")
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(data)], bucket_prefix=bucket_prefix)
    result = backup(cache)
    assert result.returncode == 0, result.stderr
    assert all_keys(s3_inspect, stable_bucket_name(bucket_prefix, str(data))) == [key_of(data / "real.tif")]
    assert "2 skipped" in result.stderr


def test_excluded_files_are_neither_uploaded_nor_deleted(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    data = tmp_path / "tree"
    make_tree(data, {"keep.tif": b"k", "Thumbs.db": b"t", "tmp/scratch.tif": b"s"})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(data)], bucket_prefix=bucket_prefix)
    assert backup(cache).returncode == 0
    bucket = stable_bucket_name(bucket_prefix, str(data))
    assert len(all_keys(s3_inspect, bucket)) == 3
    write_config(
        cache,
        moto_endpoint,
        folders=[str(data)],
        bucket_prefix=bucket_prefix,
        backup_extra={"exclude": ["Thumbs.db", "tmp/*"]},
    )
    make_tree(data, {"tmp/other.tif": b"o", "sub/Thumbs.db": b"t"})
    result = backup(cache)
    assert result.returncode == 0, result.stderr
    assert all_keys(s3_inspect, bucket) == sorted(
        key_of(data / r) for r in ("keep.tif", "Thumbs.db", "tmp/scratch.tif")
    )


def test_cache_snapshot_goes_to_its_own_unversioned_bucket(site: dict[str, Any], s3_inspect: Any):
    import gzip

    result = backup(site["cache"])
    assert result.returncode == 0
    line = next(ln for ln in result.stderr.splitlines() if "cache snapshot" in ln)
    bucket, key = line.rsplit("s3://", 1)[1].strip().split("/", 1)
    assert bucket == cache_bucket_name(load_config(site["cache"]))
    installation, name = key.split("/")  # one key per installation sharing the bucket
    assert name == "async-backup.db.gz"
    assert s3_inspect.get_bucket_versioning(Bucket=bucket).get("Status") in (None, "")
    blob = gzip.decompress(s3_inspect.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert blob.startswith(b"SQLite format 3")
    log = s3_inspect.get_object(Bucket=bucket, Key=f"{installation}/backup.log")["Body"].read().decode()
    assert "8 files uploaded" in log or "backing up" in log
    assert "config.json" not in all_keys(s3_inspect, bucket)


def test_secrets_never_reach_the_log(site: dict[str, Any]):
    config_path = site["cache"] / "config.json"
    doc = json.loads(config_path.read_text())
    doc["notification"] = {"webhook": "https://prod.example.invalid/workflows/x?sig=PLANTEDSIG123"}
    config_path.write_text(json.dumps(doc))
    result = backup(site["cache"], "-v")
    text = result.stderr + (site["cache"] / "backup.log").read_text()
    assert SECRET_KEY not in text and "PLANTEDSIG123" not in text
    assert ACCESS_KEY  # the access key id is not a secret, but the secret key is


def _cache_rows(cache: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        return sorted(conn.execute("SELECT bucket, path, size, mtime_ns, checksum FROM files"))
    finally:
        conn.close()
