"""Every upload records the whole file's CRC32, and S3 stores the same value for any object size.

A small file (one PutObject) and a 12 MiB file (three parts of 5 MiB) go to moto over both request
paths (the fast path and botocore). HeadObject with ChecksumMode=ENABLED returns a FULL_OBJECT CRC32
equal to zlib.crc32 of the whole file, and the cache row records that value. Against a server
without flexible checksums (`when_required`), the row still starts with the whole file's CRC32,
then keeps the ETag S3 answered. The combination of part CRC32s is checked against zlib.
"""

from __future__ import annotations

import base64
import os
import random
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process, key_of, write_config
from hypothesis import given
from hypothesis import strategies as st

from async_backup.s3.checksums import crc32_combine, file_crc32, s3_value, split_checksum, whole_crc32
from async_backup.settings.naming import stable_bucket_name

MiB = 1024 * 1024
TUNING = {"multipart_threshold_mib": 5, "part_size_mib": 5, "workers": 2, "parts_in_flight": 2}


def b64_crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def row_checksum(cache: Path, bucket: str, path: Path) -> str | None:
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        row = conn.execute(
            "SELECT checksum FROM files WHERE bucket=? AND path=?", (bucket, os.fsencode(path))
        ).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


def site(tmp_path: Path, endpoint: str, prefix: str, **aws: Any) -> tuple[Path, Path, str, dict[str, bytes]]:
    root = tmp_path / "tree"
    root.mkdir()
    rng = random.Random(25)
    files = {"small.tif": rng.randbytes(300 * 1024), "large.tif": rng.randbytes(12 * MiB + 12345)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    cache = tmp_path / "cache"
    write_config(cache, endpoint, folders=[str(root)], bucket_prefix=prefix, tuning=TUNING, aws_extra=aws)
    return root, cache, stable_bucket_name(prefix, str(root)), files


@pytest.mark.parametrize("direct_put", [True, False], ids=["fast-path", "botocore"])
def test_s3_and_the_cache_keep_the_whole_files_crc32_for_any_size(
    direct_put: bool, tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root, cache, bucket, files = site(tmp_path, moto_endpoint, bucket_prefix, direct_put=direct_put)
    ran = in_process("--cache", str(cache), "--no-cache-backup")
    assert ran.returncode == 0, ran.stderr
    for name, data in files.items():
        path = root / name
        want = b64_crc32(data)
        head = s3_inspect.head_object(Bucket=bucket, Key=key_of(path), ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"] == want, name
        assert head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT", name
        assert row_checksum(cache, bucket, path) == f"crc32:{want}", name
    large = s3_inspect.head_object(Bucket=bucket, Key=key_of(root / "large.tif"))
    assert large["ETag"].strip('"').endswith("-3"), "the large file went in three parts"


@pytest.mark.parametrize("direct_put", [True, False], ids=["fast-path-sha256", "botocore-md5"])
def test_without_flexible_checksums_the_row_keeps_the_crc32_and_the_etag(
    direct_put: bool, tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root, cache, bucket, files = site(
        tmp_path, moto_endpoint, bucket_prefix, direct_put=direct_put, checksum_calculation="when_required"
    )
    ran = in_process("--cache", str(cache), "--no-cache-backup")
    assert ran.returncode == 0, ran.stderr
    for name, data in files.items():
        path = root / name
        recorded = row_checksum(cache, bucket, path)
        assert recorded is not None
        assert file_crc32(recorded) == b64_crc32(data), name
        etag = s3_inspect.head_object(Bucket=bucket, Key=key_of(path))["ETag"].strip('"')
        assert s3_value(recorded) == f"md5:{etag}", name


@given(st.binary(max_size=3000), st.binary(max_size=3000), st.integers(min_value=0, max_value=2**32 - 1))
def test_crc32_combine_is_the_crc32_of_the_concatenation(a: bytes, b: bytes, start: int) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    # The same holds from any running value: combining onto the CRC32 of a longer prefix.
    assert crc32_combine(zlib.crc32(a, start), zlib.crc32(b), len(b)) == zlib.crc32(b, zlib.crc32(a, start))


@given(st.lists(st.binary(max_size=2000), max_size=8))
def test_whole_crc32_of_parts_is_the_files(parts: list[bytes]) -> None:
    assert whole_crc32([(zlib.crc32(p), len(p)) for p in parts]) == zlib.crc32(b"".join(parts))


def test_crc32_combine_over_long_runs_of_zeros() -> None:
    """Lengths far past the test data's: the shift by x^(8n) for n up to terabytes, against zlib."""
    a = b"archive"
    for n in (1, 5 * MiB, 5 * MiB + 1):
        zeros = bytes(n)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(zeros), n) == zlib.crc32(a + zeros)
    # Combining a zero-length part changes nothing.
    assert crc32_combine(0x1234ABCD, 0, 0) == 0x1234ABCD


def test_the_row_forms_are_read_apart() -> None:
    assert split_checksum("crc32:AAAAAA== md5:0123-3") == ("crc32", "AAAAAA==", None)
    assert s3_value("crc32:AAAAAA== md5:0123-3") == "md5:0123-3"
    assert s3_value("crc32:AAAAAA==") == "crc32:AAAAAA=="
    assert file_crc32("crc32:AAAAAA==-3") is None
    assert file_crc32("md5:0123") is None
    assert file_crc32("crc32:AAAAAA== crc32:BBBBBB==-2") == "AAAAAA=="
