"""The window's end inside a run: from then on no upload starts, and the uploads in flight either
finish within the grace or are cut.

Owns the uploads in flight (`Flight`: its size, its start, the bytes of its parts S3 confirmed),
the estimate made at the window's end (bytes left over the rate measured for that upload, else the
run's rate shared by the uploads in flight), the one place where an upload is cut (`Cutoff.cut`),
and the count of what is left for the next run. The pipeline opens a flight around each upload;
the upload policy sends inside `sending()`, which a cut cancels; upload.py reports each confirmed
part through `part_confirmed`. A cut shows to the policy's caller as `WindowCut`; a multipart
upload cut so goes through upload.py's handling of a cancellation (kept open for the next run once
S3 holds a part of it, else aborted), and `current_flight().cut` tells that the window, not a
signal, stopped it.

Imports anyio and the clock only: nothing of S3, the cache or the disk.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import anyio

log = logging.getLogger(__name__)


class WindowCut(Exception):
    """An upload was cut by the window's end: it is left for the next run, not a failure."""


class Flight:
    """One upload in flight: what the estimate at the window's end reads, and how it is cut."""

    __slots__ = ("_scope", "confirmed_bytes", "cut", "size_bytes", "started")

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.started = time.monotonic()
        self.confirmed_bytes = 0  # parts of a multipart upload S3 confirmed
        self.cut = False
        self._scope: anyio.CancelScope | None = None

    def seconds_left(self, now: float, shared_rate: float) -> float:
        """Bytes left over this upload's own rate, else over its share of the run's; inf when unknown."""
        elapsed = now - self.started
        rate = self.confirmed_bytes / elapsed if self.confirmed_bytes and elapsed > 0 else shared_rate
        left = max(0, self.size_bytes - self.confirmed_bytes)
        if left == 0:
            return 0.0
        return left / rate if rate > 0 else math.inf


_CURRENT: ContextVar[Flight | None] = ContextVar("async_backup_flight", default=None)


def current_flight() -> Flight | None:
    """The upload in flight in this task (tasks it starts inherit it), if a window is set."""
    return _CURRENT.get()


def part_confirmed(size_bytes: int) -> None:
    """S3 confirmed a part of the current upload: its rate is measured from these."""
    flight = _CURRENT.get()
    if flight is not None:
        flight.confirmed_bytes += size_bytes


@contextmanager
def sending() -> Iterator[None]:
    """The part of an upload a cut may cancel: the requests that send it. What follows (recording
    what S3 confirmed) is never cut. Raises WindowCut when the cut cancelled it; an upload that
    finished in spite of the cut counts as finished."""
    flight = _CURRENT.get()
    if flight is None:
        yield
        return
    if flight.cut:
        raise WindowCut
    with anyio.CancelScope() as scope:
        flight._scope = scope
        try:
            yield
        finally:
            flight._scope = None
    if scope.cancelled_caught:
        raise WindowCut


class Cutoff:
    """The run's window: `closed` once it ended; `left_files` / `left_bytes` what it left undone."""

    def __init__(self, ends_at: float | None, grace_s: float, confirmed_bytes: Callable[[], int]) -> None:
        self.ends_at = ends_at  # wall-clock time, None without a window
        self.grace_s = grace_s
        self._confirmed_bytes = confirmed_bytes  # what S3 confirmed this run, whole files
        self._started = time.monotonic()
        self.closed = False
        self.flights: set[Flight] = set()
        self.left_files = 0
        self.left_bytes = 0
        self.cut_count = 0
        self._landed = anyio.Event()  # set when, after the window's end, no upload is in flight

    @contextmanager
    def flight(self, size_bytes: int) -> Iterator[Flight | None]:
        """Around one upload: registered for the estimate and cuttable while it sends."""
        if self.ends_at is None:
            yield None
            return
        flight = Flight(size_bytes)
        self.flights.add(flight)
        token = _CURRENT.set(flight)
        try:
            yield flight
        finally:
            _CURRENT.reset(token)
            self.flights.discard(flight)
            if self.closed and not self.flights:
                self._landed.set()

    def leave(self, size_bytes: int) -> None:
        """A planned upload not done because of the window: counted for the next runs."""
        self.left_files += 1
        self.left_bytes += size_bytes

    async def watch(self) -> None:
        """Sleep until the window's end, close it, then cut what is still sending after the grace.
        The pipeline cancels this task once every upload is done."""
        if self.ends_at is None:
            await anyio.sleep_forever()
            return
        await anyio.sleep(max(0.0, self.ends_at - time.time()))
        self.close()
        if self.flights:
            with anyio.move_on_after(self.grace_s):
                await self._landed.wait()
        for flight in list(self.flights):
            self.cut(flight, "still sending at the grace's end")
        await anyio.sleep_forever()

    def close(self) -> None:
        """The window's end: no upload starts from now on; each one in flight that would not finish
        within the grace is cut."""
        self.closed = True
        now = time.monotonic()
        elapsed = max(1e-3, now - self._started)
        in_flight = sum(f.confirmed_bytes for f in self.flights)
        run_rate = (self._confirmed_bytes() + in_flight) / elapsed
        shared = run_rate / max(1, len(self.flights))
        kept = 0
        for flight in list(self.flights):
            if flight.seconds_left(now, shared) > self.grace_s:
                self.cut(flight, "would not finish within the grace")
            else:
                kept += 1
        log.warning(
            "the window ended: no upload starts from now on; %d uploads in flight may finish within %g s, %d were cut",
            kept,
            self.grace_s,
            self.cut_count,
        )

    def cut(self, flight: Flight, why: str) -> None:
        """The one place an upload is cut by the window: marked, then its sending cancelled (it
        raises WindowCut to the policy's caller; a multipart upload goes through its cleanup)."""
        if flight.cut:
            return
        flight.cut = True
        self.cut_count += 1
        log.debug("upload of %d bytes cut by the window: %s", flight.size_bytes, why)
        if flight._scope is not None:
            flight._scope.cancel()
