"""The fast PUT path on the endpoints and credentials operators use: HTTPS with a private CA,
virtual-hosted buckets, temporary credentials that change during the run, a pool that never makes
a request wait into a connect timeout, and one clear error for a wrong region or a skewed clock."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REGION, CAFiles, all_keys, clean_aws_env, error_lines, key_of, run_cli, write_config
from connectproxy import ConnectProxy
from s3proxy import Delay, ErrorReply, ProxyServer

from async_backup.recovery.oldscript import LEGACY_CACHE_BUCKET
from async_backup.s3.client import open_s3
from async_backup.settings.config import AwsSettings, Tuning
from async_backup.settings.naming import stable_bucket_name

MiB = 1024 * 1024


def small_tree(root: Path, count: int = 30, big_bytes: int = 0) -> list[Path]:
    paths = []
    for i in range(count):
        path = root / f"d{i % 3}" / f"f {i}+x.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i + 1))
        paths.append(path)
    if big_bytes:
        big = root / "big.tif"
        big.write_bytes(os.urandom(big_bytes))
        paths.append(big)
    return paths


def without_keys(config: Path) -> None:
    doc = json.loads(config.read_text())
    del doc["aws"]["access_key"], doc["aws"]["secret_access_key"]
    config.write_text(json.dumps(doc))


# --------------------------------------------------------------------------------------------------
# HTTPS with a private CA


@pytest.mark.parametrize("trust", ["AWS_CA_BUNDLE", "aws.ca_bundle"])
def test_a_private_ca_is_trusted_by_every_request(
    tmp_path: Path, moto_tls_endpoint: str, test_ca: CAFiles, s3_tls_inspect: Any, bucket_prefix: str, trust: str
) -> None:
    root = tmp_path / "tree"
    paths = small_tree(root, big_bytes=11 * MiB)  # small PutObjects and three UploadParts
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_tls_endpoint,
        folders=[str(root)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5},
        aws_extra={"ca_bundle": test_ca.ca_pem} if trust == "aws.ca_bundle" else {},
    )
    env = clean_aws_env(**({"AWS_CA_BUNDLE": test_ca.ca_pem} if trust == "AWS_CA_BUNDLE" else {}))
    result = run_cli("--cache", str(cache), env=env)
    assert result.returncode == 0, result.stderr
    bucket = stable_bucket_name(bucket_prefix, str(root))
    assert all_keys(s3_tls_inspect, bucket) == sorted(key_of(p) for p in paths)


def test_an_untrusted_certificate_is_one_fatal_line(tmp_path: Path, moto_tls_endpoint: str, bucket_prefix: str) -> None:
    root = tmp_path / "tree"
    small_tree(root)
    cache = tmp_path / "cache"
    write_config(cache, moto_tls_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    began = time.monotonic()
    result = run_cli("--cache", str(cache), env=clean_aws_env())
    took_s = time.monotonic() - began
    assert result.returncode == 1
    assert took_s < 10, f"took {took_s:.1f} s"
    assert "Traceback" not in result.stderr
    lines = [ln for ln in error_lines(result.stderr) if "certificate" in ln]
    assert lines, result.stderr
    assert moto_tls_endpoint in lines[0] and "aws.ca_bundle" in lines[0] and "AWS_CA_BUNDLE" in lines[0]
    assert len(error_lines(result.stderr)) <= 2, result.stderr  # the error and its failure line


# --------------------------------------------------------------------------------------------------
# Virtual-hosted addressing, end to end


def test_virtual_hosted_buckets_over_https(
    tmp_path: Path, moto_tls_endpoint: str, test_ca: CAFiles, s3_tls_inspect: Any, bucket_prefix: str
) -> None:
    """bucket.s3.localhost reaches moto through a CONNECT proxy (the test's resolver); moto routes
    by the Host header, so a wrong host would put objects in the wrong bucket or nowhere."""
    root = tmp_path / "tree"
    paths = small_tree(root, count=10, big_bytes=11 * MiB)
    cache = tmp_path / "cache"
    port = int(moto_tls_endpoint.rsplit(":", 1)[1])
    write_config(
        cache,
        f"https://s3.localhost:{port}",
        folders=[str(root)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5},
        aws_extra={"addressing_style": "virtual", "ca_bundle": test_ca.ca_pem},
    )
    bucket = stable_bucket_name(bucket_prefix, str(root))
    with ConnectProxy(port) as proxy:
        env = clean_aws_env(HTTPS_PROXY=proxy.url, https_proxy=proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            env.pop(name, None)
        result = run_cli("--cache", str(cache), "--no-cache-backup", env=env)
        hosts = set(proxy.hosts)
    assert result.returncode == 0, result.stderr
    # A cache that never ran first looks for the old script's caches (adoption), by its bucket's host too.
    assert f"{bucket}.s3.localhost" in hosts, hosts
    assert hosts <= {f"{bucket}.s3.localhost", f"{LEGACY_CACHE_BUCKET}.s3.localhost"}, hosts
    assert all_keys(s3_tls_inspect, bucket) == sorted(key_of(p) for p in paths)


# --------------------------------------------------------------------------------------------------
# Temporary credentials


CREDENTIAL_PROCESS = r"""
import datetime, json, sys
from pathlib import Path
counter = Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
# Inside botocore's 15-minute advisory window one second from now: refreshed about every second.
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=15, seconds=1)
print(json.dumps({
    "Version": 1,
    "AccessKeyId": f"ASIATEMPORARY{n:07d}",
    "SecretAccessKey": f"temporary-secret-{n}",
    "SessionToken": f"session-token-{n}",
    "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
}))
"""


@pytest.mark.slow
def test_credentials_that_change_during_the_run_sign_every_put(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str
) -> None:
    root = tmp_path / "tree"
    paths = small_tree(root, count=400, big_bytes=11 * MiB)
    cache = tmp_path / "cache"
    config = write_config(
        cache,
        "",
        folders=[str(root)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5, "workers": 8},
    )
    script = tmp_path / "creds.py"
    script.write_text(CREDENTIAL_PROCESS)
    counter = tmp_path / "invocations"
    aws_config = tmp_path / "aws-config"
    aws_config.write_text(f"[profile backup]\ncredential_process = {sys.executable} {script} {counter}\n")
    with ProxyServer(moto_endpoint) as proxy:
        doc = json.loads(config.read_text())
        doc["aws"]["endpoint_url"] = proxy.url
        config.write_text(json.dumps(doc))
        without_keys(config)
        env = clean_aws_env(
            AWS_CONFIG_FILE=str(aws_config),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
            AWS_PROFILE="backup",
        )
        result = run_cli("--cache", str(cache), "--no-cache-backup", env=env)
        records = proxy.wait_done()
    assert result.returncode == 0, result.stderr
    assert all_keys(s3_inspect, stable_bucket_name(bucket_prefix, str(root))) == sorted(key_of(p) for p in paths)
    puts = [r for r in records if r.op in ("PutObject", "UploadPart")]
    assert len(puts) == 403
    assert all(r.security_token and r.access_key and r.access_key.startswith("ASIATEMPORARY") for r in puts)
    assert all("botocore" not in r.user_agent.lower() for r in puts), "the PUTs did not take the fast path"
    used = {r.access_key for r in puts}
    assert len(used) >= 2, used
    assert all(r.security_token == f"session-token-{int(r.access_key[-7:])}" for r in puts if r.access_key)
    assert int(counter.read_text()) >= len(used)


def test_environment_credentials_with_a_session_token_take_the_fast_path(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    root = tmp_path / "tree"
    small_tree(root, count=5)
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        config = write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix)
        without_keys(config)
        env = clean_aws_env(
            AWS_ACCESS_KEY_ID="ASIAENVIRONMENT00001",
            AWS_SECRET_ACCESS_KEY="environment-secret",
            AWS_SESSION_TOKEN="environment-token",
            AWS_CONFIG_FILE=str(tmp_path / "none"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        )
        result = run_cli("--cache", str(cache), "--no-cache-backup", env=env)
        puts = [r for r in proxy.wait_done() if r.op == "PutObject"]
    assert result.returncode == 0, result.stderr
    assert len(puts) == 5
    assert all(r.access_key == "ASIAENVIRONMENT00001" and r.security_token == "environment-token" for r in puts)
    assert all("botocore" not in r.user_agent.lower() for r in puts), "the PUTs did not take the fast path"


# --------------------------------------------------------------------------------------------------
# A bucket in another region, a skewed clock


REGION_REPLIES = {
    "PermanentRedirect": ErrorReply(
        status=301,
        code="PermanentRedirect",
        message="The bucket you are attempting to access must be addressed using the specified endpoint.",
        extra_xml=(("Endpoint", "bucket.s3.us-west-2.amazonaws.com"), ("Bucket", "bucket")),
        headers=(("x-amz-bucket-region", "us-west-2"),),
        ops={"PutObject"},
    ),
    "AuthorizationHeaderMalformed": ErrorReply(
        status=400,
        code="AuthorizationHeaderMalformed",
        message=f"The authorization header is malformed; the region '{REGION}' is wrong; expecting 'us-west-2'",
        extra_xml=(("Region", "us-west-2"),),
        ops={"PutObject"},
    ),
}


@pytest.mark.parametrize("code", sorted(REGION_REPLIES))
def test_a_bucket_in_another_region_is_one_error_naming_its_region(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, code: str
) -> None:
    root = tmp_path / "tree"
    small_tree(root, count=50)
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(REGION_REPLIES[code])
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, tuning={"workers": 4})
        result = run_cli("--cache", str(cache), "--no-cache-backup")
        sent = proxy.count("PutObject")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [ln for ln in error_lines(result.stderr) if "us-west-2" in ln]
    assert lines and "set aws.region to us-west-2" in lines[0], result.stderr
    assert len(error_lines(result.stderr)) <= 2, result.stderr
    assert sent <= 4, f"{sent} PutObject requests after the first region error"


def test_a_skewed_clock_is_one_fatal_line_saying_by_how_much(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    root = tmp_path / "tree"
    small_tree(root, count=50)
    cache = tmp_path / "cache"
    skewed = ErrorReply(
        status=403,
        code="RequestTimeTooSkewed",
        message="The difference between the request time and the current time is too large.",
        extra_xml=(
            ("RequestTime", "20261201T124500Z"),
            ("ServerTime", "2026-12-01T12:00:00Z"),
            ("MaxAllowedSkewMilliseconds", "900000"),
        ),
        ops={"PutObject"},
    )
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(skewed)
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, tuning={"workers": 4})
        began = time.monotonic()
        result = run_cli("--cache", str(cache), "--no-cache-backup")
        took_s = time.monotonic() - began
        sent = proxy.count("PutObject")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [ln for ln in error_lines(result.stderr) if "clock is off by 2700 s" in ln]
    assert lines, result.stderr
    assert len(error_lines(result.stderr)) <= 2, result.stderr
    assert sent <= 4 and took_s < 20


# --------------------------------------------------------------------------------------------------
# The connection pool


async def test_the_pool_holds_workers_plus_parts_and_waiting_is_no_connect_timeout(moto_endpoint: str) -> None:
    aws = AwsSettings("AKIDEXAMPLE", "secret", REGION, moto_endpoint)
    tuning = Tuning(workers=7, parts_in_flight=3, connect_timeout_s=2.5, read_timeout_s=40)
    async with open_s3(aws, tuning) as s3:
        assert s3.fast_path is not None
        session = s3.fast_path.session
        assert session.connector is not None and session.connector.limit == 10
        assert session.timeout.connect is None
        assert session.timeout.sock_connect == 2.5 and session.timeout.sock_read == 40


@pytest.mark.slow
def test_parts_in_flight_beyond_the_workers_never_wait_into_a_connect_timeout(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str
) -> None:
    """One worker, eight slow parts at once, a 0.5 s connect timeout and no retries: a part that
    waited for a pooled connection would fail as a connect timeout."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "big.tif").write_bytes(os.urandom(40 * MiB))
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(Delay(seconds=1.5, ops={"UploadPart"}))
        write_config(
            cache,
            proxy.url,
            folders=[str(root)],
            bucket_prefix=bucket_prefix,
            tuning={
                "workers": 1,
                "parts_in_flight": 8,
                "multipart_threshold_mib": 5,
                "part_size_mib": 5,
                "connect_timeout_s": 0.5,
                "max_attempts": 1,
            },
        )
        result = run_cli("--cache", str(cache), "--no-cache-backup")
        parts = proxy.count("UploadPart")
    assert result.returncode == 0, result.stderr
    assert parts == 8
    assert all_keys(s3_inspect, stable_bucket_name(bucket_prefix, str(root))) == [key_of(root / "big.tif")]


def test_a_ca_bundle_that_is_not_a_file_is_a_config_error(tmp_path: Path) -> None:
    from async_backup.errors import ConfigError
    from async_backup.settings.config import parse_config

    missing = tmp_path / "no-such-ca.pem"
    doc = {"backup": {"folders": [str(tmp_path)]}, "aws": {"ca_bundle": str(missing)}}
    with pytest.raises(ConfigError, match=r"aws\.ca_bundle .*not a file"):
        parse_config(doc, tmp_path / "config.json")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    doc["aws"]["ca_bundle"] = str(tmp_path / "ca.pem")
    assert parse_config(doc, tmp_path / "config.json").aws.ca_bundle == str(tmp_path / "ca.pem")
