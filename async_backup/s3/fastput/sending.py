"""PutObject and UploadPart without botocore's per-request machinery: SigV4 by hand over aiohttp.

Owns the requests that carry file contents: a PutObject per new or changed small file, an
UploadPart per part of a large one. botocore spends about a millisecond of CPU on each (endpoint
rules, hooks, user agent, signing, parsing). The body is covered by the checksum the caller
computed while reading it: a CRC32 header (UNSIGNED-PAYLOAD) where the server takes flexible
checksums, else the body's SHA-256 as the signed payload hash; S3 verifies either. Everything
else (buckets, creating and completing uploads, deletes, listings) stays on botocore.

Nothing here is configured on its own: client.py hands over the botocore client's credentials
(static, or refreshable ones from a role, SSO, `credential_process`), the URL botocore's endpoint rules give
each bucket (endpoint, addressing style, signing region), and an SSL context built from the same CA
bundle botocore verifies with. So every request of a run uses one credential, endpoint and TLS
stack. The signature is byte for byte what botocore's `S3SigV4Auth` computes for the same request
(tests/test_fastpath_signing.py checks it); botocore's signer itself costs 55-75 µs more CPU per
request, 15-25 % of a whole PutObject here (benchmarks/RESULTS.md), which is why this one stays.

Retries follow botocore's standard mode: throttling, 5xx, timeouts and dropped connections are
retried with capped, jittered exponential backoff, up to `tuning.max_attempts` attempts. Errors map
onto ours exactly as client.py maps botocore's. Must not import botocore or aiobotocore.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import itertools
import math
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import aiohttp
import aiohttp.abc
import aiohttp.helpers
import aiohttp.payload
import anyio
from yarl import URL

from ...backoff import Backoff
from ...errors import FatalError, S3Error

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"  # the body is covered by x-amz-checksum-crc32 (or Content-MD5) instead
RETRY_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})
# The bucket lives in another region than the one requests are signed for. S3 answers
# PermanentRedirect (301) to a request sent to the wrong regional endpoint and
# AuthorizationHeaderMalformed (400) to one signed for the wrong region [S3 error responses].
REGION_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"})
SKEW_CODE = "RequestTimeTooSkewed"  # more than 15 minutes between our clock and S3's
MAX_BACKOFF_S = 20.0  # botocore's standard mode caps its backoff at 20 s
BACKOFF = Backoff(first_s=1.0, cap_s=MAX_BACKOFF_S, jitter=True)  # botocore's standard mode
# A body goes to the socket in slices of this size, each a view of the caller's buffer. Handed over
# whole, a 16 MiB part is copied two or three times on the event loop's thread (asyncio's
# writelines joins headers and body into new bytes, the unsent rest is copied again, then appended to
# the transport's buffer); in slices, only the unsent rest of one slice is ever copied.
BODY_SLICE_BYTES = 256 * 1024
TLS_SLICE_BYTES = 16 * 1024  # one TLS record: see write_slice_bytes
TLS_WRITE_BUFFER_HIGH = 64 * 1024  # ciphertext a TLS transport may hold before it pauses writes
_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_REGION = re.compile(rb"<Region>([^<]+)</Region>")
_REQUEST_TIME = re.compile(rb"<RequestTime>([^<]+)</RequestTime>")
_SERVER_TIME = re.compile(rb"<ServerTime>([^<]+)</ServerTime>")


class FrozenCredentials(Protocol):
    """One consistent set of keys, as botocore's `ReadOnlyCredentials` holds it."""

    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def token(self) -> str | None: ...


class CredentialSource(Protocol):
    """botocore's (aiobotocore's) credentials object: static or refreshable.

    `get_frozen_credentials` is what botocore's own signer calls for every request: for static keys
    it returns them; for temporary ones it refreshes them first when less than 15 minutes are left
    (10 minutes: every caller waits for the refresh), otherwise it only compares two times."""

    async def get_frozen_credentials(self) -> FrozenCredentials: ...


@dataclass(frozen=True, slots=True)
class BucketEndpoint:
    """Where and how requests for one bucket go, as botocore's endpoint rules resolve it."""

    origin: str  # scheme://host[:port], the port only when it is not the scheme's default
    path_prefix: str  # "/bucket" (path style, after any path of the endpoint URL) or "" (virtual-hosted)
    region: str  # the signing region
    service: str = "s3"

    @property
    def host(self) -> str:
        return self.origin.partition("://")[2]


EndpointResolver = Callable[[str], Awaitable[BucketEndpoint | None]]


def tls_failure_message(endpoint: str, reason: object) -> str:
    """One line for a TLS failure: what failed, where, and what to set."""
    return (
        f"the TLS certificate of S3 at {endpoint} cannot be verified ({reason}): set aws.ca_bundle in "
        "config.json (or AWS_CA_BUNDLE) to the PEM file of the CA that issued it"
    )


def region_message(bucket: str, bucket_region: str | None, configured: str) -> str:
    where = f"region {bucket_region}" if bucket_region else "another region"
    fix = f"set aws.region to {bucket_region}" if bucket_region else "set aws.region to the bucket's region"
    return f"bucket {bucket} is in {where}, not in aws.region {configured}: {fix} in config.json"


def skew_message(request_time: str | None, server_time: str | None) -> str:
    """RequestTimeTooSkewed as one line: by how much our clock is off."""
    ours, theirs = _parse_amz_time(request_time), _parse_amz_time(server_time)
    if ours is None or theirs is None:
        return "S3 refused the request time (RequestTimeTooSkewed): this machine's clock is off; sync it (NTP)"
    offset_s = (ours - theirs).total_seconds()
    direction = "ahead of" if offset_s > 0 else "behind"
    return (
        f"the clock is off by {abs(offset_s):.0f} s ({direction} S3's, RequestTimeTooSkewed): "
        "sync this machine's clock (NTP) and run again"
    )


def _parse_amz_time(value: str | None) -> datetime.datetime | None:
    """S3 writes RequestTime as 20261201T120000Z and ServerTime as 2026-12-01T12:00:00Z."""
    if not value:
        return None
    for fmt in ("%Y%m%dT%H%M%SZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.datetime.strptime(value.strip(), fmt).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    return None


def _canonical_value(value: str) -> str:
    # SigV4's Trimall, as botocore applies it: outer whitespace gone, inner runs collapsed to one space.
    return " ".join(value.split())


class SlicedBody(aiohttp.BytesPayload):
    """A request body written from the caller's memory in BODY_SLICE_BYTES views, waiting for the
    socket to drain between them; the Content-Length is the whole body's."""

    def __init__(self, body: bytes | bytearray | memoryview, stall_timeout_s: float | None = None) -> None:
        super().__init__(body, content_type="application/octet-stream")
        self._view = memoryview(body).cast("B")
        self._stall_timeout_s = stall_timeout_s  # as StreamedBody's

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None) -> None:
        view = self._view if content_length is None else self._view[:content_length]
        slice_bytes = write_slice_bytes(writer)
        with stall_clock(self._stall_timeout_s) as clock:
            # Usually one chunk; a file that grew since the walk may be read whole up to the threshold.
            for start in range(0, len(view), BODY_SLICE_BYTES):
                clock.restart()
                await _write_in_slices(writer, view[start : start + BODY_SLICE_BYTES], slice_bytes)


class ChunkReader(Protocol):
    async def read_into(self, view: memoryview, position: int) -> int:
        """Fill `view` from `position` of the file as far as one read goes (at least one byte);
        raise the caller's own error when the file ends first."""
        ...


class BodyStream:
    """A body that is a range of an open file, sent chunk by chunk through two reused buffers.

    What it needs from the caller: a reader for the file, the range, and the two buffers. After a
    failed attempt, `failure` holds why the body could not be read (the file changed, vanished or
    is unreadable), and `tainted` says the buffers may still be written into or referenced (a read
    in a thread or a send that was cut off): the caller must not reuse them then."""

    def __init__(self, reader: ChunkReader, offset: int, length: int, buffers: list[bytearray]) -> None:
        self.reader = reader
        self.offset = offset
        self.length = length
        self.buffers = buffers
        self.failure: Exception | None = None
        self.tainted = False


class StreamedBody(aiohttp.payload.Payload):
    """One attempt at sending a BodyStream. Each chunk is read into the buffer whose previous chunk
    the transport has let go of, and written as a view of it: no copy of the body in Python.

    aiohttp's read timeout only starts once the body is sent, so a server that stops reading
    mid-body would hold the request forever: a chunk that cannot be handed to the kernel within the
    stall timeout of its read fails the attempt (TimeoutError, retried like a read timeout)."""

    def __init__(self, stream: BodyStream, stall_timeout_s: float | None = None) -> None:
        super().__init__(stream, content_type="application/octet-stream")
        self._size = stream.length
        self._stream = stream
        self._stall_timeout_s = stall_timeout_s

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file body has no text form")

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None) -> None:
        stream = self._stream
        remaining = stream.length if content_length is None else min(content_length, stream.length)
        position = stream.offset
        views = [memoryview(b) for b in stream.buffers]
        slice_bytes = write_slice_bytes(writer)
        sent_last = 0
        finished = False
        try:
            with stall_clock(self._stall_timeout_s) as clock:
                for index in itertools.count():
                    if not remaining:
                        break
                    view = views[index % 2]
                    if index >= 2:
                        # This buffer held the chunk before last: the transport must have let go of it.
                        await _until_queued_at_most(writer, sent_last)
                    with clock.reading():
                        n = await stream.reader.read_into(view[: min(len(view), remaining)], position)
                    if n <= 0:
                        raise ValueError("the body's reader returned no bytes before the end of its range")
                    await _write_in_slices(writer, view[:n], slice_bytes)
                    position += n
                    remaining -= n
                    sent_last = n
                # The reply cannot come before S3 has the whole body, so waiting here costs no time.
                await _until_queued_at_most(writer, 0)
            finished = True
        except Exception as exc:
            if not isinstance(exc, (aiohttp.ClientError, OSError)):
                # The file's side (FileChanged, FileUnreadable, ...), not the network's (the reader
                # maps the file's OSErrors to its own errors, so an OSError here is the socket's).
                stream.failure = exc
            raise
        finally:
            if not finished:
                stream.tainted = True
            for v in views:
                v.release()


async def _write_in_slices(writer: aiohttp.abc.AbstractStreamWriter, view: memoryview, slice_bytes: int) -> None:
    """Hand `view` to the writer in views of `slice_bytes`."""
    for start in range(0, len(view), slice_bytes):
        await writer.write(view[start : start + slice_bytes])


class StallClock:
    """A TimeoutError once a body's send has stalled for `timeout_s`.

    One cancel scope covers the whole body. Its deadline is `timeout_s` after the last read of the
    file ended, so each chunk must be handed to the kernel within the timeout, counted from when it
    was read; while the file is read the deadline is held off (a slow disk is not a stalled server).
    A scope per write instead cost about a tenth of a TLS upload's CPU (entering one asks anyio which
    loop runs, and that costs a getpid)."""

    def __init__(self, scope: anyio.CancelScope, timeout_s: float | None) -> None:
        self._scope = scope
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()  # anyio's asyncio backend keeps time by this clock

    @contextmanager
    def reading(self) -> Iterator[None]:
        if self._timeout_s is None:
            yield
            return
        self._scope.deadline = math.inf
        try:
            yield
        finally:
            self.restart()

    def restart(self) -> None:
        """Start the timeout again from now (a new chunk is on its way)."""
        if self._timeout_s is not None:
            self._scope.deadline = self._loop.time() + self._timeout_s


@contextmanager
def stall_clock(timeout_s: float | None) -> Iterator[StallClock]:
    with anyio.fail_after(timeout_s) as scope:
        yield StallClock(scope, timeout_s)


def write_slice_bytes(writer: aiohttp.abc.AbstractStreamWriter) -> int:
    """How much of a body goes to the transport in one write: BODY_SLICE_BYTES, or over TLS
    TLS_SLICE_BYTES, after capping the TLS transport's write buffer.

    The SSL protocol encrypts each write whole into its connection's memory BIO, which keeps the
    largest size it ever held for as long as the connection lives: about 70 KiB per pooled
    connection plus the largest write (benchmarks/tls_connection_memory.py), so one record per
    write. And uvloop lets a TLS transport hold up to 512 KiB of ciphertext before it pushes back
    (plain TCP: 64 KiB), which the BIO then keeps too: capped like plain TCP's."""
    transport = getattr(writer, "transport", None)
    if transport is None or transport.get_extra_info("ssl_object") is None:
        return BODY_SLICE_BYTES
    if transport.get_write_buffer_limits()[1] > TLS_WRITE_BUFFER_HIGH:
        transport.set_write_buffer_limits(high=TLS_WRITE_BUFFER_HIGH, low=TLS_WRITE_BUFFER_HIGH // 4)
    return TLS_SLICE_BYTES


async def _until_queued_at_most(writer: aiohttp.abc.AbstractStreamWriter, limit_bytes: int) -> None:
    """Wait until the transport holds at most `limit_bytes` not yet handed to the kernel (uvloop
    keeps references to written buffers until then; asyncio copies, but is waited for the same).

    The transport's own flow control does the waiting: its write-buffer limits are set to
    `limit_bytes` meanwhile, so it pauses the connection's protocol while it holds more and resumes
    it once it holds no more, and drain() sleeps until then. Polling instead cost a whole core once
    S3 read slower than the loop could write (8 s of CPU per GB at 25 MB/s per connection)."""
    transport = getattr(writer, "transport", None)
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the connection closed while the body was sent")
    if transport.get_write_buffer_size() <= limit_bytes:
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=limit_bytes, low=limit_bytes)
    try:
        idle_s = 0.001
        while transport.get_write_buffer_size() > limit_bytes:
            if transport.is_closing():
                raise ConnectionResetError("the connection closed while the body was sent")
            await writer.drain()
            if transport.get_write_buffer_size() > limit_bytes:
                # Not paused after all (a transport that pauses only on its next write): wait a
                # little, longer each time, rather than spin.
                await anyio.sleep(idle_s)
                idle_s = min(2 * idle_s, 0.05)
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


Body = bytes | bytearray | memoryview | BodyStream


class DirectPut:
    """Signs and sends PutObject requests; one instance (and one connection pool) per run."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        credentials: CredentialSource,
        resolve_endpoint: EndpointResolver,
        max_attempts: int,
        fatal_codes: frozenset[str],
        ssl_context: ssl.SSLContext | bool = True,
        endpoint_label: str = "S3",
        configured_region: str = "",
        send_stall_s: float | None = None,
    ) -> None:
        self.session = session
        self._credentials = credentials
        self._resolve_endpoint = resolve_endpoint
        self._endpoints: dict[str, BucketEndpoint | None] = {}
        self._proxies: dict[str, tuple[URL | None, aiohttp.BasicAuth | None]] = {}
        self._max_attempts = max(1, max_attempts)
        self._fatal_codes = fatal_codes
        self._ssl = ssl_context  # an SSLContext, or False to skip certificate checks (aws.verify_tls false)
        self._label = endpoint_label
        self._configured_region = configured_region
        self._send_stall_s = send_stall_s  # longest a body's chunk may take to reach the socket once read
        self._keys: dict[tuple[str, str, str, str], bytes] = {}

    def _signing_key(self, secret: str, day: str, region: str, service: str) -> bytes:
        cache_key = (secret, day, region, service)
        key = self._keys.get(cache_key)
        if key is None:
            k = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (region, service, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {cache_key: k}  # one day and one set of credentials at a time
            key = k
        return key

    def _proxy_for(self, origin: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The proxy for an origin from HTTP(S)_PROXY and NO_PROXY (as botocore honours them), read
        once per origin. The session does not trust the environment itself: aiohttp would then read
        the proxy variables and parse ~/.netrc again for every request, about a tenth of a small
        file's CPU, and could add a netrc login as an Authorization header."""
        try:
            return self._proxies[origin]
        except KeyError:
            try:
                found: tuple[URL | None, aiohttp.BasicAuth | None] = aiohttp.helpers.get_env_proxy_for_url(URL(origin))
            except LookupError:
                found = (None, None)
            self._proxies[origin] = found
            return found

    async def endpoint(self, bucket: str) -> BucketEndpoint | None:
        """The bucket's endpoint, resolved by botocore once per bucket and run; None when this
        bucket's PUTs must go through botocore (a signer other than SigV4)."""
        try:
            return self._endpoints[bucket]
        except KeyError:
            found = self._endpoints[bucket] = await self._resolve_endpoint(bucket)
            return found

    def signed_headers(
        self,
        endpoint: BucketEndpoint,
        key: str,
        headers: Mapping[str, str],
        now: datetime.datetime,
        credentials: FrozenCredentials,
        query: Mapping[str, str] | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The URL and the full header set of a signed PUT (exposed for tests)."""
        path = f"{endpoint.path_prefix}/{quote(key, safe='/~')}"  # percent-encoded as S3 signs it
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted((query or {}).items())
        )
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        all_headers = {k.lower(): v for k, v in headers.items()}
        # The body's SHA-256 when the caller gives it (the server then checks the body against it),
        # else UNSIGNED-PAYLOAD: a CRC32 or MD5 header covers the body instead.
        payload_hash = all_headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD)
        all_headers.update({"host": endpoint.host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash})
        if credentials.token:
            all_headers["x-amz-security-token"] = credentials.token
        names = sorted(all_headers)
        signed = ";".join(names)
        canonical = "\n".join(
            [
                "PUT",
                path,
                canonical_query,
                *(f"{n}:{_canonical_value(all_headers[n])}" for n in names),
                "",
                signed,
                payload_hash,
            ]
        )
        scope = f"{day}/{endpoint.region}/{endpoint.service}/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
        )
        signing_key = self._signing_key(credentials.secret_key, day, endpoint.region, endpoint.service)
        signature = hmac.new(signing_key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        all_headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        del all_headers["host"]  # aiohttp sends it from the URL
        url = f"{endpoint.origin}{path}"
        return (f"{url}?{canonical_query}" if canonical_query else url), all_headers

    async def put(
        self,
        endpoint: BucketEndpoint,
        bucket: str,
        key: str,
        body: Body,
        headers: Mapping[str, str],
        what: str,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """One PUT of a body (PutObject, or UploadPart with its query), retried like botocore's
        standard mode; returns the reply's headers; raises S3Error or FatalError."""
        last: S3Error | None = None
        for attempt in range(self._max_attempts):
            if attempt:
                await anyio.sleep(BACKOFF.delay_s(attempt))
            if isinstance(body, BodyStream):
                body.failure = None
                if body.tainted:
                    # The last attempt was cut off mid-body: its buffers may still be referenced, so
                    # this one reads into new ones (the caller drops the old ones, never reusing them).
                    body.buffers[:] = [bytearray(len(b)) for b in body.buffers]
                    body.tainted = False
            # Asked every attempt, as botocore's signer does: a refresh happens here, never a failure.
            credentials = await self._credentials.get_frozen_credentials()
            now = datetime.datetime.now(datetime.UTC)
            url, signed = self.signed_headers(endpoint, key, headers, now, credentials, query)
            try:
                data: aiohttp.payload.Payload = (
                    StreamedBody(body, self._send_stall_s)
                    if isinstance(body, BodyStream)
                    else SlicedBody(body, self._send_stall_s)
                )
                proxy, proxy_auth = self._proxy_for(endpoint.origin)
                async with self.session.put(
                    URL(url, encoded=True),
                    data=data,
                    headers=signed,
                    ssl=self._ssl,
                    proxy=proxy,
                    proxy_auth=proxy_auth,
                ) as reply:
                    if reply.status < 300:
                        await reply.read()
                        return dict(reply.headers)
                    payload = await reply.read()
                    code, message = _error_of(reply.status, payload)
                    bucket_region = reply.headers.get("x-amz-bucket-region")
            except TimeoutError:
                last = S3Error("ReadTimeoutError", f"{what}: no progress or no answer within the read timeout")
                continue
            except aiohttp.ClientSSLError as exc:  # a certificate no retry can fix
                raise FatalError(tls_failure_message(self._label, _ssl_reason(exc))) from None
            except aiohttp.ClientConnectorError:
                last = S3Error("EndpointConnectionError", f"{what}: cannot connect to {endpoint.host}")
                continue
            except (aiohttp.ClientError, ConnectionError) as exc:
                if isinstance(body, BodyStream) and body.failure is not None:
                    raise body.failure from None  # the file, not the network: no retry sends it whole
                last = S3Error("ConnectionClosedError", f"{what}: connection dropped ({type(exc).__name__})")
                continue
            if code in self._fatal_codes:
                raise FatalError(
                    f"S3 refused the credentials ({code}) during {what}; check aws.access_key and "
                    "aws.secret_access_key, or the AWS profile or role the credentials come from"
                )
            if code in REGION_CODES:
                region = _group(_REGION, payload) or bucket_region
                raise FatalError(region_message(bucket, region, self._configured_region or endpoint.region))
            if code == SKEW_CODE:
                raise FatalError(skew_message(_group(_REQUEST_TIME, payload), _group(_SERVER_TIME, payload)))
            last = S3Error(code, f"{what}: {message or 'request failed'}")
            if not (reply.status >= 500 or reply.status == 429 or code in RETRY_CODES):
                raise last
        assert last is not None
        raise last


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    return str(getattr(inner, "verify_message", "") or getattr(inner, "reason", "") or inner)


def _group(pattern: re.Pattern[bytes], payload: bytes) -> str | None:
    found = pattern.search(payload)
    return found.group(1).decode("utf-8", "replace") if found else None


def _error_of(status: int, payload: bytes) -> tuple[str, str]:
    code = _CODE.search(payload)
    message = _MESSAGE.search(payload)
    return (
        code.group(1).decode("utf-8", "replace") if code else str(status),
        message.group(1).decode("utf-8", "replace") if message else "",
    )
