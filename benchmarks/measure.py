"""Measuring one contender run: wall time, CPU and peak RSS of the child tree, requests at the proxy.

Owns: running a command to completion under a time limit and reading its resource usage: CPU with
``os.wait4`` (user+sys of the child and every descendant it waited for, nothing of the harness's other
children such as the server or the proxy), peak RSS by sampling ``VmHWM`` of the child and its
descendants, and the handle on the recording proxy.

Why not ``ru_maxrss`` for memory: Linux folds the peak RSS of the memory image a process had before
``exec`` into it, so every child of the harness would report at least the harness's own RSS (~80 MiB
measured). ``VmHWM`` belongs to the image after ``exec``; sampled every ``RSS_SAMPLE_S`` it may miss
growth in the last interval before exit, an error we accept. ``ru_maxrss`` is still kept in the JSON.
Imports only ``procs`` from the harness.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import Managed, wait_until

CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_SAMPLE_S = 0.02
MAX_TREE_PROCESSES = 1000


@dataclass(frozen=True)
class Measured:
    exit_code: int | None  # None: killed at the time limit
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int  # peak VmHWM of the largest process of the child's tree
    ru_maxrss_kib: int  # from wait4; includes the harness's RSS at fork (see the module docstring)
    minor_faults: int = 0  # from wait4: pages first touched (fresh memory), the child's whole tree

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None


def run_measured(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path, timeout_s: float, cwd: Path | None = None
) -> Measured:
    """Run ``argv`` (stdout+stderr to ``log_path``) and measure it; kill its process group at the limit.

    A thread blocks in ``wait4`` so the wall time ends the moment the child exits (no polling error);
    the child gets its own session so a time-out or Ctrl-C can stop everything it started.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        result: list[tuple[int, int, float, object]] = []

        def reap() -> None:
            pid, status, ru = os.wait4(proc.pid, 0)
            result.append((pid, status, time.perf_counter(), ru))

        sampler = HwmSampler(proc.pid)
        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        sampler.start()
        killed = False
        try:
            waiter.join(timeout_s)
            if waiter.is_alive():
                killed = True
                _kill_group(proc.pid)
                waiter.join(30)
        except BaseException:
            _kill_group(proc.pid)
            waiter.join(30)
            raise
        finally:
            sampler.stop()
            proc.returncode = 0  # reaped by wait4 above; keep Popen from waiting again
    if not result:
        raise RuntimeError(f"could not reap {argv[0]} (pid {proc.pid})")
    _pid, status, t1, ru = result[0]
    code = None if killed else os.waitstatus_to_exitcode(status)
    return Measured(
        exit_code=code,
        wall_s=t1 - t0,
        user_s=float(ru.ru_utime),  # type: ignore[attr-defined]
        sys_s=float(ru.ru_stime),  # type: ignore[attr-defined]
        maxrss_kib=sampler.peak_kib,
        ru_maxrss_kib=int(ru.ru_maxrss),  # type: ignore[attr-defined]
        minor_faults=int(ru.ru_minflt),  # type: ignore[attr-defined]
    )


class HwmSampler(threading.Thread):
    """Peak ``VmHWM`` (kiB) over the process ``sid`` and its descendants."""

    def __init__(self, sid: int) -> None:
        super().__init__(daemon=True)
        self.sid = sid
        self.peak_kib = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(RSS_SAMPLE_S)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(5)

    def sample(self) -> None:
        """Walk the tree below the leader through ``/proc/PID/task/TID/children`` (cheap: no /proc scan)."""
        todo = [self.sid]
        seen = 0
        while todo and seen < MAX_TREE_PROCESSES:
            pid = todo.pop()
            seen += 1
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                        break
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
            except (OSError, ValueError):
                continue


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(2)


def process_cpu_s(pid: int) -> float:
    """user+sys CPU seconds a live process has used so far (for the proxy, which we never reap mid-run)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is state (field 3 of the man page); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RecordingProxy:
    """The proxy process (``benchmarks.proxy``) in front of one server; read and reset its counters."""

    def __init__(self, upstream: str, workdir: Path) -> None:
        port_file = workdir / "proxy.port"
        port_file.unlink(missing_ok=True)
        self._proc = Managed(
            "proxy",
            [sys.executable, "-m", "benchmarks.proxy", "--upstream", upstream, "--port-file", str(port_file)],
            workdir / "proxy.log",
            cwd=Path(__file__).resolve().parent.parent,
        )

        def ready() -> bool:
            if not self._proc.alive():
                raise RuntimeError(f"proxy exited: {self._proc.log_tail()}")
            return port_file.exists()

        wait_until("recording proxy", ready, 20, 0.05)
        self.endpoint = f"http://127.0.0.1:{port_file.read_text().strip()}"

    def counts(self, reset: bool = False) -> dict[str, dict[str, int]]:
        url = self.endpoint + "/__bench__/counts" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = json.loads(resp.read())
        return {"requests": data["requests"], "body_bytes": data["body_bytes"]}

    def cpu_s(self) -> float:
        return process_cpu_s(self._proc.pid)

    def stop(self) -> None:
        self._proc.stop()
