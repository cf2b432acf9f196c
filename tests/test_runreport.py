"""The JSON run report (content, atomic write, retention) and the node_exporter textfile metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import write_config
from hypothesis import given
from hypothesis import strategies as st

from async_backup.errors import Failure, FailureKind
from async_backup.report.publish import publish
from async_backup.report.redact import printable
from async_backup.report.runreport import (
    LAST_SUCCESS_METRIC,
    build_report,
    escape_label_value,
    prune_reports,
    read_last_success,
    render_metrics,
    write_metrics,
    write_report,
)
from async_backup.report.summary import RunSummary, TargetStats
from async_backup.settings.config import load_config

T0 = 1_795_888_320.0  # 2026-11-28T17:52:00Z


def make_summary(*, started_at: float = T0, failed: bool = True, **kw: object) -> RunSummary:
    a = TargetStats(
        name="/srv/images/a",
        bucket="nas01-a",
        new=3,
        updated=1,
        deleted=2,
        unchanged=10,
        bytes_uploaded=4_000_000,
        started_at=started_at,
        finished_at=started_at + 4,
    )
    b = TargetStats(
        name='/srv/odd "quoted"\\back\nline',
        bucket="nas01-b",
        new=1,
        bytes_uploaded=10,
        started_at=started_at + 4,
        finished_at=started_at + 4,
    )
    failures = []
    if failed:
        failures = [
            Failure(FailureKind.S3, a.name, "/srv/images/a/x.jpg", "SlowDown after retries", "SlowDown"),
            Failure(FailureKind.UNREADABLE, b.name, os.fsdecode(b"/srv/odd/\xff.jpg"), "Permission denied", "EACCES"),
            Failure(FailureKind.UNREADABLE, b.name, "/srv/odd/y.jpg", "Permission denied", "EACCES"),
        ]
        a.failed, b.failed = 1, 2
    return RunSummary(
        host="nas01",
        started_at=started_at,
        finished_at=started_at + 10,
        targets=[a, b],
        failures=failures,
        warnings=[Failure(FailureKind.NOTIFICATION, "", "https://x.logic.azure.com", "HTTP 500", "500")],
        exit_code=1 if failed else 0,
        **kw,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- report


def test_report_holds_counts_failures_warnings_and_exit_code(tmp_path: Path) -> None:
    summary = make_summary()
    path = write_report(tmp_path, summary)
    assert path == tmp_path / "reports" / "2026-11-28T175200Z.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report == build_report(summary)
    assert report["exit_code"] == 1 and report["succeeded"] is False
    assert report["started_at"] == "2026-11-28T17:52:00Z" and report["duration_s"] == 10.0
    assert report["totals"]["files_uploaded"] == 5 and report["totals"]["bytes_uploaded"] == 4_000_010
    a = report["targets"][0]
    assert (a["new"], a["updated"], a["deleted"], a["failed"], a["bytes_uploaded"]) == (3, 1, 2, 1, 4_000_000)
    assert a["duration_s"] == 4.0 and a["throughput_bytes_per_s"] == 1_000_000.0
    assert report["targets"][1]["throughput_bytes_per_s"] is None  # zero duration
    assert report["failures"][0] == {
        "kind": "S3 error",
        "code": "SlowDown",
        "target": "/srv/images/a",
        "path": "/srv/images/a/x.jpg",
        "message": "SlowDown after retries",
        "folder": False,
    }
    assert report["failures"][1]["path"] == "/srv/odd/\\xff.jpg"  # undecodable byte shown, file still UTF-8
    assert report["failures_by_group"] == {"unreadable: EACCES": 2, "S3 error: SlowDown": 1}
    assert report["warnings"][0]["kind"] == "notification"
    assert not list((tmp_path / "reports").glob("*.tmp"))


def test_unfinished_summary_reports_without_reading_the_clock() -> None:
    summary = make_summary()
    summary.finished_at = None
    summary.targets[0].finished_at = None
    report = build_report(summary)
    assert report["finished_at"] is None and report["duration_s"] is None
    assert report["targets"][0]["throughput_bytes_per_s"] is None
    assert build_report(summary) == report


def test_retention_keeps_the_newest_n(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    keepsake = tmp_path / "reports" / "notes.txt"
    keepsake.write_text("not a report")
    paths = [write_report(tmp_path, make_summary(started_at=T0 + 86_400 * day), keep=5) for day in range(8)]
    # two runs in the same second get distinct names and both count
    same_second = write_report(tmp_path, make_summary(started_at=T0 + 86_400 * 7), keep=5)
    assert same_second.name == "2026-12-05T175200Z-2.json"
    left = sorted(p.name for p in (tmp_path / "reports").glob("*.json"))
    expected = sorted([p.name for p in paths[4:]] + [same_second.name])
    assert left == expected
    assert keepsake.exists()
    assert prune_reports(tmp_path / "reports", 2) and len(list((tmp_path / "reports").glob("*.json"))) == 2
    assert {p.name for p in (tmp_path / "reports").glob("*.json")} == {paths[7].name, same_second.name}


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, make_summary())
    assert list((tmp_path / "reports").iterdir()) == []


# ----------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_prom(text: str) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """A small parser for the text exposition format: ({name: (help, type)}, {(name, labels): value})."""
    assert text.endswith("\n")
    meta: dict[str, list[str]] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in meta, f"duplicate HELP for {name}"
            meta[name] = [help_text, ""]
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name in meta and kind in {"counter", "gauge", "untyped", "summary", "histogram"}
            meta[name][1] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"bad sample line {line!r}"
            name, raw_labels, value = match.groups()
            assert name in meta and meta[name][1], f"sample {name} without HELP/TYPE"
            labels: list[tuple[str, str]] = []
            if raw_labels:
                consumed = 0
                for label in _LABEL.finditer(raw_labels):
                    assert label.start() == consumed, f"bad labels {raw_labels!r}"
                    consumed = label.end()
                    unescaped = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), label.group(2))
                    labels.append((label.group(1), unescaped))
                assert consumed == len(raw_labels), f"bad labels {raw_labels!r}"
            key = (name, frozenset(labels))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = float(value)
    return {k: (v[0], v[1]) for k, v in meta.items()}, samples


def test_metrics_are_parseable_with_help_type_and_escaped_labels(tmp_path: Path) -> None:
    path = tmp_path / "async_backup.prom"
    summary = make_summary()
    write_metrics(path, summary, previous_success_ts=T0 - 86_400)
    meta, samples = parse_prom(path.read_text(encoding="utf-8"))
    assert not list(tmp_path.glob("*.tmp"))
    expected = {
        "async_backup_last_success_timestamp_seconds",
        "async_backup_last_run_timestamp_seconds",
        "async_backup_duration_seconds",
        "async_backup_files_uploaded",
        "async_backup_bytes_uploaded",
        "async_backup_files_deleted",
        "async_backup_failures",
        "async_backup_exit_code",
        "async_backup_backlog_files",
        "async_backup_backlog_bytes",
    }
    assert set(meta) == expected
    assert all(help_text and kind == "gauge" for help_text, kind in meta.values())
    odd = '/srv/odd "quoted"\\back\\x0aline'  # newline shown as \x0a first, then label-escaped
    assert samples[("async_backup_files_uploaded", frozenset({("target", "/srv/images/a")}))] == 4
    assert samples[("async_backup_files_uploaded", frozenset({("target", odd)}))] == 1
    assert samples[("async_backup_bytes_uploaded", frozenset({("target", "/srv/images/a")}))] == 4_000_000
    assert samples[("async_backup_files_deleted", frozenset({("target", "/srv/images/a")}))] == 2
    assert samples[("async_backup_failures", frozenset({("target", odd), ("kind", "unreadable")}))] == 2
    assert samples[("async_backup_failures", frozenset({("target", "/srv/images/a"), ("kind", "S3 error")}))] == 1
    assert samples[("async_backup_exit_code", frozenset())] == 1
    assert samples[("async_backup_duration_seconds", frozenset())] == 10
    assert samples[("async_backup_last_run_timestamp_seconds", frozenset())] == T0 + 10
    # the run failed: the last success is the previous one
    assert samples[(LAST_SUCCESS_METRIC, frozenset())] == T0 - 86_400


def test_label_escaping() -> None:
    assert escape_label_value('a"b\\c') == 'a\\"b\\\\c'
    assert escape_label_value("x\ny") == "x\\\\x0ay"  # control characters are shown, never raw
    assert escape_label_value(os.fsdecode(b"\xff")) == "\\\\xff"


def test_last_success_survives_failed_runs(tmp_path: Path) -> None:
    path = tmp_path / "async_backup.prom"
    # no run has succeeded yet: 0, so an alert on the age fires
    write_metrics(path, make_summary(failed=True), None)
    assert read_last_success(path) is None
    assert parse_prom(path.read_text())[1][(LAST_SUCCESS_METRIC, frozenset())] == 0

    ok = make_summary(failed=False, started_at=T0 + 100)
    write_metrics(path, ok, None)
    assert read_last_success(path) == T0 + 110

    for day in (1, 2):  # failed, then interrupted: read back from the file each time
        failed = make_summary(failed=True, started_at=T0 + 86_400 * day)
        failed.interrupted = day == 2
        write_metrics(path, failed, None)
        assert read_last_success(path) == T0 + 110
    # a dry run is not a backup
    write_metrics(path, make_summary(failed=False, started_at=T0 + 86_400 * 3, dry_run=True), None)
    assert read_last_success(path) == T0 + 110
    # an explicit value wins over the file
    write_metrics(path, make_summary(failed=True), T0 + 5)
    assert read_last_success(path) == T0 + 5


# On PATH, or the binary .ci/run takes out of Debian's prometheus package.
_CI_PROMTOOL = Path(__file__).parent / "tools" / "promtool"
PROMTOOL = shutil.which("promtool") or (str(_CI_PROMTOOL) if os.access(_CI_PROMTOOL, os.X_OK) else None)


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian's prometheus package has it; .ci/run fetches it)"
)
def test_metrics_pass_promtool_check() -> None:
    """Prometheus' own linter: among others, no gauge may end in _total (the suffix of counters)."""
    assert PROMTOOL is not None
    for summary in (make_summary(), make_summary(failed=False)):
        result = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            input=render_metrics(summary, T0 - 1),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_readme_tables_every_metric_with_its_type() -> None:
    meta, _ = parse_prom(render_metrics(make_summary(), None))
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)(?:\{[a-z,]+\})?` \| (\w+) \| \S", readme, re.MULTILINE)
    assert {name: kind for name, kind in rows if name.startswith("async_backup_")} == {
        name: kind for name, (_help, kind) in meta.items()
    }


def test_a_new_metrics_file_gets_the_last_success_from_the_run_reports(tmp_path: Path) -> None:
    """The run reports are the record: a --metrics-file path no run wrote before still gets the
    time the last successful run finished, not 0."""
    write_config(tmp_path, "http://127.0.0.1:9", folders=[str(tmp_path)])  # nothing here sends a request
    config = load_config(tmp_path)
    publish(config, tmp_path, make_summary(failed=False), metrics_file=str(tmp_path / "old.prom"), print_card=False)
    interrupted = make_summary(failed=True, started_at=T0 + 86_400)
    interrupted.interrupted = True
    moved = tmp_path / "textfile" / "async_backup.prom"
    publish(config, tmp_path, interrupted, metrics_file=str(moved), print_card=False)
    assert read_last_success(moved) == T0 + 10
    assert parse_prom(moved.read_text())[1][(LAST_SUCCESS_METRIC, frozenset())] == T0 + 10


def test_metrics_replace_the_file_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "async_backup.prom"
    write_metrics(path, make_summary(failed=False), None)
    before = path.read_text()
    seen_tmp: list[str] = []
    real_replace = os.replace

    def spying_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen_tmp.append(os.fspath(src))
        assert Path(dst).read_text() == before  # readers still see the old, complete file
        parse_prom(Path(src).read_text())  # and the new one is complete before it is renamed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spying_replace)
    write_metrics(path, make_summary(failed=True, started_at=T0 + 50), None)
    assert seen_tmp == [str(tmp_path / "async_backup.prom.tmp")]
    assert path.read_text() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["async_backup.prom"]


def test_render_is_pure() -> None:
    summary = make_summary()
    assert render_metrics(summary, None) == render_metrics(summary, None)


_odd_text = st.text(alphabet=st.characters() | st.sampled_from(['"', "\\", "\n", "\udcff", "\ud800", "{", "}"]))


@given(names=st.lists(_odd_text | st.binary().map(os.fsdecode), min_size=1, max_size=8))
def test_any_names_give_a_utf8_report_and_parseable_metrics(names: list[str]) -> None:
    targets = [TargetStats(name=n, bucket=n, new=1, started_at=T0, finished_at=T0 + 1) for n in names]
    failures = [Failure(FailureKind.UNREADABLE, n, n, n, n) for n in names]
    summary = RunSummary(host=names[0], started_at=T0, finished_at=T0 + 2, targets=targets, failures=failures)
    text = json.dumps(build_report(summary), ensure_ascii=False)
    assert json.loads(text.encode("utf-8").decode("utf-8")) == build_report(summary)
    metrics = render_metrics(summary, None)
    metrics.encode("utf-8")
    # duplicate names make duplicate series; the parser checks everything else
    if len({printable(n) for n in names}) == len(names):
        parse_prom(metrics)
