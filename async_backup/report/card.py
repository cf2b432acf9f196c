"""The Teams card: a pure function from a run summary to a Workflows webhook payload.

Owns: the layout of the Adaptive Card, in the order an operator acts on it: the outcome; the
failures grouped by kind and code, each with what to do and example paths spread over the
targets, and where the full list is; one line per target that failed or changed; the totals and
what the run's S3 requests cost. Also escaping of names for the card's markdown, and shrinking
the card until its JSON fits Teams' message size limit.

Pure and synchronous: no clock, no I/O, no logging. Must not import the network (aiohttp lives in
`notify.py`), S3, the filesystem or the state cache. Imports only `errors`, `summary`, `pricing`
and `redact`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ..errors import Failure, FailureKind
from ..s3.pricing import format_usd
from .redact import Redactor, printable
from .summary import RunSummary, TargetStats, format_bytes

# Teams rejects messages above 28 KB ("Message size limit 28 KB", Microsoft Teams' webhook limits).
TEAMS_MESSAGE_LIMIT_BYTES = 28 * 1024
# Our budget for the UTF-8 JSON we send: headroom below the limit for Teams' own wrapping.
CARD_BUDGET_BYTES = 27_000
# Workflows reject Adaptive Card versions above 1.4, so only 1.4 elements are used.
CARD_VERSION = "1.4"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"

# Layout limits before any shrinking; shrinking only lowers them.
MAX_EXAMPLES_PER_GROUP = 5
MAX_GROUPS_SHOWN = 20
MAX_WARNINGS_SHOWN = 3
MAX_COST_KINDS = 4  # request kinds listed with their price; the rest are summed in one line
MAX_HOST_CHARS = 100
MAX_NAME_CHARS = 160
MAX_CODE_CHARS = 120
MAX_MESSAGE_CHARS = 300

# Characters the card's markdown (a CommonMark subset) may interpret anywhere in a line. A
# backslash before ASCII punctuation is always a literal in CommonMark; `{` also starts Adaptive
# Cards' {{DATE()}} / {{TIME()}} functions.
_MD_SPECIAL = re.compile(r"([\\`*_~\[\]()#<>&{}|!])")
# Markers that only mean something at the start of a line: lists ("- ", "+ ", "1. ", "1) ").
_MD_LINE_START = re.compile(r"^([-+]|\d+(?=[.)]))")


def escape_markdown(text: str) -> str:
    """`text` as one line that the card's markdown shows literally, with odd characters visible.

    Undecodable bytes (surrogate escapes) become ``\\xNN`` and control characters are escaped
    first (see `redact.printable`); then every character markdown could interpret is escaped
    with a backslash, which the card does not show.
    """
    text = _MD_SPECIAL.sub(r"\\\1", printable(text))
    match = _MD_LINE_START.match(text)
    if match:
        if match.group(1) in "-+":
            text = "\\" + text
        else:  # "1." or "1)": escape the punctuation after the digits
            end = match.end()
            text = text[:end] + "\\" + text[end:]
    return text


def shorten(text: str, max_chars: int) -> str:
    """`text` cut in the middle to at most `max_chars` characters; the ends of paths say the most."""
    if len(text) <= max_chars:
        return text
    if max_chars <= 1:
        return "…"[:max_chars]
    head = (max_chars - 1) // 2
    tail = max_chars - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def payload_json(payload: dict[str, Any]) -> str:
    """The payload as compact JSON, exactly as it is measured against the budget and sent.

    `ensure_ascii=False` keeps non-ASCII names at their UTF-8 size instead of six bytes per
    ``\\uXXXX`` escape; `build_card` has already made every string encodable.
    """
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def payload_size_bytes(payload: dict[str, Any]) -> int:
    return len(payload_json(payload).encode("utf-8"))


def card_json(
    summary: RunSummary, *, redactor: Redactor | None = None, report_path: str | None = None, tz: tzinfo | None = None
) -> str:
    """`build_card(summary)` serialized: the body to POST to the Workflows webhook."""
    return payload_json(build_card(summary, redactor=redactor, report_path=report_path, tz=tz))


# ----------------------------------------------------------------------------- elements


def _text(text: str, **props: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **props}


def _facts(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {"type": "FactSet", "facts": [{"title": t, "value": v} for t, v in pairs]}


def _heading(text: str) -> dict[str, Any]:
    return _text(text, weight="Bolder", size="Medium", separator=True, spacing="Medium")


def _note(text: str) -> dict[str, Any]:
    return _text(text, isSubtle=True, spacing="Small")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unfinished"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _span_s(started_at: float, finished_at: float | None) -> float | None:
    # Not TargetStats.duration_s: that reads the clock for unfinished targets, and this is pure.
    return None if finished_at is None else max(0.0, finished_at - started_at)


# ----------------------------------------------------------------------------- content

# What the operator can do about each kind of failure: one line under its heading.
ADVICE: dict[FailureKind, str] = {
    FailureKind.UNREADABLE: "Check the permissions (as the user the backup runs as) and the file system; "
    "the next run retries them.",
    FailureKind.CHANGED_WHILE_READING: "Written to during the backup: the next run uploads them. "
    "If it repeats, run the backup when nothing writes; at the third run in a row it is a failure.",
    FailureKind.NEVER_STILL: "Written to at every run, so never backed up: exclude them with backup.exclude, "
    "or back up a copy made while nothing writes to them.",
    FailureKind.S3: "S3 refused or failed after retries; the next run retries. If the code repeats, "
    "check the bucket, the credentials' permissions and the endpoint.",
    FailureKind.DELETION_GUARD: "Deletes were held back. If the files really are gone, rerun with --allow-mass-delete.",
    FailureKind.TARGET_MISSING: "Mount the folder, or fix its path in config.json; if it is gone for good, "
    "remove it from config.json and run --forget-target.",
    FailureKind.KEY_TOO_LONG: "S3 keys take at most 1,024 bytes: shorten these paths, or they are never backed up.",
    FailureKind.BUCKET: "Check the bucket's name and the credentials' permissions (the README's IAM policy).",
    FailureKind.ADOPTION: "The old script's cache could not be checked against its bucket; the next run retries.",
    FailureKind.CACHE_BACKUP: "Only the cache snapshot is missing (the files are backed up); the next run retries.",
    FailureKind.REBUILD: "The target was held back, nothing uploaded or deleted; the next run retries the rebuild.",
    FailureKind.FATAL: "The run stopped early: fix what the message says and run again.",
}
FOLDER_ADVICE = "Nothing under these folders was backed up; their cached files were kept. Fix their permissions: "
FOLDER_ADVICE += "the next run backs them up."


@dataclass(slots=True)
class _Group:
    name: str
    kind: FailureKind
    folder: bool
    count: int = 0
    by_target: dict[str, list[Failure]] = field(default_factory=dict)  # first examples per target
    per_target: dict[str, int] = field(default_factory=dict)  # failures per target

    def add(self, failure: Failure) -> None:
        self.count += 1
        self.per_target[failure.target] = self.per_target.get(failure.target, 0) + 1
        examples = self.by_target.setdefault(failure.target, [])
        if len(examples) < MAX_EXAMPLES_PER_GROUP:
            examples.append(failure)

    def examples(self, n: int) -> list[Failure]:
        """Up to `n` examples spread over the targets, round robin, the most affected target first,
        so every affected target gets its share before any gets a second one."""
        order = sorted(self.by_target, key=lambda t: (-self.per_target[t], t))
        queues = [list(self.by_target[t]) for t in order]
        picked: list[Failure] = []
        depth = 0
        while len(picked) < n and any(depth < len(q) for q in queues):
            for queue in queues:
                if depth < len(queue) and len(picked) < n:
                    picked.append(queue[depth])
            depth += 1
        return picked


@dataclass(frozen=True, slots=True)
class _Limits:
    examples: int  # example paths per failure group
    targets: int  # target lines (targets that failed or changed)
    groups: int  # failure groups shown
    path_chars: int  # longest example path, in characters


def _group(failures: Sequence[Failure]) -> list[_Group]:
    """Failures grouped by `Failure.group`, biggest group first."""
    groups: dict[str, _Group] = {}
    for failure in failures:
        group = groups.get(failure.group)
        if group is None:
            group = groups[failure.group] = _Group(failure.group, failure.kind, failure.folder)
        group.add(failure)
    return sorted(groups.values(), key=lambda g: (-g.count, g.name))


def _local_and_utc(ts: float, tz: tzinfo | None) -> str:
    """'2026-11-28 18:52 CET (17:52 UTC)': the host's local time first, UTC beside it."""
    try:
        utc = datetime.fromtimestamp(ts, tz=UTC)
        local = utc.astimezone(tz)  # tz None: the host's zone
    except (OverflowError, OSError, ValueError):
        return "unknown time"
    if local.utcoffset() == timedelta(0) and local.tzname() in ("UTC", "GMT", None):
        return utc.strftime("%Y-%m-%d %H:%M UTC")
    zone = local.tzname() or local.strftime("%z")
    same_day = local.date() == utc.date()
    return f"{local:%Y-%m-%d %H:%M} {zone} ({utc:%H:%M} UTC{'' if same_day else f' {utc:%Y-%m-%d}'})"


class _CardBuilder:
    """Everything computed once per card; `body(limits)` is then cheap enough to call repeatedly."""

    def __init__(
        self, summary: RunSummary, redactor: Redactor | None, report_path: str | None, tz: tzinfo | None
    ) -> None:
        self.summary = summary
        self.report_path = report_path
        self.tz = tz
        self.scrub: Callable[[str], str] = redactor.scrub if redactor else (lambda s: s)
        self.groups = _group(summary.failures)
        self.failures_by_target: dict[str, int] = {}
        for failure in summary.failures:
            self.failures_by_target[failure.target] = self.failures_by_target.get(failure.target, 0) + 1
        # Targets worth a line: those that failed or changed. Kept when not all fit: those with
        # failures (most first), then the busiest; the rest are counted.
        indexed = [(i, t) for i, t in enumerate(summary.targets) if self._failed(t) or self._activity(t)]
        indexed.sort(key=lambda it: (-self._failed(it[1]), -self._activity(it[1]), it[0]))
        self.target_priority = [index for index, _ in indexed]

    def md(self, text: str, max_chars: int) -> str:
        return escape_markdown(shorten(printable(self.scrub(text)), max_chars))

    def _failed(self, target: TargetStats) -> int:
        return max(target.failed, self.failures_by_target.get(target.name, 0))

    @staticmethod
    def _activity(target: TargetStats) -> int:
        return target.new + target.updated + target.deleted + target.adopted + target.rebuilt_rows

    def where_the_rest_is(self) -> str:
        """Where the full list of failures is, for "and N more"."""
        host = self.md(self.summary.host, MAX_HOST_CHARS)
        if self.summary.dry_run:
            return "a dry run writes no report: run async-backup --dry-run on " + host + " to see them all"
        if self.report_path is None:
            return f"the run report could not be written; the log on {host} has the first 50"
        return f"all of them are in {self.md(self.report_path, MAX_NAME_CHARS)} on {host}"

    # ---- pieces

    def title(self) -> dict[str, Any]:
        s = self.summary
        who = "async-backup (dry run)" if s.dry_run else "async-backup"
        parts = [_plural(len(s.targets), "target")]
        if s.failures:
            parts.append(_plural(len(s.failures), "failure"))
        if s.interrupted:
            parts.append("interrupted")
        elif s.ended_by_window and not s.failures:
            parts.append("window ended")
        elif not s.failures:
            parts.append(f"failed (exit code {s.exit_code})" if s.exit_code else "all good")
        if s.warnings:
            parts.append(_plural(len(s.warnings), "warning"))
        host = self.md(s.host, MAX_HOST_CHARS)
        bad = bool(s.failures) or (s.exit_code != 0 and not s.ended_by_window) or s.interrupted
        color = "Attention" if bad else ("Warning" if s.warnings else "Good")
        return _text(f"{who} on {host}: " + ", ".join(parts), size="Large", weight="Bolder", color=color)

    def subtitle(self) -> dict[str, Any]:
        s = self.summary
        took = format_duration(_span_s(s.started_at, s.finished_at))
        bits = [f"started {_local_and_utc(s.started_at, self.tz)}", f"took {took}", f"exit code {s.exit_code}"]
        if s.dry_run:
            bits.append("dry run: nothing was uploaded or deleted")
        text = ", ".join(bits)
        return _text(text[:1].upper() + text[1:], isSubtle=True, spacing="None")

    def totals(self, kinds: int) -> list[dict[str, Any]]:
        s = self.summary
        pairs = [
            ("Files uploaded", f"{s.files_uploaded:,}"),
            ("Bytes uploaded", format_bytes(s.bytes_uploaded)),
            ("Files deleted", f"{s.files_deleted:,}"),
            ("Failures", f"{len(s.failures):,}"),
            ("Warnings", f"{len(s.warnings):,}"),
        ]
        cost = s.requests
        if cost is not None:
            what = "S3 requests it would send" if cost.estimated else "S3 requests sent"
            pairs.append((what, f"{cost.count:,} for {format_usd(cost.usd)}"))
            for line in cost.lines[:kinds]:
                pairs.append((f"· {line.label}", f"{line.count:,} for {format_usd(line.usd)}"))
            if len(cost.lines) > kinds:
                rest = cost.lines[kinds:]
                pairs.append(
                    (
                        f"· {_plural(len(rest), 'more kind')}",
                        f"{sum(r.count for r in rest):,} for {format_usd(sum(r.usd for r in rest))}",
                    )
                )
        items: list[dict[str, Any]] = [_heading("Totals"), _facts(pairs)]
        if cost is not None:
            items.append(_note(self.md(cost.prices.describe(), MAX_MESSAGE_CHARS)))
        return items

    def target_line(self, target: TargetStats) -> dict[str, Any]:
        name = self.md(target.name, MAX_NAME_CHARS)
        bucket = f"s3://{self.md(target.bucket, MAX_NAME_CHARS)}" if target.bucket else target.destination
        bits = []
        failed = self._failed(target)
        if failed:
            bits.append(f"{failed:,} failed")
        if target.adopted:
            bits.append(f"{target.adopted:,} adopted from the old cache")
        if self.summary.dry_run:
            bits.append(f"would upload {target.planned_uploads:,} ({format_bytes(target.planned_upload_bytes)})")
            bits.append(f"would delete {target.planned_deletes:,}")
        else:
            for n, word in ((target.new, "new"), (target.updated, "updated"), (target.deleted, "deleted")):
                if n:
                    bits.append(f"{n:,} {word}")
            if target.bytes_uploaded:
                bits.append(f"{format_bytes(target.bytes_uploaded)} uploaded")
        bits.append(f"in {format_duration(_span_s(target.started_at, target.finished_at))}")
        text = f"**{name}** → {bucket}: " + ", ".join(bits)
        if target.rebuilt_from:
            rebuilt = f"{target.rebuilt_rows:,} rows from {target.rebuilt_from}"
            text += f". Cache rebuilt: {self.md(rebuilt, MAX_MESSAGE_CHARS)}"
        return _text(text, spacing="Small", color="Attention" if failed else "Default")

    def targets(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The targets section: a line per target that failed or changed; how many lines it leaves out."""
        targets = self.summary.targets
        if not targets:
            return [], 0
        shown = sorted(self.target_priority[:limit])  # back in configuration order
        items: list[dict[str, Any]] = [_heading("Targets")]
        items.extend(self.target_line(targets[i]) for i in shown)
        quiet = len(targets) - len(self.target_priority)
        left_out = len(self.target_priority) - len(shown)
        if left_out:
            kept = set(shown)
            failed = sum(self._failed(targets[i]) for i in self.target_priority if i not in kept)
            items.append(
                _note(
                    f"{_plural(left_out, 'more target')} that failed or changed left out to fit Teams' size limit "
                    f"({_plural(failed, 'failure')} among them)."
                )
            )
        if quiet:
            nothing = "nothing to do" if self.summary.dry_run else "nothing new, changed, deleted or failed"
            items.append(_note(f"{_plural(quiet, 'target')} with {nothing}."))
        return items, left_out

    def failures(self, limits: _Limits) -> tuple[list[dict[str, Any]], int, int]:
        """The failures section, how many groups it leaves out and how many example paths."""
        if not self.groups:
            return [], 0, 0
        items: list[dict[str, Any]] = [_heading(f"Failures ({len(self.summary.failures):,})")]
        hidden_paths = 0
        for group in self.groups[: limits.groups]:
            spread = f" in {len(group.per_target):,} targets" if len(group.per_target) > 1 else ""
            block: list[dict[str, Any]] = [
                _text(f"**{self.md(group.name, MAX_CODE_CHARS)}**: {group.count:,}{spread}", color="Attention")
            ]
            advice = FOLDER_ADVICE if group.folder else ADVICE.get(group.kind, "")
            if advice:
                block.append(_text(advice, spacing="None"))
            examples = group.examples(limits.examples)
            if examples:
                message = self.md(examples[0].message, MAX_MESSAGE_CHARS)
                if message:
                    block.append(_text(message, isSubtle=True, spacing="None"))
            for failure in examples:
                block.append(_text(self.md(failure.path, limits.path_chars), fontType="Monospace", spacing="None"))
            more = group.count - len(examples)
            if more:
                hidden_paths += more
                block.append(_note(f"and {more:,} more: {self.where_the_rest_is()}"))
            items.append({"type": "Container", "spacing": "Small", "items": block})
        left_groups = self.groups[limits.groups :]
        if left_groups:
            hidden = sum(g.count for g in left_groups)
            items.append(
                _note(
                    f"{_plural(len(left_groups), 'more failure group')} ({_plural(hidden, 'failure')}) "
                    f"left out to fit Teams' size limit: {self.where_the_rest_is()}."
                )
            )
        return items, len(left_groups), hidden_paths

    def warnings(self, shown: int) -> list[dict[str, Any]]:
        warnings = self.summary.warnings
        if not warnings:
            return []
        items: list[dict[str, Any]] = [_heading(f"Warnings ({len(warnings):,})")]
        for warning in warnings[:shown]:
            where = f" {self.md(warning.path, MAX_NAME_CHARS)}" if warning.path else ""
            text = f"**{self.md(warning.group, MAX_CODE_CHARS)}**:{where} {self.md(warning.message, 200)}"
            items.append(_text(text, spacing="None"))
        if len(warnings) > shown:
            items.append(_note(f"and {len(warnings) - shown:,} more: {self.where_the_rest_is()}"))
        return items

    # ---- the whole card

    def body(self, limits: _Limits | None) -> list[dict[str, Any]]:
        """The card body at these limits; None gives the smallest card, title and totals only.

        The order is the operator's: the outcome, what failed and what to do, the targets that
        failed or changed, then the totals and what the run cost."""
        body = [self.title(), self.subtitle()]
        if self.summary.ended_by_window:  # one short line: what the window left, and for how long
            body.append(_text(self.md(self.summary.backlog_line(), MAX_MESSAGE_CHARS), spacing="None"))
        if limits is None:
            if self.summary.targets or self.groups or self.summary.warnings:
                body.append(
                    _note(
                        f"Details of {_plural(len(self.summary.targets), 'target')} and "
                        f"{_plural(len(self.groups), 'failure group')} left out to fit Teams' size limit: "
                        f"{self.where_the_rest_is()}."
                    )
                )
            return body + self.totals(0)
        target_items, left_targets = self.targets(limits.targets)
        failure_items, left_groups, _hidden_paths = self.failures(limits)
        body += failure_items + self.warnings(MAX_WARNINGS_SHOWN if limits.examples else 0) + target_items
        if left_targets or left_groups:
            body.append(_note(f"Some details were left out to fit Teams' size limit: {self.where_the_rest_is()}."))
        return body + self.totals(MAX_COST_KINDS if limits.examples else 0)

    def cascade(self) -> list[_Limits]:
        """Ever smaller limits, in the order we give things up: examples, then targets, then groups."""
        n_targets = len(self.target_priority)
        n_groups = min(len(self.groups), MAX_GROUPS_SHOWN)
        few_targets = min(n_targets, 10)
        steps = [
            _Limits(5, n_targets, n_groups, 240),
            _Limits(3, n_targets, n_groups, 240),
            _Limits(2, n_targets, n_groups, 160),
        ]
        steps += [_Limits(2, t, n_groups, 160) for t in (200, 100, 50, 25, 10) if t < n_targets]
        steps.append(_Limits(1, few_targets, n_groups, 120))
        steps += [_Limits(1, few_targets, g, 120) for g in (10, 5, 3, 1) if g < n_groups]
        steps += [_Limits(1, 0, min(n_groups, 3), 80), _Limits(0, 0, min(n_groups, 3), 80)]
        return steps


def _payload(body: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": CARD_CONTENT_TYPE,
                "contentUrl": None,
                "content": {
                    "type": "AdaptiveCard",
                    "version": CARD_VERSION,
                    "$schema": CARD_SCHEMA,
                    "msteams": {"width": "Full"},
                    "body": body,
                },
            }
        ],
    }


def build_card(
    summary: RunSummary,
    *,
    redactor: Redactor | None = None,
    budget_bytes: int = CARD_BUDGET_BYTES,
    report_path: str | None = None,
    tz: tzinfo | None = None,
) -> dict[str, Any]:
    """The Workflows webhook payload for `summary`, at most `budget_bytes` of UTF-8 JSON.

    The card is shrunk step by step (fewer example paths, then fewer targets, then fewer failure
    groups) until it fits; every cut is stated on the card with how much was left out. Every text
    passes through `redactor` (if given), `printable` and markdown escaping, so any `str` input,
    including surrogate-escaped bytes, gives a card that serializes.

    `report_path` is the run report's file on the host (None: it could not be written), named
    where the card leaves failures out. Times are shown in `tz` (default: the host's zone) beside UTC.
    """
    builder = _CardBuilder(summary, redactor, report_path, tz)
    for limits in builder.cascade():
        payload = _payload(builder.body(limits))
        if payload_size_bytes(payload) <= budget_bytes:
            return payload
    # Title, totals and a note: bounded by the length caps on host and numbers, so it always fits.
    return _payload(builder.body(None))
