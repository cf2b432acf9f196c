"""The cache's one writer: confirmed changes batched into short transactions, shielded from cancellation.

A backup run's rows (`Stored`, `Removed`, `Evidence`) and what it learnt about a target
(`DeviceSeen`, `MountsSeen`, `UnsettledKept`) come here as `Change`s over one stream, as do the
rows a lost cache's rebuild proves by HeadObject (`recovery.run`, over a stream of its own); the few
writes that must commit at once or happen outside that stream go through `writes.CacheWrites`.

Owns the batching (rows and seconds per transaction) and the rule that a cancelled run still
records what S3 confirmed. Reads nothing; writes only through `StateStore.apply`, whose storage
failures are already our FatalError.
"""

from __future__ import annotations

import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream as ObjectReceiveStream

from .store import Change, StateStore

WRITE_BATCH_ROWS = 500


WRITE_BATCH_S = 0.5


async def run_writer(store: StateStore, changes: ObjectReceiveStream[Change]) -> None:
    """The one task that writes the cache: batches confirmed changes into short transactions.

    A batch is flushed when it holds WRITE_BATCH_ROWS changes or WRITE_BATCH_S seconds after its
    first change, and once more when every sender has closed its end of the stream. When the run
    is cancelled (SIGTERM, a fatal error) whatever S3 confirmed and is already queued is still
    written: the cache may only under-record, never lose a confirmed upload.
    """
    batch: list[Change] = []
    deadline = math.inf
    with changes:
        try:
            while True:
                timeout = max(0.0, deadline - anyio.current_time()) if batch else math.inf
                with anyio.move_on_after(timeout):
                    try:
                        change = await changes.receive()
                    except anyio.EndOfStream:
                        break
                    if not batch:
                        deadline = anyio.current_time() + WRITE_BATCH_S
                    batch.append(change)
                    if len(batch) < WRITE_BATCH_ROWS:
                        continue
                await _flush(store, batch)
                batch = []
        finally:
            while True:
                try:
                    batch.append(changes.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            if batch:
                await _flush(store, batch)


async def _flush(store: StateStore, batch: list[Change]) -> None:
    # Shielded: a cancelled run still records what S3 already confirmed. A storage failure is a
    # FatalError from StateStore.apply: the run stops with its one line.
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(store.apply, batch)
