"""The bandwidth limiter: one pace for every request body a run sends, on both request paths.

Owns the shared reservation of send time. A body's writer asks `acquire(n)` before it hands n
bytes to the socket; the limiter answers at once or sleeps (the event loop runs on meanwhile)
until the bytes before it have had their time at the rate in force. It is a token bucket holding
one chunk (GCRA, "generic cell rate algorithm"): each acquire reserves the next n/rate seconds of
the link, so waiting writers go in the order they asked, one step each, round and round, and no
writer can run ahead by more than the step it holds. Idle time is not saved up into a burst.

The rate comes from the timetable (`settings/bandwidth.py`), looked up again at most once a second,
so a boundary ("19:00,off") takes effect without a restart; bytes already reserved at the old rate
keep their times. Without a limit in config.json there is no limiter at all (None), and the bodies
write as before.

Steps: STEPS_PER_S of the rate, within [MIN_STEP_BYTES, MAX_STEP_BYTES]. Each of W bodies in flight
then gets a step every W / STEPS_PER_S seconds at most (136 bodies with the default tuning: 6.8 s),
well inside the time S3 lets a request's connection sit idle before it answers RequestTimeout
(about 20 s), whatever the rate, down to MIN_STEP_BYTES * STEPS_PER_S per second; below that, fewer
workers keep every connection moving. And one chunk cannot burst far past the limit: s3transfer
charges its bandwidth in 256 KB steps for the same reason.

Imports nothing of botocore or aiohttp.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio

from ..settings.bandwidth import Timetable

STEPS_PER_S = 20
MIN_STEP_BYTES = 16 * 1024
MAX_STEP_BYTES = 256 * 1024
RECHECK_S = 1.0  # how often the timetable is asked which rate is in force
# Bytes whose time comes this soon go at once: a sleep of microseconds costs a turn of the event
# loop per step at high rates (a tenth more CPU per GB at full speed), and the sender can never get
# further ahead than this, since every step's time is reserved all the same.
EARLY_S = 0.002


def local_minute_of_day() -> int:
    """The minute of the day on the host's clock, in its time zone (as the operator wrote the table)."""
    now = time.localtime()
    return now.tm_hour * 60 + now.tm_min


class Limiter:
    """The run's one bandwidth limit, shared by every connection and both request paths."""

    def __init__(
        self,
        timetable: Timetable,
        *,
        minute_of_day: Callable[[], int] = local_minute_of_day,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timetable = timetable
        self._minute_of_day = minute_of_day
        self._clock = clock
        self._rate: float | None = None
        self._checked_at = -math.inf
        self._free_at = -math.inf  # when the bytes reserved so far have had their time

    def rate(self) -> float | None:
        """Bytes per second in force now (None: no limit at this hour)."""
        return self._rate_at(self._clock())

    def _rate_at(self, now: float) -> float | None:
        # The timetable is asked at most once every RECHECK_S.
        if now - self._checked_at >= RECHECK_S:
            self._checked_at = now
            self._rate = self.timetable.rate_at(self._minute_of_day())
        return self._rate

    def step_bytes(self) -> int:
        """How many bytes a writer asks for at once at the rate in force."""
        rate = self.rate()
        if rate is None:
            return MAX_STEP_BYTES
        return max(MIN_STEP_BYTES, min(MAX_STEP_BYTES, int(rate / STEPS_PER_S)))

    def take_now(self, n: int) -> bool:
        """Reserve `n` bytes and say True when they may go at once (no limit now, or their time
        comes within EARLY_S); else reserve nothing and say False: `acquire` waits for them."""
        now = self._clock()
        rate = self._rate_at(now)
        if rate is None:
            return True
        start = max(now, self._free_at)
        if start - now > EARLY_S:
            return False
        self._free_at = start + n / rate
        return True

    async def acquire(self, n: int) -> None:
        """Return when `n` more bytes may be sent: at once, or after sleeping until the bytes
        reserved before them have had their time at the rate in force."""
        if self.take_now(n):
            return
        now = self._clock()
        rate = self._rate_at(now)
        if rate is None:  # the limit just ended
            return
        start = max(now, self._free_at)
        end = self._free_at = start + n / rate
        try:
            await anyio.sleep(start - now)
        except BaseException:
            # Cancelled while waiting: hand the time back if nobody reserved after it.
            if self._free_at == end:
                self._free_at = start
            raise
