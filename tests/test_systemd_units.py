"""The systemd units in the README, as an operator copies them: hardened, given time to stop, and
accepted by `systemd-analyze verify` (where systemd is installed)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from async_backup.backup.upload import ABORT_TIMEOUT_S
from async_backup.report.notify import MAX_DELIVERY_S

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Running it every night"
Unit = dict[str, list[tuple[str, str]]]


def readme_units() -> dict[str, str]:
    """The `ini` blocks of the README's systemd section, by kind: "service" and "timer"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    units: dict[str, str] = {}
    for block in re.findall(r"```ini\n(.*?)```", section, flags=re.DOTALL):
        kind = "service" if "[Service]" in block else "timer" if "[Timer]" in block else ""
        assert kind and kind not in units, f"an unexpected ini block in {SECTION!r}:\n{block}"
        units[kind] = block
    assert set(units) == {"service", "timer"}, f"{SECTION!r} must show one service and one timer unit"
    return units


def parse(unit: str) -> Unit:
    """Sections to their (key, value) lines, in order; keys may repeat, as systemd allows."""
    sections: Unit = {}
    current = ""
    for line in unit.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, key: str, section: str = "Service") -> str:
    found = values(unit, key, section)
    assert len(found) == 1, f"[{section}] needs exactly one {key}= line, has {found}"
    return found[0]


def timespan_s(text: str) -> float:
    """A systemd time span ("10min", "5min 30s", "600") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), f"not a time span: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_the_service_is_hardened() -> None:
    unit = parse(readme_units()["service"])
    user = one(unit, "User")
    assert user and user != "root"
    command = shlex.split(one(unit, "ExecStart"))
    cache = command[command.index("--cache") + 1]
    assert one(unit, "ProtectSystem") == "strict"
    writable = [p.lstrip("-") for v in values(unit, "ReadWritePaths") for p in v.split()]
    assert cache in writable, f"the cache {cache} must be in ReadWritePaths=, has {writable}"
    if "--metrics-file" in command:
        metrics_dir = str(Path(command[command.index("--metrics-file") + 1]).parent)
        assert metrics_dir in writable, "the metrics file is written as .prom.tmp and renamed: its directory"
    assert one(unit, "PrivateTmp") == "yes"
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "LogRateLimitIntervalSec") == "0"
    assert one(unit, "ProtectHome") in ("read-only", "no"), "ProtectHome=yes or tmpfs hides archives under /home"
    ambient = set(" ".join(values(unit, "AmbientCapabilities")).split())
    bounding = set(one(unit, "CapabilityBoundingSet").split())
    assert ambient <= bounding <= {"CAP_DAC_READ_SEARCH"}, (ambient, bounding)


def test_the_stop_timeout_is_well_above_the_tools_own_bounds() -> None:
    """On SIGTERM the multipart aborts (bounded at ABORT_TIMEOUT_S) come first, then the card
    (at most MAX_DELIVERY_S). systemd's default 90 s would kill the tool before its report."""
    unit = parse(readme_units()["service"])
    stop_s = timespan_s(one(unit, "TimeoutStopSec"))
    bounds_s = ABORT_TIMEOUT_S + MAX_DELIVERY_S
    assert stop_s >= 1.5 * bounds_s, f"TimeoutStopSec={stop_s:g} s, the tool may need {bounds_s:g} s"
    comment = next(
        line for line in readme_units()["service"].splitlines() if "TimeoutStopSec" not in line and "On stop" in line
    )
    assert f"{ABORT_TIMEOUT_S:g} s" in comment and f"{MAX_DELIVERY_S:g} s" in comment, comment


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    units = readme_units()
    # The README's install path is an example; verify checks that ExecStart's program exists.
    program = shutil.which("async-backup") or str(Path(sys.executable).with_name("async-backup"))
    service = re.sub(r"^ExecStart=\S+", f"ExecStart={program}", units["service"], flags=re.MULTILINE)
    files = [tmp_path / "async-backup.service", tmp_path / "async-backup.timer"]
    files[0].write_text(service, encoding="utf-8")
    files[1].write_text(units["timer"], encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, files)], capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    ours = [line for line in output.splitlines() if str(tmp_path) in line or "async-backup." in line]
    # verify exits 0 on an unknown or misspelt key: it only warns, so its warnings fail the test too.
    assert done.returncode == 0 and not ours, output
