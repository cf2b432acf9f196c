"""The hand-signed PutObject path against a moto server that verifies every SigV4 signature."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import run_cli, write_config
from faultcheck import bucket_objects, tree_files

from async_backup.settings.naming import stable_bucket_name

NAMES = [
    "plain.tif",
    "with space+plus%percent.tif",
    "q?h#a&e=t~(1)'\".tif",
    unicodedata.normalize("NFC", "café.tif"),
    unicodedata.normalize("NFD", "café.tif"),
    "日本語.tif",
]


def signed_site(tmp_path: Path, url: str, keys: dict[str, str], **aws: Any) -> tuple[Path, Path]:
    root = tmp_path / "tree"
    (root / "sub dir").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        (root / name).write_bytes(b"v%d" % i)
        (root / "sub dir" / name).write_bytes(b"w%d" % i)
    with open(os.fsencode(root) + b"/latin1-\xe9.tif", "wb") as f:  # escaped key, starts with "/"
        f.write(b"raw")
    (root / "sub dir" / "big volume+1.tif").write_bytes(os.urandom(11 * 1024 * 1024))  # three signed parts
    cache = tmp_path / "cache"
    path = write_config(
        cache,
        url,
        folders=[str(root)],
        bucket_prefix="signed-",
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5},
    )
    doc = json.loads(path.read_text())
    doc["aws"].update(access_key=keys["aws_access_key_id"], secret_access_key=keys["aws_secret_access_key"], **aws)
    path.write_text(json.dumps(doc))
    return root, cache


@pytest.mark.parametrize("direct_put", [True, False])
def test_every_odd_name_is_signed_right(tmp_path: Path, request: pytest.FixtureRequest, direct_put: bool):
    url, keys = request.getfixturevalue("moto_checking_signatures")
    root, cache = signed_site(tmp_path, url, keys, direct_put=direct_put)
    result = run_cli("--cache", str(cache), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    client = boto3.client("s3", endpoint_url=url, **keys)
    objects = bucket_objects(client, stable_bucket_name("signed-", str(root)))
    assert objects == tree_files(root)
    head = client.head_object(Bucket=stable_bucket_name("signed-", str(root)), Key=str(root / NAMES[1])[1:])
    assert head["StorageClass"] == "DEEP_ARCHIVE" and "mtime" in head["Metadata"]


def test_a_wrong_secret_is_fatal_on_the_direct_path(tmp_path: Path, request: pytest.FixtureRequest):
    url, keys = request.getfixturevalue("moto_checking_signatures")
    _root, cache = signed_site(tmp_path, url, {**keys, "aws_secret_access_key": "wrong-secret-0123456789"})
    result = run_cli("--cache", str(cache), "--no-cache-backup")
    assert result.returncode == 1
    assert "SignatureDoesNotMatch" in result.stderr and "Traceback" not in result.stderr
