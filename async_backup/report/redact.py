"""Making text safe to show: secrets scrubbed, undecodable bytes and control characters made visible.

Owns: `webhook_host` (the only part of a Teams webhook URL that may be logged), the `Redactor` that
replaces known secrets with ``***``, the `RedactingFilter` that applies it to log records, and
`printable`, which turns any `str` (including surrogate-escaped bytes from `os.fsdecode`) into text
that encodes as UTF-8 and shows every odd character visibly.

Pure apart from the logging filter. Must not import the network, S3, the filesystem or any other
module of this package: the card, the report and the log handlers all depend on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlsplit

REDACTED = "***"

# Shorter strings are not scrubbed: replacing "/" or "1" everywhere would make logs unreadable and
# protect nothing. Real secrets (AWS keys, webhook signatures) are far longer.
MIN_SECRET_CHARS = 6
# Single path segments and query values are scrubbed on their own only when they look like
# identifiers or signatures (a Workflows `sig` has 43 characters, a flow id 32): words such as
# "triggers" or "manual" and an `api-version` date must stay readable everywhere else.
MIN_PART_CHARS = 16

# Lone surrogates: U+DC80..U+DCFF are bytes that os.fsdecode could not decode (surrogateescape);
# any other lone surrogate cannot be encoded as UTF-8 either.
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0/C1 controls, DEL, and bidirectional overrides that could make a file name display reversed.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]")


def _show_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _show_invisible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with undecodable bytes shown as ``\\xNN`` and control characters escaped.

    The result always encodes as UTF-8 (so `json.dumps` and writing files never fail) and is one
    line. Backslashes already in the text are kept as they are: the result is for people to read,
    not to be decoded back.
    """
    text = _SURROGATE.sub(_show_surrogate, text)
    return _INVISIBLE.sub(_show_invisible, text)


def webhook_host(url: str) -> str:
    """Scheme and host (with an explicit port) of `url`: the only part of a webhook URL safe to log.

    Workflows URLs carry their signature in the query and the flow's identity in the path, so both
    are secrets; so is any user-info before the host.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<invalid webhook URL>"
    if not parts.scheme or not host:
        return "<invalid webhook URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def webhook_secrets(url: str) -> list[str]:
    """The secret parts of a webhook URL: the whole URL, its path, its query and each query value."""
    secrets = [url]
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return secrets
    if parts.username:
        secrets.append(parts.username)
    if parts.password:
        secrets.append(parts.password)
    if parts.path and parts.path != "/":
        secrets.append(parts.path)
        # Identifier-like segments on their own too: a log may show one without its slashes.
        secrets.extend(s for s in parts.path.split("/") if len(s) >= MIN_PART_CHARS)
    if parts.query:
        secrets.append(parts.query)
        for _name, value in parse_qsl(parts.query, keep_blank_values=True):
            if len(value) >= MIN_PART_CHARS:
                secrets.append(value)
    if parts.fragment:
        secrets.append(parts.fragment)
    return secrets


class Redactor:
    """Replaces every known secret in a text with ``***``.

    Each secret is also matched in its percent-encoded and percent-decoded forms, since a URL's
    query may reach a log either way. Longer secrets are replaced first, so a secret that contains
    another one disappears whole.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    @classmethod
    def for_run(
        cls,
        *,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        webhook_url: str | None = None,
        extra: Iterable[str] = (),
    ) -> Redactor:
        """A redactor for the usual secrets of a run; any of them may be missing."""
        redactor = cls(extra)
        for secret in (aws_access_key_id, aws_secret_access_key):
            if secret:
                redactor.add(secret)
        if webhook_url:
            redactor.add_webhook_url(webhook_url)
        return redactor

    def add(self, secret: str) -> None:
        """Scrub `secret` (and its percent-encoded and -decoded forms) from now on."""
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if len(form) >= MIN_SECRET_CHARS:
                self._secrets.add(form)
        self._pattern = None

    def add_webhook_url(self, url: str) -> None:
        """Scrub the whole URL, its path, its query and each query value; the host stays readable."""
        for secret in webhook_secrets(url):
            self.add(secret)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def scrub(self, text: str) -> str:
        """`text` with every secret replaced by ``***``."""
        if not self._secrets:
            return text
        if self._pattern is None:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return self._pattern.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """A logging filter that formats each record's message, scrubs it, and keeps only the result.

    Install it on handlers (`handler.addFilter(RedactingFilter(redactor))`) so that records from
    any logger, including third-party ones, are scrubbed before they are written. Exception and
    stack texts are formatted and scrubbed too. It never drops a record.
    """

    def __init__(self, redactor: Redactor, name: str = "") -> None:
        super().__init__(name)
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record (or leak its args)
            message = f"{record.msg!s} (unformattable arguments)"
        record.msg = self.redactor.scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.scrub(record.stack_info)
        return True
