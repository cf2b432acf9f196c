"""An HTTP sink that reads each connection at a set pace: S3 across a WAN, as one upload stream
sees it. Used by tests/test_streamed_body.py (in a thread of the test process) and by
benchmarks/slow_server_cpu.py (in a child process)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from typing import cast


class PacedReader(asyncio.Protocol):
    """Reads at `rate` bytes/s (pausing the transport while ahead; 0: as fast as it can) and
    answers 200 with an ETag once a request's whole body is in; calls `on_body` for each."""

    def __init__(self, rate: float, on_body: Callable[[], None] = lambda: None) -> None:
        self.rate, self.on_body = rate, on_body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        self.head, self.left = b"", -1
        self.got, self.started = 0, time.monotonic()

    def data_received(self, data: bytes) -> None:
        if self.rate:
            self.got += len(data)
            ahead_s = self.got / self.rate - (time.monotonic() - self.started)
            if ahead_s > 0.002:
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(ahead_s, self.transport.resume_reading)
        if self.left < 0:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.left = next(
                int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")
            )
            self.head = b""
        self.left -= len(data)
        if self.left <= 0:
            self.left = -1
            self.on_body()
            self.transport.write(b'HTTP/1.1 200 OK\r\nETag: "x"\r\nContent-Length: 0\r\n\r\n')


class ThreadedSink:
    """A PacedReader server on 127.0.0.1 in a thread of its own, with its own event loop, so the
    client's loop thread spends nothing on the server's side."""

    def __init__(self, rate: float, ssl_context: ssl.SSLContext | None) -> None:
        self.rate, self.ssl_context = rate, ssl_context
        self.port = 0
        self.bodies = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ThreadedSink:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _counted(self) -> None:
        self.bodies += 1

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        server = loop.run_until_complete(
            loop.create_server(lambda: PacedReader(self.rate, self._counted), "127.0.0.1", 0, ssl=self.ssl_context)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())  # connections still being accepted finish first
        loop.close()
