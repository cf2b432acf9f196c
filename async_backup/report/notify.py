"""Delivering the Teams card: one small aiohttp sender that never posts the card twice.

Owns: the POST to the Workflows webhook, its retry policy, and turning every delivery problem into
a `NotifyResult`, never an exception: a notification that fails is a warning, and must never fail
the backup (as a failed monitoring ping never fails a borgmatic run).

A try is repeated only when the card surely did not arrive: the connection could not be made
(refused, DNS, a proxy, the TLS handshake: nothing was sent), or the webhook answered 429 or 5xx.
Once the body may have been sent, silence is not a refusal: a timeout or a dropped connection
then ends the delivery as "may have been delivered", since asking again would post a second card.

This is the only module of the package that talks to the network outside S3. It must not import
S3, the filesystem, the state cache or the pipeline; it takes a ready payload (see `card.py`).

The webhook URL of a Teams Workflow carries a signature in its query, so it is a secret: only
`redact.webhook_host(url)` ever reaches a log line or an error text.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

from ..backoff import Backoff
from ..errors import Failure, FailureKind
from .card import payload_json
from .redact import Redactor, webhook_host

log = logging.getLogger("async_backup.notify")

# How long one try waits for the webhook's answer. Workflows answer 202 once the flow's run is
# queued, usually within a second, but answers after 30 s have been seen; the platform itself holds
# an inbound request for at most 120 s. 60 s is twice the slowest answer seen, and keeps the whole
# delivery within MAX_DELIVERY_S, which a systemd stop must wait for (README, "Running it every night").
DEFAULT_TIMEOUT_S = 60.0
# Setting up the connection (DNS, TCP, proxy, TLS) has its own, shorter bound: a try that fails in
# this phase sent nothing and is repeated. It must stay below the try's timeout, or a slow connect
# would end as an ambiguous whole-try timeout.
CONNECT_TIMEOUT_S = 15.0
DEFAULT_TRIES = 3
# First retry after this many seconds, doubling after each failed try.
DEFAULT_BACKOFF_S = 2.0
# A Retry-After longer than this is cut short: a nightly run should not wait minutes for a card.
MAX_RETRY_AFTER_S = 30.0
# The longest a delivery with the defaults can take: every try answered 5xx just before its timeout,
# each wait the longest Retry-After allowed (the backoff's 2 and 4 s are shorter).
MAX_DELIVERY_S = DEFAULT_TRIES * DEFAULT_TIMEOUT_S + (DEFAULT_TRIES - 1) * MAX_RETRY_AFTER_S
# Only this much of an error reply's body goes into the error text.
MAX_ERROR_BODY_CHARS = 200

# Raised before a byte of the request was written: the connection, its proxy or its TLS handshake
# failed, or the connect phase timed out. aiohttp maps every connect-phase problem to these.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.ClientHttpProxyError)


@dataclass(frozen=True, slots=True)
class NotifyResult:
    """How sending went. `error` is one line, empty on success, and never holds the URL's secrets.

    `maybe_delivered`: the card was sent but no answer came (a timeout or a dropped connection
    after the request went out). It was not sent again; the channel may or may not show it."""

    ok: bool
    status: int | None  # the last HTTP status seen; None if no reply came at all
    attempts: int
    error: str = ""
    host: str = ""
    maybe_delivered: bool = False

    def as_warning(self, target: str = "") -> Failure:
        """The failure to give `FailureCollector.warn` when delivery did not succeed."""
        return Failure(
            kind=FailureKind.NOTIFICATION,
            target=target,
            path=self.host,
            message=self.error or "the Teams card was not delivered",
            code=str(self.status) if self.status is not None else "",
        )


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now_s is None else now_s)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _retryable(status: int) -> bool:
    # Answers that say the card was not taken, so a second post is no duplicate. 429: Teams throttles
    # at about 4 requests per second. 408: the server gave up waiting for our request before taking
    # it. 5xx: the platform failed (a gateway's 504 is the rare case where the flow may still run).
    return status in (408, 429) or 500 <= status <= 599


def _one_line(text: str, redactor: Redactor) -> str:
    line = " ".join(redactor.scrub(text).split())
    return line[:MAX_ERROR_BODY_CHARS] + ("…" if len(line) > MAX_ERROR_BODY_CHARS else "")


async def send_card(
    url: str,
    payload: dict[str, Any],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    tries: int = DEFAULT_TRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    max_retry_after_s: float = MAX_RETRY_AFTER_S,
    session: aiohttp.ClientSession | None = None,
) -> NotifyResult:
    """POST `payload` as JSON to the webhook, at most once unless it surely did not arrive.

    Success is any 2xx (Workflows answer 202, legacy connectors 200). Connect-phase failures, 429,
    408 and 5xx are tried again, up to `tries` attempts, after the backoff or the Retry-After
    (capped at `max_retry_after_s`). Other 4xx replies are not: the URL or the card is wrong. A
    try gets `timeout_s` for its answer; no answer in time, or a connection that breaks once the
    request may have gone out, ends the delivery as `maybe_delivered`. Logs one warning when the
    card was not surely delivered and returns the outcome; it raises nothing but cancellation.
    `session` lets the caller share a session (tests, or a run that sends several messages).
    """
    host = webhook_host(url)
    redactor = Redactor()
    redactor.add_webhook_url(url)
    tries = max(1, tries)
    try:
        body = payload_json(payload).encode("utf-8")
        # encoded=True: send the signature exactly as given; re-quoting its query breaks it.
        target = yarl.URL(url.strip(), encoded=True)
        if target.scheme not in ("http", "https") or not target.host:
            raise ValueError("not an http(s) URL")
    except (TypeError, ValueError) as exc:
        error = _one_line(f"cannot send to {host}: {type(exc).__name__}: {exc}", redactor)
        log.warning("Teams notification not sent: %s", error)
        return NotifyResult(ok=False, status=None, attempts=0, error=error, host=host)

    own_session = session is None
    connect_s = min(CONNECT_TIMEOUT_S, timeout_s / 2)
    per_try = aiohttp.ClientTimeout(total=timeout_s, connect=connect_s)
    # trust_env: servers that reach the internet only through HTTPS_PROXY (and NO_PROXY) can notify too.
    client = session or aiohttp.ClientSession(timeout=per_try, trust_env=True)
    status: int | None = None
    error = ""
    attempt = 0
    try:
        for attempt in range(1, tries + 1):
            delay_s = Backoff(backoff_s).delay_s(attempt)
            status = None
            try:
                async with client.post(
                    target,
                    data=body,
                    headers={"Content-Type": "application/json; charset=utf-8"},
                    timeout=per_try,
                ) as response:
                    status = response.status
                    if 200 <= status <= 299:
                        log.info("Teams card delivered to %s (HTTP %d, attempt %d)", host, status, attempt)
                        return NotifyResult(ok=True, status=status, attempts=attempt, host=host)
                    # Only the start of the reply: an error page can be large.
                    raw = await response.content.read(MAX_ERROR_BODY_CHARS * 4)
                    reply = raw.decode("utf-8", errors="replace")
                    reason = response.reason or ""
                    error = _one_line(f"{host} answered HTTP {status} {reason}: {reply}", redactor)
                    if not _retryable(status):
                        break
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    if retry_after is not None:
                        delay_s = min(retry_after, max_retry_after_s)
            except _NOT_SENT as exc:
                detail = str(exc) or "no connection"
                error = _one_line(f"cannot reach {host}: {type(exc).__name__}: {detail}", redactor)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if status is not None:  # the error reply was cut short: its status decides
                    error = _one_line(f"{host} answered HTTP {status}, then the reply broke off", redactor)
                    if not _retryable(status):
                        break
                else:
                    return _maybe_delivered(host, attempt, timeout_s, exc, redactor)
            if attempt < tries:
                log.info("Teams notification: %s; retrying in %.1f s (%d/%d)", error, delay_s, attempt, tries)
                await asyncio.sleep(delay_s)
    finally:
        if own_session:
            await client.close()
    log.warning("Teams notification not delivered after %d attempt(s): %s", attempt, error)
    return NotifyResult(ok=False, status=status, attempts=attempt, error=error, host=host)


def _maybe_delivered(host: str, attempt: int, timeout_s: float, exc: BaseException, redactor: Redactor) -> NotifyResult:
    """The card went out and no answer came: it may be in the channel, so it is not sent again."""
    if isinstance(exc, TimeoutError):
        what = f"no answer from {host} within {timeout_s:g} s after it was sent"
    else:
        what = f"the connection to {host} broke after it was sent ({type(exc).__name__}: {exc or 'no detail'})"
    error = _one_line(f"the Teams card may have been delivered: {what}; not sent again, to avoid a duplicate", redactor)
    log.warning("%s (attempt %d)", error, attempt)
    return NotifyResult(ok=False, status=None, attempts=attempt, error=error, host=host, maybe_delivered=True)
