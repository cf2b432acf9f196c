"""The bandwidth limit with a timetable (issue 24): `tuning.bandwidth` and `--bandwidth`.

In-process and fast: the forms the setting takes, which rate is in force at each time of day (a fixed
clock, wrapping over midnight), the limiter following the timetable across a boundary without a
restart, and one line naming the key and the fix for every bad value. Slow, against moto over HTTP
through the recording proxy: uploads at 5 MB/s on the fast path and through botocore arrive at the
proxy within 10 % of the limit, while a heartbeat task on the same event loop is never held up.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ACCESS_KEY, REGION, SECRET_KEY, in_process, make_tree, write_config
from s3proxy import ProxyServer

from async_backup.backup.budget import ByteBudget
from async_backup.backup.upload import MemoryLimits, MultipartLog, UploadSettings, upload_file
from async_backup.disk.entries import DiskFile
from async_backup.disk.keys import key_for_path
from async_backup.errors import ConfigError
from async_backup.s3.bandwidth import MAX_STEP_BYTES, MIN_STEP_BYTES, Limiter
from async_backup.s3.client import open_s3
from async_backup.settings.bandwidth import parse_bandwidth
from async_backup.settings.config import AwsSettings, Tuning, parse_config

MiB = 1024 * 1024


def at(hh_mm: str) -> int:
    hours, minutes = hh_mm.split(":")
    return int(hours) * 60 + int(minutes)


def test_the_timetable_puts_the_last_entry_whose_time_has_passed_in_force_and_wraps_over_midnight() -> None:
    table = parse_bandwidth("06:00,20MB 19:00,off")
    assert table is not None
    assert table.rate_at(at("06:00")) == 20_000_000
    assert table.rate_at(at("18:59")) == 20_000_000
    assert table.rate_at(at("19:00")) is None
    assert table.rate_at(at("23:59")) is None
    assert table.rate_at(at("00:00")) is None  # still the evening's "off"
    assert table.rate_at(at("05:59")) is None
    # rclone's own example: K and M alone are binary, as in its --bwlimit; the night's limit wraps.
    rclone = parse_bandwidth("08:00,512k 19:00,10M 23:00,1MB")
    assert rclone is not None
    assert rclone.rate_at(at("07:59")) == 1_000_000
    assert rclone.rate_at(at("08:00")) == 512 * 1024
    assert rclone.rate_at(at("19:30")) == 10 * MiB
    assert rclone.rate_at(at("23:00")) == 1_000_000


@pytest.mark.parametrize(
    ("value", "rate"),
    [
        (5_000_000, 5_000_000),
        (2.5e6, 2_500_000),
        ("20MB", 20_000_000),
        ("150MiB", 150 * MiB),
        ("20 MB/s", 20_000_000),
        ("500kB", 500_000),
        ("1.5GB", 1_500_000_000),
        ("1GiB", 1024 * MiB),
        ("10m", 10 * MiB),
        ("100000", 100_000),
    ],
)
def test_a_flat_rate_holds_all_day(value: Any, rate: float) -> None:
    table = parse_bandwidth(value)
    assert table is not None
    assert {table.rate_at(m) for m in (0, at("12:00"), at("23:59"))} == {rate}


@pytest.mark.parametrize("value", [None, "off", " off ", "00:00,off", "06:00,off 19:00,off"])
def test_no_limit_at_any_hour_means_no_limiter_at_all(value: Any) -> None:
    assert parse_bandwidth(value) is None


def test_the_limiter_follows_the_timetable_across_a_boundary_without_a_restart() -> None:
    """A fixed clock: the rate is asked again at most once a second, so "19:00,off" takes effect
    within a second of 19:00, and "06:00,20MB" the next morning."""
    table = parse_bandwidth("06:00,20MB 19:00,off")
    assert table is not None
    clock = [1000.0]
    minute = [at("18:59")]
    limiter = Limiter(table, minute_of_day=lambda: minute[0], clock=lambda: clock[0])
    assert limiter.rate() == 20_000_000
    assert limiter.step_bytes() == MAX_STEP_BYTES  # 20 MB/s / 20 steps a second, capped
    minute[0] = at("19:00")
    clock[0] += 0.5
    assert limiter.rate() == 20_000_000  # asked again only after a second
    clock[0] += 0.5
    assert limiter.rate() is None
    minute[0] = at("06:00")
    clock[0] += 11 * 3600
    assert limiter.rate() == 20_000_000


def test_the_limiter_reserves_time_in_order_and_never_waits_without_a_limit() -> None:
    """Each acquire reserves the next n/rate seconds: the first goes at once, the next ones wait
    for the time reserved before them; with the limit off (19:00) nothing waits."""
    table = parse_bandwidth("06:00,1MB 19:00,off")
    assert table is not None
    clock = [0.0]
    minute = [at("12:00")]
    limiter = Limiter(table, minute_of_day=lambda: minute[0], clock=lambda: clock[0])
    assert limiter.step_bytes() == 50_000  # 1 MB/s in 20 steps a second
    slept: list[float] = []

    async def main() -> None:
        async def timed(n: int) -> None:
            started = time.monotonic()
            await limiter.acquire(n)
            slept.append(time.monotonic() - started)

        await timed(50_000)  # reserves [0, 0.05)
        await timed(50_000)  # reserves [0.05, 0.1): waits 0.05 s on the real clock
        minute[0] = at("19:00")
        clock[0] += 1.0  # a second later on the limiter's clock: the limit is off
        for _ in range(100):
            await timed(MAX_STEP_BYTES)

    anyio.run(main)
    assert slept[0] < 0.04
    assert slept[1] >= 0.04
    assert max(slept[2:]) < 0.5  # generous: nothing sleeps at all
    assert MIN_STEP_BYTES <= limiter.step_bytes() <= MAX_STEP_BYTES


def config_with(tmp_path: Path, bandwidth: Any) -> dict[str, Any]:
    return {
        "backup": {"folders": [str(tmp_path)], "roots": []},
        "aws": {"access_key": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        "tuning": {"bandwidth": bandwidth},
    }


@pytest.mark.parametrize(
    "value",
    [
        "20XB",
        "fast",
        "",
        "5",  # bytes per second: surely meant as 5 MB/s
        5,
        -1,
        True,
        ["06:00,20MB"],
        "25:00,20MB",
        "06:60,20MB",
        "6h,20MB",
        "06:00 20MB",
        "19:00,off 06:00,20MB",
        "06:00,20MB 06:00,off",
        "06:00,",
    ],
)
def test_a_bad_value_is_one_line_naming_tuning_bandwidth_and_the_fix(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(tmp_path, value), tmp_path / "config.json")
    message = str(caught.value)
    assert "\n" not in message
    assert "tuning.bandwidth" in message
    assert any(fix in message for fix in ('"06:00,20MB 19:00,off"', '"5MB"', "list times in order")), message
    assert SECRET_KEY not in message


def test_the_setting_is_read_from_config_json(tmp_path: Path) -> None:
    config = parse_config(config_with(tmp_path, "06:00,20MB 19:00,off"), tmp_path / "config.json")
    assert config.tuning.bandwidth is not None
    assert config.tuning.bandwidth.text == "06:00,20MB 19:00,off"
    assert parse_config(config_with(tmp_path, "off"), tmp_path / "config.json").tuning.bandwidth is None


def test_a_bad_bandwidth_flag_is_one_line_and_a_usage_error(tmp_path: Path, moto_endpoint: str) -> None:
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(tmp_path)])
    ran = in_process("--cache", str(cache), "--bandwidth", "fast")
    assert ran.returncode == 2
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, ran.stderr
    assert "--bandwidth" in lines[0] and '"06:00,20MB 19:00,off"' in lines[0]


def test_a_backup_run_with_the_flag_sends_its_bodies_at_the_limit(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    """The whole pipeline, in this process: `--bandwidth 1MB` overrides config.json's "off", and
    2 MB of files (small single PUTs and larger streamed ones) reach the proxy over about 2 s."""
    root = tmp_path / "tree"
    make_tree(root, {f"small/{i}.bin": os.urandom(100_000) for i in range(8)})
    make_tree(root, {f"large/{i}.bin": os.urandom(600_000) for i in range(2)})
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix, tuning={"bandwidth": "off"})
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while True:  # one more sample after the run: its last bytes may have come after the last tick
            stopped = stop.wait(0.05)
            samples.append((time.monotonic(), sum(r.request_bytes for r in proxy.requests if r.op == "PutObject")))
            if stopped:
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        ran = in_process("--cache", str(cache), "--no-cache-backup", "--bandwidth", "1MB")
    finally:
        stop.set()
        sampler.join()
    assert ran.returncode == 0, ran.stderr
    total = 2_000_000
    first = next(t for t, got in samples if got > 0)
    last = next(t for t, got in samples if got >= total)
    # At 1 MB/s the first step goes at once and the rest takes its time: 2 MB over about 2 s
    # (unlimited, loopback carries it in a few milliseconds).
    assert last - first >= 1.5, last - first


def test_without_a_limit_no_body_has_a_limiter(moto_endpoint: str) -> None:
    aws = AwsSettings(ACCESS_KEY, SECRET_KEY, REGION, moto_endpoint)

    async def main() -> None:
        async with open_s3(aws, Tuning()) as s3:
            assert s3.fast_path is not None and s3.fast_path.limiter is None
        limited = Tuning(bandwidth=parse_bandwidth("5MB"))
        async with open_s3(aws, limited) as s3:
            assert s3.fast_path is not None and s3.fast_path.limiter is not None

    anyio.run(main)


# Slow: the rate on the wire.

LIMIT_BYTES_S = 5_000_000
MEASURED_S = 30.0
SETTLE_S = 1.0  # the measurement starts once the first bodies are on their way


def sparse_files(base: Path, count: int, size: int) -> list[Path]:
    """Files of zeros that take no disk space: reading them costs no I/O."""
    base.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = base / f"f{i:02d}.bin"
        with open(path, "wb") as f:
            f.truncate(size)
        paths.append(path)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("direct_put", [True, False], ids=["fast-path", "botocore"])
def test_uploads_go_at_the_limit_over_30_s_and_the_event_loop_never_stalls(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, direct_put: bool
) -> None:
    """Eight uploads at once (single PUTs and 8 MiB parts) of more than 30 s can carry at 5 MB/s:
    the bytes the proxy receives in 30 s are within 10 % of the limit, and a heartbeat on the same
    event loop is never late by a second (assert generously: the machine is busy)."""
    paths = sparse_files(tmp_path / "tree", 8, 40 * MiB) + sparse_files(tmp_path / "big", 1, 100 * MiB)
    files = [DiskFile(os.fsencode(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    settings = UploadSettings("DEEP_ARCHIVE", 64 * MiB, 8 * MiB)
    aws = AwsSettings(ACCESS_KEY, SECRET_KEY, REGION, proxy.url, direct_put=direct_put)
    tuning = Tuning(bandwidth=parse_bandwidth(LIMIT_BYTES_S))
    limits = MemoryLimits(ByteBudget(256 * MiB), anyio.Semaphore(4))
    bucket = f"{bucket_prefix}{'fast' if direct_put else 'boto'}"
    samples: list[tuple[float, int]] = []
    worst_lag_s = 0.0

    def received() -> int:
        return sum(r.request_bytes for r in proxy.requests if r.op in ("PutObject", "UploadPart"))

    async def heartbeat() -> None:
        nonlocal worst_lag_s
        while True:
            started = time.monotonic()
            await anyio.sleep(0.05)
            worst_lag_s = max(worst_lag_s, time.monotonic() - started - 0.05)

    async def main() -> None:
        async with open_s3(aws, tuning) as s3:
            await s3.create_bucket(bucket)

            async def one(file: DiskFile) -> None:
                await upload_file(s3, bucket, key_for_path(file.path), file, settings, limits, MultipartLog())

            async with anyio.create_task_group() as tg:
                tg.start_soon(heartbeat)
                for file in files:
                    tg.start_soon(one, file)
                began = time.monotonic()
                await anyio.sleep(SETTLE_S)
                while (now := time.monotonic()) - began < SETTLE_S + MEASURED_S:
                    samples.append((now, received()))
                    await anyio.sleep(0.5)
                samples.append((time.monotonic(), received()))
                tg.cancel_scope.cancel()

    anyio.run(main)
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    rate = (b1 - b0) / (t1 - t0)
    assert t1 - t0 >= MEASURED_S
    print(f"measured {rate / 1e6:.2f} MB/s against {LIMIT_BYTES_S / 1e6:g} MB/s, heartbeat late by {worst_lag_s:.3f} s")
    assert abs(rate - LIMIT_BYTES_S) <= 0.10 * LIMIT_BYTES_S, f"{rate / 1e6:.2f} MB/s"
    assert worst_lag_s < 1.0, worst_lag_s


def test_the_plan_takes_the_mean_limit_over_the_window_and_none_where_part_of_it_is_unlimited() -> None:
    table = parse_bandwidth("01:00,10MB 03:00,30MB 07:00,off")
    assert table is not None
    # From 01:00 for 4 h: 2 h at 10 MB/s and 2 h at 30 MB/s.
    assert table.mean_rate(60, 240) == pytest.approx(20e6)
    assert table.mean_rate(60, 120) == pytest.approx(10e6)
    assert table.mean_rate(60, 420) is None  # 07:00-08:00 has no limit
    assert table.mean_rate(23 * 60, 60) is None  # before 01:00 the day's last entry, off, holds
