"""Kill the tool at many moments and run it again: nothing is lost, little is repeated.

SIGKILL lands at moments spread over whole runs (start-up, walk, small uploads, multipart parts,
deletes, cache commits); the rerun must leave the bucket equal to the tree and the cache equal to
the bucket, with at most one extra version per key. SIGINT and SIGTERM stop a run gracefully.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, write_config
from faultcheck import (
    assert_whole,
    bucket_objects,
    cache_rows,
    open_uploads,
    stored_versions,
    tree_files,
    versions_per_key,
)
from s3proxy import Delay, ProxyServer

from async_backup.disk.keys import key_for_path
from async_backup.settings.naming import stable_bucket_name

TUNING = {"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 2, "workers": 8}
MOMENTS = 10  # per scenario; two scenarios, 20 moments


def make_tree(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(200):
        path = root / f"box{i % 12:02d}" / f"page-{i:04d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(200, 20_000)))
    for i in range(2):
        (root / f"volume-{i}.tif").write_bytes(rng.randbytes(11 * 1024 * 1024))


def mutate(root: Path, seed: int) -> dict[bytes, int]:
    """Delete a quarter of the small files, change a tenth, add some; returns versions each key needs."""
    rng = random.Random(seed)
    files = sorted(p for p in tree_files(root) if b"page-" in p)
    needed = {key_for_path(p).encode(): 1 for p in tree_files(root)}
    for path in rng.sample(files, 50):
        os.unlink(path)
        needed[key_for_path(path).encode()] = 2  # the version and its delete marker
    for path in rng.sample([p for p in files if os.path.exists(p)], 20):
        with open(path, "ab") as f:
            f.write(b"rescanned")
        needed[key_for_path(path).encode()] = 2
    with open(root / "volume-1.tif", "r+b") as f:
        f.write(b"changed header")
    needed[key_for_path(os.fsencode(root / "volume-1.tif")).encode()] = 2
    for i in range(20):
        new = root / "box-new" / f"added-{i}.tif"
        new.parent.mkdir(exist_ok=True)
        new.write_bytes(rng.randbytes(5000))
        needed[key_for_path(os.fsencode(new)).encode()] = 1
    return needed


def recorded_uploads(cache: Path) -> set[str]:
    """The keys of the multipart uploads the cache records as open."""
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        return {str(k) for (k,) in conn.execute("SELECT key FROM multipart_uploads")}
    finally:
        conn.close()


def start(cache: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "async_backup", "--cache", str(cache), "--no-cache-backup", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def timed_run(cache: Path) -> float:
    began = time.monotonic()
    result = run_cli("--cache", str(cache), "--no-cache-backup", "-q")
    assert result.returncode == 0, result.stderr
    return time.monotonic() - began


def kill_at(cache: Path, delay_s: float) -> bool:
    """Start a run and SIGKILL it after delay_s; True when it was still running then."""
    proc = start(cache, "-q")
    try:
        proc.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def check_after_rerun(
    client: Any, bucket: str, root: Path, cache: Path, needed: dict[bytes, int], *, unrecorded_creates: bool = False
) -> None:
    final = run_cli("--cache", str(cache), "--no-cache-backup", "-q")
    assert final.returncode == 0, final.stderr
    assert_whole(client, bucket, root, cache, unrecorded_creates=unrecorded_creates)
    for key, count in versions_per_key(client, bucket).items():
        assert count <= needed.get(key.encode(), 1) + 1, f"{key}: {count} versions, {needed.get(key.encode())} needed"


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["first run", "incremental run with deletes"])
def test_sigkill_at_any_moment_loses_nothing(
    scenario: str, tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    # Uncrashed rehearsals measure how long a run takes, to spread the kills over it.
    durations = []
    for attempt in range(2):
        rehearsal = tmp_path / f"rehearsal{attempt}"
        make_tree(rehearsal / "tree", seed=1)
        write_config(
            rehearsal / "cache",
            moto_endpoint,
            folders=[str(rehearsal / "tree")],
            bucket_prefix=f"{bucket_prefix}r{attempt}-",
            tuning=TUNING,
        )
        durations.append(timed_run(rehearsal / "cache"))
        if scenario != "first run":
            mutate(rehearsal / "tree", seed=2)
            durations[-1] = timed_run(rehearsal / "cache")
    duration = 0.85 * min(durations)

    killed = 0
    for moment in range(MOMENTS):
        base = tmp_path / f"m{moment}"
        root = base / "tree"
        make_tree(root, seed=1)
        cache = base / "cache"
        prefix = f"{bucket_prefix}{moment}-"
        write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=prefix, tuning=TUNING)
        bucket = stable_bucket_name(prefix, str(root))
        needed = {key_for_path(p).encode(): 1 for p in tree_files(root)}
        if scenario != "first run":
            timed_run(cache)
            needed = mutate(root, seed=2)
        # Moments from start-up to the last cache commit, evenly spread with a little jitter.
        delay = 0.05 + duration * (moment + random.Random(moment).random()) / MOMENTS
        if kill_at(cache, delay):
            killed += 1
        else:
            # The run ended before the kill: the machine is quicker now than at the rehearsals (a
            # busy machine's load comes and goes). The rerun below checks it all the same; later
            # moments are spread over a shorter estimate, so most kills still land inside a run.
            duration *= 0.8
        # Right after the kill: every cache row names a version S3 really stored.
        stored = stored_versions(s3_inspect, bucket)
        assert all((p, size) in stored for p, size in cache_rows(cache, bucket).items()), "cache ahead of S3"
        check_after_rerun(s3_inspect, bucket, root, cache, needed, unrecorded_creates=True)
    assert killed >= MOMENTS // 2, f"only {killed} of {MOMENTS} runs were still going when killed"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_gracefully(
    signum: int, tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    root = tmp_path / "tree"
    make_tree(root, seed=5)
    cache = tmp_path / "cache"
    bucket = stable_bucket_name(bucket_prefix, str(root))
    # Each PutObject held 0.1 s: the whole run takes seconds, so the signal lands while uploads are
    # in flight (unslowed, the run can finish before the first cache rows are even written).
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(Delay(seconds=0.1, ops={"PutObject"}))
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, tuning=TUNING)
        proc = start(cache)
        deadline = time.monotonic() + 30
        while not cache_rows(cache, bucket) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # signal once uploads are under way, however slow the machine
        assert proc.poll() is None, "the run ended before it could be signalled"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix, tuning=TUNING)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    rows = cache_rows(cache, bucket)
    objects = bucket_objects(s3_inspect, bucket)
    found = re.search(r"interrupted: 1 target, ([\d,]+) files? uploaded", stderr.decode())
    assert found, stderr.decode()[-2000:]
    uploaded = int(found.group(1).replace(",", ""))
    assert len(rows) == uploaded, "every upload S3 confirmed before the signal is recorded"
    assert all(objects.get(p) == size for p, size in rows.items()), "every cached file is in S3"
    # A multipart upload cut with parts in S3 stays open for the next run to continue; it is one
    # the cache records. One cut before S3 held any part of it is aborted.
    recorded = recorded_uploads(cache)
    assert all(key in recorded for key in open_uploads(s3_inspect, bucket)), "every open upload is recorded"
    check_after_rerun(s3_inspect, bucket, root, cache, {key_for_path(p).encode(): 1 for p in tree_files(root)})
