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
onto ours through `errormap`, as botocore's do in client.py. Must not import botocore or aiobotocore.
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
from ...errors import S3Error
from ..bandwidth import Limiter
from ..errormap import ErrorReply, cannot_connect, connection_dropped, reply_failure, retryable, timed_out, tls_failure
from .bodies import Body, BodyStream, SlicedBody, StreamedBody
from .signing import BucketEndpoint, CredentialSource, Signer

MAX_BACKOFF_S = 20.0  # botocore's standard mode caps its backoff at 20 s
BACKOFF = Backoff(first_s=1.0, cap_s=MAX_BACKOFF_S, jitter=True)  # botocore's standard mode
_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_REGION = re.compile(rb"<Region>([^<]+)</Region>")
_REQUEST_TIME = re.compile(rb"<RequestTime>([^<]+)</RequestTime>")
_SERVER_TIME = re.compile(rb"<ServerTime>([^<]+)</ServerTime>")


EndpointResolver = Callable[[str], Awaitable[BucketEndpoint | None]]


class DirectPut:
    """Signs and sends PutObject requests; one instance (and one connection pool) per run."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        credentials: CredentialSource,
        resolve_endpoint: EndpointResolver,
        max_attempts: int,
        ssl_context: ssl.SSLContext | bool = True,
        endpoint_label: str = "S3",
        configured_region: str = "",
        send_stall_s: float | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.session = session
        self._credentials = credentials
        self._resolve_endpoint = resolve_endpoint
        self._endpoints: dict[str, BucketEndpoint | None] = {}
        self._proxies: dict[str, tuple[URL | None, aiohttp.BasicAuth | None]] = {}
        self._max_attempts = max(1, max_attempts)
        self._ssl = ssl_context  # an SSLContext, or False to skip certificate checks (aws.verify_tls false)
        self._label = endpoint_label
        self._configured_region = configured_region
        self._send_stall_s = send_stall_s  # longest a body's chunk may take to reach the socket once read
        self.signer = Signer()
        self.limiter = limiter  # the run's bandwidth limit, shared with botocore's bodies; None: none

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
                # An attempt cut off mid-body may leave its buffers referenced: this one reads into
                # fresh ones (their owner drops the old ones, never reusing them).
                body.new_attempt()
            # Asked every attempt, as botocore's signer does: a refresh happens here, never a failure.
            credentials = await self._credentials.get_frozen_credentials()
            now = datetime.datetime.now(datetime.UTC)
            url, signed = self.signer.signed_headers(endpoint, key, headers, now, credentials, query)
            try:
                data: aiohttp.payload.Payload = (
                    StreamedBody(body, self._send_stall_s, self.limiter)
                    if isinstance(body, BodyStream)
                    else SlicedBody(body, self._send_stall_s, self.limiter)
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
                    error = _error_reply(reply.status, await reply.read(), reply.headers, bucket)
            except TimeoutError:
                last = timed_out(what)
                continue
            except aiohttp.ClientSSLError as exc:  # a certificate no retry can fix
                raise tls_failure(self._label, _ssl_reason(exc)) from None
            except aiohttp.ClientConnectorError:
                last = cannot_connect(what, self._label)
                continue
            except (aiohttp.ClientError, ConnectionError) as exc:
                if isinstance(body, BodyStream) and body.failure is not None:
                    raise body.failure from None  # the file, not the network: no retry sends it whole
                last = connection_dropped(what, type(exc).__name__)
                continue
            failure = reply_failure(
                error, what, endpoint=self._label, configured_region=self._configured_region or endpoint.region
            )
            if not isinstance(failure, S3Error) or not retryable(reply.status, error.code):
                raise failure
            last = failure
        assert last is not None
        raise last


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    return str(getattr(inner, "verify_message", "") or getattr(inner, "reason", "") or inner)


def _group(pattern: re.Pattern[bytes], payload: bytes) -> str | None:
    found = pattern.search(payload)
    return found.group(1).decode("utf-8", "replace") if found else None


def _error_reply(status: int, payload: bytes, headers: Mapping[str, str], bucket: str) -> ErrorReply:
    """What an error reply's XML (and headers) say, for the error map."""
    return ErrorReply(
        code=_group(_CODE, payload) or str(status),
        message=_group(_MESSAGE, payload) or "",
        bucket=bucket,
        bucket_region=_group(_REGION, payload) or headers.get("x-amz-bucket-region"),
        request_time=_group(_REQUEST_TIME, payload),
        server_time=_group(_SERVER_TIME, payload),
    )
