"""The command line itself: help texts and the options each command word builds (in-process, no S3)."""

from __future__ import annotations

import re

import pytest

from async_backup.cli import COMMANDS, build_parser, main, parse_args
from async_backup.settings.config import Tuning


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_the_backup_options_a_bare_command_line_takes(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, "--help")
    for option in ("--reset", "--upload-everything-again", "--dry-run", "--only", "--concurrency", "--metrics-file"):
        assert option in text
    assert re.search(r"^usage: async-backup \[-h\] \[--version\] \[--cache DIR\]", text)  # the usage line stays short


@pytest.mark.parametrize("command", ["backup", "verify", "restore"])
def test_concurrency_help_states_the_configs_own_default(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = " ".join(help_of(capsys, command, "--help").split())
    assert f"(default: tuning.workers, {Tuning().workers})" in text
    assert "(default 16)" not in text and ", 64)" not in text


def test_options_given_before_the_command_word_are_still_refused() -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--dry-run", "verify"])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("argv", "command"),
    [([], "backup"), (["verify"], "verify"), (["restore", "/t"], "restore"), (["status"], "status")],
)
def test_a_command_line_without_options_builds_the_options_dataclass_defaults(argv: list[str], command: str) -> None:
    args = parse_args(argv)
    assert args.command == command
    options = COMMANDS[command].options(args)
    defaults = type(options)(target="/t") if command == "restore" else type(options)()
    assert options == defaults
