"""The bandwidth limit on the wire, and what the limiter costs in CPU (issue 24).

`python -m benchmarks.bandwidth_limit [--limits 5,20,50] [--seconds 30] [--cpu-gb 2] [--streams 8]`:
a sink in a child process (uvloop, plain HTTP) reads every connection as fast as it can, counts the
bytes it received and answers 200 once a body is in; in this process the fast path's DirectPut sends
64 MiB bodies streamed from one file, `--streams` at a time, with the run's limiter as open_s3 makes it.

- For each limit (MB/s, 10^6 bytes): bodies go out until `--seconds` have passed after a one-second
  start; prints the rate the sink received in that window against the limit.
- Then the CPU cost: `--cpu-gb` of bodies sent flat out, with no limit (no limiter at all: the no-op
  path) and through a limiter whose rate is far above what the machine can send (every step asks
  it, none waits), `--repeat` times each, interleaved; prints this process's user + system CPU time
  per GB for each, the best and the median. Run from a checkout
  before the limiter existed, only the first of the two applies (the script sees no `limiter`).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import multiprocessing
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

import aiohttp
import uvloop
from botocore.credentials import ReadOnlyCredentials

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from pacedsink import PacedReader  # the tests' sink: 200 once a body is in

from async_backup.backup.budget import Lease
from async_backup.disk.read import RangeReader
from async_backup.s3.fastput.bodies import BodyStream
from async_backup.s3.fastput.sending import DirectPut
from async_backup.s3.fastput.signing import BucketEndpoint

MiB = 1024 * 1024
BODY_BYTES = 64 * MiB
CHUNK_BYTES = 256 * 1024
HAS_LIMITER = "limiter" in inspect.signature(DirectPut.__init__).parameters


def serve(port_queue: Any, received: Any) -> None:
    """The sink, counting every byte it reads into the shared `received`."""

    class Counting(PacedReader):
        def data_received(self, data: bytes) -> None:
            with received.get_lock():
                received.value += len(data)
            super().data_received(data)

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: Counting(0), "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    uvloop.run(run())


def limiter_for(rate_bytes_s: float | None) -> Any:
    if rate_bytes_s is None or not HAS_LIMITER:
        return None
    from async_backup.s3.bandwidth import Limiter
    from async_backup.settings.bandwidth import parse_bandwidth

    table = parse_bandwidth(rate_bytes_s)
    assert table is not None
    return Limiter(table)


async def send(
    url: str, path: str, streams: int, limiter: Any, *, bodies: int | None, until: float | None
) -> tuple[float, float]:
    """Send bodies, `streams` at a time: `bodies` of them, or until the monotonic time `until`.
    Returns this process's CPU seconds (user + system) and the wall time it took."""

    class Keys:
        async def get_frozen_credentials(self) -> Any:
            return ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)

    async def resolve(_bucket: str) -> BucketEndpoint | None:
        return BucketEndpoint(url, "/bench", "us-east-1")

    extra = {"limiter": limiter} if HAS_LIMITER else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=streams)) as session:
        put = DirectPut(
            session=session,
            credentials=Keys(),
            resolve_endpoint=resolve,
            max_attempts=1,
            send_stall_s=60,
            **extra,
        )
        endpoint = await put.endpoint("bench")
        assert endpoint is not None
        fd = os.open(path, os.O_RDONLY)
        left = [bodies if bodies is not None else 1 << 30]

        async def stream(i: int) -> None:
            while left[0] > 0 and (until is None or time.monotonic() < until):
                left[0] -= 1
                body = BodyStream(
                    RangeReader(fd), 0, BODY_BYTES, Lease([bytearray(CHUNK_BYTES), bytearray(CHUNK_BYTES)])
                )
                await put.put(endpoint, "bench", f"body-{i}", body, {}, f"PutObject body-{i}")

        try:
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            tasks = [asyncio.create_task(stream(i)) for i in range(streams)]
            if until is not None:
                await asyncio.sleep(max(0.0, until - time.monotonic()))
                for task in tasks:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=until is not None)
            after, took = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
        finally:
            os.close(fd)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, took


async def measure_rate(url: str, path: str, streams: int, limit_mbs: float, seconds: float, received: Any) -> float:
    """The bytes per second the sink received over `seconds`, after a one-second start."""
    started = time.monotonic()
    sender = asyncio.create_task(
        send(url, path, streams, limiter_for(limit_mbs * 1e6), bodies=None, until=started + 1.5 + seconds)
    )
    await asyncio.sleep(1.0)
    t0, b0 = time.monotonic(), received.value
    await asyncio.sleep(seconds)
    t1, b1 = time.monotonic(), received.value
    await sender
    return float((b1 - b0) / (t1 - t0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", default="5,20,50", help="limits to measure, MB/s, comma-separated ('': none)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each rate measurement")
    parser.add_argument("--cpu-gb", type=float, default=2.0, help="data for each CPU run (0: skip them)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="CPU runs of each kind, interleaved")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bandwidth-limit-"))
    path = workdir / "body.bin"
    path.write_bytes(os.urandom(BODY_BYTES))
    port_queue: Any = multiprocessing.Queue()
    received: Any = multiprocessing.Value("q", 0)
    sink = multiprocessing.Process(target=serve, args=(port_queue, received), daemon=True)
    sink.start()
    try:
        url = f"http://127.0.0.1:{port_queue.get(timeout=30)}"
        if HAS_LIMITER:
            for limit in [float(x) for x in args.limits.split(",") if x.strip()]:
                rate = uvloop.run(measure_rate(url, str(path), args.streams, limit, args.seconds, received))
                print(
                    f"limit {limit:g} MB/s: measured {rate / 1e6:.2f} MB/s over {args.seconds:g} s "
                    f"({(rate / (limit * 1e6) - 1) * 100:+.1f} %), {args.streams} streams"
                )
        if args.cpu_gb > 0:
            bodies = max(1, round(args.cpu_gb * 1e9 / BODY_BYTES))
            gb = bodies * BODY_BYTES / 1e9
            uvloop.run(send(url, str(path), args.streams, None, bodies=args.streams, until=None))  # warm up
            runs: dict[str, float | None] = {"no limit (no limiter)": None}
            if HAS_LIMITER:
                runs["through the limiter at 100 GB/s (never waits)"] = 100e9
            cpu_per_gb: dict[str, list[float]] = {label: [] for label in runs}
            for _ in range(args.repeat):  # interleaved, so a busy moment does not fall on one kind only
                for label, rate_bytes_s in runs.items():
                    cpu, _took = uvloop.run(
                        send(url, str(path), args.streams, limiter_for(rate_bytes_s), bodies=bodies, until=None)
                    )
                    cpu_per_gb[label].append(cpu / gb)
            for label, values in cpu_per_gb.items():
                print(
                    f"{label}: {min(values):.3f} s of CPU per GB at best, median {statistics.median(values):.3f} "
                    f"({len(values)} runs of {gb:.2f} GB)"
                )
    finally:
        sink.kill()


if __name__ == "__main__":
    main()
