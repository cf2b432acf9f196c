"""What taking over an installation of the old script costs: requests by kind and seconds.

`python -m benchmarks.adoption_cost [--files N]` starts moto's server, lets a re-enactment of the
old script (tests/oldscript.py: boto3 upload_file, its db/<quote_plus(name)>.db caches) back up N
small files in two targets, then runs async-backup with `naming: "legacy"` on that cache
directory through a recording proxy and prints the requests it sent by S3 operation and its wall
time. Nothing unchanged may be uploaded: the PutObject count must be 0.

Also owns what benchmarks.lost_cache_cost shares with it: the old script's config.json, an admin
client, and one async-backup run through the recording proxy (tests/s3proxy.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from .servers import S3Server, start

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # oldscript.py and s3proxy.py: the old script's state and the proxy


def old_site_config(server: S3Server, folders: list[str], roots: list[str] | None = None) -> dict[str, Any]:
    """config.json as the old script reads it (the notification section must exist), with the
    legacy naming that adopts its buckets."""
    return {
        "backup": {"folders": folders, "roots": roots or [], "naming": "legacy"},
        "notification": {},
        "aws": {
            "access_key": server.access_key,
            "secret_access_key": server.secret_key,
            "region": server.region,
            "endpoint_url": server.endpoint,
        },
    }


def write_config(cache: Path, config: dict[str, Any]) -> None:
    # The request counts measured here are those of backing up and adopting, not of the nightly
    # fixity slice (its HeadObject per 1/fixity_days of the objects): the slice is off.
    config.setdefault("backup", {}).setdefault("fixity_days", 0)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "config.json").write_text(json.dumps(config))
    os.chmod(cache / "config.json", 0o600)


def admin_client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
    )


def run_async_backup(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One run straight at the server (the steps that build a state, not measured)."""
    run = subprocess.run(
        [sys.executable, "-m", "async_backup", "--cache", str(cache), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"async-backup failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return run


@dataclass
class Measured:
    returncode: int
    seconds: float  # wall time, the interpreter's start included
    ops: Counter[str]
    stderr: str

    @property
    def uploads(self) -> int:
        return self.ops.get("PutObject", 0) + self.ops.get("UploadPart", 0)


def measured_run(cache: Path, upstream: str, *args: str) -> Measured:
    """One run of async-backup through the recording proxy: config.json points at the proxy for
    the run and back at `upstream` afterwards."""
    from s3proxy import ProxyServer

    path = cache / "config.json"
    config = json.loads(path.read_text())
    with ProxyServer(upstream) as proxy:
        config["aws"]["endpoint_url"] = proxy.url
        path.write_text(json.dumps(config))
        t0 = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "async_backup", "--cache", str(cache), *args],
            capture_output=True,
            text=True,
            env={**os.environ},
            check=False,
        )
        seconds = time.monotonic() - t0
        ops = Counter(r.op for r in proxy.wait_done())
    config["aws"]["endpoint_url"] = upstream
    path.write_text(json.dumps(config))
    return Measured(run.returncode, seconds, ops, run.stderr)


def format_ops(ops: Counter[str]) -> str:
    return ", ".join(f"{op} {n:,}" for op, n in sorted(ops.items())) or "none"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adoption_cost")
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
    from oldscript import run_old_script  # the old script's state, made as it makes it

    with tempfile.TemporaryDirectory(prefix="adoption-cost-") as tmp_name, start("moto", Path(tmp_name)) as server:
        tmp = Path(tmp_name)
        data = tmp / "data"
        for i in range(args.files):
            path = data / ("registers" if i % 2 else "letters") / f"vol{i % 37:02d}" / f"page-{i:06d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"p" * (64 + i % 100))
        cache = tmp / "cache"
        write_config(cache, old_site_config(server, [str(data / "letters"), str(data / "registers")]))
        t0 = time.monotonic()
        run_old_script(cache, admin_client(server))
        print(f"old script backed up {args.files:,} files in {time.monotonic() - t0:.1f} s")
        run = measured_run(cache, server.endpoint, "--no-cache-backup")
        adopted = [line.split(" INFO ", 1)[-1] for line in run.stderr.splitlines() if "adopted" in line]
        print(f"async-backup exit {run.returncode} in {run.seconds:.1f} s (interpreter start included)")
        for line in adopted:
            print("  " + line)
        print("requests: " + format_ops(run.ops))
        return 0 if run.returncode == 0 and run.ops.get("PutObject", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
