"""Progress while a run goes on: a live display on a terminal, a periodic log line elsewhere.

Owns presentation of progress only; it reads the per-target counters the stages update and
never changes them. Off a terminal (cron, systemd) it writes one line every interval and no
per-file lines, so a nightly log stays short.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .summary import TargetStats, format_bytes

log = logging.getLogger(__name__)


def totals(stats: Sequence[TargetStats]) -> dict[str, Any]:
    """Overall figures; the totals are final only once every walk has finished."""
    done_files = sum(t.new + t.updated for t in stats)
    done_bytes = sum(t.bytes_uploaded for t in stats)
    return {
        "files_done": done_files,
        "files_planned": sum(t.planned_uploads for t in stats),
        "bytes_done": done_bytes,
        "bytes_planned": sum(t.planned_upload_bytes for t in stats),
        "deleted": sum(t.deleted for t in stats),
        "walks_done": sum(1 for t in stats if t.walk_finished),
        "targets": len(stats),
    }


def progress_line(stats: Sequence[TargetStats], elapsed_s: float) -> str:
    t = totals(stats)
    rate = t["bytes_done"] / elapsed_s if elapsed_s > 0 else 0.0
    line = (
        f"progress: {t['files_done']}/{t['files_planned']} files, {format_bytes(t['bytes_done'])} of "
        f"{format_bytes(t['bytes_planned'])} uploaded ({format_bytes(int(rate))}/s), {t['deleted']} deleted, "
        f"{t['walks_done']}/{t['targets']} targets walked"
    )
    remaining = t["bytes_planned"] - t["bytes_done"]
    if t["walks_done"] == t["targets"] and rate > 0 and remaining > 0:
        line += f", about {_duration(remaining / rate)} left"
    return line


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Reports progress until cancelled; `live` selects the terminal display."""

    def __init__(self, *, live: bool, interval_s: float) -> None:
        self.live = live
        self.interval_s = interval_s

    @classmethod
    def for_stderr(cls, interval_s: float, *, quiet: bool) -> Progress | None:
        if quiet:
            return None
        return cls(live=sys.stderr.isatty(), interval_s=interval_s)

    async def run(self, stats: Sequence[TargetStats]) -> None:
        started = time.monotonic()
        if self.live:
            await self._live(stats, started)
            return
        await log_every(self.interval_s, lambda: progress_line(stats, time.monotonic() - started))

    async def _live(self, stats: Sequence[TargetStats], started: float) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        columns = (
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TextColumn("{task.fields[files]}"),
            TimeRemainingColumn(),
        )
        with RichProgress(*columns, transient=False, redirect_stderr=True, redirect_stdout=True) as bar:
            overall = bar.add_task("all targets", total=None, files="")
            tasks = {id(t): bar.add_task(_short(t.name), total=None, files="") for t in stats}
            try:
                while True:
                    for t in stats:
                        bar.update(
                            tasks[id(t)],
                            completed=t.bytes_uploaded,
                            total=t.planned_upload_bytes if t.walk_finished else None,
                            files=f"{t.new + t.updated}/{t.planned_uploads} files",
                        )
                    s = totals(stats)
                    bar.update(
                        overall,
                        completed=s["bytes_done"],
                        total=s["bytes_planned"] if s["walks_done"] == s["targets"] else None,
                        files=f"{s['files_done']}/{s['files_planned']} files",
                    )
                    await anyio.sleep(0.5)
            finally:
                bar.refresh()


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


# verify and restore: one line, how often it is rewritten on a terminal and how often logged elsewhere
TICKER_TTY_S = 1.0
TICKER_LOG_S = 15.0


async def log_every(interval_s: float, describe: Callable[[], str]) -> None:
    """Log `describe()` every `interval_s` until cancelled: progress off a terminal, for every command."""
    while True:
        await anyio.sleep(interval_s)
        log.info("%s", describe())


class Ticker:
    """verify's and restore's progress line: rewritten in place on a terminal every TICKER_TTY_S,
    a log line every TICKER_LOG_S elsewhere (backup's `Progress` draws bars on a terminal instead)."""

    def __init__(self, describe: Callable[[], str]) -> None:
        self._describe = describe
        self._tty = sys.stderr.isatty()

    def start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._run)

    async def _run(self) -> None:
        if not self._tty:
            await log_every(TICKER_LOG_S, self._describe)
            return
        try:
            while True:
                await anyio.sleep(TICKER_TTY_S)
                sys.stderr.write("\r\x1b[K" + self._describe())
                sys.stderr.flush()
        finally:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
