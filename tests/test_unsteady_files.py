"""Files that do not hold still between the walk and their upload: replaced by a FIFO or a
character device, grown past the size the walk saw, or written to at every run.

"Between the walk and the upload" is made deterministic with a gate at the proxy: a target of
fewer files than a walk chunk (pipeline.CHUNK_FILES) queues its uploads only once its walk is over,
and with one worker the first file's PutObject, held at the gate, comes before the victim's open.
The test swaps the victim while the gate holds, then opens it. A run that would hang is ended by
the test (SIGTERM, then SIGKILL) and fails it; a run whose memory runs away is killed as well.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ACCESS_KEY, REGION, SECRET_KEY, key_of, run_cli, write_config
from faultcheck import bucket_objects, cache_rows, stored_versions
from s3proxy import Gate, ProxyServer

from async_backup.backup import upload
from async_backup.backup.budget import ByteBudget
from async_backup.backup.upload import MemoryLimits, MultipartLog, UploadSettings, upload_file
from async_backup.disk.entries import DiskFile
from async_backup.disk.read import FileChanged, FileVanished, open_regular
from async_backup.s3.client import open_s3
from async_backup.settings.config import AwsSettings, Tuning
from async_backup.settings.naming import stable_bucket_name

MiB = 1024 * 1024
ONE_WORKER = {"workers": 1, "multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 1}
RUN_TIMEOUT_S = 60
# A run of two small files peaks well below this; reading a character device without end passes
# it within a second (3.2 GiB in 4.5 s before the fix), long before the machine suffers.
RUNAWAY_RSS_KIB = 1024 * 1024
# The CLI's own entry point, reporting its peak RSS on stderr as it exits. VmHWM, not ru_maxrss:
# Linux folds the forking parent's RSS (pytest's, hundreds of MiB late in a full run) into the
# child's ru_maxrss across exec; VmHWM belongs to the new process image alone.
RUNNER = (
    "import sys\n"
    "from async_backup.__main__ import run\n"
    "code = run()\n"
    "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]\n"
    "print(f'PEAK_RSS_KIB {hwm}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


class Run:
    """One backup run in a subprocess, watched: ended by the test when it hangs or runs away."""

    def __init__(self, cache: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, "--cache", str(cache), "--no-cache-backup"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.runaway_kib = 0

    def rss_kib(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    def finish(self, timeout_s: float = RUN_TIMEOUT_S) -> tuple[int, str]:
        """Wait for the run; a run still going after `timeout_s`, or past RUNAWAY_RSS_KIB, is
        ended (SIGTERM, then SIGKILL) and the test fails."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            rss = self.rss_kib()
            if rss > RUNAWAY_RSS_KIB:
                self.runaway_kib = rss
                self.proc.kill()
                break
            time.sleep(0.02)
        hung = self.proc.poll() is None
        if hung:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        _, err = self.proc.communicate(timeout=30)
        stderr = err.decode(errors="replace")
        assert not self.runaway_kib, f"the run's memory ran away: {self.runaway_kib} KiB; stderr: {stderr[-2000:]}"
        assert not hung, f"the run hung; even SIGTERM {'ended' if self.proc.returncode == 130 else 'did not end'} it"
        return self.proc.returncode, stderr


def peak_rss_kib(stderr: str) -> int:
    return int(stderr.rsplit("PEAK_RSS_KIB ", 1)[1].split()[0])


def wait_for_request(proxy: ProxyServer, op: str, key: str, run: Run) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any(r.op == op and r.key == key for r in proxy.requests):
        assert run.proc.poll() is None, f"the run ended before the {op} of {key}"
        if time.monotonic() > deadline:
            run.proc.kill()
            run.proc.communicate(timeout=30)
            pytest.fail(f"no {op} of {key} arrived: the run hung (it was killed)")
        time.sleep(0.01)


def site(tmp_path: Path, endpoint: str, prefix: str, files: dict[str, bytes]) -> tuple[Path, Path, str]:
    root = tmp_path / "tree"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    cache = tmp_path / "cache"
    write_config(cache, endpoint, folders=[str(root)], bucket_prefix=prefix, tuning=ONE_WORKER)
    return root, cache, stable_bucket_name(prefix, str(root))


def run_with_swap(proxy: ProxyServer, cache: Path, first: Path, swap: Callable[[], None], *more: Gate) -> Run:
    """Start a run, hold the upload of `first` until `swap` has changed the tree, then let it go
    (`more` gates hold later requests)."""
    gate = Gate(ops={"PutObject"}, keys={key_of(first)}, max_hits=1)
    proxy.clear()  # an earlier run's requests must not pass for this one's
    proxy.set_faults(gate, *more)
    run = Run(cache)
    wait_for_request(proxy, "PutObject", key_of(first), run)
    swap()
    gate.opened.set()
    return run


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


# -------------------------------------------------------------------------------- nothing hangs


def test_a_file_replaced_by_a_fifo_after_the_walk_is_skipped_and_the_run_ends(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    with ProxyServer(moto_endpoint) as proxy:
        root, cache, bucket = site(tmp_path, proxy.url, bucket_prefix, {"a.tif": b"a" * 10, "b.tif": b"b" * 1000})
        run = run_with_swap(proxy, cache, root / "a.tif", lambda: replace_with_fifo(root / "b.tif"))
        code, stderr = run.finish()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "1 new" in stderr and "1 skipped" in stderr, stderr  # counted like a file deleted after the walk
    assert bucket_objects(s3_inspect, bucket) == {os.fsencode(root / "a.tif"): 10}
    assert list(cache_rows(cache, bucket)) == [os.fsencode(root / "a.tif")]


def test_sigterm_ends_a_run_that_met_a_fifo(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """The FIFO is passed by, and a SIGTERM while the next file is in flight ends the run with 130
    (before, the worker blocked in open() for good and SIGTERM could not end the run)."""
    files = {"a.tif": b"a" * 10, "b.tif": b"b" * 1000, "c.tif": b"c" * 10}
    with ProxyServer(moto_endpoint) as proxy:
        root, cache, bucket = site(tmp_path, proxy.url, bucket_prefix, files)
        held_c = Gate(ops={"PutObject"}, keys={key_of(root / "c.tif")}, max_hits=1)
        run = run_with_swap(proxy, cache, root / "a.tif", lambda: replace_with_fifo(root / "b.tif"), held_c)
        wait_for_request(proxy, "PutObject", key_of(root / "c.tif"), run)
        run.proc.send_signal(signal.SIGTERM)
        code, stderr = run.finish()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert list(cache_rows(cache, bucket)) == [os.fsencode(root / "a.tif")]


@pytest.mark.skipif(os.geteuid() != 0, reason="making a character device (mknod) needs root")
def test_a_file_replaced_by_a_character_device_is_skipped_without_reading_it(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    def to_dev_zero() -> None:
        victim = root / "b.tif"
        victim.unlink()
        os.mknod(victim, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # what /dev/zero is: never ends

    with ProxyServer(moto_endpoint) as proxy:
        root, cache, bucket = site(tmp_path, proxy.url, bucket_prefix, {"a.tif": b"a" * 10, "b.tif": b"b" * 1000})
        run = run_with_swap(proxy, cache, root / "a.tif", to_dev_zero)
        code, stderr = run.finish()
    assert code == 0, stderr
    assert "1 skipped" in stderr, stderr
    assert peak_rss_kib(stderr) < 256 * 1024, stderr
    assert bucket_objects(s3_inspect, bucket) == {os.fsencode(root / "a.tif"): 10}


def test_a_file_grown_after_the_walk_goes_by_its_new_size_within_the_memory_budget(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """The walk saw 1,000 bytes (a size read whole into memory); by its upload the file holds
    48 MiB. It is sent in streamed parts by its fstat size, and the run's peak memory stays within
    what the same run of small files needs plus the 16 MiB budget (read whole, as by the walk's size,
    it took the whole file more)."""
    grown_bytes = 48 * MiB
    with ProxyServer(moto_endpoint) as proxy:
        root, cache, bucket = site(tmp_path, proxy.url, bucket_prefix, {"a.tif": b"a" * 10, "b.tif": b"b" * 1000})
        code, baseline = Run(cache).finish()  # the same run with nothing grown: the memory it needs
        assert code == 0, baseline
        (root / "a.tif").write_bytes(b"A" * 10)
        (root / "b.tif").write_bytes(b"B" * 1000)

        def grow() -> None:
            with open(root / "b.tif", "ab") as f:
                f.truncate(grown_bytes)

        code, stderr = run_with_swap(proxy, cache, root / "a.tif", grow).finish()
    assert code == 0, stderr
    assert peak_rss_kib(stderr) < peak_rss_kib(baseline) + 24 * 1024, (peak_rss_kib(baseline), stderr)
    assert bucket_objects(s3_inspect, bucket)[os.fsencode(root / "b.tif")] == grown_bytes
    assert cache_rows(cache, bucket)[os.fsencode(root / "b.tif")] == grown_bytes


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            fd, _ = open_regular(os.fsencode(fifo))
            os.close(fd)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # blocked in open(): a writer lets it go, so the suite is not held
        with open(fifo, "wb"):
            pass
        thread.join(10)
        pytest.fail("opening a FIFO blocked until a writer came")
    assert len(outcome) == 1 and isinstance(outcome[0], FileVanished), outcome


# -------------------------------------------------------------------------- never holds still


def test_a_streamed_body_that_changes_during_its_checksum_pass_is_never_sent(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single PutObject streamed from the file: a change the fstat after the checksum pass sees
    ends the upload before a byte is sent, so S3 never holds a version the tool knew was not a
    consistent copy (before, it was sent, stored, then left unrecorded)."""
    path = tmp_path / "scan.tif"
    path.write_bytes(os.urandom(2 * MiB))
    real_feed = upload.feed_range

    def feed_then_write(fd: int, *rest: Any) -> None:
        real_feed(fd, *rest)
        with open(path, "r+b") as f:
            f.write(b"new scan line")
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))

    monkeypatch.setattr(upload, "feed_range", feed_then_write)
    bucket = f"{bucket_prefix}scan"
    s3_inspect.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3_inspect.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    st = path.stat()
    file = DiskFile(os.fsencode(path), st.st_size, st.st_mtime_ns)
    aws = AwsSettings(ACCESS_KEY, SECRET_KEY, REGION, moto_endpoint)

    async def attempt() -> None:
        async with open_s3(aws, Tuning()) as s3:
            limits = MemoryLimits(ByteBudget(16 * MiB), anyio.Semaphore(1))
            await upload_file(
                s3, bucket, key_of(path), file, UploadSettings("STANDARD", 5 * MiB, 5 * MiB), limits, MultipartLog()
            )

    with pytest.raises(FileChanged):
        anyio.run(attempt)
    assert stored_versions(s3_inspect, bucket) == set()


def test_a_file_that_never_holds_still_fails_on_the_third_run_naming_it(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """A file written to all the time: runs 1 and 2 warn ("changed while reading", exit 0), run 3
    fails naming it and what to do (exit 1, on the card and in the report). No run leaves a version
    of it in S3. Once it holds still it is uploaded and its count ends."""
    root = tmp_path / "tree"
    root.mkdir()
    busy = root / "scanner.log"
    busy.write_bytes(os.urandom(30 * MiB))
    (root / "calm.tif").write_bytes(b"calm")
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(root)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 1},
    )
    bucket = stable_bucket_name(bucket_prefix, str(root))
    stop = threading.Event()

    def keep_writing() -> None:
        with open(busy, "r+b") as f:
            while not stop.is_set():
                f.seek(0)
                f.write(os.urandom(16))
                f.flush()
                os.utime(busy)
                time.sleep(0.005)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        runs = [
            run_cli("--cache", str(cache), "--no-cache-backup", "--print-card", timeout_s=RUN_TIMEOUT_S)
            for _ in range(3)
        ]
    finally:
        stop.set()
        writer.join()
    for result in runs[:2]:
        assert result.returncode == 0, result.stderr
        assert "changed while reading" in result.stderr and "scanner.log" in result.stderr
        assert "never holds still" not in result.stderr
    third = runs[2]
    assert third.returncode == 1, third.stderr
    assert "never holds still" in third.stderr and "scanner.log" in third.stderr, third.stderr
    card = json.dumps(json.loads(third.stdout))
    assert "never holds still" in card and "scanner.log" in card and "backup.exclude" in card, card
    reports = sorted((cache / "reports").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    failures = json.loads(reports[-1].read_text())["failures"]
    (failure,) = [f for f in failures if f["kind"] == "never holds still"]
    assert failure["path"].endswith("scanner.log") and "3 runs in a row" in failure["message"], failure
    assert "backup.exclude" in failure["message"]
    assert {p for p, _ in stored_versions(s3_inspect, bucket)} == {os.fsencode(root / "calm.tif")}
    assert s3_inspect.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    settled = run_cli("--cache", str(cache), "--no-cache-backup", timeout_s=RUN_TIMEOUT_S)
    assert settled.returncode == 0, settled.stderr
    assert cache_rows(cache, bucket)[os.fsencode(busy)] == busy.stat().st_size
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM unsettled").fetchone() == (0,)
    finally:
        conn.close()


def test_a_file_deleted_before_it_ever_held_still_ends_its_count(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    """Never recorded, such a file leaves no cache row whose delete would end its count: the run
    that no longer finds it changing does, so a new file of that name starts again from one."""
    root = tmp_path / "tree"
    root.mkdir()
    busy = root / "scanner.log"
    busy.write_bytes(os.urandom(30 * MiB))
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(root)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 1},
    )
    stop = threading.Event()

    def keep_writing() -> None:
        with open(busy, "r+b") as f:
            while not stop.is_set():
                f.seek(0)
                f.write(os.urandom(16))
                f.flush()
                os.utime(busy)
                time.sleep(0.005)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        changing = run_cli("--cache", str(cache), "--no-cache-backup", timeout_s=RUN_TIMEOUT_S)
    finally:
        stop.set()
        writer.join()
    assert changing.returncode == 0 and "changed while reading" in changing.stderr, changing.stderr
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        assert conn.execute("SELECT runs FROM unsettled").fetchall() == [(1,)]
        busy.unlink()
        gone = run_cli("--cache", str(cache), "--no-cache-backup", timeout_s=RUN_TIMEOUT_S)
        assert gone.returncode == 0, gone.stderr
        assert conn.execute("SELECT COUNT(*) FROM unsettled").fetchone() == (0,)
    finally:
        conn.close()


def test_a_change_after_s3_stored_a_streamed_body_still_records_what_s3_holds(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """The file changes after S3 stored its body, before the reply arrives. S3 holds exactly the
    checksummed bytes, which were the file as of the size and mtime checked after the checksum
    pass: the row records that (size, mtime), true of the object, and the next run uploads the
    newer file. Before, the object stayed in S3 unrecorded."""
    path = tmp_path / "scan.tif"
    first = os.urandom(2 * MiB)
    path.write_bytes(first)
    st = path.stat()
    file = DiskFile(os.fsencode(path), st.st_size, st.st_mtime_ns)
    bucket = f"{bucket_prefix}late"
    s3_inspect.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3_inspect.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    outcome: list[Any] = []

    with ProxyServer(moto_endpoint) as proxy:
        gate = Gate(ops={"PutObject"}, after_forward=True, max_hits=1)
        proxy.set_faults(gate)
        aws = AwsSettings(ACCESS_KEY, SECRET_KEY, REGION, proxy.url)

        async def attempt() -> None:
            async with open_s3(aws, Tuning()) as s3:
                limits = MemoryLimits(ByteBudget(16 * MiB), anyio.Semaphore(1))
                settings = UploadSettings("STANDARD", 5 * MiB, 5 * MiB)
                outcome.append(await upload_file(s3, bucket, key_of(path), file, settings, limits, MultipartLog()))

        def upload_in_thread() -> None:
            try:
                anyio.run(attempt)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=upload_in_thread, daemon=True)
        thread.start()
        assert gate.arrived.wait(RUN_TIMEOUT_S), "the PutObject never reached the proxy"
        with open(path, "r+b") as f:
            f.write(b"a later scan line")
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        gate.opened.set()
        thread.join(RUN_TIMEOUT_S)
    assert len(outcome) == 1 and isinstance(outcome[0], upload.Uploaded), outcome
    assert (outcome[0].size, outcome[0].mtime_ns) == (st.st_size, st.st_mtime_ns)
    versions = s3_inspect.list_object_versions(Bucket=bucket).get("Versions", [])
    assert len(versions) == 1
    body = s3_inspect.get_object(Bucket=bucket, Key=key_of(path))["Body"].read()
    assert body == first
