"""Client memory per pooled connection, plain HTTP against TLS (issue 13's HTTPS peak RSS).

`python -m benchmarks.tls_connection_memory tls|plain CONNECTIONS BODY_KIB uvloop|asyncio`: an aiohttp
server in a child process (plain, or TLS with a CA made for the run), and in this process an aiohttp
session that sends BODY_KIB PUTs over CONNECTIONS connections at once, three times; prints how much
this process's RSS grew per connection.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pathlib
import ssl
import sys
import tempfile
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from privateca import CAFiles, make_test_ca  # the tests' CA maker


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def serve(tls: bool, port_queue: Any, ca: CAFiles) -> None:
    async def run() -> None:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_put("/{key}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(ca.cert_pem, ca.key_pem)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port_queue.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.sleep(3600)

    asyncio.run(run())


async def measure(tls: bool, connections: int, body_kib: int) -> None:
    ca = make_test_ca(pathlib.Path(tempfile.mkdtemp()))
    port_queue: Any = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(tls, port_queue, ca), daemon=True)
    server.start()
    port = port_queue.get()
    client_ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca.ca_pem) if tls else False
    body = os.urandom(body_kib * 1024)
    scheme = "https" if tls else "http"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

            async def put(i: int) -> None:
                async with session.put(f"{scheme}://127.0.0.1:{port}/k{i}", data=body, ssl=client_ssl) as reply:
                    await reply.read()

            await asyncio.gather(*(put(i) for i in range(8)))  # imports, first allocations
            before = rss_kib()
            for _ in range(3):
                await asyncio.gather(*(put(i) for i in range(connections)))
            grown = rss_kib() - before
    finally:
        server.kill()
    print(
        f"{scheme} {connections} connections, {body_kib} KiB bodies: RSS +{grown / 1024:.1f} MiB, "
        f"{grown / connections:.0f} KiB per connection"
    )


def main() -> None:
    tls, connections, body_kib, loop = sys.argv[1] == "tls", int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(measure(tls, connections, body_kib))


if __name__ == "__main__":
    main()
