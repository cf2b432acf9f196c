"""Warming a freshly started server up before anything is measured.

Owns: writing a scratch bucket full of data straight at the server (never through the recording
proxy), dropping it, and waiting until the server is quiet again. Imports ``servers`` and ``verify``.

Why: a fresh Ceph RGW on memstore is slow while its OSD first maps the memory it stores objects in,
and it stays slower until a few GB have gone through it once. Measured here at 9fa53fd, the same
576 MiB of large files took 9.5 s for the first contender after the server started, 4.2 s for
the second, and 2.2-2.7 s once the server had carried the small and pages sets. Whoever ran
first paid for the server's start, which rotating the order only spreads over the repetitions.
With this warm-up and each contender's own unmeasured run (`runner.Bench.warm_up`), five rotated
repetitions of the large set by three tools here had no slow first run left: every tool's five
runs lay within 0.3 s of each other.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.servers import S3Server, wait_until_quiet
from benchmarks.verify import admin_client, drop_bucket, make_bucket

MIB = 1024 * 1024
OBJECT_BYTES = 64 * MIB  # every other one in two parts
WRITERS = 8
WARMUP_BUCKET = "bench-warmup"


def warm_up(server: S3Server, total_bytes: int, log: Any = print) -> float:
    """Write `total_bytes` in 64 MiB objects (single PUTs and multipart) to a scratch bucket,
    drop it, wait for the server to settle; returns the seconds it took. Nothing is measured or
    reported from these writes."""
    if total_bytes <= 0:
        return 0.0
    started = time.monotonic()
    s3 = admin_client(server)
    make_bucket(s3, WARMUP_BUCKET)  # versioned when the peers' buckets are: the same write path
    body = bytes(range(256)) * (OBJECT_BYTES // 256)
    count = max(1, -(-total_bytes // OBJECT_BYTES))

    def put(i: int) -> None:
        key = f"warmup/{i:05d}"
        if i % 2 == 0:
            s3.put_object(Bucket=WARMUP_BUCKET, Key=key, Body=body)
            return
        # Multipart too: RGW creates the pool that holds pending uploads on the first one. With
        # single PUTs only, the first large-file run after the warm-up still took 4.3 s (3.3 s with
        # these, against 2.4-2.9 s later; one run each).
        upload = s3.create_multipart_upload(Bucket=WARMUP_BUCKET, Key=key)["UploadId"]
        half = OBJECT_BYTES // 2
        parts = []
        for n, start in enumerate((0, half), start=1):
            etag = s3.upload_part(
                Bucket=WARMUP_BUCKET, Key=key, UploadId=upload, PartNumber=n, Body=body[start : start + half]
            )["ETag"]
            parts.append({"PartNumber": n, "ETag": etag})
        s3.complete_multipart_upload(Bucket=WARMUP_BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})

    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(put, range(count)))
    finally:
        drop_bucket(s3, WARMUP_BUCKET)
    failed = server.reclaim()  # now, not inside the first measured run
    if failed:
        log(f"  (the server could not reclaim the warm-up's objects: {failed})")
    wait_until_quiet(server.pids)
    took = time.monotonic() - started
    log(f"server warmed up: {count} x 64 MiB written and dropped in {took:.1f} s")
    return took
