"""What a local fixity check costs: seconds to check N GiB of files read from the disk, not the cache.

    python -m benchmarks.fixity_cost [--gib 10] [--file-gib 1] [--dir DIR]

Writes the files once (a 64 MiB random block repeated: a CRC does not care), records each one's
whole-file CRC32 as a backup would, then checks them the way a fixity slice does
(`fixity.check.check_file` at idle I/O priority, one file at a time). Before the timed pass the
page cache is dropped (`/proc/sys/vm/drop_caches`, root only), so the figure is the disk's and the
CRC's, not memory's; without root it says so, and the figure is the CRC's alone.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import tempfile
import time
import zlib
from pathlib import Path

from async_backup.cache.records import Recorded
from async_backup.fixity.check import READ_CHUNK_BYTES, check_file, idle_io

GIB = 1024**3
BLOCK = 64 * 1024 * 1024


def write_files(folder: Path, total_gib: int, file_gib: int) -> list[Recorded]:
    block = os.urandom(BLOCK)
    rows = []
    for i in range(max(1, total_gib // file_gib)):
        path = folder / f"volume-{i:03d}.tif"
        crc = 0
        with open(path, "wb") as out:
            for n in range(file_gib * GIB // BLOCK):
                piece = block[n % 7 :] + block[: n % 7]  # each block a little different
                out.write(piece)
                crc = zlib.crc32(piece, crc)
        st = path.stat()
        checksum = "crc32:" + base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")
        rows.append(Recorded(os.fsencode(path), st.st_size, st.st_mtime_ns, checksum=checksum))
    return rows


def drop_page_cache() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=int, default=10, help="GiB to check (default 10)")
    parser.add_argument("--file-gib", type=int, default=1, help="GiB per file (default 1)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default a temp dir)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fixity-cost-", dir=args.dir))
    try:
        rows = write_files(folder, args.gib, args.file_gib)
        dropped = drop_page_cache()
        buffer = bytearray(READ_CHUNK_BYTES)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        results = []
        with idle_io() as idle:
            for row in rows:
                results.append(check_file(row, None, buffer).result)
        wall = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        checked = sum(row.size or 0 for row in rows) / GIB
        assert results == ["ok"] * len(rows), results
        print(f"checked {checked:.0f} GiB in {len(rows)} files: {wall:.1f} s wall, {cpu:.1f} s CPU "
              f"({checked / wall:.2f} GiB/s); page cache dropped first: {'yes' if dropped else 'no (not root)'}; "
              f"idle I/O class: {'yes' if idle else 'no'}")  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
