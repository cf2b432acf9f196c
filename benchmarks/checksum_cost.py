"""CPU per GB of the checksums on the upload path, before and after the whole-file CRC32 (issue 25).

`python -m benchmarks.checksum_cost [--mib N] [--repeat R]`: feeds N MiB of random bytes through
each checksum in 256 KiB views of one reused buffer (as the upload's checksum pass reads a file)
and prints the best of R runs as CPU seconds per 10^9 bytes (process time: user + system).

Rows: zlib.crc32 (the CRC32 bodies, before and after: the whole file's CRC32 on that path is the
same pass, plus one crc32_combine per part), MD5 and SHA-256 (the bodies of servers without flexible
checksums) alone and with the CRC32 the upload now takes beside them, crc32_combine per call, and,
when the awscrt package can be imported, its CRC32, CRC32C and CRC64NVME (botocore uses awscrt when
installed). awscrt is no dependency of the tool; put it on PYTHONPATH to compare.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import zlib
from collections.abc import Callable

from async_backup.s3.checksums import crc32_combine

CHUNK_BYTES = 256 * 1024
GB = 10**9

Feed = Callable[[memoryview], None]


def _crc32() -> tuple[Feed, Callable[[], object]]:
    state = [0]

    def feed(view: memoryview) -> None:
        state[0] = zlib.crc32(view, state[0])

    return feed, lambda: state[0]


def _hash(name: str, with_crc32: bool) -> Callable[[], tuple[Feed, Callable[[], object]]]:
    def make() -> tuple[Feed, Callable[[], object]]:
        h = hashlib.new(name, usedforsecurity=False)
        crc = [0]

        def feed(view: memoryview) -> None:
            if with_crc32:
                crc[0] = zlib.crc32(view, crc[0])
            h.update(view)

        return feed, h.digest

    return make


def _crt(name: str) -> Callable[[], tuple[Feed, Callable[[], object]]] | None:
    try:
        from awscrt import checksums  # type: ignore[import-not-found]
    except ImportError:
        return None
    fn = getattr(checksums, name, None)
    if fn is None:
        return None

    def make() -> tuple[Feed, Callable[[], object]]:
        state = [0]

        def feed(view: memoryview) -> None:
            state[0] = fn(view, state[0])

        return feed, lambda: state[0]

    return make


Maker = Callable[[], tuple[Feed, Callable[[], object]]]


def cpu_per_gb(make: Maker, buffer: bytearray, total: int, repeat: int) -> float:
    best = float("inf")
    view = memoryview(buffer)
    for _ in range(repeat):
        feed, result = make()
        start = time.process_time()
        done = 0
        while done < total:
            feed(view)
            done += len(view)
        result()
        best = min(best, (time.process_time() - start) / done * GB)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="bytes fed per run, in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    buffer = bytearray(os.urandom(CHUNK_BYTES))
    total = args.mib * 1024 * 1024
    rows: list[tuple[str, Callable[[], tuple[Feed, Callable[[], object]]] | None]] = [
        ("zlib.crc32 (CRC32 bodies: before = after)", _crc32),
        ("md5 (botocore bodies, when_required: before)", _hash("md5", False)),
        ("md5 + zlib.crc32 (after)", _hash("md5", True)),
        ("sha256 (fast-path bodies, when_required: before)", _hash("sha256", False)),
        ("sha256 + zlib.crc32 (after)", _hash("sha256", True)),
        ("awscrt crc32", _crt("crc32")),
        ("awscrt crc32c", _crt("crc32c")),
        ("awscrt crc64nvme", _crt("crc64nvme")),
    ]
    print(f"CPU s per GB, best of {args.repeat}, {args.mib} MiB in {CHUNK_BYTES // 1024} KiB views")
    for name, make in rows:
        if make is None:
            print(f"  {name:52s} (awscrt not importable)")
            continue
        print(f"  {name:52s} {cpu_per_gb(make, buffer, total, args.repeat):7.3f}")
    calls = 10_000
    start = time.process_time()
    for i in range(calls):
        crc32_combine(i, 0x9ABCDEF0, 16 * 1024 * 1024 + i)
    per_call_us = (time.process_time() - start) / calls * 1e6
    per_gb_ms = per_call_us * 1e-3 / (16 * 1024 * 1024) * GB
    print(f"  crc32_combine: {per_call_us:.1f} us per part ({per_gb_ms:.3f} ms per GB at 16 MiB parts)")


if __name__ == "__main__":
    main()
