"""Counts with their nouns in the right number, in the helper and in the texts that use it."""

from __future__ import annotations

import logging

import pytest

from async_backup.errors import Failure, FailureKind
from async_backup.report.publish import tell_outcome
from async_backup.report.summary import RunSummary, TargetStats
from async_backup.wording import counted, noun_for

T0 = 1_795_888_320.0


@pytest.mark.parametrize(
    ("n", "noun", "expected"),
    [
        (1, "target", "1 target"),
        (0, "failure", "0 failures"),
        (2, "object", "2 objects"),
        (1_234, "file", "1,234 files"),
        (2, "failed file", "2 failed files"),
        (3, "entry", "3 entries"),
        (2, "day", "2 days"),
        (2, "class", "2 classes"),
    ],
)
def test_counted_gives_the_noun_in_the_number_of_the_count(n: int, noun: str, expected: str) -> None:
    assert counted(n, noun) == expected


def test_verbs_and_irregular_plurals_follow_the_count() -> None:
    assert [noun_for(n, "is") for n in (0, 1, 2)] == ["are", "is", "are"]
    assert noun_for(1, "has") == "has" and noun_for(5, "has") == "have"
    assert counted(2, "file unsure", "files unsure") == "2 files unsure"
    assert counted(1, "file unsure", "files unsure") == "1 file unsure"


def one_target_run(*, dry_run: bool = False) -> RunSummary:
    target = TargetStats(name="/srv/a", bucket="b-a", new=1, bytes_uploaded=10, started_at=T0, finished_at=T0 + 1)
    target.planned_uploads, target.adopted = 1, 1
    return RunSummary(
        host="nas01",
        started_at=T0,
        finished_at=T0 + 2,
        targets=[target],
        failures=[Failure(FailureKind.UNREADABLE, "/srv/a", "/srv/a/x", "Permission denied", "EACCES")],
        dry_run=dry_run,
    )


def test_the_summary_line_of_one_target_speaks_in_the_singular(caplog: pytest.LogCaptureFixture) -> None:
    summary = one_target_run()
    with caplog.at_level(logging.INFO, logger="async_backup"):
        tell_outcome(summary, False)
    line = caplog.records[-1].getMessage()
    assert line.startswith("done: 1 target, 1 file uploaded (10 B), 0 deleted, 1 failure in 2.0 s"), line


def test_the_dry_run_plan_of_one_file_speaks_in_the_singular(capsys: pytest.CaptureFixture[str]) -> None:
    tell_outcome(one_target_run(dry_run=True), True)
    plan = capsys.readouterr().out
    assert "would adopt 1 file from" in plan and "would upload 1 file (" in plan, plan
    assert "1 files" not in plan
