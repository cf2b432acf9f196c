"""Child processes that the harness starts and must always stop: own session, bounded waits.

Owns: starting long-lived helpers (servers, the proxy) in their own process group and stopping
the whole group. Imports nothing else from the harness.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

STOP_GRACE_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual small race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Managed:
    """A child process in its own session, so stopping it also stops anything it spawned."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after a grace period; always closes the log."""
        try:
            if self.proc.poll() is None:
                _signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal_group(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=STOP_GRACE_S)
            else:
                # The leader is gone but daemons it forked may still hold the group.
                _signal_group(self.proc.pid, signal.SIGKILL)
        finally:
            self._log.close()

    def log_tail(self, n_bytes: int = 2000) -> str:
        return tail(self.log_path, n_bytes)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def tail(path: Path, n_bytes: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n_bytes:].decode("utf-8", "replace")


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(interval_s)


def http_answers(url: str) -> bool:
    """True when anything answers HTTP at ``url`` (an error status counts as an answer)."""
    # Liveness only: an HTTPS server's certificate is checked by the clients, not here.
    context = ssl._create_unverified_context() if url.startswith("https://") else None
    try:
        urllib.request.urlopen(url, timeout=2, context=context).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def run_checked(argv: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None) -> str:
    """Run a short command, return stdout; RuntimeError with its output when it fails."""
    res = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {(res.stderr or res.stdout)[-1500:]}")
    return res.stdout
