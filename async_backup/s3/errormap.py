"""What S3's failures mean for the run: the one error map of both request paths.

Owns the error codes that doom every request of the run (credentials refused, a bucket in another
region, a skewed clock), the codes worth another attempt, and the one-line message of each
failure, so that a PUT sent through botocore and one sent on the fast path fail with the same
words. Each path only reads the pieces out of its own replies (client.py from botocore's
ClientError, fastput/sending.py from S3's XML) and hands them here. Pure: must not import
botocore, aiobotocore or aiohttp.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ..errors import FatalError, S3Error

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
# The bucket lives in another region than the one requests are signed for. S3 answers
# PermanentRedirect (301) to a request sent to the wrong regional endpoint and
# AuthorizationHeaderMalformed (400) to one signed for the wrong region [S3 error responses].
REGION_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"})
SKEW_CODE = "RequestTimeTooSkewed"  # more than 15 minutes between our clock and S3's
# Retried besides any 5xx and 429, as botocore's standard mode retries them.
RETRY_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """What an S3 error reply says, as far as the map needs it."""

    code: str  # S3's error code, else the HTTP status
    message: str = ""
    bucket: str = ""  # the bucket the request was for, as the message should name it
    bucket_region: str | None = None  # <Region>, or the x-amz-bucket-region header
    request_time: str | None = None  # <RequestTime> and <ServerTime> of RequestTimeTooSkewed
    server_time: str | None = None


def reply_failure(reply: ErrorReply, what: str, *, endpoint: str, configured_region: str) -> S3Error | FatalError:
    """Our error for an error reply to `what` (say "PutObject key") from S3 at `endpoint`."""
    if reply.code in FATAL_CODES:
        return credentials_refused(f"S3 at {endpoint}", reply.code, what)
    if reply.code in REGION_CODES:
        return FatalError(region_message(reply.bucket, reply.bucket_region, configured_region))
    if reply.code == SKEW_CODE:
        return FatalError(skew_message(reply.request_time, reply.server_time))
    return S3Error(reply.code, f"{what}: {reply.message or 'request failed'}")


def credentials_refused(who: str, code: str, what: str) -> FatalError:
    return FatalError(
        f"{who} refused the credentials ({code}) during {what}; check aws.access_key "
        "and aws.secret_access_key, or the AWS profile or role they come from"
    )


def retryable(status: int, code: str) -> bool:
    """Whether a request answered with this error is worth another attempt (botocore's standard mode)."""
    return status >= 500 or status == 429 or code in RETRY_CODES


def cannot_connect(what: str, endpoint: str) -> S3Error:
    return S3Error("EndpointConnectionError", f"{what}: cannot connect to {endpoint}")


def timed_out(what: str) -> S3Error:
    return S3Error("ReadTimeoutError", f"{what}: no progress or no answer within the read timeout")


def connection_dropped(what: str, detail: str = "") -> S3Error:
    return S3Error("ConnectionClosedError", f"{what}: connection dropped" + (f" ({detail})" if detail else ""))


def tls_failure(endpoint: str, reason: object) -> FatalError:
    """A certificate no retry can fix: what failed, where, and what to set."""
    return FatalError(
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


# Where the requests go, as botocore's failures are mapped for them (client.py's one botocore branch).


@dataclass(frozen=True, slots=True)
class S3Failures:
    """S3's: the map above, messages naming the endpoint."""

    endpoint: str
    configured_region: str

    def reply(self, reply: ErrorReply, what: str) -> S3Error | FatalError:
        return reply_failure(reply, what, endpoint=self.endpoint, configured_region=self.configured_region)

    def cannot_connect(self, what: str) -> S3Error:
        return cannot_connect(what, self.endpoint)

    def timed_out(self, what: str) -> S3Error:
        return timed_out(what)

    def dropped(self, what: str) -> S3Error:
        return connection_dropped(what)

    def tls(self, what: str, reason: object) -> S3Error | FatalError:
        return tls_failure(self.endpoint, reason)


# STS names an unknown access key InvalidClientTokenId where S3 says InvalidAccessKeyId.
STS_FATAL_CODES = FATAL_CODES | {"InvalidClientTokenId"}


@dataclass(frozen=True, slots=True)
class StsFailures:
    """STS GetCallerIdentity's (the account id for default bucket names): refused credentials stop
    the run as for S3; any other failure, an STS out of reach too (a VPC that reaches S3 through a
    gateway endpoint only, a proxy that knows no STS), is an S3Error the caller lives with."""

    def reply(self, reply: ErrorReply, what: str) -> S3Error | FatalError:
        if reply.code in STS_FATAL_CODES:
            return credentials_refused("AWS", reply.code, what)
        return S3Error(reply.code, f"{what}: {reply.message or 'request failed'}")

    def cannot_connect(self, what: str) -> S3Error:
        return _unreachable("EndpointConnectionError", what)

    def timed_out(self, what: str) -> S3Error:
        return _unreachable("ReadTimeoutError", what)

    def dropped(self, what: str) -> S3Error:
        return _unreachable("ConnectionClosedError", what)

    def tls(self, what: str, reason: object) -> S3Error | FatalError:
        return _unreachable("SSLError", what)


def _unreachable(code: str, what: str) -> S3Error:
    return S3Error(code, f"{what}: cannot reach STS")
