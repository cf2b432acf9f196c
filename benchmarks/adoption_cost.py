"""What taking over an installation of the old script costs: requests by kind and seconds.

`python -m benchmarks.adoption_cost [--files N]` starts moto's server, lets a re-enactment of the
old script (tests/oldscript.py: boto3 upload_file, its db/<quote_plus(name)>.db caches) back up N
small files in two targets, then runs async-backup with `naming: "legacy"` on that cache
directory through a recording proxy and prints the requests it sent by S3 operation and its wall
time. Nothing unchanged may be uploaded: the PutObject count must be 0.
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
from pathlib import Path

import boto3

from .servers import start

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adoption_cost")
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
    sys.path.insert(0, str(TESTS))
    from oldscript import run_old_script  # the old script's state, made as it makes it
    from s3proxy import ProxyServer

    with tempfile.TemporaryDirectory(prefix="adoption-cost-") as tmp_name, start("moto", Path(tmp_name)) as server:
        tmp = Path(tmp_name)
        data = tmp / "data"
        for i in range(args.files):
            path = data / ("registers" if i % 2 else "letters") / f"vol{i % 37:02d}" / f"page-{i:06d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"p" * (64 + i % 100))
        cache = tmp / "cache"
        cache.mkdir()
        config = {
            "backup": {"folders": [str(data / "letters"), str(data / "registers")], "naming": "legacy"},
            "notification": {},
            "aws": {
                "access_key": server.access_key,
                "secret_access_key": server.secret_key,
                "region": server.region,
                "endpoint_url": server.endpoint,
            },
        }
        (cache / "config.json").write_text(json.dumps(config))
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        )
        t0 = time.monotonic()
        run_old_script(cache, client)
        print(f"old script backed up {args.files:,} files in {time.monotonic() - t0:.1f} s")
        with ProxyServer(server.endpoint) as proxy:
            config["aws"]["endpoint_url"] = proxy.url
            (cache / "config.json").write_text(json.dumps(config))
            t0 = time.monotonic()
            run = subprocess.run(
                [sys.executable, "-m", "async_backup", "--cache", str(cache), "--no-cache-backup"],
                capture_output=True,
                text=True,
                env={**os.environ},
                check=False,
            )
            seconds = time.monotonic() - t0
            ops = Counter(r.op for r in proxy.wait_done())
        adopted = [line.split(" INFO ", 1)[-1] for line in run.stderr.splitlines() if "adopted" in line]
        print(f"async-backup exit {run.returncode} in {seconds:.1f} s (interpreter start included)")
        for line in adopted:
            print("  " + line)
        print("requests: " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))
        return 0 if run.returncode == 0 and ops.get("PutObject", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
