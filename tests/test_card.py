"""The Teams card: Workflows payload shape, Adaptive Card 1.4 structure, escaping, and the 28 KB limit."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import adaptivecards
import pytest
from cardcheck import shown, tables, target_rows, texts, validate_payload
from conftest import ACCESS_KEY, SECRET_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_backup.disk.walk import Excluder, walk_target
from async_backup.errors import Failure, FailureKind
from async_backup.report import card as card_module
from async_backup.report.card import CARD_BUDGET_BYTES, TEAMS_MESSAGE_LIMIT_BYTES, escape_markdown, short_names
from async_backup.report.redact import Redactor, printable
from async_backup.report.summary import RunSummary, TargetStats
from async_backup.s3.pricing import US_EAST_1, price_requests

T0 = 1_795_888_320.0  # 2026-11-28 17:52 UTC
WEBHOOK = (
    "https://prod-12.westeurope.logic.azure.com:443/workflows/0123456789abcdef0123456789abcdef"
    "/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0"
    "&sig=PLANTEDsignatureAbCdEfGhIjKlMnOpQrStUvWxYz0123"
)

REPORT = "/home/backup/.local/async-backup/reports/2026-11-28T175200Z.json"

# ----------------------------------------------------------------------------- Microsoft's parser

# Every card the tests in this module build, handed to Microsoft's adaptivecards package after
# each test (tests/adaptivecards.py; skipped when node or the package is not installed).
BUILT: list[Any] = []


def build_card(summary: RunSummary, **kw: Any) -> dict[str, Any]:
    payload = card_module.build_card(summary, **kw)
    BUILT.append(payload)
    return payload


def card_json(summary: RunSummary, **kw: Any) -> str:
    text = card_module.card_json(summary, **kw)
    BUILT.append(json.loads(text))
    return text


@pytest.fixture(autouse=True)
def parsed_by_microsofts_adaptivecards() -> Iterator[None]:
    BUILT.clear()
    yield
    if BUILT and adaptivecards.unavailable() is None:
        found = adaptivecards.problems(BUILT)
        bad = [(i, messages) for i, messages in enumerate(found) if messages]
        assert not bad, f"adaptivecards (schema 1.4) found problems in {len(bad)} of {len(BUILT)} cards: {bad[:3]}"
    BUILT.clear()


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
    assert "Started 2026-11-28 17:52 UTC, took 1 h 02 min, exit code 1" in card_module_texts_utc(summary)
    # a row per target that failed or changed, with its counters
    rows = target_rows(payload)
    assert rows["images/project-001"] == {"failed": "42", "new": "11", "upd": "1", "del": "1", "size": "2.8 GiB"}
    assert len(rows) == 3
    # failures grouped by kind refined by code, with examples, and where the rest are
    assert "**S3 error: Code0**: 43" in lines
    assert "**changed while reading**: 42" in lines
    assert [t for t in lines if "The full list" in t] == [
        "The full list: the run report could not be written; the log on nas01 has the first 50."
    ]
    assert any("IMG\\_000000.CR3" in t for t in lines)


def card_module_texts_utc(summary: RunSummary) -> list[str]:
    return texts(build_card(summary, tz=ZoneInfo("UTC")))


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
    lines = [shown(t) for t in texts(build_card(summary))]
    assert any(t.startswith("Started ") and ", took unfinished," in t for t in lines), lines
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
    summary.failures.append(Failure(FailureKind.S3, summary.targets[0].name, nasty, nasty, nasty))
    lines = texts(build_card(summary))
    assert escaped in lines  # the message
    assert f"**S3 error: {escaped}**: 1" in lines  # the code
    example = [t for t in lines if "…" in t]  # the path, cut to fit a phone's line
    assert len(example) == 1 and not set(re.sub(r"\\.", "", example[0])) & set("*_~[]()#<>`{}|&\\")
    assert nasty not in lines


def test_undecodable_names_are_shown_visibly_and_json_never_fails() -> None:
    raw = os.fsdecode(b"/srv/images/IMG_\xff\xfe_caf\xe9.jpg")
    assert "\udcff" in raw
    summary = make_summary(1, 0)
    summary.failures.append(Failure(FailureKind.UNREADABLE, summary.targets[0].name, raw, "bad\nname\x1b[31m"))
    summary.targets.append(TargetStats(name=os.fsdecode(b"/mnt/\xc3("), bucket="b", new=1, finished_at=T0 + 1))
    text = card_json(summary)
    text.encode("utf-8")  # no surrogates left
    payload = json.loads(text)
    validate_payload(payload)
    lines = [shown(t) for t in texts(payload)]
    assert "/srv/images/IMG_\\xff\\xfe_caf\\xe9.jpg" in lines
    assert "mnt/\\xc3(" in target_rows(payload)
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
    assert "Failures (100,000)" in lines
    assert any(re.fullmatch(r"The full list: the run report could not be written; .*", t) for t in lines)
    assert any(re.fullmatch(r"[\d,]+ more failure groups \([\d,]+ failures\) left out .*", t) for t in lines)


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
    rows = target_rows(payload)
    assert rows["images/project-007"]["failed"] == rows["images/project-450"]["failed"] == "3"
    left = [t for t in lines if "more targets that failed or changed left out" in t]
    assert len(left) == 1
    n = int(left[0].split()[0].replace(",", ""))
    assert n + len(rows) == 500
    assert 10 <= len(rows) < 500
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


# ----------------------------------------------------------------------------- what an operator reads first


def headings(payload: dict[str, Any]) -> list[str]:
    """The card's sections in order; the targets table's header row heads its section."""
    found = []
    for element in payload["attachments"][0]["content"]["body"]:
        text = element.get("text", "")
        if element["type"] == "TextBlock" and (
            text in ("Totals", "Targets") or text.startswith(("Failures (", "Warnings ("))
        ):
            found.append(text)
        elif element["type"] == "ColumnSet" and target_rows({"attachments": [{"content": {"body": [element]}}]}):
            found.append("Targets")
    return found


def test_the_card_reads_outcome_failures_targets_then_totals_and_quiet_targets_are_counted() -> None:
    summary = make_summary(250, 0)
    for i, target in enumerate(summary.targets):
        target.new = target.updated = target.deleted = 0
        target.bytes_uploaded = 0
        if i in (3, 200):
            target.new = 5
    bad = summary.targets[120]
    summary.failures = [Failure(FailureKind.S3, bad.name, f"{bad.name}/a{k}.tif", "m", "AccessDenied") for k in (1, 2)]
    summary.warnings = [Failure(FailureKind.NOTIFICATION, "", "https://x.logic.azure.com", "HTTP 500", "500")]
    summary.exit_code = 1
    payload = build_card(summary, report_path=REPORT)
    lines = [shown(t) for t in texts(payload)]
    assert lines[0] == "async-backup on nas01: 250 targets, 2 failures, 1 warning"
    assert headings(payload) == ["Failures (2)", "Warnings (1)", "Targets", "Totals"]
    assert lines.index("Failures (2)") == 2  # right under the title and the times
    # the one that failed has a row; the two with the same outcome share a line, named under it
    assert target_rows(payload) == {"images/project-120": {"failed": "2"}}
    at = lines.index("**2 targets**: 5 new each")
    assert lines[at + 1] == "images/project-003, images/project-200"
    assert "247 targets with nothing new, changed or failed." in lines
    # the S3 failure says what to do
    at = lines.index("**S3 error: AccessDenied**: 2")
    assert any(t.startswith("The next run retries. If the code repeats") for t in lines[at + 1 : at + 3])


def test_examples_are_spread_over_the_targets_the_largest_first() -> None:
    """5,000 unreadable files over three targets: each target gets its share of the examples."""
    summary = make_summary(3, 0)
    small, middle, large = (t.name for t in summary.targets)
    for name, n in ((small, 10), (middle, 990), (large, 4_000)):
        summary.failures += [
            Failure(FailureKind.UNREADABLE, name, f"{name}/f{k:05d}.jpg", "Permission denied", "EACCES")
            for k in range(n)
        ]
    summary.exit_code = 1
    lines = [shown(t) for t in texts(build_card(summary, report_path=REPORT))]
    assert "**unreadable: EACCES**: 5,000 in 3 targets" in lines
    examples = [t for t in lines if t.endswith(".jpg")]
    short = short_names([small, middle, large])
    # one from each of the two largest, not two from the largest
    assert examples == [f"{short[large]}/f00000.jpg", f"{short[middle]}/f00000.jpg"]
    assert f"The full list: all of them are in {REPORT} on nas01." in lines


def test_and_n_more_says_where_the_full_list_is() -> None:
    summary = make_summary(2, 40, n_codes=1)
    # said once, under the failures, however many groups leave paths out
    with_report = [shown(t) for t in texts(build_card(summary, report_path=REPORT))]
    assert len([t for t in with_report if t.startswith("**")]) == 3  # three groups, each with paths left out
    more = [t for t in with_report if "The full list" in t]
    assert more == [f"The full list: all of them are in {REPORT} on nas01."], with_report

    without = [shown(t) for t in texts(build_card(summary))]
    more = [t for t in without if "The full list" in t]
    assert more == ["The full list: the run report could not be written; the log on nas01 has the first 50."]

    dry = make_summary(2, 40, n_codes=1, dry_run=True)
    more = [shown(t) for t in texts(build_card(dry)) if "The full list" in t]
    assert len(more) == 1 and "a dry run writes no report" in more[0]

    # Even the smallest card, with every detail cut, says where the details are.
    tiny = [shown(t) for t in texts(build_card(make_summary(40, 1000), report_path=REPORT, budget_bytes=1500))]
    assert any(t.endswith(f"all of them are in {REPORT} on nas01.") for t in tiny), tiny


def _scandir_failing(failing: dict[bytes, OSError]) -> Any:
    real_scandir = os.scandir

    def scandir(path: bytes) -> Any:
        if path in failing:
            raise failing[path]
        return real_scandir(path)

    return scandir


def test_an_unreadable_or_vanished_folder_says_nothing_under_it_was_backed_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "t"
    for rel in ("scans/a.tif", "gone/b.tif", "ok.tif"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    scans, gone = os.fsencode(root / "scans"), os.fsencode(root / "gone")
    failing = {
        scans: PermissionError(errno.EACCES, "Permission denied"),
        gone: FileNotFoundError(errno.ENOENT, "No such file or directory"),
    }
    monkeypatch.setattr(os, "scandir", _scandir_failing(failing))
    failures: list[Failure] = []
    warnings: list[Failure] = []
    entries = list(walk_target(os.fsencode(root), Excluder(()), failures.append, str(root), warnings.append))
    assert len(entries) == 3  # the two holes and ok.tif

    assert [(f.group, f.path, f.folder) for f in failures] == [("folder unreadable: EACCES", str(root / "scans"), True)]
    assert failures[0].message.startswith(
        f"folder {root / 'scans'} unreadable (Permission denied): nothing under it was backed up; "
        "its cached files were kept"
    )
    assert [(w.group, w.path) for w in warnings] == [("folder vanished: ENOENT", str(root / "gone"))]
    assert warnings[0].message.startswith(
        f"folder {root / 'gone'} vanished while it was read: nothing under it was backed up; its cached files were kept"
    )

    target = TargetStats(name=str(root), bucket="b", failed=1, started_at=T0, finished_at=T0 + 1)
    summary = RunSummary(
        host="nas01", started_at=T0, finished_at=T0 + 2, targets=[target], failures=failures, warnings=warnings
    )
    summary.exit_code = 1
    lines = [shown(t) for t in texts(build_card(summary, report_path=REPORT))]
    short = short_names([str(root)])[str(root)]
    at = lines.index("**folder unreadable: EACCES**: 1")
    assert lines[at + 1].startswith("Nothing under them was backed up; S3 keeps what it had.")
    assert lines[at + 2] == f"{short}/scans"
    assert not any("nothing under it was backed up" in t for t in lines[: at + 3])  # the advice, not said twice
    at = lines.index("**folder vanished: ENOENT**: 1")
    assert lines[at + 1 : at + 3] == [
        "folder vanished while it was read: nothing under it was backed up",
        f"{short}/gone",
    ]


def test_times_are_local_with_the_zone_beside_utc() -> None:
    summary = make_summary(1, 0)
    lines = texts(build_card(summary, tz=ZoneInfo("Europe/Berlin")))
    assert "Started 2026-11-28 18:52 CET (17:52 UTC), took 1 h 02 min, exit code 0" in lines
    lines = texts(build_card(summary, tz=ZoneInfo("America/Los_Angeles")))
    assert "Started 2026-11-28 09:52 PST (17:52 UTC), took 1 h 02 min, exit code 0" in lines
    lines = texts(build_card(summary, tz=ZoneInfo("Asia/Tokyo")))
    assert "Started 2026-11-29 02:52 JST (17:52 UTC 2026-11-28), took 1 h 02 min, exit code 0" in lines
    assert "Started 2026-11-28 17:52 UTC, took 1 h 02 min, exit code 0" in texts(
        build_card(summary, tz=ZoneInfo("UTC"))
    )


def test_the_card_states_the_requests_sent_and_their_price_by_hand() -> None:
    summary = make_summary(2, 0)
    summary.requests = price_requests(
        {
            ("PutObject", "DEEP_ARCHIVE"): 10_000,  # 10 x $0.05 = $0.50
            ("UploadPart", "DEEP_ARCHIVE"): 62_500,  # 62.5 x $0.05 = $3.125
            ("PutObject", "STANDARD"): 2,  # 2 x $0.000005 = $0.00001
            ("ListObjectsV2", ""): 4,  # $0.00002
            ("HeadObject", ""): 1_000,  # $0.0004
            ("DeleteObjects", ""): 3,  # free
        },
        US_EAST_1,
    )
    payload = build_card(summary)
    lines = texts(payload)
    totals = lines[lines.index("Totals") :]
    assert tables(payload)[-1] == [
        ["S3 requests", "73,509", "$3.63"],  # 0.50 + 3.125 + 0.00001 + 0.00002 + 0.0004
        ["UploadPart", "62,500", "$3.13"],  # half a cent rounds up; DEEP_ARCHIVE, said in the note
        ["PutObject", "10,000", "$0.50"],
        ["HeadObject", "1,000", "$0.0004"],
        ["ListObjectsV2", "4", "$0.00002"],
        ["2 more kinds", "5", "$0.00001"],  # STANDARD PUT and the free DELETE
    ]
    assert any(
        "us-east-1 prices from async_backup/s3/pricing.py (read 2026-11 from" in shown(t)
        and "Writes in DEEP_ARCHIVE unless a class is named." in t
        for t in totals
    )

    dry = make_summary(1, 0, dry_run=True)
    dry.requests = price_requests({("PutObject", "DEEP_ARCHIVE"): 10_000}, US_EAST_1, estimated=True)
    assert tables(build_card(dry))[-1][0] == ["S3 requests, would send", "10,000", "$0.50"]


def test_microsofts_adaptivecards_package_parses_the_cards_at_version_1_4() -> None:
    """The same check every test here runs on its cards; this one says when it cannot run."""
    reason = adaptivecards.unavailable()
    if reason:
        pytest.skip(reason)
    big = make_summary(500, 100_000, n_codes=100)
    big.warnings.append(Failure(FailureKind.NOTIFICATION, "", "https://x.logic.azure.com", "HTTP 500", "500"))
    big.requests = price_requests({("PutObject", "DEEP_ARCHIVE"): 10, ("HeadObject", ""): 1}, US_EAST_1)
    cards = [
        card_module.build_card(big, report_path=REPORT),
        card_module.build_card(make_summary(3, 0, dry_run=True)),
        card_module.build_card(big, budget_bytes=1500),
    ]
    assert adaptivecards.problems(cards) == [[], [], []]
    # The check is not vacuous: a 1.5 element and a bad colour are found.
    wrong = json.loads(json.dumps(cards[1]))
    wrong["attachments"][0]["content"]["body"] += [
        {"type": "Table"},
        {"type": "TextBlock", "text": "x", "color": "Red"},
    ]
    found = adaptivecards.problems([wrong])[0]
    assert any('Unknown element type "Table"' in m for m in found) and any('"color"' in m for m in found), found


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
