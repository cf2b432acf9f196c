"""A cache directory that cannot be written (a read-only mount, no write permission) is one line
naming the file and what to do, exit 1, the card and metrics written: never "internal error"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import error_lines, make_tree, run_cli, write_config
from loopfs import loop_mount


def test_a_cache_on_a_file_system_turned_read_only_is_one_line(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
):
    make_tree(tmp_path / "tree", {"a.tif": b"a"})
    metrics = tmp_path / "metrics.prom"
    with loop_mount(tmp_path / "cache", "ext2") as cache:
        write_config(cache, moto_endpoint, folders=[str(tmp_path / "tree")], bucket_prefix=bucket_prefix)
        assert run_cli("--cache", str(cache)).returncode == 0
        make_tree(tmp_path / "tree", {"b.tif": b"b"})
        subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)  # as after an I/O error
        try:
            result = run_cli("--cache", str(cache), "--metrics-file", str(metrics), "--print-card")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(cache)], check=True)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert str(cache / "async-backup.lock") in errors[0]
    assert "its file system is mounted read-only" in errors[0] and "remount it read-write" in errors[0]
    assert "async_backup_exit_code 1" in metrics.read_text()
    assert "cannot be written" in json.dumps(json.loads(result.stdout))  # the card


def _as_an_unprivileged_writer() -> list[str]:
    """A command prefix under which the permission bits count: root ignores them, so as root the
    capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) are dropped with setpriv."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("as root the permission bits do not stop writes, and setpriv (util-linux) is not here to drop that")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("history", ["first run", "after a run"])
def test_a_cache_directory_the_user_cannot_write_is_one_line(
    history: str, tmp_path: Path, moto_endpoint: str, bucket_prefix: str
):
    make_tree(tmp_path / "tree", {"a.tif": b"a"})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(tmp_path / "tree")], bucket_prefix=bucket_prefix)
    if history == "after a run":  # the lock file, backup.log and the cache exist and are writable
        assert run_cli("--cache", str(cache)).returncode == 0
        make_tree(tmp_path / "tree", {"b.tif": b"b"})
    metrics = tmp_path / "metrics.prom"
    cache.chmod(0o555)
    try:
        command = [sys.executable, "-m", "async_backup", "--cache", str(cache), "--metrics-file", str(metrics)]
        result = subprocess.run(
            [*_as_an_unprivileged_writer(), *command],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        cache.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    blocked = "async-backup.lock" if history == "first run" else "async-backup.db"
    assert str(cache / blocked) in errors[0]
    assert f"the cache directory {cache} is not writable for user" in errors[0]
    assert "async_backup_exit_code 1" in metrics.read_text()
