"""Client CPU per GB of streamed bodies against a server that reads at a set pace (issue 13).

`python -m benchmarks.slow_server_cpu [--plain] [--rate-mbs R] [--streams N] [--bodies B]`: a sink
in a child process (uvloop, plain TCP or TLS with a CA made for the run) that reads each connection
at R MB/s (0: as fast as it can) and answers 200 once a body is in; in this process the fast path's
DirectPut sends B bodies of one 64 MiB file, N at a time, each streamed through two 256 KiB
buffers. Prints this process's user and system CPU per 10^9 bytes and the throughput.

A real uplink is slower than the event loop can write: each stream then waits for its connection
to take the next chunk. This is what that wait costs; a wait that polls shows up here as CPU that
grows as the server gets slower.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pathlib
import resource
import ssl
import sys
import tempfile
import time
from typing import Any

import aiohttp
import uvloop
from botocore.credentials import ReadOnlyCredentials

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from pacedsink import PacedReader  # the tests' paced sink
from privateca import CAFiles, make_test_ca  # the tests' CA maker

from async_backup.backup.budget import Lease
from async_backup.disk.read import RangeReader
from async_backup.s3.fastput.bodies import BodyStream
from async_backup.s3.fastput.sending import DirectPut
from async_backup.s3.fastput.signing import BucketEndpoint

MiB = 1024 * 1024
BODY_BYTES = 64 * MiB
CHUNK_BYTES = 256 * 1024


def serve(port_queue: Any, ca: CAFiles | None, rate_mbs: float) -> None:
    """The sink: reads every connection at `rate_mbs` (the tests' PacedReader), in uvloop."""

    async def run() -> None:
        context = None
        if ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(ca.cert_pem, ca.key_pem)
        server = await asyncio.get_running_loop().create_server(
            lambda: PacedReader(rate_mbs * 1e6), "127.0.0.1", 0, ssl=context
        )
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    uvloop.run(run())


async def send(url: str, ca: CAFiles | None, path: str, bodies: int, streams: int) -> tuple[float, float, float]:
    context = ssl.create_default_context(cafile=ca.ca_pem) if ca else None

    class Keys:
        async def get_frozen_credentials(self) -> Any:
            return ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)

    async def resolve(_bucket: str) -> BucketEndpoint | None:
        return BucketEndpoint(url, "/bench", "us-east-1")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=streams)) as session:
        put = DirectPut(
            session=session,
            credentials=Keys(),
            resolve_endpoint=resolve,
            max_attempts=1,
            ssl_context=context if context is not None else True,
            send_stall_s=60,
        )
        endpoint = await put.endpoint("bench")
        assert endpoint is not None
        fd = os.open(path, os.O_RDONLY)
        slots = asyncio.Semaphore(streams)

        async def one(i: int) -> None:
            async with slots:
                stream = BodyStream(
                    RangeReader(fd), 0, BODY_BYTES, Lease([bytearray(CHUNK_BYTES), bytearray(CHUNK_BYTES)])
                )
                await put.put(endpoint, "bench", f"body-{i}", stream, {}, f"PutObject body-{i}")

        try:
            await one(-1)  # connect, and warm the page cache
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(bodies)))
            after, took = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
        finally:
            os.close(fd)
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plain", action="store_true", help="plain HTTP instead of TLS")
    parser.add_argument("--rate-mbs", type=float, default=0.0, help="sink pace per connection, MB/s (0: flat out)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--bodies", type=int, default=16)
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="slow-server-cpu-"))
    ca = None if args.plain else make_test_ca(workdir)
    path = workdir / "body.bin"
    path.write_bytes(os.urandom(BODY_BYTES))
    port_queue: Any = multiprocessing.Queue()
    sink = multiprocessing.Process(target=serve, args=(port_queue, ca, args.rate_mbs), daemon=True)
    sink.start()
    try:
        port = port_queue.get(timeout=30)
        url = f"{'http' if args.plain else 'https'}://127.0.0.1:{port}"
        user, system, took = uvloop.run(send(url, ca, str(path), args.bodies, args.streams))
    finally:
        sink.kill()
    gb = args.bodies * BODY_BYTES / 1e9
    pace = f"{args.rate_mbs:g} MB/s per connection" if args.rate_mbs else "flat out"
    print(
        f"{'HTTP' if args.plain else 'TLS'}, sink {pace}, {args.streams} streams: "
        f"user {user / gb:.2f} + sys {system / gb:.2f} s of CPU per GB, {gb * 1000 / took:.0f} MB/s"
    )


if __name__ == "__main__":
    main()
