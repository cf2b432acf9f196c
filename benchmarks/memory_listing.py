"""Peak memory of `verify` and of a restore dry run over a bucket of N objects (default 1,000,000).

    python -m benchmarks.memory_listing [--objects N] [--out benchmarks/results/memory_listing.md]

The server is moto 5.2, run in this process (`ThreadedMotoServer`, its own HTTP server, XML and
pagination tokens). Two shortcuts make a million objects feasible, and neither touches the tool:
- objects are put straight into moto's backend (`S3Backend.put_object`), not over HTTP (moto takes
  ~170 PUT/s: 1,000,000 would take 100 minutes);
- moto's ListObjectsV2 and ListObjectVersions backends are replaced by indexed ones that answer the
  same pages from a sorted key list: moto's own sort every key on every page, and ListObjectVersions
  deep-copies every version per page (hours for a million objects). Requests and replies on the wire
  are moto's, page by page (1,000 keys each).
The cache is made directly too: one row per object, with the MD5 the ETag carries. The target's
folder exists and is empty (the disk side of the merge streams; what is gone from disk is a count).

The tool runs as a child process; its peak RSS is the kernel's `ru_maxrss` from wait4().
"""

from __future__ import annotations

import argparse
import bisect
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ACCESS_KEY = "AKIABENCHMEMORY00000"
SECRET_KEY = "bench-secret-memory-listing"
REGION = "eu-central-1"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
LIMIT_MB = 150


def index_listings(backend: Any, name: str) -> None:
    """Answer ListObjectsV2 and ListObjectVersions for bucket `name` from a sorted list of its keys."""
    from moto.s3 import models

    names = sorted(backend.get_bucket(name).keys.keys())
    tokens: dict[str, str] = {}
    plain_v2 = models.S3Backend.list_objects_v2
    plain_versions = models.S3Backend.list_object_versions

    def list_objects_v2(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        if bucket.name != name or prefix or delimiter:
            return plain_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        after = tokens.get(continuation_token or "", start_after or "")
        start = bisect.bisect_right(names, after) if after else 0
        page = names[start : start + max_keys]
        truncated = start + max_keys < len(names)
        token = None
        if truncated:
            token = f"t{len(tokens)}"
            tokens[token] = page[-1]
        return [bucket.keys[key] for key in page], truncated, token

    def list_object_versions(
        self: Any,
        bucket_name: str,
        delimiter: str | None = None,
        key_marker: str | None = None,
        max_keys: int | None = 1000,
        prefix: str = "",
        version_id_marker: str | None = None,
    ) -> Any:
        if bucket_name != name or prefix or delimiter:
            return plain_versions(self, bucket_name, delimiter, key_marker, max_keys, prefix, version_id_marker)
        keys = self.get_bucket(bucket_name).keys
        size = max_keys or 1000
        start = bisect.bisect_right(names, key_marker) if key_marker else 0
        page = names[start : start + size]
        versions = []
        for key_name in page:  # one version per key here
            key = keys.getlist(key_name)[-1]
            key.is_latest = True
            versions.append(key)
        if start + size < len(names):
            return versions, [], [], page[-1], versions[-1].version_id
        return versions, [], [], None, None

    models.S3Backend.list_objects_v2 = list_objects_v2  # type: ignore[method-assign]
    models.S3Backend.list_object_versions = list_object_versions  # type: ignore[method-assign]


def fill(url: str, bucket: str, folder: str, count: int) -> None:
    import boto3
    from moto.s3.models import s3_backends

    client = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    backend = next(iter(s3_backends.values()))["aws"]
    base = folder.lstrip("/")
    for i in range(count):
        backend.put_object(bucket, f"{base}/box{i // 1000:04d}/page-{i:07d}.tif", b"", storage="DEEP_ARCHIVE")
    index_listings(backend, bucket)


def print_page_times(url: str, bucket: str) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    for name, call in (
        ("ListObjectsV2", lambda: client.list_objects_v2(Bucket=bucket)),
        ("ListObjectVersions", lambda: client.list_object_versions(Bucket=bucket)),
    ):
        began = time.monotonic()
        call()
        print(f"one {name} page: {time.monotonic() - began:.2f} s", flush=True)


def make_cache(cache: Path, url: str, folder: str, prefix: str, bucket: str, count: int) -> None:
    import json

    from async_backup.cache.store import connect

    cache.mkdir(parents=True)
    doc = {
        "backup": {"folders": [folder], "roots": [], "bucket_prefix": prefix},
        "aws": {"access_key": ACCESS_KEY, "secret_access_key": SECRET_KEY, "region": REGION, "endpoint_url": url},
    }
    (cache / "config.json").write_text(json.dumps(doc))
    (cache / "config.json").chmod(0o600)
    conn = connect(cache / "async-backup.db")
    with conn:
        conn.execute("INSERT INTO targets VALUES (?, ?, NULL, ?)", (folder, bucket, time.time()))
        conn.executemany(
            "INSERT INTO files(bucket, path, size, mtime_ns, checksum) VALUES (?, ?, 0, 1, ?)",
            (
                (bucket, os.fsencode(f"{folder}/box{i // 1000:04d}/page-{i:07d}.tif"), f"md5:{EMPTY_MD5}")
                for i in range(count)
            ),
        )
    conn.close()


def measured(args: list[str]) -> tuple[float, float, int, str]:
    """(peak RSS MiB, seconds, exit code, last lines of output) of the tool as a child process.

    Measured by GNU time (`%M`, the kernel's ru_maxrss of its child): wait4() from this process
    would count the pages of this big process that a forked child holds until it execs."""
    began = time.monotonic()
    with tempfile.NamedTemporaryFile() as figure, tempfile.TemporaryFile() as out:
        command = ["/usr/bin/time", "-f", "%M", "-o", figure.name, sys.executable, "-m", "async_backup", *args]
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        took = time.monotonic() - began
        out.seek(0)
        tail = out.read().decode(errors="replace").strip().splitlines()[-6:]
        rss_kib = int(Path(figure.name).read_text().split()[-1])
    return rss_kib / 1024, took, code, "\n".join(tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, help="also write the figures as Markdown here")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    from async_backup.settings.naming import stable_bucket_name

    os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        folder = str(work / "archive")
        os.mkdir(folder)
        prefix = "bench-"
        bucket = stable_bucket_name(prefix, folder)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        began = time.monotonic()
        fill(url, bucket, folder, args.objects)
        print_page_times(url, bucket)
        make_cache(work / "cache", url, folder, prefix, bucket, args.objects)
        print(f"{args.objects:,} objects and cache rows made in {time.monotonic() - began:.0f} s", flush=True)
        runs = {
            "verify --no-checksums": ["--cache", str(work / "cache"), "verify", "--no-checksums"],
            "restore --dry-run": [
                "--cache",
                str(work / "cache"),
                "restore",
                folder,
                "--to",
                str(work / "restored"),
                "--dry-run",
            ],
        }
        lines = [
            "| command | objects | peak RSS | time | exit |",
            "|---|---|---|---|---|",
        ]
        for name, argv in runs.items():
            rss, took, code, tail = measured(argv)
            print(f"{name}: peak RSS {rss:.0f} MiB, {took:.0f} s, exit {code}\n{tail}", flush=True)
            lines.append(f"| `{name}` | {args.objects:,} | {rss:.0f} MiB | {took:.0f} s | {code} |")
        server.stop()
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        text = "\n".join(lines) + (
            f"\n\nmoto 5.2 in-process (listings indexed, see benchmarks/memory_listing.py); the server's own "
            f"process peaked at {own:.0f} MiB. Limit asked for: {LIMIT_MB} MiB peak RSS.\n"
        )
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
