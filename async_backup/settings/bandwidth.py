"""The bandwidth limit's timetable: `tuning.bandwidth` (and `--bandwidth`) read into rates by time of day.

Owns the accepted forms and the choice of the rate in force at a given time; pure (no clock of its
own, no I/O). The limiter that paces the bytes is `s3/bandwidth.py`.

Forms, in config.json or on the command line:
- a number: bytes per second, flat all day (at least MIN_RATE_BYTES_S, so a bare 5 meant as 5 MB/s
  is caught);
- a rate with a unit: "20MB" (10**6 bytes), "150MiB" (2**20), "500KB", "1GB", an optional "/s";
  a single letter "10M" is rclone's `--bwlimit` reading, MiB;
- "off": no limit;
- a timetable, rclone's form: space-separated `HH:MM,RATE` entries in the host's time zone,
  "06:00,20MB 19:00,off". The entry in force is the last one whose time of day has passed; before
  the first one, the last one of the day before (the table wraps over midnight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

MIN_RATE_BYTES_S = 64 * 1024
KEY = "tuning.bandwidth"
MINUTES_A_DAY = 24 * 60
FIX = 'write bytes per second, a rate such as "20MB" or "150MiB", "off", or a timetable such as "06:00,20MB 19:00,off"'

# Units are bytes; upper or lower case alike. K, M and G alone are binary, as in rclone's --bwlimit.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_RATE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)(?:/s)?", re.IGNORECASE)
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


@dataclass(frozen=True, slots=True)
class Timetable:
    """Rates by time of day: (minute of the day, bytes per second or None for no limit), in order."""

    entries: tuple[tuple[int, float | None], ...]
    text: str  # as written, for logs and the report

    def rate_at(self, minute_of_day: int) -> float | None:
        """The rate in force at this minute of the day (0-1439): the last entry whose time has
        passed, else the day's last entry (in force since the evening before)."""
        current = self.entries[-1][1]
        for start, rate in self.entries:
            if start > minute_of_day:
                break
            current = rate
        return current

    def mean_rate(self, start_minute: int, minutes: int) -> float | None:
        """The mean limit over `minutes` from `start_minute` of the day, for planning; None when
        some of that time has no limit (the rate there is the uplink's, which the table cannot tell)."""
        rates = [self.rate_at((start_minute + m) % MINUTES_A_DAY) for m in range(max(1, minutes))]
        if any(rate is None for rate in rates):
            return None
        return sum(rate for rate in rates if rate is not None) / len(rates)

    @property
    def ever_limited(self) -> bool:
        return any(rate is not None for _, rate in self.entries)


def parse_bandwidth(value: object, where: str = "config.json", key: str = KEY) -> Timetable | None:
    """`tuning.bandwidth` as a timetable; None when there is no limit at any hour (absent or "off").
    Raises ConfigError with one line naming the key and the fix."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: {key} must be a number or a string; {FIX}")
    if isinstance(value, int | float):
        table = Timetable(((0, _checked_rate(float(value), str(value), where, key)),), str(value))
    else:
        table = _parse_text(value.strip(), where, key)
    return table if table.ever_limited else None


def _parse_text(text: str, where: str, key: str) -> Timetable:
    words = text.split()
    if not words:
        raise ConfigError(f"{where}: {key} is empty; {FIX}")
    if "," not in text:  # one rate all day ("20MB", "20 MB/s")
        return Timetable(((0, _rate(text, where, key)),), text)
    entries: list[tuple[int, float | None]] = []
    for word in words:
        clock, sep, rate_text = word.partition(",")
        found = _TIME.fullmatch(clock)
        if not sep or found is None:
            raise ConfigError(f"{where}: {key} entry {word!r} is not HH:MM,RATE; {FIX}")
        hours, minutes = int(found.group(1)), int(found.group(2))
        if hours > 23 or minutes > 59:
            raise ConfigError(f"{where}: {key} entry {word!r} has no such time of day (00:00 to 23:59); {FIX}")
        minute = hours * 60 + minutes
        if entries and minute <= entries[-1][0]:
            raise ConfigError(f"{where}: {key} entry {word!r} is not later than the one before; list times in order")
        entries.append((minute, _rate(rate_text, where, key)))
    return Timetable(tuple(entries), text)


def _rate(text: str, where: str, key: str) -> float | None:
    if text.lower() in ("off", "unlimited"):
        return None
    found = _RATE.fullmatch(text)
    unit = _UNITS.get(found.group(2).lower()) if found else None
    if found is None or unit is None:
        raise ConfigError(f"{where}: {key} rate {text!r} is not understood; {FIX}")
    return _checked_rate(float(found.group(1)) * unit, text, where, key)


def _checked_rate(rate: float, text: str, where: str, key: str) -> float:
    if not MIN_RATE_BYTES_S <= rate < float("inf"):
        raise ConfigError(
            f"{where}: {key} rate {text} is under 64KiB per second (a bare number is bytes per second); "
            'write a unit, such as "5MB", or "off" for no limit'
        )
    return rate
