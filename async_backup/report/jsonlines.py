"""`backup --json`: machine-readable progress on stdout, one JSON object a line.

Owns the line formats (listed in the README, "Machine-readable output"): `message_type`
"status" lines while the run goes on, and one "summary" line at its end. Like restic's
`backup --json`. Every text passes through the redactor and `redact.printable`, so a line is
always one line of valid UTF-8 and holds no secret. Writes to stdout only through `emit`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .redact import Redactor, printable
from .summary import RunSummary, TargetStats


def emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def status_line(stats: Sequence[TargetStats], elapsed_s: float) -> dict[str, Any]:
    """The run so far. The totals grow while walks go on: `total_*` are final once
    `targets_walked` equals `total_targets`."""
    files_done = sum(t.new + t.updated for t in stats)
    files_total = sum(t.planned_uploads for t in stats)
    bytes_done = sum(t.bytes_uploaded for t in stats)
    bytes_total = sum(t.planned_upload_bytes for t in stats)
    walked = sum(1 for t in stats if t.walk_finished)
    rate = bytes_done / elapsed_s if elapsed_s > 0 else 0.0
    remaining: float | None = None
    if walked == len(stats) and rate > 0:
        remaining = round(max(0, bytes_total - bytes_done) / rate, 1)
    return {
        "message_type": "status",
        "seconds_elapsed": round(elapsed_s, 1),
        "seconds_remaining": remaining,
        "percent_done": round(bytes_done / bytes_total, 4) if bytes_total else 0.0,
        "total_files": files_total,
        "files_done": files_done,
        "total_bytes": bytes_total,
        "bytes_done": bytes_done,
        "files_deleted": sum(t.deleted for t in stats),
        "files_failed": sum(t.failed for t in stats),
        "total_targets": len(stats),
        "targets_walked": walked,
        "targets_done": sum(1 for t in stats if t.finished_at is not None),
    }


def summary_line(summary: RunSummary, exit_code: int, redactor: Redactor | None = None) -> dict[str, Any]:
    """The run's outcome: counts per target and in total, failures by group, duration, exit code."""

    def clean(text: str) -> str:
        return printable(redactor.scrub(text) if redactor is not None else text)

    groups = Counter(f.group for f in summary.failures)
    return {
        "message_type": "summary",
        "dry_run": summary.dry_run,
        "interrupted": summary.interrupted,
        "ended_by_window": summary.ended_by_window,
        "files_left": summary.left_files,
        "bytes_left": summary.left_bytes,
        "nights_left": summary.nights_left,
        "exit_code": exit_code,
        "seconds_elapsed": round(summary.duration_s, 3),
        "files_new": sum(t.new for t in summary.targets),
        "files_updated": sum(t.updated for t in summary.targets),
        "files_unchanged": sum(t.unchanged for t in summary.targets),
        "files_deleted": summary.files_deleted,
        "files_skipped": sum(t.skipped for t in summary.targets),
        "files_failed": sum(t.failed for t in summary.targets),
        "bytes_uploaded": summary.bytes_uploaded,
        "files_planned": sum(t.planned_uploads for t in summary.targets),
        "bytes_planned": sum(t.planned_upload_bytes for t in summary.targets),
        "failures": len(summary.failures),
        "warnings": len(summary.warnings),
        "failures_by_group": {clean(name): n for name, n in groups.most_common()},
        "targets": [
            {
                "path": clean(t.name),
                "bucket": clean(t.bucket),
                "files_new": t.new,
                "files_updated": t.updated,
                "files_unchanged": t.unchanged,
                "files_deleted": t.deleted,
                "files_skipped": t.skipped,
                "files_failed": t.failed,
                "bytes_uploaded": t.bytes_uploaded,
                "seconds_elapsed": round(t.duration_s, 3),
            }
            for t in summary.targets
        ],
    }
