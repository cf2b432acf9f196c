"""What a run publishes: the Teams card posted to a real local webhook, the JSON report, the metrics file.

A small aiohttp server on a loopback port, in its own thread, stands in for the Teams Workflows
webhook, so the CLI in its subprocess posts to it over real HTTP. It records every request and
answers with the statuses a test asks for. S3 failures come from the recording proxy's faults, or
from files the OS refuses to read to an unprivileged user.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from aiohttp import web
from cardcheck import shown, texts, validate_payload
from conftest import SECRET_KEY, free_port, key_of, make_tree, reports, run_cli, write_config
from s3proxy import ErrorReply, ProxyServer

import async_backup

WEBHOOK_PATH = "/workflows/abc123/triggers/manual/paths/invoke"
WEBHOOK_QUERY = "api-version=2016-06-01&sig=PLANTEDSIGNATURE123"
# What must never leave the process in a log, report, card or metrics file.
SECRETS = ("/workflows/abc123", "PLANTEDSIGNATURE123", SECRET_KEY)


# ----------------------------------------------------------------------------- a stand-in webhook


@dataclass(frozen=True)
class Post:
    method: str
    path: str
    query: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookServer:
    """A Teams Workflows webhook on 127.0.0.1: records each request, answers from `statuses`.

    `statuses` are used one per request in order; once used up every request gets 202 Accepted,
    as Workflows answer. Error replies carry `Retry-After` (if set) and a body that echoes the
    request's full target, signature included, as a careless server might: the sender must not
    pass it on unscrubbed.
    """

    def __init__(self, statuses: Sequence[int] = (), *, retry_after: str | None = "0") -> None:
        self._statuses = list(statuses)
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._posts: list[Post] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}?{WEBHOOK_QUERY}"

    @property
    def posts(self) -> list[Post]:
        with self._lock:
            return list(self._posts)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self._posts.append(Post(request.method, request.path, request.query_string, body))
            status = self._statuses.pop(0) if self._statuses else 202
        if 200 <= status <= 299:
            return web.Response(status=status)
        headers = {"Retry-After": self._retry_after} if self._retry_after is not None else {}
        return web.Response(status=status, text=f"flow failed for {request.path_qs}", headers=headers)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


# ----------------------------------------------------------------------------- helpers


def set_notification(cache: Path, **settings: Any) -> None:
    """Change config.json's notification section (write_config only sets the webhook)."""
    config_path = cache / "config.json"
    doc = json.loads(config_path.read_text())
    doc.setdefault("notification", {}).update(settings)
    config_path.write_text(json.dumps(doc, indent=2))
    config_path.chmod(0o600)


def card_lines(payload: dict[str, Any]) -> list[str]:
    """The card's texts as a reader sees them (markdown escapes removed)."""
    return [shown(t) for t in texts(payload)]


def as_shown(path: Path, data: Path) -> str:
    """How the card names a file in a target data/<name>: the target's last two components, then
    the path under it."""
    return f"{data.name}/{path.relative_to(data)}"


def notification_warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " WARNING " in ln and ("notification" in ln or "Teams" in ln)]


def metric_samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line; asserts the text-format syntax of each line."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) async_backup_\w+ .+", line), line
            continue
        match = re.fullmatch(r'(async_backup_\w+(?:\{(?:\w+="(?:[^"\\]|\\.)*",?)*\})?) (\S+)', line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[match.group(1)] = float(match.group(2))
    return samples


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def failing_site(tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, webhook: WebhookServer) -> dict[str, Any]:
    """Three targets; one file in each of two of them is refused by S3 (403, not retried).

    The refusal's message echoes the AWS secret key and the webhook URL, so every place that shows
    failure texts is tested for scrubbing, not only for not adding secrets of its own.
    """
    data = tmp_path / "data"
    make_tree(
        data,
        {
            "alpha/ok.tif": b"a",
            "alpha/refused-a.tif": b"aa",
            "beta/sub/refused-b.tif": b"bb",
            "beta/ok.tif": b"b",
            "gamma/ok.tif": b"g",
        },
    )
    cache = tmp_path / "cache"
    write_config(
        cache,
        proxy.url,
        folders=[str(data / "alpha"), str(data / "beta"), str(data / "gamma")],
        bucket_prefix=bucket_prefix,
        webhook=webhook.url,
    )
    refused = [data / "alpha/refused-a.tif", data / "beta/sub/refused-b.tif"]
    proxy.set_faults(
        ErrorReply(
            ops={"PutObject"},
            keys={key_of(p) for p in refused},
            status=403,
            code="AccessDenied",
            message=f"Access Denied for secret {SECRET_KEY} (notify {webhook.url})",
        )
    )
    return {"data": data, "cache": cache, "refused": refused}


def backup(cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--cache", str(cache), *extra)


# ----------------------------------------------------------------------------- the card


def test_failures_in_several_targets_post_one_valid_workflows_card(
    failing_site: dict[str, Any], webhook: WebhookServer
) -> None:
    result = backup(failing_site["cache"])
    assert result.returncode == 1, result.stderr
    posts = webhook.posts
    assert len(posts) == 1, posts
    post = posts[0]
    assert post.method == "POST"
    assert post.path == WEBHOOK_PATH and post.query == WEBHOOK_QUERY  # the signature is sent as given
    payload = post.json()
    card = validate_payload(payload)
    assert payload["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["version"] == "1.4"
    lines = card_lines(payload)
    for path in failing_site["refused"]:
        assert as_shown(path, failing_site["data"]) in lines, f"{path} not on the card: {lines}"
    assert "Failures (2)" in lines, lines


def _switch_user_command() -> list[str] | None:
    """A command prefix that runs the rest as `nobody` with no groups, or None if there is none."""
    nobody = pwd.getpwnam("nobody")
    if shutil.which("setpriv"):
        return [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "--",
        ]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    return None


def test_unreadable_files_as_an_unprivileged_user_are_named_on_one_card(
    moto_endpoint: str, bucket_prefix: str, webhook: WebhookServer
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the user nobody (as root every file is readable)")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user nobody to run the backup as")
    switch = _switch_user_command()
    if switch is None:
        pytest.skip("neither setpriv nor runuser is installed to run the backup as nobody")
    repo = Path(async_backup.__file__).resolve().parent.parent
    # Not under pytest's tmp_path: that lies below a directory only root may enter.
    base = Path(tempfile.mkdtemp(prefix="async-backup-nobody-"))
    try:
        data, cache = base / "data", base / "cache"
        make_tree(data, {"one/ok.tif": b"1", "one/secret.tif": b"11", "two/deep/locked.tif": b"22", "two/ok.tif": b"2"})
        write_config(cache, moto_endpoint, folders=[str(data / "one"), str(data / "two")], bucket_prefix=bucket_prefix)
        set_notification(cache, webhook=webhook.url)
        for path in [base, *base.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
        unreadable = [data / "one/secret.tif", data / "two/deep/locked.tif"]
        for path in unreadable:
            path.chmod(0)
        env = {**os.environ, "HOME": str(cache)}
        preflight = subprocess.run(
            [*switch, sys.executable, "-c", "import async_backup"],
            capture_output=True,
            text=True,
            env=env,
            cwd=repo,
            timeout=60,
            check=False,
        )
        if preflight.returncode != 0:
            # The checkout (and its venv) may lie where nobody cannot enter, e.g. under /root. Then stay
            # root but drop the capabilities that let root read any file: permissions apply again.
            if not shutil.which("setpriv"):
                pytest.skip(f"nobody cannot import async_backup here and setpriv is missing: {preflight.stderr[-200:]}")
            switch = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
            # Root without those capabilities is held to the permission bits like anyone: give it back
            # what it must read (config.json is 0600); the mode-0 files stay unreadable to it too.
            for path in [base, *base.rglob("*")]:
                os.chown(path, 0, 0, follow_symlinks=False)

        result = subprocess.run(
            [*switch, sys.executable, "-m", "async_backup", "--cache", str(cache)],
            capture_output=True,
            text=True,
            env=env,
            cwd=repo,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        posts = webhook.posts
        assert len(posts) == 1, result.stderr
        payload = posts[0].json()
        validate_payload(payload)
        lines = card_lines(payload)
        for path in unreadable:
            assert as_shown(path, data) in lines, f"{path} not on the card: {lines}"
        assert any("unreadable" in line for line in lines), lines
        for path in unreadable:
            assert str(path) in result.stderr
        (report,) = reports(cache)
        assert sorted(f["path"] for f in report["failures"]) == sorted(map(str, unreadable))
        assert {f["kind"] for f in report["failures"]} == {"unreadable"}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_server_error_is_retried_and_the_card_then_delivered(failing_site: dict[str, Any]) -> None:
    with WebhookServer([500, 202]) as server:
        set_notification(failing_site["cache"], webhook=server.url)
        result = backup(failing_site["cache"])
    assert result.returncode == 1, result.stderr  # the backup's outcome, not the notification's
    posts = server.posts
    assert len(posts) == 2, posts
    assert posts[0].body == posts[1].body
    validate_payload(posts[1].json())
    assert notification_warnings(result.stderr) == [], result.stderr
    delivered = [ln for ln in result.stderr.splitlines() if "Teams card delivered" in ln]
    assert len(delivered) == 1 and "attempt 2" in delivered[0], result.stderr  # one line per delivery
    (report,) = reports(failing_site["cache"])
    assert not any(w["kind"] == "notification" for w in report["warnings"])


@pytest.mark.slow
def test_a_dead_webhook_leaves_outcome_and_exit_code_alone_with_one_warning(
    failing_site: dict[str, Any], proxy: ProxyServer
) -> None:
    cache = failing_site["cache"]
    closed = f"http://127.0.0.1:{free_port()}{WEBHOOK_PATH}?{WEBHOOK_QUERY}"  # nothing listens there
    set_notification(cache, webhook=closed)

    result = backup(cache)
    assert result.returncode == 1, result.stderr
    warnings = notification_warnings(result.stderr)
    assert len(warnings) == 1, result.stderr
    assert "127.0.0.1" in warnings[0]
    (report,) = reports(cache)
    assert len(report["failures"]) == 2  # the notification is no failure of the backup
    assert report["exit_code"] == 1

    # A clean run that notifies on success: still 0 when the card cannot be delivered.
    proxy.clear()
    set_notification(cache, on_success=True)
    result = backup(cache)
    assert result.returncode == 0, result.stderr
    assert len(notification_warnings(result.stderr)) == 1, result.stderr
    latest = reports(cache)[-1]
    assert latest["exit_code"] == 0 and latest["failures"] == []
    assert [w["kind"] for w in latest["warnings"]] == ["notification"]


def test_no_log_report_card_or_metrics_file_holds_a_secret(tmp_path: Path, failing_site: dict[str, Any]) -> None:
    cache = failing_site["cache"]
    metrics = tmp_path / "metrics" / "async_backup.prom"
    # The first two replies are errors that echo the signed URL back; the third try succeeds.
    with WebhookServer([500, 503, 202]) as server:
        set_notification(cache, webhook=server.url)
        result = backup(cache, "-v", "--metrics-file", str(metrics))
        cards = [p.body.decode("utf-8") for p in server.posts]
    assert result.returncode == 1, result.stderr
    assert len(cards) == 3
    # The secrets are in play: the failure messages carry them and the card names the failures.
    assert "Access Denied" in result.stderr and "***" in result.stderr

    places = {
        "stderr": result.stderr,
        "stdout": result.stdout,
        "backup.log": (cache / "backup.log").read_text(),
        "metrics": metrics.read_text(),
    }
    places.update({f"card {i}": card for i, card in enumerate(cards)})
    places.update({f"report {p.name}": p.read_text() for p in (cache / "reports").glob("*.json")})
    assert any(k.startswith("report") for k in places)
    for place, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {place}"

    # Also a delivery that fails for good: its warning quotes the server's reply, which echoes the URL.
    with WebhookServer([500, 500, 500]) as server:
        set_notification(cache, webhook=server.url)
        result = backup(cache, "--metrics-file", str(metrics))
    assert result.returncode == 1
    assert len(notification_warnings(result.stderr)) == 1, result.stderr
    latest = reports(cache)[-1]
    assert [w["kind"] for w in latest["warnings"]] == ["notification"]
    for place, text in {
        "stderr": result.stderr,
        "backup.log": (cache / "backup.log").read_text(),
        "report": json.dumps(latest),
        "metrics": metrics.read_text(),
    }.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {place} after a failed delivery"


# ----------------------------------------------------------------------------- when no card is posted


def test_dry_run_posts_nothing(failing_site: dict[str, Any], webhook: WebhookServer) -> None:
    set_notification(failing_site["cache"], on_success=True)
    metrics = failing_site["cache"] / "dry.prom"
    result = backup(failing_site["cache"], "--dry-run", "--metrics-file", str(metrics))
    assert result.returncode == 0, result.stderr
    assert "would upload" in result.stdout
    assert webhook.posts == []
    assert not (failing_site["cache"] / "reports").exists() and not metrics.exists()


def test_print_card_prints_the_card_and_posts_nothing(failing_site: dict[str, Any], webhook: WebhookServer) -> None:
    result = backup(failing_site["cache"], "--print-card")
    assert result.returncode == 1, result.stderr
    assert webhook.posts == []
    payload = json.loads(result.stdout)
    validate_payload(payload)
    lines = card_lines(payload)
    for path in failing_site["refused"]:
        assert as_shown(path, failing_site["data"]) in lines, lines
    for secret in SECRETS:
        assert secret not in result.stdout


# ----------------------------------------------------------------------------- report and metrics


def test_report_and_metrics_of_a_failing_run(
    tmp_path: Path, failing_site: dict[str, Any], webhook: WebhookServer
) -> None:
    data, cache = failing_site["data"], failing_site["cache"]
    metrics = tmp_path / "node_exporter" / "async_backup.prom"
    result = backup(cache, "--metrics-file", str(metrics))
    assert result.returncode == 1, result.stderr
    assert len(webhook.posts) == 1

    (report,) = reports(cache)
    assert report["exit_code"] == 1 and report["succeeded"] is False and report["dry_run"] is False
    targets = {t["name"]: t for t in report["targets"]}
    assert set(targets) == {str(data / n) for n in ("alpha", "beta", "gamma")}
    for name, failed in (("alpha", 1), ("beta", 1), ("gamma", 0)):
        target = targets[str(data / name)]
        assert (target["new"], target["failed"], target["deleted"]) == (1, failed, 0), target
    assert report["totals"]["files_uploaded"] == 3
    assert report["totals"]["failures"] == 2
    failures = sorted(report["failures"], key=lambda f: f["path"])
    assert [f["path"] for f in failures] == sorted(str(p) for p in failing_site["refused"])
    assert [(f["target"], f["kind"], f["code"]) for f in failures] == [
        (str(data / "alpha"), "S3 error", "AccessDenied"),
        (str(data / "beta"), "S3 error", "AccessDenied"),
    ]

    samples = metric_samples(metrics.read_text())
    assert samples["async_backup_exit_code"] == 1
    assert samples["async_backup_last_success_timestamp_seconds"] == 0
    assert samples[f'async_backup_failures{{target="{data / "alpha"}",kind="S3 error"}}'] == 1
    assert samples[f'async_backup_files_uploaded{{target="{data / "gamma"}"}}'] == 1
    assert not list(metrics.parent.glob("*.tmp"))
