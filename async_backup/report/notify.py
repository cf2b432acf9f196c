"""Delivering the Teams card: one small aiohttp sender with retries.

Owns: the POST to the Workflows webhook, its retry policy (429 with Retry-After, 5xx, connection
errors and timeouts), and turning every delivery problem into a `NotifyResult`, never an exception:
a notification that fails is a warning, and must never fail the backup (as borgmatic treats its pings).

This is the only module of the package that talks to the network outside S3. It must not import
S3, the filesystem, the state cache or the pipeline; it takes a ready payload (see `card.py`).

The webhook URL carries a signature in its query: only
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

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_TRIES = 3
# First retry after this many seconds, doubling after each failed try.
DEFAULT_BACKOFF_S = 2.0
# A Retry-After longer than this is cut short: a nightly run should not wait minutes for a card.
MAX_RETRY_AFTER_S = 30.0
# Only this much of an error reply's body goes into the error text.
MAX_ERROR_BODY_CHARS = 200


@dataclass(frozen=True, slots=True)
class NotifyResult:
    """How sending went. `error` is one line, empty on success, and never holds the URL's secrets."""

    ok: bool
    status: int | None  # the last HTTP status seen; None if no reply came at all
    attempts: int
    error: str = ""
    host: str = ""

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
    # 429: Teams throttles at about 4 requests per second. 408 and 5xx are transient.
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
    """POST `payload` as JSON to the webhook; retry throttling, server errors and connection errors.

    Success is any 2xx (Workflows answer 202, legacy connectors 200). Other 4xx replies are not
    retried: the URL or the card is wrong, and asking again will not help. Gives up after `tries`
    attempts, logs one warning, and returns the outcome; it raises nothing but cancellation.
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
    # trust_env: servers that reach the internet only through HTTPS_PROXY (and NO_PROXY) can notify too.
    client = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s), trust_env=True)
    status: int | None = None
    error = ""
    attempt = 0
    try:
        for attempt in range(1, tries + 1):
            delay_s = Backoff(backoff_s).delay_s(attempt)
            try:
                async with client.post(
                    target,
                    data=body,
                    headers={"Content-Type": "application/json; charset=utf-8"},
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
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
            except TimeoutError:
                status = None
                error = f"no reply from {host} within {timeout_s:g} s"
            except (aiohttp.ClientError, OSError) as exc:
                status = None
                detail = str(exc) or "no reply"
                error = _one_line(f"cannot reach {host}: {type(exc).__name__}: {detail}", redactor)
            if attempt < tries:
                log.info("Teams notification: %s; retrying in %.1f s (%d/%d)", error, delay_s, attempt, tries)
                await asyncio.sleep(delay_s)
    finally:
        if own_session:
            await client.close()
    log.warning("Teams notification not delivered after %d attempt(s): %s", attempt, error)
    return NotifyResult(ok=False, status=status, attempts=attempt, error=error, host=host)
