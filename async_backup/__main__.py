"""`python -m async_backup` and the `async-backup` command: the tool imported with the garbage
collector paused, after malloc was held to two arenas (see _limit_malloc_arenas).

Nearly everything the imports create (botocore's models, aiohttp, the tool's own modules) lives
until the process ends, yet the collector would scan it again and again while it grows: about a
quarter of a second of CPU per run, a third of a no-op run's. Frozen after the imports, it is never
scanned; the run's own garbage is collected as usual.
"""

import ctypes
import gc
import os
import sys

M_ARENA_MAX = -8  # glibc's malloc.h


def run() -> int:
    _limit_malloc_arenas()
    gc.disable()
    try:
        from .cli import main
    finally:
        gc.freeze()
        gc.enable()
    return main()


def _limit_malloc_arenas() -> None:
    """At most two malloc arenas, before any thread starts. glibc gives each thread that allocates
    an arena of its own (up to eight per core), and freed file contents linger in each: 7 MiB of
    peak RSS in a run of 5,000 small files. The threads mostly hash and read, where an arena shared
    between them costs no time we could measure. MALLOC_ARENA_MAX, if set, wins."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass  # not glibc (musl has no arenas to limit)


if __name__ == "__main__":
    raise SystemExit(run())
