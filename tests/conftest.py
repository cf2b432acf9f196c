"""Shared fixtures: a real moto S3 server over HTTP on a free loopback port, clients to inspect it,
and the recording proxy in front of it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from privateca import CAFiles, make_test_ca
from s3proxy import ProxyServer

ACCESS_KEY = "AKIATESTACCESSKEY000"
# A planted secret: tests assert it never shows up in logs, reports or cards.
SECRET_KEY = "s3cr3t-PLANTED-never-print-me-0123456789"
REGION = "eu-central-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def moto_server(**env: str) -> Iterator[str]:
    """Run moto's server in its own process on a free loopback port; yield its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(url + "/moto-api/", timeout_s=30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server for the whole session."""
    with moto_server(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY) as url:
        yield url


@pytest.fixture(scope="session")
def s3_inspect(moto_endpoint: str) -> Any:
    """A plain boto3 client, separate from the tool's own, to check what S3 really holds."""
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[ProxyServer]:
    """The recording, fault-injecting proxy (tests/s3proxy.py) in front of the session's moto server,
    a fresh one per test, so records and faults never leak between tests."""
    with ProxyServer(moto_endpoint) as p:
        yield p


@pytest.fixture
def bucket_prefix(request: pytest.FixtureRequest) -> str:
    """A bucket-name prefix unique to the test, so tests sharing one moto server never collide."""
    import hashlib

    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    return f"t{digest}-"


def write_config(
    cache_dir: Any,
    endpoint: str,
    *,
    folders: list[Any] | None = None,
    roots: list[str] | None = None,
    bucket_prefix: str = "",
    webhook: str | None = None,
    tuning: dict[str, Any] | None = None,
    backup_extra: dict[str, Any] | None = None,
    aws_extra: dict[str, Any] | None = None,
) -> Any:
    """Write config.json for a run against the test server; returns its path."""
    import json
    from pathlib import Path

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    backup: dict[str, Any] = {"folders": folders or [], "roots": roots or []}
    if bucket_prefix:
        backup["bucket_prefix"] = bucket_prefix
    # No nightly fixity slice unless a test asks for one: the slice reads files and sends HeadObject,
    # which tests counting a run's reads and requests do not expect (tests/test_fixity.py sets it).
    backup["fixity_days"] = 0
    backup.update(backup_extra or {})
    doc: dict[str, Any] = {
        "backup": backup,
        "aws": {
            "access_key": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "region": REGION,
            "endpoint_url": endpoint,
            **(aws_extra or {}),
        },
    }
    if webhook:
        doc["notification"] = {"webhook": webhook}
    if tuning:
        doc["tuning"] = tuning
    path = cache / "config.json"
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)
    return path


def run_cli(*args: str, timeout_s: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m async_backup ARGS` as a real subprocess; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "async_backup", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )


def all_keys(client: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def make_tree(base: Any, files: dict[str, bytes]) -> None:
    """Write files (relative path -> contents) under base, making folders as needed."""
    from pathlib import Path

    for rel, data in files.items():
        path = Path(base) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def reports(cache: Any) -> list[dict[str, Any]]:
    """The run reports in cache/reports, oldest first (by write time: names of runs in the same second sort oddly)."""
    import json
    from pathlib import Path

    paths = sorted((Path(cache) / "reports").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in paths]


def last_report(cache: Any) -> dict[str, Any]:
    """The newest run report in cache/reports."""
    found = reports(cache)
    assert found, "no run report was written"
    return dict(found[-1])


def error_lines(stderr: str) -> list[str]:
    """The ERROR lines of a run's log on stderr."""
    return [line for line in stderr.splitlines() if " ERROR " in line]


def delete_cache_db(cache: Any) -> None:
    """Remove the cache's SQLite file with its WAL and shared-memory files: the cache is lost."""
    from pathlib import Path

    from async_backup.cache.store import STATE_NAME

    for name in (STATE_NAME, STATE_NAME + "-wal", STATE_NAME + "-shm"):
        (Path(cache) / name).unlink(missing_ok=True)


def four_target_site(tmp_path: Any, endpoint: str, bucket_prefix: str) -> dict[str, Any]:
    """Two folders and one root with two subfolders (four targets) under tmp_path/data, and
    config.json in tmp_path/cache for `endpoint`. Returns data, cache, files (relative path ->
    contents) and buckets (target folder relative to data -> bucket name)."""
    from pathlib import Path

    from async_backup.settings.naming import stable_bucket_name

    data = Path(tmp_path) / "data"
    files = {
        "scans/1901/page-001.tif": b"a" * 100,
        "scans/1901/page-002.tif": b"b" * 200,
        "scans/1902/page-001.tif": b"c" * 300,
        "letters/x.jpg": b"x" * 10,
        "letters/deep/er/y.jpg": b"y" * 20,
        "registers/parish-a/r1.tif": b"r1",
        "registers/parish-a/r2.tif": b"r2",
        "registers/parish-b/s1.tif": b"s1",
    }
    make_tree(data, files)
    cache = Path(tmp_path) / "cache"
    write_config(
        cache,
        endpoint,
        folders=[str(data / "scans"), str(data / "letters")],
        roots=[str(data / "registers")],
        bucket_prefix=bucket_prefix,
    )
    targets = ("scans", "letters", "registers/parish-a", "registers/parish-b")
    buckets = {name: stable_bucket_name(bucket_prefix, str(data / name)) for name in targets}
    return {"data": data, "cache": cache, "files": files, "buckets": buckets}


def key_of(path: Any) -> str:
    """The object key async-backup gives a local path."""
    from async_backup.disk.keys import key_for_path

    return key_for_path(os.fsencode(path))


@dataclasses.dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def in_process(*args: str) -> Ran:
    """The CLI's own entry point, in this process: the same code as `python -m async_backup`
    without an interpreter start per call (backups, which create the data, run as subprocesses)."""
    import io

    from async_backup.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    result = Ran(code, out.getvalue(), err.getvalue())
    assert SECRET_KEY not in result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def moto_checking_signatures() -> Iterator[tuple[str, dict[str, str]]]:
    """A second moto server that verifies SigV4 (the session one accepts any signature); yields URL, keys.

    INITIAL_NO_AUTH_ACTION_COUNT lets the first three calls (create user, key, policy) through unsigned.
    """
    import json

    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="3") as url:
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        iam.create_user(UserName="backup")
        key = iam.create_access_key(UserName="backup")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="backup", PolicyName="all", PolicyDocument=json.dumps(policy))
        yield (
            url,
            {
                "aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"],
                "region_name": REGION,
            },
        )


# --------------------------------------------------------------------------------------------------
# The old script's installation, made by its re-enactment (tests/oldscript.py)


def legacy_token(tmp_path: Any) -> str:
    """Legacy bucket names are global in the shared moto server: a token keeps tests apart."""
    import hashlib

    return hashlib.sha256(str(tmp_path).encode()).hexdigest()[:6]


def key_versions(client: Any, bucket: str) -> tuple[dict[str, int], set[str]]:
    """Versions per key, and the keys whose latest entry is a delete marker."""
    counts: dict[str, int] = {}
    deleted: set[str] = set()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
        deleted.update(m["Key"] for m in page.get("DeleteMarkers", []) if m["IsLatest"])
    return counts, deleted


@pytest.fixture
def old_site(tmp_path: Any, moto_endpoint: str, s3_inspect: Any) -> dict[str, Any]:
    """A root whose subfolders have spaces, "+", umlauts and parentheses, plus a folder elsewhere,
    backed up by the old script; its cache directory as that script leaves it."""
    import json

    from oldscript import run_old_script

    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    subfolders = [f"Archive 3 {tok}", f"a+b {tok}", f"Grüße {tok}", f"(alt) Pfarrei {tok}"]
    files: dict[str, bytes] = {}
    for i, sub in enumerate(subfolders):
        files[f"archives/{sub}/page-{i}-1.tif"] = b"x" * (100 + i)
        files[f"archives/{sub}/vol 1/page-{i}-2.tif"] = b"y" * (200 + i)
    files[f"letters {tok}/1901/letter.tif"] = b"letter"
    files[f"letters {tok}/1902/other.tif"] = b"other letter"
    files["archives/notes.txt"] = b"a file lying in the root: no target, but part of the old script's list"
    make_tree(data, files)
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(data / f"letters {tok}")],
        roots=[str(data / "archives")],
        backup_extra={"naming": "legacy"},
    )
    raw = json.loads((cache / "config.json").read_text())
    raw["notification"] = {}  # the old script needs the section to exist
    (cache / "config.json").write_text(json.dumps(raw))
    buckets = run_old_script(cache, s3_inspect)
    return {"data": data, "cache": cache, "buckets": buckets, "tok": tok, "subfolders": subfolders}


# --------------------------------------------------------------------------------------------------
# HTTPS: a test CA (tests/privateca.py), moto's server with a certificate from it


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFiles:
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@contextlib.contextmanager
def moto_tls_server(ca: CAFiles, **env: str) -> Iterator[str]:
    """moto's server over HTTPS with the test CA's certificate; yields https://127.0.0.1:PORT."""
    import ssl

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "-s",
            "-c",
            ca.cert_pem,
            "-k",
            ca.key_pem,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=ca.ca_pem)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1, context=context).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def moto_tls_endpoint(test_ca: CAFiles) -> Iterator[str]:
    """moto's server over HTTPS for the whole session (accepts any keys, like `moto_endpoint`)."""
    with moto_tls_server(test_ca, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY) as url:
        yield url


@pytest.fixture(scope="session")
def s3_tls_inspect(moto_tls_endpoint: str, test_ca: CAFiles) -> Any:
    """A plain boto3 client on the HTTPS server, trusting the test CA."""
    return boto3.client(
        "s3",
        endpoint_url=moto_tls_endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        verify=test_ca.ca_pem,
    )


def clean_aws_env(**extra: str) -> dict[str, str]:
    """os.environ without any AWS_* setting, plus `extra`: a subprocess sees only what a test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra)
    return env
