"""Rendering a Teams card as a phone would show it: Microsoft's `adaptivecards` package (3.0.6) in
headless Chromium, at a given width, with markdown-it for the card's markdown as Teams has.

`.ci/run` installs the npm packages into tests/node/node_modules and Debian's `chromium`. The card
is written into a small page that renders it and writes what it measured into the DOM; Chromium's
`--dump-dom` prints that DOM once the page's scripts have run. `unavailable()` says why rendering
cannot run here, and the tests that need it skip with that reason.

Fonts: Teams uses Segoe UI, which Debian does not ship; the fallback (DejaVu Sans) is wider, so
heights measured here are, if anything, larger than on a phone.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from async_backup.errors import Failure, FailureKind, Fix
from async_backup.report.summary import RunSummary, TargetStats
from async_backup.s3.pricing import US_EAST_1, price_requests
from async_backup.settings.naming import stable_bucket_name

NODE_MODULES = Path(__file__).parent / "node" / "node_modules"
ADAPTIVECARDS = NODE_MODULES / "adaptivecards" / "dist" / "adaptivecards.js"
MARKDOWN_IT = NODE_MODULES / "markdown-it" / "dist" / "markdown-it.min.js"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
RENDER_TIMEOUT_S = 120

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8">
<style>body {{ margin: 0; background: #fff; font-family: "Segoe UI", sans-serif; }}
#card {{ width: {width}px; }} #out {{ display: none; }}</style>
<script src="{markdown_it}"></script>
<script src="{adaptivecards}"></script>
</head><body><div id="card"></div><pre id="out"></pre>
<script>
"use strict";
const payload = {payload};
const card = new AdaptiveCards.AdaptiveCard();
card.parse(payload.attachments ? payload.attachments[0].content : payload);
const rendered = card.render();
document.getElementById("card").appendChild(rendered);
const lineHeight = (el) => parseFloat(getComputedStyle(el).lineHeight) || 1;
const blocks = Array.from(rendered.querySelectorAll(".ac-textBlock")).map((el) => ({{
  text: el.textContent,
  height: el.getBoundingClientRect().height,
  lines: Math.round(el.getBoundingClientRect().height / lineHeight(el)),
  cut: [el, ...el.querySelectorAll("*")].some((e) => e.scrollWidth > e.clientWidth + 1),
}}));
const titles = Array.from(rendered.querySelectorAll(".ac-factset tr")).map((row) => {{
  const cell = row.querySelector("td");
  const inner = cell.querySelector(".ac-textBlock") || cell;
  return {{ text: cell.textContent, lines: Math.round(inner.getBoundingClientRect().height / lineHeight(inner)) }};
}});
document.getElementById("out").textContent = JSON.stringify({{
  height: Math.ceil(rendered.getBoundingClientRect().height), blocks: blocks, titles: titles,
}});
</script></body></html>
"""


@dataclass(frozen=True, slots=True)
class Rendered:
    height_px: int  # the whole card's height
    blocks: list[dict[str, Any]]  # every TextBlock: text (as shown), height, lines, cut (ends in an ellipsis)
    titles: list[dict[str, Any]]  # every FactSet title: text, lines


def browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable() -> str | None:
    """Why a card cannot be rendered here, or None when it can."""
    if browser() is None:
        return "Chromium is not installed (Debian package chromium; .ci/run installs it)"
    for package in (ADAPTIVECARDS, MARKDOWN_IT):
        if not package.exists():
            return f"{package.relative_to(NODE_MODULES.parent)} is missing (.ci/run installs it with npm)"
    return None


def _page(payload: dict[str, Any], width_px: int) -> str:
    # "</" must not end the script element early; JSON allows the escaped form.
    data = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")
    return _PAGE.format(
        width=width_px, payload=data, markdown_it=MARKDOWN_IT.as_uri(), adaptivecards=ADAPTIVECARDS.as_uri()
    )


def _chromium(args: list[str], page: Path) -> str:
    exe = browser()
    assert exe is not None
    with tempfile.TemporaryDirectory(prefix="cardrender-") as profile:
        command = [
            exe,
            "--headless",
            "--no-sandbox",  # the tests may run as root, where Chromium refuses its sandbox
            "--disable-gpu",
            "--hide-scrollbars",
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            *args,
            page.as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=False)
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


def render(payload: dict[str, Any], width_px: int = 360, screenshot: Path | None = None) -> Rendered:
    """Render `payload`'s card `width_px` wide; with `screenshot`, also save a PNG of the whole card."""
    with tempfile.TemporaryDirectory(prefix="cardpage-") as tmp:
        page = Path(tmp) / "card.html"
        page.write_text(_page(payload, width_px), encoding="utf-8")
        dom = _chromium(["--dump-dom", f"--window-size={width_px},800", "--virtual-time-budget=10000"], page)
        found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
        assert found and found.group(1), f"the page rendered nothing: {dom[-2000:]}"
        measured = json.loads(html.unescape(found.group(1)))
        rendered = Rendered(measured["height"], measured["blocks"], measured["titles"])
        if screenshot is not None:
            shot = Path(tmp) / "shot.png"
            _chromium([f"--screenshot={shot}", f"--window-size={width_px},{rendered.height_px}"], page)
            shutil.copyfile(shot, screenshot)
    return rendered


# ----------------------------------------------------------------------------- the example runs

T0 = 1_795_838_400.0  # 2026-11-28 02:00 UTC
PREFIX = "backup-3f9a0c12-"  # the default prefix with an account's tag
REPORT = "/var/lib/async-backup/reports/2026-11-28T020000Z.json"


def _target(path: str, i: int, **counts: Any) -> TargetStats:
    return TargetStats(
        name=path,
        bucket=counts.pop("bucket", stable_bucket_name(PREFIX, path)),
        started_at=T0 + 5 * i,
        finished_at=T0 + 5 * i + 60 + 37 * i,
        **counts,
    )


def _unreadable(target: TargetStats, rel: str) -> Failure:
    path = f"{target.name}/{rel}"
    message = (
        "Permission denied; its type is unknown, so it and any cached files under it were kept "
        "(not deleted from S3); check its permissions and the file system"
    )
    target.failed += 1
    return Failure(FailureKind.UNREADABLE, target.name, path, message, "EACCES")


def _slow_down(operation: str) -> str:
    return (
        f"An error occurred (SlowDown) when calling the {operation} operation (reached max retries: 4): "
        "Please reduce your request rate."
    )


def _requests() -> Any:
    return price_requests(
        {
            ("PutObject", "DEEP_ARCHIVE"): 1_204,
            ("CreateMultipartUpload", "DEEP_ARCHIVE"): 38,
            ("UploadPart", "DEEP_ARCHIVE"): 2_312,
            ("CompleteMultipartUpload", "DEEP_ARCHIVE"): 38,
            ("ListMultipartUploads", ""): 10,
            ("ListObjectsV2", ""): 12,
            ("HeadObject", ""): 40,
            ("DeleteObjects", ""): 3,
        },
        US_EAST_1,
    )


def ten_targets() -> RunSummary:
    """A morning's run of one root with ten subfolders: unreadable files in three, S3 throttling,
    a folder emptied (deletion guard), a subfolder gone, a folder that could not be read."""
    root = "/srv/images"
    names = ["scans-1901", "scans-1902", "maps", "letters", "photos-2025", "photos-2026", "negatives",
             "glass plates", "o'brien collection", "press"]  # fmt: skip
    targets = [_target(f"{root}/{name}", i) for i, name in enumerate(names)]
    targets[2].bucket = "maps-archive"  # a bucket named in config.json
    for target, (new, updated, deleted, size) in zip(
        targets, [(120, 3, 0, 9.1e9), (0, 0, 0, 0), (14, 0, 2, 3.2e8), (0, 0, 0, 0), (812, 40, 11, 3.6e10),
                  (2_051, 0, 0, 8.8e10), (0, 0, 0, 0), (5, 1, 0, 7.7e8), (0, 0, 0, 0), (0, 0, 0, 0)], strict=True
    ):  # fmt: skip
        target.new, target.updated, target.deleted, target.bytes_uploaded = new, updated, deleted, int(size)
    failures: list[Failure] = []
    for target, n in ((targets[0], 31), (targets[4], 6), (targets[7], 3)):
        failures += [_unreadable(target, f"box-{k // 10:02d}/page-{k:04d}.tif") for k in range(n)]
    slow = _slow_down("UploadPart")
    for target, n in ((targets[4], 3), (targets[5], 2)):
        target.failed += n
        failures += [
            Failure(FailureKind.S3, target.name, f"{target.name}/2026/IMG_{k:05d}.CR3", slow, "SlowDown")
            for k in range(n)
        ]
    gone = targets[6]
    gone.failed += 1
    failures.append(Failure(
        FailureKind.TARGET_MISSING, gone.name, gone.name,
        f"this subfolder of root {root} is gone (renamed, removed, or the share unmounted?); nothing was uploaded "
        f"or deleted. If it is gone for good, run async-backup --forget-target '{gone.name}' (its bucket "
        f"s3://{gone.bucket} stays as it is)", fix=Fix.FORGET_SUBFOLDER,
    ))  # fmt: skip
    emptied = targets[8]
    emptied.failed += 1
    failures.append(Failure(
        FailureKind.DELETION_GUARD, emptied.name, emptied.name,
        "the folder is empty but the cache lists 4812 files; is the share mounted? run with --allow-mass-delete "
        "if the files were removed on purpose", fix=Fix.ALLOW_MASS_DELETE,
    ))  # fmt: skip
    press = targets[9]
    press.failed += 1
    failures.append(Failure(
        FailureKind.UNREADABLE, press.name, f"{press.name}/2024",
        f"folder {press.name}/2024 unreadable (Permission denied): nothing under it was backed up; its cached files "
        "were kept (not deleted from S3); check its permissions and the file system", "EACCES", folder=True,
    ))  # fmt: skip
    warnings = [
        Failure(FailureKind.CHANGED_WHILE_READING, targets[5].name, f"{targets[5].name}/2026/IMG_0{k}.CR3",
                "size changed from 24.1 MiB to 24.3 MiB while it was read; left for the next run")
        for k in (7, 8)
    ]  # fmt: skip
    return RunSummary(
        host="imgserver", started_at=T0, finished_at=T0 + 4_270, targets=targets, failures=failures,
        warnings=warnings, exit_code=1, requests=_requests(),
    )  # fmt: skip


def three_hundred_targets() -> RunSummary:
    """300 subfolders of one root: 100 with the same three unreadable files each, 20 that
    changed, the rest quiet, and throttling in two."""
    root = "/srv/archive"
    targets = [_target(f"{root}/collection-{i:03d}", i % 20) for i in range(300)]
    failures: list[Failure] = []
    for target in targets[::3][:100]:
        failures += [_unreadable(target, f"thumbs/{k}.db") for k in range(3)]
    for i, target in enumerate(targets[1::15][:20]):
        target.new, target.updated, target.bytes_uploaded = 10 * i + 3, i % 3, (i + 1) * 750_000_000
    slow = _slow_down("PutObject")
    for target in (targets[1], targets[16]):
        target.failed += 2
        failures += [
            Failure(FailureKind.S3, target.name, f"{target.name}/IMG_{k:05d}.CR3", slow, "SlowDown") for k in range(2)
        ]
    return RunSummary(
        host="imgserver", started_at=T0, finished_at=T0 + 9_120, targets=targets, failures=failures,
        exit_code=1, requests=_requests(),
    )  # fmt: skip
