"""Odd file names against a real S3 server: every name round-trips to the same bytes."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

from conftest import run_cli, write_config
from faultcheck import assert_whole, bucket_objects

from async_backup.disk.keys import path_for_key
from async_backup.settings.naming import stable_bucket_name

ODD_NAMES = [
    "with space.tif",
    "plus+sign.tif",
    "percent%20sign.tif",
    "question?.tif",
    "hash#.tif",
    "amp&ersand.tif",
    "single'quote.tif",
    'double"quote.tif',
    "back\\slash.tif",
    "tilde~and=equals.tif",
    unicodedata.normalize("NFC", "café.tif"),
    unicodedata.normalize("NFD", "café.tif"),  # the same text, other bytes: both must survive
    "日本語.tif",
    "emoji-📜.tif",
]
RAW_NAMES = [
    b"latin1-caf\xe9.tif",  # not UTF-8
    b"line\nbreak.tif",  # control characters: moto answers 404 for them as plain keys
    b"tab\there.tif",
    b"escape-looking-%E9.tif",
]


def test_odd_names_round_trip_exactly(tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any):
    root = tmp_path / "names"
    root.mkdir()
    (root / "sub dir+x").mkdir()
    for i, name in enumerate(ODD_NAMES):
        (root / name).write_bytes(f"content {i}".encode())
        (root / "sub dir+x" / name).write_bytes(f"nested {i}".encode())
    raw_root = os.fsencode(root)
    for i, raw in enumerate(RAW_NAMES):
        with open(raw_root + b"/" + raw, "wb") as f:
            f.write(b"raw %d" % i)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    bucket = stable_bucket_name(bucket_prefix, str(root))
    assert_whole(s3_inspect, bucket, root, cache)  # listed back, every key maps to the original bytes
    keys = [o["Key"] for o in s3_inspect.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2 * len(ODD_NAMES) + len(RAW_NAMES)
    nfc, nfd = ODD_NAMES[10], ODD_NAMES[11]
    assert str(root / nfc)[1:] in keys and str(root / nfd)[1:] in keys
    escaped = {k for k in keys if k.startswith("/")}
    assert {path_for_key(k) for k in escaped} == {raw_root + b"/" + r for r in RAW_NAMES[:3]}
    assert str(root)[1:] + "/escape-looking-%E9.tif" in keys  # valid UTF-8 stays plain, "%" and all
    again = run_cli("--cache", str(cache))
    assert again.returncode == 0 and "0 files uploaded" in again.stderr, again.stderr


def test_keys_over_1024_bytes_fail_alone_and_say_so(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    root = tmp_path / "long"
    deep = root
    for i in range(6):
        deep = deep / (f"{i}" * 200)
    deep.mkdir(parents=True)
    (deep / "page.tif").write_bytes(b"too deep")
    (root / "fine.tif").write_bytes(b"ok")
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    result = run_cli("--cache", str(cache))
    assert result.returncode == 1
    assert "key too long" in result.stderr and "1,024" in result.stderr and "page.tif" in result.stderr
    objects = bucket_objects(s3_inspect, stable_bucket_name(bucket_prefix, str(root)))
    assert list(objects) == [os.fsencode(root / "fine.tif")]


def test_a_newline_in_a_file_name_leaves_each_error_one_line(tmp_path: Path, moto_endpoint: str, bucket_prefix: str):
    root = tmp_path / "lines"
    deep = root
    for i in range(6):
        deep = deep / (f"{i}" * 200)
    deep.mkdir(parents=True)
    raw = os.fsencode(deep) + b"/first line\nERROR second line.tif"  # its key is too long: an ERROR
    with open(raw, "wb") as f:
        f.write(b"x")
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    result = run_cli("--cache", str(cache))
    assert result.returncode == 1
    for log in (result.stderr, (cache / "backup.log").read_text()):
        errors = [line for line in log.splitlines() if "ERROR" in line]
        assert errors and all("first line\\x0aERROR second line.tif" in line for line in errors), log
        assert not any(line.startswith("ERROR second line") for line in log.splitlines())
