"""What rebuilding a lost cache costs (issue 9): requests by kind and seconds, both ways.

Makes N small files, backs them up through the recording proxy (benchmarks/proxy.py) to a moto
server, then times, each from the same tree:

- a no-op run with the cache intact (the walk's own share of the time, for comparison);
- the cache deleted, rebuilt from the snapshot (one ListObjectsV2 per 1,000 objects, the snapshot's GET);
- the cache and the snapshots deleted, rebuilt from the bucket listing + one HeadObject per object.

Run from the repository root: ``python -m benchmarks.rebuild_cost --files 10000 --workers 32``.
Prints a Markdown table and writes it with the raw figures as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from benchmarks.servers import start

BUCKET_PREFIX = "rebuild-bench-"


def make_files(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.bin").write_bytes(b"x" * (1 + i % 64))


def counts(proxy_url: str, reset: bool = True) -> dict[str, int]:
    with urllib.request.urlopen(f"{proxy_url}/__bench__/counts{'?reset=1' if reset else ''}", timeout=10) as r:
        return dict(json.loads(r.read())["requests"])


def run(cache: Path, *extra: str) -> tuple[float, str]:
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "async_backup", "--cache", str(cache), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    took = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"async-backup failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return took, res.stderr


def forget_cache(cache: Path) -> None:
    for name in ("async-backup.db", "async-backup.db-wal", "async-backup.db-shm"):
        (cache / name).unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rebuild_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/rebuild_cost.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="rebuild-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        make_files(data, args.files)
        with start("moto", tmp) as server:
            port_file = tmp / "proxy.port"
            proxy = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.proxy",
                    "--upstream",
                    server.endpoint,
                    "--port-file",
                    str(port_file),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 30
                while not (port_file.exists() and port_file.read_text().strip()):
                    if time.monotonic() > deadline:
                        raise SystemExit("the proxy did not start")
                    time.sleep(0.1)
                proxy_url = f"http://127.0.0.1:{port_file.read_text().strip()}"
                figures = measure(tmp, data, server, proxy_url, args)
            finally:
                proxy.terminate()
                proxy.wait(timeout=10)
    table = render(figures, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"files": args.files, "workers": args.workers, "runs": figures}, indent=1) + "\n")


def measure(tmp: Path, data: Path, server: Any, proxy_url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    cache = tmp / "cache"
    cache.mkdir()
    config = {
        "backup": {"folders": [str(data)], "bucket_prefix": BUCKET_PREFIX},
        "aws": {
            "access_key": server.access_key,
            "secret_access_key": server.secret_key,
            "region": server.region,
            "endpoint_url": proxy_url,
        },
        "tuning": {"workers": args.workers},
    }
    (cache / "config.json").write_text(json.dumps(config))
    os.chmod(cache / "config.json", 0o600)
    admin = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
    )
    figures: list[dict[str, Any]] = []

    def record(name: str, took: float, log: str) -> None:
        lines = log.splitlines()
        done = next((ln for ln in lines if "INFO done:" in ln), "")
        snapshot = next((ln for ln in lines if "cache snapshot (" in ln), "")
        requests = counts(proxy_url)
        seconds = round(took, 2)
        figures.append({"run": name, "seconds": seconds, "requests": requests, "summary": done, "snapshot": snapshot})

    counts(proxy_url)
    took, log = run(cache)
    record("first backup", took, log)
    took, log = run(cache)
    record("no-op, cache intact", took, log)

    forget_cache(cache)
    took, log = run(cache)
    record("rebuild from the snapshot", took, log)

    forget_cache(cache)
    from async_backup.recovery.snapshots import snapshot_buckets
    from async_backup.settings.config import load_config

    for bucket in snapshot_buckets(load_config(cache)):
        try:
            for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    admin.delete_object(Bucket=bucket, Key=obj["Key"])
        except admin.exceptions.NoSuchBucket:
            pass
    counts(proxy_url)
    took, log = run(cache, "--no-cache-backup")
    record("rebuild from the bucket (listing + HEAD)", took, log)
    return figures


def render(figures: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Rebuild cost, {args.files:,} files, tuning.workers {args.workers}, moto through the recording proxy",
        "",
        "| run | seconds | requests by kind |",
        "|---|---|---|",
    ]
    for f in figures:
        reqs = ", ".join(f"{op} {n:,}" for op, n in sorted(f["requests"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {f['run']} | {f['seconds']:.1f} | {reqs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
