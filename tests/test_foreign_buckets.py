"""A bucket name another AWS account holds: the target fails alone with one line, nothing is
written into that account's bucket.

moto keeps buckets per account (the `x-moto-account-id` header picks one) and, like S3, lets a
bucket name exist once across accounts. By default it serves another account's bucket to our
credentials, as S3 does where that bucket's policy shares it; with
MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS=false it denies it, as S3 does otherwise. The ownership check is
made on AWS only (no aws.endpoint_url), so these runs reach moto through AWS_ENDPOINT_URL_S3.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import ACCESS_KEY, REGION, SECRET_KEY, all_keys, moto_server, run_cli, write_config

from async_backup.settings.naming import stable_bucket_name

OTHER_ACCOUNT = "111122223333"


def other_account_client(endpoint: str) -> Any:
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )

    def as_other(request: Any, **_kwargs: Any) -> None:
        request.headers["x-moto-account-id"] = OTHER_ACCOUNT

    client.meta.events.register("before-sign.s3.*", as_other)
    return client


def as_aws(cache: Path, endpoint: str) -> subprocess.CompletedProcess[str]:
    """A run configured as on AWS (no aws.endpoint_url), its requests sent to moto by botocore."""
    config = cache / "config.json"
    doc = json.loads(config.read_text())
    doc["aws"].pop("endpoint_url", None)
    config.write_text(json.dumps(doc))
    return run_cli("--cache", str(cache), env={"AWS_ENDPOINT_URL_S3": endpoint})


def make_foreign_bucket(endpoint: str, name: str) -> Any:
    other = other_account_client(endpoint)
    other.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return other


def test_a_target_on_another_accounts_bucket_fails_alone_without_writing_into_it(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    for root in (theirs, ours):
        root.mkdir()
        (root / "a.tif").write_bytes(b"image " + root.name.encode())
    foreign = stable_bucket_name(bucket_prefix, str(theirs))  # the name the tool generates for it
    other = make_foreign_bucket(moto_endpoint, foreign)
    cache = tmp_path / "cache"
    cache.mkdir()
    write_config(cache, moto_endpoint, folders=[str(theirs), str(ours)], bucket_prefix=bucket_prefix)

    result = as_aws(cache, moto_endpoint)

    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "another AWS account" in line]
    assert len(lines) == 1, result.stderr
    assert foreign in lines[0] and '"bucket"' in lines[0] and "backup.folders" in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert all_keys(other, foreign) == []
    assert "Status" not in other.get_bucket_versioning(Bucket=foreign), "their bucket was configured"
    # The other target was backed up as usual.
    own = [b["Name"] for b in s3_inspect.list_buckets()["Buckets"] if b["Name"].startswith(bucket_prefix)]
    assert len(own) >= 1 and foreign not in own
    assert any(all_keys(s3_inspect, b) for b in own)


def test_a_cache_bucket_of_another_account_skips_the_snapshot_and_fails_the_run(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tif").write_bytes(b"image")
    # The default cache bucket, `<prefix>cache-<hash of the prefix>`, held by another account.
    foreign = f"{bucket_prefix}cache-{hashlib.sha256(bucket_prefix.encode()).hexdigest()[:8]}"
    other = make_foreign_bucket(moto_endpoint, foreign)
    cache = tmp_path / "cache"
    cache.mkdir()
    write_config(cache, moto_endpoint, folders=[str(data)], bucket_prefix=bucket_prefix)

    result = as_aws(cache, moto_endpoint)

    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "another AWS account" in line]
    assert len(lines) == 1 and "backup.cache_bucket" in lines[0], result.stderr
    assert all_keys(other, foreign) == []


@pytest.fixture(scope="module")
def locked_endpoint() -> Iterator[str]:
    """moto denying every other account's bucket (AccessDenied), as AWS does."""
    with moto_server(
        AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS="false"
    ) as url:
        yield url


def test_a_denied_bucket_of_another_account_fails_its_target_alone_even_as_the_endpoint_probe(
    tmp_path: Path, locked_endpoint: str, bucket_prefix: str
) -> None:
    theirs, ours = tmp_path / "a-theirs", tmp_path / "b-ours"
    for root in (theirs, ours):
        root.mkdir()
        (root / "a.tif").write_bytes(b"image " + root.name.encode())
    foreign = f"{bucket_prefix}denied"
    other = make_foreign_bucket(locked_endpoint, foreign)
    cache = tmp_path / "cache"
    cache.mkdir()
    # The first target's bucket is the endpoint probe's.
    write_config(
        cache,
        locked_endpoint,
        folders=[{"path": str(theirs), "bucket": foreign}, str(ours)],
        bucket_prefix=bucket_prefix,
    )

    result = as_aws(cache, locked_endpoint)

    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "another AWS account" in line]
    assert len(lines) == 1 and foreign in lines[0], result.stderr
    assert all_keys(other, foreign) == []
    mine = boto3.client(
        "s3",
        endpoint_url=locked_endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    own = [b["Name"] for b in mine.list_buckets()["Buckets"] if b["Name"].startswith(bucket_prefix)]
    assert foreign not in own and any(all_keys(mine, b) for b in own), own


def test_a_pinned_bucket_that_another_account_shares_is_used_as_chosen(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    """A central backup account's bucket, named by the operator, is not a collision."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tif").write_bytes(b"image")
    shared = f"{bucket_prefix}central"
    other = make_foreign_bucket(moto_endpoint, shared)
    cache = tmp_path / "cache"
    cache.mkdir()
    write_config(cache, moto_endpoint, folders=[{"path": str(data), "bucket": shared}], bucket_prefix=bucket_prefix)

    result = as_aws(cache, moto_endpoint)

    assert result.returncode == 0, result.stderr
    assert len(all_keys(other, shared)) == 1
