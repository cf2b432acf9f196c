"""What a run leaves behind for people and monitoring: a JSON report and a Prometheus textfile.

Owns: the content of the run report (`build_report`, pure) and its file under
``<cache dir>/reports/`` with retention (`write_report`); the node_exporter textfile metrics
(`render_metrics`, pure) and their atomic file (`write_metrics`). Both files are written to a
temporary name and renamed, so a reader never sees half a file (node_exporter's textfile collector
ignores names that do not end in ``.prom``).

The builders are pure: no clock, no I/O. Must not import the network, S3 or the state cache; it
reads only `errors`, `summary` and `redact`. Every text goes through `redact.printable` (and the
run's `Redactor`, if given), so undecodable file names and secrets never reach the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import Failure
from .redact import Redactor, printable
from .summary import RunSummary, TargetStats

REPORTS_DIR = "reports"
REPORT_FORMAT_VERSION = 1
DEFAULT_KEEP_REPORTS = 30
# reports/2026-11-28T175200Z.json, or ...Z-2.json when two runs start in the same second.
_REPORT_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{6}Z)(?:-(\d+))?\.json$")

METRIC_PREFIX = "async_backup"
LAST_SUCCESS_METRIC = f"{METRIC_PREFIX}_last_success_timestamp_seconds"


# ----------------------------------------------------------------------------- shared


def _span_s(started_at: float, finished_at: float | None) -> float | None:
    # Not the summary's duration_s: that reads the clock when unfinished, and the builders are pure.
    return None if finished_at is None else max(0.0, finished_at - started_at)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def _text_cleaner(redactor: Redactor | None) -> Callable[[str], str]:
    if redactor is None:
        return printable
    return lambda text: printable(redactor.scrub(text))


def run_succeeded(summary: RunSummary) -> bool:
    """Whether this run counts as a successful backup (a dry run never does)."""
    return (
        summary.exit_code == 0
        and not summary.failures
        and not summary.interrupted
        and not summary.dry_run
        and summary.finished_at is not None
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to ``<path>.tmp``, flush it to disk, then rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename itself must reach the disk too, or a crash could bring back the old file.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- report


def report_stem(started_at: float) -> str:
    """The report's file name without suffix: the start time in UTC, e.g. 2026-11-28T175200Z."""
    return datetime.fromtimestamp(started_at, tz=UTC).strftime("%Y-%m-%dT%H%M%SZ")


def _failure_record(failure: Failure, clean: Callable[[str], str]) -> dict[str, Any]:
    return {
        "kind": failure.kind.value,
        "code": clean(failure.code),
        "target": clean(failure.target),
        "path": clean(failure.path),
        "message": clean(failure.message),
        "folder": failure.folder,
    }


def _target_record(target: TargetStats, clean: Callable[[str], str]) -> dict[str, Any]:
    duration_s = _span_s(target.started_at, target.finished_at)
    throughput = target.bytes_uploaded / duration_s if duration_s else None
    return {
        "name": clean(target.name),
        "bucket": clean(target.bucket),
        "new": target.new,
        "updated": target.updated,
        "deleted": target.deleted,
        "unchanged": target.unchanged,
        "adopted": target.adopted,
        "skipped": target.skipped,
        "failed": target.failed,
        "bytes_uploaded": target.bytes_uploaded,
        "planned_uploads": target.planned_uploads,
        "planned_upload_bytes": target.planned_upload_bytes,
        "planned_deletes": target.planned_deletes,
        "rebuilt_rows": target.rebuilt_rows,
        "rebuilt_gone": target.rebuilt_gone,
        "rebuilt_from": clean(target.rebuilt_from) or None,
        "started_at": _iso(target.started_at),
        "finished_at": _iso(target.finished_at),
        "duration_s": duration_s,
        "throughput_bytes_per_s": throughput,
        "fixity": dataclasses.asdict(target.fixity),  # what this run's slice checked, on disk and in S3
    }


def build_report(summary: RunSummary, *, redactor: Redactor | None = None) -> dict[str, Any]:
    """The run report as JSON-ready data. Pure; every string is printable and scrubbed."""
    clean = _text_cleaner(redactor)
    duration_s = _span_s(summary.started_at, summary.finished_at)
    groups = Counter(f.group for f in summary.failures)
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "host": clean(summary.host),
        "dry_run": summary.dry_run,
        "interrupted": summary.interrupted,
        "succeeded": run_succeeded(summary),
        "exit_code": summary.exit_code,
        "started_at": _iso(summary.started_at),
        "finished_at": _iso(summary.finished_at),
        "duration_s": duration_s,
        "totals": {
            "targets": len(summary.targets),
            "files_uploaded": summary.files_uploaded,
            "files_deleted": summary.files_deleted,
            "rows_rebuilt": summary.rows_rebuilt,
            "bytes_uploaded": summary.bytes_uploaded,
            "throughput_bytes_per_s": summary.bytes_uploaded / duration_s if duration_s else None,
            "failures": len(summary.failures),
            "warnings": len(summary.warnings),
        },
        # The S3 requests the run sent (a dry run: its uploads and deletes would send), priced.
        "requests": summary.requests.as_json() if summary.requests is not None else None,
        # The window (--stop-at, --max-duration) and what its end left for the next runs.
        "window": {
            "seconds": summary.window_s,
            "ended_by_window": summary.ended_by_window,
            "left_files": summary.left_files,
            "left_bytes": summary.left_bytes,
            "nights_left": summary.nights_left,
        },
        "failures_by_group": {clean(name): n for name, n in groups.most_common()},
        "targets": [_target_record(t, clean) for t in summary.targets],
        "failures": [_failure_record(f, clean) for f in summary.failures],
        "warnings": [_failure_record(w, clean) for w in summary.warnings],
    }


def _report_sort_key(path: Path) -> tuple[str, int] | None:
    match = _REPORT_NAME.match(path.name)
    if match is None:
        return None
    return match.group(1), int(match.group(2) or 1)


def _reports_newest_first(cache_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The readable run reports under ``<cache_dir>/reports/`` and their content, newest first."""
    reports_dir = Path(cache_dir) / REPORTS_DIR
    try:
        found = [(key, p) for p in reports_dir.iterdir() if (key := _report_sort_key(p)) is not None]
    except OSError:
        return
    for _key, path in sorted(found, reverse=True):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged or unreadable report: the one before tells
        if isinstance(data, dict):
            yield path, data


def latest_report(cache_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable run report under ``<cache_dir>/reports/`` and its content, or None."""
    return next(_reports_newest_first(cache_dir), None)


def _timestamp(iso: object) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        ts = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return ts if math.isfinite(ts) and ts > 0 else None


def last_success(cache_dir: Path) -> float | None:
    """When the newest successful run recorded under ``<cache_dir>/reports/`` finished, or None.

    The reports, not the metrics file, are the record: a new --metrics-file path, or a file lost
    with its directory, still gets the true time. None when no kept report holds a success."""
    for _path, data in _reports_newest_first(cache_dir):
        if data.get("succeeded") is True:
            ts = _timestamp(data.get("finished_at"))
            if ts is not None:
                return ts
    return None


def measured_upload_rate(cache_dir: Path, runs: int = 5) -> tuple[float, int] | None:
    """Bytes per second the newest `runs` runs that uploaded something sent (their bytes over their
    durations, walks included), and how many runs that is; None when no kept report has one."""
    sent_bytes, seconds, counted_runs = 0, 0.0, 0
    for _path, data in _reports_newest_first(cache_dir):
        totals = data.get("totals")
        uploaded = totals.get("bytes_uploaded") if isinstance(totals, dict) else None
        duration = data.get("duration_s")
        if data.get("dry_run") or not isinstance(uploaded, int) or uploaded <= 0:
            continue
        if not isinstance(duration, int | float) or not duration > 0:
            continue
        sent_bytes += uploaded
        seconds += float(duration)
        counted_runs += 1
        if counted_runs >= runs:
            break
    return (sent_bytes / seconds, counted_runs) if counted_runs else None


def prune_reports(reports_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` reports; returns what was deleted. Other files are left alone."""
    reports = [(key, p) for p in reports_dir.iterdir() if (key := _report_sort_key(p)) is not None]
    reports.sort()
    doomed = [p for _key, p in reports[: max(0, len(reports) - max(0, keep))]]
    deleted = []
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted.append(path)
    return deleted


def write_report(
    cache_dir: Path,
    summary: RunSummary,
    keep: int = DEFAULT_KEEP_REPORTS,
    *,
    redactor: Redactor | None = None,
) -> Path:
    """Write ``<cache_dir>/reports/<start time>.json`` atomically; keep only the newest `keep`.

    Returns the report's path. I/O errors are raised: the caller decides whether a missing report
    is a warning.
    """
    reports_dir = Path(cache_dir) / REPORTS_DIR
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(summary.started_at)
    path = reports_dir / f"{stem}.json"
    serial = 1
    while path.exists():  # two runs in one second (tests, a quick retry): never overwrite
        serial += 1
        path = reports_dir / f"{stem}-{serial}.json"
    data = json.dumps(build_report(summary, redactor=redactor), ensure_ascii=False, indent=1) + "\n"
    write_atomic(path, data.encode("utf-8"))
    prune_reports(reports_dir, keep)
    return path


# ----------------------------------------------------------------------------- metrics


def escape_label_value(value: str) -> str:
    """A label value for the Prometheus text format: backslash, double quote and newline escaped."""
    return printable(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Metrics:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        full = f"{METRIC_PREFIX}_{name}"
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} gauge")
        for labels, value in samples:
            if labels:
                rendered = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
                self.lines.append(f"{full}{{{rendered}}} {_number(value)}")
            else:
                self.lines.append(f"{full} {_number(value)}")


def render_metrics(summary: RunSummary, last_success_ts: float | None, *, redactor: Redactor | None = None) -> str:
    """The textfile for node_exporter. Pure.

    `last_success_ts` is the last successful run before this one; this run replaces it only if it
    succeeded. 0 means no run has succeeded yet, so an alert on its age fires.

    All metrics describe the last run and are gauges: each run starts again from zero, so none is
    a counter, and no name ends in ``_total`` (Prometheus keeps that suffix for counters, and
    ``promtool check metrics`` refuses it on a gauge).
    """
    clean = _text_cleaner(redactor)
    if run_succeeded(summary) and summary.finished_at is not None:
        last_success_ts = summary.finished_at
    last_run_ts = summary.finished_at if summary.finished_at is not None else summary.started_at
    duration_s = _span_s(summary.started_at, summary.finished_at) or 0.0

    m = _Metrics()
    m.family(
        "last_success_timestamp_seconds",
        "Unix time the last successful backup run finished (0: none yet).",
        [({}, last_success_ts or 0)],
    )
    m.family("last_run_timestamp_seconds", "Unix time the last run finished.", [({}, last_run_ts)])
    m.family("duration_seconds", "Wall-clock duration of the last run.", [({}, duration_s)])
    per_target = [(t, {"target": clean(t.name)}) for t in summary.targets]
    m.family(
        "files_uploaded",
        "Files uploaded (new or updated) by the last run, per target.",
        [(labels, t.new + t.updated) for t, labels in per_target],
    )
    m.family(
        "bytes_uploaded",
        "Bytes S3 confirmed in the last run, per target.",
        [(labels, t.bytes_uploaded) for t, labels in per_target],
    )
    m.family(
        "files_deleted",
        "Objects deleted by the last run, per target.",
        [(labels, t.deleted) for t, labels in per_target],
    )
    failures = Counter((clean(f.target), f.kind.value) for f in summary.failures)
    m.family(
        "failures",
        "Items that failed in the last run, per target and kind.",
        [({"target": target, "kind": kind}, n) for (target, kind), n in sorted(failures.items())],
    )
    m.family("exit_code", "Exit code of the last run (0: success).", [({}, summary.exit_code)])
    m.family(
        "backlog_files",
        "Planned uploads the last run's window left for the next runs (0: it finished).",
        [({}, summary.left_files)],
    )
    m.family("backlog_bytes", "Bytes of those uploads.", [({}, summary.left_bytes)])
    return "\n".join(m.lines) + "\n"


def read_last_success(path: Path) -> float | None:
    """The last success timestamp from a metrics file written earlier, or None (missing, 0, garbled)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        if name == LAST_SUCCESS_METRIC:
            try:
                ts = float(value.split()[0])
            except (ValueError, IndexError):
                return None
            return ts if math.isfinite(ts) and ts > 0 else None
    return None


def write_metrics(
    path: Path,
    summary: RunSummary,
    previous_success_ts: float | None = None,
    *,
    redactor: Redactor | None = None,
) -> None:
    """Write the metrics atomically (``NAME.prom.tmp``, then rename).

    The last success time survives failed runs: it is `previous_success_ts` if given (a run passes
    `last_success` of its cache's reports), else read back from the file this replaces (when
    retention dropped every report of a success).
    """
    path = Path(path)
    if previous_success_ts is None:
        previous_success_ts = read_last_success(path)
    text = render_metrics(summary, previous_success_ts, redactor=redactor)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"))
