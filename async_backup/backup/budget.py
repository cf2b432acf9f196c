"""A byte budget for file contents held in memory, shared by every upload, and the chunk buffers
that streamed bodies reuse.

Owns the bound on memory: a small file holds its size while it is read and sent; a streamed body
(a larger file, or a multipart part) holds two chunk buffers, which stay charged while they wait
idle in the pool for the next stream, so reusing them costs no new memory. Waiters are served
first come, first served, so a stream is never starved by a run of small files; idle buffers are
dropped before anyone waits. Lives on the event loop: no locks, no threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio


class ByteBudget:
    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = max(1, total_bytes)
        self._free = self.total_bytes
        self._waiters: deque[tuple[int, anyio.Event]] = deque()
        # Called with the bytes missing before anyone waits: gives back memory held idle (the pool's).
        self.reclaim: Callable[[int], None] | None = None

    @property
    def has_waiters(self) -> bool:
        return bool(self._waiters)

    @property
    def free_bytes(self) -> int:
        return self._free

    async def acquire(self, n: int) -> int:
        """Wait until `n` bytes (at most the whole budget) are free and take them; returns the amount
        taken, to be given back with release()."""
        n = max(0, min(n, self.total_bytes))
        if self._free < n and self.reclaim is not None:
            self.reclaim(n - self._free)
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


class Lease:
    """The two chunk buffers of one streamed body (one is sent while the next chunk is read), lent
    by the pool, which alone makes, reuses and frees them.

    `async with pool.lease() as lease:` takes them (waiting for the budget) and, at the end, gives
    them back to the pool, or drops them (their charge given back) when the block failed or the
    lease was spoiled. Whoever uses the buffers (the body, the sender, a checksum pass) frees
    nothing: it says `spoil()` when a read or a send was cut off and may still write into or send
    from them, and `renew()` to go on with fresh ones. A lease made with buffers and no pool is a
    one-off: its maker keeps the buffers."""

    __slots__ = ("_pool", "buffers", "spoiled")

    def __init__(self, buffers: list[bytearray], pool: BufferPool | None = None) -> None:
        self.buffers = buffers
        self.spoiled = False
        self._pool = pool

    def spoil(self) -> None:
        """The buffers may still be written into or referenced: never hand them out again."""
        self.spoiled = True

    def renew(self) -> None:
        """After `spoil()`, fresh buffers of the same size for another attempt; they take over the
        spoiled ones' charge (the spoiled ones are dropped, never reused). Else nothing."""
        if self.spoiled:
            self.buffers = [bytearray(len(b)) for b in self.buffers]
            self.spoiled = False

    async def __aenter__(self) -> Lease:
        if self._pool is not None:
            self.buffers = await self._pool.take_buffers()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._pool is None:
            return
        if exc_type is not None or self.spoiled:
            self._pool.discard(self)  # a read or a send may have been cut off mid-way
        else:
            self._pool.give(self)


class BufferPool:
    """Chunk buffers of `chunk_bytes` for streamed bodies, reused from one body to the next.

    Reused memory is memory the kernel has already mapped: a fresh buffer per body would cost a page
    fault per 4 KiB of every body. Every buffer is charged to the budget from its allocation until
    it is dropped, idle or in use."""

    def __init__(self, budget: ByteBudget, chunk_bytes: int) -> None:
        self.budget = budget
        self.chunk_bytes = chunk_bytes
        self._idle: list[bytearray] = []
        self.allocated = 0  # buffers made since the start: stays at two per stream ever in flight at once
        budget.reclaim = self._drop_idle

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def lease(self) -> Lease:
        """Two buffers for one body, taken on `async with` and given back or dropped at its end."""
        return Lease([], self)

    async def take_pair(self) -> Lease:
        """A lease holding its buffers already, to be ended with give() or discard()."""
        return Lease(await self.take_buffers(), self)

    async def take_buffers(self) -> list[bytearray]:
        reused = [self._idle.pop() for _ in range(min(2, len(self._idle)))]
        missing = 2 - len(reused)
        if missing:
            try:
                await self.budget.acquire(missing * self.chunk_bytes)
            except BaseException:
                self._keep(reused)
                raise
        self.allocated += missing
        return reused + [bytearray(self.chunk_bytes) for _ in range(missing)]

    def give(self, lease: Lease) -> None:
        """Back to the pool: kept idle for the next body, or dropped when someone waits for memory."""
        self._keep(lease.buffers)
        lease.buffers = []

    def discard(self, lease: Lease) -> None:
        """Drop a lease's buffers that something may still write into or send from (a read or a send
        that was cancelled or failed mid-way): never handed out again, their charge given back."""
        self.budget.release(len(lease.buffers) * self.chunk_bytes)
        lease.buffers = []

    def _keep(self, buffers: list[bytearray]) -> None:
        if self.budget.has_waiters:
            self.budget.release(len(buffers) * self.chunk_bytes)
        else:
            self._idle.extend(buffers)

    def _drop_idle(self, missing_bytes: int) -> None:
        dropped = 0
        while self._idle and dropped < missing_bytes:
            self._idle.pop()
            dropped += self.chunk_bytes
        if dropped:
            self.budget.release(dropped)
