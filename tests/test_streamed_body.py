"""Bodies larger than one chunk are streamed from the file through reused buffers (issue 13).

Against moto over HTTP and HTTPS: every size around the chunk and part edges arrives whole; the pool
hands the same buffers from one body to the next, so streaming faults in no new memory; a file
rewritten after its checksum was taken is refused by the server's digest check and read again; a
file truncated then is a change, not a network failure retried five times.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import pytest
from botocore.credentials import ReadOnlyCredentials
from conftest import ACCESS_KEY, REGION, SECRET_KEY, CAFiles, run_cli, write_config
from faultcheck import assert_contents, bucket_objects, cache_rows
from pacedsink import ThreadedSink
from s3proxy import CheckDigest, ProxyServer

from async_backup.backup import upload
from async_backup.backup.budget import BufferPool, ByteBudget, Lease
from async_backup.backup.command import event_loop_options
from async_backup.backup.upload import CHUNK_BYTES, MemoryLimits, MultipartLog, UploadSettings, upload_file
from async_backup.disk.entries import DiskFile
from async_backup.disk.keys import key_for_path
from async_backup.disk.read import FileChanged, RangeReader
from async_backup.errors import S3Error
from async_backup.s3.client import S3, open_s3
from async_backup.s3.fastput.bodies import TLS_WRITE_BUFFER_HIGH, BodyStream, write_slice_bytes
from async_backup.s3.fastput.sending import DirectPut
from async_backup.s3.fastput.signing import BucketEndpoint
from async_backup.settings.config import AwsSettings, Tuning
from async_backup.settings.naming import stable_bucket_name

MiB = 1024 * 1024
SETTINGS = UploadSettings("DEEP_ARCHIVE", 5 * MiB, 5 * MiB)
SIZES = [
    0,
    1,
    CHUNK_BYTES - 1,
    CHUNK_BYTES,
    CHUNK_BYTES + 1,
    2 * CHUNK_BYTES + 3,
    3 * MiB + 5,
    5 * MiB - 1,
    11 * MiB + 9,
]


def write_tree(root: Path, sizes: list[int], seed: int = 13) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i, size in enumerate(sizes):
        path = root / f"vol{i % 3}" / f"page-{i:03d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        paths.append(path)
    return paths


def direct_put_at(session: aiohttp.ClientSession, base_url: str, **options: Any) -> DirectPut:
    """A DirectPut that sends every bucket's requests to `base_url`, with the tests' keys."""

    async def resolve(_bucket: str) -> BucketEndpoint | None:
        return BucketEndpoint(base_url, "/b", REGION)

    class Keys:
        async def get_frozen_credentials(self) -> Any:
            return ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, None)

    return DirectPut(session=session, credentials=Keys(), resolve_endpoint=resolve, **options)


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("algorithm", ["when_supported", "when_required"])
def test_every_size_around_the_chunk_and_part_edges_arrives_whole(
    scheme: str,
    algorithm: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    bucket_prefix: str,
) -> None:
    endpoint = request.getfixturevalue("moto_endpoint" if scheme == "http" else "moto_tls_endpoint")
    inspect = request.getfixturevalue("s3_inspect" if scheme == "http" else "s3_tls_inspect")
    aws_extra: dict[str, Any] = {"checksum_calculation": algorithm}
    if scheme == "https":
        aws_extra["ca_bundle"] = request.getfixturevalue("test_ca").ca_pem
    root = tmp_path / "tree"
    paths = write_tree(root, SIZES)
    cache = tmp_path / "cache"
    tuning = {"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 2, "workers": 4}
    write_config(cache, endpoint, folders=[str(root)], bucket_prefix=bucket_prefix, tuning=tuning, aws_extra=aws_extra)
    done = run_cli("--cache", str(cache), "--no-cache-backup")
    assert done.returncode == 0, done.stderr
    bucket = stable_bucket_name(bucket_prefix, str(root))
    assert_contents(inspect, bucket, [os.fsencode(p) for p in paths])  # byte for byte
    assert set(cache_rows(cache, bucket)) == {os.fsencode(p) for p in paths}
    # What the cache keeps compares with S3's ETags (with --no-checksums: no HeadObject). Bodies
    # sent with their SHA-256 (when_required) are recorded with the ETag S3 answered.
    checked = run_cli("verify", "--cache", str(cache), "--no-checksums")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    if algorithm == "when_required":
        assert f"{len(paths)} match" in checked.stdout, checked.stdout


def run_uploads(
    endpoint: str,
    files: list[Path],
    bucket: str,
    *,
    algorithm: str = "when_supported",
    budget_bytes: int = 8 * MiB,
    before_each: Callable[[S3, MemoryLimits], Awaitable[None]] | None = None,
    ca_bundle: str | None = None,
) -> tuple[list[Any], MemoryLimits, list[int]]:
    """upload_file for each file in turn, in this process; returns the results (or the exceptions),
    the limits used, and the minor page faults each upload cost."""
    aws = AwsSettings(ACCESS_KEY, SECRET_KEY, REGION, endpoint, checksum_calculation=algorithm, ca_bundle=ca_bundle)
    limits = MemoryLimits(ByteBudget(budget_bytes), anyio.Semaphore(2))
    results: list[Any] = []
    faults: list[int] = []

    async def main() -> None:
        async with open_s3(aws, Tuning()) as s3:
            await s3.create_bucket(bucket)
            for path in files:
                st = path.stat()
                file = DiskFile(os.fsencode(path), st.st_size, st.st_mtime_ns)
                if before_each is not None:
                    await before_each(s3, limits)
                start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                try:
                    results.append(
                        await upload_file(s3, bucket, key_for_path(file.path), file, SETTINGS, limits, MultipartLog())
                    )
                except Exception as exc:
                    results.append(exc)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)

    anyio.run(main)
    return results, limits, faults


def test_the_pool_hands_the_same_buffers_from_body_to_body_and_faults_in_no_new_memory(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str
) -> None:
    # 3 MiB single PUTs and an 11 MiB file in 5 MiB parts (two in flight), one file at a time.
    paths = write_tree(tmp_path / "tree", [3 * MiB + 1] * 12 + [11 * MiB])
    bucket = f"{bucket_prefix}pool"
    results, limits, faults = run_uploads(moto_endpoint, paths, bucket)
    assert all(isinstance(r, upload.Uploaded) for r in results), results
    # Two buffers per body in flight at once: one single PUT, or two parts.
    assert limits.buffers.allocated <= 4
    assert limits.buffers.idle_count == limits.buffers.allocated
    # Charged while idle: the budget's free bytes are what the idle buffers do not hold.
    assert limits.budget.free_bytes == limits.budget.total_bytes - limits.buffers.allocated * CHUNK_BYTES
    # A fresh buffer per body would fault in every 4 KiB page of it (768 per 3 MiB body). Reused
    # buffers fault in nothing new; what remains is the client's own small allocations.
    steady = faults[2:12]
    assert max(steady) < 200, faults
    assert_contents(s3_inspect, bucket, [os.fsencode(p) for p in paths])


def test_streamed_bodies_take_their_checksum_passes_in_turn_and_the_first_is_sent_while_others_wait(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str
) -> None:
    """Eight bodies uploaded at once with one checksum pass allowed at a time: the passes never
    overlap, and the first body is on its way while later ones still wait for their turn (when
    every body hashed at once, the first send waited for nearly all of them)."""
    paths = write_tree(tmp_path / "tree", [3 * MiB + 1] * 8)
    bucket = f"{bucket_prefix}turns"
    aws = AwsSettings(ACCESS_KEY, SECRET_KEY, REGION, moto_endpoint, checksum_calculation="when_supported")
    limits = MemoryLimits(ByteBudget(16 * MiB), anyio.Semaphore(2), checksum_threads=1)
    slots = limits.checksum_slots
    most_hashing = 0
    waiting_at_first_send: list[int] = []

    async def main() -> None:
        nonlocal most_hashing
        async with open_s3(aws, Tuning()) as s3:
            await s3.create_bucket(bucket)
            sends_seen = sum(s3.sent.counts.values())

            async def watch(scope: anyio.CancelScope) -> None:
                nonlocal most_hashing
                with scope:
                    while True:
                        most_hashing = max(most_hashing, int(slots.borrowed_tokens))
                        if not waiting_at_first_send and sum(s3.sent.counts.values()) > sends_seen:
                            waiting_at_first_send.append(slots.statistics().tasks_waiting)
                        await anyio.sleep(0.0005)

            files = [DiskFile(os.fsencode(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]

            async def one(file: DiskFile) -> None:
                await upload_file(s3, bucket, key_for_path(file.path), file, SETTINGS, limits, MultipartLog())

            watcher = anyio.CancelScope()
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, watcher)
                async with anyio.create_task_group() as uploads:
                    for file in files:
                        uploads.start_soon(one, file)
                watcher.cancel()

    anyio.run(main)
    assert most_hashing == 1, "the checksum passes did not take the limiter's turns"
    assert waiting_at_first_send and waiting_at_first_send[0] >= 1, waiting_at_first_send
    assert_contents(s3_inspect, bucket, [os.fsencode(p) for p in paths])


def test_a_lease_gives_its_buffers_back_and_drops_them_once_spoiled_or_failed() -> None:
    """The pool alone frees buffers: a lease's end gives them back to it, or drops them when the
    body spoiled them (cut off mid-send) or the block failed; renewed ones take over the charge."""

    async def main() -> None:
        budget = ByteBudget(4 * CHUNK_BYTES)
        pool = BufferPool(budget, CHUNK_BYTES)
        async with pool.lease() as lease:
            first = list(lease.buffers)
        assert pool.idle_count == 2 and budget.free_bytes == 2 * CHUNK_BYTES  # idle, still charged
        async with pool.lease() as lease:
            assert {id(b) for b in lease.buffers} == {id(b) for b in first}  # reused
            lease.spoil()
            lease.renew()  # another attempt: fresh buffers, never the spoiled ones
            assert not {id(b) for b in lease.buffers} & {id(b) for b in first}
        assert pool.idle_count == 2 and budget.free_bytes == 2 * CHUNK_BYTES
        async with pool.lease() as lease:
            lease.spoil()  # the last attempt was cut off: dropped, not kept
        assert pool.idle_count == 0 and budget.free_bytes == budget.total_bytes
        with pytest.raises(OSError):
            async with pool.lease() as lease:
                raise OSError("a read failed")
        assert pool.idle_count == 0 and budget.free_bytes == budget.total_bytes
        assert pool.allocated == 4

    anyio.run(main)


def test_idle_buffers_are_given_up_before_anyone_waits_for_memory() -> None:
    async def main() -> None:
        budget = ByteBudget(4 * CHUNK_BYTES)
        pool = BufferPool(budget, CHUNK_BYTES)
        pair = await pool.take_pair()
        other = await pool.take_pair()
        assert budget.free_bytes == 0
        pool.give(pair)
        pool.give(other)
        assert pool.idle_count == 4 and budget.free_bytes == 0  # idle, still charged
        with anyio.fail_after(1):
            taken = await budget.acquire(3 * CHUNK_BYTES)  # a small file's read: idle buffers make room
        assert pool.idle_count == 1
        budget.release(taken)
        reused = await pool.take_pair()
        assert pool.allocated == 5 and pool.idle_count == 0
        pool.discard(reused)  # cut off mid-send: dropped, its charge given back
        assert budget.free_bytes == budget.total_bytes and pool.idle_count == 0

    anyio.run(main)


@pytest.mark.parametrize("algorithm", ["when_supported", "when_required"])
@pytest.mark.parametrize("size", [3 * MiB + 1, 11 * MiB])
def test_a_file_rewritten_after_its_checksum_is_refused_then_read_again(
    algorithm: str,
    size: int,
    tmp_path: Path,
    moto_endpoint: str,
    s3_inspect: Any,
    bucket_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the checksum pass and the send, the file is rewritten in place at the same size: the
    server's digest check refuses the body (BadDigest), the upload says FileChanged, and the next
    read takes the new content, which S3 then holds."""
    (path,) = write_tree(tmp_path / "tree", [size])
    new_content = random.Random(99).randbytes(size)
    real_checksum = upload.checksum_range
    rewritten = []

    def checksum_then_rewrite(fd: int, offset: int, length: int, algorithm: str, *rest: Any) -> Any:
        result = real_checksum(fd, offset, length, algorithm, *rest)
        if not rewritten:
            with open(path, "r+b") as f:
                f.write(new_content)
            os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
            rewritten.append(True)
        return result

    monkeypatch.setattr(upload, "checksum_range", checksum_then_rewrite)
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(CheckDigest(ops={"PutObject", "UploadPart"}))
        bucket = f"{bucket_prefix}rewrite"
        results, limits, _ = run_uploads(proxy.url, [path, path], bucket, algorithm=algorithm)
        refused = [r for r in proxy.wait_done() if r.status == 400]
    assert isinstance(results[0], FileChanged), results
    # In parts, another part's checksum pass may see the new mtime first and end the upload before
    # the refused part's answer arrives (each part is checked unchanged before it is sent).
    assert refused or size >= SETTINGS.multipart_threshold_bytes, "the server never saw the rewritten body"
    assert isinstance(results[1], upload.Uploaded) and results[1].mtime_ns == 1_700_000_000_000_000_000
    assert_contents(s3_inspect, bucket, [os.fsencode(path)])
    assert limits.budget.free_bytes + limits.buffers.idle_count * CHUNK_BYTES == limits.budget.total_bytes


def test_a_file_truncated_after_its_checksum_is_a_change_not_a_network_failure(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (path,) = write_tree(tmp_path / "tree", [3 * MiB])
    real_checksum = upload.checksum_range

    def checksum_then_truncate(fd: int, offset: int, length: int, algorithm: str, *rest: Any) -> Any:
        result = real_checksum(fd, offset, length, algorithm, *rest)
        os.truncate(path, MiB)
        return result

    monkeypatch.setattr(upload, "checksum_range", checksum_then_truncate)
    with ProxyServer(moto_endpoint) as proxy:
        bucket = f"{bucket_prefix}truncate"
        results, limits, _ = run_uploads(proxy.url, [path], bucket)
        puts = [r for r in proxy.wait_done() if r.op == "PutObject"]
    assert isinstance(results[0], FileChanged), results
    assert len(puts) <= 1  # given up at once: not sent again as if the connection had dropped
    assert bucket_objects(s3_inspect, bucket) == {}
    assert limits.budget.free_bytes + limits.buffers.idle_count * CHUNK_BYTES == limits.budget.total_bytes


def test_streamed_bodies_over_https_reuse_their_buffers_too(
    tmp_path: Path, moto_tls_endpoint: str, s3_tls_inspect: Any, test_ca: CAFiles, bucket_prefix: str
) -> None:
    paths = write_tree(tmp_path / "tree", [2 * MiB + 3] * 8)
    bucket = f"{bucket_prefix}tls"
    results, limits, _ = run_uploads(moto_tls_endpoint, paths, bucket, ca_bundle=test_ca.ca_pem)
    assert all(isinstance(r, upload.Uploaded) for r in results), results
    assert limits.buffers.allocated == 2
    assert_contents(s3_tls_inspect, bucket, [os.fsencode(p) for p in paths])


def test_a_server_that_stops_reading_mid_body_fails_the_request_instead_of_holding_it(tmp_path: Path) -> None:
    """aiohttp's read timeout starts only after the body is sent: without the stall timeout a
    server that stops reading mid-body would hold the nightly run forever."""
    path = tmp_path / "volume.tif"
    path.write_bytes(random.Random(3).randbytes(48 * MiB))  # more than loopback's socket buffers hold
    accepted: list[int] = []

    async def main() -> None:
        async def stop_reading(stream: anyio.abc.SocketStream) -> None:
            accepted.append(1)
            await stream.receive(65536)  # the request's first bytes, then never another read
            await anyio.sleep(30)

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg, aiohttp.ClientSession() as session:
            tg.start_soon(listener.serve, stop_reading)

            put = direct_put_at(session, f"http://127.0.0.1:{port}", max_attempts=2, send_stall_s=0.5)
            fd = os.open(path, os.O_RDONLY)
            try:
                stream = BodyStream(
                    RangeReader(fd), 0, 48 * MiB, Lease([bytearray(CHUNK_BYTES), bytearray(CHUNK_BYTES)])
                )
                endpoint = await put.endpoint("b")
                assert endpoint is not None
                with anyio.fail_after(20), pytest.raises(S3Error) as failed:
                    await put.put(endpoint, "b", "volume.tif", stream, {}, "PutObject volume.tif")
            finally:
                os.close(fd)
            assert failed.value.code == "ReadTimeoutError"
            assert stream.failure is None and stream.lease.spoiled  # cut off mid-body: never reused
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert len(accepted) == 2  # both attempts reached the server, each was given up


@pytest.mark.slow
def test_a_slow_but_steady_server_and_a_slow_disk_read_never_trip_the_stall_timeout(tmp_path: Path) -> None:
    """The stall timeout counts time without progress, not the body's whole send: a body that takes
    several timeouts to drain at a steady pace, with one read of the file slower than the timeout,
    still arrives, in one attempt."""
    size = 24 * MiB  # more than loopback's socket buffers, so the server's pace sets the send's
    path = tmp_path / "volume.tif"
    data = random.Random(5).randbytes(size)
    path.write_bytes(data)
    received: list[bytes] = []
    # Long enough that a loaded machine (two busy loops beside the suite) never leaves the
    # loop itself without progress that long; at 0.3 s it once did.
    timeout_s = 1.0

    class SlowOnce:
        """A disk that takes longer than the stall timeout for its third read."""

        def __init__(self, reader: RangeReader) -> None:
            self.reader, self.reads = reader, 0

        async def read_into(self, view: memoryview, position: int) -> int:
            self.reads += 1
            if self.reads == 3:
                await anyio.sleep(3 * timeout_s)
            return await self.reader.read_into(view, position)

    took: list[float] = []

    async def main() -> None:
        async def read_slowly(stream: anyio.abc.SocketStream) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive(65536)
            head, _, body = head.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            parts = [body]
            got = len(body)
            while got < length:
                await anyio.sleep(0.01)  # about 6 MiB/s: the send takes about four timeouts
                chunk = await stream.receive(65536)
                parts.append(chunk)
                got += len(chunk)
            received.append(b"".join(parts))
            await stream.send(b'HTTP/1.1 200 OK\r\nETag: "steady"\r\nContent-Length: 0\r\n\r\n')

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg, aiohttp.ClientSession() as session:
            tg.start_soon(listener.serve, read_slowly)

            put = direct_put_at(session, f"http://127.0.0.1:{port}", max_attempts=1, send_stall_s=timeout_s)
            fd = os.open(path, os.O_RDONLY)
            try:
                reader = SlowOnce(RangeReader(fd))
                stream = BodyStream(reader, 0, size, Lease([bytearray(CHUNK_BYTES), bytearray(CHUNK_BYTES)]))
                endpoint = await put.endpoint("b")
                assert endpoint is not None
                started = anyio.current_time()
                with anyio.fail_after(30):
                    reply = await put.put(endpoint, "b", "volume.tif", stream, {}, "PutObject volume.tif")
                took.append(anyio.current_time() - started)
            finally:
                os.close(fd)
                tg.cancel_scope.cancel()  # the server's handler, should the send have failed
            assert {k.lower(): v for k, v in reply.items()}["etag"] == '"steady"'
            assert reader.reads > 3

    anyio.run(main)
    assert received == [data]  # one attempt, the whole body
    assert took[0] > 4 * timeout_s  # the send really outlasted the timeout several times over


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_waiting_for_a_slow_server_costs_the_event_loop_no_cpu(tmp_path: Path, test_ca: CAFiles, scheme: str) -> None:
    """A WAN uplink is slower than the loop can write: each stream then waits for its connection to
    take the next chunk. That wait must sleep on the transport's flow control; polling it cost a
    whole core over TLS (8 s of CPU per GB at 25 MB/s per connection)."""
    size, streams = 32 * MiB, 4  # more than loopback's socket buffers take in at once
    path = tmp_path / "volume.tif"
    path.write_bytes(random.Random(7).randbytes(size))
    server_context = None
    if scheme == "https":
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(test_ca.cert_pem, test_ca.key_pem)
    measured: list[float] = []

    async def main(port: int) -> None:
        client_context = ssl.create_default_context(cafile=test_ca.ca_pem)
        async with aiohttp.ClientSession() as session:
            put = direct_put_at(
                session, f"{scheme}://127.0.0.1:{port}", max_attempts=1, ssl_context=client_context, send_stall_s=30
            )
            endpoint = await put.endpoint("b")
            assert endpoint is not None
            fd = os.open(path, os.O_RDONLY)

            async def one(i: int) -> None:
                stream = BodyStream(RangeReader(fd), 0, size, Lease([bytearray(CHUNK_BYTES), bytearray(CHUNK_BYTES)]))
                await put.put(endpoint, "b", f"k{i}", stream, {}, f"PutObject k{i}")

            try:
                cpu, wall = time.thread_time(), time.monotonic()
                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        for i in range(streams):
                            tg.start_soon(one, i)
                measured[:] = [time.thread_time() - cpu, time.monotonic() - wall]
            finally:
                os.close(fd)

    with ThreadedSink(rate=12e6, ssl_context=server_context) as sink:
        anyio.run(main, sink.port, backend_options=event_loop_options())
        assert sink.bodies == streams
    cpu_s, wall_s = measured
    assert wall_s > 1.0, measured  # the server really held the streams back
    # Hashing the bodies and TLS take a little; polling took most of the core.
    assert cpu_s < 0.3 * wall_s, measured


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_tls_transport_may_hold_no_more_ciphertext_than_plain_tcp(test_ca: CAFiles, scheme: str) -> None:
    """Each TLS connection keeps its own encrypted copy of what it could not send yet, and its
    memory BIO keeps the largest size that ever reached. uvloop lets that grow to 512 KiB per
    connection before it pushes back; a body's first write caps it at plain TCP's 64 KiB, and
    writes one 16 KiB record at a time (on Ceph over HTTPS: peak RSS 96 MiB for the pages set,
    not 111). Plain connections keep their limits and take 256 KiB slices."""
    server_context = None
    if scheme == "https":
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(test_ca.cert_pem, test_ca.key_pem)
    seen: dict[str, Any] = {}

    async def main(port: int) -> None:
        client_context = ssl.create_default_context(cafile=test_ca.ca_pem) if scheme == "https" else None
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        try:
            seen["before"] = writer.transport.get_write_buffer_limits()
            seen["slice"] = write_slice_bytes(writer)  # type: ignore[arg-type]  # has .transport, as aiohttp's writer
            seen["after"] = writer.transport.get_write_buffer_limits()
        finally:
            writer.close()

    with ThreadedSink(rate=1e12, ssl_context=server_context) as sink:
        anyio.run(main, sink.port, backend_options=event_loop_options())
    if scheme == "https":
        assert seen["before"][1] > TLS_WRITE_BUFFER_HIGH  # what the cap is for (uvloop: 512 KiB)
        assert seen["after"][1] <= TLS_WRITE_BUFFER_HIGH
        assert seen["slice"] == 16 * 1024
    else:
        assert seen["after"] == seen["before"]
        assert seen["slice"] == CHUNK_BYTES
