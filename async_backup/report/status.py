"""`async-backup status`: what S3 holds per target and what holding it costs, from local files only.

Owns the status table and its JSON: per target the objects and bytes the cache records (current
versions S3 confirmed), their monthly storage price with Deep Archive's per-object overhead, and
the last run's time and outcome from the newest run report; configured targets no run has backed
up yet are listed too, marked as such. Sends no request to S3 and takes no lock: it only reads the
cache, the reports and the configured folders and roots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..cache.store import StateStore
from ..errors import EXIT_OK
from ..s3.pricing import Prices, format_usd, prices_for, storage_month
from ..settings.config import Config
from ..settings.targets import discover_targets, paths_needing_names
from ..wording import counted, noun_for
from .runreport import latest_report
from .summary import format_bytes


@dataclass(frozen=True, slots=True)
class StatusOptions:
    json: bool = False  # JSON for scripts instead of the table


def gather(config: Config, cache_dir: Path) -> dict[str, Any]:
    """The status as JSON-ready data."""
    prices = prices_for(config.aws.region, config.pricing)
    store = StateStore(cache_dir, readonly=True)
    try:
        held = store.holdings() if store.damaged is None else {}
        checked = store.fixity_oldest() if store.damaged is None else {}
        known = store.known_targets()
    finally:
        store.close()
    last = latest_report(cache_dir)
    report = last[1] if last else {}
    last_by_target = {t.get("name"): t for t in report.get("targets", []) if isinstance(t, dict)}
    failed_by_target: dict[str, int] = {}
    for failure in report.get("failures", []):
        if isinstance(failure, dict):
            name = str(failure.get("target", ""))
            failed_by_target[name] = failed_by_target.get(name, 0) + 1
    targets: list[dict[str, Any]] = []
    names = {bucket: path for path, (bucket, _root) in known.items()}
    for bucket in sorted(set(held) | set(names.keys()), key=lambda b: names.get(b, "~" + b)):
        objects, size, unknown = held.get(bucket, (0, 0, 0))
        cost = storage_month(size, objects, config.storage_class, prices)
        name = names.get(bucket, "")
        ran = last_by_target.get(name)
        targets.append(
            {
                "target": name or None,
                "bucket": bucket,
                "objects": objects,
                "bytes": size,
                "objects_of_unknown_size": unknown,
                "storage_class": config.storage_class,
                "usd_per_month": round(cost.usd, 9),
                "overhead_usd_per_month": round(cost.overhead_usd, 9),
                "never_ran": False,
                "fixity": _fixity(checked.get(bucket)),
                "last_run": None
                if ran is None
                else {
                    "finished_at": ran.get("finished_at"),
                    "new": ran.get("new"),
                    "updated": ran.get("updated"),
                    "deleted": ran.get("deleted"),
                    "failed": failed_by_target.get(name, ran.get("failed", 0)),
                },
            }
        )
    targets.extend(_never_ran(config, known, set(held), prices))
    total = storage_month(
        sum(t["bytes"] for t in targets), sum(t["objects"] for t in targets), config.storage_class, prices
    )
    return {
        "targets": targets,
        "totals": {
            "objects": sum(t["objects"] for t in targets),
            "bytes": sum(t["bytes"] for t in targets),
            "objects_of_unknown_size": sum(t["objects_of_unknown_size"] for t in targets),
            "usd_per_month": round(total.usd, 9),
        },
        "last_run": None
        if not last
        else {
            "report": str(last[0]),
            "started_at": report.get("started_at"),
            "finished_at": report.get("finished_at"),
            "exit_code": report.get("exit_code"),
            "succeeded": report.get("succeeded"),
            "dry_run": report.get("dry_run"),
            "interrupted": report.get("interrupted"),
            "failures": report.get("totals", {}).get("failures"),
            "requests": report.get("requests"),
            "window": report.get("window"),
        },
        "prices": prices.describe(),
        "note": "current versions the cache records; noncurrent versions S3 keeps for up to "
        f"{config.noncurrent_days} days after a change or delete are not in the cache and add to this",
    }


def _never_ran(
    config: Config, known: dict[str, tuple[str, str | None]], held: set[str], prices: Prices
) -> list[dict[str, Any]]:
    """The configured targets (folders, and the subfolders of roots on disk now) that no run has
    backed up: the cache knows neither their path nor rows in their bucket. Their bucket is the one
    a first run would create, or None where that name waits for the account's tag (AWS)."""
    found = [t for t in discover_targets(config, known) if t.path not in known and t.bucket not in held]
    waiting = set(paths_needing_names(config, known))
    empty = storage_month(0, 0, config.storage_class, prices)
    return [
        {
            "target": t.path,
            "bucket": None if not t.bucket or t.path in waiting else t.bucket,
            "objects": 0,
            "bytes": 0,
            "objects_of_unknown_size": 0,
            "storage_class": config.storage_class,
            "usd_per_month": round(empty.usd, 9),
            "overhead_usd_per_month": round(empty.overhead_usd, 9),
            "never_ran": True,
            "on_disk": not t.missing,
            "last_run": None,
        }
        for t in found
    ]


def outcome(run: dict[str, Any]) -> str:
    if run.get("interrupted"):
        return "interrupted"
    if run.get("succeeded"):
        return "succeeded"
    window = run.get("window") or {}
    if window.get("ended_by_window") and not run.get("failures"):
        left = f"{counted(window.get('left_files') or 0, 'file')} left"
        nights = window.get("nights_left")
        return f"window ended, {left}" + (f" (about {counted(nights, 'more night')})" if nights else "")
    return f"failed (exit code {run.get('exit_code')}, {counted(run.get('failures') or 0, 'failure')})"


def _fixity(checked: tuple[int, int, float | None, float | None] | None) -> dict[str, Any]:
    """When every file of a target was last checked on disk and every object in S3: the oldest
    check (None while some file or object was never checked)."""
    _rows, never, oldest_disk, oldest_s3 = checked or (0, 0, None, None)

    def iso(ts: float | None) -> str | None:
        return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

    return {
        "never_checked_on_disk": never,
        "oldest_check_on_disk": iso(oldest_disk),
        "oldest_check_in_s3": iso(oldest_s3),
    }


def render(status: dict[str, Any]) -> str:
    lines = []
    rows = [("target", "bucket", "objects", "bytes", "per month", "last run")]
    for t in status["targets"]:
        ran = t["last_run"]
        if t["never_ran"]:
            last = "never ran" if t["on_disk"] else "never ran; not on disk"
        elif ran is None:
            last = "not in the last run"
        else:
            last = f"{ran['finished_at'] or 'unfinished'}: {ran['failed'] or 0} failed"
        unknown = f" ({t['objects_of_unknown_size']:,} of unknown size)" if t["objects_of_unknown_size"] else ""
        rows.append(
            (
                t["target"] or "(not a target now)",
                t["bucket"] or "(named at its first run)",
                f"{t['objects']:,}{unknown}",
                format_bytes(t["bytes"]),
                format_usd(t["usd_per_month"]),
                last,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for t in status["targets"]:
        fixity = t.get("fixity")
        if fixity and t["objects"]:
            disk = fixity["oldest_check_on_disk"] or f"{fixity['never_checked_on_disk']:,} files never"
            s3 = fixity["oldest_check_in_s3"] or "some objects never"
            lines.append(
                f"  fixity {t['target'] or t['bucket']}: every file checked on disk since {disk}, in S3 since {s3}"
            )
    totals = status["totals"]
    lines.append(
        f"total: {counted(totals['objects'], 'object')}, {format_bytes(totals['bytes'])}, "
        f"{format_usd(totals['usd_per_month'])} per month in storage (Deep Archive's 40 KB per object included)"
    )
    if totals["objects_of_unknown_size"]:
        lines.append(
            f"  {counted(totals['objects_of_unknown_size'], 'object')} adopted from the old script's cache "
            f"{noun_for(totals['objects_of_unknown_size'], 'has')} no size recorded: their bytes are not counted"
        )
    lines.append(f"  {status['note']}")
    lines.append(f"  prices: {status['prices']}")
    run = status["last_run"]
    if run is None:
        lines.append("last run: no run report yet")
    else:
        lines.append(f"last run: started {run['started_at']}, {outcome(run)}; report {run['report']}")
        if run.get("requests"):
            req = run["requests"]
            lines.append(f"  it sent {req['total']:,} S3 requests for {format_usd(req['usd'])}")
    return "\n".join(lines)


def run(config: Config, cache_dir: Path, options: StatusOptions) -> int:
    """`async-backup status [--json]`: 0 always once the config loads (no S3 request is sent)."""
    status = gather(config, cache_dir)
    if options.json:
        print(json.dumps(status, indent=1, ensure_ascii=False))
    else:
        print(render(status))
    return EXIT_OK
