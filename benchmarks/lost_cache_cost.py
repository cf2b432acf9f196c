"""What a lost cache costs on an adopted installation of the old script (issue 21): requests by S3
operation, seconds, and the local bytes the ETag proof reads.

`python -m benchmarks.lost_cache_cost [--files N] [--big N] [--changed SHARE]` builds each state
the way tests/test_names_recalled.py and tests/test_etag_proof.py do (the old script's state made by
its re-enactment, tests/oldscript.py), each on its own moto server, and measures one async-backup
run (`--no-cache-backup`) on it through the recording proxy:

- a config change, then the cache lost: N files in two folders and a root, backed up by the old
  script and adopted; then a root added outside the old common path (one more run, which uploads its
  files); then the cache directory emptied but for config.json. Once with a snapshot in the cache
  bucket (the names and rows come back from it), once with every run `--no-cache-backup` (no
  snapshot: the names from the old script's copies of its caches in image-backup-cache, the rows
  adopted from those copies). The files' mtimes are a year old, as on an installation whose scans
  are not new: the old rows predate their uploads and need no proof by content.
- stale copies: N files (BIG of them above 8 MiB, multipart in boto3) in a root of two subfolders,
  backed up by the old script; a share of them rewritten and a second run of the old script that
  dies before copying its caches, so image-backup-cache holds copies one run old; a new machine with
  only config.json. The changed files' rows are stale and the others were written within 20 minutes
  of their upload (fresh files, as in the test): each row is proven by the file's content (MD5, or
  the multipart ETag at 8 MiB parts).
- a bare bucket: the same data with the copies deleted from image-backup-cache and another new
  machine: the rebuild lists each bucket and sends one HeadObject per object, then proves each by
  its content.

The files the run read are found by their access times (every data file's atime is set to 0
first; this file system updates atime on a read with `relatime`); their sizes summed give the
bytes read, and the benchmark reads them once more through `disk.digest` to time the hashing alone.
Nothing may be uploaded: the PutObject and UploadPart counts must be 0 (exit 1 otherwise).
Prints a Markdown table and writes it with the raw figures as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adoption_cost import (
    Measured,
    admin_client,
    format_ops,
    measured_run,
    old_site_config,
    run_async_backup,
    write_config,
)
from .servers import S3Server, start

MIB = 1024 * 1024
YEAR_S = 365 * 24 * 3600
# Above boto3's 8 MiB multipart threshold: exactly 8 MiB (one part, "-1"), two, three and four parts.
BIG_SIZES = (8 * MIB, 9 * MIB + 7, 12 * MIB + 3, 17 * MIB + 1, 25 * MIB + 5)
SMALL_RANGE = (4 * 1024, 64 * 1024)  # scanned thumbnails and pages: a log-uniform spread of sizes


@dataclass
class Figures:
    scenario: str
    files: int
    measured: Measured
    read_files: int = 0
    read_bytes: int = 0
    hash_s: float = 0.0
    setup_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "files": self.files,
            "exit": self.measured.returncode,
            "seconds": round(self.measured.seconds, 2),
            "requests": dict(sorted(self.measured.ops.items())),
            "uploads": self.measured.uploads,
            "read_files": self.read_files,
            "read_bytes": self.read_bytes,
            "hash_s": round(self.hash_s, 2),
            "setup_s": round(self.setup_s, 1),
            "log": self.notes,
        }


def make_files(targets: list[Path], n: int, big: int, seed: int, mtime_s: float | None) -> dict[Path, int]:
    """n files spread over the targets in volume folders: `big` of them above 8 MiB (every
    n // big-th), the others 4-64 KiB; random content. Returns path -> size."""
    rng = random.Random(seed)
    step = n // big if big else 0
    sizes: dict[Path, int] = {}
    for i in range(n):
        target = targets[i % len(targets)]
        path = target / f"vol{i % 23:02d}" / f"page-{i:06d}.tif"
        if step and i % step == step - 1 and i // step < big:
            size = BIG_SIZES[(i // step) % len(BIG_SIZES)]
        else:
            lo, hi = SMALL_RANGE
            size = int(lo * (hi / lo) ** rng.random())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        if mtime_s is not None:
            os.utime(path, (mtime_s, mtime_s))
        sizes[path] = size
    return sizes


def lose_cache(cache: Path) -> None:
    """The cache directory emptied but for config.json (async-backup.db, the old db/, backup.log)."""
    for entry in cache.iterdir():
        if entry.name == "config.json":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def set_config(cache: Path, **backup: Any) -> None:
    raw = json.loads((cache / "config.json").read_text())
    raw["backup"].update(backup)
    (cache / "config.json").write_text(json.dumps(raw))


def clear_atimes(paths: list[Path]) -> None:
    for p in paths:
        st = p.stat()
        os.utime(p, ns=(0, st.st_mtime_ns))


def read_since_cleared(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.stat().st_atime_ns != 0]


def atime_works(tmp: Path) -> bool:
    """Whether a read shows in the atime here (not so under noatime, or with an atime newer than mtime)."""
    probe = tmp / "atime-probe"
    probe.write_bytes(b"x")
    clear_atimes([probe])
    probe.read_bytes()
    return bool(read_since_cleared([probe]))


def hash_seconds(paths: list[Path]) -> float:
    """The ETag computations alone, one thread, the files in the page cache: each file as the
    proof reads it (single part below 8 MiB, else at the old script's part size)."""
    from async_backup.disk.digest import OLD_PART_BYTES, file_md5, file_multipart_etag, old_part_bytes

    t0 = time.monotonic()
    for p in paths:
        st = p.stat()
        if st.st_size < OLD_PART_BYTES:
            file_md5(os.fsencode(p), st.st_size, st.st_mtime_ns)
        else:
            file_multipart_etag(os.fsencode(p), st.st_size, st.st_mtime_ns, old_part_bytes(st.st_size))
    return time.monotonic() - t0


def log_lines(stderr: str) -> list[str]:
    wanted = ("recalled from", "rebuilt from", "using its copy", "read to compare", "INFO done:")
    return [line.split(" INFO ", 1)[-1] for line in stderr.splitlines() if any(w in line for w in wanted)]


def measure(
    name: str, cache: Path, server: S3Server, files: dict[Path, int], setup_s: float, *, clear: bool = True
) -> Figures:
    """`clear=False`: the atimes were cleared before the state's own async-backup runs (which
    record the files' ctimes: clearing them now would move every ctime and make those rows unsure)."""
    paths = sorted(files)
    if clear:
        clear_atimes(paths)
    before = set(read_since_cleared(paths))
    run = measured_run(cache, server.endpoint, "--no-cache-backup")
    if run.returncode != 0:
        print(run.stderr[-3000:])
    read = [p for p in read_since_cleared(paths) if p not in before]
    fig = Figures(name, len(files), run, len(read), sum(files[p] for p in read), hash_seconds(read), setup_s)
    fig.notes = log_lines(run.stderr)
    if before:
        fig.notes.append(f"{len(before):,} files were read before the measured run: not seen again in its reads")
    print(f"{name}: exit {run.returncode}, {run.seconds:.1f} s, {format_ops(run.ops)}; read {len(read):,} files")
    return fig


@contextmanager
def moto(tmp: Path, name: str) -> Iterator[S3Server]:
    """A server of its own per scenario: the old script's bucket names are global in a server."""
    with start("moto", tmp / f"moto-{name}") as server:
        yield server


def config_change(tmp: Path, n: int, snapshot: bool) -> Figures:
    """tests/test_names_recalled.py: adopted, a root added outside the old common path, the cache lost."""
    from oldscript import run_old_script

    name = "snapshot" if snapshot else "no-snapshot"
    base = tmp / f"change-{name}"
    with moto(tmp, name) as server:
        t0 = time.monotonic()
        data = base / "data"
        folders = [data / "sub" / "letters", data / "sub" / "maps"]
        subs = [data / "archives" / f"Archive {i}" for i in range(1, 5)]
        old = time.time() - YEAR_S
        files = make_files([*folders, *subs], n, 0, seed=21, mtime_s=old)
        cache = base / "cache"
        write_config(cache, old_site_config(server, [str(f) for f in folders], [str(data / "archives")]))
        run_old_script(cache, admin_client(server))
        clear_atimes(sorted(files))  # before async-backup first records the files' ctimes
        backup_args = () if snapshot else ("--no-cache-backup",)
        first = run_async_backup(cache, *backup_args)
        assert "0 files uploaded" in first.stderr, first.stderr[-3000:]
        outside = base / "other" / "rootb"
        make_files([outside / "new"], 10, 0, seed=22, mtime_s=old)
        set_config(cache, roots=[str(data / "archives"), str(outside)])
        added = run_async_backup(cache, *backup_args)
        assert "10 files uploaded" in added.stderr, added.stderr[-3000:]
        lose_cache(cache)
        label = "snapshot in the cache bucket" if snapshot else "no snapshot (every run --no-cache-backup)"
        setup_s = time.monotonic() - t0
        return measure(f"(a) config change, cache lost, {label}", cache, server, files, setup_s, clear=False)


def stale_copies_and_bare_bucket(tmp: Path, n: int, big: int, changed_share: float) -> list[Figures]:
    """tests/test_etag_proof.py: copies one run old on a new machine; then no copy at all."""
    from oldscript import OLD_CACHE_BUCKET, run_old_script

    base = tmp / "stale"
    with moto(tmp, "stale") as server:
        t0 = time.monotonic()
        data = base / "data"
        root = data / "archives"
        files = make_files([root / "Band A", root / "Band+B"], n, big, seed=21, mtime_s=None)
        cache = base / "cache"
        write_config(cache, old_site_config(server, [], [str(root)]))
        client = admin_client(server)
        buckets = run_old_script(cache, client)
        rng = random.Random(5)
        changed = rng.sample(sorted(files), round(len(files) * changed_share))
        for path in changed:  # as a rescan: new content, the big ones at their size, an mtime 10 s on
            before = path.stat().st_mtime_ns
            files[path] += 0 if files[path] >= 8 * MIB else 5
            path.write_bytes(os.urandom(files[path]))
            os.utime(path, ns=(before, before + 10_000_000_000))
        if run_old_script(cache, client, copy_caches=False) != buckets:
            raise SystemExit("the old script's second run used other buckets")
        setup_s = time.monotonic() - t0
        new_cache = base / "new-machine"
        write_config(new_cache, json.loads((cache / "config.json").read_text()))
        big_files = sum(1 for s in files.values() if s >= 8 * MIB)
        stale = measure(
            f"(b) stale copies, new machine: {len(changed):,} rows one run old, all proven by ETag "
            f"({big_files} files of 8-25 MiB multipart)",
            new_cache,
            server,
            files,
            setup_s,
        )
        own = str(base).lstrip("/")
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=OLD_CACHE_BUCKET):
            for obj in page.get("Contents", []):
                if obj["Key"].startswith(own):
                    client.delete_object(Bucket=OLD_CACHE_BUCKET, Key=obj["Key"])
        bare_cache = base / "new-machine-2"
        write_config(bare_cache, json.loads((cache / "config.json").read_text()))
        bare = measure(
            "(c) bare bucket, new machine: listing + HeadObject, proven by ETag", bare_cache, server, files, 0
        )
        return [stale, bare]


def render(figures: list[Figures], args: argparse.Namespace) -> str:
    lines = [
        f"Lost-cache rebuilds of an adopted installation, {args.files:,} files, moto through the recording proxy; "
        "one run each, `--no-cache-backup`",
        "",
        "| scenario | seconds | requests by S3 operation | PutObject + UploadPart | files read | bytes read | "
        "hashing alone s |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.scenario} | {f.measured.seconds:.1f} | {format_ops(f.measured.ops)} | {f.measured.uploads} | "
            f"{f.read_files:,} | {f.read_bytes / MIB:,.1f} MiB | {f.hash_s:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lost_cache_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=40, help="files above 8 MiB among them in (b) and (c)")
    ap.add_argument("--changed", type=float, default=0.1, help="share of files the old script's last run changed")
    ap.add_argument("--scenarios", default="snapshot,no-snapshot,stale", help="which states to build")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/lost_cache_cost.json"))
    args = ap.parse_args()
    wanted = set(args.scenarios.split(","))
    figures: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="lost-cache-cost-") as tmp_name:
        tmp = Path(tmp_name)
        if not atime_works(tmp):
            raise SystemExit(f"{tmp}: reads do not show in atimes here (noatime?): the bytes read cannot be found")
        if "snapshot" in wanted:
            figures.append(config_change(tmp, args.files, snapshot=True))
        if "no-snapshot" in wanted:
            figures.append(config_change(tmp, args.files, snapshot=False))
        if "stale" in wanted:
            figures.extend(stale_copies_and_bare_bucket(tmp, args.files, args.big, args.changed))
    table = render(figures, args)
    print(table)
    for f in figures:
        print(f"\n{f.scenario} (setup {f.setup_s:.0f} s):")
        for line in f.notes:
            print("  " + line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"files": args.files, "runs": [f.row() for f in figures]}, indent=1) + "\n")
    ok = all(f.measured.returncode == 0 and f.measured.uploads == 0 for f in figures)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
