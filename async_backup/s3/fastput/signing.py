"""SigV4 for the fast path: the signature botocore's `S3SigV4Auth` puts on the same PUT.

Owns what a signed PUT is addressed to (`BucketEndpoint`), the credentials it is signed with, and
the signer with its cached signing key. The signature is byte for byte botocore's for the same
request (tests/test_fastpath_signing.py checks it); botocore's signer itself costs 55-75 µs more CPU
per request, 15-25 % of a whole PutObject here (benchmarks/RESULTS.md), which is why this one stays.
Pure: no I/O; must not import botocore, aiobotocore or aiohttp.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"  # the body is covered by x-amz-checksum-crc32 (or Content-MD5) instead


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


def _canonical_value(value: str) -> str:
    # SigV4's Trimall, as botocore applies it: outer whitespace gone, inner runs collapsed to one space.
    return " ".join(value.split())


class Signer:
    """Signs PUTs (PutObject, UploadPart) with SigV4; keeps the last signing key (one a day)."""

    def __init__(self) -> None:
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

    def signed_headers(
        self,
        endpoint: BucketEndpoint,
        key: str,
        headers: Mapping[str, str],
        now: datetime.datetime,
        credentials: FrozenCredentials,
        query: Mapping[str, str] | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The URL and the full header set of a signed PUT."""
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
