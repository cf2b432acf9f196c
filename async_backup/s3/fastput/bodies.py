"""Request bodies of the fast path: aiohttp payloads written from the caller's memory or file.

Owns how a body reaches the socket: in slices that are views of the caller's buffers (no copy in
Python), a stall clock that fails a send the server stopped reading, and the streamed file range
(`BodyStream`) read chunk by chunk through two buffers lent by their owner. With a bandwidth limit,
every body (botocore's too: `PacedFileBody`) asks the run's limiter before each step it writes. Knows
nothing of signing, S3's replies or retries. Must not import botocore or aiobotocore.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Protocol

import aiohttp
import aiohttp.abc
import aiohttp.payload
import anyio

from ..bandwidth import Limiter

# A body goes to the socket in slices of this size, each a view of the caller's buffer. Handed over
# whole, a 16 MiB part is copied two or three times on the event loop's thread (asyncio's
# writelines joins headers and body into new bytes, the unsent rest is copied again, then appended to
# the transport's buffer); in slices, only the unsent rest of one slice is ever copied.
BODY_SLICE_BYTES = 256 * 1024
TLS_SLICE_BYTES = 16 * 1024  # one TLS record: see write_slice_bytes
TLS_WRITE_BUFFER_HIGH = 64 * 1024  # ciphertext a TLS transport may hold before it pauses writes


class SlicedBody(aiohttp.BytesPayload):
    """A request body written from the caller's memory in BODY_SLICE_BYTES views, waiting for the
    socket to drain between them; the Content-Length is the whole body's."""

    def __init__(
        self,
        body: bytes | bytearray | memoryview,
        stall_timeout_s: float | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        super().__init__(body, content_type="application/octet-stream")
        self._view = memoryview(body).cast("B")
        self._stall_timeout_s = stall_timeout_s  # as StreamedBody's
        self._limiter = limiter

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None) -> None:
        view = self._view if content_length is None else self._view[:content_length]
        slice_bytes = write_slice_bytes(writer)
        with stall_clock(self._stall_timeout_s) as clock:
            # Usually one chunk; a file that grew since the walk may be read whole up to the threshold.
            for start in range(0, len(view), BODY_SLICE_BYTES):
                clock.restart()
                chunk = view[start : start + BODY_SLICE_BYTES]
                if self._limiter is None:
                    await _write_in_slices(writer, chunk, slice_bytes)
                else:
                    await _write_paced(writer, chunk, slice_bytes, self._limiter, clock)


class ChunkReader(Protocol):
    async def read_into(self, view: memoryview, position: int) -> int:
        """Fill `view` from `position` of the file as far as one read goes (at least one byte);
        raise the caller's own error when the file ends first."""
        ...


class BufferLease(Protocol):
    """The two chunk buffers a streamed body goes through, lent by their owner (backup's buffer
    pool), which alone reuses or frees them. The body and its sender only say when they must not be
    reused, and ask for fresh ones to go on with."""

    @property
    def buffers(self) -> list[bytearray]: ...

    @property
    def spoiled(self) -> bool: ...

    def spoil(self) -> None:
        """A read in a thread or a send was cut off: the buffers may still be written into or
        referenced, so their owner must never hand them out again."""
        ...

    def renew(self) -> None:
        """When spoiled, fresh buffers in their place (else nothing)."""
        ...


class BodyStream:
    """A body that is a range of an open file, sent chunk by chunk through two lent buffers.

    What it needs from the caller: a reader for the file, the range, and the lease of the two
    buffers. After a failed attempt, `failure` holds why the body could not be read (the file
    changed, vanished or is unreadable), and the lease is spoiled when its buffers may still be
    written into or referenced (a read in a thread or a send that was cut off)."""

    __slots__ = ("failure", "lease", "length", "offset", "reader")

    def __init__(self, reader: ChunkReader, offset: int, length: int, lease: BufferLease) -> None:
        self.reader = reader
        self.offset = offset
        self.length = length
        self.lease = lease
        self.failure: Exception | None = None

    def new_attempt(self) -> None:
        """Ready for another attempt at sending: the last one's failure forgotten, and buffers it
        left spoiled (it was cut off mid-body, so they may still be referenced) replaced by fresh ones."""
        self.failure = None
        self.lease.renew()


class StreamedBody(aiohttp.payload.Payload):
    """One attempt at sending a BodyStream. Each chunk is read into the buffer whose previous chunk
    the transport has let go of, and written as a view of it: no copy of the body in Python.

    aiohttp's read timeout only starts once the body is sent, so a server that stops reading
    mid-body would hold the request forever: a chunk that cannot be handed to the kernel within the
    stall timeout of its read fails the attempt (TimeoutError, retried like a read timeout)."""

    def __init__(
        self, stream: BodyStream, stall_timeout_s: float | None = None, limiter: Limiter | None = None
    ) -> None:
        super().__init__(stream, content_type="application/octet-stream")
        self._size = stream.length
        self._stream = stream
        self._stall_timeout_s = stall_timeout_s
        self._limiter = limiter

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file body has no text form")

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None) -> None:
        stream = self._stream
        remaining = stream.length if content_length is None else min(content_length, stream.length)
        position = stream.offset
        views = [memoryview(b) for b in stream.lease.buffers]
        slice_bytes = write_slice_bytes(writer)
        sent_last = 0
        finished = False
        try:
            with stall_clock(self._stall_timeout_s) as clock:
                for index in itertools.count():
                    if not remaining:
                        break
                    view = views[index % 2]
                    if index >= 2:
                        # This buffer held the chunk before last: the transport must have let go of it.
                        await _until_queued_at_most(writer, sent_last)
                    with clock.reading():
                        n = await stream.reader.read_into(view[: min(len(view), remaining)], position)
                    if n <= 0:
                        raise ValueError("the body's reader returned no bytes before the end of its range")
                    if self._limiter is None:
                        await _write_in_slices(writer, view[:n], slice_bytes)
                    else:
                        await _write_paced(writer, view[:n], slice_bytes, self._limiter, clock)
                    position += n
                    remaining -= n
                    sent_last = n
                # The reply cannot come before S3 has the whole body, so waiting here costs no time.
                await _until_queued_at_most(writer, 0)
            finished = True
        except Exception as exc:
            if not isinstance(exc, (aiohttp.ClientError, OSError)):
                # The file's side (FileChanged, FileUnreadable, ...), not the network's (the reader
                # maps the file's OSErrors to its own errors, so an OSError here is the socket's).
                stream.failure = exc
            raise
        finally:
            if not finished:
                stream.lease.spoil()
            for v in views:
                v.release()


async def _write_in_slices(writer: aiohttp.abc.AbstractStreamWriter, view: memoryview, slice_bytes: int) -> None:
    """Hand `view` to the writer in views of `slice_bytes`."""
    for start in range(0, len(view), slice_bytes):
        await writer.write(view[start : start + slice_bytes])


async def _write_paced(
    writer: aiohttp.abc.AbstractStreamWriter,
    view: memoryview,
    slice_bytes: int,
    limiter: Limiter,
    clock: StallClock | None = None,
) -> None:
    """Hand `view` to the writer in the limiter's steps, each once the limiter lets it go. The
    wait for the limiter holds the stall clock off, as a read of the file does: a body paced by
    the limit is not a server that stopped reading."""
    start = 0
    while start < len(view):
        piece = view[start : start + limiter.step_bytes()]
        if not limiter.take_now(len(piece)):
            if clock is None:
                await limiter.acquire(len(piece))
            else:
                with clock.reading():
                    await limiter.acquire(len(piece))
        await _write_in_slices(writer, piece, slice_bytes)
        start += len(piece)


class PacedFileBody(aiohttp.payload.Payload):
    """A body botocore built (a file object in memory: the Body it turned into a BytesIO, or its
    aws-chunked wrapper), read and written in the limiter's steps. It seeks as its file does, so
    botocore can rewind it for a retry."""

    def __init__(self, fileobj: IO[bytes], limiter: Limiter, size: int | None) -> None:
        super().__init__(fileobj, content_type="application/octet-stream")
        self._file = fileobj
        self._limiter = limiter
        self._size = size

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a paced body has no text form")

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        slice_bytes = write_slice_bytes(writer)
        while data := self._file.read(self._limiter.step_bytes()):
            await self._limiter.acquire(len(data))
            await _write_in_slices(writer, memoryview(data), slice_bytes)


class StallClock:
    """A TimeoutError once a body's send has stalled for `timeout_s`.

    One cancel scope covers the whole body. Its deadline is `timeout_s` after the last read of the
    file ended, so each chunk must be handed to the kernel within the timeout, counted from when it
    was read; while the file is read the deadline is held off (a slow disk is not a stalled server).
    A scope per write instead cost about a tenth of a TLS upload's CPU (entering one asks anyio which
    loop runs, and that costs a getpid)."""

    def __init__(self, scope: anyio.CancelScope, timeout_s: float | None) -> None:
        self._scope = scope
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()  # anyio's asyncio backend keeps time by this clock

    @contextmanager
    def reading(self) -> Iterator[None]:
        if self._timeout_s is None:
            yield
            return
        self._scope.deadline = math.inf
        try:
            yield
        finally:
            self.restart()

    def restart(self) -> None:
        """Start the timeout again from now (a new chunk is on its way)."""
        if self._timeout_s is not None:
            self._scope.deadline = self._loop.time() + self._timeout_s


@contextmanager
def stall_clock(timeout_s: float | None) -> Iterator[StallClock]:
    with anyio.fail_after(timeout_s) as scope:
        yield StallClock(scope, timeout_s)


def write_slice_bytes(writer: aiohttp.abc.AbstractStreamWriter) -> int:
    """How much of a body goes to the transport in one write: BODY_SLICE_BYTES, or over TLS
    TLS_SLICE_BYTES, after capping the TLS transport's write buffer.

    The SSL protocol encrypts each write whole into its connection's memory BIO, which keeps the
    largest size it ever held for as long as the connection lives: about 70 KiB per pooled
    connection plus the largest write (benchmarks/tls_connection_memory.py), so one record per
    write. And uvloop lets a TLS transport hold up to 512 KiB of ciphertext before it pushes back
    (plain TCP: 64 KiB), which the BIO then keeps too: capped like plain TCP's."""
    transport = getattr(writer, "transport", None)
    if transport is None or transport.get_extra_info("ssl_object") is None:
        return BODY_SLICE_BYTES
    if transport.get_write_buffer_limits()[1] > TLS_WRITE_BUFFER_HIGH:
        transport.set_write_buffer_limits(high=TLS_WRITE_BUFFER_HIGH, low=TLS_WRITE_BUFFER_HIGH // 4)
    return TLS_SLICE_BYTES


async def _until_queued_at_most(writer: aiohttp.abc.AbstractStreamWriter, limit_bytes: int) -> None:
    """Wait until the transport holds at most `limit_bytes` not yet handed to the kernel (uvloop
    keeps references to written buffers until then; asyncio copies, but is waited for the same).

    The transport's own flow control does the waiting: its write-buffer limits are set to
    `limit_bytes` meanwhile, so it pauses the connection's protocol while it holds more and resumes
    it once it holds no more, and drain() sleeps until then. Polling instead cost a whole core once
    S3 read slower than the loop could write (8 s of CPU per GB at 25 MB/s per connection)."""
    transport = getattr(writer, "transport", None)
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the connection closed while the body was sent")
    if transport.get_write_buffer_size() <= limit_bytes:
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=limit_bytes, low=limit_bytes)
    try:
        idle_s = 0.001
        while transport.get_write_buffer_size() > limit_bytes:
            if transport.is_closing():
                raise ConnectionResetError("the connection closed while the body was sent")
            await writer.drain()
            if transport.get_write_buffer_size() > limit_bytes:
                # Not paused after all (a transport that pauses only on its next write): wait a
                # little, longer each time, rather than spin.
                await anyio.sleep(idle_s)
                idle_s = min(2 * idle_s, 0.05)
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


Body = bytes | bytearray | memoryview | BodyStream
