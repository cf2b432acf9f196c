"""Sending for the fast path: one PUT of a body (PutObject or UploadPart), retried.

Owns the fast path's client (`DirectPut`: one aiohttp session and connection pool per run), the
per-bucket endpoints and proxies, and the retry loop. botocore spends about a millisecond of CPU
on each PUT (endpoint rules, hooks, user agent, signing, parsing); here a PUT is signed by
`signing`, its body written by `bodies`. The body is covered by the checksum the caller computed
while reading it: a CRC32 header (UNSIGNED-PAYLOAD) where the server takes flexible checksums,
else the body's SHA-256 as the signed payload hash; S3 verifies either. Everything else (buckets,
creating and completing uploads, deletes, listings) stays on botocore.

Nothing here is configured on its own: client.py hands over the botocore client's credentials
(static, or refreshable ones from a role, SSO, `credential_process`), the URL botocore's endpoint rules give
each bucket (endpoint, addressing style, signing region), and an SSL context built from the same CA
bundle botocore verifies with. So every request of a run uses one credential, endpoint and TLS
stack.

Retries follow botocore's standard mode: throttling, 5xx, timeouts and dropped connections are
retried with capped, jittered exponential backoff, up to `tuning.max_attempts` attempts. Errors map
onto ours exactly as client.py maps botocore's. Must not import botocore or aiobotocore.
"""

from __future__ import annotations

import datetime
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
import aiohttp.helpers
import aiohttp.payload
import anyio
from yarl import URL

from ...backoff import Backoff
from ...errors import FatalError, S3Error
from .bodies import Body, BodyStream, SlicedBody, StreamedBody
from .signing import BucketEndpoint, CredentialSource, Signer

RETRY_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})
# The bucket lives in another region than the one requests are signed for. S3 answers
# PermanentRedirect (301) to a request sent to the wrong regional endpoint and
# AuthorizationHeaderMalformed (400) to one signed for the wrong region [S3 error responses].
REGION_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"})
SKEW_CODE = "RequestTimeTooSkewed"  # more than 15 minutes between our clock and S3's
MAX_BACKOFF_S = 20.0  # botocore's standard mode caps its backoff at 20 s
BACKOFF = Backoff(first_s=1.0, cap_s=MAX_BACKOFF_S, jitter=True)  # botocore's standard mode
_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_REGION = re.compile(rb"<Region>([^<]+)</Region>")
_REQUEST_TIME = re.compile(rb"<RequestTime>([^<]+)</RequestTime>")
_SERVER_TIME = re.compile(rb"<ServerTime>([^<]+)</ServerTime>")


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
        self.signer = Signer()

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
            url, signed = self.signer.signed_headers(endpoint, key, headers, now, credentials, query)
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
