"""The command line itself: help texts and the options each command word builds (in-process, no S3)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from conftest import in_process, make_tree, write_config

from async_backup.cache.store import StateStore
from async_backup.cli import COMMANDS, build_parser, main, parse_args
from async_backup.disk.lock import cache_lock
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


# ----------------------------------------------------------------------------- usage errors and outputs


def site(tmp_path: Path, endpoint: str, names: tuple[str, ...] = ("alpha", "beta")) -> tuple[Path, list[Path]]:
    folders = [tmp_path / "data" / n for n in names]
    for folder in folders:
        make_tree(folder, {"a.jpg": b"a" * 10})
    cache = tmp_path / "cache"
    write_config(cache, endpoint, folders=[str(f) for f in folders], bucket_prefix="t-cli-")
    return cache, folders


@pytest.mark.parametrize(
    "flags",
    [
        ("--reset", "--upload-everything-again"),
        ("--upload-everything-again", "--reset", "--dry-run"),
        ("--forget-target", "/x", "--dry-run"),
        ("--forget-target", "/x", "--only", "/y"),
        ("-q", "-v"),
        ("--json", "--print-card"),
    ],
)
def test_contradicting_options_are_refused_in_one_line_before_anything_runs(
    tmp_path: Path, moto_endpoint: str, flags: tuple[str, ...]
) -> None:
    cache, _ = site(tmp_path, moto_endpoint)
    result = in_process("--cache", str(cache), *flags)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("async-backup: error: ") and " exclude each other: " in line, line
    assert sum(f in line for f in flags if f.startswith("-")) >= 2, line
    assert result.stdout == "" and not (cache / "reports").exists() and not (cache / "async-backup.db").exists()


def test_forget_target_of_a_path_the_cache_does_not_know_names_the_known_targets(
    tmp_path: Path, moto_endpoint: str
) -> None:
    cache, (alpha, beta) = site(tmp_path, moto_endpoint)
    never = in_process("--cache", str(cache), "--forget-target", str(alpha))
    assert never.returncode == 2 and "the cache knows no target yet" in never.stderr, never.stderr
    with cache_lock(cache):
        store = StateStore(cache)
        try:
            store.remember_targets([(str(alpha), "t-cli-alpha", None), (str(beta), "t-cli-beta", None)])
        finally:
            store.close()

    typo = in_process("--cache", str(cache), "--forget-target", str(alpha) + "x")
    assert typo.returncode == 2
    (line,) = typo.stderr.splitlines()
    assert f"--forget-target {alpha}x: the cache knows no target of that path" in line
    assert f"give one of its 2 targets: {alpha}, {beta}" in line
    assert "forgot" not in typo.stderr

    forgot = in_process("--cache", str(cache), "--forget-target", str(alpha))
    assert forgot.returncode == 0, forgot.stderr
    assert f"forgot target {alpha} (0 cached files)" in forgot.stderr
    store = StateStore(cache, readonly=True)
    try:
        assert set(store.known_targets()) == {str(beta)}
    finally:
        store.close()


def test_dry_run_with_print_card_prints_only_the_card_on_stdout(tmp_path: Path, moto_endpoint: str) -> None:
    cache, (alpha, _beta) = site(tmp_path, moto_endpoint)
    result = in_process("--cache", str(cache), "--dry-run", "--print-card")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["type"] == "message"
    assert f"{alpha} -> s3://" in result.stderr and "would upload 1 file " in result.stderr  # the plan went here


def test_status_of_a_cache_that_never_ran_lists_the_configured_targets(tmp_path: Path, moto_endpoint: str) -> None:
    cache, folders = site(tmp_path, moto_endpoint)
    (tmp_path / "data" / "beta").rename(tmp_path / "data" / "gone")  # configured, not on disk
    result = in_process("--cache", str(cache), "status", "--json")
    assert result.returncode == 0, result.stderr
    targets = json.loads(result.stdout)["targets"]
    assert [t["target"] for t in targets] == [str(f) for f in folders]
    assert all(t["never_ran"] and t["objects"] == 0 and t["last_run"] is None for t in targets)
    assert [t["on_disk"] for t in targets] == [True, False]
    assert "-data-alpha-" in targets[0]["bucket"]  # the name a first run gives it

    table = in_process("--cache", str(cache), "status")
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.startswith(str(tmp_path))}
    assert rows[str(folders[0])].endswith("never ran")
    assert rows[str(folders[1])].endswith("never ran; not on disk")
    assert "total: 0 objects" in table.stdout and "last run: no run report yet" in table.stdout


def test_every_default_a_help_text_states_is_the_arguments_own() -> None:
    """A help text that says "(default X)" must say the value argparse really uses."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for sub in [parser, *subparsers.choices.values()]:
        for action in sub._actions:
            help_text = action.help or ""
            default = action.default
            if "(default" not in help_text or default in (None, argparse.SUPPRESS):
                continue
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"(default {shown})" in help_text, (sub.prog, action.option_strings, help_text)
            checked += 1
    assert checked >= 4  # --cache, --progress-interval, --tier, --days
