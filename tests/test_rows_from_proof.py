"""Rows only from proof (issue 20): a rebuilt cache row never says "unchanged" about bytes S3 does
not hold, and never makes S3's copy of a file be uploaded again.

Real CLI runs against moto over HTTP; the share that is not mounted is a loop-mounted ext2 image
inside the target (tests/loopfs.py, root only). What S3 holds is read back with boto3, the
requests are counted by the recording proxy, the cache rows are read from the SQLite file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import delete_cache_db, in_process, key_of, last_report, make_tree, run_cli, write_config
from loopfs import loop_mount, remount, unmount
from s3proxy import ProxyServer

from async_backup.backup.plan import PlanCounts, Proof, Upload, merge
from async_backup.cache.records import Recorded
from async_backup.cache.store import STATE_NAME
from async_backup.disk.entries import DiskFile
from async_backup.settings.naming import stable_bucket_name

UPLOADS = ("PutObject", "UploadPart", "CreateMultipartUpload")


def rows(cache: Path, bucket: str) -> dict[bytes, tuple[int | None, int]]:
    conn = sqlite3.connect(cache / STATE_NAME)
    try:
        found = conn.execute("SELECT path, size, mtime_ns FROM files WHERE bucket=?", (bucket,))
        return {bytes(p): (s, m) for p, s, m in found}
    finally:
        conn.close()


@pytest.mark.slow
def test_a_share_unmounted_while_the_cache_was_lost_comes_back_without_uploads(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
):
    """The rebuild meets the empty mount point: it writes no row for the share's objects (a
    suspected mount point). When the share is back, each file has the listed size and HeadObject
    proves it: no upload."""
    target = tmp_path / "data" / "parish"
    make_tree(target, {"index.txt": b"index of the parish scans", "cover.tif": b"c" * 300})
    share = target / "scans-2019"
    with ProxyServer(moto_endpoint) as proxy, loop_mount(share, "ext2") as mounted:
        files = {f"box-{i // 5}/page-{i:02d}.tif": bytes([65 + i]) * (1000 + i) for i in range(20)}
        make_tree(mounted, files)
        # What ext2 keeps on disk (whole seconds), as the share is after any remount.
        unmount(mounted)
        remount(mounted)
        cache = tmp_path / "cache"
        write_config(cache, proxy.url, folders=[str(target)], bucket_prefix=bucket_prefix)
        bucket = stable_bucket_name(bucket_prefix, str(target))
        first = run_cli("--cache", str(cache), "--no-cache-backup")  # no snapshot: the bucket is the only source
        assert first.returncode == 0, first.stderr
        assert "22 files uploaded" in first.stderr, first.stderr

        unmount(mounted)  # the empty mount point stays, on the target's own file system
        assert share.is_dir() and not list(share.iterdir())
        delete_cache_db(cache)
        away = run_cli("--cache", str(cache), "--no-cache-backup")
        # The empty folder S3 holds files under is taken for a share that is not mounted: no "gone"
        # row for its files, nothing deleted, and a failure names it.
        assert "mount point absent" in away.stderr and str(share) in away.stderr, away.stderr
        assert not [path for path in rows(cache, bucket) if path.startswith(os.fsencode(share))]
        assert last_report(cache)["targets"][0]["deleted"] == 0

        remount(mounted)
        proxy.clear()
        back = run_cli("--cache", str(cache), "--no-cache-backup")
        assert back.returncode == 0, back.stderr
        records = proxy.wait_done()
        assert not [r for r in records if r.op in UPLOADS], [r.key for r in records if r.op in UPLOADS]
        heads = {r.key for r in records if r.op == "HeadObject"}
        assert heads == {key_of(mounted / rel) for rel in files}
        assert "0 files uploaded" in back.stderr
        # Each row proven: the file's own size and mtime, no "gone" row left.
        cached = rows(cache, bucket)
        for rel in files:
            st = (mounted / rel).stat()
            assert cached[os.fsencode(mounted / rel)] == (st.st_size, st.st_mtime_ns)

        proxy.clear()
        again = run_cli("--cache", str(cache), "--no-cache-backup")
        assert again.returncode == 0 and "0 files uploaded" in again.stderr, again.stderr
        assert not [r for r in proxy.wait_done() if r.op in (*UPLOADS, "HeadObject")]


def test_a_file_back_at_a_gone_row_that_s3_does_not_hold_is_uploaded(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    """The proof decides both ways: a file that came back rewritten with the same size (another
    mtime) is uploaded; one that came back as it was is not."""
    data = tmp_path / "data"
    make_tree(data, {"a/same.tif": b"s" * 500, "a/other.tif": b"o" * 500})
    cache = tmp_path / "cache"
    standard = {"storage_class": "STANDARD"}  # readable back at once
    write_config(cache, moto_endpoint, folders=[str(data)], bucket_prefix=bucket_prefix, backup_extra=standard)
    bucket = stable_bucket_name(bucket_prefix, str(data))
    assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
    moved = tmp_path / "away"
    os.rename(data / "a", moved)
    delete_cache_db(cache)
    assert "2 of them for files gone from disk" in run_cli("--cache", str(cache), "--no-cache-backup").stderr
    os.rename(moved, data / "a")
    (data / "a/other.tif").write_bytes(b"O" * 500)  # same size, new bytes, new mtime

    result = run_cli("--cache", str(cache), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    assert "1 file uploaded" in result.stderr
    versions = s3_inspect.list_object_versions(Bucket=bucket)["Versions"]
    same, other = key_of(data / "a/same.tif"), key_of(data / "a/other.tif")
    assert sorted(v["Key"] for v in versions) == sorted([same, other, other])
    body = s3_inspect.get_object(Bucket=bucket, Key=key_of(data / "a/other.tif"))["Body"].read()
    assert body == b"O" * 500


def test_the_merge_asks_for_the_head_proof_only_for_a_gone_row_met_by_the_listed_size():
    from async_backup.cache.records import GONE_MTIME_NS

    gone = Recorded(b"/t/a", 10, GONE_MTIME_NS)
    file = DiskFile(b"/t/a", 10, 1_700_000_000_000_000_000)
    assert list(merge([file], [gone], PlanCounts())) == [Upload(file, is_new=False, proof=Proof.HEAD)]
    bigger = DiskFile(b"/t/a", 11, file.mtime_ns)
    assert list(merge([bigger], [gone], PlanCounts())) == [Upload(bigger, is_new=False)]
    ours = Recorded(b"/t/a", 10, 1_600_000_000_000_000_000)  # a row of ours: a changed file is uploaded
    assert list(merge([file], [ours], PlanCounts())) == [Upload(file, is_new=False)]
    assert list(merge([], [gone], PlanCounts())) != []  # still deleted when the file is gone


@pytest.mark.slow
def test_a_snapshot_row_for_an_object_replaced_after_the_snapshot_is_not_taken(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    """The snapshot holds the row of version one; version two was uploaded after it (no snapshot
    since); `restore --as-of --overwrite` put version one back; then the cache was lost. The
    snapshot row matches the disk, but S3's current object is version two: it must be uploaded."""
    docs = tmp_path / "docs"
    make_tree(docs, {"report.tif": b"version one.", "keep.tif": b"kept as it is"})
    cache = tmp_path / "cache"
    # STANDARD: moto's RestoreObject cannot serve an older archived version (see test_restore).
    standard = {"storage_class": "STANDARD"}
    write_config(cache, moto_endpoint, folders=[str(docs)], bucket_prefix=bucket_prefix, backup_extra=standard)
    bucket = stable_bucket_name(bucket_prefix, str(docs))
    assert run_cli("--cache", str(cache)).returncode == 0  # writes the snapshot
    time.sleep(1.1)  # listings carry whole seconds: keep the moment clear of both backups
    moment = datetime.now(UTC)
    time.sleep(1.1)
    (docs / "report.tif").write_bytes(b"version two.")  # same size
    assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
    put_back = in_process(
        "restore", str(docs), "--path", "report.tif", "--as-of", moment.isoformat(), "--overwrite", "--yes",
        "--cache", str(cache),
    )  # fmt: skip
    assert put_back.returncode == 0, put_back.stdout + put_back.stderr
    assert (docs / "report.tif").read_bytes() == b"version one."
    delete_cache_db(cache)

    result = run_cli("--cache", str(cache), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    assert "1 file uploaded" in result.stderr
    key = key_of(docs / "report.tif")
    assert s3_inspect.get_object(Bucket=bucket, Key=key)["Body"].read() == b"version one."
    again = run_cli("--cache", str(cache), "--no-cache-backup")
    assert "0 files uploaded" in again.stderr, again.stderr


def test_snapshot_and_old_row_rules():
    from async_backup.cache.records import Listed
    from async_backup.recovery.rules import OLD_UPLOAD_MARGIN_S, old_row_predates_upload, snapshot_row_holds

    listed = Listed("k", 5, 1_700_000_000.0, hashlib.md5(b"hello").hexdigest())
    assert snapshot_row_holds(listed, 1_700_000_000.0) and snapshot_row_holds(listed, 1_700_000_100.0)
    assert not snapshot_row_holds(listed, 1_699_999_999.0)  # replaced after the snapshot
    assert not snapshot_row_holds(Listed("k", 5), 1_700_000_000.0)  # no LastModified: no proof
    assert old_row_predates_upload(1_700_000_000.0 - OLD_UPLOAD_MARGIN_S - 0.001, listed)
    assert not old_row_predates_upload(1_700_000_000.0 - OLD_UPLOAD_MARGIN_S, listed)
    assert not old_row_predates_upload(1_700_000_000.5, listed)  # stat'ed after the upload


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.mark.slow
def test_an_old_scripts_row_stated_after_a_rewrite_during_its_upload_is_not_trusted(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any
):
    """The old script stat'ed each file after uploading it: a file rewritten during its upload left
    a row with the new mtime over the old bytes. Such a row is taken neither on its mtime (not
    older than the upload) nor on the ETag (another MD5, or multipart): the file is uploaded.
    Rows that are fine are still adopted, by their age or, for a recent file, by the ETag."""
    from oldscript import old_bucket, run_old_script

    tok = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:6]
    data = tmp_path / "data"
    folder = data / f"a{tok}"
    big = 9 * 1024 * 1024  # above boto3's 8 MiB multipart threshold: a multipart ETag
    make_tree(
        folder,
        {
            "old.tif": b"o" * big,  # written a day before the old script uploaded it
            "recent.tif": b"recent scan",  # written just before: proven by its single-part ETag
            "rewritten.tif": b"bytes the old script sent",
            "rewritten-big.tif": b"p" * big,
        },
    )
    make_tree(data / f"b{tok}", {"other.tif": b"other target"})
    day_ago_ns = time.time_ns() - 86_400 * 10**9
    os.utime(folder / "old.tif", ns=(day_ago_ns, day_ago_ns))
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(folder), str(data / f"b{tok}")], backup_extra={"naming": "legacy"})
    raw = json.loads((cache / "config.json").read_text())
    raw["notification"] = {}  # the old script needs the section to exist
    (cache / "config.json").write_text(json.dumps(raw))
    buckets = run_old_script(cache, s3_inspect)
    bucket = buckets[str(folder)]
    assert bucket == old_bucket(f"a{tok}")
    # Rewritten during the upload (same size), stat'ed after it: the row as the old script left it.
    db = sqlite3.connect(cache / "db" / f"a{tok}.db")
    for name, new in (("rewritten.tif", b"bytes written meanwhile!!"), ("rewritten-big.tif", b"q" * big)):
        path = folder / name
        path.write_bytes(new)
        db.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (str(path), os.stat(path).st_mtime))
    db.commit()
    db.close()
    keys = {name: key_of(folder / name) for name in ("old.tif", "recent.tif", "rewritten.tif", "rewritten-big.tif")}
    assert "-" in s3_inspect.head_object(Bucket=bucket, Key=keys["rewritten-big.tif"])["ETag"]

    result = run_cli("--cache", str(cache), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    versions = s3_inspect.list_object_versions(Bucket=bucket)["Versions"]
    counts = {k: sum(v["Key"] == k for v in versions) for k in keys.values()}
    assert counts == {
        keys["old.tif"]: 1,
        keys["recent.tif"]: 1,
        keys["rewritten.tif"]: 2,
        keys["rewritten-big.tif"]: 2,
    }
    head = s3_inspect.head_object(Bucket=bucket, Key=keys["rewritten.tif"])
    assert head["ETag"].strip('"') == _md5(b"bytes written meanwhile!!")
    assert f"{folder}: adopted 2 of 4 files from the old cache" in result.stderr
    assert "2 not taken" in result.stderr

    again = run_cli("--cache", str(cache), "--no-cache-backup")
    assert again.returncode == 0 and "0 files uploaded" in again.stderr, again.stderr
