"""S3 servers to benchmark against: an external endpoint, or one started here on loopback.

Owns: choosing a server (``minio`` on PATH > Ceph RADOS Gateway from Debian's packages > moto), starting
it in a temp dir, and stopping everything it started. Every server listens on 127.0.0.1 only.
Imports only ``procs`` from the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import Managed, free_port, http_answers, run_checked, tail, wait_until

SERVER_KINDS = ("auto", "moto", "ceph", "minio")
CEPH_PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")
CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
# Storage classes that S3 clients ask for here; Ceph only accepts classes its placement declares.
CEPH_STORAGE_CLASSES = ("DEEP_ARCHIVE", "GLACIER")
BENCH_ACCESS_KEY = "BENCHACCESSKEY000001"
BENCH_SECRET_KEY = "bench-secret-key-0123456789abcdefghij"  # loopback-only throwaway server
OSD_START_ATTEMPTS = 3


@dataclass(frozen=True)
class S3Server:
    kind: str
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    # botocore >= 1.36 adds CRC32 by default; Ceph breaks on that (FACTS.md), so ask only when required.
    checksum_calculation: str = "when_supported"
    started_in_s: float = 0.0
    ca_bundle: str | None = None  # PEM of the CA that issued the server's certificate (HTTPS servers)
    pids: tuple[int, ...] = ()  # the server's own processes, when the harness started them
    # A command that makes the server reclaim deleted objects now (Ceph: its garbage collector),
    # so that work is done between runs instead of landing inside the next one.
    reclaim_argv: tuple[str, ...] = ()

    def reclaim(self) -> str | None:
        """Run `reclaim_argv` if there is one; returns why it failed, or None. A failure only
        leaves the work to the server's own timer, so callers report it and go on."""
        if not self.reclaim_argv:
            return None
        try:
            run_checked(self.reclaim_argv, 300)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        return None

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "endpoint": self.endpoint,
            "region": self.region,
            "checksum_calculation": self.checksum_calculation,
            "started_in_s": round(self.started_in_s, 2),
            "tls": self.endpoint.startswith("https://"),
        }


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User + system CPU the processes have used so far (from /proc; gone ones count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def wait_until_quiet(
    pids: tuple[int, ...], *, busy_share: float = 0.15, window_s: float = 0.5, cap_s: float = 30.0
) -> float:
    """Wait until the server uses less than `busy_share` of one core over `window_s`, at most
    `cap_s`; returns the seconds waited. Ceph reclaims a dropped bucket's objects in the background
    after the delete requests have been answered; a run started meanwhile shares the cores with
    that work and would carry the previous contender's cost."""
    if not pids:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < cap_s:
        before = cpu_seconds(pids)
        time.sleep(window_s)
        if cpu_seconds(pids) - before < busy_share * window_s:
            break
    return time.monotonic() - started


def ceph_installed() -> bool:
    return all(shutil.which(b) for b in CEPH_BINARIES)


def install_ceph(log: Path) -> None:
    """apt-get the Ceph packages (root only); one ``apt-get update`` first, as a fresh machine needs it."""
    apt_install(CEPH_PACKAGES, log)


def apt_install(packages: tuple[str, ...], log: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"cannot install {' '.join(packages)}: needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(log, "ab") as out:
        subprocess.run(
            ["apt-get", "update", "-q"], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600, check=False
        )
        res = subprocess.run(
            ["apt-get", "install", "-y", "-q", *packages],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=900,
            check=False,
        )
    if res.returncode != 0:
        raise RuntimeError(f"apt-get install {' '.join(packages)} failed; see {log}")


def resolve_kind(requested: str) -> str:
    """The server to start for ``--server``: explicit choice, else minio > ceph > moto."""
    if requested != "auto":
        return requested
    if shutil.which("minio"):
        return "minio"
    if ceph_installed():
        return "ceph"
    return "moto"


@contextlib.contextmanager
def external(
    endpoint: str, access_key: str, secret_key: str, region: str, checksum_calculation: str
) -> Iterator[S3Server]:
    yield S3Server("external", endpoint.rstrip("/"), access_key, secret_key, region, checksum_calculation)


@contextlib.contextmanager
def start(
    kind: str, tmp: Path, ceph_store: str = "memstore", ceph_mem_gib: float = 6.0, tls: bool = False
) -> Iterator[S3Server]:
    """Start a server of ``kind`` under ``tmp``; stop all its processes on exit, also on errors."""
    tmp.mkdir(parents=True, exist_ok=True)
    if tls and kind != "ceph":
        raise ValueError("--tls is implemented for the Ceph server only")
    if kind == "moto":
        with _moto(tmp) as s:
            yield s
    elif kind == "minio":
        with _minio(tmp) as s:
            yield s
    elif kind == "ceph":
        with _ceph(tmp, ceph_store, ceph_mem_gib, tls) as s:
            yield s
    else:
        raise ValueError(f"unknown server kind {kind!r}")


@contextlib.contextmanager
def _moto(tmp: Path) -> Iterator[S3Server]:
    t0 = time.monotonic()
    port = free_port()
    proc = Managed("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], tmp / "moto.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until("moto server", lambda: _alive_and_answers(proc, url + "/moto-api/"), 60)
        yield S3Server("moto", url, BENCH_ACCESS_KEY, BENCH_SECRET_KEY, started_in_s=time.monotonic() - t0)
    finally:
        proc.stop()


@contextlib.contextmanager
def _minio(tmp: Path) -> Iterator[S3Server]:
    t0 = time.monotonic()
    port = free_port()
    console = free_port()
    env = dict(os.environ, MINIO_ROOT_USER=BENCH_ACCESS_KEY, MINIO_ROOT_PASSWORD=BENCH_SECRET_KEY)
    data = tmp / "minio-data"
    data.mkdir(parents=True, exist_ok=True)
    proc = Managed(
        "minio",
        ["minio", "server", "--address", f"127.0.0.1:{port}", "--console-address", f"127.0.0.1:{console}", str(data)],
        tmp / "minio.log",
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until("minio", lambda: _alive_and_answers(proc, url + "/minio/health/live"), 60)
        yield S3Server("minio", url, BENCH_ACCESS_KEY, BENCH_SECRET_KEY, started_in_s=time.monotonic() - t0)
    finally:
        proc.stop()


def _alive_and_answers(proc: Managed, url: str) -> bool:
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited early: {proc.log_tail()}")
    return http_answers(url)


# --- Ceph -------------------------------------------------------------------------------------------


def _ceph_conf(d: Path, fsid: str, mon_port: int, store: str, mem_bytes: int) -> str:
    """A single-node cluster: no cephx, messenger v1 on 127.0.0.1, one OSD, pools of size 1."""
    return f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind msgr2 = false
ms bind msgr1 = true
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
run dir = {d}/run
admin socket = {d}/run/$cluster-$name.asok
pid file = {d}/run/$cluster-$name.pid
log file = {d}/log/$cluster-$name.log
keyring = {d}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = {store}
memstore device bytes = {mem_bytes}
bluestore block path = {d}/osd-block
bluestore block size = {mem_bytes}
bluestore block create = true
bluestore fsck on mkfs = false
osd data = {d}/osd/$cluster-$id
mon data = {d}/mon/$cluster-$id
osd max object size = 1073741824
# The harness places the OSD in the CRUSH map itself; an OSD doing it at boot raced with its monitor
# client here (commands sent with a zero fsid, refused as 'wrong fsid', and the OSD exits).
osd crush update on start = false
osd class update on start = false
rgw frontends = beast endpoint=127.0.0.1:0
rgw dns name =
rgw gc obj min wait = 0
rgw gc processor period = 15
rgw gc processor max time = 15
rgw thread pool size = 128
debug rgw = 0
debug ms = 0
"""


@contextlib.contextmanager
def _ceph(tmp: Path, store: str, mem_gib: float, tls: bool = False) -> Iterator[S3Server]:
    """Monitor, one OSD, radosgw (beast on a free loopback port), a user, DEEP_ARCHIVE/GLACIER classes.

    With ``tls`` beast serves HTTPS only (``ssl_endpoint``) with a certificate from a CA made for the
    run (``tmp/ceph/tls/ca.pem``, in ``S3Server.ca_bundle`` for the clients).

    Everything lives in ``tmp/ceph``; the processes run in the foreground (``-f``) as our children so
    that stopping them needs no pid files.
    """
    if store not in ("memstore", "bluestore"):
        raise ValueError(f"ceph store must be memstore or bluestore, not {store!r}")
    t0 = time.monotonic()
    d = tmp / "ceph"
    for sub in ("run", "log", "mon", "osd"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    mon_port = free_port()
    conf = d / "ceph.conf"
    conf.write_text(_ceph_conf(d, fsid, mon_port, store, int(mem_gib * 2**30)))
    c = ["-c", str(conf)]
    procs: list[Managed] = []

    def ceph(*args: str, timeout_s: float = 60) -> str:
        return run_checked(["ceph", *c, "--connect-timeout", "20", *args], timeout_s)

    try:
        run_checked(
            [
                "ceph-authtool",
                "--create-keyring",
                str(d / "keyring"),
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            ],
            30,
        )
        run_checked(
            ["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v1:127.0.0.1:{mon_port}]", str(d / "monmap")],
            30,
        )
        run_checked(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap")], 60)
        mon = Managed("ceph-mon", ["ceph-mon", *c, "-f", "-i", "a"], d / "log" / "mon.stdout")
        procs.append(mon)
        wait_until("ceph-mon", lambda: _ceph_ok(mon, ceph, "mon", "stat"), 60, 0.5)

        # The OSD's uuid must be the one the monitor registered, or it is refused at boot ('wrong fsid').
        osd_uuid = str(uuid.uuid4())
        osd_id = ceph("osd", "create", osd_uuid).strip()
        (d / "osd" / f"ceph-{osd_id}").mkdir(parents=True, exist_ok=True)
        run_checked(["ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], 120)
        ceph("osd", "crush", "add-bucket", "localhost", "host")
        ceph("osd", "crush", "move", "localhost", "root=default")
        ceph("osd", "crush", "add", f"osd.{osd_id}", "1.0", "host=localhost")
        osd_argv = ["ceph-osd", *c, "-f", "-i", osd_id]
        osd = Managed("ceph-osd", osd_argv, d / "log" / "osd.stdout")
        procs.append(osd)
        restarts = 0

        def osd_up() -> bool:
            nonlocal osd, restarts
            if not osd.alive():
                osd_log = tail(d / "log" / f"ceph-osd.{osd_id}.log")
                if restarts >= OSD_START_ATTEMPTS - 1:
                    raise RuntimeError(f"ceph-osd exited: {osd.log_tail()} {osd_log}")
                restarts += 1  # a boot-time race with the monitor is worth another try
                procs.remove(osd)
                osd.stop()
                osd = Managed("ceph-osd", osd_argv, d / "log" / f"osd{restarts}.stdout")
                procs.append(osd)
                return False
            out = json.loads(ceph("osd", "stat", "--format", "json"))
            stat = out.get("osdmap", out)
            return int(stat.get("num_up_osds", 0)) >= 1

        wait_until("ceph-osd up", osd_up, 90, 0.5)

        rgw_port = free_port()
        ca_bundle = None
        frontend = f"beast endpoint=127.0.0.1:{rgw_port}"
        url = f"http://127.0.0.1:{rgw_port}"
        if tls:
            ca_bundle, cert, key = make_test_certificate(d / "tls")
            frontend = f"beast ssl_endpoint=127.0.0.1:{rgw_port} ssl_certificate={cert} ssl_private_key={key}"
            url = f"https://127.0.0.1:{rgw_port}"
        rgw_argv = ["radosgw", *c, "-f", "-n", "client.rgw.bench", "--rgw-frontends", frontend]
        rgw = Managed("radosgw", rgw_argv, d / "log" / "rgw.stdout")
        procs.append(rgw)
        wait_until("radosgw", lambda: _alive_and_answers(rgw, url), 90, 0.5)

        admin = ["radosgw-admin", *c, "-n", "client.rgw.bench"]
        run_checked(
            [
                *admin,
                "user",
                "create",
                "--uid",
                "bench",
                "--display-name",
                "bench",
                "--access-key",
                BENCH_ACCESS_KEY,
                "--secret",
                BENCH_SECRET_KEY,
            ],
            60,
        )
        for sc in CEPH_STORAGE_CLASSES:
            run_checked(
                [
                    *admin,
                    "zonegroup",
                    "placement",
                    "add",
                    "--rgw-zonegroup",
                    "default",
                    "--placement-id",
                    "default-placement",
                    "--storage-class",
                    sc,
                ],
                60,
            )
            run_checked(
                [
                    *admin,
                    "zone",
                    "placement",
                    "add",
                    "--rgw-zone",
                    "default",
                    "--placement-id",
                    "default-placement",
                    "--storage-class",
                    sc,
                    "--data-pool",
                    "default.rgw.buckets.data",
                ],
                60,
            )
        # radosgw reads placement at start: restart it so the new storage classes are accepted.
        procs.remove(rgw)
        rgw.stop()
        rgw = Managed("radosgw", rgw_argv, d / "log" / "rgw2.stdout")
        procs.append(rgw)
        wait_until("radosgw (restarted)", lambda: _alive_and_answers(rgw, url), 90, 0.5)
        yield S3Server(
            "ceph",
            url,
            BENCH_ACCESS_KEY,
            BENCH_SECRET_KEY,
            checksum_calculation="when_required",
            started_in_s=time.monotonic() - t0,
            ca_bundle=ca_bundle,
            pids=tuple(p.pid for p in procs if p.alive()),
            reclaim_argv=(*admin, "gc", "process", "--include-all"),
        )
    finally:
        for p in reversed(procs):
            p.stop()


def make_test_certificate(d: Path) -> tuple[str, str, str]:
    """The tests' private CA (tests/privateca.py), made for this run in `d`: (ca, cert, key) paths."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from privateca import make_test_ca

    ca = make_test_ca(d)
    return ca.ca_pem, ca.cert_pem, ca.key_pem


def _ceph_ok(mon: Managed, ceph: object, *args: str) -> bool:
    if not mon.alive():
        raise RuntimeError(f"ceph-mon exited: {mon.log_tail()}")
    try:
        ceph(*args, timeout_s=25)  # type: ignore[operator]
        return True
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
