"""PutObject and UploadPart without botocore's per-request machinery: SigV4 by hand over aiohttp.

Owns the requests that carry file contents: a PutObject per new or changed small file, an
UploadPart per part of a large one. botocore spends about a millisecond of CPU on each (endpoint
rules, hooks, user agent, signing, parsing) and, over plain HTTP, a SHA-256 of every body to sign
it; here the body is covered by its CRC32 or MD5 checksum header instead (UNSIGNED-PAYLOAD), which
S3 verifies. Everything else (buckets, creating and completing uploads, deletes, listings) stays
on botocore.

Used only with static keys from config.json (no token refresh to follow) and can be switched off
with `aws.direct_put: false`. Retries follow botocore's standard mode: throttling, 5xx, timeouts
and dropped connections are retried with capped, jittered exponential backoff, up to
`tuning.max_attempts` attempts. Errors map onto ours exactly as s3.py maps botocore's.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import random
import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
from yarl import URL

from .errors import FatalError, S3Error

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"  # the body is covered by Content-MD5 / x-amz-checksum-crc32 instead
RETRY_CODES = frozenset({"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable"})
MAX_BACKOFF_S = 20.0  # botocore's standard mode caps its backoff at 20 s
_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


class DirectPut:
    """Signs and sends PutObject requests; one instance (and one connection pool) per run."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        endpoint_url: str | None,
        region: str,
        access_key: str,
        secret_key: str,
        path_style: bool,
        max_attempts: int,
        fatal_codes: frozenset[str],
        verify_tls: bool = True,
    ) -> None:
        self._session = session
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._max_attempts = max(1, max_attempts)
        self._fatal_codes = fatal_codes
        self._ssl = verify_tls  # aiohttp: True verifies certificates, False skips the check
        if endpoint_url:
            parts = urlsplit(endpoint_url)
            self._scheme, self._host = parts.scheme or "https", parts.netloc
            self._base_path = parts.path.rstrip("/")
        else:
            self._scheme, self._host, self._base_path = "https", f"s3.{region}.amazonaws.com", ""
        self._path_style = path_style
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            k = hmac.new(f"AWS4{self._secret_key}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self._region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {day: k}  # one day at a time
            key = k
        return key

    def _target(self, bucket: str, key: str) -> tuple[str, str]:
        """(host, canonical path) for bucket/key; the path is percent-encoded as S3 signs it."""
        encoded_key = quote(key, safe="/~")
        if self._path_style:
            return self._host, f"{self._base_path}/{bucket}/{encoded_key}"
        return f"{bucket}.{self._host}", f"{self._base_path}/{encoded_key}"

    def signed_headers(
        self,
        bucket: str,
        key: str,
        headers: Mapping[str, str],
        now: datetime.datetime,
        query: Mapping[str, str] | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The URL and the full header set of a signed PUT (exposed for tests)."""
        host, path = self._target(bucket, key)
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted((query or {}).items())
        )
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        all_headers = {k.lower(): v.strip() for k, v in headers.items()}
        all_headers.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": UNSIGNED_PAYLOAD})
        names = sorted(all_headers)
        signed = ";".join(names)
        canonical = "\n".join(
            ["PUT", path, canonical_query, *(f"{n}:{all_headers[n]}" for n in names), "", signed, UNSIGNED_PAYLOAD]
        )
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
        )
        signature = hmac.new(self._signing_key(day), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        all_headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        del all_headers["host"]  # aiohttp sends it from the URL
        url = f"{self._scheme}://{host}{path}"
        return (f"{url}?{canonical_query}" if canonical_query else url), all_headers

    async def put(
        self,
        bucket: str,
        key: str,
        body: bytes,
        headers: Mapping[str, str],
        what: str,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """One PUT of a body (PutObject, or UploadPart with its query), retried like botocore's
        standard mode; returns the reply's headers; raises S3Error or FatalError."""
        last: S3Error | None = None
        for attempt in range(self._max_attempts):
            if attempt:
                await anyio.sleep(random.random() * min(MAX_BACKOFF_S, 2.0 ** (attempt - 1)))
            now = datetime.datetime.now(datetime.UTC)
            url, signed = self.signed_headers(bucket, key, headers, now, query)
            try:
                async with self._session.put(URL(url, encoded=True), data=body, headers=signed, ssl=self._ssl) as reply:
                    if reply.status < 300:
                        await reply.read()
                        return dict(reply.headers)
                    payload = await reply.read()
                    code, message = _error_of(reply.status, payload)
            except TimeoutError:
                last = S3Error("ReadTimeoutError", f"{what}: no answer within the read timeout")
                continue
            except aiohttp.ClientConnectorError:
                last = S3Error("EndpointConnectionError", f"{what}: cannot connect to {self._host}")
                continue
            except aiohttp.ClientError as exc:
                last = S3Error("ConnectionClosedError", f"{what}: connection dropped ({type(exc).__name__})")
                continue
            if code in self._fatal_codes:
                raise FatalError(
                    f"S3 refused the credentials ({code}) during {what}; check aws.access_key and aws.secret_access_key"
                )
            last = S3Error(code, f"{what}: {message or 'request failed'}")
            if not (reply.status >= 500 or reply.status == 429 or code in RETRY_CODES):
                raise last
        assert last is not None
        raise last


def _error_of(status: int, payload: bytes) -> tuple[str, str]:
    code = _CODE.search(payload)
    message = _MESSAGE.search(payload)
    return (
        code.group(1).decode("utf-8", "replace") if code else str(status),
        message.group(1).decode("utf-8", "replace") if message else "",
    )
