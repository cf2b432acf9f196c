"""A recording, fault-injecting S3 reverse proxy for integration tests.

It sits between any S3 client and moto's server and owns two things: a log of every request (as S3
operation names) and the faults a test asked for. It runs its own event loop in a background thread, so
the same object serves async tests, sync tests and a CLI running in a subprocess. It must not import
anything from `async_backup`: it tests the tool from the outside, at the lowest layer (the wire).

Forwarding is transparent on purpose: the raw request target (percent-encoding untouched), the Host
header the client signed and the body bytes all go to moto as they came, streamed both ways.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import random
import re
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape, unescape

import aiohttp
from aiohttp import web
from yarl import URL

__all__ = [
    "CheckDigest",
    "CorruptBody",
    "Delay",
    "DeleteKeyErrors",
    "ErrorReply",
    "FakeReply",
    "Fault",
    "Gate",
    "PacedBody",
    "ProxyServer",
    "Record",
    "RefuseDeleteBatch",
    "ResetBody",
    "SlowReply",
    "Stall",
    "access_denied",
    "internal_error",
    "s3_operation",
    "slow_down",
]

CHUNK_BYTES = 256 * 1024
# A stall longer than this only slows the suite down; clients under test use short read timeouts.
MAX_STALL_S = 30.0
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never forwarded. `Expect` is
# answered by the proxy itself; botocore does not sign it.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
ERROR_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "InvalidAccessKeyId": "The AWS Access Key Id you provided does not exist in our records.",
    "AccessDenied": "Access Denied",
    "ServiceUnavailable": "Service is unable to handle request.",
}


# --------------------------------------------------------------------------------------------------
# Operation names


# Sub-resources in the query that name a bucket-level operation: `?versioning` with PUT is
# PutBucketVersioning. Object-level ones are in OBJECT_SUBRESOURCES.
BUCKET_SUBRESOURCES = {
    "versioning": "BucketVersioning",
    "lifecycle": "BucketLifecycleConfiguration",
    "tagging": "BucketTagging",
    "policy": "BucketPolicy",
    "acl": "BucketAcl",
    "cors": "BucketCors",
    "encryption": "BucketEncryption",
    "notification": "BucketNotificationConfiguration",
    "object-lock": "ObjectLockConfiguration",
    "ownershipControls": "BucketOwnershipControls",
    "publicAccessBlock": "PublicAccessBlock",
    "replication": "BucketReplication",
    "website": "BucketWebsite",
    "logging": "BucketLogging",
    "location": "BucketLocation",
    "accelerate": "BucketAccelerateConfiguration",
    "requestPayment": "BucketRequestPayment",
}
OBJECT_SUBRESOURCES = {
    "tagging": "ObjectTagging",
    "acl": "ObjectAcl",
    "retention": "ObjectRetention",
    "legal-hold": "ObjectLegalHold",
    "attributes": "ObjectAttributes",
}
METHOD_VERB = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}


def s3_operation(
    method: str, bucket: str | None, key: str | None, query: dict[str, str], copy_source: bool = False
) -> str:
    """Name the S3 API operation of a path-style request, as botocore names it.

    Derived from method, query sub-resources and whether a key is present, because that is all a
    proxy sees. Unknown shapes come back as e.g. `GET?unknown` rather than a guess.
    """
    method = method.upper()
    if bucket is None:
        return "ListBuckets" if method == "GET" else f"{method} /"
    if key is None:
        if method == "HEAD":
            return "HeadBucket"
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        if method == "GET":
            if query.get("list-type") == "2":
                return "ListObjectsV2"
            if "uploads" in query:
                return "ListMultipartUploads"
            if "versions" in query:
                return "ListObjectVersions"
        for sub, name in BUCKET_SUBRESOURCES.items():
            if sub in query and method in METHOD_VERB:
                # S3 calls it GetBucketLifecycleConfiguration but DeleteBucketLifecycle.
                if method == "DELETE" and sub == "lifecycle":
                    return "DeleteBucketLifecycle"
                return METHOD_VERB[method] + name
        return {"GET": "ListObjects", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(
            method, f"{method} bucket?{'&'.join(query)}"
        )
    upload_id = "uploadId" in query
    if method == "PUT":
        if upload_id and "partNumber" in query:
            return "UploadPartCopy" if copy_source else "UploadPart"
    elif method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if upload_id:
            return "CompleteMultipartUpload"
        if "restore" in query:
            return "RestoreObject"
        if "select" in query:
            return "SelectObjectContent"
    elif method == "DELETE" and upload_id:
        return "AbortMultipartUpload"
    elif method == "GET" and upload_id:
        return "ListParts"
    elif method == "HEAD":
        return "HeadObject"
    for sub, name in OBJECT_SUBRESOURCES.items():
        if sub in query and method in METHOD_VERB:
            return METHOD_VERB[method] + name
    if method == "PUT":
        return "CopyObject" if copy_source else "PutObject"
    return {"GET": "GetObject", "DELETE": "DeleteObject"}.get(method, f"{method} object?{'&'.join(query)}")


def split_path(raw_path: str) -> tuple[str | None, str | None]:
    """Bucket and (decoded) key of a path-style request target; botocore uses path style for IP hosts."""
    path = raw_path.split("?", 1)[0]
    bucket, _, key = path.lstrip("/").partition("/")
    return (unquote(bucket) or None), (unquote(key) or None)


# --------------------------------------------------------------------------------------------------
# Records


@dataclass
class Record:
    """One request as the proxy saw it. `status` is None when no HTTP reply was sent (reset, stall)."""

    method: str
    op: str
    bucket: str | None
    key: str | None
    query: str
    status: int | None = None
    fault: str | None = None  # kind of fault injected ("error", "reset", "stall", "delete_errors")
    request_bytes: int = 0  # body bytes read from the client
    done: bool = False
    access_key: str | None = None  # from the SigV4 Authorization header's Credential=
    security_token: str | None = None  # the X-Amz-Security-Token header, if sent
    user_agent: str = ""
    header_names: frozenset[str] = frozenset()  # the request's header names, lowercased


# --------------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Fault:
    """What all faults share: a share of matching requests, an optional filter, an optional budget.

    `probability` is drawn from the proxy's seeded RNG once per request that passes the filter, so a
    sequential client sees the same faults on every run (concurrent clients reorder the draws).
    `ops` / `keys` limit the fault to those S3 operations / object keys (empty = any).
    `max_hits` stops the fault after that many injections, e.g. "fail the first attempt only".
    `header` limits it to requests carrying that header (any case), e.g. a server that refuses
    x-amz-checksum-type but takes the same request without it.
    """

    probability: float = 1.0
    ops: Collection[str] = frozenset()
    keys: Collection[str] = frozenset()
    max_hits: int | None = None
    header: str = ""

    kind: ClassVar[str] = "fault"

    def __post_init__(self) -> None:
        # Accept any collection (a set literal, a list), store an immutable one.
        object.__setattr__(self, "ops", frozenset(self.ops))
        object.__setattr__(self, "keys", frozenset(self.keys))

    def matches(self, record: Record) -> bool:
        if self.ops and record.op not in self.ops:
            return False
        if self.header and self.header.lower() not in record.header_names:
            return False
        return not self.keys or record.key in self.keys


@dataclass(frozen=True)
class ErrorReply(Fault):
    """Answer with an S3 XML error without forwarding (503 SlowDown, 500 InternalError, 403 ...)."""

    status: int = 503
    code: str = "SlowDown"
    message: str = ""
    # More elements of <Error> (S3 adds e.g. <Region>, <RequestTime>, <ServerTime>) and reply headers
    # (x-amz-bucket-region), as (name, value) pairs.
    extra_xml: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    kind: ClassVar[str] = "error"


@dataclass(frozen=True)
class ResetBody(Fault):
    """Read `fraction` of the request body, then abort the TCP connection (the client sees a reset).

    `fraction=0` resets before reading anything, which also covers body-less requests.
    Nothing is forwarded: moto never sees the request.
    """

    fraction: float = 0.5

    kind: ClassVar[str] = "reset"


@dataclass(frozen=True)
class Stall(Fault):
    """Read the whole body, wait `seconds` (at most MAX_STALL_S), then close without replying.

    With `forward=True` the request reaches moto first and only the reply is withheld: the write
    happened but the client cannot know, which is what a retry after a read timeout must survive.
    """

    seconds: float = 5.0
    forward: bool = False

    kind: ClassVar[str] = "stall"


@dataclass(frozen=True)
class Delay(Fault):
    """Hold the request `seconds` (at most MAX_STALL_S) before forwarding it: a slow server that answers."""

    seconds: float = 1.0

    kind: ClassVar[str] = "delay"


@dataclass(frozen=True)
class PacedBody(Fault):
    """Read the request body at `bytes_per_s` (each request at its own pace) while forwarding it as
    it comes: a slow uplink. A client that gives up mid-body leaves moto a short body, which it
    never stores, so a cut upload never becomes an object."""

    bytes_per_s: float = 1024 * 1024

    kind: ClassVar[str] = "paced"


@dataclass(frozen=True)
class Gate(Fault):
    """Hold the request until the test sets `opened` (at most MAX_STALL_S), then forward it: a point
    in a run (one given request) at which a test changes the world deterministically, e.g. swaps a
    file between the walk and its upload. `arrived` is set once the hold begins. With
    `after_forward=True` the request reaches moto first and its reply is held instead: the write
    has happened, and the client does not know yet."""

    opened: threading.Event = dataclasses.field(default_factory=threading.Event)
    arrived: threading.Event = dataclasses.field(default_factory=threading.Event)
    after_forward: bool = False

    kind: ClassVar[str] = "gate"


@dataclass(frozen=True)
class CorruptBody(Fault):
    """Flip one byte in the middle of the request body, keeping its length, and forward it.

    With `verify=True` the proxy first checks the body against the checksum header the client sent
    (x-amz-checksum-crc32 / -sha256 / -sha1, or Content-MD5), as S3 does, and answers 400 BadDigest
    without forwarding (moto does not check checksum values). With `verify=False` the corrupted body
    reaches moto and is stored: what a server that checks nothing would do."""

    verify: bool = True

    kind: ClassVar[str] = "corrupt"


@dataclass(frozen=True)
class CheckDigest(CorruptBody):
    """Check bodies against their checksum header as S3 does, without touching them: a body that
    changed on the client after its checksum was taken is refused with 400 BadDigest."""

    kind: ClassVar[str] = "check-digest"


@dataclass(frozen=True)
class SlowReply(Fault):
    """Forward the request, then hold moto's reply `seconds` (at most MAX_STALL_S) before relaying
    it: the write has happened and the client learns of it late, e.g. after a signal."""

    seconds: float = 3.0

    kind: ClassVar[str] = "slow_reply"


@dataclass(frozen=True)
class FakeReply(Fault):
    """Read the body, then answer `status` with `body` without forwarding: a reply S3 would never
    send (a well-formed document lacking a field the client needs), for what breaks above the wire.
    Nothing reaches moto."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/xml"

    kind: ClassVar[str] = "fake_reply"


@dataclass(frozen=True)
class DeleteKeyErrors(Fault):
    """Report per-key `<Error>` entries in a DeleteObjects reply for some keys.

    The request goes to moto unchanged and moto deletes every key; the proxy then rewrites the reply,
    turning the chosen keys' `<Deleted>` entries into `<Error>`. Rewriting the reply is the only way
    that keeps the client's Content-MD5 / CRC32 of the body valid. So: an erroring key was in fact
    deleted, as can happen on real S3 when the reply is lost in an internal timeout; a retry must
    then cope with "already gone" (S3 reports deleting a missing key as success).
    Keys listed in `error_keys` always error; every other key errors with probability `key_share`.
    `ops` defaults to DeleteObjects and `keys` is not used as a request filter here.
    """

    key_share: float = 0.5
    error_keys: Collection[str] = frozenset()
    code: str = "InternalError"
    message: str = ""

    kind: ClassVar[str] = "delete_errors"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "error_keys", frozenset(self.error_keys))

    def matches(self, record: Record) -> bool:
        return record.op in (self.ops or {"DeleteObjects"})


@dataclass(frozen=True)
class RefuseDeleteBatch(Fault):
    """Answer 400 MalformedXML, without forwarding, to a DeleteObjects request whose body names one
    of `refused_keys`, as S3 refuses a body holding a character XML 1.0 cannot carry (U+FFFE, U+FFFF).
    Any other DeleteObjects request goes to moto unchanged. `ops` defaults to DeleteObjects."""

    refused_keys: Collection[str] = frozenset()

    kind: ClassVar[str] = "refuse_delete"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "refused_keys", frozenset(self.refused_keys))

    def matches(self, record: Record) -> bool:
        return record.op in (self.ops or {"DeleteObjects"})


def slow_down(
    probability: float = 1.0,
    *,
    ops: Iterable[str] = (),
    keys: Iterable[str] = (),
    max_hits: int | None = None,
) -> ErrorReply:
    """503 SlowDown, S3's throttling answer; botocore retries it in every retry mode."""
    return ErrorReply(probability, frozenset(ops), frozenset(keys), max_hits, status=503, code="SlowDown")


def internal_error(
    probability: float = 1.0,
    *,
    ops: Iterable[str] = (),
    keys: Iterable[str] = (),
    max_hits: int | None = None,
) -> ErrorReply:
    """500 InternalError; botocore retries it too."""
    return ErrorReply(probability, frozenset(ops), frozenset(keys), max_hits, status=500, code="InternalError")


def access_denied() -> ErrorReply:
    """403 InvalidAccessKeyId for every request: the "credentials are gone" fail-fast case."""
    return ErrorReply(status=403, code="InvalidAccessKeyId")


def digest_mismatch(headers: Mapping[str, str], body: bytes) -> str | None:
    """Which checksum header `body` does not match, as S3 names it in BadDigest; None when all match."""
    lowered = {k.lower(): v for k, v in headers.items()}
    crc = lowered.get("x-amz-checksum-crc32")
    if crc is not None and base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode() != crc:
        return "CRC32"
    for name, algorithm in (("x-amz-checksum-sha256", "sha256"), ("x-amz-checksum-sha1", "sha1")):
        value = lowered.get(name)
        if value is not None and base64.b64encode(hashlib.new(algorithm, body).digest()).decode() != value:
            return algorithm.upper()
    md5 = lowered.get("content-md5")
    if md5 is not None and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
        return "Content-MD5"
    payload = lowered.get("x-amz-content-sha256", "")
    if re.fullmatch(r"[0-9a-f]{64}", payload) and hashlib.sha256(body).hexdigest() != payload:
        return PAYLOAD_SHA256  # a signed payload hash: S3 checks the body against it
    return None


PAYLOAD_SHA256 = "x-amz-content-sha256"


def error_xml(code: str, message: str, resource: str, request_id: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """An S3 error body as botocore's parser expects it."""
    more = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in extra)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>{more}"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


_DELETED_RE = re.compile(rb"<Deleted>(.*?)</Deleted>", re.S)
_KEY_RE = re.compile(rb"<Key>(.*?)</Key>", re.S)
_OBJECT_RE = re.compile(rb"<Object>(.*?)</Object>", re.S)
_VERSION_RE = re.compile(rb"<VersionId>(.*?)</VersionId>", re.S)


def rewrite_delete_reply(request_body: bytes, reply: bytes, error_keys: set[str], code: str, message: str) -> bytes:
    """Move `error_keys` from `<Deleted>` to `<Error>` in a DeleteResult.

    Keys come from the request body too, so Quiet mode (no `<Deleted>` in the reply) works the same.
    Regexes rather than an XML tree keep moto's bytes untouched apart from the moved entries.
    """

    def key_of(fragment: bytes) -> str | None:
        m = _KEY_RE.search(fragment)
        return unescape(m.group(1).decode()) if m else None

    reply = _DELETED_RE.sub(lambda m: b"" if key_of(m.group(1)) in error_keys else m.group(0), reply)
    entries = []
    for m in _OBJECT_RE.finditer(request_body):
        key = key_of(m.group(1))
        if key is None or key not in error_keys:
            continue
        version = _VERSION_RE.search(m.group(1))
        version_xml = b"<VersionId>" + version.group(1) + b"</VersionId>" if version else b""
        entries.append(
            b"<Error><Key>"
            + escape(key).encode()
            + b"</Key>"
            + version_xml
            + b"<Code>"
            + escape(code).encode()
            + b"</Code><Message>"
            + escape(message).encode()
            + b"</Message></Error>"
        )
    end = reply.rfind(b"</DeleteResult>")
    if end < 0:
        return reply
    return reply[:end] + b"".join(entries) + reply[end:]


def delete_request_keys(body: bytes) -> list[str]:
    """The keys named in a DeleteObjects request body, in order."""
    keys = []
    for m in _OBJECT_RE.finditer(body):
        k = _KEY_RE.search(m.group(1))
        if k:
            keys.append(unescape(k.group(1).decode()))
    return keys


# --------------------------------------------------------------------------------------------------
# The proxy


class ProxyServer:
    """Reverse proxy to `upstream` on a free loopback port, served from its own thread and loop.

    Use `with ProxyServer(url) as proxy:` in sync tests (the CLI may run in a subprocess meanwhile) or
    `async with` in async tests; both just start and stop the thread. All public methods are
    thread-safe and may be called while clients are running.
    """

    def __init__(self, upstream: str, *, seed: int = 0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = port
        self._seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults: tuple[Fault, ...] = ()
        self._hits: list[int] = []
        self._records: list[Record] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping: asyncio.Event | None = None
        self._request_seq = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint URL clients should use, e.g. http://127.0.0.1:PORT."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start serving; after `stop()` it starts again on the same port."""
        if self._thread is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"s3proxy:{self.port}", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(sock), loop).result(timeout=10)

    def stop(self) -> None:
        """Stop serving: in-flight stalls end at once, new connections are refused."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    async def _astart(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        # No compression and no added headers: bytes go through as they are.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        self._runner = web.ServerRunner(web.Server(self._handle), shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _astop(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        # Connection handlers whose peer vanished mid-request can outlive cleanup(); end them here
        # rather than let the loop die with pending tasks.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # -- configuration and records -----------------------------------------------------------------

    def set_faults(self, *faults: Fault, seed: int | None = None) -> None:
        """Replace the active faults; the first matching fault that fires wins. Reseeds if asked."""
        with self._lock:
            self._faults = tuple(faults)
            self._hits = [0] * len(faults)
            if seed is not None:
                self._rng = random.Random(seed)

    def clear(self, *, records: bool = True, faults: bool = True) -> None:
        """Forget records and/or faults and reseed, so a test's second phase starts clean."""
        with self._lock:
            if records:
                self._records.clear()
            if faults:
                self._faults, self._hits = (), []
                self._rng = random.Random(self._seed)

    @property
    def requests(self) -> list[Record]:
        """A snapshot (copies) of all records so far, in arrival order."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._records]

    def wait_done(self, timeout_s: float = 5.0) -> list[Record]:
        """Wait until every recorded request has finished on the proxy's side; return the records.

        A client may hold its reply a moment before the proxy's handler returns, so `done` can lag.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.requests
            if all(r.done for r in records):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"requests still running: {[r for r in records if not r.done]}")
            time.sleep(0.01)

    def ops(self, *, include_faulted: bool = True) -> list[str]:
        """Operation names in arrival order."""
        return [r.op for r in self.requests if include_faulted or r.fault is None]

    def count(self, op: str | None = None, *, faulted: bool | None = None, status: int | None = None) -> int:
        """How many requests of `op` (any if None), optionally only (not) faulted or with a status."""
        return sum(
            1
            for r in self.requests
            if (op is None or r.op == op)
            and (faulted is None or (r.fault is not None) == faulted)
            and (status is None or r.status == status)
        )

    def _pick_fault(self, record: Record) -> Fault | None:
        with self._lock:
            self._records.append(record)
            for i, fault in enumerate(self._faults):
                if not fault.matches(record):
                    continue
                if fault.max_hits is not None and self._hits[i] >= fault.max_hits:
                    continue
                if fault.probability >= 1.0 or self._rng.random() < fault.probability:
                    self._hits[i] += 1
                    return fault
            return None

    def _draw_keys(self, fault: DeleteKeyErrors, keys: Iterable[str]) -> set[str]:
        with self._lock:
            return {k for k in keys if k in fault.error_keys or self._rng.random() < fault.key_share}

    def _set_status(self, record: Record, status: int) -> None:
        with self._lock:
            record.status = status

    def _finish(self, record: Record, status: int | None) -> None:
        with self._lock:
            if status is not None:
                record.status = status
            record.done = True

    # -- request handling --------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path = request.raw_path
        bucket, key = split_path(raw_path)
        query_string = raw_path.partition("?")[2]
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        op = s3_operation(request.method, bucket, key, query, "x-amz-copy-source" in request.headers)
        record = Record(request.method, op, bucket, key, query_string)
        credential = re.search(r"Credential=([^/,\s]+)/", request.headers.get("Authorization", ""))
        record.access_key = credential.group(1) if credential else None
        record.security_token = request.headers.get("X-Amz-Security-Token")
        record.user_agent = request.headers.get("User-Agent", "")
        record.header_names = frozenset(k.lower() for k in request.headers)
        fault = self._pick_fault(record)
        if fault is not None and not isinstance(fault, DeleteKeyErrors | RefuseDeleteBatch):
            record.fault = fault.kind
        status: int | None = None
        response: web.StreamResponse
        try:
            if isinstance(fault, ErrorReply):
                response = await self._error_reply(request, record, fault)
                status = response.status
                return response
            if isinstance(fault, ResetBody):
                await self._reset(request, record, fault)
                return web.Response()  # never written: the transport is gone
            if isinstance(fault, Stall):
                await self._stall(request, record, fault)
                return web.Response()
            if isinstance(fault, Gate) and not fault.after_forward:
                await self._hold_at_gate(fault)
            if isinstance(fault, Delay):
                assert self._stopping is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(fault.seconds, MAX_STALL_S))
            if isinstance(fault, CorruptBody):
                response = await self._forward_corrupted(request, record, fault)
                status = response.status
                return response
            if isinstance(fault, FakeReply):
                await self._drain(request, record)
                status = fault.status
                return web.Response(status=fault.status, body=fault.body, content_type=fault.content_type)
            response = await self._forward(request, record, fault)
            status = response.status
            return response
        finally:
            self._finish(record, status)

    async def _hold_at_gate(self, fault: Gate) -> None:
        assert self._stopping is not None
        fault.arrived.set()
        deadline = time.monotonic() + MAX_STALL_S
        # Polled: the test's thread sets a threading.Event, which this loop cannot await.
        while not (fault.opened.is_set() or self._stopping.is_set()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _send_continue(self, request: web.BaseRequest) -> None:
        """Answer `Expect: 100-continue` ourselves; the header is not forwarded."""
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0

    async def _read_body(self, request: web.BaseRequest, record: Record, pace: float = 0) -> AsyncIterator[bytes]:
        await self._send_continue(request)
        started = time.monotonic()
        async for chunk in request.content.iter_chunked(min(CHUNK_BYTES, int(pace / 20)) if pace else CHUNK_BYTES):
            record.request_bytes += len(chunk)
            if pace:  # no further than `pace` bytes per second ahead of the start
                await asyncio.sleep(max(0.0, record.request_bytes / pace - (time.monotonic() - started)))
            yield chunk

    async def _drain(self, request: web.BaseRequest, record: Record) -> None:
        async for _ in self._read_body(request, record):
            pass

    async def _error_reply(self, request: web.BaseRequest, record: Record, fault: ErrorReply) -> web.Response:
        # A client waiting on 100-continue gets the error instead of a go-ahead, as from real S3; a
        # client already sending gets its body read first so the connection stays usable.
        expects_continue = request.headers.get("Expect", "").lower() == "100-continue"
        if not expects_continue:
            await self._drain(request, record)
        self._request_seq += 1
        request_id = f"S3PROXY{self._request_seq:09d}"
        body = error_xml(
            fault.code,
            fault.message or ERROR_MESSAGES.get(fault.code, fault.code),
            request.path,
            request_id,
            fault.extra_xml,
        )
        headers = {"Content-Type": "application/xml", "x-amz-request-id": request_id, **dict(fault.headers)}
        if fault.status == 503:
            headers["Retry-After"] = "0"
        response = web.Response(status=fault.status, body=body, headers=headers)
        if expects_continue:
            # The unread body may still arrive; on a kept-alive connection it would be parsed as the
            # next request. Closing is what RFC 9110 10.1.1 allows a server that refuses the body.
            response.force_close()
        return response

    async def _reset(self, request: web.BaseRequest, record: Record, fault: ResetBody) -> None:
        length = request.content_length or 0
        want = int(length * fault.fraction)
        if want > 0:
            await self._send_continue(request)
            data = await request.content.readexactly(want)
            record.request_bytes += len(data)
        assert request.transport is not None
        request.transport.abort()

    async def _stall(self, request: web.BaseRequest, record: Record, fault: Stall) -> None:
        if fault.forward:
            upstream = await self._upstream(request, self._read_body(request, record))
            upstream.release()
        else:
            await self._drain(request, record)
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), min(fault.seconds, MAX_STALL_S))
        if request.transport is not None:
            request.transport.abort()

    async def _upstream(
        self, request: web.BaseRequest, body: AsyncIterator[bytes] | bytes | None
    ) -> aiohttp.ClientResponse:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        # `encoded=True` keeps the target byte for byte: SigV4 signs the canonical (encoded) URI.
        url = URL(self.upstream + request.raw_path, encoded=True)
        has_body = request.body_exists
        return await self._session.request(
            request.method,
            url,
            headers=headers,
            data=body if has_body else None,
            allow_redirects=False,
            compress=False,
        )

    async def _forward(self, request: web.BaseRequest, record: Record, fault: Fault | None) -> web.StreamResponse:
        if isinstance(fault, DeleteKeyErrors):
            return await self._forward_delete(request, record, fault)
        if isinstance(fault, RefuseDeleteBatch):
            return await self._refuse_delete(request, record, fault)
        pace = fault.bytes_per_s if isinstance(fault, PacedBody) else 0
        upstream = await self._upstream(request, self._read_body(request, record, pace))
        async with upstream:
            if isinstance(fault, Gate) and fault.after_forward:
                await self._hold_at_gate(fault)
            if isinstance(fault, SlowReply):
                assert self._stopping is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(fault.seconds, MAX_STALL_S))
            headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            # Record the status before the client can see the reply, so a test reading records right
            # after its call returned never finds it missing.
            self._set_status(record, upstream.status)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _forward_corrupted(self, request: web.BaseRequest, record: Record, fault: CorruptBody) -> web.Response:
        # Request bodies here are at most one part (tens of MiB): buffering it is fine in a test.
        body = bytearray(b"".join([c async for c in self._read_body(request, record)]))
        if body and not isinstance(fault, CheckDigest):
            body[len(body) // 2] ^= 0xFF
        if fault.verify:
            wrong = digest_mismatch(request.headers, bytes(body))
            if wrong is not None:
                self._request_seq += 1
                request_id = f"S3PROXY{self._request_seq:09d}"
                if wrong == PAYLOAD_SHA256:  # as S3 and Ceph RGW answer a body that fails its signed hash
                    code, message = (
                        "XAmzContentSHA256Mismatch",
                        "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    )
                else:
                    code, message = "BadDigest", f"The {wrong} you specified did not match the calculated checksum."
                reply = error_xml(code, message, request.path, request_id)
                return web.Response(
                    status=400, body=reply, headers={"Content-Type": "application/xml", "x-amz-request-id": request_id}
                )
        async with await self._upstream(request, bytes(body)) as upstream:
            reply = await upstream.read()
            headers = [
                (k, v)
                for k, v in upstream.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
            ]
            return web.Response(status=upstream.status, reason=upstream.reason, body=reply, headers=headers)

    async def _forward_delete(self, request: web.BaseRequest, record: Record, fault: DeleteKeyErrors) -> web.Response:
        # DeleteObjects bodies are small (at most 1,000 keys), so buffering both ways is fine here.
        body = b"".join([c async for c in self._read_body(request, record)])
        async with await self._upstream(request, body) as upstream:
            reply = await upstream.read()
            headers = [
                (k, v)
                for k, v in upstream.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
            ]
            if upstream.status == 200:
                error_keys = self._draw_keys(fault, delete_request_keys(body))
                if error_keys:
                    record.fault = fault.kind
                    reply = rewrite_delete_reply(
                        body,
                        reply,
                        error_keys,
                        fault.code,
                        fault.message or ERROR_MESSAGES.get(fault.code, fault.code),
                    )
            return web.Response(status=upstream.status, reason=upstream.reason, body=reply, headers=headers)

    async def _refuse_delete(self, request: web.BaseRequest, record: Record, fault: RefuseDeleteBatch) -> web.Response:
        body = b"".join([c async for c in self._read_body(request, record)])
        if fault.refused_keys.isdisjoint(delete_request_keys(body)):
            async with await self._upstream(request, body) as upstream:
                reply = await upstream.read()
                headers = [
                    (k, v)
                    for k, v in upstream.headers.items()
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
                ]
                return web.Response(status=upstream.status, reason=upstream.reason, body=reply, headers=headers)
        record.fault = fault.kind
        self._request_seq += 1
        request_id = f"S3PROXY{self._request_seq:09d}"
        message = "The XML you provided was not well-formed or did not validate against our published schema"
        reply = error_xml("MalformedXML", message, request.path, request_id)
        headers = {"Content-Type": "application/xml", "x-amz-request-id": request_id}
        return web.Response(status=400, body=reply, headers=headers)
