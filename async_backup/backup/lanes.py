"""Fair turns across targets: each target's planned uploads wait in a bounded lane of their own,
and the upload workers take them from the lanes by deficit round-robin, counted in bytes.

Owns `Lanes` and `Lane`. Without them, one queue in walk order puts the nightly changes of every
small target behind whatever a huge first upload queued first; with them every target that has
something to send gets its turn, in proportion to its `priority`, however large the others are.
A turn is counted in bytes (plus a fixed cost per file, for the request), not in files: a 50 GB
file weighs as much as 50 GB of small ones, as in deficit round-robin (Shreedhar and Varghese,
1995), where a lane may send as long as its earned credit covers the next item.

A lane is bounded: its producer (the target's walk) waits while the lane is full and goes on as
soon as the workers took one of its items, which happens within its turn however busy the other
lanes are. Workers wait when every lane is empty. A lane is closed by leaving its `with` block
(its walk is done); when every lane is closed and empty, `get` answers None and the workers end,
as with the clones of a memory stream. Alone in the ring a lane is served in order with no
accounting, so a run of one target pays nothing for the turns.

Imports anyio only: nothing of S3, the cache or the disk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
from anyio.lowlevel import checkpoint

T = TypeVar("T")

KiB = 1024
# What a lane earns per turn at priority 1. Small against a large file (a lane then saves its
# credit over several turns), large against a small one (a turn sends a few files at once).
QUANTUM_BYTES = 1024 * KiB
# What one file costs beyond its bytes: its request. Keeps a lane of empty files taking turns
# like any other instead of sending all of them at once.
COST_PER_FILE_BYTES = 64 * KiB


class Lane(Generic[T]):
    """One producer's bounded queue of items; `with lane:` closes it when the producer is done."""

    __slots__ = ("_lanes", "active", "closed", "deficit", "items", "limit", "quantum", "room")

    def __init__(self, lanes: Lanes[T], quantum: int, limit: int) -> None:
        self._lanes = lanes
        self.items: deque[T] = deque()
        self.limit = limit
        self.quantum = quantum
        self.deficit = 0  # bytes this lane may still send in its current turn
        self.active = False  # in the ring: it has items
        self.closed = False
        self.room: anyio.Event | None = None  # set when a full lane gave one item away

    async def put(self, item: T) -> None:
        """Queue `item`, waiting while the lane is full."""
        await self._lanes.put(self, item)

    def __enter__(self) -> Lane[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._lanes.close(self)


class _Waiter(Generic[T]):
    __slots__ = ("event", "item", "lane")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.item: T | None = None
        self.lane: Lane[T] | None = None


class Lanes(Generic[T]):
    """Bounded lanes, one per producer, and the deficit round-robin that empties them.

    `size_of` gives an item's bytes; its cost in a turn is that plus COST_PER_FILE_BYTES."""

    def __init__(self, size_of: Callable[[T], int]) -> None:
        self._size_of = size_of
        self._ring: deque[Lane[T]] = deque()  # lanes with items; the first is the one whose turn it is
        self._waiting: deque[_Waiter[T]] = deque()  # workers waiting for an item; only while the ring is empty
        self._open = 0

    def open(self, *, priority: int, limit: int) -> Lane[T]:
        """A new lane holding at most `limit` items, earning `priority` quanta per turn."""
        self._open += 1
        return Lane(self, QUANTUM_BYTES * max(1, priority), max(1, limit))

    async def put(self, lane: Lane[T], item: T) -> None:
        """Queue `item` in `lane`, waiting while the lane is full."""
        while len(lane.items) >= lane.limit:
            lane.room = anyio.Event()
            await lane.room.wait()
        if self._waiting:  # idle workers, so every lane is empty: no turn to wait for
            waiter = self._waiting.popleft()
            waiter.item, waiter.lane = item, lane
            waiter.event.set()
            return
        lane.items.append(item)
        if not lane.active:
            self._activate(lane)

    def close(self, lane: Lane[T]) -> None:
        if lane.closed:
            return
        lane.closed = True
        self._open -= 1
        if self._open == 0 and not self._ring:
            while self._waiting:  # nothing more will come: each waiting worker gets None
                self._waiting.popleft().event.set()

    async def get(self) -> T | None:
        """The next item by turns; None once every lane is closed and empty."""
        await checkpoint()
        if self._ring:
            return self._take()
        if self._open == 0:
            return None
        waiter: _Waiter[T] = _Waiter()
        self._waiting.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.lane is not None and waiter.item is not None:
                self._give_back(waiter.lane, waiter.item)  # handed over as this worker was cancelled
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise
        return waiter.item

    def _take(self) -> T:
        ring = self._ring
        if len(ring) == 1:  # alone: served in order, no turns to count
            lane = ring[0]
            item = lane.items.popleft()
        else:
            lane, item = self._by_turns()
        if not lane.items:
            ring.popleft()  # the lane served is always the first one
            lane.active = False
            lane.deficit = 0
            if ring:
                ring[0].deficit += ring[0].quantum
        if lane.room is not None and len(lane.items) < lane.limit:
            lane.room.set()
            lane.room = None
        return item

    def _by_turns(self) -> tuple[Lane[T], T]:
        ring = self._ring
        refused = 0
        while True:
            lane = ring[0]
            cost = self._cost(lane.items[0])
            if cost <= lane.deficit:
                lane.deficit -= cost
                return lane, lane.items.popleft()
            refused += 1
            if refused == len(ring):
                # A whole round sent nothing (every lane waits for a large item): give every lane
                # at once the rounds before the one in which the first of them can send.
                refused = 0
                rounds = min(-(-(self._cost(x.items[0]) - x.deficit) // x.quantum) for x in ring)
                for other in ring:
                    other.deficit += (rounds - 1) * other.quantum
            ring.rotate(-1)
            ring[0].deficit += ring[0].quantum

    def _cost(self, item: T) -> int:
        return self._size_of(item) + COST_PER_FILE_BYTES

    def _activate(self, lane: Lane[T]) -> None:
        lane.active = True
        lane.deficit = 0 if self._ring else lane.quantum
        self._ring.append(lane)

    def _give_back(self, lane: Lane[T], item: T) -> None:
        lane.items.appendleft(item)
        if not lane.active:
            self._activate(lane)
