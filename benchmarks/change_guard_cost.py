"""What the change guard costs: on a no-op run (ms per 1,000 files) and on the per-file path.

    python -m benchmarks.change_guard_cost [--files 200000]

No-op run: every file matches its row, so the guard is never asked about one; what it adds is the
`kind` column in every row the walk merges with (read and turned into a `Recorded`) and one
COUNT(*) of the target's rows before the walk. Both are timed against the same streamed read
without the column (the code before the guard), best of five.

Per-file path (an update): the guard's count and hold decision in the walk thread
(`ChangeGuard.planned`), the kind of the first bytes and `admit` at upload, and the checksum pass
of a streamed body with and without the hook that keeps its first bytes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from async_backup.backup.changeguard import ChangeGuard
from async_backup.backup.plan import Upload
from async_backup.backup.upload import checksum_range
from async_backup.cache import store as store_module
from async_backup.cache.store import StateStore, Stored, stream_rows
from async_backup.disk.entries import DiskFile
from async_backup.disk.kinds import kind_of
from async_backup.disk.lock import cache_lock


def best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def noop_cost(files: int, workdir: Path) -> None:
    store = StateStore(workdir)
    rows = [Stored("b", f"/srv/{i:09}.tif".encode(), 1000 + i, i, "crc32:AAAAAA==", kind="tiff") for i in range(files)]
    for start in range(0, files, 50_000):
        store.apply(rows[start : start + 50_000])
    conn = store_module.connect(workdir / store_module.STATE_NAME, readonly=True)
    columns, original = store_module._ROW_COLUMNS, store_module._recorded

    def read(kind: bool) -> float:
        # The read before the guard selected no kind column (its row lacks the last field).
        if not kind:
            store_module._ROW_COLUMNS = columns[:-1]
            store_module._recorded = lambda row: original((*row, None))  # type: ignore[assignment]
        try:
            return best_of(1, lambda: sum(1 for _ in stream_rows(conn, "b")))
        finally:
            store_module._ROW_COLUMNS, store_module._recorded = columns, original

    read(True)  # warm the page cache first
    # Interleaved, best of seven each: the machine's load moves both alike.
    rounds = [(read(True), read(False)) for _ in range(7)]
    with_kind, without = min(r[0] for r in rounds), min(r[1] for r in rounds)
    count = best_of(5, lambda: store.count("b"))
    per_k = 1000 / files * 1000
    print(f"no-op run, {files:,} cached rows:")
    print(f"  rows read with kind    {with_kind * per_k:.3f} ms per 1,000 files")
    print(f"  rows read without kind {without * per_k:.3f} ms per 1,000 files")
    print(f"  COUNT(*) before walk   {count * per_k:.3f} ms per 1,000 files ({count * 1000:.1f} ms in all)")
    print(f"  guard's share          {(with_kind - without + count) * per_k:+.3f} ms per 1,000 files")


def per_file_cost(workdir: Path) -> None:
    n = 100_000
    uploads = [Upload(DiskFile(f"/srv/{i:09}".encode(), 10, i), is_new=False, was_kind="tiff") for i in range(n)]

    def plan() -> None:
        guard = ChangeGuard(cached=10 * n, max_change_percent=20.0, alarm=2, off=False)
        for i, u in enumerate(uploads):
            guard.planned(u, 10 * i)
        list(guard.walk_ended())

    head = b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00"

    def admit() -> None:
        guard = ChangeGuard(cached=0, max_change_percent=20.0, alarm=2, off=False)
        for u in uploads:
            guard.admit(u, kind_of(head))

    print("per update (the walk's hold and the upload's kind check):")
    print(f"  ChangeGuard.planned    {best_of(3, plan) / n * 1e6:.2f} us per file (held in memory, then let go)")
    print(f"  kind_of + admit        {best_of(3, admit) / n * 1e6:.2f} us per file")
    path = workdir / "body"
    path.write_bytes(os.urandom(32 * 1024 * 1024))
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        buffer = bytearray(256 * 1024)
        settled = (st.st_size, st.st_mtime_ns)
        plain = best_of(5, lambda: checksum_range(fd, 0, st.st_size, "crc32", buffer, settled))
        kept = best_of(5, lambda: checksum_range(fd, 0, st.st_size, "crc32", buffer, settled, bytearray()))
    finally:
        os.close(fd)
    print(f"  checksum pass, 32 MiB  {plain * 1000:.2f} ms plain, {kept * 1000:.2f} ms keeping the first bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, cache_lock(Path(tmp)):
        noop_cost(args.files, Path(tmp))
        per_file_cost(Path(tmp))


if __name__ == "__main__":
    main()
