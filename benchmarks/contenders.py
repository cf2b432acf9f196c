"""The tools being compared, as commands: async-backup, s5cmd, rclone (default and tuned), AWS CLI,
and the baseline of the existing script.

Owns: finding each tool (PATH, then the running interpreter's bin dir for s5cmd), its version, the
command line and an isolated environment and config for one run against one bucket. Every tool
uploads under the same keys, ``s3://BUCKET/<absolute path without the leading '/'>``, so listings
compare. Environments are stripped of the caller's AWS_* / RCLONE_* variables and the EC2 metadata
lookup is switched off, so no tool reaches beyond loopback for credentials.
Imports ``servers`` (for the server's settings) and ``datasets`` (for the key scheme).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.datasets import key_for
from benchmarks.servers import S3Server

REPO_ROOT = Path(__file__).resolve().parent.parent
STORAGE_CLASS = "DEEP_ARCHIVE"
AWS_CLI_MAX_CONCURRENT_REQUESTS = 20  # AWS CLI default is 10
RCLONE_TUNED_FLAGS = ("--fast-list", "--s3-no-head", "--update", "--use-server-modtime")


@dataclass(frozen=True)
class Target:
    """One run's destination: what the tool talks to (the proxy), the bucket, the source tree, and a
    state dir that lives for a whole chain (full -> no-op -> incremental) for caches and configs."""

    endpoint: str
    server: S3Server
    bucket: str
    src: Path
    state_dir: Path

    @property
    def prefix(self) -> str:
        return key_for(self.src)


class Contender:
    name = ""
    creates_bucket = False  # True: the harness must not create the bucket first
    note = ""

    def executable(self) -> str | None:
        raise NotImplementedError

    def missing(self) -> str | None:
        """Why this contender cannot run here, or None."""
        return None if self.executable() else "not installed"

    def version(self) -> str:
        return ""

    def command(self, t: Target) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError


def base_env(t: Target) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    t.state_dir.mkdir(parents=True, exist_ok=True)
    empty = t.state_dir / "aws-empty"
    empty.touch()
    env.update(
        AWS_ACCESS_KEY_ID=t.server.access_key,
        AWS_SECRET_ACCESS_KEY=t.server.secret_key,
        AWS_REGION=t.server.region,
        AWS_DEFAULT_REGION=t.server.region,
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_REQUEST_CHECKSUM_CALCULATION=t.server.checksum_calculation,
        AWS_RESPONSE_CHECKSUM_VALIDATION=t.server.checksum_calculation,
    )
    if t.server.ca_bundle:  # an HTTPS server with the run's own CA: s5cmd, the AWS CLI and boto3 read this
        env["AWS_CA_BUNDLE"] = t.server.ca_bundle
    return env


def _first_line(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else "?"


class AsyncBackup(Contender):
    name = "async-backup"
    creates_bucket = True  # it owns its buckets (versioning, lifecycle): give it a name, not a bucket
    note = "python -m async_backup --cache DIR (config.json in DIR)"

    def executable(self) -> str | None:
        return sys.executable if (REPO_ROOT / "async_backup").is_dir() else None

    def version(self) -> str:
        return _first_line(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h %s"])

    def command(self, t: Target) -> tuple[list[str], dict[str, str]]:
        cache = t.state_dir / "async-backup-cache"
        cache.mkdir(parents=True, exist_ok=True)
        config = {
            "backup": {"folders": [{"path": str(t.src.resolve()), "bucket": t.bucket}]},
            "aws": {
                "access_key": t.server.access_key,
                "secret_access_key": t.server.secret_key,
                "region": t.server.region,
                "endpoint_url": t.endpoint,
                "checksum_calculation": t.server.checksum_calculation,
                **({"ca_bundle": t.server.ca_bundle} if t.server.ca_bundle else {}),
            },
        }
        # BENCH_ASYNC_BACKUP_TUNING (JSON, e.g. '{"part_size_mib": 32}') tries other tuning keys.
        tuning = os.environ.get("BENCH_ASYNC_BACKUP_TUNING")
        if tuning:
            config["tuning"] = json.loads(tuning)
        (cache / "config.json").write_text(json.dumps(config, indent=2))
        env = base_env(t)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        # BENCH_ASYNC_BACKUP_ARGS (e.g. "--concurrency 64") tries other settings without editing code.
        extra = os.environ.get("BENCH_ASYNC_BACKUP_ARGS", "").split()
        return [sys.executable, "-m", "async_backup", "--cache", str(cache), *extra], env


class S5cmd(Contender):
    name = "s5cmd"
    note = "s5cmd sync --delete --storage-class DEEP_ARCHIVE"

    def executable(self) -> str | None:
        found = shutil.which("s5cmd")
        beside = Path(sys.executable).parent / "s5cmd"
        return found or (str(beside) if beside.exists() else None)

    def version(self) -> str:
        exe = self.executable()
        return _first_line([exe, "version"]) if exe else ""

    def command(self, t: Target) -> tuple[list[str], dict[str, str]]:
        exe = self.executable()
        assert exe is not None
        return [
            exe,
            "--endpoint-url",
            t.endpoint,
            "sync",
            "--delete",
            "--storage-class",
            STORAGE_CLASS,
            f"{t.src.resolve()}/",
            f"s3://{t.bucket}/{t.prefix}/",
        ], base_env(t)


class Rclone(Contender):
    def __init__(self, tuned: bool) -> None:
        self.tuned = tuned
        self.name = "rclone-tuned" if tuned else "rclone"
        self.note = "rclone sync " + (" ".join(RCLONE_TUNED_FLAGS) if tuned else "(default flags)")

    def executable(self) -> str | None:
        return shutil.which("rclone")

    def version(self) -> str:
        return _first_line(["rclone", "version"])

    def command(self, t: Target) -> tuple[list[str], dict[str, str]]:
        env = base_env(t)
        # rclone refuses to start with AWS_CA_BUNDLE set (base_env already dropped every AWS_ variable
        # of the caller; the ones it adds are for the other tools and harmless here).
        env.pop("AWS_CA_BUNDLE", None)
        conf = t.state_dir / "rclone.conf"
        conf.touch()
        remote = "RCLONE_CONFIG_BENCH_"
        env.update(
            {
                "RCLONE_CONFIG": str(conf),
                remote + "TYPE": "s3",
                remote + "PROVIDER": "Other",
                remote + "ENV_AUTH": "false",
                remote + "ACCESS_KEY_ID": t.server.access_key,
                remote + "SECRET_ACCESS_KEY": t.server.secret_key,
                remote + "REGION": t.server.region,
                remote + "ENDPOINT": t.endpoint,
                remote + "FORCE_PATH_STYLE": "true",
                remote + "STORAGE_CLASS": STORAGE_CLASS,
            }
        )
        argv = ["rclone", "sync", str(t.src.resolve()), f"bench:{t.bucket}/{t.prefix}"]
        if t.server.ca_bundle:
            argv += ["--ca-cert", t.server.ca_bundle]
        if self.tuned:
            argv += list(RCLONE_TUNED_FLAGS)
        return argv, env


class AwsCli(Contender):
    name = "aws-cli"
    note = (
        f"aws s3 sync --delete --storage-class DEEP_ARCHIVE (max_concurrent_requests {AWS_CLI_MAX_CONCURRENT_REQUESTS})"
    )

    def executable(self) -> str | None:
        return shutil.which("aws")

    def version(self) -> str:
        return _first_line(["aws", "--version"])

    def command(self, t: Target) -> tuple[list[str], dict[str, str]]:
        env = base_env(t)
        conf = t.state_dir / "aws-cli.config"
        conf.write_text(
            "[default]\n"
            f"region = {t.server.region}\n"
            f"request_checksum_calculation = {t.server.checksum_calculation}\n"
            f"response_checksum_validation = {t.server.checksum_calculation}\n"
            "s3 =\n"
            f"    max_concurrent_requests = {AWS_CLI_MAX_CONCURRENT_REQUESTS}\n"
            "    addressing_style = path\n"
        )
        env["AWS_CONFIG_FILE"] = str(conf)
        argv = [
            "aws",
            "--endpoint-url",
            t.endpoint,
            "s3",
            "sync",
            "--delete",
            "--storage-class",
            STORAGE_CLASS,
            "--only-show-errors",
            str(t.src.resolve()),
            f"s3://{t.bucket}/{t.prefix}",
        ]
        return argv, env


class Baseline(Contender):
    name = "baseline-script"
    note = "sequential boto3 upload_file + SQLite per file (benchmarks/baseline.py)"

    def executable(self) -> str | None:
        return sys.executable

    def version(self) -> str:
        import boto3

        return f"boto3 {boto3.__version__}"

    def command(self, t: Target) -> tuple[list[str], dict[str, str]]:
        env = base_env(t)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return [
            sys.executable,
            "-m",
            "benchmarks.baseline",
            "--src",
            str(t.src.resolve()),
            "--bucket",
            t.bucket,
            "--db",
            str(t.state_dir / "baseline.sqlite"),
            "--endpoint",
            t.endpoint,
        ], env


def all_contenders() -> list[Contender]:
    return [AsyncBackup(), S5cmd(), Rclone(tuned=False), Rclone(tuned=True), AwsCli(), Baseline()]


CONTENDER_NAMES = tuple(c.name for c in all_contenders())
