"""SIGINT and SIGTERM: how every command stops on them, in one place.

Owns the three ways a signal is taken: outside an event loop's watch it raises KeyboardInterrupt
(`stop_like_ctrl_c`: exit 130 without a traceback, for every command); while a command's work
runs, `run_until_signal` cancels the work gracefully and keeps watching until it has wound down;
while a backup's report is published, `LateSignals` only notes them. Imports `errors` and anyio,
nothing of S3, the cache or the disk.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .errors import unwrapped_group

log = logging.getLogger("async_backup")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_like_ctrl_c(*signums: int) -> None:
    """Until an event loop watches for them, these signals stop the tool like Ctrl-C."""
    for signum in signums:
        signal.signal(signum, raise_interrupt)


async def run_until_signal(work: Callable[[], Awaitable[object]], *, stopping: str, again: str) -> bool:
    """Run `work`; SIGINT or SIGTERM cancels it gracefully. Returns True when interrupted.

    `stopping` and `again` are the warnings logged for the first signal and for any later one
    (`%s` is the signal's name). The signals are watched until the work has wound down, shielded
    cleanups included: a second signal then only says so, it cannot kill the command before its
    closing report."""
    interrupted = False
    async with unwrapped_group() as tg:
        work_scope = anyio.CancelScope()

        async def watch_signals() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(*SIGNALS) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if interrupted:
                        log.warning(again, name)
                        continue
                    interrupted = True
                    log.warning(stopping, name)
                    work_scope.cancel()

        tg.start_soon(watch_signals)
        with work_scope:
            await work()
        tg.cancel_scope.cancel()
    # Leaving the receiver gave the signals back to their defaults: stop like Ctrl-C again.
    stop_like_ctrl_c(*SIGNALS)
    return interrupted


class LateSignals:
    """While a run's closing report is written, SIGINT and SIGTERM are noted, not raised: an
    interrupted publication would leave monitoring without a report. `received` tells the caller,
    whose exit code is then 130."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> LateSignals:
        for signum in SIGNALS:
            self._old[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, _frame: object) -> None:
        self.received = signum
        log.warning("%s received: the run report is finished first", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
