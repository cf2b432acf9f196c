"""Log lines: one line each whatever a file name holds, and syslog priorities on systemd's
journal stream (JOURNAL_STREAM naming stderr) or with --log-format journal."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from async_backup.cli import parse_args
from async_backup.report.logsetup import LOG_NAME, setup_logging
from async_backup.report.redact import Redactor

CHILD = """
import logging, sys
from async_backup.report.logsetup import setup_logging
from async_backup.report.redact import Redactor
setup_logging(None, Redactor(), verbosity=1)
log = logging.getLogger("async_backup.test")
log.error("failed: %s", "/data/a\\nb.tif")
log.warning("a warning")
log.info("an info line")
log.debug("a debug line")
"""


@pytest.fixture(autouse=True)
def _handlers_closed() -> Iterator[None]:
    """In-process tests leave no handler (and no open backup.log) to the next test."""
    yield
    root = logging.getLogger("async_backup")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def _child_stderr(tmp_path: Path, *, journal_stream_of_stderr: bool) -> list[str]:
    err_path = tmp_path / "stderr.txt"
    other = tmp_path / "other.txt"
    other.write_text("")
    with open(err_path, "w+b") as err:
        named = os.fstat(err.fileno()) if journal_stream_of_stderr else os.stat(other)
        env = {**os.environ, "JOURNAL_STREAM": f"{named.st_dev}:{named.st_ino}"}
        subprocess.run([sys.executable, "-c", CHILD], stderr=err, env=env, check=True, timeout=60)
    return err_path.read_text().splitlines()


def test_on_the_journal_stream_lines_carry_priorities_and_no_timestamp(tmp_path: Path):
    lines = _child_stderr(tmp_path, journal_stream_of_stderr=True)
    assert lines == [
        "<3>failed: /data/a\\x0ab.tif",
        "<4>a warning",
        "<6>an info line",
        "<7>a debug line",
    ]


def test_journal_stream_of_another_file_keeps_the_text_format(tmp_path: Path):
    # A child whose stderr was redirected inherits JOURNAL_STREAM, but not the stream.
    lines = _child_stderr(tmp_path, journal_stream_of_stderr=False)
    assert len(lines) == 4
    assert lines[0].endswith(" ERROR failed: /data/a\\x0ab.tif") and lines[0][:4].isdigit()


def test_log_format_journal_flag(tmp_path: Path):
    assert parse_args(["--log-format", "journal"]).log_format == "journal"
    assert parse_args(["backup", "--log-format", "text"]).log_format == "text"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        setup_logging(tmp_path, Redactor(), log_format="journal")
        logging.getLogger("async_backup.test").error("broken")
    assert err.getvalue() == "<3>broken\n"
    # backup.log keeps its own timestamps
    [line] = (tmp_path / LOG_NAME).read_text().splitlines()
    assert line[:4].isdigit() and line.endswith(" ERROR broken")


@pytest.mark.parametrize("name", ["a\nb.tif", "a\rb.tif", "esc\x1b[2Jx.tif", "nul\x00.tif", "line\u2028sep.tif"])
def test_every_log_line_is_one_line(tmp_path: Path, name: str):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        setup_logging(tmp_path, Redactor())
        log = logging.getLogger("async_backup.test")
        log.error("failed: [unreadable] %s: EACCES", f"/data/{name}")
        log.error(f"also in the format string: {name}")  # no call site can forget
    for text in (err.getvalue(), (tmp_path / LOG_NAME).read_text()):
        lines = text.split("\n")
        assert len(lines) == 3 and lines[2] == "", text
        assert all(ch.isprintable() for line in lines for ch in line), text
