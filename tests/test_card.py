"""The Teams card: Workflows payload shape, Adaptive Card 1.4 structure, escaping, and the 28 KB limit."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from conftest import ACCESS_KEY, SECRET_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_backup.card import (
    CARD_BUDGET_BYTES,
    TEAMS_MESSAGE_LIMIT_BYTES,
    build_card,
    card_json,
    escape_markdown,
)
from async_backup.errors import Failure, FailureKind
from async_backup.redact import Redactor, printable
from async_backup.summary import RunSummary, TargetStats

T0 = 1_795_888_320.0  # 2026-11-28 17:52 UTC
WEBHOOK = (
    "https://prod-12.westeurope.logic.azure.com:443/workflows/0123456789abcdef0123456789abcdef"
    "/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0"
    "&sig=PLANTEDsignatureAbCdEfGhIjKlMnOpQrStUvWxYz0123"
)

# ----------------------------------------------------------------------------- a structural validator

ELEMENTS = {"TextBlock", "FactSet", "Container", "ColumnSet"}
COMMON_PROPS = {"type", "id", "spacing", "separator", "isVisible", "height"}
SPACING = {"none", "small", "default", "medium", "large", "extralarge", "padding"}
ENUMS: dict[str, dict[str, set[str]]] = {
    "TextBlock": {
        "size": {"default", "small", "medium", "large", "extralarge"},
        "weight": {"default", "lighter", "bolder"},
        "color": {"default", "dark", "light", "accent", "good", "warning", "attention"},
        "fontType": {"default", "monospace"},
        "horizontalAlignment": {"left", "center", "right"},
    },
    "Container": {"style": {"default", "emphasis", "good", "attention", "warning", "accent"}},
    "ColumnSet": {"style": {"default", "emphasis", "good", "attention", "warning", "accent"}},
}
PROPS = {
    "TextBlock": {"text", "wrap", "size", "weight", "color", "isSubtle", "fontType", "maxLines", "horizontalAlignment"},
    "FactSet": {"facts"},
    "Container": {"items", "style", "verticalContentAlignment", "bleed", "minHeight"},
    "ColumnSet": {"columns", "style", "bleed", "minHeight", "horizontalAlignment"},
}


def validate_element(element: Any, where: str) -> None:
    assert isinstance(element, dict), where
    kind = element.get("type")
    assert kind in ELEMENTS, f"{where}: element type {kind!r} is not allowed in a 1.4 Workflows card"
    unknown = set(element) - COMMON_PROPS - PROPS[kind]
    assert not unknown, f"{where}: unknown properties {unknown}"
    if "spacing" in element:
        assert element["spacing"].lower() in SPACING, where
    for prop, allowed in ENUMS.get(kind, {}).items():
        if prop in element:
            assert element[prop].lower() in allowed, f"{where}: {prop}={element[prop]!r}"
    if kind == "TextBlock":
        assert isinstance(element["text"], str), where
        for flag in ("wrap", "isSubtle", "separator"):
            assert isinstance(element.get(flag, False), bool), where
    elif kind == "FactSet":
        assert isinstance(element["facts"], list) and element["facts"], where
        for fact in element["facts"]:
            assert set(fact) == {"title", "value"}, where
            assert isinstance(fact["title"], str) and isinstance(fact["value"], str), where
    elif kind == "Container":
        assert isinstance(element["items"], list), where
        for i, item in enumerate(element["items"]):
            validate_element(item, f"{where}.items[{i}]")
    elif kind == "ColumnSet":
        for i, column in enumerate(element["columns"]):
            assert column.get("type") == "Column", where
            for j, item in enumerate(column.get("items", [])):
                validate_element(item, f"{where}.columns[{i}].items[{j}]")


def validate_payload(payload: Any) -> dict[str, Any]:
    """Assert the Workflows envelope and an Adaptive Card 1.4 inside; return the card."""
    assert set(payload) == {"type", "attachments"}
    assert payload["type"] == "message"
    assert isinstance(payload["attachments"], list) and len(payload["attachments"]) == 1
    attachment = payload["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert "contentUrl" in attachment and attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert set(card) <= {"type", "version", "$schema", "body", "msteams"}
    assert isinstance(card["body"], list) and card["body"]
    for i, element in enumerate(card["body"]):
        validate_element(element, f"body[{i}]")
    return dict(card)


def texts(payload: dict[str, Any]) -> list[str]:
    """Every TextBlock text and fact of the card, in order."""
    out: list[str] = []

    def walk(element: dict[str, Any]) -> None:
        if element["type"] == "TextBlock":
            out.append(element["text"])
        elif element["type"] == "FactSet":
            out.extend(f"{f['title']}: {f['value']}" for f in element["facts"])
        for item in element.get("items", []):
            walk(item)

    for element in payload["attachments"][0]["content"]["body"]:
        walk(element)
    return out


def shown(markdown: str) -> str:
    """What CommonMark displays for escaped text: a backslash before punctuation disappears."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


# ----------------------------------------------------------------------------- summaries


def make_summary(
    n_targets: int = 3, n_failures: int = 0, *, n_codes: int = 3, host: str = "nas01", **kw: Any
) -> RunSummary:
    targets = [
        TargetStats(
            name=f"/srv/images/project-{i:03d}",
            bucket=f"nas01-project-{i:03d}",
            new=10 + i,
            updated=i,
            deleted=i % 3,
            failed=0,
            bytes_uploaded=(i + 1) * 1_500_000_000,
            started_at=T0 + i,
            finished_at=T0 + 60 + 7 * i,
        )
        for i in range(n_targets)
    ]
    failures = []
    kinds = [FailureKind.S3, FailureKind.UNREADABLE, FailureKind.CHANGED_WHILE_READING]
    for j in range(n_failures):
        target = targets[j % n_targets] if targets else None
        kind = kinds[j % len(kinds)]
        failure = Failure(
            kind=kind,
            target=target.name if target else "",
            path=f"{target.name if target else ''}/2026/shoot-{j // 100:04d}/IMG_{j:06d}.CR3",
            message="An error occurred (SlowDown) when calling the PutObject operation: Please reduce rate",
            code=f"Code{j % n_codes}" if kind is FailureKind.S3 else "",
        )
        failures.append(failure)
        if target:
            target.failed += 1
    return RunSummary(
        host=host,
        started_at=T0,
        finished_at=T0 + 3_725,
        targets=targets,
        failures=failures,
        exit_code=1 if failures else 0,
        **kw,
    )


# ----------------------------------------------------------------------------- tests


def test_payload_has_workflows_shape_and_a_valid_1_4_card() -> None:
    summary = make_summary(3, 127)
    summary.warnings.append(Failure(FailureKind.NOTIFICATION, "", "https://example.logic.azure.com", "HTTP 500", "500"))
    payload = build_card(summary)
    validate_payload(payload)
    assert json.loads(card_json(summary)) == payload
    lines = texts(payload)
    assert lines[0] == "async-backup on nas01: 3 targets, 127 failures, 1 warning"
    assert payload["attachments"][0]["content"]["body"][0]["color"] == "Attention"
    assert "Started 2026-11-28 17:52 UTC, took 1 h 02 min, exit code 1" in lines
    # a fact table per target with the counters asked for
    assert "New: 11" in lines and "Updated: 1" in lines and "Bytes: 2.8 GiB" in lines
    assert "Duration: 1 min 6 s" in lines
    # failures grouped by kind refined by code, with examples and "and N more"
    assert "**S3 error: Code0**: 43" in lines
    assert "**changed while reading**: 42" in lines
    assert any(t.startswith("and ") and t.endswith(" more") for t in lines)
    assert any("IMG\\_000000.CR3" in t for t in lines)


def test_titles_say_all_good_dry_run_and_failed_without_failures() -> None:
    good = build_card(make_summary(2, 0))
    assert texts(good)[0] == "async-backup on nas01: 2 targets, all good"
    assert good["attachments"][0]["content"]["body"][0]["color"] == "Good"

    dry = build_card(make_summary(2, 0, dry_run=True))
    assert texts(dry)[0] == "async-backup (dry run) on nas01: 2 targets, all good"
    assert any("dry run: nothing was uploaded or deleted" in t for t in texts(dry))

    fatal = make_summary(1, 0)
    fatal.exit_code = 7
    assert texts(build_card(fatal))[0] == "async-backup on nas01: 1 target, failed (exit code 7)"

    interrupted = make_summary(1, 0, interrupted=True)
    interrupted.exit_code = 130
    assert "interrupted" in texts(build_card(interrupted))[0]


def test_unfinished_summary_is_shown_without_reading_the_clock() -> None:
    summary = make_summary(1, 0)
    summary.finished_at = None
    summary.targets[0].finished_at = None
    lines = texts(build_card(summary))
    assert "Duration: unfinished" in lines
    assert build_card(summary) == build_card(summary)


def test_markdown_characters_in_names_are_escaped() -> None:
    nasty = "*bold* _it_ ~s~ [link](http://x) #h > q `code` <b> {{DATE(2017-02-14T06:08:39Z, SHORT)}} a|b &amp; \\"
    escaped = escape_markdown(nasty)
    assert shown(escaped) == nasty
    # every special character left in the text is escaped by a backslash
    bare = re.sub(r"\\.", "", escaped)
    assert not set(bare) & set("*_~[]()#<>`{}|&\\")
    for start in ("- item", "+ item", "12. item", "3) item"):
        assert shown(escape_markdown(start)) == start
        assert escape_markdown(start) != start

    summary = make_summary(1, 0)
    summary.failures.append(Failure(FailureKind.UNREADABLE, summary.targets[0].name, nasty, "boom", "EACCES"))
    lines = texts(build_card(summary))
    assert escaped in lines
    assert nasty not in lines


def test_undecodable_names_are_shown_visibly_and_json_never_fails() -> None:
    raw = os.fsdecode(b"/srv/images/IMG_\xff\xfe_caf\xe9.jpg")
    assert "\udcff" in raw
    summary = make_summary(1, 0)
    summary.failures.append(Failure(FailureKind.UNREADABLE, summary.targets[0].name, raw, "bad\nname\x1b[31m"))
    summary.targets.append(TargetStats(name=os.fsdecode(b"/mnt/\xc3("), bucket="b", finished_at=T0 + 1))
    text = card_json(summary)
    text.encode("utf-8")  # no surrogates left
    payload = json.loads(text)
    validate_payload(payload)
    lines = [shown(t) for t in texts(payload)]
    assert "/srv/images/IMG_\\xff\\xfe_caf\\xe9.jpg" in lines
    assert any(t.startswith("**/mnt/\\xc3(**") for t in lines)
    assert "bad\\x0aname\\x1b[31m" in lines  # one line, control characters visible
    assert printable("\ud800x") == "\\ud800x"


def test_100000_failures_across_40_targets_fit_and_say_what_was_left_out() -> None:
    summary = make_summary(40, 100_000, n_codes=40)
    text = card_json(summary)
    size = len(text.encode("utf-8"))
    assert size <= CARD_BUDGET_BYTES < TEAMS_MESSAGE_LIMIT_BYTES
    payload = json.loads(text)
    validate_payload(payload)
    lines = texts(payload)
    assert lines[0] == "async-backup on nas01: 40 targets, 100,000 failures"
    assert "Failures: 100,000" in lines
    assert any(re.fullmatch(r"and [\d,]+ more", t) for t in lines)
    assert any("left out" in t for t in lines)


def test_500_targets_fit_and_failing_targets_are_kept() -> None:
    summary = make_summary(500, 0)
    for i in (7, 450):
        target = summary.targets[i]
        target.failed = 3
        summary.failures += [
            Failure(FailureKind.S3, target.name, f"{target.name}/x{k}", "m", "AccessDenied") for k in range(3)
        ]
    payload = build_card(summary)
    validate_payload(payload)
    assert len(card_json(summary).encode()) <= CARD_BUDGET_BYTES
    lines = [shown(t) for t in texts(payload)]
    assert any(t.startswith("**/srv/images/project-007** ") for t in lines)
    assert any(t.startswith("**/srv/images/project-450** ") for t in lines)
    left = [t for t in lines if "more targets left out" in t]
    assert len(left) == 1
    n = int(left[0].split()[0].replace(",", ""))
    shown_targets = sum(1 for t in lines if t.startswith("**/srv/images/project-") and "→ s3://" in t)
    assert n + shown_targets == 500
    assert "(0 failures among them)" in left[0]


def test_huge_run_of_500_targets_and_100000_failures_fits() -> None:
    summary = make_summary(500, 100_000, n_codes=100)
    assert len(card_json(summary).encode()) <= CARD_BUDGET_BYTES
    validate_payload(json.loads(card_json(summary)))


def test_secrets_in_failure_texts_are_scrubbed_from_the_card() -> None:
    summary = make_summary(2, 0)
    summary.failures.append(
        Failure(
            FailureKind.S3,
            summary.targets[0].name,
            "/x/a.jpg",
            f"signature mismatch for {ACCESS_KEY}/{SECRET_KEY} posting to {WEBHOOK}",
            "SignatureDoesNotMatch",
        )
    )
    redactor = Redactor.for_run(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, webhook_url=WEBHOOK)
    text = card_json(summary, redactor=redactor)
    for secret in (SECRET_KEY, ACCESS_KEY, "PLANTEDsignature", "0123456789abcdef0123456789abcdef", "sig="):
        assert secret not in text
    message = [shown(t) for t in texts(json.loads(text)) if t.startswith("signature mismatch")]
    assert message == ["signature mismatch for ***/*** posting to ***"]


# ----------------------------------------------------------------------------- property

# Any code point, lone surrogates and markdown's special characters included, or raw bytes as
# os.fsdecode gives them (undecodable bytes become surrogate escapes).
ODD = [*"*_~[]()#>`\\{}<&|!-+.\n\r\t", "\udc80", "\udcff", "\ud800", "\u202e", "\x00"]
names = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()) | st.sampled_from(ODD),
    max_size=400,
) | st.binary(max_size=300).map(os.fsdecode)


failures_strategy = st.lists(
    st.builds(
        Failure,
        kind=st.sampled_from(list(FailureKind)),
        target=names,
        path=names,
        message=names,
        code=names | st.sampled_from(["", "SlowDown", "AccessDenied", "EACCES"]),
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    failures=failures_strategy,
    target_names=st.lists(names, max_size=60),
    host=names,
    copies=st.integers(min_value=1, max_value=300),
)
def test_any_failures_give_a_card_under_28_kb_that_round_trips(
    failures: list[Failure], target_names: list[str], host: str, copies: int
) -> None:
    summary = RunSummary(
        host=host,
        started_at=T0,
        finished_at=T0 + 10,
        targets=[TargetStats(name=n, bucket=n[:63], started_at=T0, finished_at=T0 + 1) for n in target_names],
        failures=failures * copies,
        exit_code=1 if failures else 0,
    )
    text = card_json(summary)
    assert len(text.encode("utf-8")) < TEAMS_MESSAGE_LIMIT_BYTES
    payload = json.loads(text)
    assert json.dumps(payload, ensure_ascii=False, separators=(",", ":")) == text
    validate_payload(payload)
