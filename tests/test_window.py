"""The nightly window (--stop-at, --max-duration, backup.window) and the plan a dry run states for a
large backlog: parsing with a fixed "now", the estimate at the window's end, the backlog in the
summary, report, metrics and card, a real run cut by its window against moto behind a proxy that
reads bodies at a slow pace, and the next run finishing it."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import all_keys, in_process, last_report, make_tree, run_cli, write_config
from faultcheck import cache_rows
from s3proxy import PacedBody, ProxyServer
from test_publish import WebhookServer

from async_backup.backup.cutoff import Flight
from async_backup.disk.keys import key_for_path
from async_backup.errors import EXIT_WINDOW, ConfigError
from async_backup.report.backlog import SendRate, nights_needed, plan_lines
from async_backup.report.card import card_json
from async_backup.report.runreport import build_report, render_metrics
from async_backup.report.status import outcome
from async_backup.report.summary import RunSummary, TargetStats
from async_backup.s3.pricing import prices_for
from async_backup.settings.config import parse_config
from async_backup.settings.naming import stable_bucket_name
from async_backup.settings.window import (
    Window,
    next_stop,
    parse_duration,
    parse_stop_at,
    window_from_config,
    window_seconds,
    with_flags,
)

MiB = 1024 * 1024

# ------------------------------------------------------------------------------- parsing, pure


def test_a_stop_time_still_ahead_today_is_today_and_one_already_past_is_tomorrow() -> None:
    night = datetime(2026, 12, 3, 1, 0)
    assert next_stop(night, (6, 30)) == datetime(2026, 12, 3, 6, 30)
    afternoon = datetime(2026, 12, 3, 14, 0)
    assert next_stop(afternoon, (6, 30)) == datetime(2026, 12, 4, 6, 30)
    exactly = datetime(2026, 12, 3, 6, 30)
    assert next_stop(exactly, (6, 30)) == datetime(2026, 12, 4, 6, 30)
    # Across the end of a month and of a year.
    assert next_stop(datetime(2026, 12, 31, 23, 0), (6, 0)) == datetime(2027, 1, 1, 6, 0)


def test_the_window_ends_at_the_earlier_of_its_two_limits() -> None:
    now = datetime(2026, 12, 3, 1, 0)
    assert window_seconds(Window(stop_at=(6, 30)), now) == 5.5 * 3600
    assert window_seconds(Window(max_duration_s=3600.0), now) == 3600
    assert window_seconds(Window(stop_at=(6, 30), max_duration_s=8 * 3600.0), now) == 5.5 * 3600
    assert window_seconds(Window(stop_at=(1, 30), max_duration_s=8 * 3600.0), now) == 1800
    assert window_seconds(Window(), now) is None


@pytest.mark.parametrize(("text", "hm"), [("06:30", (6, 30)), ("6:05", (6, 5)), ("00:00", (0, 0)), ("23:59", (23, 59))])
def test_stop_at_takes_hh_mm(text: str, hm: tuple[int, int]) -> None:
    assert parse_stop_at(text, "--stop-at") == hm


@pytest.mark.parametrize("text", ["24:00", "6.30", "06:60", "630", "", "6:30pm", "tomorrow"])
def test_a_bad_stop_at_names_the_flag_and_the_form(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_stop_at(text, "--stop-at")
    message = str(caught.value)
    assert "--stop-at" in message and "HH:MM" in message and "\n" not in message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5h", 18000), ("90m", 5400), ("45s", 45), ("600", 600), (7200, 7200), ("1.5h", 5400), ("8 s", 8)],
)
def test_max_duration_takes_s_m_h(value: Any, seconds: float) -> None:
    assert parse_duration(value, "--max-duration") == seconds


@pytest.mark.parametrize("value", ["0", "-1h", "5d", "5 hours", "h", "", True, None, "200h"])
def test_a_bad_max_duration_names_the_key_and_the_form(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "backup.window.max_duration")
    assert "backup.window.max_duration" in str(caught.value) and '"5h"' in str(caught.value)


def test_backup_window_in_config_json_and_the_flags_over_it(tmp_path: Path) -> None:
    raw = {"backup": {"folders": ["/srv/a"], "window": {"stop_at": "06:30", "max_duration": "5h", "grace_s": 30}}}
    config = parse_config(raw, tmp_path / "config.json")
    assert config.window == Window(stop_at=(6, 30), max_duration_s=18000.0, grace_s=30.0)
    assert not config.warnings
    assert with_flags(config.window, "05:00", None) == Window((5, 0), 18000.0, 30.0)
    assert with_flags(config.window, None, "90m") == Window((6, 30), 5400.0, 30.0)
    assert parse_config({"backup": {"folders": ["/srv/a"]}}, tmp_path / "c.json").window == Window(grace_s=120.0)


@pytest.mark.parametrize(
    ("window", "key"),
    [
        ({"stop_at": "25:00"}, "backup.window.stop_at"),
        ({"max_duration": "forever"}, "backup.window.max_duration"),
        ({"grace_s": -1}, "backup.window.grace_s"),
        ({"stop": "06:00"}, "backup.window has unknown keys"),
        ("06:30", "backup.window must be an object"),
    ],
)
def test_a_bad_backup_window_is_one_line_naming_the_key(window: Any, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        window_from_config(window, str(tmp_path / "config.json"))
    assert key in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_flag_exits_2_with_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_config(cache, "http://127.0.0.1:9", folders=[str(tmp_path)])
    ran = in_process("--cache", str(cache), "--stop-at", "25:00")
    assert ran.returncode == 2
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and "--stop-at" in lines[0] and "HH:MM" in lines[0]
    ran = in_process("--cache", str(cache), "--max-duration", "5 hours")
    assert ran.returncode == 2 and "--max-duration" in ran.stderr and '"5h"' in ran.stderr


# ------------------------------------------------------------------------------- the estimate


def test_an_upload_in_flight_is_estimated_by_its_own_rate_else_by_its_share_of_the_runs() -> None:
    flight = Flight(100 * MiB)
    now = flight.started + 10.0
    # Nothing confirmed of its own yet (a single PutObject): the run's rate shared decides.
    assert flight.seconds_left(now, shared_rate=10 * MiB) == 10.0
    assert flight.seconds_left(now, shared_rate=0.0) == math.inf
    # 40 MiB of its parts confirmed in 10 s: 4 MiB/s, 60 MiB left.
    flight.confirmed_bytes = 40 * MiB
    assert flight.seconds_left(now, shared_rate=1000 * MiB) == 15.0


# ------------------------------------------------------------------------------- reporting, pure


def _windowed_summary() -> RunSummary:
    target = TargetStats(name="/srv/images/scans", bucket="acme-scans", new=1200, bytes_uploaded=900 * 1024**3)
    target.finished_at = target.started_at + 18000
    summary = RunSummary(host="archive1", started_at=target.started_at, finished_at=target.finished_at)
    summary.targets = [target]
    summary.window_s = 18000.0
    summary.left_files = 5000
    summary.left_bytes = 4 * 1024**4  # 4 TiB left at 900 GiB a night: 5 more nights
    summary.exit_code = EXIT_WINDOW
    return summary


def test_the_backlog_in_the_summary_report_metrics_and_card() -> None:
    summary = _windowed_summary()
    assert summary.ended_by_window and summary.nights_left == 5
    line = summary.backlog_line()
    assert "5,000 files (4.0 TiB)" in line and "about 5 more nights" in line and "5 h 00 min window" in line
    report = build_report(summary)
    assert report["window"] == {
        "seconds": 18000.0,
        "ended_by_window": True,
        "left_files": 5000,
        "left_bytes": 4 * 1024**4,
        "nights_left": 5,
    }
    assert report["exit_code"] == EXIT_WINDOW and not report["succeeded"]
    metrics = render_metrics(summary, None)
    assert "async_backup_backlog_files 5000" in metrics and f"async_backup_backlog_bytes {4 * 1024**4}" in metrics
    card = card_json(summary)
    assert "window ended" in card and "about 5 more nights" in card
    assert "failed (exit code" not in card and '"color": "Attention"' not in card.split('"body"')[1][:400]


def test_a_window_that_sent_nothing_says_the_nights_are_unknown() -> None:
    summary = _windowed_summary()
    summary.targets[0].bytes_uploaded = 0
    assert summary.nights_left is None
    assert "unknown" in summary.backlog_line()


def test_the_plan_for_a_first_upload_counts_nights_and_cost() -> None:
    prices = prices_for("us-east-1")
    tib = 1024**4
    rate = SendRate(100 * MiB, "tuning.bandwidth")  # 100 MiB/s: 1.72 TiB in a 5 h window
    assert nights_needed(300 * tib, rate, 18000.0) == math.ceil(300 * tib / (100 * MiB * 18000))
    lines = plan_lines(2_000_000, 300 * tib, rate=rate, window_s=18000.0, requests=None,
                       storage_class="DEEP_ARCHIVE", prices=prices)  # fmt: skip
    assert lines[0] == "to send: 2,000,000 files, 300.0 TiB"
    assert lines[1].startswith("how long: 175 nights at 100.0 MiB/s (tuning.bandwidth) in a window of 5 h 00 min")
    assert lines[2].startswith("cost: first month of storage $")
    # 300 TiB at $0.00099 per GB-month is $304.13, plus 40 KB per object of overhead.
    usd = float(lines[2].split("$")[1].split(" ")[0].replace(",", ""))
    assert 304 < usd < 310
    deep = {"storage_class": "DEEP_ARCHIVE", "prices": prices}
    no_window = plan_lines(1, 10 * tib, rate=rate, window_s=None, requests=None, **deep)
    assert "2 days of continuous sending" in no_window[1]
    unknown = plan_lines(1, tib, rate=None, window_s=18000.0, requests=None, **deep)
    assert "the rate is unknown" in unknown[1]


def test_a_dry_run_states_the_nights_at_the_measured_rate_and_the_cost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_tree(data, {"scans/a.tif": b"a" * 1000, "scans/b.tif": b"b" * 1000, "scans/c.tif": b"c" * 1000})
    cache = tmp_path / "cache"
    write_config(cache, "http://127.0.0.1:9", folders=[str(data / "scans")], bucket_prefix="t-",
                 backup_extra={"window": {"max_duration": "5h"}})  # fmt: skip
    ran = in_process("--cache", str(cache), "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert "to send: 3 files, 2.9 KiB" in ran.stdout
    assert "how long: the rate is unknown" in ran.stdout
    # A run report of an earlier run that sent 100 bytes in 1,000 s: 0.1 B/s, 1,800 B a 5 h night.
    (cache / "reports").mkdir()
    earlier = {"dry_run": False, "duration_s": 1000.0, "totals": {"bytes_uploaded": 100}}
    (cache / "reports" / "2026-12-01T010000Z.json").write_text(json.dumps(earlier))
    ran = in_process("--cache", str(cache), "--dry-run", "--max-duration", "5h")
    assert ran.returncode == 0, ran.stderr
    assert "how long: 2 nights at 0 B/s (the measured rate of the last 1 run) in a window of 5 h 00 min" in ran.stdout
    assert "cost: first month of storage " in ran.stdout and "3 S3 requests $0.00015" in ran.stdout
    # A limit in force all through the window is the rate planned with.
    ran = in_process("--cache", str(cache), "--dry-run", "--max-duration", "5h", "--bandwidth", "100kB")
    assert "how long: 1 night at 97.7 KiB/s (tuning.bandwidth (100kB)) in a window of 5 h" in ran.stdout, ran.stdout


# ------------------------------------------------------------------------------- a real run


def _site(tmp_path: Path, endpoint: str, bucket_prefix: str, n: int, webhook: str) -> tuple[Path, Path, str]:
    data = tmp_path / "data"
    make_tree(data, {f"scans/page-{i:02d}.tif": bytes([i]) * (2 * MiB) for i in range(n)})
    cache = tmp_path / "cache"
    write_config(cache, endpoint, folders=[str(data / "scans")], bucket_prefix=bucket_prefix, webhook=webhook,
                 tuning={"workers": 2}, backup_extra={"window": {"grace_s": 1}})  # fmt: skip
    return data, cache, stable_bucket_name(bucket_prefix, str(data / "scans"))


@pytest.mark.slow
def test_a_run_cut_by_its_window_records_what_s3_confirmed_and_the_next_run_finishes(
    tmp_path: Path, proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str
) -> None:
    n = 24  # 48 MiB read at 1 MiB/s per upload, 2 at once: about 24 s, far more than the window
    with WebhookServer() as webhook:
        data, cache, bucket = _site(tmp_path, proxy.url, bucket_prefix, n, webhook.url)
        proxy.set_faults(PacedBody(bytes_per_s=MiB, ops={"PutObject"}))
        started = time.monotonic()
        ran = run_cli("--cache", str(cache), "--max-duration", "5s", "--no-cache-backup")
        took_s = time.monotonic() - started
        posts = webhook.posts
    assert ran.returncode == EXIT_WINDOW, ran.stderr[-3000:]

    keys = all_keys(s3_inspect, bucket)
    rows = cache_rows(cache, bucket)
    assert sorted(key_for_path(p) for p in rows) == keys  # exactly what S3 confirmed is recorded
    assert 0 < len(keys) < n
    report = last_report(cache)
    left = n - len(keys)
    window = report["window"]
    assert window["ended_by_window"] and window["left_files"] == left and window["left_bytes"] == left * 2 * MiB
    assert report["totals"]["bytes_uploaded"] == len(keys) * 2 * MiB
    assert window["nights_left"] == math.ceil(left / len(keys))
    assert report["exit_code"] == EXIT_WINDOW and report["failures"] == []
    assert "window ended" in ran.stderr and f"left for the next runs: {left} files" in ran.stderr
    # It ended within the grace: its own duration is the window, the grace and the run's edges,
    # far below the 24 s the data needs at this pace.
    assert report["duration_s"] < 5 + 1 + 6, report["duration_s"]
    assert took_s < 20
    # The card is posted without notification.on_success: it says what is left.
    assert len(posts) == 1
    card = json.dumps(posts[0].json(), ensure_ascii=False)
    assert "window ended" in card and f"left for the next runs: {left} files" in card

    proxy.clear()  # the next night: no window, no pace
    ran = run_cli("--cache", str(cache), "--no-cache-backup")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert proxy.count("PutObject") == left  # nothing S3 confirmed is sent again
    keys = all_keys(s3_inspect, bucket)
    assert len(keys) == n
    assert sorted(key_for_path(p) for p in cache_rows(cache, bucket)) == keys
    assert last_report(cache)["window"]["ended_by_window"] is False
    assert data.exists()


def test_status_tells_a_run_ended_by_its_window_from_a_failed_one() -> None:
    window = {"ended_by_window": True, "left_files": 3, "left_bytes": 30, "nights_left": 2}
    ended = {"succeeded": False, "exit_code": EXIT_WINDOW, "failures": 0, "window": window}
    assert outcome(ended) == "window ended, 3 files left (about 2 more nights)"
    assert outcome({**ended, "exit_code": 1, "failures": 1}).startswith("failed (exit code 1")


@pytest.mark.slow
def test_an_upload_that_would_finish_within_the_grace_finishes(
    tmp_path: Path, proxy: ProxyServer, s3_inspect: Any, bucket_prefix: str
) -> None:
    # A 12 MiB file in 5 MiB parts, one part at a time at 2 MiB/s: about 6 s. At the window's end
    # (6 s) its first part is confirmed: 7 MiB left at its own rate is well within the grace. The
    # other worker's 30 small files at 0.5 MiB/s would need a minute.
    data = tmp_path / "data"
    files = {"scans/a-big.tif": b"B" * (12 * MiB)} | {f"scans/page-{i:02d}.tif": bytes([i]) * MiB for i in range(30)}
    make_tree(data, files)
    cache = tmp_path / "cache"
    tuning = {"workers": 2, "multipart_threshold_mib": 5, "part_size_mib": 5, "parts_in_flight": 1}
    write_config(cache, proxy.url, folders=[str(data / "scans")], bucket_prefix=bucket_prefix, tuning=tuning,
                 backup_extra={"window": {"max_duration": "6s"}})  # fmt: skip
    bucket = stable_bucket_name(bucket_prefix, str(data / "scans"))
    proxy.set_faults(PacedBody(bytes_per_s=2 * MiB, ops={"UploadPart"}), PacedBody(bytes_per_s=MiB / 2))
    ran = run_cli("--cache", str(cache), "--no-cache-backup")
    assert ran.returncode == EXIT_WINDOW, ran.stderr[-3000:]
    keys = all_keys(s3_inspect, bucket)
    assert key_for_path(bytes(data / "scans" / "a-big.tif")) in keys  # finished within the grace
    assert sorted(key_for_path(p) for p in cache_rows(cache, bucket)) == keys
    assert proxy.count("CompleteMultipartUpload") == 1 and proxy.count("AbortMultipartUpload") == 0
    report = last_report(cache)
    assert report["window"]["left_files"] == len(files) - len(keys) > 0
    assert report["duration_s"] < 30, report["duration_s"]  # it ended by the window, not with the data
