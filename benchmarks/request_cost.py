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
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The yardstick signer (botocore's S3SigV4Auth) lives with the tests that hold the fast path's signer to it.
TESTS = Path(__file__).resolve().parent.parent / "tests"

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
    from async_backup.s3.checksums import PartChecksum
    from async_backup.s3.client import client_config
    from async_backup.settings.config import AwsSettings, Tuning

    aws = AwsSettings("AKIDEXAMPLE", "secret", "us-east-1", endpoint, checksum_calculation=checksum)  # type: ignore[arg-type]
    config = client_config(aws, Tuning(workers=concurrency))
    config = config.merge(type(config)(parameter_validation=validate))
    from aiobotocore.session import get_session

    body = os.urandom(16 * 1024)
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", config=config
    ) as client:
        from async_backup.s3.client import S3, cache_user_agent, skip_expect_continue

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


CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION")


def _botocore_signed(
    self: Any, endpoint: Any, key: str, headers: Any, now: Any, credentials: Any, query: Any = None
) -> tuple[str, dict[str, str]]:
    """Signer.signed_headers with botocore's S3SigV4Auth doing the signing, for comparison."""
    from urllib.parse import quote

    sys.path.insert(0, str(TESTS))
    from botocore_signing import botocore_signed_headers

    path = f"{endpoint.path_prefix}/{quote(key, safe='/~')}"
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted((query or {}).items())
    )
    url = f"{endpoint.origin}{path}" + (f"?{canonical_query}" if canonical_query else "")
    signed = botocore_signed_headers(url, headers, credentials, endpoint.region, now)
    signed.pop("host", None)
    return url, signed


async def _measure_tool(
    endpoint: str, requests: int, concurrency: int, credentials: str = "static", signer: str = "ours"
) -> float:
    """The tool's own client as a backup run opens it: settings above plus the hand-signed PutObject.

    `credentials`: "static" (keys in config.json), "env-token" (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    and AWS_SESSION_TOKEN), "env-expiring" (the same plus AWS_CREDENTIAL_EXPIRATION an hour ahead,
    which makes botocore's credentials refreshable: every request checks whether to refresh).
    `signer`: "ours" (directput.py) or "botocore" (S3SigV4Auth on the same path)."""
    import datetime
    import types

    from async_backup.s3.checksums import PartChecksum
    from async_backup.s3.client import open_s3
    from async_backup.settings.config import AwsSettings, Tuning

    saved = {k: os.environ.get(k) for k in CREDENTIAL_ENV}
    if credentials == "static":
        aws = AwsSettings("AKIDEXAMPLE", "secret", "us-east-1", endpoint)
    else:
        aws = AwsSettings(None, None, "us-east-1", endpoint)
        os.environ.update(
            AWS_ACCESS_KEY_ID="ASIAEXAMPLE", AWS_SECRET_ACCESS_KEY="secret", AWS_SESSION_TOKEN="t" * 800
        )  # STS session tokens run to several hundred characters
        if credentials == "env-expiring":
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
            os.environ["AWS_CREDENTIAL_EXPIRATION"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    body = os.urandom(16 * 1024)
    try:
        async with open_s3(aws, Tuning(workers=concurrency)) as s3:
            assert s3.fast_path is not None
            if signer == "botocore":
                s3.fast_path.signer.signed_headers = types.MethodType(_botocore_signed, s3.fast_path.signer)  # type: ignore[method-assign]
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
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


TOOL_ROWS = [
    ("+ PutObject signed by async-backup (directput.py), static keys", "static", "ours"),
    ("  the same, environment credentials with a session token", "env-token", "ours"),
    ("  the same, refreshable environment credentials (expiry set)", "env-expiring", "ours"),
    ("  static keys, signed by botocore's S3SigV4Auth instead", "static", "botocore"),
    ("  session token, signed by botocore's S3SigV4Auth instead", "env-token", "botocore"),
]


def signing_costs(rounds: int = 20000) -> list[tuple[str, float]]:
    """Microseconds of CPU per signature and per credentials look-up, in-process, no network:
    steadier than the whole-request figures on a shared machine."""
    import datetime

    from botocore.credentials import ReadOnlyCredentials

    sys.path.insert(0, str(TESTS))
    from botocore_signing import botocore_signed_headers

    from async_backup.s3.fastput.signing import BucketEndpoint, Signer

    endpoint = BucketEndpoint("https://bench.s3.us-east-1.amazonaws.com", "", "us-east-1")
    headers = {
        "x-amz-storage-class": "DEEP_ARCHIVE",
        "x-amz-meta-mtime": "1700000000.0",
        "x-amz-checksum-crc32": "AA==",
    }
    signer = Signer()
    rows = []
    for label, creds in [
        ("static keys", ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)),
        ("session token", ReadOnlyCredentials("ASIAEXAMPLE", "secret", "t" * 800)),
    ]:
        began = time.process_time()
        for i in range(rounds):
            signer.signed_headers(
                endpoint, f"srv/images/page-{i:06d}.tif", headers, datetime.datetime.now(datetime.UTC), creds
            )
        rows.append((f"signature by directput.py, {label}", (time.process_time() - began) * 1e6 / rounds))
        began = time.process_time()
        for i in range(rounds):
            botocore_signed_headers(
                f"{endpoint.origin}/srv/images/page-{i:06d}.tif",
                headers,
                creds,
                endpoint.region,
                datetime.datetime.now(datetime.UTC),
            )
        rows.append((f"signature by botocore's S3SigV4Auth, {label}", (time.process_time() - began) * 1e6 / rounds))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.request_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tool-only", action="store_true", help="only the rows of the tool's own client")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure the tool's rows N times, interleaved; print the median"
    )
    parser.add_argument("--signing-only", action="store_true", help="only the in-process signing micro-benchmark")
    args = parser.parse_args(argv)
    if args.signing_only:
        for label, micros in signing_costs():
            print(f"  {micros:6.1f} us  {label}")
        return 0
    port = _free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    time.sleep(0.5)
    endpoint = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, float]] = []
    try:
        for label, loop, checksum, validate, expect, cached_ua in (
            []
            if args.tool_only
            else [
                ("botocore defaults (asyncio, CRC32, validation on)", "asyncio", "when_supported", True, True, False),
                ("+ parameter_validation off", "asyncio", "when_supported", False, True, False),
                ("+ Content-MD5 instead of CRC32 (when_required)", "asyncio", "when_required", False, True, False),
                ("+ uvloop", "uvloop", "when_supported", False, True, False),
                ("+ no Expect: 100-continue", "uvloop", "when_supported", False, False, False),
                ("+ User-Agent built once", "uvloop", "when_supported", False, False, True),
            ]
        ):
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

            run: Any = uvloop.run
        except ImportError:
            run = asyncio.run
        # Interleaved repeats: on a shared 2-core machine single runs of the same row differ by 20 %.
        costs: dict[str, list[float]] = {label: [] for label, _, _ in TOOL_ROWS}
        for _ in range(max(1, args.repeat)):
            for label, credentials, signer in TOOL_ROWS:
                costs[label].append(run(_measure_tool(endpoint, args.requests, args.concurrency, credentials, signer)))
        rows.extend((label, statistics.median(values)) for label, values in costs.items())
    finally:
        sink.terminate()
        sink.wait()
    print(f"client CPU per PutObject of 16 KiB, {args.requests} requests, {args.concurrency} in flight:")
    for label, cost in rows:
        print(f"  {cost:6.3f} ms  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
