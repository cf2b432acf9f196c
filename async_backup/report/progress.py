"""Progress while a run goes on: a live display on a terminal, a periodic log line elsewhere.

Owns presentation of progress only; it reads the per-target counters the stages update and
never changes them. Off a terminal (cron, systemd) it writes one line every interval and no
per-file lines, so a nightly log stays short.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    """Reports progress until cancelled, then once more with the final counts.

    `mode` is "live" (the terminal display, redrawn in place), "log" (a log line every
    `interval_s`) or "json" (a `message_type` "status" line on stdout every JSON_STATUS_S)."""

    def __init__(self, *, mode: str, interval_s: float) -> None:
        self.mode = mode
        self.interval_s = interval_s

    @property
    def live(self) -> bool:
        return self.mode == "live"

    @classmethod
    def for_stderr(cls, interval_s: float, *, quiet: bool, json_lines: bool = False) -> Progress | None:
        if json_lines:
            return cls(mode="json", interval_s=JSON_STATUS_S)
        if quiet:
            return None
        return cls(mode="live" if sys.stderr.isatty() else "log", interval_s=interval_s)

    async def run(self, stats: Sequence[TargetStats]) -> None:
        started = time.monotonic()
        if self.mode == "live":
            await self._live(stats, started)
        elif self.mode == "json":
            from .jsonlines import emit, status_line

            while True:
                await anyio.sleep(self.interval_s)
                emit(status_line(stats, time.monotonic() - started))
        else:
            await log_every(self.interval_s, lambda: progress_line(stats, time.monotonic() - started))

    async def _live(self, stats: Sequence[TargetStats], started: float) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console(stderr=True)
        frame = Frame()

        def draw(*, final: bool = False) -> Text:
            size = console.size
            lines = frame.render(stats, time.monotonic() - started, size.width, size.height, final=final)
            return Text("\n".join(lines), no_wrap=True, overflow="crop")

        with Live(draw(), console=console, auto_refresh=False, redirect_stderr=True, redirect_stdout=True) as live:
            try:
                while True:
                    await anyio.sleep(LIVE_REDRAW_S)
                    live.update(draw(), refresh=True)
            finally:
                # The counters are final now (every stage has ended): the last frame shows them,
                # not the values of up to LIVE_REDRAW_S ago.
                live.update(draw(final=True), refresh=True)


# The live display: redrawn twice a second; speeds averaged over the last RATE_WINDOW_S. It takes
# at most a third of the terminal's rows (the log scrolls above it) and MAX_TARGET_ROWS targets.
LIVE_REDRAW_S = 0.5
RATE_WINDOW_S = 10.0
MAX_TARGET_ROWS = 8
JSON_STATUS_S = 5.0  # --json: one status line every 5 s (restic's --json: a few a second on a terminal)


@dataclass(frozen=True, slots=True)
class _Row:
    name: str
    files_done: int
    files_planned: int
    bytes_done: int
    bytes_planned: int
    failed: int
    rate: float  # bytes per second
    sized: bool  # the walk is over: bytes_planned is the total
    finished: bool


class Frame:
    """The live display as lines of text, each at most `width` characters: never wrapped.

    Columns that do not fit are dropped, least useful first (time left, bar, speed, bytes); names
    are shortened from the left ("…/photos/2024"). Beyond the rows the terminal can spare, the
    busiest targets are shown and one line sums up the rest. Sizes in binary units (KiB, MiB, GiB),
    as everywhere else. Keeps the byte samples its speeds are computed from; otherwise pure."""

    def __init__(self) -> None:
        self._samples: dict[int, deque[tuple[float, int]]] = {}

    def _rate(self, key: int, now: float, done: int, *, final: bool) -> float:
        samples = self._samples.setdefault(key, deque())
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        if final:  # the run's average: the last window may be a few idle seconds
            return done / now if now > 0 else 0.0
        t0, b0 = samples[0]
        return (done - b0) / (now - t0) if now > t0 else 0.0

    def render(
        self, stats: Sequence[TargetStats], elapsed_s: float, width: int, height: int, *, final: bool = False
    ) -> list[str]:
        rows = [
            _Row(
                name=t.name,
                files_done=t.new + t.updated,
                files_planned=t.planned_uploads,
                bytes_done=t.bytes_uploaded,
                bytes_planned=t.planned_upload_bytes,
                failed=t.failed,
                rate=self._rate(i, elapsed_s, t.bytes_uploaded, final=final),
                sized=t.walk_finished,
                finished=final or t.finished_at is not None,
            )
            for i, t in enumerate(stats)
        ]
        room = max(1, min(MAX_TARGET_ROWS, height // 3 - 1))
        shown = rows
        if len(rows) > room:
            busiest = sorted(range(len(rows)), key=lambda i: (rows[i].finished, -rows[i].rate, i))[: room - 1]
            shown = [rows[i] for i in sorted(busiest)]
            rest = [r for i, r in enumerate(rows) if i not in set(busiest)]
            shown.append(_sum(f"{len(rest)} more targets", rest))
        if len(rows) <= 1:  # one target: its own row is the total
            return _layout(rows, width) if rows else []
        overall = _sum(f"all {len(rows)} targets", rows)
        overall = dataclasses.replace(overall, rate=self._rate(-1, elapsed_s, overall.bytes_done, final=final))
        return _layout([*shown, overall], width)


def _sum(name: str, rows: Sequence[_Row]) -> _Row:
    return _Row(
        name=name,
        files_done=sum(r.files_done for r in rows),
        files_planned=sum(r.files_planned for r in rows),
        bytes_done=sum(r.bytes_done for r in rows),
        bytes_planned=sum(r.bytes_planned for r in rows),
        failed=sum(r.failed for r in rows),
        rate=sum(r.rate for r in rows),
        sized=all(r.sized for r in rows),
        finished=all(r.finished for r in rows),
    )


def _cells(row: _Row) -> dict[str, str]:
    files = f"{row.files_done:,}/{row.files_planned:,} files"
    if row.failed:
        files += f", {row.failed:,} failed"
    sizes = format_bytes(row.bytes_done)
    if row.sized:
        sizes += f"/{format_bytes(row.bytes_planned)}"
    left = row.bytes_planned - row.bytes_done
    if row.finished:
        eta = "done"
    elif row.sized and row.rate > 0 and left > 0:
        eta = _duration(left / row.rate) + " left"
    else:
        eta = ""
    return {"files": files, "bytes": sizes, "rate": f"{format_bytes(int(row.rate))}/s", "eta": eta}


# Kept longest as the terminal narrows: the name and the file counts are always shown.
_COLUMNS = ("files", "bytes", "rate", "eta")
_DROP_ORDER = ("bar", "eta", "rate", "bytes")
_GAP = "  "
MIN_NAME = 16
MAX_NAME = 32
MIN_BAR = 8
MAX_BAR = 30


def _layout(rows: Sequence[_Row], width: int) -> list[str]:
    width = max(20, width)
    cells = [_cells(r) for r in rows]
    widths = {c: max(len(cell[c]) for cell in cells) for c in _COLUMNS}
    wanted = max(len(_shorten(r.name, MAX_NAME)) for r in rows)
    bar_room = MIN_BAR + 2 + len(_GAP)  # the brackets and the gap before it
    # Each choice drops one more column; the first where the names fit whole wins, else the first
    # where they keep MIN_NAME characters, else the name and the file counts alone.
    choices = [["bar", *_COLUMNS]]
    for drop in _DROP_ORDER:
        choices.append([c for c in choices[-1] if c != drop])

    def name_room(columns: Sequence[str]) -> int:
        return width - sum(widths[c] + len(_GAP) for c in columns if c != "bar") - (bar_room if "bar" in columns else 0)

    shown = next(
        (c for c in choices if name_room(c) >= wanted),
        next((c for c in choices if name_room(c) >= min(wanted, MIN_NAME)), choices[-1]),
    )
    name_w = max(1, min(wanted, name_room(shown)))
    bar_w = min(MAX_BAR, MIN_BAR + name_room(shown) - name_w) if "bar" in shown else 0
    lines = []
    for row, cell in zip(rows, cells, strict=True):
        parts = [_shorten(row.name, name_w).ljust(name_w)]
        for column in shown:
            if column == "bar":
                parts.append(_bar(row, bar_w))
            elif column == "files":
                parts.append(cell[column].ljust(widths[column]))
            elif column == "eta":
                parts.append(cell[column])
            else:
                parts.append(cell[column].rjust(widths[column]))
        lines.append(_GAP.join(parts).rstrip()[:width])
    return lines


def _bar(row: _Row, width: int) -> str:
    if not row.sized or row.bytes_planned <= 0:
        filled = width if row.finished else 0
    else:
        filled = min(width, width * row.bytes_done // row.bytes_planned)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _shorten(name: str, width: int) -> str:
    """The end of a path is what tells targets apart: whole components kept where they fit
    ("…/photos/2024"), else the end of the last one ("…s-of-2024")."""
    if len(name) <= width:
        return name
    if not name.startswith("/"):  # "6 more targets": not a path, its start says most
        return name[: width - 1] + "…"
    parts = name.split("/")
    for start in range(1, len(parts)):
        tail = "…/" + "/".join(parts[start:])
        if len(tail) <= width and parts[start]:
            return tail
    return "…" + name[-(width - 1) :] if width > 1 else name[:width]


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
