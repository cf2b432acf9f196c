"""The end of a backup run, told: the JSON report, the metrics file, the Teams card, the summary lines.

Owns the order and the failure rules of publishing (report and metrics first, a failed card is a
warning written into the report, nothing here changes the exit code), the redactor built from
the run's secrets, and the closing log lines. Sends through `notify`, writes through `runreport`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import anyio

from ..settings.config import Config
from ..wording import counted
from .card import build_card, card_json
from .notify import NotifyResult, send_card
from .redact import Redactor, webhook_host
from .runreport import last_success, write_metrics, write_report
from .summary import RunSummary, format_bytes

log = logging.getLogger("async_backup")


def redactor_for(config: Config) -> Redactor:
    return Redactor.for_run(
        aws_access_key_id=config.aws.access_key,
        aws_secret_access_key=config.aws.secret_access_key,
        webhook_url=config.webhook,
    )


def publish(
    config: Config, cache_dir: Path, summary: RunSummary, *, metrics_file: str | None, print_card: bool
) -> None:
    """The JSON report, the metrics file and the Teams card. None of them changes the exit code.

    Report and metrics come first: a webhook that hangs (or a stop timeout that kills us while it
    does) must not cost monitoring its data. The report is rewritten if the card fails."""
    redactor = redactor_for(config)
    report = None
    if not summary.dry_run:
        report = _write_report(cache_dir, summary, config, redactor)
        if metrics_file:
            try:
                write_metrics(Path(metrics_file), summary, last_success(cache_dir), redactor=redactor)
            except OSError as exc:
                log.warning("metrics file %s could not be written (%s)", metrics_file, exc.strerror or exc)
    # A window that left work posts too: its card says how much is left and for how many nights.
    wants_card = bool(summary.failures) or summary.interrupted or summary.ended_by_window or config.notify_on_success
    report_path = str(report) if report is not None else None
    if print_card:
        print(card_json(summary, redactor=redactor, report_path=report_path))
    elif wants_card and config.webhook and not summary.dry_run:
        result = anyio.run(_send, config.webhook, build_card(summary, redactor=redactor, report_path=report_path))
        if not result.ok:
            summary.warnings.append(result.as_warning())
            if report is not None:
                report.unlink(missing_ok=True)
                _write_report(cache_dir, summary, config, redactor)
        else:  # notify.send_card already logged the delivery at INFO, with status and attempt
            log.debug("Teams card for this run sent to %s", webhook_host(config.webhook))


def _write_report(cache_dir: Path, summary: RunSummary, config: Config, redactor: Redactor) -> Path | None:
    try:
        path = write_report(cache_dir, summary, keep=config.keep_reports, redactor=redactor)
    except OSError as exc:
        log.warning("the run report could not be written (%s)", exc.strerror or exc)
        return None
    log.debug("run report written to %s", path)
    return path


async def _send(url: str, payload: dict[str, Any]) -> NotifyResult:
    return await send_card(url, payload)


def tell_outcome(summary: RunSummary, dry_run: bool, *, plan_to: TextIO | None = None, plan: bool = True) -> None:
    """The run's end in the log (failures, warnings, totals) and, for a dry run, its plan on
    `plan_to` (stdout; stderr when stdout carries the card: --print-card). No plan with `plan`
    False (--json, whose stdout carries JSON lines only)."""
    plan_out = plan_to or sys.stdout
    for failure in summary.failures[:50]:
        log.error("failed: [%s] %s: %s", failure.group, failure.path or failure.target, failure.message)
    if len(summary.failures) > 50:
        log.error("... and %s", counted(len(summary.failures) - 50, "more failure"))
    for warning in summary.warnings[:20]:
        log.warning("%s: %s: %s", warning.group, warning.path, warning.message)
    if dry_run and plan:
        for t in summary.targets:
            adopt = (
                f"would adopt {counted(t.adopted, 'file')} from the old script's cache "
                "(each checked against the bucket listing first), "
                if t.adopted
                else ""
            )
            print(
                f"{t.name} -> {t.destination}: {adopt}would upload {counted(t.planned_uploads, 'file')} "
                f"({format_bytes(t.planned_upload_bytes)}), delete {t.planned_deletes}, "
                f"{t.unchanged} unchanged, {t.skipped} skipped",
                file=plan_out,
            )
            if t.rebuild_due:
                print(
                    f"  the cache holds no rows for {t.name}: a real run first rebuilds them from S3 "
                    "(the newest snapshot, else the bucket listing + HeadObject) and uploads only what S3 "
                    "does not hold as it is on disk; this dry run sends no request, so it counts every file as new",
                    file=plan_out,
                )
    if dry_run and plan:
        for line in summary.plan:  # the nights it takes and what it costs
            print(line, file=plan_out)
    tail = f", {counted(summary.rows_rebuilt, 'cache row')} rebuilt from S3" if summary.rows_rebuilt else ""
    if summary.requests is not None:
        tail += f"; {summary.requests.brief()} at {summary.requests.prices.describe()}"
    if summary.ended_by_window and not summary.interrupted:
        tail += f"; the window ended: {summary.backlog_line()}"
    log.info(
        "%s: %s, %s uploaded (%s), %d deleted, %s in %.1f s%s",
        "dry run done"
        if dry_run
        else "interrupted"
        if summary.interrupted
        else "window ended"
        if summary.ended_by_window
        else "done",
        counted(len(summary.targets), "target"),
        counted(summary.files_uploaded, "file"),
        format_bytes(summary.bytes_uploaded),
        summary.files_deleted,
        counted(len(summary.failures), "failure"),
        summary.duration_s,
        tail,
    )
