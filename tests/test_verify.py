"""`async-backup verify` end to end: real backups into moto's S3 server, damage planted with a
separate boto3 client (or in the cache), then verify, --repair, a backup, and verify again.

moto stores a CRC32 for multipart objects but none for single PutObjects sent with an explicit
checksum header, so on moto only the multipart file's checksum is checkable; the others must come
out as "not checkable", never as a mismatch.
"""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import Ran, in_process, key_of, make_tree, run_cli, write_config
from s3proxy import ErrorReply, ProxyServer

from async_backup.cache.records import Recorded
from async_backup.disk.entries import DiskFile, Hole, Skipped
from async_backup.disk.walk import Excluder
from async_backup.s3.checksums import split_checksum
from async_backup.s3.objects import ListedObject, ObjectHead
from async_backup.settings.naming import stable_bucket_name
from async_backup.settings.targets import Target
from async_backup.verify.compare import Kind, compare, compare_checksum

MIB = 1024 * 1024


def verify(cache: Path, *args: str) -> Ran:
    return in_process("verify", *args, "--cache", str(cache))


def set_checksum(cache: Path, path: Path, value: str) -> None:
    with sqlite3.connect(cache / "async-backup.db") as db:
        db.execute("UPDATE files SET checksum=? WHERE path=?", (value, os.fsencode(path)))


def setup(tmp_path: Path, endpoint: str, prefix: str, files: dict[str, bytes], **aws: Any) -> tuple[Path, Path, str]:
    data = tmp_path / "archive"
    make_tree(data, files)
    # Files written just before their backup read them are unsure (racy-clean rule) and never whole:
    # let them settle past the 2 s margin first, as an archive's files have.
    time.sleep(2.2)
    cache = tmp_path / "cache"
    write_config(
        cache,
        endpoint,
        folders=[str(data)],
        bucket_prefix=prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5},
        aws_extra=aws or None,
    )
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    return data, cache, stable_bucket_name(prefix, str(data))


FILES = {
    "gone.txt": b"deleted from S3 behind our back",
    "resized.txt": b"original size",
    "reclassed.txt": b"copied to another storage class",
    "big.bin": os.urandom(6 * MIB),  # multipart: S3 stores its full-object CRC32
    "fine/ok.txt": b"untouched",
    "fine/also-ok.txt": b"untouched too",
}


def test_verify_finds_each_kind_of_damage_and_repair_plus_backup_makes_it_whole(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    data, cache, bucket = setup(tmp_path, moto_endpoint, bucket_prefix, FILES)

    clean = verify(cache)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # Every object, single PUT or multipart, has S3's CRC32 of the whole file to compare with.
    assert ": whole" in clean.stdout and "checksums: 6 match" in clean.stdout
    assert "not checkable" not in clean.stdout
    assert "requests sent: " in clean.stdout and "ListObjectsV2 1" in clean.stdout

    s3_inspect.delete_object(Bucket=bucket, Key=key_of(data / "gone.txt"))
    s3_inspect.put_object(Bucket=bucket, Key=key_of(data / "stray.txt"), Body=b"nobody uploaded me")
    s3_inspect.put_object(
        Bucket=bucket, Key=key_of(data / "resized.txt"), Body=b"a different size", StorageClass="DEEP_ARCHIVE"
    )
    s3_inspect.restore_object(
        Bucket=bucket,
        Key=key_of(data / "reclassed.txt"),
        RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}},
    )
    s3_inspect.copy_object(
        Bucket=bucket,
        Key=key_of(data / "reclassed.txt"),
        CopySource={"Bucket": bucket, "Key": key_of(data / "reclassed.txt")},
        StorageClass="GLACIER",
        MetadataDirective="COPY",
    )
    set_checksum(cache, data / "big.bin", "crc32:AAAAAA==-2")
    # A single PutObject's CRC32 is kept by S3 (and by moto, the algorithm being named), so a row
    # that disagrees with it is found too, as a multipart object's is.
    set_checksum(cache, data / "fine/ok.txt", "crc32:AAAAAA==")

    broken = verify(cache)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    out = broken.stdout
    assert "6 problems" in out, out
    assert f"missing from S3: {data / 'gone.txt'}: cached" in out
    assert f"unexplained in S3: {data / 'stray.txt'}: no file and no cache row" in out
    assert f"size mismatch: {data / 'resized.txt'}: S3 has 16 bytes, the cache 13" in out
    assert f"wrong storage class: {data / 'reclassed.txt'}: S3 has GLACIER, the config asks for DEEP_ARCHIVE" in out
    assert f"checksum mismatch: {data / 'big.bin'}: S3 stored CRC32" in out
    ok_crc = base64.b64encode(zlib.crc32(FILES["fine/ok.txt"]).to_bytes(4, "big")).decode()
    assert f"checksum mismatch: {data / 'fine/ok.txt'}: S3 stored CRC32 {ok_crc}, the cache AAAAAA==" in out
    assert "run `async-backup verify --repair`, then a backup" in out

    skipped = verify(cache, "--no-checksums", "--target", bucket)
    assert skipped.returncode == 1
    assert "4 problems" in skipped.stdout and "not compared (--no-checksums)" in skipped.stdout
    assert "HeadObject" not in skipped.stdout.split("requests sent:")[1].splitlines()[0]

    repaired = verify(cache, "--repair", "--target", str(data))
    assert repaired.returncode == 1
    assert "the cache was corrected for 6 files: run a backup now" in repaired.stdout

    backup = run_cli("--cache", str(cache))
    assert backup.returncode == 0, backup.stderr
    assert "5 files uploaded (6.0 MiB), 1 deleted" in backup.stderr, backup.stderr

    whole = verify(cache)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert ": whole" in whole.stdout and "verify: 1 target whole" in whole.stdout
    assert re.search(r"checksums: \d+ match\n", whole.stdout) and "not checkable" not in whole.stdout


def test_md5_mode_compares_etags_without_heads(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """With aws.checksum_calculation "when_required" the cache holds MD5s, which the listing's ETags
    confirm for free; a mismatch is confirmed by one HeadObject (an encrypted object is no mismatch)."""
    files = {"one.txt": b"first", "two.txt": b"second", "big.bin": os.urandom(6 * MIB)}
    data, cache, _bucket = setup(tmp_path, moto_endpoint, bucket_prefix, files, checksum_calculation="when_required")
    clean = in_process("--cache", str(cache), "verify", "--no-checksums")  # --cache before the command word
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checksums: 3 match" in clean.stdout
    assert "HeadObject" not in clean.stdout

    set_checksum(cache, data / "two.txt", "md5:00000000000000000000000000000000")
    bad = verify(cache, "--no-checksums")
    assert bad.returncode == 1
    assert f"checksum mismatch: {data / 'two.txt'}: S3 has ETag" in bad.stdout
    assert "HeadObject 1" in bad.stdout


def test_unknown_target_is_a_usage_error(tmp_path: Path, moto_endpoint: str) -> None:
    (tmp_path / "archive").mkdir()
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(tmp_path / "archive")])
    result = verify(cache, "--target", "/no/such/folder")
    assert result.returncode == 2
    assert "--target /no/such/folder names no configured target" in result.stderr


def _head(**changes: Any) -> ObjectHead:
    values: dict[str, Any] = {
        "size": 5,
        "etag": "5d41402abc4b2a76b9719d911017c592",
        "storage_class": "DEEP_ARCHIVE",
        "version_id": "v",
        "metadata": {},
        "restore": None,
        "checksum_crc32": None,
        "other_checksum": False,
        "checksum_type": "",
        "parts_count": None,
        "encrypted_with_key": False,
    }
    values.update(changes)
    return ObjectHead(**values)


@pytest.mark.parametrize(
    ("cached", "etag", "head", "verdict"),
    [
        ("crc32:NhCmhg==", "x", _head(checksum_crc32="NhCmhg=="), True),
        ("crc32:NhCmhg==", "x", _head(checksum_crc32="AAAAAA=="), False),
        ("crc32:meG8JQ==-2", "x", _head(checksum_crc32="meG8JQ==-2"), True),
        ("crc32:meG8JQ==-2", "x", _head(checksum_crc32="meG8JQ=="), True),  # a server that drops "-N"
        ("crc32:meG8JQ==-2", "x", _head(checksum_crc32="meG8JQ==-3"), False),
        ("crc32:NhCmhg==", "x", _head(), None),  # Ceph: nothing stored
        ("crc32:NhCmhg==", "x", _head(other_checksum=True), None),  # CRC64NVME only
        ("crc32:NhCmhg==", "x", None, None),  # --no-checksums
        ("md5:5d41402abc4b2a76b9719d911017c592", "5d41402abc4b2a76b9719d911017c592", None, True),
        ("md5:00000000000000000000000000000000", "5d41402abc4b2a76b9719d911017c592", _head(), False),
        (
            "md5:0000000000000000000000000000000f",
            "5d41402abc4b2a76b9719d911017c592",
            _head(encrypted_with_key=True),
            None,
        ),
        ("md5:5d41402abc4b2a76b9719d911017c592", "not-an-md5", _head(), None),
    ],
)
def test_compare_checksum_never_claims_what_it_cannot_prove(
    cached: str, etag: str, head: ObjectHead | None, verdict: bool | None
) -> None:
    assert compare_checksum(cached, etag, head)[0] is verdict


def test_split_checksum() -> None:
    assert split_checksum("crc32:AbC=-3") == ("crc32", "AbC=", 3)
    assert split_checksum("md5:abc") == ("md5", "abc", None)


def test_failed_requests_leave_verify_unfinished_not_whole(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    with ProxyServer(moto_endpoint) as proxy:
        data = tmp_path / "archive"
        make_tree(data, {"big.bin": os.urandom(6 * MIB), "small.txt": b"s"})
        cache = tmp_path / "cache"
        tuning = {"multipart_threshold_mib": 5, "part_size_mib": 5, "max_attempts": 1}
        write_config(cache, proxy.url, folders=[str(data)], bucket_prefix=bucket_prefix, tuning=tuning)
        assert run_cli("--cache", str(cache)).returncode == 0
        proxy.set_faults(
            ErrorReply(ops={"HeadObject"}, keys={key_of(data / "big.bin")}, status=500, code="InternalError")
        )
        result = verify(cache)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not fully verified: 1 request failed" in result.stdout
    assert f"error: {data / 'big.bin'}: checksum not compared: " in result.stdout
    assert "verify: no problems found; 1 request failed" in result.stdout


def test_compare_merges_cache_and_walk_and_says_nothing_it_cannot_see() -> None:
    """The pure merge: what each combination of object, cache row and disk entry comes out as."""

    def obj(path: bytes, size: int = 1, cls: str = "DEEP_ARCHIVE") -> tuple[bytes, ListedObject]:
        return path, ListedObject(path[1:].decode(), size, cls, "e")

    objects = dict(
        [
            obj(b"/t/a"),  # row + file: fine, checksum to compare
            obj(b"/t/b", size=2),  # row says 1 byte: size mismatch
            obj(b"/t/c", cls="STANDARD"),  # wrong class
            obj(b"/t/d"),  # file, no row: the next backup uploads it
            obj(b"/t/hidden/x"),  # under an unreadable directory: unknown
            obj(b"/t/link"),  # a symlink stands there now: by hand
            obj(b"/t/stray"),  # nothing explains it: repairable
            obj(b"/elsewhere/z"),  # outside the target: by hand
        ]
    )
    rows: list[Recorded] = [
        Recorded(b"/t/a", 1, 5, None, None, None, False, "crc32:AAAAAA=="),
        Recorded(b"/t/b", 1, 5, None, None, None, False, "crc32:AAAAAA=="),
        Recorded(b"/t/c", 1, 5, None, None, None, False, None),
        Recorded(b"/t/gone", 1, 5, None, None, None, False, "crc32:AAAAAA=="),  # no object, no file
        Recorded(b"/t/hidden/y", 1, 5, None, None, None, False, "crc32:AAAAAA=="),  # no object, disk unknown
    ]
    disk = [
        DiskFile(b"/t/a", 1, 5),
        DiskFile(b"/t/b", 1, 6),  # changed since the backup
        DiskFile(b"/t/c", 1, 5),
        DiskFile(b"/t/d", 1, 5),
        Hole(b"/t/hidden/", "unreadable"),
        Skipped(b"/t/link", "symlink"),
        DiskFile(b"/t/new", 1, 5),
    ]
    check = compare(Target("/t", "b"), "DEEP_ARCHIVE", sorted(objects.items()), rows, disk, Excluder(()))
    found = {(p.kind, p.path) for p in check.problems}
    assert found == {
        (Kind.SIZE, b"/t/b"),
        (Kind.STORAGE_CLASS, b"/t/c"),
        (Kind.MISSING, b"/t/gone"),
        (Kind.MISSING, b"/t/hidden/y"),
        (Kind.UNEXPLAINED, b"/t/link"),
        (Kind.UNEXPLAINED, b"/t/stray"),
        (Kind.UNEXPLAINED, b"/elsewhere/z"),
    }
    assert [c.path for c in check.checks] == [b"/t/a"]
    assert check.uncached_objects == 2  # /t/d and /t/hidden/x
    assert check.not_backed_up == 3  # /t/b changed, /t/d and /t/new not cached
    assert check.on_disk == 5 and check.cached == 5 and check.objects == 8
    assert check.no_repair == 2
    assert set(check.repairs) == {b"/t/b", b"/t/c", b"/t/gone", b"/t/hidden/y", b"/t/stray"}


def test_compare_never_calls_an_unsure_row_whole():
    """A row read racily, or whose file's inode or ctime moved since, matches by size and mtime but
    is not proven to be what S3 holds: counted unsure, whatever the checksums say."""
    paths = (b"/t/a", b"/t/b", b"/t/c", b"/t/d")
    objects = {p: ListedObject(os.fsdecode(p[1:]), 1, "DEEP_ARCHIVE", "e") for p in paths}
    rows: list[Recorded] = [
        Recorded(b"/t/a", 1, 5, None, 7, 9, False, "crc32:AAAAAA=="),  # sure, same inode and ctime
        Recorded(b"/t/b", 1, 5, None, 7, 9, True, "crc32:AAAAAA=="),  # read racily
        Recorded(b"/t/c", 1, 5, None, 7, 9, False, "crc32:AAAAAA=="),  # replaced by rename since
        Recorded(b"/t/d", 1, 5, None, None, None, False, "crc32:AAAAAA=="),  # an old row: no evidence either way
    ]
    disk = [DiskFile(b"/t/a", 1, 5, 7, 9), DiskFile(b"/t/b", 1, 5, 7, 9), DiskFile(b"/t/c", 1, 5, 8, 9)]
    disk.append(DiskFile(b"/t/d", 1, 5, 3, 4))
    check = compare(Target("/t", "b"), "DEEP_ARCHIVE", sorted(objects.items()), rows, disk, Excluder(()))
    assert check.problems == [] and check.not_backed_up == 0
    assert check.unsure == 2
