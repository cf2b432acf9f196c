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

from ..errors import Failure, FailureKind, Fix, fix_command
from ..s3.pricing import format_usd
from ..settings.naming import is_default_bucket
from ..wording import counted
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
ARCHIVE_CLASS = "DEEP_ARCHIVE"  # the storage class the tool writes in

# Layout limits before any shrinking; shrinking only lowers them.
MAX_EXAMPLES_PER_GROUP = 2  # a phone shows two paths in a glance; the report has them all
MAX_GROUPS_SHOWN = 20
MAX_WARNING_EXAMPLES = 1  # example paths per warning group: warnings need no action
MAX_COST_KINDS = 4  # request kinds listed with their price; the rest are summed in one line
MAX_HOST_CHARS = 100
MAX_NAME_CHARS = 160
MAX_CODE_CHARS = 120
MAX_MESSAGE_CHARS = 300
MAX_COMMANDS_PER_GROUP = 10  # per-target commands (--forget-target, --allow-mass-delete --only) listed
MAX_NAMES_IN_GROUP = 3  # target names spelled out for a line of targets with the same outcome
# A target line on a phone (360 px, about 45 characters of 14 px text): the folder's last two
# components say which one it is; example paths are shortened to what fits a line of monospace.
SHORT_NAME_COMPONENTS = 2
SHORT_PATH_CHARS = 40

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


def short_names(paths: Sequence[str]) -> dict[str, str]:
    """Each path's last two components, or as many more as tell it apart from the others."""
    parts = {p: [c for c in p.rstrip("/").split("/") if c] or [p] for p in paths}
    depth = dict.fromkeys(paths, SHORT_NAME_COMPONENTS)
    for _ in range(64):
        names: dict[str, list[str]] = {}
        for p in paths:
            names.setdefault("/".join(parts[p][-depth[p] :]), []).append(p)
        clashes = [p for same in names.values() if len(same) > 1 for p in same if depth[p] < len(parts[p])]
        if not clashes:
            break
        for p in clashes:
            depth[p] += 1
    return {p: "/".join(parts[p][-depth[p] :]) for p in paths}


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


def _table(rows: Sequence[tuple[str, int, float, bool]]) -> dict[str, Any]:
    """Requests as a table of three columns (kind, count, price): one line a row, never wrapped, so
    a long operation name is cut with an ellipsis rather than broken mid-word on a phone."""

    def column(cells: list[str], width: str, right: bool, bold: Sequence[bool]) -> dict[str, Any]:
        items = []
        for text, strong in zip(cells, bold, strict=True):
            cell: dict[str, Any] = {
                "type": "TextBlock",
                "text": text,
                "wrap": False,
                "spacing": "None",
                "size": "Small",
            }
            if right:
                cell["horizontalAlignment"] = "Right"
            if strong:
                cell["weight"] = "Bolder"
            items.append(cell)
        return {"type": "Column", "width": width, "items": items}

    bold = [strong for *_, strong in rows]
    return {
        "type": "ColumnSet",
        "spacing": "Small",
        "columns": [
            column([label for label, *_ in rows], "stretch", False, bold),
            column([f"{count:,}" for _, count, _, _ in rows], "auto", True, bold),
            column([format_usd(usd) for _, _, usd, _ in rows], "auto", True, bold),
        ],
    }


def _cell(text: str, *, bold: bool = False, subtle: bool = False, color: str = "Default") -> dict[str, Any]:
    """A cell of a table made of columns: one line, never wrapped (a long name ends in an ellipsis)."""
    cell: dict[str, Any] = {"type": "TextBlock", "text": text, "spacing": "None", "size": "Small"}
    if bold:
        cell["weight"] = "Bolder"
    if subtle:
        cell["isSubtle"] = True
    if color != "Default":
        cell["color"] = color
    return cell


def _compact_bytes(n: int) -> str:
    """A size in at most three digits for a table cell ("8.5 GiB", "34 GiB", "305 MiB"); empty for 0."""
    if not n:
        return ""
    text = format_bytes(n)
    number, unit = text.split(" ")
    return f"{float(number):.0f} {unit}" if float(number) >= 10 else text


def _request_label(operation: str, storage_class: str) -> str:
    """The operation alone where it writes to Deep Archive (what the tool writes), else with its class."""
    return operation if storage_class in ("", ARCHIVE_CLASS) else f"{operation} ({storage_class})"


def _heading(text: str) -> dict[str, Any]:
    return _text(text, weight="Bolder", separator=True, spacing="Default")


def _note(text: str) -> dict[str, Any]:
    return _text(text, isSubtle=True, spacing="Small", size="Small")


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

# What the operator can do about each kind of failure: one line under its heading. The card shows
# it instead of the advice the failures' own messages end with (see `_detail`), so it says
# everything: what was kept and what the next run does.
ADVICE: dict[FailureKind, str] = {
    FailureKind.UNREADABLE: "Cached files were kept. Check the permissions as the backup's user; they are tried again.",
    FailureKind.CHANGED_WHILE_READING: "Written to during the backup: the next run uploads them. "
    "If it repeats, run the backup when nothing writes; at the third run in a row it is a failure.",
    FailureKind.NEVER_STILL: "Written to at every run, so never backed up: exclude them with backup.exclude, "
    "or back up a copy made while nothing writes to them.",
    FailureKind.S3: "The next run retries. If the code repeats, check the bucket, the credentials and the endpoint.",
    FailureKind.DELETION_GUARD: "Deletes held back. Mount the share; if the files are gone on purpose:",
    FailureKind.CHANGE_GUARD: "Overwrites held back: ransomware encrypting files in place looks like this. "
    "Check the files named; if the re-scan was intended:",
    FailureKind.TARGET_MISSING: "Nothing uploaded or deleted. Mount it or fix config.json; if it is gone for good "
    "(its bucket stays):",
    FailureKind.KEY_TOO_LONG: "S3 keys take at most 1,024 bytes: shorten these paths, or they are never backed up.",
    FailureKind.BUCKET: "Check the bucket's name and the credentials' permissions (the README's IAM policy).",
    FailureKind.ADOPTION: "The old script's cache could not be checked against its bucket; the next run retries.",
    FailureKind.CACHE_BACKUP: "Only the cache snapshot is missing (the files are backed up); the next run retries.",
    FailureKind.REBUILD: "The target was held back, nothing uploaded or deleted; the next run retries the rebuild.",
    FailureKind.FATAL: "The run stopped early: fix what the message says and run again.",
    FailureKind.FIXITY: "Bytes that are not what was backed up. A file on disk: its uploads are held back until "
    "the good version is restored (the command shown) or the change accepted (--accept-change).",
}
FOLDER_ADVICE = (
    "Nothing under them was backed up; S3 keeps what it had. Fix their permissions: the next run backs them up."
)
# What comes before each target's command, by the kind of fix.
FIX_LEAD: dict[Fix, str] = {
    Fix.FORGET_SUBFOLDER: "",
    Fix.FORGET_TARGET: "remove it from config.json, then ",
    Fix.ALLOW_MASS_DELETE: "",
    Fix.ALLOW_MASS_CHANGE: "",
}
# Kinds whose messages are ours and end with advice the card gives once in ADVICE: of these the
# card shows only the first clause, what happened.
_OWN_ADVICE = {
    FailureKind.UNREADABLE,
    FailureKind.NEVER_STILL,
    FailureKind.TARGET_MISSING,
    FailureKind.DELETION_GUARD,
    FailureKind.KEY_TOO_LONG,
    FailureKind.VANISHED,
    FailureKind.CHANGED_WHILE_READING,
}


_BOTOCORE_PREFIX = re.compile(r"^An error occurred \([^)]*\) when calling the (\w+) operation(?: \([^)]*\))?: ")


def _detail(failure: Failure, *, advised: bool = True) -> str:
    """What a failure's message adds to its group's heading and advice: a foreign message (S3's,
    an exception's) whole; of our own messages the first clause, without the path it repeats.
    Where the card gives advice (`advised`), a clause naming the path says nothing the heading,
    the advice and the path line do not; for a warning, which has no advice, it says what happened."""
    message = failure.message
    if failure.kind not in _OWN_ADVICE:
        # botocore's "An error occurred (SlowDown) when calling the UploadPart operation (...): text":
        # the code is in the group's heading already.
        return _BOTOCORE_PREFIX.sub(r"\1: ", message)
    first = re.split(r"; |\. (?=[A-Z])", message, maxsplit=1)[0]
    if failure.fix is None and failure.path and failure.path in first:
        if advised:
            return ""  # "folder /x unreadable (...)": the heading, advice and path line say it
        return first.replace(" " + failure.path, "")  # "folder vanished while it was read: ..."
    return first


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

    def fixes(self) -> list[Failure]:
        """The first failure of each target, in the order they came: where a command settles them."""
        return [examples[0] for examples in self.by_target.values() if examples]

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
    """Failures grouped by `Failure.group`: the change guard's first (held-back overwrites may be an
    attack under way), then the biggest group first."""
    groups: dict[str, _Group] = {}
    for failure in failures:
        group = groups.get(failure.group)
        if group is None:
            group = groups[failure.group] = _Group(failure.group, failure.kind, failure.folder)
        group.add(failure)
    return sorted(groups.values(), key=lambda g: (g.kind is not FailureKind.CHANGE_GUARD, -g.count, g.name))


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
        # Targets with the same outcome (the same failures, nothing changed) share one line.
        self.short_names = short_names([t.name for t in summary.targets])
        lines: dict[tuple[str, tuple[str, ...], str], list[int]] = {}
        for i, t in enumerate(summary.targets):
            if not (self._failed(t) or self._activity(t)):
                continue
            groups = tuple(sorted({f.group for f in summary.failures if f.target == t.name}))
            alone = t.name if t.bytes_uploaded or t.rebuilt_from or not t.bucket else ""
            lines.setdefault((self.outcome(t), groups, alone), []).append(i)
        targets = summary.targets
        self.target_lines = sorted(
            lines.values(),
            key=lambda line: (
                -sum(self._failed(targets[i]) for i in line),
                -sum(self._activity(targets[i]) for i in line),
                line[0],
            ),
        )

    def md(self, text: str, max_chars: int) -> str:
        return escape_markdown(shorten(printable(self.scrub(text)), max_chars))

    def _failed(self, target: TargetStats) -> int:
        return max(target.failed, self.failures_by_target.get(target.name, 0))

    @staticmethod
    def _activity(target: TargetStats) -> int:
        return target.new + target.updated + target.deleted + target.adopted + target.rebuilt_rows

    def where_the_rest_is(self) -> str:
        """Where the full list of failures is, said once on the card."""
        host = self.md(self.summary.host, MAX_HOST_CHARS)
        if self.summary.dry_run:
            return "a dry run writes no report: run async-backup --dry-run on " + host + " to see them all"
        if self.report_path is None:
            return f"the run report could not be written; the log on {host} has the first 50"
        return f"all of them are in {self.md(self.report_path, MAX_NAME_CHARS)} on {host}"

    def short(self, target: str) -> str:
        return self.short_names.get(target) or target

    def shown_path(self, failure: Failure, max_chars: int) -> str:
        """An example path as a phone shows it: the target's short name, then the path under it."""
        path = failure.path
        target = failure.target.rstrip("/")
        if target and path.startswith(target + "/") and failure.target in self.short_names:
            path = self.short(failure.target) + path[len(target) :]
        return self.md(path, max_chars)

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
        return _text(f"{who} on {host}: " + ", ".join(parts), size="Medium", weight="Bolder", color=color)

    def subtitle(self) -> dict[str, Any]:
        s = self.summary
        took = format_duration(_span_s(s.started_at, s.finished_at))
        bits = [f"started {_local_and_utc(s.started_at, self.tz)}", f"took {took}", f"exit code {s.exit_code}"]
        if s.dry_run:
            bits.append("dry run: nothing was uploaded or deleted")
        text = ", ".join(bits)
        return _text(text[:1].upper() + text[1:], isSubtle=True, spacing="None", size="Small")

    def totals(self, kinds: int) -> list[dict[str, Any]]:
        """The totals in one sentence, then the requests as a table: short labels, no facts whose
        titles a phone would break mid-word."""
        s = self.summary
        uploaded = "would upload" if s.dry_run else "uploaded"
        sentence = (
            f"{_plural(s.files_uploaded, 'file')} {uploaded} ({format_bytes(s.bytes_uploaded)}), "
            f"{s.files_deleted:,} deleted."
        )
        items: list[dict[str, Any]] = [_heading("Totals"), _text(sentence, spacing="Small")]
        cost = s.requests
        if cost is None:
            return items
        rows = [("S3 requests, would send" if cost.estimated else "S3 requests", cost.count, cost.usd, True)]
        rows += [
            (_request_label(line.operation, line.storage_class), line.count, line.usd, False)
            for line in cost.lines[:kinds]
        ]
        if len(cost.lines) > kinds:
            rest = cost.lines[kinds:]
            rows.append((_plural(len(rest), "more kind"), sum(r.count for r in rest), sum(r.usd for r in rest), False))
        items.append(_table(rows))
        archive = (
            ". Writes in DEEP_ARCHIVE unless a class is named."
            if any(line.storage_class == ARCHIVE_CLASS for line in cost.lines[:kinds])
            else ""
        )
        items.append(_note(self.md(cost.prices.describe(), MAX_MESSAGE_CHARS) + archive))
        return items

    def outcome(self, target: TargetStats) -> str:
        """What happened to a target, without its name: the key targets are grouped by."""
        bits = []
        failed = self._failed(target)
        if failed:
            bits.append(f"{failed:,} failed")
        if target.adopted:
            bits.append(f"{target.adopted:,} adopted")
        if self.summary.dry_run:
            if target.planned_uploads:
                bits.append(f"would upload {target.planned_uploads:,} ({format_bytes(target.planned_upload_bytes)})")
            if target.planned_deletes:
                bits.append(f"would delete {target.planned_deletes:,}")
        else:
            for n, word in ((target.new, "new"), (target.updated, "updated"), (target.deleted, "deleted")):
                if n:
                    bits.append(f"{n:,} {word}")
            if target.bytes_uploaded:
                bits.append(format_bytes(target.bytes_uploaded))
        if target.rebuilt_from:
            bits.append(f"cache rebuilt ({counted(target.rebuilt_rows, 'row')})")
        return ", ".join(bits) or "nothing to do"

    def target_row(self, target: TargetStats) -> list[tuple[str, str, str]]:
        """One target's cells in the targets table, by column: (column, text, colour)."""
        failed = self._failed(target)
        cells = [("", self.md(self.short(target.name), MAX_NAME_CHARS), "Default")]
        cells.append(("failed", f"{failed:,}" if failed else "", "Attention"))
        if self.summary.dry_run:
            counts = [("upload", target.planned_uploads), ("delete", target.planned_deletes)]
            size = _compact_bytes(target.planned_upload_bytes)
        else:
            counts = [("new", target.new), ("upd", target.updated), ("del", target.deleted)]
            size = _compact_bytes(target.bytes_uploaded)
        cells += [(column, f"{n:,}" if n else "", "Default") for column, n in counts]
        cells.append(("size", size, "Default"))
        return cells

    def target_extras(self, target: TargetStats) -> str:
        """What a target's row in the table does not say: a bucket not named after it, adopted rows,
        a rebuilt cache; empty when there is nothing more."""
        bits = []
        if not target.bucket:
            bits.append("no bucket")
        elif not is_default_bucket(target.bucket, target.name):
            bits.append(f"→ s3://{self.md(target.bucket, MAX_NAME_CHARS)}")
        if target.adopted:
            bits.append(f"{target.adopted:,} adopted")
        if target.rebuilt_from:
            rebuilt = f"{counted(target.rebuilt_rows, 'row')} from {target.rebuilt_from}"
            bits.append(f"cache rebuilt: {self.md(rebuilt, MAX_MESSAGE_CHARS)}")
        if not bits:
            return ""
        return f"{self.md(self.short(target.name), MAX_NAME_CHARS)} " + ", ".join(bits)

    def target_table(self, targets: Sequence[TargetStats]) -> list[dict[str, Any]]:
        """Targets shown alone, a row each: short name, then the counts in columns headed once, so
        a busy target still takes one line on a phone. Columns empty in every row are left out."""
        rows = [self.target_row(t) for t in targets]
        header = [column for column, _, _ in rows[0]]
        header[0] = "Targets"
        # Subfolders of one root: the root's last component said once, in the header.
        names = [self.short(t.name).split("/") for t in targets]
        parent = names[0][0]
        if len(names) > 1 and all(len(n) > 1 and n[0] == parent for n in names):
            header[0] = self.md(parent + "/", MAX_NAME_CHARS)
            for row, name in zip(rows, names, strict=True):
                row[0] = ("", self.md("/".join(name[1:]), MAX_NAME_CHARS), "Default")
        keep = [i for i, column in enumerate(header) if i == 0 or any(row[i][1] for row in rows)]
        columns = []
        for i in keep:
            cells = [_cell(header[i], bold=True, subtle=i > 0)]
            cells += [
                _cell(row[i][1] or "·", color=row[i][2] if row[i][1] else "Default", subtle=not row[i][1])
                for row in rows
            ]
            column: dict[str, Any] = {"type": "Column", "width": "auto" if i else "stretch", "items": cells}
            if i:
                column["spacing"] = "Small"
                for cell in cells:
                    cell["horizontalAlignment"] = "Right"
            columns.append(column)
        table: dict[str, Any] = {"type": "ColumnSet", "separator": True, "spacing": "Default", "columns": columns}
        notes = [extra for extra in map(self.target_extras, targets) if extra]
        return [table] + [_note(extra) for extra in notes]

    def target_group(self, indexes: Sequence[int]) -> list[dict[str, Any]]:
        """One line for several targets with the same outcome, a few of their names under it."""
        targets = [self.summary.targets[i] for i in indexes]
        first = targets[0]
        failed = self._failed(first)
        outcome = self.outcome(first)
        if failed:
            groups = sorted({f.group for f in self.summary.failures if f.target == first.name})
            outcome = outcome.replace(f"{failed:,} failed", f"{failed:,} failed each", 1)
            outcome += ", " + ", ".join(self.md(g, MAX_CODE_CHARS) for g in groups)
        else:
            outcome += " each"
        names = [self.md(self.short(t.name), MAX_NAME_CHARS) for t in targets[:MAX_NAMES_IN_GROUP]]
        if len(targets) > MAX_NAMES_IN_GROUP:
            names.append(f"{len(targets) - MAX_NAMES_IN_GROUP:,} more")
        return [
            _text(
                f"**{counted(len(targets), 'target')}**: {outcome}",
                spacing="Small",
                size="Small",
                color="Attention" if failed else "Default",
            ),
            _text(", ".join(names), isSubtle=True, spacing="None", size="Small"),
        ]

    def targets(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The targets section: a table row per target that failed or changed, a line per group of
        targets with the same outcome; how many of those targets it leaves out."""
        targets = self.summary.targets
        if not targets:
            return [], 0
        shown = sorted(self.target_lines[:limit], key=lambda line: line[0])  # back in configuration order
        alone = [targets[line[0]] for line in shown if len(line) == 1]
        items: list[dict[str, Any]] = self.target_table(alone) if alone else [_heading("Targets")]
        for line in shown:
            if len(line) > 1:
                items.extend(self.target_group(line))
        listed = sum(len(line) for line in self.target_lines)
        quiet = len(targets) - listed
        left_out = listed - sum(len(line) for line in shown)
        if left_out:
            failed = sum(self._failed(targets[i]) for line in self.target_lines[limit:] for i in line)
            items.append(
                _note(
                    f"{_plural(left_out, 'more target')} that failed or changed left out to fit Teams' size limit "
                    f"({_plural(failed, 'failure')} among them)."
                )
            )
        if quiet:
            nothing = "nothing to do" if self.summary.dry_run else "nothing new, changed or failed"
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
            examples = group.examples(max(limits.examples, 1))
            detail = self.md(_detail(examples[0]), MAX_MESSAGE_CHARS) if examples else ""
            if detail:
                block.append(_text(detail, isSubtle=True, spacing="None", size="Small"))
            advice = FOLDER_ADVICE if group.folder and group.kind is FailureKind.UNREADABLE else ADVICE.get(group.kind)
            fixes = [f for f in group.fixes() if f.fix is not None]
            if advice and (fixes or not advice.endswith(":")):
                block.append(_text(advice, spacing="None", size="Small"))
            if fixes:
                block += self.commands(fixes, limits)
                hidden_paths += group.count - min(len(fixes), MAX_COMMANDS_PER_GROUP)
                items.append({"type": "Container", "spacing": "Small", "items": block})
                continue
            for failure in examples[: limits.examples]:
                block.append(
                    _text(
                        self.shown_path(failure, limits.path_chars), fontType="Monospace", size="Small", spacing="None"
                    )
                )
            hidden_paths += group.count - min(len(examples), limits.examples)  # the heading has the count
            items.append({"type": "Container", "spacing": "Small", "items": block})
        left_groups = self.groups[limits.groups :]
        if left_groups:
            hidden = sum(g.count for g in left_groups)
            items.append(
                _note(
                    f"{_plural(len(left_groups), 'more failure group')} ({_plural(hidden, 'failure')}) "
                    "left out to fit Teams' size limit."
                )
            )
        if hidden_paths or left_groups:
            items.append(_note(f"The full list: {self.where_the_rest_is()}."))
        return items, len(left_groups), hidden_paths

    def commands(self, fixes: Sequence[Failure], limits: _Limits) -> list[dict[str, Any]]:
        """Per target, the exact command that settles its failure; never shortened."""
        shown = fixes[: min(MAX_COMMANDS_PER_GROUP, max(limits.examples, 1) * 3)]
        block = []
        for failure in shown:
            assert failure.fix is not None
            command = FIX_LEAD[failure.fix] + fix_command(failure.fix, failure.target)
            block.append(
                _text(escape_markdown(self.scrub(command)), fontType="Monospace", size="Small", spacing="None")
            )
        if len(fixes) > len(shown):
            block.append(_note(f"and {_plural(len(fixes) - len(shown), 'more target')}"))
        return block

    def warnings(self, shown: int) -> list[dict[str, Any]]:
        """Warnings grouped as failures are, with a line of detail and up to `shown` example paths each."""
        warnings = self.summary.warnings
        if not warnings:
            return []
        items: list[dict[str, Any]] = [_heading(f"Warnings ({len(warnings):,})")]
        for group in _group(warnings)[:MAX_GROUPS_SHOWN]:
            block = [_text(f"**{self.md(group.name, MAX_CODE_CHARS)}**: {group.count:,}", color="Warning")]
            examples = group.examples(max(shown, 1))
            detail = self.md(_detail(examples[0], advised=False), MAX_MESSAGE_CHARS)
            if detail:
                block.append(_text(detail, isSubtle=True, spacing="None", size="Small"))
            for warning in examples[:shown]:
                if warning.path:
                    block.append(
                        _text(
                            self.shown_path(warning, SHORT_PATH_CHARS),
                            fontType="Monospace",
                            size="Small",
                            spacing="None",
                        )
                    )
            items.append({"type": "Container", "spacing": "Small", "items": block})
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
        body += failure_items + self.warnings(MAX_WARNING_EXAMPLES if limits.examples else 0) + target_items
        if left_targets and not left_groups:
            body.append(_note(f"The targets left out: {self.where_the_rest_is()}."))
        return body + self.totals(MAX_COST_KINDS if limits.examples else 0)

    def cascade(self) -> list[_Limits]:
        """Ever smaller limits, in the order we give things up: examples, then targets, then groups."""
        n_targets = len(self.target_lines)
        n_groups = min(len(self.groups), MAX_GROUPS_SHOWN)
        few_targets = min(n_targets, 10)
        steps = [
            _Limits(MAX_EXAMPLES_PER_GROUP, n_targets, n_groups, SHORT_PATH_CHARS),
            _Limits(2, n_targets, n_groups, SHORT_PATH_CHARS),
        ]
        steps += [_Limits(2, t, n_groups, SHORT_PATH_CHARS) for t in (200, 100, 50, 25, 10) if t < n_targets]
        steps.append(_Limits(1, few_targets, n_groups, SHORT_PATH_CHARS))
        steps += [_Limits(1, few_targets, g, SHORT_PATH_CHARS) for g in (10, 5, 3, 1) if g < n_groups]
        steps += [_Limits(1, 0, min(n_groups, 3), SHORT_PATH_CHARS), _Limits(0, 0, min(n_groups, 3), SHORT_PATH_CHARS)]
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
