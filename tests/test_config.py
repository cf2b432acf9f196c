"""Bad configuration is one line naming the key and the fix, exit 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import in_process, write_config

from async_backup.report.progress import progress_line
from async_backup.report.summary import TargetStats


def run(cache: Path) -> tuple[int, str]:
    """A dry run in this process (the CLI's own entry point): checking a config needs no interpreter of its own."""
    result = in_process("--cache", str(cache), "--dry-run")
    return result.returncode, result.stderr


def write_raw(cache: Path, text: str) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "config.json").write_text(text)
    (cache / "config.json").chmod(0o600)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"backup": {"folders": ["/tmp"]},\n "aws": {"region": "x",}}', "line 2 column"),
        ('{"aws": {}}', 'the "backup" section is missing'),
        ('{"backup": {"folders": "/tmp"}}', "backup.folders must be a list"),
        ('{"backup": {"folders": []}}', "both empty"),
        ('{"backup": {"folders": ["relative/path"]}}', "backup.folders[0] is 'relative/path'; give an absolute path"),
        ('{"backup": {"folders": ["/tmp"]}, "aws": {"access_key": "only-one"}}', "go together"),
        ('{"backup": {"folders": ["/tmp"]}, "tuning": {"workers": 0}}', "tuning.workers is 0"),
        ('{"backup": {"folders": ["/tmp"]}, "tuning": {"file_threads": 0}}', "tuning.file_threads is 0"),
        ('{"backup": {"folders": ["/tmp"], "storage_class": "COLD"}}', "backup.storage_class must be one of"),
        ('{"backup": {"folders": ["/tmp"]}, "notification": {"webhook": "teams"}}', "notification.webhook must be"),
        ('["not", "an", "object"]', "top level must be a JSON object"),
    ],
)
def test_each_config_problem_is_one_line_and_exit_2(tmp_path: Path, text: str, expected: str):
    write_raw(tmp_path / "cache", text)
    code, stderr = run(tmp_path / "cache")
    assert code == 2
    assert expected in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_missing_config_names_the_file(tmp_path: Path):
    code, stderr = run(tmp_path / "nowhere")
    assert code == 2 and "config.json does not exist" in stderr and len(stderr.strip().splitlines()) == 1


def test_unknown_keys_readable_secrets_and_tls_off_are_warned_about(tmp_path: Path, moto_endpoint: str):
    (tmp_path / "data").mkdir()
    cache = tmp_path / "cache"
    path = write_config(cache, moto_endpoint, folders=[str(tmp_path / "data")], aws_extra={"verify_tls": False})
    doc = json.loads(path.read_text())
    doc["backup"]["folder"] = ["/typo"]
    path.write_text(json.dumps(doc))
    path.chmod(0o644)
    code, stderr = run(cache)
    assert code == 0, stderr
    assert 'unknown key "backup.folder"' in stderr
    assert "readable by other users" in stderr and "chmod 600" in stderr
    assert "aws.verify_tls is false" in stderr


def test_the_progress_line_gives_totals_and_an_eta_once_the_walk_is_done():
    a = TargetStats(name="/a", bucket="b", new=5, planned_uploads=10, planned_upload_bytes=2000, bytes_uploaded=1000)
    assert "5/10 files" in progress_line([a], 10.0) and "left" not in progress_line([a], 10.0)
    a.walk_finished = True
    assert "about 10 s left" in progress_line([a], 10.0)
