"""A recording reverse proxy for S3 on loopback: counts requests by S3 operation, streams everything.

Why a proxy rather than the server's own log: it counts exactly what each client put on the wire
(retries included) in the same way for every server (moto, Ceph, MinIO, an external endpoint), while
radosgw's ops log and moto's request log differ in format and in what they record. To stay out of the
way it runs in its own process (its own GIL and CPU, reported separately), never buffers a body (request
bodies are relayed in slices of at most ``SLICE_BYTES``; responses are piped as raw bytes, unparsed),
and parses only request heads and chunk lines. Its overhead is measured by ``--proxy-overhead``.

Each client connection gets its own upstream connection, so keep-alive and ``Expect: 100-continue``
work unchanged: the upstream's ``100 Continue`` flows back through the raw response pipe while the
request side waits to relay the body. The Host header is forwarded as is, so SigV4 signatures (made for
the proxy's address) still verify upstream.

Control: ``GET /__bench__/counts`` answers the counters as JSON, ``?reset=1`` also zeroes them.
(``__bench__`` is not a valid bucket name, so it never collides with S3 traffic.)

Run: ``python -m benchmarks.proxy --upstream http://127.0.0.1:PORT --port-file FILE``.
Imports nothing from the harness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import urllib.parse
from collections import Counter
from pathlib import Path

SLICE_BYTES = 256 * 1024
HEAD_LIMIT_BYTES = 1024 * 1024
CONTROL_PREFIX = "/__bench__/"


def classify(method: str, target: str, headers: dict[str, str]) -> str:
    """The S3 operation of a path-style request (virtual-host style is not used by the harness)."""
    parsed = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    parts = parsed.path.lstrip("/").split("/", 1)
    bucket = parts[0]
    key = parts[1] if len(parts) > 1 else ""
    copy = "x-amz-copy-source" in headers
    if not bucket:
        return "ListBuckets"
    if not key:
        return _bucket_op(method, query)
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        if copy:
            return "CopyObject"
        return "PutObject" if not query else "PutObjectSubresource"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        if "restore" in query:
            return "RestoreObject"
        return "PostObjectOther"
    if method == "GET":
        if "uploadId" in query:
            return "ListParts"
        plain = not query or "versionId" in query or "partNumber" in query
        return "GetObject" if plain else "GetObjectSubresource"
    if method == "HEAD":
        return "HeadObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return f"{method}Object"


def _bucket_op(method: str, query: dict[str, list[str]]) -> str:
    if method == "GET":
        if "uploads" in query:
            return "ListMultipartUploads"
        if "versions" in query:
            return "ListObjectVersions"
        if "location" in query:
            return "GetBucketLocation"
        subresources = set(query) - {
            "list-type",
            "prefix",
            "delimiter",
            "max-keys",
            "marker",
            "continuation-token",
            "start-after",
            "encoding-type",
            "fetch-owner",
        }
        return "GetBucketSubresource" if subresources else "ListObjects"
    if method == "HEAD":
        return "HeadBucket"
    if method == "PUT":
        return "PutBucketSubresource" if query else "CreateBucket"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if method == "DELETE":
        return "DeleteBucketSubresource" if query else "DeleteBucket"
    return f"{method}Bucket"


class Recorder:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.body_bytes: Counter[str] = Counter()
        self.connections = 0

    def snapshot(self, reset: bool) -> dict[str, object]:
        snap: dict[str, object] = {
            "requests": dict(self.requests),
            "body_bytes": dict(self.body_bytes),
            "connections": self.connections,
        }
        if reset:
            self.requests.clear()
            self.body_bytes.clear()
            self.connections = 0
        return snap


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rec = Recorder()

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        u_writer: asyncio.StreamWriter | None = None
        pipe: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    head = await c_reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed its connection between requests
                method, target, headers = _parse_head(head)
                if target.startswith(CONTROL_PREFIX):
                    await self._control(target, c_writer)
                    continue
                if u_writer is None:
                    self.rec.connections += 1
                    u_reader, u_writer = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT_BYTES)
                    pipe = asyncio.create_task(_pipe_raw(u_reader, c_writer))
                op = classify(method, target, headers)
                self.rec.requests[op] += 1
                u_writer.write(head)
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    sent = await _relay_chunked(c_reader, u_writer)
                else:
                    length = int(headers.get("content-length", "0") or 0)
                    sent = await _relay_exact(c_reader, u_writer, length)
                decoded = headers.get("x-amz-decoded-content-length")
                self.rec.body_bytes[op] += int(decoded) if decoded and decoded.isdigit() else sent
                await u_writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if pipe is not None:
                # Let the last response finish flowing back before tearing the pair down.
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError, asyncio.CancelledError):
                    if u_writer is not None and u_writer.can_write_eof():
                        u_writer.write_eof()
                    await asyncio.wait_for(asyncio.shield(pipe), timeout=5)
                pipe.cancel()
            for w in (u_writer, c_writer):
                if w is not None:
                    w.close()

    async def _control(self, target: str, writer: asyncio.StreamWriter) -> None:
        parsed = urllib.parse.urlsplit(target)
        reset = "reset=1" in parsed.query
        body = json.dumps(self.rec.snapshot(reset)).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _relay_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> int:
    left = n
    while left > 0:
        data = await reader.read(min(left, SLICE_BYTES))
        if not data:
            raise asyncio.IncompleteReadError(b"", left)
        writer.write(data)
        left -= len(data)
        await writer.drain()
    return n


async def _relay_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the empty line that ends the message
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    return total
        await _relay_exact(reader, writer, size + 2)  # chunk data and its CRLF
        total += size


async def _pipe_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while True:
            data = await reader.read(SLICE_BYTES)
            if not data:
                return
            writer.write(data)
            await writer.drain()


async def serve(upstream: str, port: int, port_file: Path | None) -> None:
    parsed = urllib.parse.urlsplit(upstream)
    if parsed.scheme != "http" or not parsed.hostname:
        raise SystemExit("the proxy relays plain http only (loopback servers)")
    proxy = Proxy(parsed.hostname, parsed.port or 80)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", port, limit=HEAD_LIMIT_BYTES, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(bound))
        tmp.rename(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the S3 server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", type=Path, default=None)
    args = ap.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # optional: a faster loop when installed

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.upstream, args.port, args.port_file))


if __name__ == "__main__":
    main()
