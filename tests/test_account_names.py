"""Default bucket names on AWS carry the account's tag, so two organisations with the same defaults
and the same paths never meet on one bucket; buckets already in use keep their names.

Runs are configured as on AWS (no aws.endpoint_url, no backup.bucket_prefix), their S3 and STS
requests sent to moto by botocore (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_STS). moto answers STS
GetCallerIdentity on the same port; its default account is 123456789012, and an IAM user's keys
made in another account (the `x-moto-account-id` header) act in that account, for S3 and STS alike.
Each test has a moto server of its own: the default names are the same in every test.
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
from conftest import ACCESS_KEY, REGION, SECRET_KEY, all_keys, free_port, moto_server, run_cli, write_config

from async_backup.settings.naming import stable_bucket_name

DEFAULT_ACCOUNT = "123456789012"
OTHER_ACCOUNT = "111122223333"


def tag(account: str) -> str:
    return hashlib.sha256(account.encode()).hexdigest()[:8]


def cache_bucket(prefix: str) -> str:
    return f"{prefix}cache-{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"


@pytest.fixture
def aws() -> Iterator[str]:
    with moto_server(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY) as url:
        yield url


def client(endpoint: str, keys: tuple[str, str] = (ACCESS_KEY, SECRET_KEY)) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=keys[0], aws_secret_access_key=keys[1], region_name=REGION
    )


def other_account_keys(endpoint: str) -> tuple[str, str]:
    """Access keys of an IAM user of OTHER_ACCOUNT: moto then answers as that account."""
    iam = boto3.client(
        "iam", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )

    def as_other(request: Any, **_kwargs: Any) -> None:
        request.headers["x-moto-account-id"] = OTHER_ACCOUNT

    iam.meta.events.register("before-sign.iam.*", as_other)
    iam.create_user(UserName="other-org")
    key = iam.create_access_key(UserName="other-org")["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


def configure(cache: Path, endpoint: str, folders: list[str], **aws_extra: Any) -> None:
    """config.json as on AWS with the defaults: no endpoint_url, no bucket_prefix."""
    write_config(cache, endpoint, folders=folders, tuning={"max_attempts": 2}, aws_extra=aws_extra)
    doc = json.loads((cache / "config.json").read_text())
    doc["aws"].pop("endpoint_url")
    (cache / "config.json").write_text(json.dumps(doc))


def run_as_aws(cache: Path, endpoint: str, *args: str, sts: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL_STS": sts or endpoint}
    return run_cli("--cache", str(cache), *args, env=env)


def default_buckets(s3: Any) -> list[str]:
    return sorted(b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("backup-"))


def lose_cache(cache: Path) -> None:
    for f in cache.glob("async-backup.db*"):
        f.unlink()


def uploaded(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if "uploaded" in line]
    return lines[-1] if lines else ""


def test_two_accounts_with_the_same_defaults_and_paths_get_buckets_of_their_own(tmp_path: Path, aws: str) -> None:
    data = tmp_path / "srv" / "images"
    data.mkdir(parents=True)
    (data / "a.tif").write_bytes(b"the same path in two organisations")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    other_keys = other_account_keys(aws)
    configure(ours, aws, [str(data)])
    configure(theirs, aws, [str(data)], access_key=other_keys[0], secret_access_key=other_keys[1])

    first = run_as_aws(ours, aws)
    second = run_as_aws(theirs, aws)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    mine, other = client(aws), client(aws, other_keys)
    our_prefix, their_prefix = f"backup-{tag(DEFAULT_ACCOUNT)}-", f"backup-{tag(OTHER_ACCOUNT)}-"
    our_bucket, their_bucket = stable_bucket_name(our_prefix, str(data)), stable_bucket_name(their_prefix, str(data))
    assert default_buckets(mine) == sorted([our_bucket, cache_bucket(our_prefix)])
    assert default_buckets(other) == sorted([their_bucket, cache_bucket(their_prefix)])
    assert len(all_keys(mine, our_bucket)) == 1
    assert len(all_keys(other, their_bucket)) == 1
    assert all_keys(mine, cache_bucket(our_prefix)) and all_keys(other, cache_bucket(their_prefix))  # snapshots


@pytest.mark.slow
@pytest.mark.parametrize("list_denied", [False, True], ids=["ListBuckets", "HeadBucket-when-ListBuckets-denied"])
def test_an_installation_with_untagged_buckets_keeps_them_after_a_lost_cache(
    tmp_path: Path, aws: str, list_denied: bool
) -> None:
    """Buckets made before default names carried a tag (the same names a prefix of "backup-" gives)
    keep their names; only a folder added now gets a tagged one. Without s3:ListAllMyBuckets the
    run asks HeadBucket with ExpectedBucketOwner instead (moto does not check the owner: ours)."""
    from s3proxy import ErrorReply, ProxyServer

    old, added = tmp_path / "old", tmp_path / "added"
    for folder in (old, added):
        folder.mkdir()
        (folder / "a.tif").write_bytes(b"image " + folder.name.encode())
    cache = tmp_path / "cache"
    configure(cache, aws, [str(old)])
    doc = json.loads((cache / "config.json").read_text())
    doc["backup"]["bucket_prefix"] = "backup-"  # the untagged default names, as the previous rule made them
    (cache / "config.json").write_text(json.dumps(doc))
    assert run_as_aws(cache, aws).returncode == 0
    s3 = client(aws)
    untagged = stable_bucket_name("backup-", str(old))
    assert default_buckets(s3) == sorted([untagged, cache_bucket("backup-")])
    for key in all_keys(s3, cache_bucket("backup-")):  # no snapshot: nothing but the bucket listing tells
        s3.delete_object(Bucket=cache_bucket("backup-"), Key=key)
    lose_cache(cache)
    configure(cache, aws, [str(old), str(added)])  # the default prefix again, and a new folder

    with ProxyServer(aws) as proxy:
        if list_denied:
            proxy.set_faults(ErrorReply(ops={"ListBuckets"}, status=403, code="AccessDenied"))
        result = run_as_aws(cache, proxy.url, sts=aws)
        records = proxy.wait_done()

    assert result.returncode == 0, result.stderr
    assert "1 files uploaded" in uploaded(result) or "1 file uploaded" in uploaded(result), result.stderr
    new = stable_bucket_name(f"backup-{tag(DEFAULT_ACCOUNT)}-", str(added))
    assert default_buckets(s3) == sorted([untagged, new, cache_bucket("backup-")])
    assert len(all_keys(s3, untagged)) == 1 and len(all_keys(s3, new)) == 1
    assert all_keys(s3, cache_bucket("backup-")), "the snapshot goes on into the cache bucket in use"
    heads = {r.bucket for r in records if r.op == "HeadBucket"}
    if list_denied:  # one HeadBucket per name asked about: the two untagged data names and cache buckets
        assert {untagged, stable_bucket_name("backup-", str(added)), cache_bucket("backup-")} <= heads, records
    else:
        assert heads == set(), records


@pytest.mark.slow
def test_the_tagged_names_are_found_again_from_the_credentials_alone(tmp_path: Path, aws: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tif").write_bytes(b"image")
    cache = tmp_path / "cache"
    configure(cache, aws, [str(data)])
    assert run_as_aws(cache, aws).returncode == 0
    s3 = client(aws)
    prefix = f"backup-{tag(DEFAULT_ACCOUNT)}-"
    buckets = default_buckets(s3)
    assert buckets == sorted([stable_bucket_name(prefix, str(data)), cache_bucket(prefix)])
    (data / "b.tif").write_bytes(b"another image")
    closed = f"http://127.0.0.1:{free_port()}"

    # A second run needs no STS request: the cache knows its names.
    second = run_as_aws(cache, aws, sts=closed)
    assert second.returncode == 0, second.stderr
    assert "STS" not in second.stderr, second.stderr

    # A lost cache (another machine with the same config.json and credentials): the same names,
    # its rows from the snapshot, nothing uploaded again.
    lose_cache(cache)
    lost = run_as_aws(cache, aws)
    assert lost.returncode == 0, lost.stderr
    assert "0 files uploaded" in uploaded(lost), lost.stderr
    assert "snapshot" in lost.stderr, lost.stderr
    assert default_buckets(s3) == buckets
    assert len(all_keys(s3, stable_bucket_name(prefix, str(data)))) == 2


@pytest.mark.slow
def test_without_sts_a_target_that_needs_a_new_name_fails_alone_naming_the_prefix(tmp_path: Path, aws: str) -> None:
    known, new = tmp_path / "known", tmp_path / "new"
    for folder in (known, new):
        folder.mkdir()
        (folder / "a.tif").write_bytes(b"image " + folder.name.encode())
    cache = tmp_path / "cache"
    configure(cache, aws, [str(known)])
    assert run_as_aws(cache, aws).returncode == 0
    s3 = client(aws)
    before = default_buckets(s3)
    (known / "b.tif").write_bytes(b"more")
    configure(cache, aws, [str(known), str(new)])

    # A VPC that reaches S3 through a gateway endpoint only: no route to STS.
    result = run_as_aws(cache, aws, sts=f"http://127.0.0.1:{free_port()}")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "backup.bucket_prefix" in line]
    assert len(lines) == 1 and str(new) in lines[0] and "STS" in lines[0], result.stderr
    assert default_buckets(s3) == before, "no bucket of any name for the new target"
    known_bucket = stable_bucket_name(f"backup-{tag(DEFAULT_ACCOUNT)}-", str(known))
    assert len(all_keys(s3, known_bucket)) == 2, "the target with its recorded name went on"


def test_bucket_already_exists_for_a_generated_name_is_one_line_naming_the_fix(tmp_path: Path, aws: str) -> None:
    """Another account took the name between the run's look and its CreateBucket (S3 answers
    BucketAlreadyExists): that target fails with one line, nothing goes into their bucket."""
    from s3proxy import ErrorReply, ProxyServer

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tif").write_bytes(b"image")
    taken = stable_bucket_name(f"backup-{tag(DEFAULT_ACCOUNT)}-", str(data))
    other_keys = other_account_keys(aws)
    other = client(aws, other_keys)
    other.create_bucket(Bucket=taken, CreateBucketConfiguration={"LocationConstraint": REGION})
    cache = tmp_path / "cache"
    configure(cache, aws, [str(data)])
    with ProxyServer(aws) as proxy:
        # The run's first look finds no such bucket (it did not exist yet, on AWS).
        proxy.set_faults(ErrorReply(ops={"GetBucketVersioning"}, status=404, code="NoSuchBucket", max_hits=1))
        result = run_as_aws(cache, proxy.url, sts=aws)
        records = proxy.wait_done()

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert any(r.op == "CreateBucket" and r.bucket == taken and r.status == 409 for r in records), records
    lines = [line for line in result.stderr.splitlines() if "another AWS account" in line]
    assert len(lines) == 1 and taken in lines[0] and "backup.bucket_prefix" in lines[0], result.stderr
    assert all_keys(other, taken) == []


def test_restore_on_a_new_machine_finds_the_tagged_bucket(tmp_path: Path, aws: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tif").write_bytes(b"the only copy")
    cache = tmp_path / "cache"
    configure(cache, aws, [str(data)])
    assert run_as_aws(cache, aws).returncode == 0
    tagged = stable_bucket_name(f"backup-{tag(DEFAULT_ACCOUNT)}-", str(data))
    assert tagged in default_buckets(client(aws))
    (data / "a.tif").unlink()
    data.rmdir()
    lose_cache(cache)  # a new machine: config.json and the credentials only
    out = tmp_path / "out"
    env = {"AWS_ENDPOINT_URL_S3": aws, "AWS_ENDPOINT_URL_STS": aws}

    def restore() -> subprocess.CompletedProcess[str]:
        return run_cli("restore", str(data), "--to", str(out), "--yes", "--cache", str(cache), env=env)

    asked = restore()  # asks Deep Archive for the retrieval (moto completes it at once)
    assert asked.returncode == 0, asked.stdout + asked.stderr
    done = restore()
    assert done.returncode == 0, done.stdout + done.stderr
    restored = [p for p in out.rglob("a.tif")]
    assert len(restored) == 1 and restored[0].read_bytes() == b"the only copy", done.stdout + done.stderr


def test_a_recorded_default_name_is_recognised_without_asking_aws() -> None:
    from async_backup.settings.naming import account_prefix, account_tag, bucket_name_problem, is_default_name

    path = "/srv/images/" + "a very long folder name/" * 5 + "Parish (A)"
    tagged = stable_bucket_name(account_prefix("backup-", account_tag(DEFAULT_ACCOUNT)), path)
    assert bucket_name_problem(tagged) is None and tagged.startswith(f"backup-{tag(DEFAULT_ACCOUNT)}-")
    assert is_default_name(tagged, "backup-", path)
    assert is_default_name(stable_bucket_name("backup-", path), "backup-", path)
    assert not is_default_name(tagged, "backup-", "/srv/images/other")
    assert not is_default_name(stable_bucket_name("acme-", path), "backup-", path)
