"""The fault-injecting S3 proxy does what the fault tests will rely on, with real clients against moto.

Each fault mode is shown through the client's own eyes (which error, whether retries get through) and
through moto's (what was really stored or deleted), so a later test failure points at the tool, not here.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.retries.standard import ExponentialBackoff
from conftest import ACCESS_KEY, REGION, SECRET_KEY
from s3proxy import (
    DeleteKeyErrors,
    ErrorReply,
    ProxyServer,
    ResetBody,
    Stall,
    access_denied,
    internal_error,
    s3_operation,
    slow_down,
)

MIB = 1024 * 1024
CLIENT_KW: dict[str, Any] = {
    "aws_access_key_id": ACCESS_KEY,
    "aws_secret_access_key": SECRET_KEY,
    "region_name": REGION,
}


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[ProxyServer]:
    """conftest's `proxy`, seeded: the probabilistic faults here (slow_down(0.2), internal_error(0.125))
    draw from the proxy's RNG, and their expectations were written against seed 1234."""
    with ProxyServer(moto_endpoint, seed=1234) as p:
        yield p


def make_boto3(url: str, max_attempts: int = 5, read_timeout_s: float = 10) -> Any:
    """A boto3 client; `max_attempts` counts all attempts (botocore's own `max_attempts` counts retries)."""
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        read_timeout=read_timeout_s,
        connect_timeout=2,
    )
    return boto3.client("s3", endpoint_url=url, config=config, **CLIENT_KW)


def aio_client(url: str, max_attempts: int = 5, read_timeout_s: float = 10, pool: int = 10) -> Any:
    """An aiobotocore client context manager, configured like the tool's own."""
    config = AioConfig(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        read_timeout=read_timeout_s,
        connect_timeout=2,
        max_pool_connections=pool,
    )
    return get_session().create_client("s3", endpoint_url=url, config=config, **CLIENT_KW)


def new_bucket(s3_inspect: Any, name: str) -> str:
    s3_inspect.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# Recording


def test_records_operation_names_for_a_typical_sequence(proxy: ProxyServer, bucket_prefix: str) -> None:
    """A backup run's request mix is recorded with botocore's operation names, bucket and decoded key."""
    s3 = make_boto3(proxy.url)
    bucket = bucket_prefix + "rec"
    odd_key = "dir with space/ü+%41?&=.jpg"  # percent-encoding must reach moto untouched
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "old-versions",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 180},
                }
            ]
        },
    )
    s3.head_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=odd_key, Body=b"img", StorageClass="DEEP_ARCHIVE")
    s3.head_object(Bucket=bucket, Key=odd_key)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [odd_key]
    up = s3.create_multipart_upload(Bucket=bucket, Key="big.tif")
    part = s3.upload_part(Bucket=bucket, Key="big.tif", UploadId=up["UploadId"], PartNumber=1, Body=b"x")
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big.tif",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    up2 = s3.create_multipart_upload(Bucket=bucket, Key="gone.tif")
    assert len(s3.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 1
    s3.abort_multipart_upload(Bucket=bucket, Key="gone.tif", UploadId=up2["UploadId"])
    assert s3.get_object(Bucket=bucket, Key="big.tif")["Body"].read() == b"x"
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": odd_key}]})

    assert proxy.ops() == [
        "CreateBucket",
        "PutBucketVersioning",
        "PutBucketLifecycleConfiguration",
        "HeadBucket",
        "PutObject",
        "HeadObject",
        "ListObjectsV2",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "CreateMultipartUpload",
        "ListMultipartUploads",
        "AbortMultipartUpload",
        "GetObject",
        "DeleteObjects",
    ]
    records = proxy.wait_done()
    assert all(r.done and r.fault is None and r.bucket == bucket for r in records)
    assert [r.status for r in records if r.op != "AbortMultipartUpload"] == [200] * 14
    assert next(r.status for r in records if r.op == "AbortMultipartUpload") == 204
    assert records[4].key == odd_key
    assert proxy.count("CreateMultipartUpload") == 2
    proxy.clear()
    assert proxy.requests == []


@pytest.mark.parametrize(
    ("method", "key", "query", "copy", "expected"),
    [
        ("GET", None, {}, False, "ListObjects"),
        ("GET", None, {"versions": ""}, False, "ListObjectVersions"),
        ("GET", None, {"versioning": ""}, False, "GetBucketVersioning"),
        ("DELETE", None, {"lifecycle": ""}, False, "DeleteBucketLifecycle"),
        ("DELETE", None, {}, False, "DeleteBucket"),
        ("PUT", "k", {}, True, "CopyObject"),
        ("PUT", "k", {"partNumber": "2", "uploadId": "u"}, True, "UploadPartCopy"),
        ("GET", "k", {"uploadId": "u"}, False, "ListParts"),
        ("POST", "k", {"restore": ""}, False, "RestoreObject"),
        ("PUT", "k", {"tagging": ""}, False, "PutObjectTagging"),
        ("DELETE", "k", {}, False, "DeleteObject"),
    ],
)
def test_operation_names_of_less_common_requests(
    method: str, key: str | None, query: dict[str, str], copy: bool, expected: str
) -> None:
    assert s3_operation(method, "bucket", key, query, copy) == expected


async def test_signatures_survive_the_proxy(moto_checking_signatures: tuple[str, dict[str, str]]) -> None:
    """Host and the raw path reach moto as signed: a verifying moto accepts odd keys, rejects a bad secret."""
    url, keys = moto_checking_signatures
    odd_key = "2024/ü ß/a+b%20c&d=e~(1).jpg"
    async with ProxyServer(url) as proxy:
        session = get_session()
        async with session.create_client("s3", endpoint_url=proxy.url, **keys) as s3:
            await s3.create_bucket(Bucket="signed", CreateBucketConfiguration={"LocationConstraint": REGION})
            await s3.put_object(Bucket="signed", Key=odd_key, Body=b"signed body")
            got = await s3.get_object(Bucket="signed", Key=odd_key)
            assert await got["Body"].read() == b"signed body"
            reply = await s3.delete_objects(Bucket="signed", Delete={"Objects": [{"Key": odd_key}]})
            assert [d["Key"] for d in reply["Deleted"]] == [odd_key]
        bad = {**keys, "aws_secret_access_key": "not-the-secret"}
        async with session.create_client("s3", endpoint_url=proxy.url, **bad) as s3:
            with pytest.raises(botocore.exceptions.ClientError) as info:
                await s3.list_objects_v2(Bucket="signed")
        assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


# --------------------------------------------------------------------------------------------------
# Error replies


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink botocore's retry sleeps tenfold; which errors are retried, and how often, is untouched.

    Standard mode sleeps rand(0, 2**(attempt-1)) s, so one unlucky chain of three SlowDowns costs
    seconds.
    """
    original = ExponentialBackoff.delay_amount

    def delay_amount(self: ExponentialBackoff, context: Any) -> float:
        return float(original(self, context)) / 10

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", delay_amount)


@pytest.mark.usefixtures("fast_backoff")
async def test_error_share_matches_and_standard_retries_get_through(
    proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str
) -> None:
    """About 30 % of PutObject attempts get 503/500; standard-mode retries still store every object."""
    bucket = new_bucket(s3_inspect, bucket_prefix + "err")
    proxy.set_faults(slow_down(0.2, ops={"PutObject"}), internal_error(0.125, ops={"PutObject"}))
    async with aio_client(proxy.url, max_attempts=10, pool=40) as s3:
        # Concurrent, so the retries' backoff sleeps overlap and the test stays fast.
        await asyncio.gather(*(s3.put_object(Bucket=bucket, Key=f"k{i:02d}", Body=b"v") for i in range(40)))

    puts = [r for r in proxy.requests if r.op == "PutObject"]
    faulted = [r for r in puts if r.fault == "error"]
    assert 0.15 <= len(faulted) / len(puts) <= 0.45
    assert {r.status for r in faulted} == {503, 500}
    assert proxy.count("PutObject", status=200) == 40
    assert s3_inspect.list_objects_v2(Bucket=bucket)["KeyCount"] == 40


def test_error_reply_is_a_proper_s3_error(proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str) -> None:
    """botocore parses the XML body: the code reaches the caller once retries are exhausted."""
    bucket = new_bucket(s3_inspect, bucket_prefix + "xml")
    proxy.set_faults(slow_down())
    s3 = make_boto3(proxy.url, max_attempts=2)
    # A file-like body makes botocore send `Expect: 100-continue`: the error must come instead of 100.
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=bucket, Key="k", Body=io.BytesIO(b"x" * MIB))
    assert info.value.response["Error"]["Code"] == "SlowDown"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert proxy.count("PutObject", faulted=True) == 2
    # `max_hits`: the first attempt fails, the retry succeeds, with a client that sent its whole body.
    proxy.set_faults(internal_error(max_hits=1))
    s3.put_object(Bucket=bucket, Key="k", Body=b"y" * MIB)
    assert [r.status for r in proxy.requests[-2:]] == [500, 200]
    assert s3_inspect.get_object(Bucket=bucket, Key="k")["Body"].read() == b"y" * MIB


async def test_upload_part_of_one_key_fails_deterministically(
    moto_endpoint: str, s3_inspect: Any, bucket_prefix: str
) -> None:
    """Every UploadPart of one key answers 500, other keys pass: the multipart-abort scenario.

    Also shows the proxy as an async context manager in the test's own loop.
    """
    bucket = new_bucket(s3_inspect, bucket_prefix + "mpu")
    async with ProxyServer(moto_endpoint) as proxy, aio_client(proxy.url, max_attempts=2) as s3:
        proxy.set_faults(
            ErrorReply(
                status=500,
                code="InternalError",
                ops={"UploadPart"},
                keys={"doomed.tif"},
            )
        )
        for key in ("fine.tif", "doomed.tif"):
            up = await s3.create_multipart_upload(Bucket=bucket, Key=key)
            try:
                part = await s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"p")
            except botocore.exceptions.ClientError as exc:
                assert key == "doomed.tif"
                assert exc.response["Error"]["Code"] == "InternalError"
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])
                continue
            await s3.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=up["UploadId"],
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
            )
        assert [(r.op, r.key, r.status) for r in proxy.requests if r.op == "UploadPart"] == [
            ("UploadPart", "fine.tif", 200),
            ("UploadPart", "doomed.tif", 500),
            ("UploadPart", "doomed.tif", 500),
        ]
        assert proxy.count("AbortMultipartUpload", status=204) == 1
    assert [o["Key"] for o in s3_inspect.list_objects_v2(Bucket=bucket)["Contents"]] == ["fine.tif"]
    assert "Uploads" not in s3_inspect.list_multipart_uploads(Bucket=bucket)


# --------------------------------------------------------------------------------------------------
# Connection faults


def test_reset_mid_body_is_a_connection_error_and_retried(
    proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str
) -> None:
    """Half the body is read, then the connection dies; botocore retries and the retry lands."""
    bucket = new_bucket(s3_inspect, bucket_prefix + "rst")
    body = os.urandom(MIB)
    proxy.set_faults(ResetBody(fraction=0.5, ops={"PutObject"}))
    with pytest.raises(botocore.exceptions.HTTPClientError):
        make_boto3(proxy.url, max_attempts=1).put_object(Bucket=bucket, Key="k", Body=body)
    (first,) = proxy.requests
    assert (first.fault, first.status, first.request_bytes) == ("reset", None, MIB // 2)

    proxy.clear()
    proxy.set_faults(ResetBody(fraction=0.5, max_hits=1))
    make_boto3(proxy.url, max_attempts=3).put_object(Bucket=bucket, Key="k", Body=io.BytesIO(body))
    assert [(r.fault, r.status) for r in proxy.requests] == [("reset", None), (None, 200)]
    assert sha(s3_inspect.get_object(Bucket=bucket, Key="k")["Body"].read()) == sha(body)


async def test_reset_in_aiobotocore(proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str) -> None:
    """aiobotocore sees a reset as a connection error, but only after aiohttp's own silent retry.

    aiohttp's ClientSession replays an idempotent request (GET, HEAD, PUT, DELETE) once after a
    dropped connection, below botocore's retry logic: one attempt of the client costs two resets.
    """
    bucket = new_bucket(s3_inspect, bucket_prefix + "rs0")
    proxy.set_faults(ResetBody(fraction=0, ops={"HeadBucket"}))
    async with aio_client(proxy.url, max_attempts=1) as s3:
        with pytest.raises(botocore.exceptions.HTTPClientError):
            await s3.head_bucket(Bucket=bucket)
    assert [(r.op, r.fault, r.status) for r in proxy.requests] == [("HeadBucket", "reset", None)] * 2

    proxy.clear()
    body = os.urandom(MIB)
    proxy.set_faults(ResetBody(fraction=0.5, ops={"PutObject"}, max_hits=3))
    async with aio_client(proxy.url, max_attempts=3) as s3:
        await s3.put_object(Bucket=bucket, Key="k", Body=body)
    assert [(r.fault, r.status, r.request_bytes) for r in proxy.requests] == [
        ("reset", None, MIB // 2),
        ("reset", None, MIB // 2),
        ("reset", None, MIB // 2),
        (None, 200, MIB),
    ]
    assert sha(s3_inspect.get_object(Bucket=bucket, Key="k")["Body"].read()) == sha(body)


async def test_stall_trips_the_read_timeout(proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str) -> None:
    """A stalled reply ends in ReadTimeoutError; with `forward=True` moto did store the object."""
    bucket = new_bucket(s3_inspect, bucket_prefix + "stl")
    proxy.set_faults(Stall(seconds=5, forward=True, ops={"PutObject"}))
    started = time.monotonic()
    async with aio_client(proxy.url, max_attempts=1, read_timeout_s=0.5) as s3:
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            await s3.put_object(Bucket=bucket, Key="k", Body=b"written anyway")
    assert time.monotonic() - started < 3
    assert s3_inspect.get_object(Bucket=bucket, Key="k")["Body"].read() == b"written anyway"
    assert proxy.requests[0].fault == "stall"

    proxy.set_faults(Stall(seconds=5, max_hits=1))
    async with aio_client(proxy.url, max_attempts=3, read_timeout_s=0.5) as s3:
        await s3.put_object(Bucket=bucket, Key="k2", Body=b"second try")
    assert [(r.fault, r.status) for r in proxy.requests[1:]] == [("stall", None), (None, 200)]


# --------------------------------------------------------------------------------------------------
# DeleteObjects per-key errors


@pytest.mark.parametrize("quiet", [False, True])
def test_delete_objects_reports_per_key_errors(
    proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str, quiet: bool
) -> None:
    """The reply carries `Errors` for some keys while the call succeeds; moto still deleted them all."""
    bucket = new_bucket(s3_inspect, bucket_prefix + ("dq" if quiet else "dl"))
    keys = [f"img/{i:02d}.jpg" for i in range(20)] + ["a&b <c>.jpg"]
    for key in keys:
        s3_inspect.put_object(Bucket=bucket, Key=key, Body=b"x")
    proxy.set_faults(DeleteKeyErrors(key_share=0.3, error_keys={"a&b <c>.jpg"}))
    s3 = make_boto3(proxy.url)
    reply = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": quiet})
    errors = {e["Key"]: e["Code"] for e in reply["Errors"]}
    deleted = {d["Key"] for d in reply.get("Deleted", [])}
    assert "a&b <c>.jpg" in errors
    assert 3 <= len(errors) <= 15
    assert set(errors.values()) == {"InternalError"}
    # moto 5.2 ignores Quiet and lists every deleted key; either way no key is both deleted and failed.
    assert deleted == set(keys) - set(errors)
    assert proxy.requests[0].fault == "delete_errors"
    # The documented choice: the request went through unchanged, so the "failed" keys are gone too.
    assert s3_inspect.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


# --------------------------------------------------------------------------------------------------
# Large bodies


async def test_large_bodies_pass_intact(proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str) -> None:
    """6 MiB PutObject and multipart parts stream through both ways byte for byte (aiobotocore)."""
    bucket = new_bucket(s3_inspect, bucket_prefix + "big")
    single = os.urandom(6 * MIB)
    parts = [os.urandom(6 * MIB), os.urandom(MIB)]
    async with aio_client(proxy.url) as s3:
        await s3.put_object(Bucket=bucket, Key="single", Body=single)
        up = await s3.create_multipart_upload(Bucket=bucket, Key="multi")
        etags = [
            (await s3.upload_part(Bucket=bucket, Key="multi", UploadId=up["UploadId"], PartNumber=n, Body=data))["ETag"]
            for n, data in enumerate(parts, 1)
        ]
        await s3.complete_multipart_upload(
            Bucket=bucket,
            Key="multi",
            UploadId=up["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
        )
        got_single = await (await s3.get_object(Bucket=bucket, Key="single"))["Body"].read()
        got_multi = await (await s3.get_object(Bucket=bucket, Key="multi"))["Body"].read()
    assert sha(got_single) == sha(single)
    assert sha(got_multi) == sha(b"".join(parts))
    assert [r.request_bytes for r in proxy.requests if r.op == "UploadPart"] == [6 * MIB, MIB]


def test_boto3_transfer_manager_through_proxy(proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str) -> None:
    """boto3's threaded multipart upload (file-like parts, `Expect: 100-continue`) passes intact."""
    bucket = new_bucket(s3_inspect, bucket_prefix + "xfer")
    data = os.urandom(11 * MIB)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=3)
    make_boto3(proxy.url).upload_fileobj(io.BytesIO(data), bucket, "x.tif", Config=config)
    assert proxy.count("UploadPart", status=200) == 3
    assert sha(s3_inspect.get_object(Bucket=bucket, Key="x.tif")["Body"].read()) == sha(data)


# --------------------------------------------------------------------------------------------------
# Fail-fast modes


def test_fail_everything_from_a_subprocess(proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str) -> None:
    """A CLI in a subprocess goes through the thread-hosted proxy; 403 for all is not retried."""
    bucket = new_bucket(s3_inspect, bucket_prefix + "sub")
    script = (
        "import boto3, sys\n"
        f"s3 = boto3.client('s3', endpoint_url={proxy.url!r}, region_name={REGION!r},\n"
        f"    aws_access_key_id={ACCESS_KEY!r}, aws_secret_access_key={SECRET_KEY!r})\n"
        f"s3.put_object(Bucket={bucket!r}, Key=sys.argv[1], Body=b'cli')\n"
    )

    def run(key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", script, key], capture_output=True, text=True, timeout=60)

    assert run("ok.txt").returncode == 0
    proxy.set_faults(access_denied())
    failed = run("denied.txt")
    assert failed.returncode != 0
    assert "InvalidAccessKeyId" in failed.stderr
    assert [(r.key, r.status) for r in proxy.requests] == [("ok.txt", 200), ("denied.txt", 403)]
    assert [o["Key"] for o in s3_inspect.list_objects_v2(Bucket=bucket)["Contents"]] == ["ok.txt"]


def test_stopped_proxy_refuses_and_restarts_on_the_same_port(proxy: ProxyServer) -> None:
    """`stop()` gives "connection refused"; `start()` serves the same URL again."""
    url = proxy.url
    proxy.stop()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        make_boto3(url, max_attempts=1).list_buckets()
    proxy.start()
    assert proxy.url == url
    make_boto3(url, max_attempts=1).list_buckets()
    assert proxy.ops() == ["ListBuckets"]
