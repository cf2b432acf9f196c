"""The S3 adapter: the only module that imports aiobotocore and botocore.

Owns the client's settings (retries, timeouts, pool size, checksum behaviour) and the mapping of
botocore's exceptions onto ours: per-request failures become `S3Error` with S3's error code;
failures that doom every request (bad credentials, unreachable endpoint) become `FatalError`.
Nothing in here knows about targets, the cache or the plan.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from .config import AwsSettings, Tuning
from .errors import FatalError, S3Error

# Codes after which no other request of this run can succeed.
FATAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "AllAccessDisabled",
    }
)


@dataclass(frozen=True, slots=True)
class PartChecksum:
    """The integrity value sent with one body, which S3 verifies on receipt."""

    algorithm: str  # "crc32" or "md5"
    digest: bytes

    @classmethod
    def of(cls, data: bytes, algorithm: str) -> PartChecksum:
        if algorithm == "crc32":
            return cls("crc32", zlib.crc32(data).to_bytes(4, "big"))
        return cls("md5", hashlib.md5(data, usedforsecurity=False).digest())

    @property
    def b64(self) -> str:
        return base64.b64encode(self.digest).decode("ascii")

    def request_args(self) -> dict[str, str]:
        if self.algorithm == "crc32":
            return {"ChecksumCRC32": self.b64}
        return {"ContentMD5": self.b64}

    def cache_value(self) -> str:
        """What the cache keeps, in the form S3 reports it (base64 CRC32, or the hex ETag)."""
        if self.algorithm == "crc32":
            return f"crc32:{self.b64}"
        return f"md5:{self.digest.hex()}"


def composite_checksum(parts: Sequence[PartChecksum]) -> str:
    """The value S3 stores for a multipart object: a checksum of the part checksums, then -N."""
    algorithm = parts[0].algorithm
    joined = b"".join(p.digest for p in parts)
    whole = PartChecksum.of(joined, algorithm)
    if algorithm == "crc32":
        return f"crc32:{whole.b64}-{len(parts)}"
    return f"md5:{whole.digest.hex()}-{len(parts)}"


def client_config(aws: AwsSettings, tuning: Tuning) -> AioConfig:
    return AioConfig(
        region_name=aws.region,
        # One connection per worker, plus the multipart parts they may have in flight.
        max_pool_connections=tuning.workers + tuning.parts_in_flight + 4,
        # total_max_attempts counts the first try too; botocore's max_attempts would count retries only.
        retries={"mode": "standard", "total_max_attempts": tuning.max_attempts},
        connect_timeout=tuning.connect_timeout_s,
        read_timeout=tuning.read_timeout_s,
        request_checksum_calculation=aws.checksum_calculation,
        response_checksum_validation=aws.checksum_calculation,
        s3={"addressing_style": aws.addressing_style},
        tcp_keepalive=True,
    )


def endpoint_name(aws: AwsSettings) -> str:
    """The endpoint as operators know it, safe for logs (no credentials in it)."""
    return aws.endpoint_url or f"AWS S3 ({aws.region})"


class S3:
    """Thin async wrapper: one method per request the tool sends, errors mapped to ours."""

    def __init__(self, client: Any, aws: AwsSettings) -> None:
        self._client = client
        self.aws = aws
        self.checksum_algorithm = "crc32" if aws.checksum_calculation == "when_supported" else "md5"

    @asynccontextmanager
    async def _mapped(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "Error"))
            message = str(err.get("Message") or "")
            if code in FATAL_CODES:
                raise FatalError(
                    f"S3 at {endpoint_name(self.aws)} refused the credentials ({code}) during {what}; "
                    "check aws.access_key and aws.secret_access_key"
                ) from None
            raise S3Error(code, f"{what}: {message or 'request failed'}") from None
        except NoCredentialsError:
            raise FatalError(
                "no AWS credentials found: set aws.access_key and aws.secret_access_key in config.json "
                "or configure the standard AWS credential chain"
            ) from None
        except EndpointConnectionError:
            raise S3Error("EndpointConnectionError", f"{what}: cannot connect to {endpoint_name(self.aws)}") from None
        except (ConnectionClosedError, ReadTimeoutError) as exc:
            raise S3Error(type(exc).__name__, f"{what}: connection lost or timed out after retries") from None
        except BotoCoreError as exc:
            raise S3Error(type(exc).__name__, f"{what}: {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise S3Error(type(exc).__name__, f"{what}: {exc}") from None

    # Objects

    async def put_object(
        self,
        bucket: str,
        key: str,
        body: bytes,
        *,
        storage_class: str,
        metadata: Mapping[str, str],
        checksum: PartChecksum,
    ) -> None:
        async with self._mapped(f"PutObject {key}"):
            await self._client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                StorageClass=storage_class,
                Metadata=dict(metadata),
                **checksum.request_args(),
            )

    async def create_multipart_upload(
        self, bucket: str, key: str, *, storage_class: str, metadata: Mapping[str, str]
    ) -> str:
        extra = {"ChecksumAlgorithm": "CRC32"} if self.checksum_algorithm == "crc32" else {}
        async with self._mapped(f"CreateMultipartUpload {key}"):
            reply = await self._client.create_multipart_upload(
                Bucket=bucket, Key=key, StorageClass=storage_class, Metadata=dict(metadata), **extra
            )
        return str(reply["UploadId"])

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, body: bytes, checksum: PartChecksum
    ) -> dict[str, Any]:
        async with self._mapped(f"UploadPart {part_number} of {key}"):
            reply = await self._client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=part_number,
                Body=body,
                **checksum.request_args(),
            )
        part: dict[str, Any] = {"PartNumber": part_number, "ETag": reply.get("ETag", "")}
        if checksum.algorithm == "crc32":
            part["ChecksumCRC32"] = checksum.b64
        return part

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[Mapping[str, Any]]
    ) -> None:
        async with self._mapped(f"CompleteMultipartUpload {key}"):
            await self._client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [dict(p) for p in parts]},
            )

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        async with self._mapped(f"AbortMultipartUpload {key}"):
            try:
                await self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return  # already completed or aborted
                raise

    async def list_multipart_uploads(self, bucket: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        async with self._mapped(f"ListMultipartUploads {bucket}"):
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=bucket):
                found.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads", []))
        return found

    async def delete_objects(self, bucket: str, keys: Sequence[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
        """Delete up to 1,000 keys; returns the keys deleted and (key, code, message) per failed key."""
        async with self._mapped(f"DeleteObjects in {bucket}"):
            reply = await self._client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": False}
            )
        deleted = [str(d["Key"]) for d in reply.get("Deleted", [])]
        errors = [
            (str(e.get("Key", "")), str(e.get("Code", "")), str(e.get("Message", ""))) for e in reply.get("Errors", [])
        ]
        return deleted, errors

    # Buckets

    async def bucket_versioning(self, bucket: str) -> str | None:
        """The bucket's versioning status ("Enabled", "Suspended", "" when never set), None if no bucket."""
        async with self._mapped(f"GetBucketVersioning {bucket}"):
            try:
                reply = await self._client.get_bucket_versioning(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    return None
                raise
        return str(reply.get("Status", ""))

    async def create_bucket(self, bucket: str) -> None:
        args: dict[str, Any] = {"Bucket": bucket}
        if self.aws.region != "us-east-1":  # us-east-1 takes no LocationConstraint
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.aws.region}
        async with self._mapped(f"CreateBucket {bucket}"):
            try:
                await self._client.create_bucket(**args)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    async def block_public_access(self, bucket: str) -> None:
        async with self._mapped(f"PutPublicAccessBlock {bucket}"):
            await self._client.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )

    async def enable_versioning(self, bucket: str) -> None:
        async with self._mapped(f"PutBucketVersioning {bucket}"):
            await self._client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    async def lifecycle_rules(self, bucket: str) -> list[dict[str, Any]]:
        async with self._mapped(f"GetBucketLifecycleConfiguration {bucket}"):
            try:
                reply = await self._client.get_bucket_lifecycle_configuration(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                    return []
                raise
        return list(reply.get("Rules", []))

    async def put_lifecycle_rules(self, bucket: str, rules: Sequence[Mapping[str, Any]]) -> None:
        async with self._mapped(f"PutBucketLifecycleConfiguration {bucket}"):
            await self._client.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": [dict(r) for r in rules]}
            )

    async def put_plain_object(self, bucket: str, key: str, body: bytes) -> None:
        """A STANDARD-class object without our metadata (the cache snapshot and the log)."""
        checksum = PartChecksum.of(body, self.checksum_algorithm)
        async with self._mapped(f"PutObject {key}"):
            await self._client.put_object(
                Bucket=bucket, Key=key, Body=body, StorageClass="STANDARD", **checksum.request_args()
            )


@asynccontextmanager
async def open_s3(aws: AwsSettings, tuning: Tuning) -> AsyncIterator[S3]:
    """One long-lived client for the whole run."""
    session = get_session()
    kwargs: dict[str, Any] = {"config": client_config(aws, tuning)}
    if aws.endpoint_url:
        kwargs["endpoint_url"] = aws.endpoint_url
    if aws.access_key and aws.secret_access_key:
        kwargs["aws_access_key_id"] = aws.access_key
        kwargs["aws_secret_access_key"] = aws.secret_access_key
    if not aws.verify_tls:
        kwargs["verify"] = False
    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(session.create_client("s3", **kwargs))
        except ValueError as exc:  # botocore rejects a malformed endpoint URL this way
            raise FatalError(f"aws.endpoint_url cannot be used ({exc}); fix it in config.json") from None
        yield S3(client, aws)
