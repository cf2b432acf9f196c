"""A byte budget for file contents held in memory, shared by every upload.

Owns the bound on memory: a small file holds its size while it is read and sent, a multipart part
its length. Waiters are served first come, first served, so a large part is never starved by a
stream of small files. Lives on the event loop: no locks, no threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


class ByteBudget:
    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = max(1, total_bytes)
        self._free = self.total_bytes
        self._waiters: deque[tuple[int, anyio.Event]] = deque()

    @property
    def free_bytes(self) -> int:
        return self._free

    async def acquire(self, n: int) -> int:
        """Wait until `n` bytes (at most the whole budget) are free and take them; returns the amount
        taken, to be given back with release()."""
        n = max(0, min(n, self.total_bytes))
        if not self._waiters and self._free >= n:
            self._free -= n
            return n
        entry = (n, anyio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
            else:  # granted just as we were cancelled: give it back
                self.release(n)
            raise
        return n

    def release(self, n: int) -> None:
        self._free += n
        while self._waiters and self._waiters[0][0] <= self._free:
            amount, event = self._waiters.popleft()
            self._free -= amount
            event.set()

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        taken = await self.acquire(n)
        try:
            yield
        finally:
            self.release(taken)
