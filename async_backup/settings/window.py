"""The nightly window: when a run must stop starting uploads, read from config.json and the flags.

Owns the `backup.window` section's shape (`stop_at` "HH:MM" in the host's zone, `max_duration`
"5h" / "90m" / "3600s" or seconds, `grace_s`), the parsing of `--stop-at` and `--max-duration`,
and the pure arithmetic from the window and a given "now" to the run's deadline. Every problem is a
`ConfigError` naming the key or flag and the fix. No clock of its own, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..errors import ConfigError

DEFAULT_GRACE_S = 120.0
MAX_DURATION_S = 7 * 24 * 3600.0  # a window longer than a week is a typo (5h, not 5d)
_HH_MM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smh]?)$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Window:
    """When a run stops starting uploads: at `stop_at` (hour, minute; local time, the next such
    moment after the start) or `max_duration_s` after the start, whichever comes first. Uploads in
    flight then that would finish within `grace_s` finish; the others are cut."""

    stop_at: tuple[int, int] | None = None
    max_duration_s: float | None = None
    grace_s: float = DEFAULT_GRACE_S

    @property
    def is_set(self) -> bool:
        return self.stop_at is not None or self.max_duration_s is not None

    def describe(self) -> str:
        bits = []
        if self.stop_at is not None:
            bits.append(f"stop at {self.stop_at[0]:02d}:{self.stop_at[1]:02d}")
        if self.max_duration_s is not None:
            bits.append(f"at most {format_duration_s(self.max_duration_s)}")
        return " or ".join(bits) if bits else "no window"


def parse_stop_at(text: str, key: str) -> tuple[int, int]:
    """ "06:30" -> (6, 30); `key` names the config key or flag in the error."""
    match = _HH_MM.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f'{key} is {text!r}; give a time of day as HH:MM in the host\'s zone, e.g. "06:30"')
    return int(match.group(1)), int(match.group(2))


def parse_duration(value: Any, key: str) -> float:
    """ "5h", "90m", "45s", "3600" or a number of seconds -> seconds (more than 0, at most a week)."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.strip().lower())
        if match is not None:
            seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds is None or not 0 < seconds <= MAX_DURATION_S:
        raise ConfigError(
            f'{key} is {value!r}; give a duration of more than 0 and at most a week, like "5h", "90m" or "45s"'
        )
    return seconds


def window_from_config(raw: Any, where: str) -> Window:
    """The `backup.window` section: {"stop_at": "06:30", "max_duration": "5h", "grace_s": 120}."""
    if raw is None:
        return Window()
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: backup.window must be an object like {{"stop_at": "06:30", "grace_s": 120}}')
    unknown = set(raw) - {"stop_at", "max_duration", "grace_s"}
    if unknown:
        raise ConfigError(
            f'{where}: backup.window has unknown keys {sorted(unknown)}; use "stop_at", "max_duration" and "grace_s"'
        )
    stop_at = raw.get("stop_at")
    duration = raw.get("max_duration")
    grace = raw.get("grace_s", DEFAULT_GRACE_S)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= 3600:
        raise ConfigError(f"{where}: backup.window.grace_s is {grace!r}; give seconds from 0 to 3600")
    return Window(
        stop_at=None if stop_at in (None, "") else _in(where, parse_stop_at, stop_at, "backup.window.stop_at"),
        max_duration_s=None
        if duration in (None, "")
        else _in(where, parse_duration, duration, "backup.window.max_duration"),
        grace_s=float(grace),
    )


def _in(where: str, parse: Any, value: Any, key: str) -> Any:
    try:
        return parse(value, key)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def with_flags(window: Window, stop_at: str | None, max_duration: str | None) -> Window:
    """The config's window with `--stop-at` / `--max-duration` taking the place of its keys."""
    return Window(
        stop_at=parse_stop_at(stop_at, "--stop-at") if stop_at is not None else window.stop_at,
        max_duration_s=parse_duration(max_duration, "--max-duration")
        if max_duration is not None
        else window.max_duration_s,
        grace_s=window.grace_s,
    )


def next_stop(now: datetime, stop_at: tuple[int, int]) -> datetime:
    """The first moment at `stop_at` after `now` (same zone as `now`): today's if still ahead,
    else tomorrow's. `now` is naive local time (`datetime.now()`) or aware."""
    hour, minute = stop_at
    today = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if today > now:
        return today
    tomorrow = (now + timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return tomorrow


def window_seconds(window: Window, now: datetime) -> float | None:
    """Seconds from `now` to the window's end (the earlier of its two limits), None without one."""
    ends = []
    if window.stop_at is not None:
        # Through timestamps: a naive local `now` then counts a DST change in between correctly.
        ends.append(next_stop(now, window.stop_at).timestamp() - now.timestamp())
    if window.max_duration_s is not None:
        ends.append(window.max_duration_s)
    return min(ends) if ends else None


def format_duration_s(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
