"""A lost or damaged cache is rebuilt from S3, not uploaded again (issue 9).

Real CLI runs against moto over HTTP with real files; what S3 holds is read back with boto3 (the
number of versions per key tells whether anything was uploaded twice), what the run reports is
read from its JSON report, and the requests are counted by the recording proxy.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import delete_cache_db, key_of, last_report, make_tree, run_cli, write_config
from s3proxy import ProxyServer

from async_backup.cache.store import STATE_NAME
from async_backup.recovery.snapshots import cache_bucket_name
from async_backup.settings.config import load_config
from async_backup.settings.naming import stable_bucket_name

FILES = {f"box-{i // 4}/img-{i:02d}.tif": bytes([65 + i]) * (100 + i) for i in range(12)}


@pytest.fixture
def site(tmp_path: Path, moto_endpoint: str, bucket_prefix: str) -> dict[str, Any]:
    """One target of twelve files (FILES), nothing backed up yet."""
    data = tmp_path / "data" / "scans"
    make_tree(data, FILES)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(data)], bucket_prefix=bucket_prefix)
    return {"data": data, "cache": cache, "bucket": stable_bucket_name(bucket_prefix, str(data))}


def backup(cache: Path, *extra: str) -> Any:
    return run_cli("--cache", str(cache), *extra)


def version_count(client: Any, bucket: str) -> int:
    return len(client.list_object_versions(Bucket=bucket).get("Versions", []))


def cached_paths(cache: Path, bucket: str) -> set[bytes]:
    conn = sqlite3.connect(cache / STATE_NAME)
    try:
        return {bytes(p) for (p,) in conn.execute("SELECT path FROM files WHERE bucket=?", (bucket,))}
    finally:
        conn.close()


@pytest.mark.slow
def test_deleted_cache_is_rebuilt_from_the_snapshot_and_nothing_is_uploaded(site: dict[str, Any], s3_inspect: Any):
    cache, bucket = site["cache"], site["bucket"]
    assert backup(cache).returncode == 0
    before = version_count(s3_inspect, bucket)
    delete_cache_db(cache)

    result = backup(cache)
    assert result.returncode == 0, result.stderr
    assert version_count(s3_inspect, bucket) == before == len(FILES)
    assert "0 files uploaded" in result.stderr
    snapshots = cache_bucket_name(load_config(cache))
    assert f"{len(FILES)} cache rows rebuilt from snapshot s3://{snapshots}/" in result.stderr
    target = last_report(cache)["targets"][0]
    assert target["rebuilt_rows"] == len(FILES)
    assert target["rebuilt_from"].startswith("snapshot s3://")
    assert target["new"] == target["updated"] == 0 and target["unchanged"] == len(FILES)
    assert len(cached_paths(cache, bucket)) == len(FILES)

    again = backup(cache)  # the rebuilt cache is the cache: no second rebuild
    assert again.returncode == 0 and "cache rows rebuilt" not in again.stderr, again.stderr


@pytest.mark.slow
def test_without_a_snapshot_the_listing_and_head_prove_rows_and_changed_files_are_uploaded(
    site: dict[str, Any], s3_inspect: Any
):
    cache, bucket, data = site["cache"], site["bucket"], site["data"]
    assert backup(cache, "--no-cache-backup").returncode == 0
    delete_cache_db(cache)
    touched = data / "box-0/img-01.tif"  # same size, another mtime: HEAD sent, mtime disproves it
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    rewritten = data / "box-1/img-05.tif"  # another size: no HEAD, uploaded
    rewritten.write_bytes(b"changed and shorter")

    result = backup(cache)
    assert result.returncode == 0, result.stderr
    target = last_report(cache)["targets"][0]
    assert target["rebuilt_rows"] == len(FILES) - 2
    assert target["rebuilt_from"] == f"bucket listing (1 ListObjectsV2) + {len(FILES) - 1} HeadObject"
    assert target["updated"] == 0 and target["new"] == 2  # no rows for them: uploaded as new files
    vers = s3_inspect.list_object_versions(Bucket=bucket)["Versions"]
    twice = sorted(v["Key"] for v in vers if not v["IsLatest"])
    assert twice == sorted([key_of(touched), key_of(rewritten)])
    assert len(vers) == len(FILES) + 2


@pytest.mark.slow
def test_a_new_machine_with_only_config_json_finds_the_snapshot(site: dict[str, Any], tmp_path: Path, s3_inspect: Any):
    cache, bucket = site["cache"], site["bucket"]
    assert backup(cache).returncode == 0
    other = tmp_path / "elsewhere" / "new-cache"
    other.mkdir(parents=True)
    shutil.copy(cache / "config.json", other / "config.json")

    result = backup(other)
    assert result.returncode == 0, result.stderr
    assert version_count(s3_inspect, bucket) == len(FILES)
    target = last_report(other)["targets"][0]
    assert target["rebuilt_rows"] == len(FILES)
    assert target["rebuilt_from"].startswith(f"snapshot s3://{cache_bucket_name(load_config(other))}/")
    # Each installation writes its own snapshot key: both are in the bucket now.
    keys = [o["Key"] for o in s3_inspect.list_objects_v2(Bucket=cache_bucket_name(load_config(other)))["Contents"]]
    assert sum(k.endswith("async-backup.db.gz") for k in keys) == 2


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 400)


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


def _bad_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    assert len(data) >= 3 * page
    data[page : 3 * page] = os.urandom(2 * page)  # the pages after the header page
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_garbage, _truncated, _bad_page], ids=["garbage", "truncated", "bad-page"])
def test_a_damaged_cache_is_moved_aside_in_one_line_and_rebuilt(site: dict[str, Any], s3_inspect: Any, damage: Any):
    cache, bucket = site["cache"], site["bucket"]
    assert backup(cache).returncode == 0
    db = cache / STATE_NAME
    assert not (cache / (STATE_NAME + "-wal")).exists() or (cache / (STATE_NAME + "-wal")).stat().st_size == 0
    damage(db)
    damaged_bytes = db.read_bytes()

    dry = backup(cache, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert db.read_bytes() == damaged_bytes and not list(cache.glob("*.damaged-*"))
    assert "a real backup run moves it aside and rebuilds it from S3" in dry.stderr
    assert "a real run first rebuilds them from S3" in dry.stdout

    result = backup(cache)
    assert result.returncode == 0, result.stderr
    moved = [p for p in cache.glob(STATE_NAME + ".damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1 and moved[0].read_bytes() == damaged_bytes
    lines = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(lines) == 1, result.stderr
    assert str(db) in lines[0] and str(moved[0]) in lines[0] and "rebuilds its rows from S3" in lines[0]
    assert version_count(s3_inspect, bucket) == len(FILES)
    assert last_report(cache)["targets"][0]["rebuilt_rows"] == len(FILES)


@pytest.mark.slow
def test_reset_rebuilds_and_upload_everything_again_uploads_everything(site: dict[str, Any], s3_inspect: Any):
    cache, bucket = site["cache"], site["bucket"]
    assert backup(cache).returncode == 0

    reset = backup(cache, "--reset")
    assert reset.returncode == 0, reset.stderr
    assert "0 files uploaded" in reset.stderr
    assert last_report(cache)["targets"][0]["rebuilt_rows"] == len(FILES)
    assert version_count(s3_inspect, bucket) == len(FILES)

    dry = backup(cache, "--dry-run", "--upload-everything-again")
    assert f"would upload {len(FILES)} files" in dry.stdout and "a real run first rebuilds" not in dry.stdout

    again = backup(cache, "--upload-everything-again")
    assert again.returncode == 0, again.stderr
    assert f"{len(FILES)} files uploaded" in again.stderr
    assert last_report(cache)["targets"][0]["rebuilt_rows"] == 0
    assert version_count(s3_inspect, bucket) == 2 * len(FILES)


@pytest.mark.slow
def test_a_rebuild_from_the_bucket_sends_one_list_per_1000_and_a_head_only_per_size_match(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any
):
    data = tmp_path / "many"
    make_tree(data, {f"d{i // 100}/f{i:04d}": b"x" * (i % 7) for i in range(1050)})
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(data)], bucket_prefix=bucket_prefix, tuning={"workers": 32})
    bucket = stable_bucket_name(bucket_prefix, str(data))
    assert backup(cache, "--no-cache-backup").returncode == 0
    delete_cache_db(cache)
    (data / "d0/f0001").unlink()  # gone: no HEAD
    (data / "d0/f0002").write_bytes(b"another size entirely")  # size differs: no HEAD
    size_matches = 1050 - 2
    proxy.clear()

    result = backup(cache, "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    records = proxy.wait_done()
    ops = [r.op for r in records if r.bucket == bucket]
    assert ops.count("ListObjectsV2") == 2  # 1,050 objects: two pages
    assert ops.count("HeadObject") == size_matches
    heads = {r.key for r in records if r.op == "HeadObject"}
    assert key_of(data / "d0/f0001") not in heads and key_of(data / "d0/f0002") not in heads
    assert [r.key for r in records if r.op == "PutObject"] == [key_of(data / "d0/f0002")]
    target = last_report(cache)["targets"][0]
    assert target["rebuilt_rows"] == size_matches + 1 and target["rebuilt_gone"] == 1  # f0001: deleted
    assert target["deleted"] == 1 and ops.count("DeleteObjects") == 1


@pytest.mark.slow
def test_objects_uploaded_after_the_snapshot_are_proven_by_head(site: dict[str, Any], s3_inspect: Any):
    cache, bucket, data = site["cache"], site["bucket"], site["data"]
    assert backup(cache).returncode == 0  # the snapshot knows the first twelve files
    make_tree(data, {"box-9/late-1.tif": b"late one", "box-9/late-2.tif": b"late two"})
    assert backup(cache, "--no-cache-backup").returncode == 0  # these two never reach a snapshot
    delete_cache_db(cache)

    result = backup(cache)
    assert result.returncode == 0, result.stderr
    target = last_report(cache)["targets"][0]
    assert target["rebuilt_rows"] == len(FILES) + 2
    assert target["rebuilt_from"].startswith("snapshot s3://")
    assert target["rebuilt_from"].endswith(" + 2 HeadObject for objects the snapshot does not hold")
    assert target["new"] == target["updated"] == 0
    assert version_count(s3_inspect, bucket) == len(FILES) + 2


@pytest.mark.slow
def test_a_snapshot_in_the_old_host_derived_bucket_is_still_read(site: dict[str, Any], s3_inspect: Any):
    import gzip

    from async_backup.recovery.snapshots import host_cache_bucket_name

    cache, bucket = site["cache"], site["bucket"]
    assert backup(cache, "--no-cache-backup").returncode == 0
    old_bucket = host_cache_bucket_name(load_config(cache))
    s3_inspect.create_bucket(Bucket=old_bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    conn = sqlite3.connect(cache / STATE_NAME)
    copy = sqlite3.connect(cache / "copy.db")
    conn.backup(copy)
    copy.close()
    conn.close()
    body = gzip.compress((cache / "copy.db").read_bytes())
    s3_inspect.put_object(Bucket=old_bucket, Key="async-backup.db.gz", Body=body)  # where older versions wrote it
    delete_cache_db(cache)

    result = backup(cache)
    assert result.returncode == 0, result.stderr
    target = last_report(cache)["targets"][0]
    assert target["rebuilt_rows"] == len(FILES)
    assert target["rebuilt_from"].startswith(f"snapshot s3://{old_bucket}/async-backup.db.gz of ")
    assert version_count(s3_inspect, bucket) == len(FILES)


@pytest.mark.slow
def test_a_failed_head_holds_the_target_back_and_the_next_run_finishes_the_rebuild(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any
):
    from s3proxy import internal_error

    data = tmp_path / "volume"
    make_tree(data, FILES)
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(data)], bucket_prefix=bucket_prefix, tuning={"max_attempts": 1})
    bucket = stable_bucket_name(bucket_prefix, str(data))
    assert backup(cache, "--no-cache-backup").returncode == 0
    delete_cache_db(cache)
    failing = key_of(data / "box-1/img-06.tif")
    proxy.clear()
    proxy.set_faults(internal_error(ops={"HeadObject"}, keys={failing}))

    held = backup(cache, "--no-cache-backup")
    assert held.returncode == 1, held.stderr
    assert "cache rebuild" in held.stderr and "the next run tries again" in held.stderr
    assert version_count(s3_inspect, bucket) == len(FILES)  # nothing uploaded from a half-rebuilt cache
    assert not [r for r in proxy.wait_done() if r.op in ("PutObject", "DeleteObjects") and r.bucket == bucket]

    proxy.clear()
    again = backup(cache, "--no-cache-backup")
    assert again.returncode == 0, again.stderr
    assert last_report(cache)["targets"][0]["rebuilt_rows"] == len(FILES)
    assert version_count(s3_inspect, bucket) == len(FILES)


def test_the_decision_is_size_from_the_listing_and_mtime_from_the_metadata():
    from async_backup.recovery.rules import DiskStat, needs_head, proves_row

    disk = DiskStat(is_regular=True, size=10, mtime_ns=1_700_000_000_123_456_789)
    meta = {"mtime": "1700000000.123456789"}
    assert needs_head(10, disk) and proves_row(10, disk, meta)
    assert not needs_head(11, disk) and not proves_row(11, disk, meta)  # size differs: no HEAD at all
    assert not needs_head(10, None)  # the file is gone
    assert not needs_head(10, DiskStat(is_regular=False, size=10, mtime_ns=disk.mtime_ns))  # a symlink now
    assert not proves_row(10, disk, {"mtime": "1700000000.123456788"})  # a nanosecond off
    assert not proves_row(10, disk, {})  # uploaded by something else: no mtime metadata
    assert not proves_row(10, disk, {"mtime": "garbled"})


def test_report_summary_line_and_card_say_how_many_rows_were_rebuilt_and_from_what():
    import json

    from cardcheck import shown, texts

    from async_backup.report.card import card_json
    from async_backup.report.runreport import build_report
    from async_backup.report.summary import RunSummary, TargetStats

    stats = TargetStats(
        name="/srv/scans",
        bucket="b-scans",
        rebuilt_rows=1234,
        rebuilt_from="bucket listing (2 ListObjectsV2) + 1,300 HeadObject",
    )
    stats.finished_at = stats.started_at + 1
    summary = RunSummary(host="h", started_at=stats.started_at, finished_at=stats.finished_at, targets=[stats])
    report = build_report(summary)
    assert report["targets"][0]["rebuilt_rows"] == 1234 and report["totals"]["rows_rebuilt"] == 1234
    assert report["targets"][0]["rebuilt_from"] == "bucket listing (2 ListObjectsV2) + 1,300 HeadObject"
    assert stats.line().endswith("; 1,234 cache rows rebuilt from bucket listing (2 ListObjectsV2) + 1,300 HeadObject")
    lines = [shown(t) for t in texts(json.loads(card_json(summary)))]
    assert any(
        t.endswith("cache rebuilt: 1,234 rows from bucket listing (2 ListObjectsV2) + 1,300 HeadObject") for t in lines
    ), lines


@pytest.mark.slow
def test_a_file_deleted_while_the_cache_was_lost_is_deleted_from_s3(site: dict[str, Any], s3_inspect: Any):
    """The listing proves the object exists and the disk that its file does not: a row, so the run
    deletes it like any vanished file (a delete marker; the version stays restorable)."""
    cache, bucket, data = site["cache"], site["bucket"], site["data"]
    assert backup(cache, "--no-cache-backup").returncode == 0
    delete_cache_db(cache)
    gone = data / "box-2/img-09.tif"
    gone.unlink()
    result = backup(cache)
    assert result.returncode == 0, result.stderr
    assert "1 of them for files gone from disk" in result.stderr
    target = last_report(cache)["targets"][0]
    assert target["rebuilt_gone"] == 1 and target["deleted"] == 1 and target["new"] == 0
    markers = s3_inspect.list_object_versions(Bucket=bucket).get("DeleteMarkers", [])
    assert [m["Key"] for m in markers] == [key_of(gone)]
