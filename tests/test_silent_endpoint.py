"""An endpoint that takes the connection and never answers stops the run within seconds."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import make_tree, run_cli, write_config


@contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server on a free loopback port that accepts every connection, reads what comes and
    never sends a byte (a hung S3 gateway, a firewall that swallows packets after the handshake)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.setblocking(False)  # read nothing, answer nothing: the client waits
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.slow
def test_a_silent_endpoint_fails_the_run_in_seconds_with_one_line(tmp_path: Path, bucket_prefix: str):
    make_tree(tmp_path / "tree", {"a.tif": b"a"})
    cache = tmp_path / "cache"
    with silent_server() as url:
        # Defaults: connect_timeout_s 10, read_timeout_s 60, 5 attempts (over 300 s before the fix).
        write_config(cache, url, folders=[str(tmp_path / "tree")], bucket_prefix=bucket_prefix)
        began = time.monotonic()
        result = run_cli("--cache", str(cache), "--print-card", timeout_s=120)
        took_s = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    assert took_s < 45, f"the run took {took_s:.0f} s"
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert url in errors[0] and "no answer within 15 s" in errors[0] and "aws.endpoint_url" in errors[0]
    card = json.loads(result.stdout)
    assert "no answer within" in json.dumps(card)
