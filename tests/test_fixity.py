"""Fixity: bit rot on disk found by the nightly slice within fixity_days runs, reported with the
restore command and never uploaded over the good version until accepted; an S3 copy replaced or
deleted behind the tool's back found by HeadObject; the slice within its byte budget; the
`fixity` command's whole pass. Real runs in-process against moto over HTTP, on real files."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process, key_of, last_report, write_config
from loopfs import loop_mount, rot_beneath
from s3proxy import PacedBody, ProxyServer

from async_backup.settings.naming import stable_bucket_name

SETTLE_S = 2.2  # past the racy-clean margin: rows are recorded sure, not compared again next run
SIZES = [40_000, 70_000, 10_000, 90_000, 30_000, 60_000]


def tree(root: Path) -> list[Path]:
    paths = []
    for i, size in enumerate(SIZES):
        p = root / f"d{i % 2}" / f"img{i}.tif"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        paths.append(p)
    day_ago = time.time_ns() - 86_400 * 10**9
    for p in paths:
        os.utime(p, ns=(day_ago, day_ago))
    time.sleep(SETTLE_S)
    return paths


def backup(cache: Path, *extra: str) -> dict[str, Any]:
    done = in_process("--cache", str(cache), *extra)
    report = last_report(cache)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return report


def fixity_failures(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["failures"] if f["kind"] == "fixity"]


def plant_rot(cache: Path, path: Path) -> None:
    """New bytes under the same size and mtime. A disk's rot leaves the inode's ctime as it was;
    utime cannot, so the row takes the new ctime (else the planner's ctime rule would upload it as an
    edit with its mtime put back, which it is here)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = path.stat()
    with sqlite3.connect(cache / "async-backup.db") as db:
        db.execute("UPDATE files SET ctime_ns=?, ino=? WHERE path=?", (now.st_ctime_ns, now.st_ino, os.fsencode(path)))


def puts_of(proxy: ProxyServer, key: str) -> int:
    return sum(1 for r in proxy.wait_done() if r.key == key and r.op in ("PutObject", "CreateMultipartUpload"))


@pytest.mark.slow
def test_bit_rot_is_found_within_fixity_days_runs_and_held_until_accepted(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    root = tmp_path / "archive"
    paths = tree(root)
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, backup_extra={"fixity_days": 3})
    first = backup(cache)
    assert first["targets"][0]["new"] == len(paths)
    rotten = paths[3]
    plant_rot(cache, rotten)

    found: list[dict[str, Any]] = []
    for _ in range(3):  # every file is read once in fixity_days runs
        found = fixity_failures(backup(cache))
        if found:
            break
    assert len(found) == 1, found
    message = found[0]["message"]
    assert found[0]["path"] == str(rotten)
    assert f"async-backup restore '{rotten}' --as-of " in message
    assert "--overwrite" in message and f"--accept-change '{rotten}'" in message

    # Later the file is touched: its mtime changed, yet the rotten bytes never go over the good ones.
    os.utime(rotten, ns=(time.time_ns() - 10**12, time.time_ns() - 10**12))
    proxy.clear()
    held = backup(cache)
    assert puts_of(proxy, key_of(rotten)) == 0
    assert [f["path"] for f in fixity_failures(held)] == [str(rotten)]

    proxy.clear()
    accepted = backup(cache, "--accept-change", str(rotten))
    assert puts_of(proxy, key_of(rotten)) == 1
    assert fixity_failures(accepted) == []
    assert accepted["exit_code"] == 0


def test_a_rotten_file_whose_mtime_is_kept_goes_only_when_accepted(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    """--accept-change of a file whose size and mtime still match: its new bytes are compared and sent."""
    root = tmp_path / "archive"
    paths = tree(root)
    for p in paths[2:]:
        p.unlink()
    paths = paths[:2]
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, backup_extra={"fixity_days": 1})
    backup(cache)
    plant_rot(cache, paths[0])
    proxy.clear()
    report = backup(cache)
    assert [f["path"] for f in fixity_failures(report)] == [str(paths[0])]
    assert puts_of(proxy, key_of(paths[0])) == 0
    proxy.clear()
    backup(cache, "--accept-change", str(paths[0]))
    assert puts_of(proxy, key_of(paths[0])) == 1


def test_the_slice_stays_within_its_budget_and_covers_every_file_in_fixity_days_runs(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    root = tmp_path / "archive"
    paths = tree(root)
    cache = tmp_path / "cache"
    days = 4
    write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, backup_extra={"fixity_days": days})
    budget = -(-sum(SIZES) // days)
    for _ in range(days):
        counts = backup(cache)["targets"][0]["fixity"]
        assert counts["budget_bytes"] == budget
        assert budget <= counts["bytes_read"] < budget + max(SIZES)  # stops once the budget is read
        assert counts["rot"] == 0
        assert counts["objects"] == -(-len(paths) // days)
    with sqlite3.connect(cache / "async-backup.db") as db:
        never = db.execute(
            "SELECT COUNT(*) FROM files f LEFT JOIN fixity x USING (bucket, path) WHERE x.local_at IS NULL"
        ).fetchone()[0]
    assert never == 0
    status = json.loads(in_process("status", "--json", "--cache", str(cache)).stdout)
    fixity = status["targets"][0]["fixity"]
    assert fixity["never_checked_on_disk"] == 0
    assert fixity["oldest_check_on_disk"] is not None and fixity["oldest_check_in_s3"] is not None


def test_s3_copies_replaced_or_deleted_behind_the_tools_back_are_found_by_headobject(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any
) -> None:
    root = tmp_path / "archive"
    paths = tree(root)
    for p in paths[3:]:
        p.unlink()
    paths = paths[:3]
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, backup_extra={"fixity_days": 1})
    clean = backup(cache)
    assert fixity_failures(clean) == []
    counts = clean["targets"][0]["fixity"]
    assert (counts["objects"], counts["objects_bad"]) == (3, 0)  # moto stores no CRC32 of a single PUT: unchecked
    bucket = stable_bucket_name(bucket_prefix, str(root))
    s3_inspect.put_object(
        Bucket=bucket, Key=key_of(paths[0]), Body=b"not the archive's bytes", ChecksumAlgorithm="CRC32"
    )
    s3_inspect.delete_object(Bucket=bucket, Key=key_of(paths[1]))
    report = backup(cache)
    found = {f["path"]: f for f in fixity_failures(report)}
    assert set(found) == {str(paths[0]), str(paths[1])}
    assert found[str(paths[0])]["code"] == "S3 mismatch"
    assert found[str(paths[1])]["code"] == "S3 missing"
    assert key_of(paths[1]) in found[str(paths[1])]["message"]


def test_the_fixity_command_reads_every_file_and_names_rot(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    root = tmp_path / "archive"
    paths = tree(root)
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix)  # no nightly slice
    backup(cache)
    whole = in_process("fixity", "--cache", str(cache))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert f"{len(paths)} files" in whole.stdout
    plant_rot(cache, paths[1])
    rotten = in_process("fixity", "--cache", str(cache), "--only", str(root))
    assert rotten.returncode == 1
    assert f"async-backup restore '{paths[1]}' --as-of " in rotten.stdout


@pytest.mark.slow
def test_the_windows_end_ends_the_slice_too(tmp_path: Path, proxy: ProxyServer, bucket_prefix: str) -> None:
    """A run cut by its window checks nothing more: the slice is due first next run."""
    root = tmp_path / "archive"
    tree(root)
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix,
                 backup_extra={"fixity_days": 1, "window": {"grace_s": 0}})  # fmt: skip
    assert backup(cache)["targets"][0]["fixity"]["bytes_read"] == sum(SIZES)  # a whole pass, no window
    (root / "new.tif").write_bytes(os.urandom(3 * 1024 * 1024))
    proxy.set_faults(PacedBody(bytes_per_s=200_000, ops={"PutObject"}))  # 15 s: past the window's end
    done = in_process("--cache", str(cache), "--max-duration", "2s")
    proxy.set_faults()
    assert done.returncode == 4, done.stderr  # the window ended with the new file left
    report = last_report(cache)
    assert report["targets"][0]["fixity"]["bytes_read"] == 0
    assert "no fixity slice this run" in done.stderr


def _head(etag: str, crc32: str | None, checksum_type: str) -> Any:
    from async_backup.s3.objects import ObjectHead

    return ObjectHead(
        size=10, etag=f'"{etag}"', storage_class="DEEP_ARCHIVE", version_id="v", metadata={}, restore=None,
        checksum_crc32=crc32, other_checksum=False, checksum_type=checksum_type, parts_count=None,
        encrypted_with_key=False,
    )  # fmt: skip


def test_the_s3_side_compares_what_s3_stores_not_the_whole_files_crc32_where_they_differ() -> None:
    """A row keeps the whole file's CRC32 first and, where S3 stores something else, that second:
    the S3 check must take the second (a composite CRC32, an MD5 ETag), never report the first
    against it as a mismatch."""
    from async_backup.fixity.check import compare_head

    md5 = "0123456789abcdef0123456789abcdef"
    assert compare_head(f"crc32:AAAAAQ== md5:{md5}", None, _head(md5, None, "")) == ("ok", "")
    assert compare_head(f"crc32:AAAAAQ== md5:{md5}", None, _head("f" * 32, None, ""))[0] == "mismatch"
    composite = "crc32:AAAAAQ== crc32:BBBBBB==-3"
    assert compare_head(composite, None, _head(md5 + "-3", "BBBBBB==-3", "COMPOSITE")) == ("ok", "")
    assert compare_head(composite, None, _head(md5 + "-3", "CCCCCC==-3", "COMPOSITE"))[0] == "mismatch"
    whole = "crc32:AAAAAQ=="
    assert compare_head(whole, None, _head(md5 + "-3", "AAAAAQ==", "FULL_OBJECT")) == ("ok", "")
    assert compare_head(whole, None, _head(md5 + "-3", "AAAAAg==", "FULL_OBJECT"))[0] == "mismatch"


@pytest.mark.slow
def test_rot_beneath_a_real_file_system_is_found_and_never_uploaded(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    """Bit rot as a disk makes it: one byte flipped in the ext4 image under the mounted file system,
    so the file's size, mtime, ctime and inode are its own (no cache row is edited). The slice finds
    it within fixity_days runs; the file is not uploaded over the good version when its mtime moves."""
    with loop_mount(tmp_path / "share", "ext4") as root:
        paths = tree(root)
        cache = tmp_path / "cache"
        days = 2
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix,
                     backup_extra={"fixity_days": days})  # fmt: skip
        assert backup(cache)["targets"][0]["new"] == len(paths)
        rotten = paths[3]
        good, before = rotten.read_bytes(), rotten.stat()
        rot_beneath(root, rotten, "ext4")
        after = rotten.stat()
        assert rotten.read_bytes() != good, "the byte flipped in the image reached the file"
        same = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino")
        assert [getattr(after, a) for a in same] == [getattr(before, a) for a in same]

        found: list[dict[str, Any]] = []
        for _ in range(days):
            found = fixity_failures(backup(cache))
            if found:
                break
        assert [f["path"] for f in found] == [str(rotten)], found
        assert f"async-backup restore '{rotten}' --as-of " in found[0]["message"]

        os.utime(rotten)  # someone opens it in an editor and saves nothing: a new mtime, rotten bytes
        proxy.clear()
        held = backup(cache)
        assert puts_of(proxy, key_of(rotten)) == 0
        assert [f["path"] for f in fixity_failures(held)] == [str(rotten)]
