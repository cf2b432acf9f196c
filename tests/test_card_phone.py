"""The Teams card on a phone: height at 360 px in Microsoft's renderer, grouped targets, the exact
commands per target, nothing said twice."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import cardrender
import pytest
from cardcheck import shown, target_rows, texts, validate_payload

from async_backup.disk.walk import mount_absent
from async_backup.errors import Failure, FailureKind, Fix, shell_quote
from async_backup.report.card import build_card

MAX_HEIGHT_10_TARGETS_PX = 1_500


def card(summary: Any) -> dict[str, Any]:
    payload = build_card(summary, report_path=cardrender.REPORT)
    validate_payload(payload)
    return payload


@pytest.mark.slow
def test_a_10_target_card_is_at_most_1500_px_tall_at_360_px_and_no_title_breaks() -> None:
    reason = cardrender.unavailable()
    if reason:
        pytest.skip(reason)
    rendered = cardrender.render(card(cardrender.ten_targets()), 360)
    assert rendered.height_px <= MAX_HEIGHT_10_TARGETS_PX, rendered.height_px
    assert [t for t in rendered.titles if t["lines"] > 1] == []
    # every target takes one line: its name and counts fit the row, no cell ends in an ellipsis
    rows = target_rows(card(cardrender.ten_targets()))
    assert len(rows) == 8, rows
    names = {name.split("/", 1)[1] for name in rows}
    row_cells = [b for b in rendered.blocks if b["text"].strip() in names]
    assert len(row_cells) == len(names), (names, row_cells)
    assert [b for b in rendered.blocks if b["cut"] or (b in row_cells and b["lines"] != 1)] == []
    # single-line cells of the requests table: nothing wraps there
    assert all(b["lines"] <= 1 for b in rendered.blocks if re.fullmatch(r"\$[\d.]+", b["text"].strip()))


def test_targets_with_the_same_outcome_share_one_line() -> None:
    lines = [shown(t) for t in texts(card(cardrender.three_hundred_targets()))]
    grouped = [t for t in lines if t.startswith("**100 targets**")]
    assert grouped == ["**100 targets**: 3 failed each, unreadable: EACCES"], [t for t in lines if "targets**" in t]
    assert sum(1 for t in lines if "3 failed" in t) == 1
    # a row per target that changed, named by the path's last two components; the default bucket
    # is not repeated
    rows = target_rows(card(cardrender.three_hundred_targets()))
    assert rows["archive/collection-001"] == {"failed": "2", "new": "3", "upd": "", "size": "715 MiB"}
    assert len(rows) == 20
    assert not any("s3://" in t for t in lines)


def test_only_a_bucket_that_is_not_the_default_name_is_shown() -> None:
    payload = card(cardrender.ten_targets())
    lines = [shown(t) for t in texts(payload)]
    assert [t for t in lines if "s3://" in t] == ["images/maps → s3://maps-archive"]
    assert target_rows(payload)["images/maps"] == {"failed": "", "new": "14", "upd": "", "del": "2", "size": "305 MiB"}


def test_each_target_gets_its_exact_command_quoted_for_the_shell() -> None:
    summary = cardrender.ten_targets()
    odd = summary.targets[3]
    odd.name = "/srv/images/it's $HOME `x`"
    summary.failures.append(
        Failure(FailureKind.TARGET_MISSING, odd.name, odd.name, "this subfolder of root /srv/images is gone; x",
                fix=Fix.FORGET_SUBFOLDER)
    )  # fmt: skip
    lines = [shown(t) for t in texts(card(summary))]
    assert "async-backup --forget-target '/srv/images/negatives'" in lines
    assert "async-backup --forget-target '/srv/images/it'\\''s $HOME `x`'" in lines
    assert "async-backup --allow-mass-delete --only '/srv/images/o'\\''brien collection'" in lines
    # the failure's own message (the log, the report) quotes the name the same way
    held = mount_absent("/srv/it's", b"/srv/it's/scans", "empty")
    assert "run async-backup --allow-mass-delete --only '/srv/it'\\''s' (its files" in held.message
    # the shell gives back the exact name
    for name in (odd.name, "/a/b\nc", "/a/\udcff\udcfe'x\\y"):
        out = subprocess.run(["bash", "-c", f"printf %s {shell_quote(name)}"], capture_output=True, check=True)
        assert out.stdout == name.encode("utf-8", "surrogateescape")


def _shingles(text: str) -> set[str]:
    words = re.findall(r"[\w'-]+", shown(text).lower())
    return {" ".join(words[i : i + 4]) for i in range(len(words) - 3)}


def _blocks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(element: dict[str, Any]) -> None:
        if element["type"] == "TextBlock":
            found.append(element)
        for item in element.get("items", []):
            walk(item)
        for column in element.get("columns", []):
            for item in column.get("items", []):
                walk(item)

    for element in payload["attachments"][0]["content"]["body"]:
        walk(element)
    return found


@pytest.mark.parametrize("scene", ["ten_targets", "three_hundred_targets"])
def test_nothing_is_said_twice(scene: str) -> None:
    """No run of four words appears in two text blocks (paths and commands aside)."""
    blocks = [b["text"] for b in _blocks(card(getattr(cardrender, scene)())) if b.get("fontType") != "Monospace"]
    seen: dict[str, str] = {}
    for text in blocks:
        for shingle in _shingles(text):
            assert shingle not in seen or seen[shingle] == text, (shingle, seen[shingle], text)
            seen[shingle] = text
