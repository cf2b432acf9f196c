"""`python -m async_backup` and the `async-backup` command: the tool imported with the garbage
collector paused.

Nearly everything the imports create (botocore's models, aiohttp, the tool's own modules) lives
until the process ends, yet the collector would scan it again and again while it grows: about a
quarter of a second of CPU per run, a third of a no-op run's. Frozen after the imports, it is never
scanned; the run's own garbage is collected as usual.
"""

import gc


def run() -> int:
    gc.disable()
    try:
        from .cli import main
    finally:
        gc.freeze()
        gc.enable()
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
