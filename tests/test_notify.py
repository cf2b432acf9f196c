"""Sending the card to a real local aiohttp server acting as the Workflows webhook."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from async_backup.errors import Failure, FailureKind
from async_backup.report.card import build_card, card_json
from async_backup.report.notify import NotifyResult, parse_retry_after, send_card
from async_backup.report.redact import RedactingFilter, Redactor
from async_backup.report.runreport import write_metrics, write_report
from async_backup.report.summary import RunSummary, TargetStats
from tests.conftest import ACCESS_KEY, SECRET_KEY, free_port

FLOW_ID = "0123456789abcdef0123456789abcdef"
SIG = "PLANTEDsignatureAbCdEfGhIjKlMnOpQrStUvWxYz0123"
PATH = f"/workflows/{FLOW_ID}/triggers/manual/paths/invoke"
QUERY = f"api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}"
PAYLOAD: dict[str, Any] = {"type": "message", "attachments": []}


@dataclass
class Webhook:
    """A fake Workflows endpoint: answers from a script of (status, headers, body), then 202."""

    script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    delay_s: float = 0.0
    delays_s: list[float] = field(default_factory=list)  # per request, before delay_s applies
    seen: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            {"raw_path": request.raw_path, "content_type": request.content_type, "body": body, "at": time.monotonic()}
        )
        delay_s = self.delays_s.pop(0) if self.delays_s else self.delay_s
        if delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), delay_s)
        status, headers, text = self.script.pop(0) if self.script else (202, {}, "")
        # Error pages that echo the request URL, as some gateways do: must not leak into our texts.
        return web.Response(status=status, headers=headers, text=text.replace("{url}", str(request.url)))


@asynccontextmanager
async def webhook(**kw: Any) -> AsyncIterator[Webhook]:
    hook = Webhook(**kw)
    app = web.Application()
    app.router.add_post(PATH, hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    hook.url = f"http://127.0.0.1:{port}{PATH}?{QUERY}"
    try:
        yield hook
    finally:
        hook.release.set()  # handlers still waiting answer now, so the server shuts down at once
        await runner.cleanup()


@asynccontextmanager
async def webhook_up_after_first_refusal(**kw: Any) -> AsyncIterator[Webhook]:
    """A webhook whose port refuses the first try and listens from the sender's first retry on.

    The socket is bound but not listening, so a connect is refused (nothing was sent). The
    sender's own "retrying" log line makes it listen, before the retry's wait begins."""
    hook = Webhook(**kw)
    app = web.Application()
    app.router.add_post(PATH, hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    hook.url = f"http://127.0.0.1:{sock.getsockname()[1]}{PATH}?{QUERY}"
    started: list[asyncio.Task[None]] = []

    class ListenOnRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage() and not started:
                sock.listen(16)  # from now on connects queue up instead of being refused
                started.append(asyncio.get_running_loop().create_task(web.SockSite(runner, sock).start()))

    handler = ListenOnRetry()
    logging.getLogger("async_backup.notify").addHandler(handler)
    try:
        yield hook
    finally:
        logging.getLogger("async_backup.notify").removeHandler(handler)
        hook.release.set()
        await runner.cleanup()
        sock.close()


@pytest.fixture(autouse=True)
def _propagate_to_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    """`logsetup.setup_logging` stops our loggers propagating; caplog listens at the root.

    The sender honours proxy variables; the loopback webhook must be reached directly."""
    monkeypatch.setattr(logging.getLogger("async_backup"), "propagate", True)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def leaks(text: str) -> list[str]:
    """Which secrets (webhook path or query, planted AWS keys) appear in `text`."""
    secrets = [PATH, QUERY, SIG, FLOW_ID, "sig=", "/workflows/", SECRET_KEY, ACCESS_KEY]
    return [s for s in secrets if s in text]


def notify_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "async_backup.notify"]


async def test_202_is_success_and_the_body_is_the_json_payload(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with webhook() as hook:
        result = await send_card(hook.url, PAYLOAD)
    assert result == NotifyResult(ok=True, status=202, attempts=1, host=result.host)
    assert result.host.startswith("http://127.0.0.1:")
    assert len(hook.seen) == 1
    assert hook.seen[0]["content_type"] == "application/json"
    assert json.loads(hook.seen[0]["body"]) == PAYLOAD
    # the signed query reaches the server byte for byte (%2F not re-quoted)
    assert hook.seen[0]["raw_path"] == f"{PATH}?{QUERY}"
    assert not [r for r in notify_records(caplog) if r.levelno >= logging.WARNING]


async def test_500_then_202_is_retried_and_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with webhook(script=[(500, {}, "boom at {url}")]) as hook:
        result = await send_card(hook.url, PAYLOAD, backoff_s=0.01)
    assert result.ok and result.status == 202 and result.attempts == 2
    assert len(hook.seen) == 2
    assert not [r for r in notify_records(caplog) if r.levelno >= logging.WARNING]
    for record in caplog.records:
        assert not leaks(record.getMessage()), record.getMessage()


async def test_429_with_retry_after_is_honoured() -> None:
    async with webhook(script=[(429, {"Retry-After": "1"}, "slow down")]) as hook:
        result = await send_card(hook.url, PAYLOAD, backoff_s=0.01)
    assert result.ok and result.attempts == 2
    assert len(hook.seen) == 2
    assert hook.seen[1]["at"] - hook.seen[0]["at"] >= 0.9  # waited as told, not the 0.01 s backoff


async def test_a_long_retry_after_is_capped() -> None:
    async with webhook(script=[(429, {"Retry-After": "3600"}, "")]) as hook:
        started = time.monotonic()
        result = await send_card(hook.url, PAYLOAD, backoff_s=0.01, max_retry_after_s=0.2)
    assert result.ok and result.attempts == 2
    assert time.monotonic() - started < 5


async def test_a_webhook_that_is_down_gives_one_warning_and_no_exception(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}{PATH}?{QUERY}"  # nothing listens there
    result = await send_card(url, PAYLOAD, tries=3, backoff_s=0.01, timeout_s=2)
    assert not result.ok
    assert result.status is None and result.attempts == 3
    assert result.error.startswith(f"cannot reach {result.host}")
    assert "\n" not in result.error
    warnings = [r for r in notify_records(caplog) if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "\n" not in warnings[0].getMessage()
    assert not leaks(result.error)
    for record in caplog.records:
        assert not leaks(record.getMessage()), record.getMessage()
    failure = result.as_warning()
    assert failure.kind is FailureKind.NOTIFICATION and failure.path == result.host


async def test_server_errors_give_up_after_tries(caplog: pytest.LogCaptureFixture) -> None:
    script: list[tuple[int, dict[str, str], str]] = [(503, {}, "busy: {url}")] * 5
    async with webhook(script=list(script)) as hook:
        result = await send_card(hook.url, PAYLOAD, tries=3, backoff_s=0.01)
    assert not result.ok and result.status == 503 and result.attempts == 3
    assert len(hook.seen) == 3
    assert "HTTP 503" in result.error and "busy" in result.error
    assert not leaks(result.error), result.error
    assert len([r for r in notify_records(caplog) if r.levelno >= logging.WARNING]) == 1


async def test_client_errors_are_not_retried() -> None:
    async with webhook(script=[(400, {}, "bad card")]) as hook:
        result = await send_card(hook.url, PAYLOAD, tries=3, backoff_s=0.01)
    assert not result.ok and result.status == 400 and result.attempts == 1
    assert len(hook.seen) == 1


async def test_a_webhook_slower_than_the_timeout_gets_the_card_once(caplog: pytest.LogCaptureFixture) -> None:
    """The card went out; no answer within the try's timeout is no proof it was not taken."""
    caplog.set_level(logging.DEBUG)
    async with webhook(delay_s=30) as hook:
        result = await send_card(hook.url, PAYLOAD, tries=3, timeout_s=1, backoff_s=0.01)
        posts = len(hook.seen)
    assert posts == 1
    assert not result.ok and result.maybe_delivered and result.attempts == 1 and result.status is None
    assert result.error == (
        f"the Teams card may have been delivered: no answer from {result.host} within 1 s after it was sent; "
        "not sent again, to avoid a duplicate"
    )
    # what the run report and the card's warnings list say
    assert result.as_warning().message.startswith("the Teams card may have been delivered")
    warnings = [r for r in notify_records(caplog) if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "may have been delivered" in warnings[0].getMessage()
    assert not [r for r in notify_records(caplog) if "retrying" in r.getMessage()]
    for record in caplog.records:
        assert not leaks(record.getMessage()), record.getMessage()


async def test_a_refused_connection_is_retried_and_a_silent_answer_then_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused: nothing was sent, so try again. The retry reaches a webhook that takes the card
    and answers too late: that one is not sent a third time."""
    caplog.set_level(logging.DEBUG)
    async with webhook_up_after_first_refusal(delay_s=30) as hook:
        result = await send_card(hook.url, PAYLOAD, tries=3, timeout_s=2, backoff_s=0.5)
        posts = len(hook.seen)
    assert posts == 1
    assert result.attempts == 2 and result.maybe_delivered and not result.ok
    retries = [r.getMessage() for r in notify_records(caplog) if "retrying" in r.getMessage()]
    assert len(retries) == 1 and "cannot reach" in retries[0] and "ClientConnectorError" in retries[0]
    for record in caplog.records:
        assert not leaks(record.getMessage()), record.getMessage()
    assert not leaks(result.error)


@pytest.mark.slow
async def test_503_then_an_answer_slower_than_the_old_10_s_timeout_is_one_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the default timeout: a Workflow that is busy once, then takes 12 s to accept the card
    (as slow ones do), gets it twice (the 503 and the accepted one), never a third time."""
    caplog.set_level(logging.DEBUG)
    async with webhook(script=[(503, {}, "busy at {url}"), (200, {}, "")], delays_s=[0, 12]) as hook:
        result = await send_card(hook.url, PAYLOAD, backoff_s=0.01)
        posts = len(hook.seen)
    assert posts == 2
    assert result == NotifyResult(ok=True, status=200, attempts=2, host=result.host)
    assert not [r for r in notify_records(caplog) if r.levelno >= logging.WARNING]
    for record in caplog.records:
        assert not leaks(record.getMessage()), record.getMessage()


async def test_a_malformed_url_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    result = await send_card(f"ftp://example.com{PATH}?{QUERY}", PAYLOAD)
    assert not result.ok and result.attempts == 0
    assert not leaks(result.error)
    assert len([r for r in notify_records(caplog) if r.levelno >= logging.WARNING]) == 1


def test_parse_retry_after() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=1445412470.0) == 10.0


async def test_no_log_card_report_or_metrics_file_holds_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end: secrets planted in failure texts and in logs reach none of the outputs."""
    caplog.set_level(logging.DEBUG)
    async with webhook(script=[(500, {}, "error for {url}")]) as hook:
        redactor = Redactor.for_run(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, webhook_url=hook.url
        )
        caplog.handler.addFilter(RedactingFilter(redactor))
        target = TargetStats(name=f"/srv/{SECRET_KEY}", bucket="b", new=1, finished_at=1_795_888_400.0)
        summary = RunSummary(
            host="nas01",
            started_at=1_795_888_320.0,
            finished_at=1_795_888_500.0,
            targets=[target],
            failures=[
                Failure(
                    FailureKind.S3,
                    target.name,
                    f"/srv/a-{SECRET_KEY}.jpg",
                    f"SignatureDoesNotMatch with {ACCESS_KEY}:{SECRET_KEY} via {hook.url}",
                    "Sig",
                )
            ],
            exit_code=1,
        )
        logging.getLogger("async_backup.pipeline").error("upload failed: %s (key %s)", hook.url, SECRET_KEY)
        payload = build_card(summary, redactor=redactor)
        result = await send_card(hook.url, payload, backoff_s=0.01)
        summary.warnings.append(result.as_warning())

    assert result.ok
    assert not leaks(card_json(summary, redactor=redactor))
    assert not leaks(hook.seen[-1]["body"].decode())
    report = write_report(tmp_path / "cache", summary, redactor=redactor)
    metrics = tmp_path / "textfile" / "async_backup.prom"
    write_metrics(metrics, summary, None, redactor=redactor)
    for path in (report, metrics):
        assert not leaks(path.read_text(encoding="utf-8")), path
    assert "***" in report.read_text(encoding="utf-8")
    messages = [caplog.handler.format(r) for r in caplog.records]
    assert any("upload failed" in m for m in messages)
    for message in [*messages, caplog.text]:
        assert not leaks(message), message
