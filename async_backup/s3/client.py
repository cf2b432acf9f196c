"""The S3 adapter: the only module that imports aiobotocore and botocore.

Owns the client's settings (retries, timeouts, pool size, checksum behaviour) and the mapping of
botocore's exceptions onto ours: per-request failures become `S3Error` with S3's error code;
failures that doom every request (bad credentials, unreachable endpoint) become `FatalError`.
Nothing in here knows about targets, the cache or the plan.

Reaches into botocore's internals in five places, hence aiobotocore pinned below its next major
version in pyproject.toml:
- skip_expect_continue unregisters `botocore.handlers.add_expect_header`;
- cache_user_agent replaces the client's `_user_agent_creator` handler (skipped if it is gone);
- ssl_context_for takes botocore's default CA bundle from `botocore.httpsession.get_cert_path`;
- endpoint_resolver asks the client's `_resolve_endpoint_ruleset` for each bucket's endpoint;
- open_s3 hands the client's `_request_signer._credentials` to the fast path;
- pace_botocore_bodies swaps a PutObject's or UploadPart's prepared body for a paced one in
  `before-send` (only with a bandwidth limit).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import handlers as botocore_handlers
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    FlexibleChecksumError,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import get_cert_path

from ..errors import FatalError, S3Error
from ..settings.config import AwsSettings, Tuning
from .bandwidth import Limiter
from .checksums import PartChecksum, crc32_b64
from .credentials import credentials_failure
from .errormap import ErrorReply, S3Failures, StsFailures
from .fastput.bodies import BodyStream, PacedFileBody
from .fastput.sending import DirectPut
from .fastput.signing import BucketEndpoint
from .objects import ListedObject, ObjectHead, ObjectVersion
from .pricing import RequestTally

log = logging.getLogger(__name__)

# put_plain_file holds at most this much of a file in memory: one PutObject up to it, else parts of it.
PLAIN_PART_BYTES = 16 * 1024 * 1024

# What a server that knows no ChecksumType answers CreateMultipartUpload with it: such a bucket's
# multipart uploads fall back to a COMPOSITE checksum (S3 itself takes FULL_OBJECT with CRC32).
_NO_CHECKSUM_TYPE = frozenset({"InvalidArgument", "InvalidRequest", "NotImplemented", "400", "501"})

# Errors of a request that never reached the server (the probe reports them as "cannot reach").
_CONNECT_ERRORS = frozenset({"EndpointConnectionError", "ConnectTimeoutError"})


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
        parameter_validation=False,  # our own code builds every request; validation cost ~5% CPU per request
    )


def foreign_bucket_message(bucket: str) -> str:
    """The one line for a bucket name another AWS account holds (bucket names are global)."""
    return (
        f"bucket {bucket} belongs to another AWS account (bucket names are global across accounts): "
        'pin a name of your own with {"path": ..., "bucket": ...} in backup.folders, or backup.cache_bucket '
        "for the cache bucket (or, before the first backup, a backup.bucket_prefix of your own)"
    )


def endpoint_name(aws: AwsSettings) -> str:
    """The endpoint as operators know it, safe for logs (no credentials in it)."""
    return aws.endpoint_url or f"AWS S3 ({aws.region})"


@dataclass(frozen=True, slots=True)
class CompletedPart:
    """One part S3 stored: its number, the ETag S3 answered, and the checksum it was sent with
    (CompleteMultipartUpload repeats a CRC32; a composite checksum is built from them all)."""

    number: int
    etag: str
    checksum: PartChecksum


@dataclass(frozen=True, slots=True)
class ListedPart:
    """One part of an open multipart upload as ListParts gives it (ETag without quotes; the CRC32
    S3 stored, base64, when the upload has one)."""

    number: int
    size: int
    etag: str
    checksum_crc32: str | None


def _part_args(part: CompletedPart) -> dict[str, Any]:
    """A part as botocore's CompleteMultipartUpload takes it."""
    args: dict[str, Any] = {"PartNumber": part.number, "ETag": part.etag}
    if part.checksum.algorithm == "crc32":
        args["ChecksumCRC32"] = part.checksum.b64
    return args


class S3:
    """Thin async wrapper: one method per request the tool sends, errors mapped to ours."""

    def __init__(self, client: Any, aws: AwsSettings, direct: DirectPut | None = None) -> None:
        self._client = client
        self._direct = direct
        self.aws = aws
        self._failures = S3Failures(endpoint_name(aws), aws.region)
        self.checksum_algorithm = "crc32" if aws.checksum_calculation == "when_supported" else "md5"
        # Every request this client sends, by operation and the storage class it is billed in.
        self.sent = RequestTally()
        self._list_denied = False  # ListBuckets was denied: bucket ownership is unknown this run
        self._upload_class: dict[str, str] = {}  # multipart upload id -> storage class of its object
        # Buckets S3 said this run do not exist, until the run creates them: on a first run the
        # endpoint probe's 404 spares the rebuild's listing and the setup's versioning check (on
        # Ceph each such 404 takes 40-50 ms).
        self._missing: set[str] = set()
        self._streamable: dict[str, bool] = {}  # can_stream's answers, per bucket
        self._composite_only: set[str] = set()  # buckets whose server refused ChecksumType=FULL_OBJECT
        # Buckets found or made with Object Lock this run: every body sent to them carries
        # Content-MD5 or a CRC32 with its algorithm named, which S3 demands there.
        self._locked: set[str] = set()
        client.meta.events.register("before-send.s3", self._count_sent)

    def _count_sent(self, event_name: str = "", request: Any = None, **_kwargs: Any) -> None:
        """Counted where botocore sends, so retries count too: what S3 bills. The parts of a
        multipart upload bill at their object's class, which only its CreateMultipartUpload says."""
        operation = event_name.rsplit(".", 1)[-1]
        storage_class = ""
        if request is not None:
            headers = getattr(request, "headers", {}) or {}
            value = headers.get("x-amz-storage-class") or ""
            storage_class = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if not storage_class and operation in ("UploadPart", "CompleteMultipartUpload"):
                upload_id = parse_qs(urlsplit(str(getattr(request, "url", ""))).query).get("uploadId", [""])[0]
                storage_class = self._upload_class.get(upload_id, "")
        self.sent.add(operation, storage_class)

    @property
    def fast_path(self) -> DirectPut | None:
        """The hand-signed PutObject/UploadPart path, None when switched off or without credentials."""
        return self._direct

    async def can_stream(self, bucket: str) -> bool:
        """Whether bodies for this bucket can be streamed from the file (the fast path signs them);
        through botocore, the fallback, a body is bytes in memory."""
        known = self._streamable.get(bucket)
        if known is not None:  # asked once per file: answered without a context manager after the first
            return known
        if self._direct is None:
            return False
        async with self._mapped(f"endpoint of {bucket}"):
            answer = self._streamable[bucket] = await self._direct.endpoint(bucket) is not None
        return answer

    def body_checksum(self, streaming: bool, bucket: str = "") -> str:
        """The checksum that goes with a bucket's bodies, given can_stream(bucket): CRC32 where the
        server takes flexible checksums; else the body's SHA-256 as the signed payload hash on the
        fast path, or Content-MD5 through botocore. A bucket with Object Lock takes no SHA-256
        payload hash in place of Content-MD5: its bodies get Content-MD5 on either path."""
        if self.checksum_algorithm == "md5" and streaming and bucket not in self._locked:
            return "sha256"
        return self.checksum_algorithm

    def mark_locked(self, bucket: str) -> None:
        """`bucket` has Object Lock: what is sent to it from now on carries what S3 demands there."""
        self._locked.add(bucket)

    def _mapped(self, what: str) -> AbstractAsyncContextManager[None]:
        return botocore_failures(self._failures, what)

    # Objects

    async def put_object(
        self,
        bucket: str,
        key: str,
        body: bytes | BodyStream,
        *,
        storage_class: str,
        metadata: Mapping[str, str],
        checksum: PartChecksum,
    ) -> str:
        """PutObject; returns the ETag S3 answered."""
        return await self._put_contents(
            "PutObject",
            f"PutObject {key}",
            bucket,
            key,
            body,
            checksum,
            billed_class=storage_class,
            headers={"x-amz-storage-class": storage_class, **{f"x-amz-meta-{k}": v for k, v in metadata.items()}},
            query=None,
            botocore_args={"StorageClass": storage_class, "Metadata": dict(metadata)},
        )

    async def _put_contents(
        self,
        operation: str,
        what: str,
        bucket: str,
        key: str,
        body: bytes | BodyStream,
        checksum: PartChecksum,
        *,
        billed_class: str,
        headers: Mapping[str, str],
        query: Mapping[str, str] | None,
        botocore_args: Mapping[str, Any],
    ) -> str:
        """The one place a request carrying file contents (PutObject, UploadPart) chooses its path:
        the fast path when it is on and the bucket's endpoint takes plain SigV4, else botocore, which
        takes bytes only. `headers` and `query` are the fast path's form of the request,
        `botocore_args` botocore's; the checksum is added to either. Returns the ETag S3 answered."""
        # Mapped on either path: resolving the endpoint or refreshing credentials can fail as botocore fails.
        async with self._mapped(what):
            endpoint = None if self._direct is None else await self._direct.endpoint(bucket)
            if self._direct is not None and endpoint is not None:
                # Sent past botocore, so counted here (once per call: DirectPut's own retries are not seen).
                self.sent.add(operation, billed_class)
                # A CRC32 names its algorithm in every body's headers (request_headers), which a
                # bucket with Object Lock demands too: nothing to add for one here.
                signed = {**headers, **checksum.request_headers()}
                return _etag_of(await self._direct.put(endpoint, bucket, key, body, signed, what, query))
            if isinstance(body, BodyStream):
                raise TypeError("a streamed body needs the fast path: check can_stream() first")
            send = self._client.put_object if operation == "PutObject" else self._client.upload_part
            reply = await send(Bucket=bucket, Key=key, Body=body, **botocore_args, **checksum.request_args())
        return str(reply.get("ETag", ""))

    async def create_multipart_upload(
        self, bucket: str, key: str, *, storage_class: str, metadata: Mapping[str, str]
    ) -> tuple[str, bool]:
        """CreateMultipartUpload; returns the upload id and whether S3 keeps a FULL_OBJECT CRC32 of
        it (the whole file's, as a single PutObject would): asked for with CRC32 bodies, unless the
        bucket's server refused ChecksumType before (one info line per bucket, then COMPOSITE)."""
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "StorageClass": storage_class, "Metadata": dict(metadata)}
        full_object = self.checksum_algorithm == "crc32" and bucket not in self._composite_only
        if self.checksum_algorithm == "crc32":
            args["ChecksumAlgorithm"] = "CRC32"
        if full_object:
            try:
                async with self._mapped(f"CreateMultipartUpload {key}"):
                    reply = await self._client.create_multipart_upload(**args, ChecksumType="FULL_OBJECT")
            except S3Error as exc:
                if exc.code not in _NO_CHECKSUM_TYPE:
                    raise
                log.info(
                    "%s: the server refused a full-object checksum for multipart uploads (%s); its multipart "
                    "objects get a composite one (the cache still keeps each file's whole CRC32)",
                    bucket,
                    exc.code,
                )
                self._composite_only.add(bucket)
                full_object = False
        if not full_object:
            async with self._mapped(f"CreateMultipartUpload {key}"):
                reply = await self._client.create_multipart_upload(**args)
        upload_id = str(reply["UploadId"])
        self._upload_class[upload_id] = storage_class
        return upload_id, full_object

    def continue_upload(self, upload_id: str, storage_class: str) -> None:
        """An earlier run's multipart upload goes on in this one: its parts bill at its object's class."""
        self._upload_class[upload_id] = storage_class

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> dict[int, ListedPart] | None:
        """The parts S3 holds of an open multipart upload, by number (ListParts, 1,000 per page);
        None when S3 no longer knows the upload (NoSuchUpload: completed, aborted, or expired by
        the bucket's lifecycle rule)."""
        found: dict[int, ListedPart] = {}
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
        while True:
            async with self._mapped(f"ListParts {key}"):
                try:
                    page = await self._client.list_parts(**args)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                        return None
                    raise
            for p in page.get("Parts", []):
                number = int(p["PartNumber"])
                crc = p.get("ChecksumCRC32")
                found[number] = ListedPart(number, int(p.get("Size", 0)), _unquote_etag(p.get("ETag")), crc or None)
            marker = page.get("NextPartNumberMarker")
            if not page.get("IsTruncated") or not marker:
                return found
            args["PartNumberMarker"] = marker

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, body: bytes | BodyStream, checksum: PartChecksum
    ) -> CompletedPart:
        etag = await self._put_contents(
            "UploadPart",
            f"UploadPart {part_number} of {key}",
            bucket,
            key,
            body,
            checksum,
            billed_class=self._upload_class.get(upload_id, ""),
            headers={},
            query={"partNumber": str(part_number), "uploadId": upload_id},
            botocore_args={"UploadId": upload_id, "PartNumber": part_number},
        )
        return CompletedPart(part_number, etag, checksum)

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[CompletedPart], *, full_crc32: int | None = None
    ) -> None:
        """CompleteMultipartUpload; `full_crc32`, the whole object's CRC32, for an upload created
        with ChecksumType=FULL_OBJECT (S3 checks it against the parts and stores it)."""
        extra: dict[str, Any] = {}
        if full_crc32 is not None:
            extra = {"ChecksumCRC32": crc32_b64(full_crc32), "ChecksumType": "FULL_OBJECT"}
        async with self._mapped(f"CompleteMultipartUpload {key}"):
            await self._client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [_part_args(p) for p in parts]},
                **extra,
            )
        self._upload_class.pop(upload_id, None)

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        async with self._mapped(f"AbortMultipartUpload {key}"):
            try:
                await self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return  # already completed or aborted
                raise
            finally:
                self._upload_class.pop(upload_id, None)

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

    async def delete_object(self, bucket: str, key: str) -> None:
        """DeleteObject: the key travels in the URL, so this deletes keys no XML body can name."""
        async with self._mapped(f"DeleteObject {key}"):
            await self._client.delete_object(Bucket=bucket, Key=key)

    # Buckets

    def known_missing(self, bucket: str) -> bool:
        """S3 said this run that `bucket` does not exist, and the run has not created it since."""
        return bucket in self._missing

    async def bucket_versioning(self, bucket: str) -> str | None:
        """The bucket's versioning status ("Enabled", "Suspended", "" when never set), None if no bucket."""
        async with self._mapped(f"GetBucketVersioning {bucket}"):
            try:
                reply = await self._client.get_bucket_versioning(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    self._missing.add(bucket)
                    return None
                raise
        self._missing.discard(bucket)
        return str(reply.get("Status", ""))

    async def probe_versioning(self, bucket: str, answer_within_s: float) -> str | None:
        """bucket_versioning as the run's first request, which must be answered within seconds.

        Its normal retries and read timeout (`tuning.read_timeout_s` per attempt, 5 attempts: over
        five minutes) would leave a server that accepts the connection and never answers in
        silence. So once the request is first sent, some HTTP answer (any status: a 503 proves the
        server talks, and is then retried as usual) must come within `answer_within_s`; the
        credentials are looked up before that clock starts (a `credential_process` may take its
        time). Without an answer, S3Error with the last connection error's name (it could not
        connect), else "NoAnswer"."""
        events = self._client.meta.events
        waiting = anyio.CancelScope()
        last_error: list[str] = []
        armed: list[bool] = []

        def sent(**_kwargs: Any) -> None:  # returns None: a value here would stand in for the reply
            if not armed:  # the first send starts the clock; retries do not restart it
                armed.append(True)
                waiting.deadline = anyio.current_time() + answer_within_s

        def received(response_dict: Any = None, exception: Any = None, **_kwargs: Any) -> None:
            if response_dict is not None:
                waiting.deadline = math.inf  # it answers: the usual timeouts and retries apply
            elif exception is not None:
                last_error.append(type(exception).__name__)

        send_event, receive_event = "before-send.s3.GetBucketVersioning", "response-received.s3.GetBucketVersioning"
        events.register(send_event, sent, unique_id="async-backup-probe-sent")
        events.register(receive_event, received, unique_id="async-backup-probe-received")
        try:
            with waiting:
                return await self.bucket_versioning(bucket)
        finally:
            events.unregister(send_event, unique_id="async-backup-probe-sent")
            events.unregister(receive_event, unique_id="async-backup-probe-received")
        code = last_error[-1] if last_error and last_error[-1] in _CONNECT_ERRORS else "NoAnswer"
        raise S3Error(code, f"GetBucketVersioning {bucket}: no answer within {answer_within_s:g} s")

    async def create_bucket(self, bucket: str, *, object_lock: bool = False) -> None:
        """CreateBucket; with `object_lock`, a bucket that can hold locked versions (S3 turns its
        versioning on)."""
        args: dict[str, Any] = {"Bucket": bucket}
        if object_lock:
            args["ObjectLockEnabledForBucket"] = True
        if self.aws.region != "us-east-1":  # us-east-1 takes no LocationConstraint
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.aws.region}
        async with self._mapped(f"CreateBucket {bucket}"):
            try:
                await self._client.create_bucket(**args)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "BucketAlreadyExists":  # S3's answer when another account holds the name
                    raise S3Error(code, foreign_bucket_message(bucket)) from None
                if code != "BucketAlreadyOwnedByYou":
                    raise
        self._missing.discard(bucket)

    async def owns_bucket(self, bucket: str) -> bool | None:
        """Whether the credentials' account owns the existing `bucket`: S3 lets another account's
        bucket be read and written where its policy allows, and the name alone says nothing.
        ListBuckets lists only the caller's own buckets; narrowed to the name as prefix it is one
        short request. None when ListBuckets is denied (no s3:ListAllMyBuckets): unknown. None on
        other endpoints too: their bucket names are not shared with strangers, and a bucket another
        user there created (an administrator, say) is shared on purpose."""
        if self.aws.endpoint_url is not None:
            return None
        mine = await self.own_buckets(bucket)  # narrowed to the name: usually one short page
        return None if mine is None else bucket in mine

    async def own_buckets(self, prefix: str) -> set[str] | None:
        """The names of this account's buckets that start with `prefix` (ListBuckets narrowed to
        it: one request per 10,000 buckets); None when ListBuckets is denied."""
        if self._list_denied:
            return None
        found: set[str] = set()
        token = ""
        async with self._mapped(f"ListBuckets {prefix}"):
            try:
                while True:
                    args: dict[str, Any] = {"Prefix": prefix}
                    if token:
                        args["ContinuationToken"] = token
                    reply = await self._client.list_buckets(**args)
                    found.update(str(b.get("Name", "")) for b in reply.get("Buckets", []))
                    token = str(reply.get("ContinuationToken") or "")
                    if not token:
                        return found
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("AccessDenied", "403"):
                    self._list_denied = True  # once a run: the policy will not change meanwhile
                    return None
                raise

    async def bucket_of_account(self, bucket: str, account_id: str) -> bool:
        """HeadBucket with ExpectedBucketOwner: whether `bucket` exists and belongs to the account
        (S3 answers 403 for another account's bucket, 404 for none). Where ListBuckets is denied."""
        async with self._mapped(f"HeadBucket {bucket}"):
            try:
                await self._client.head_bucket(Bucket=bucket, ExpectedBucketOwner=account_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "403", "AccessDenied"):
                    return False
                raise
        return True

    async def block_public_access(self, bucket: str) -> None:
        """Keep the bucket private. On AWS all four switches are set. Ceph RGW 16 refuses every
        PutObject once BlockPublicAcls is on (even without an ACL), so other endpoints get the
        other three: IgnorePublicAcls alone already makes any public ACL ineffective."""
        async with self._mapped(f"PutPublicAccessBlock {bucket}"):
            await self._client.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": self.aws.endpoint_url is None,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )

    async def object_lock(self, bucket: str) -> tuple[bool, str, int | None]:
        """GetObjectLockConfiguration: whether Object Lock is on, the default retention's mode ("" for
        none) and its days (None for none, or a retention in years)."""
        async with self._mapped(f"GetObjectLockConfiguration {bucket}"):
            try:
                reply = await self._client.get_object_lock_configuration(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ObjectLockConfigurationNotFoundError":
                    return False, "", None
                raise
        found = reply.get("ObjectLockConfiguration", {})
        retention = found.get("Rule", {}).get("DefaultRetention", {})
        days = int(retention["Days"]) if retention.get("Days") else None
        return found.get("ObjectLockEnabled") == "Enabled", str(retention.get("Mode") or ""), days

    async def put_object_lock(self, bucket: str, mode: str, days: int) -> None:
        """PutObjectLockConfiguration: Object Lock on, every new version retained `days` in `mode`."""
        async with self._mapped(f"PutObjectLockConfiguration {bucket}"):
            await self._client.put_object_lock_configuration(
                Bucket=bucket,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
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

    async def put_plain_file(self, bucket: str, key: str, path: str, part_bytes: int = PLAIN_PART_BYTES) -> int:
        """put_plain_object for a file of any size, `part_bytes` in memory at most: one PutObject
        up to `part_bytes`, else a multipart upload sent one part at a time, aborted (shielded)
        if anything fails. Returns the bytes sent. Reads run in worker threads."""
        size = (await anyio.Path(path).stat()).st_size
        if size <= part_bytes:
            body = await anyio.Path(path).read_bytes()
            await self.put_plain_object(bucket, key, body)
            return len(body)
        extra = {"ChecksumAlgorithm": "CRC32"} if self.checksum_algorithm == "crc32" else {}
        async with self._mapped(f"CreateMultipartUpload {key}"):
            reply = await self._client.create_multipart_upload(Bucket=bucket, Key=key, StorageClass="STANDARD", **extra)
        upload_id = str(reply["UploadId"])
        sent = 0
        try:
            parts: list[CompletedPart] = []
            async with await anyio.open_file(path, "rb") as f:
                number = 0
                while data := await f.read(part_bytes):
                    number += 1
                    checksum = PartChecksum.of(data, self.checksum_algorithm)
                    parts.append(await self.upload_part(bucket, key, upload_id, number, data, checksum))
                    sent += len(data)
                    del data
            await self.complete_multipart_upload(bucket, key, upload_id, parts)
        except BaseException:
            # The cache bucket's leftovers cost little, and S3 lists them for a sweep: a failed abort is let be.
            with anyio.CancelScope(shield=True), anyio.move_on_after(60), contextlib.suppress(S3Error):
                await self.abort_multipart_upload(bucket, key, upload_id)
            raise
        return sent

    # Restore and verify

    def count_requests(self) -> Counter[str]:
        """Count every HTTP request this client sends from now on, by S3 operation.

        Counted where botocore sends, so retries count too: the numbers are what S3 bills."""
        counts: Counter[str] = Counter()

        def on_send(event_name: str = "", **_kwargs: Any) -> None:
            counts[event_name.rsplit(".", 1)[-1]] += 1

        self._client.meta.events.register("before-send.s3", on_send)
        return counts

    async def holds_any(self, bucket: str, prefix: str) -> bool:
        """Whether the bucket holds a current object under `prefix`: one ListObjectsV2, MaxKeys=1."""
        async with self._mapped(f"ListObjectsV2 {bucket}"):
            page = await self._client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return bool(page.get("Contents"))

    async def list_current(self, bucket: str, prefix: str = "") -> AsyncIterator[list[ListedObject]]:
        """The bucket's current objects under `prefix`, one list per ListObjectsV2 page (one request)."""
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            async with self._mapped(f"ListObjectsV2 {bucket}"):
                page = await self._client.list_objects_v2(**args)
            yield [
                ListedObject(
                    key=str(o["Key"]),
                    size=int(o.get("Size", 0)),
                    storage_class=str(o.get("StorageClass") or "STANDARD"),
                    etag=_unquote_etag(o.get("ETag")),
                    last_modified=o.get("LastModified"),
                )
                for o in page.get("Contents", [])
            ]
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    async def list_versions(self, bucket: str, prefix: str = "") -> AsyncIterator[list[ObjectVersion]]:
        """Every version and delete marker under `prefix`, one list per ListObjectVersions page.

        Within a key S3 lists the newest version first; each page is returned in that order."""
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            async with self._mapped(f"ListObjectVersions {bucket}"):
                page = await self._client.list_object_versions(**args)
            found = [
                ObjectVersion(
                    key=str(v["Key"]),
                    version_id=str(v.get("VersionId") or ""),
                    last_modified=v["LastModified"],
                    is_latest=bool(v.get("IsLatest")),
                    is_delete_marker=False,
                    size=int(v.get("Size", 0)),
                    storage_class=str(v.get("StorageClass") or "STANDARD"),
                    etag=_unquote_etag(v.get("ETag")),
                )
                for v in page.get("Versions", [])
            ]
            found.extend(
                ObjectVersion(
                    key=str(m["Key"]),
                    version_id=str(m.get("VersionId") or ""),
                    last_modified=m["LastModified"],
                    is_latest=bool(m.get("IsLatest")),
                    is_delete_marker=True,
                )
                for m in page.get("DeleteMarkers", [])
            )
            yield found
            if not page.get("IsTruncated"):
                return
            args["KeyMarker"] = page.get("NextKeyMarker", "")
            args["VersionIdMarker"] = page.get("NextVersionIdMarker", "")

    async def head_object(
        self, bucket: str, key: str, *, version_id: str = "", part_number: int | None = None
    ) -> ObjectHead | None:
        """HeadObject with the stored checksums (ChecksumMode=ENABLED); None when there is no such object.

        With `part_number` the size is that part's (how the part size of a multipart object is learnt)."""
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if version_id:
            args["VersionId"] = version_id
        if part_number is not None:
            args["PartNumber"] = part_number
        async with self._mapped(f"HeadObject {key}"):
            try:
                reply = await self._client.head_object(**args)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NoSuchVersion"):
                    return None
                raise
        return _object_head(reply)

    async def restore_object(self, bucket: str, key: str, *, version_id: str, days: int, tier: str) -> str:
        """Ask for a readable copy of an archived object: "accepted" (a new retrieval), "ready" (a
        restored copy exists already; its expiry is extended) or "in progress" (asked for before)."""
        args: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "RestoreRequest": {"Days": days, "GlacierJobParameters": {"Tier": tier}},
        }
        if version_id:
            args["VersionId"] = version_id
        async with self._mapped(f"RestoreObject {key}"):
            try:
                reply = await self._client.restore_object(**args)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "RestoreAlreadyInProgress":
                    return "in progress"
                raise
        status = int(reply.get("ResponseMetadata", {}).get("HTTPStatusCode", 202))
        return "ready" if status == 200 else "accepted"

    @asynccontextmanager
    async def open_object(self, bucket: str, key: str, *, version_id: str = "") -> AsyncIterator[ObjectReader]:
        """GetObject (with its stored checksums); the body is read in chunks and closed on exit."""
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if version_id:
            args["VersionId"] = version_id
        async with self._mapped(f"GetObject {key}"):
            reply = await self._client.get_object(**args)
        body = reply["Body"]
        try:
            yield ObjectReader(_object_head(reply), body, key)
        finally:
            body.close()


def skip_expect_continue(client: Any) -> None:
    """botocore asks for "Expect: 100-continue" on every PUT with a body: a round trip before the
    body is sent. Our bodies are at most one part, already in memory: cheaper to resend than to wait."""
    client.meta.events.unregister("before-call.s3", botocore_handlers.add_expect_header)


def pace_botocore_bodies(client: Any, limiter: Limiter) -> None:
    """Bodies sent through botocore (buckets the fast path cannot sign, or aws.direct_put off)
    draw from the same limiter as the fast path's. botocore hands aiohttp a PutObject's or
    UploadPart's body as a file object (it turns a bytes Body into a BytesIO); just before it is
    sent, it is wrapped so that it is written in the limiter's steps. A retry builds a new request
    from the same file, rewound, and is wrapped again."""

    def paced(request: Any = None, **_kwargs: Any) -> None:
        body = getattr(request, "body", None)
        if body is None or isinstance(body, PacedFileBody):
            return
        if isinstance(body, bytes | bytearray):
            body = io.BytesIO(body)
        elif not callable(getattr(body, "read", None)):
            return
        length = request.headers.get("Content-Length")
        request.body = PacedFileBody(body, limiter, int(length) if length else None)

    for operation in ("PutObject", "UploadPart"):
        client.meta.events.register_last(f"before-send.s3.{operation}", paced)


def cache_user_agent(client: Any) -> None:
    """botocore builds the User-Agent string twice per request (about a tenth of a PutObject's CPU).
    It only changes when features are registered, so build it once per client. Uses botocore
    internals; where they differ, nothing is changed."""
    creator = getattr(client, "_user_agent_creator", None)
    if creator is None or not hasattr(creator, "to_string"):
        return
    client.meta.events.unregister("request-created.s3", creator.rebuild_and_replace_user_agent_handler)
    built = creator.to_string()
    creator.to_string = lambda: built


def fast_path_pool_size(tuning: Tuning) -> int:
    """Connections of the fast path: every worker's PutObject plus every multipart part in flight
    (a worker sending parts sends no PutObject meanwhile), so no request waits for a connection."""
    return tuning.workers + tuning.parts_in_flight


def fast_path_timeout(tuning: Tuning) -> aiohttp.ClientTimeout:
    """aiohttp's `connect` counts the wait for a pooled connection too; `sock_connect` counts only
    the TCP (and TLS) set-up, which is what connect_timeout_s means, as in botocore."""
    return aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=tuning.connect_timeout_s, sock_read=tuning.read_timeout_s
    )


def ca_bundle_of(aws: AwsSettings, session: Any) -> str | None:
    """The CA bundle every request trusts: aws.ca_bundle, else what botocore reads itself
    (AWS_CA_BUNDLE, then the profile's ca_bundle); None for botocore's default bundle."""
    if aws.ca_bundle:
        return aws.ca_bundle
    found = session.get_config_variable("ca_bundle")
    return str(found) if found else None


def ssl_context_for(aws: AwsSettings, ca_bundle: str | None) -> ssl.SSLContext | bool:
    """The fast path's TLS settings, from the same file botocore verifies with."""
    if not aws.verify_tls:
        return False
    cafile = ca_bundle or get_cert_path(True)  # botocore's default: certifi's bundle
    source = "aws.ca_bundle" if aws.ca_bundle else "AWS_CA_BUNDLE or the profile's ca_bundle"
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise FatalError(
            f"the CA bundle {cafile} ({source}) cannot be loaded ({exc}); point it at a readable PEM file"
        ) from None


def _host_of(url: str) -> str:
    """The Host header botocore signs for a URL: lowercased, the scheme's default port dropped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def endpoint_resolver(client: Any) -> Any:
    """A resolver asking botocore's S3 endpoint rules, as a PutObject through botocore would
    (endpoint_url, region, addressing style, FIPS, dual-stack, partitions like aws-cn), once per
    bucket. None when the rules want a signer other than plain SigV4 (directory buckets, MRAP):
    those PUTs stay on botocore."""
    operation = client.meta.service_model.operation_model("PutObject")

    async def resolve(bucket: str) -> BucketEndpoint | None:
        context: dict[str, Any] = {}
        url, headers, _props = await client._resolve_endpoint_ruleset(
            operation, {"Bucket": bucket, "Key": "k"}, context
        )
        signing = context.get("signing", {})
        if context.get("auth_type", "v4") not in ("v4", "s3v4") or headers:
            return None
        parts = urlsplit(url)
        return BucketEndpoint(
            origin=f"{parts.scheme}://{_host_of(url)}",
            path_prefix=parts.path.rstrip("/"),
            region=str(signing.get("region") or client.meta.region_name),
            service=str(signing.get("signing_name") or "s3"),
        )

    return resolve


def _no_retry_on_tls_failure(caught_exception: Exception | None = None, **_kwargs: Any) -> None:
    """A certificate that is not trusted stays untrusted: botocore would retry it with backoff."""
    if isinstance(caught_exception, SSLError):
        raise caught_exception


@asynccontextmanager
async def open_s3(aws: AwsSettings, tuning: Tuning) -> AsyncIterator[S3]:
    """One long-lived client for the whole run; the fast path shares its credentials, endpoint
    rules and CA bundle."""
    session = get_session()
    kwargs: dict[str, Any] = {"config": client_config(aws, tuning)}
    if aws.endpoint_url:
        kwargs["endpoint_url"] = aws.endpoint_url
    if aws.access_key and aws.secret_access_key:
        kwargs["aws_access_key_id"] = aws.access_key
        kwargs["aws_secret_access_key"] = aws.secret_access_key
    async with AsyncExitStack() as stack:
        try:
            ca_bundle = ca_bundle_of(aws, session) if aws.verify_tls else None
            if not aws.verify_tls:
                kwargs["verify"] = False
            elif ca_bundle:
                kwargs["verify"] = ca_bundle
            client = await stack.enter_async_context(session.create_client("s3", **kwargs))
        except ValueError as exc:  # botocore rejects a malformed endpoint URL this way
            raise FatalError(f"aws.endpoint_url cannot be used ({exc}); fix it in config.json") from None
        except BotoCoreError as exc:  # the profile is read and the credential chain asked here
            fatal = credentials_failure(exc)
            if fatal is None:
                raise
            raise fatal from None
        skip_expect_continue(client)
        cache_user_agent(client)
        client.meta.events.register_first("needs-retry.s3", _no_retry_on_tls_failure)
        # No limit configured: no limiter at all, and every body writes as it did without one.
        limiter = Limiter(tuning.bandwidth) if tuning.bandwidth is not None else None
        if limiter is not None:
            pace_botocore_bodies(client, limiter)
        direct = None
        credentials = client._request_signer._credentials  # None: no credentials anywhere, botocore says so
        if aws.direct_put and credentials is not None:
            http = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=fast_path_pool_size(tuning), ttl_dns_cache=300),
                    timeout=fast_path_timeout(tuning),
                    trust_env=False,  # DirectPut reads HTTPS_PROXY and NO_PROXY once per endpoint
                    skip_auto_headers=("Content-Type",),
                )
            )
            direct = DirectPut(
                session=http,
                credentials=credentials,
                resolve_endpoint=endpoint_resolver(client),
                max_attempts=tuning.max_attempts,
                ssl_context=ssl_context_for(aws, ca_bundle),
                endpoint_label=endpoint_name(aws),
                configured_region=aws.region,
                send_stall_s=tuning.read_timeout_s,
                limiter=limiter,
            )
        yield S3(client, aws, direct)


async def caller_account(aws: AwsSettings, tuning: Tuning) -> str:
    """The AWS account id of the credentials: STS GetCallerIdentity, which needs no IAM permission.

    Sent to the region's STS endpoint (or AWS_ENDPOINT_URL_STS). S3Error when it cannot be had: a
    VPC that reaches S3 through a gateway endpoint only may have no route to STS; FatalError for
    credentials that cannot be had at all, as for S3."""
    session = get_session()
    kwargs: dict[str, Any] = {
        "config": AioConfig(
            region_name=aws.region,
            retries={"mode": "standard", "total_max_attempts": tuning.max_attempts},
            connect_timeout=tuning.connect_timeout_s,
            read_timeout=tuning.read_timeout_s,
        )
    }
    if aws.access_key and aws.secret_access_key:
        kwargs["aws_access_key_id"] = aws.access_key
        kwargs["aws_secret_access_key"] = aws.secret_access_key
    what = f"STS GetCallerIdentity ({aws.region})"
    async with botocore_failures(StsFailures(), what):
        ca_bundle = ca_bundle_of(aws, session) if aws.verify_tls else None
        if not aws.verify_tls:
            kwargs["verify"] = False
        elif ca_bundle:
            kwargs["verify"] = ca_bundle
        async with session.create_client("sts", **kwargs) as sts:
            reply = await sts.get_caller_identity()
    account = str(reply.get("Account") or "")
    if not account:
        raise S3Error("NoAccount", f"{what}: the reply names no account")
    return account


# botocore's failures, mapped by errormap: the one place that catches them.


@asynccontextmanager
async def botocore_failures(failures: S3Failures | StsFailures, what: str) -> AsyncIterator[None]:
    """Around a request (`what`, say "PutObject key"): botocore's failures become ours, as `failures` maps them."""
    try:
        yield
    except ClientError as exc:
        raise failures.reply(_error_reply(exc.response, what), what) from None
    except SSLError as exc:
        raise failures.tls(what, exc.kwargs.get("error", exc)) from None
    except EndpointConnectionError:
        raise failures.cannot_connect(what) from None
    except ReadTimeoutError:
        raise failures.timed_out(what) from None
    except ConnectionClosedError:
        raise failures.dropped(what) from None
    except BotoCoreError as exc:
        # No credentials to sign with (fetched as a request is signed: SSO, refreshed ones) fails every request.
        fatal = credentials_failure(exc)
        if fatal is not None:
            raise fatal from None
        raise S3Error(type(exc).__name__, f"{what}: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise S3Error(type(exc).__name__, f"{what}: {exc}") from None


# GetObject bodies, for restore.


class ObjectReader:
    """The body of one GetObject reply, read in chunks with errors mapped to S3Error."""

    def __init__(self, head: ObjectHead, body: Any, key: str) -> None:
        self.head = head
        self._body = body
        self._key = key

    async def read(self, size_bytes: int) -> bytes:
        """Up to `size_bytes` of the body; b"" at the end."""
        try:
            return bytes(await self._body.read(size_bytes))
        except FlexibleChecksumError as exc:
            # botocore checks the body against the CRC32 S3 stores (ChecksumMode=ENABLED) as its
            # last bytes arrive: the same finding as restore's own check, not a broken connection.
            raise S3Error(
                "ChecksumMismatch", f"GetObject {self._key}: the download does not match the checksum S3 stores ({exc})"
            ) from None
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise S3Error(type(exc).__name__, f"GetObject {self._key}: the download broke off ({exc})") from None


def _error_reply(response: Mapping[str, Any], what: str) -> ErrorReply:
    """What a ClientError's parsed reply says, for the error map."""
    err = response.get("Error", {})
    meta = response.get("ResponseMetadata", {})
    region = err.get("Region") or meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")
    return ErrorReply(
        code=str(err.get("Code") or meta.get("HTTPStatusCode", "Error")),
        message=str(err.get("Message") or ""),
        bucket=str(err.get("BucketName") or err.get("Bucket") or f"of {what}"),
        bucket_region=str(region) if region else None,
        request_time=_text(err.get("RequestTime")),
        server_time=_text(err.get("ServerTime")),
    )


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


def _etag_of(headers: Mapping[str, str]) -> str:
    """The ETag of a reply's headers as DirectPut returns them (a plain dict: any case)."""
    return next((v for k, v in headers.items() if k.lower() == "etag"), "")


def _unquote_etag(value: Any) -> str:
    return str(value or "").strip('"')


def _object_head(reply: Mapping[str, Any]) -> ObjectHead:
    other = any(reply.get(k) for k in ("ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256"))
    sse = str(reply.get("ServerSideEncryption") or "")
    return ObjectHead(
        size=int(reply.get("ContentLength", 0)),
        etag=_unquote_etag(reply.get("ETag")),
        storage_class=str(reply.get("StorageClass") or "STANDARD"),
        version_id=str(reply.get("VersionId") or ""),
        metadata={str(k): str(v) for k, v in (reply.get("Metadata") or {}).items()},
        restore=str(reply["Restore"]) if reply.get("Restore") else None,
        checksum_crc32=str(reply["ChecksumCRC32"]) if reply.get("ChecksumCRC32") else None,
        other_checksum=bool(other),
        checksum_type=str(reply.get("ChecksumType") or ""),
        parts_count=int(reply["PartsCount"]) if reply.get("PartsCount") else None,
        encrypted_with_key=sse.startswith("aws:kms") or bool(reply.get("SSECustomerAlgorithm")),
    )
