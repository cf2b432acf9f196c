"""The README's first command: the demo backs up its sample archive into a local server, twice over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_stops_its_server(tmp_path: Path):
    base = tmp_path / "demo"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "async_backup.demo", "--dir", str(base)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "what S3 holds now:" in result.stdout
        assert "letters/from-paris.jpg" in result.stdout and "letters/from-rome.jpg" not in result.stdout
        assert result.stdout.count("DEEP_ARCHIVE") == 7  # the archive's files after the third run
        assert (base / "first-run.txt").read_text().strip()
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "async_backup.demo", "--dir", str(base), "--stop"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert stop.returncode == 0 and "stopped the demo S3 server" in stop.stdout
