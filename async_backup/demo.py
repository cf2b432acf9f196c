"""A self-contained demonstration: a sample tree backed up into a local S3 server (moto's).

Owns the demo only. `python -m async_backup.demo` makes ./demo/ with a sample archive and a cache
directory whose config.json points at a moto server on a free loopback port, starts that server
in the background (it keeps running so the README's verify and restore examples work against
it), runs a real backup through the CLI, changes a few files and runs again, then lists what S3
holds. `--stop` stops the server. Needs the `demo` extra (moto's server); no AWS account.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEMO_ACCESS_KEY = "DEMOACCESSKEY"
DEMO_SECRET_KEY = "demo-secret-key-not-real"  # moto accepts any credentials


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_alive(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
        return True
    except OSError:
        return False


def start_server(base: Path) -> tuple[str, bool]:
    """Start (or reuse) the demo's moto server; returns its endpoint URL and whether it is new."""
    state = base / "server.json"
    if state.exists():
        info = json.loads(state.read_text())
        if _server_alive(info["url"]):
            return str(info["url"]), False
    try:
        import moto.server  # noqa: F401
    except ImportError:
        sys.exit("async-backup demo: moto's server is missing; install it with: pip install -e '.[demo]'")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(base / "server.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
        start_new_session=True,  # survives this process, so the examples can use it afterwards
    )
    deadline = time.monotonic() + 30
    while not _server_alive(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit(f"async-backup demo: the local S3 server did not start; see {base / 'server.log'}")
        time.sleep(0.2)
    state.write_text(json.dumps({"url": url, "pid": proc.pid}))
    return url, True


def stop_server(base: Path) -> None:
    state = base / "server.json"
    if not state.exists():
        print("no demo server is running")
        return
    info = json.loads(state.read_text())
    try:
        os.kill(int(info["pid"]), signal.SIGTERM)
        print(f"stopped the demo S3 server (pid {info['pid']})")
    except ProcessLookupError:
        print("the demo S3 server had already stopped")
    state.unlink()


def make_sample(base: Path) -> dict[str, list[str]]:
    """A small archive: two folders and a root with two parishes."""
    archive = base / "archive"
    files = {
        "scans/1901/page-0001.tif": 40_000,
        "scans/1901/page-0002.tif": 52_000,
        "scans/1902/page-0001.tif": 47_000,
        "letters/from-rome.jpg": 12_000,
        "registers/parish-a/baptisms-1850.tif": 64_000,
        "registers/parish-a/burials-1850.tif": 30_000,
        "registers/parish-b/marriages-1870.tif": 25_000,
    }
    for i, (rel, size) in enumerate(files.items()):
        path = archive / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(bytes((i * 31 + n) % 251 for n in range(size)))
    return {
        "folders": [str(archive / "scans"), str(archive / "letters")],
        "roots": [str(archive / "registers")],
    }


def write_demo_config(cache: Path, url: str, layout: dict[str, list[str]]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    config = {
        "backup": {**layout, "bucket_prefix": "demo-"},
        "aws": {
            "access_key": DEMO_ACCESS_KEY,
            "secret_access_key": DEMO_SECRET_KEY,
            "region": "eu-central-1",
            "endpoint_url": url,
        },
    }
    path = cache / "config.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def run_tool(cache: Path, *args: str) -> int:
    command = [sys.executable, "-m", "async_backup", "--cache", str(cache), *args]
    print("$ async-backup " + " ".join(["--cache", str(cache), *args]), flush=True)
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m async_backup.demo", description=__doc__)
    parser.add_argument(
        "--dir", default="demo", help="where the sample tree, cache and server state go (default ./demo)"
    )
    parser.add_argument("--stop", action="store_true", help="stop the demo's S3 server and exit")
    args = parser.parse_args(argv)
    base = Path(args.dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    if args.stop:
        stop_server(base)
        return 0
    url, fresh = start_server(base)
    cache = base / "cache"
    if fresh:
        # A new server holds nothing (moto keeps its objects in memory): a cache from an earlier demo
        # would claim files are backed up that this server never saw. Start over.
        for stale in cache.glob("async-backup.db*"):
            stale.unlink()
    write_demo_config(cache, url, make_sample(base))
    print(f"local S3 server: {url} (moto); sample archive: {base / 'archive'}; cache: {cache}\n", flush=True)
    first = run_tool(cache)
    # The README's --as-of example restores the state right after this first run.
    time.sleep(1.1)
    (base / "first-run.txt").write_text(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()) + "\n")
    time.sleep(1.1)
    # A night later: one page rescanned and a letter added; the night after, a letter removed.
    archive = base / "archive"
    (archive / "scans/1901/page-0001.tif").write_bytes(b"rescanned " * 5000)
    letter = archive / "letters/from-rome.jpg"
    extra = archive / "letters/from-paris.jpg"
    extra.write_bytes(b"paris " * 2000)
    second = run_tool(cache)
    if letter.exists():
        letter.unlink()
    third = run_tool(cache)
    print("\nwhat S3 holds now:", flush=True)
    _list_buckets(url)
    print("\nThe server keeps running for the README's examples; stop it with: python -m async_backup.demo --stop")
    return max(first, second, third)


def _list_buckets(url: str) -> None:
    import boto3  # the demo extra brings it with moto

    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=DEMO_ACCESS_KEY,
        aws_secret_access_key=DEMO_SECRET_KEY,
        region_name="eu-central-1",
    )
    for bucket in sorted(b["Name"] for b in client.list_buckets()["Buckets"]):
        reply = client.list_objects_v2(Bucket=bucket)
        print(f"s3://{bucket}")
        for obj in reply.get("Contents", []):
            print(f"    {obj['Key']}  {obj['Size']} bytes  {obj.get('StorageClass', '')}")


if __name__ == "__main__":
    raise SystemExit(main())
