"""A pool of workers that take the items of one iterator, each item once: verify's HeadObject
fan-out and restore's downloads.

Owns the shape both commands share: `workers` tasks in one task group, each taking the next item
and handling it until none is left. The items come from a spill's cursor (SQLite, blocking), so
the next one is read in a worker thread, by one task at a time; nothing is read ahead, so memory
stays at one item per worker. Imports `errors` and anyio only: nothing of S3, the cache or the disk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import anyio

from .errors import unwrapped_group

T = TypeVar("T")


async def work_through(items: Iterator[T], handle: Callable[[T], Awaitable[None]], workers: int) -> None:
    """Hand each item of `items` to `handle` in one of `workers` tasks; returns when all are handled.

    `handle` catches its items' own failures; one it lets through cancels the others and is
    raised as itself (`unwrapped_group`). With `workers` 0 nothing is read."""
    reading = anyio.Lock()

    async def worker() -> None:
        while True:
            async with reading:  # one reader of the cursor at a time
                item = await anyio.to_thread.run_sync(next, items, None)
            if item is None:
                return
            await handle(item)

    async with unwrapped_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
