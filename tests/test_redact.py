"""Secrets out of every text: webhook hosts, the redactor, and the logging filter."""

from __future__ import annotations

import io
import logging
import os

from hypothesis import given
from hypothesis import strategies as st

from async_backup.report.redact import RedactingFilter, Redactor, printable, webhook_host, webhook_secrets
from tests.conftest import ACCESS_KEY, SECRET_KEY

SIG = "PLANTEDsignatureAbCdEfGhIjKlMnOpQrStUvWxYz0123"
FLOW = "0123456789abcdef0123456789abcdef"
WEBHOOK = (
    f"https://prod-12.westeurope.logic.azure.com:443/workflows/{FLOW}/triggers/manual/paths/invoke"
    f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}"
)


def test_webhook_host_keeps_scheme_and_host_only() -> None:
    assert webhook_host(WEBHOOK) == "https://prod-12.westeurope.logic.azure.com:443"
    assert webhook_host("https://user:pw@example.powerplatform.com/a/b?sig=x#frag") == (
        "https://example.powerplatform.com"
    )
    assert webhook_host("http://[::1]:8080/x?y") == "http://[::1]:8080"
    assert webhook_host("not a url") == "<invalid webhook URL>"
    assert webhook_host("http://host:99999999/x") == "<invalid webhook URL>"


def test_webhook_secrets_are_path_query_and_signature_but_not_plain_words() -> None:
    secrets = webhook_secrets(WEBHOOK)
    assert WEBHOOK in secrets and SIG in secrets and FLOW in secrets
    assert f"/workflows/{FLOW}/triggers/manual/paths/invoke" in secrets
    assert "manual" not in secrets and "2016-06-01" not in secrets


def test_redactor_scrubs_every_form_of_the_secrets() -> None:
    redactor = Redactor.for_run(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, webhook_url=WEBHOOK)
    text = (
        f"POST {WEBHOOK} failed; key {ACCESS_KEY} secret={SECRET_KEY}; "
        f"query was sp=/triggers/manual/run&sv=1.0&sig={SIG}; flow {FLOW}; a manual run"
    )
    scrubbed = redactor.scrub(text)
    for secret in (SIG, FLOW, ACCESS_KEY, SECRET_KEY, "/workflows/"):
        assert secret not in scrubbed
    assert scrubbed.startswith("POST *** failed; key *** secret=***;")
    assert scrubbed.endswith("sp=***&sv=1.0&sig=***; flow ***; a manual run")  # plain words stay
    # percent-encoded forms of a secret are scrubbed too
    encoded_secret = Redactor(["a/b+c=d/efgh"])
    assert encoded_secret.scrub("x a%2Fb%2Bc%3Dd%2Fefgh y") == "x *** y"
    # too-short strings are not secrets worth destroying every log for
    assert Redactor(["/", "ab"]).scrub("a/b ab") == "a/b ab"
    assert not Redactor()
    assert Redactor().scrub(SECRET_KEY) == SECRET_KEY


def _logger_with_filter(redactor: Redactor) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter(redactor))
    logger = logging.getLogger(f"test_redact.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_logging_filter_formats_then_scrubs_messages_args_and_tracebacks() -> None:
    redactor = Redactor.for_run(aws_secret_access_key=SECRET_KEY, webhook_url=WEBHOOK)
    logger, stream = _logger_with_filter(redactor)
    logger.warning("posting to %s with %r", WEBHOOK, {"secret": SECRET_KEY})
    logger.info("split secret %s%s", SECRET_KEY[:10], SECRET_KEY[10:])  # only visible once formatted
    try:
        raise RuntimeError(f"boom {SECRET_KEY} at {WEBHOOK}")
    except RuntimeError:
        logger.exception("upload of %s failed", "x.jpg")
    logger.error("bad format %d", "not a number", SECRET_KEY)  # unformattable: neither raises nor leaks
    out = stream.getvalue()
    assert SECRET_KEY not in out and SIG not in out and FLOW not in out
    assert "posting to *** with {'secret': '***'}" in out
    assert "split secret ***" in out
    assert "RuntimeError: boom *** at ***" in out
    assert "bad format" in out


def test_printable_shows_undecodable_bytes_and_controls() -> None:
    assert printable(os.fsdecode(b"IMG_\xff\xfe.jpg")) == "IMG_\\xff\\xfe.jpg"
    assert printable("a\tb\nc\x7f\u202edd") == "a\\x09b\\x0ac\\x7f\\u202edd"
    assert printable("ünïcödé 日本") == "ünïcödé 日本"


@given(st.text() | st.binary().map(os.fsdecode))
def test_printable_output_always_encodes_as_one_line(text: str) -> None:
    shown = printable(text)
    shown.encode("utf-8")
    assert "\n" not in shown and "\r" not in shown
