"""Client CPU per PutObject, measured against a null S3 sink, one setting at a time.

`python -m benchmarks.request_cost [--requests N]` starts a tiny HTTP server in a child process
that answers every request like S3 answers a PutObject (200, an ETag), then sends N PutObject
requests through async-backup's own S3 adapter with each client setting and prints the client's
CPU milliseconds per request (the sink's CPU is not counted). This isolates the per-request path
(botocore's endpoint resolution, signing, parameter validation, checksums, event hooks and the
event loop) from any server's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

SINK = r"""
import asyncio, sys
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line.lower().startswith(b"expect: 100-continue"):
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if length:
                await reader.readexactly(length)
            writer.write(b'HTTP/1.1 200 OK\r\nETag: "0123456789abcdef0123456789abcdef"\r\nContent-Length: 0\r\n\r\n')
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure(
    endpoint: str, requests: int, concurrency: int, checksum: str, validate: bool, expect: bool, cached_ua: bool = False
) -> float:
    from async_backup.config import AwsSettings, Tuning
    from async_backup.s3 import PartChecksum, client_config

    aws = AwsSettings("AKIDEXAMPLE", "secret", "us-east-1", endpoint, checksum_calculation=checksum)  # type: ignore[arg-type]
    config = client_config(aws, Tuning(workers=concurrency))
    config = config.merge(type(config)(parameter_validation=validate))
    from aiobotocore.session import get_session

    body = os.urandom(16 * 1024)
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", config=config
    ) as client:
        from async_backup.s3 import S3, cache_user_agent, skip_expect_continue

        if not expect:
            skip_expect_continue(client)
        if cached_ua:
            cache_user_agent(client)
        s3 = S3(client, aws)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await s3.put_object(
                    "bench",
                    f"srv/images/d{i % 50}/page-{i:06d}.tif",
                    body,
                    storage_class="DEEP_ARCHIVE",
                    metadata={"mtime": "1700000000.000000000"},
                    checksum=PartChecksum.of(body, s3.checksum_algorithm),
                )

        await asyncio.gather(*(worker() for _ in range(4)))  # warm-up connections and caches
        for i in range(requests):
            queue.put_nowait(i)
        began = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.process_time() - began) * 1000 / requests


async def _measure_tool(endpoint: str, requests: int, concurrency: int) -> float:
    """The tool's own client as a backup run opens it: settings above plus the hand-signed PutObject."""
    from async_backup.config import AwsSettings, Tuning
    from async_backup.s3 import PartChecksum, open_s3

    aws = AwsSettings("AKIDEXAMPLE", "secret", "us-east-1", endpoint)
    body = os.urandom(16 * 1024)
    async with open_s3(aws, Tuning(workers=concurrency)) as s3:
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await s3.put_object(
                    "bench",
                    f"srv/images/d{i % 50}/page-{i:06d}.tif",
                    body,
                    storage_class="DEEP_ARCHIVE",
                    metadata={"mtime": "1700000000.000000000"},
                    checksum=PartChecksum.of(body, s3.checksum_algorithm),
                )

        for i in range(200):
            queue.put_nowait(i)
        await asyncio.gather(*(worker() for _ in range(4)))
        for i in range(requests):
            queue.put_nowait(i)
        began = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.process_time() - began) * 1000 / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.request_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    port = _free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    time.sleep(0.5)
    endpoint = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, float]] = []
    try:
        for label, loop, checksum, validate, expect, cached_ua in [
            ("botocore defaults (asyncio, CRC32, validation on)", "asyncio", "when_supported", True, True, False),
            ("+ parameter_validation off", "asyncio", "when_supported", False, True, False),
            ("+ Content-MD5 instead of CRC32 (when_required)", "asyncio", "when_required", False, True, False),
            ("+ uvloop", "uvloop", "when_supported", False, True, False),
            ("+ no Expect: 100-continue", "uvloop", "when_supported", False, False, False),
            ("+ User-Agent built once", "uvloop", "when_supported", False, False, True),
        ]:
            if loop == "uvloop":
                try:
                    import uvloop
                except ImportError:
                    rows.append((label + ": uvloop not installed", float("nan")))
                    continue
                cost = uvloop.run(
                    _measure(endpoint, args.requests, args.concurrency, checksum, validate, expect, cached_ua)
                )
            else:
                cost = asyncio.run(
                    _measure(endpoint, args.requests, args.concurrency, checksum, validate, expect, cached_ua)
                )
            rows.append((label, cost))
        try:
            import uvloop

            rows.append(
                (
                    "+ PutObject signed by async-backup (directput.py, the default with static keys)",
                    uvloop.run(_measure_tool(endpoint, args.requests, args.concurrency)),
                )
            )
        except ImportError:
            rows.append(
                (
                    "+ PutObject signed by async-backup",
                    asyncio.run(_measure_tool(endpoint, args.requests, args.concurrency)),
                )
            )
    finally:
        sink.terminate()
        sink.wait()
    print(f"client CPU per PutObject of 16 KiB, {args.requests} requests, {args.concurrency} in flight:")
    for label, cost in rows:
        print(f"  {cost:6.3f} ms  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
