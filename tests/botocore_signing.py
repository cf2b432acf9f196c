"""botocore's own SigV4 signature of a PUT: the yardstick of the fast path's signer.

Used by test_fastpath_signing.py (the signatures must be equal byte for byte) and by
benchmarks/request_cost.py (what botocore's signer costs). Reaches into botocore's S3SigV4Auth
(`_modify_request_before_signing`, `_inject_signature_to_request`) to sign at a given instant.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from aiobotocore.config import AioConfig
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from async_backup.s3.fastput.signing import FrozenCredentials

_UNSIGNED_PAYLOAD = AioConfig(s3={"payload_signing_enabled": False})
_SIGNED_PAYLOAD = AioConfig(s3={"payload_signing_enabled": True})


def botocore_signed_headers(
    url: str,
    headers: Mapping[str, str],
    credentials: FrozenCredentials,
    region: str,
    now: datetime,
    body: bytes | None = None,
) -> dict[str, str]:
    """What botocore's own S3SigV4Auth puts on a PUT with UNSIGNED-PAYLOAD, or with the SHA-256 of
    `body` as the signed payload hash: the yardstick the fast path's signer is tested
    (test_fastpath_signing.py) and measured against (benchmarks/request_cost.py)."""
    request = AWSRequest(method="PUT", url=url, headers=dict(headers), data=body)
    request.context["client_config"] = _UNSIGNED_PAYLOAD if body is None else _SIGNED_PAYLOAD
    request.context["timestamp"] = now.strftime(SIGV4_TIMESTAMP)
    auth = S3SigV4Auth(
        ReadOnlyCredentials(credentials.access_key, credentials.secret_key, credentials.token), "s3", region
    )
    # add_auth without its own clock reading, so tests compare at one instant.
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    auth._inject_signature_to_request(request, auth.signature(auth.string_to_sign(request, canonical), request))
    return dict(request.headers.items())
