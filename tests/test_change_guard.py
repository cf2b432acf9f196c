"""The change guard: a run that would overwrite much of a target, or images whose new bytes no longer
look like images, holds those uploads back (ransomware encrypting in place); new files still go."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process, key_of, make_tree, reports, run_cli, write_config
from s3proxy import ProxyServer

from async_backup.cache.store import connect
from async_backup.disk.kinds import BIGTIFF, J2K, JP2, JPEG, OTHER, PDF, PNG, TIFF, kind_of
from async_backup.settings.naming import stable_bucket_name

NOT_AN_IMAGE = b"\x13\x37"  # no signature begins like this: random bytes of an encrypted file


def puts(proxy: ProxyServer) -> list[str]:
    return [r.key or "" for r in proxy.requests if r.op == "PutObject" and r.status == 200]


def rewrite(path: Path) -> None:
    """Encrypted in place: random bytes at the same size, a new mtime."""
    size = path.stat().st_size
    path.write_bytes(NOT_AN_IMAGE + os.urandom(size - len(NOT_AN_IMAGE)))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def kinds(cache: Path, bucket: str) -> dict[str, str | None]:
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        rows = conn.execute("SELECT path, kind FROM files WHERE bucket=?", (bucket,)).fetchall()
    finally:
        conn.close()
    return {os.path.basename(os.fsdecode(bytes(p))): k for p, k in rows}


def card_texts(stdout: str) -> list[str]:
    """The card's text blocks in order (--print-card prints the webhook's JSON body)."""
    texts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "TextBlock":
                texts.append(str(node.get("text", "")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(stdout))
    return texts


@pytest.mark.slow
def test_a_third_of_a_target_rewritten_is_held_back_until_allowed_for_that_target(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    target = tmp_path / "scans"
    files = {f"f{i:02}.dat": b"\x00scan " + bytes([i]) * 500 for i in range(40)}
    make_tree(target, files)
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(target)], bucket_prefix=bucket_prefix)
    first = run_cli("--cache", str(cache), "--no-cache-backup")
    assert first.returncode == 0, first.stderr
    rewritten = [target / f"f{i:02}.dat" for i in range(0, 40, 10 // 3)][:12]  # 12 of 40: 30 %
    for path in rewritten:
        rewrite(path)
    make_tree(target, {"new-1.dat": b"new one", "new-2.dat": b"new two"})
    proxy.clear()

    held = run_cli("--cache", str(cache), "--no-cache-backup", "--print-card")

    assert held.returncode == 1, held.stderr
    sent = puts(proxy)
    assert not {key_of(p) for p in rewritten} & set(sent)  # not one of them uploaded
    assert sorted(sent) == sorted(key_of(target / n) for n in ("new-1.dat", "new-2.dat"))  # new files go
    (failure,) = reports(cache)[-1]["failures"]
    assert failure["kind"] == "change guard" and failure["target"] == str(target)
    assert "12 of 40 files (30%) would be overwritten, more than the 20% allowed" in failure["message"]
    assert str(rewritten[0]) in failure["message"]  # examples named
    texts = [t.replace("\\", "") for t in card_texts(held.stdout)]  # markdown escapes off
    failures_at = texts.index("Failures (1)")
    assert texts[failures_at + 1] == "**change guard**: 1", texts  # the card leads with it
    assert texts[failures_at + 2].startswith("12 of 40 files (30%) would be overwritten"), texts
    assert f"async-backup --allow-mass-change --only '{target}'" in texts, texts
    bucket = stable_bucket_name(bucket_prefix, str(target))
    assert kinds(cache, bucket)["f00.dat"] == OTHER  # recorded at the first upload, unchanged since

    again = run_cli("--cache", str(cache), "--no-cache-backup")
    assert again.returncode == 1 and "change guard" in again.stderr  # still held back the next night

    refused = in_process("--cache", str(cache), "--allow-mass-change")
    assert refused.returncode == 2 and "--allow-mass-change needs --only" in refused.stderr
    proxy.clear()
    allowed = run_cli("--cache", str(cache), "--no-cache-backup", "--allow-mass-change", "--only", str(target))
    assert allowed.returncode == 0, allowed.stderr
    assert sorted(puts(proxy)) == sorted(key_of(p) for p in rewritten)


@pytest.mark.slow
def test_two_tiffs_turned_unknown_are_named_even_below_the_share(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    target = tmp_path / "scans"
    tiff = b"II*\x00\x08\x00\x00\x00"
    make_tree(target, {f"p{i:02}.tif": tiff + bytes([i]) * 300 for i in range(20)})
    make_tree(target, {"big.tif": b"MM\x00*" + b"z" * (400 * 1024)})  # streamed, not read whole
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(target)], bucket_prefix=bucket_prefix)
    assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
    bucket = stable_bucket_name(bucket_prefix, str(target))
    assert set(kinds(cache, bucket).values()) == {TIFF}
    encrypted = [target / "p03.tif", target / "big.tif"]
    for path in encrypted:
        rewrite(path)
    edited = target / "p07.tif"
    edited.write_bytes(tiff + b"retouched" * 40)  # still a TIFF: an edit, not an attack
    make_tree(target, {"new.tif": tiff + b"new"})
    proxy.clear()

    held = run_cli("--cache", str(cache), "--no-cache-backup")

    assert held.returncode == 1, held.stderr
    assert sorted(puts(proxy)) == sorted([key_of(edited), key_of(target / "new.tif")])
    (failure,) = reports(cache)[-1]["failures"]
    assert failure["kind"] == "change guard"
    message = failure["message"]
    assert "2 images no longer begin like one" in message and "encrypted files lose their signature" in message
    assert f"{target / 'p03.tif'} (tiff -> other)" in message and f"{target / 'big.tif'} (tiff -> other)" in message
    assert "would be overwritten" not in message  # 4 of 21 files: within the share
    assert kinds(cache, bucket)["p03.tif"] == TIFF  # not recorded: the next run sees it again


@pytest.mark.slow
def test_one_image_turned_unknown_below_the_alarm_goes_and_is_recorded_as_unknown(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    target = tmp_path / "scans"
    make_tree(target, {f"p{i}.jpg": b"\xff\xd8\xff\xe0" + bytes([i]) * 100 for i in range(5)})
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(target)], bucket_prefix=bucket_prefix)
    assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
    rewrite(target / "p1.jpg")
    proxy.clear()
    ran = run_cli("--cache", str(cache), "--no-cache-backup")
    assert ran.returncode == 0, ran.stderr
    assert puts(proxy) == [key_of(target / "p1.jpg")]
    bucket = stable_bucket_name(bucket_prefix, str(target))
    assert kinds(cache, bucket)["p1.jpg"] == OTHER and kinds(cache, bucket)["p0.jpg"] == JPEG


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"II*\x00\x08\x00\x00\x00", TIFF),
        (b"MM\x00*\x00\x00\x00\x08", TIFF),
        (b"II+\x00\x08\x00\x00\x00", BIGTIFF),
        (b"MM\x00+\x00\x08\x00\x00", BIGTIFF),
        (b"\xff\xd8\xff\xe1\x00\x10Exif", JPEG),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", JP2),
        (b"\xff\x4f\xff\x51\x00\x2f", J2K),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", PNG),
        (b"%PDF-1.7\n", PDF),
        (b"", OTHER),
        (b"II*", OTHER),
        (b"\x00\x00\x00\x0cjP  ", OTHER),
    ],
)
def test_first_bytes_show_the_kind(head: bytes, kind: str) -> None:
    assert kind_of(head) == kind


def test_a_cache_from_before_kinds_gets_the_column_and_its_rows_read_as_unknown(tmp_path: Path) -> None:
    db = tmp_path / "async-backup.db"
    old = sqlite3.connect(db)
    old.execute(
        "CREATE TABLE files (bucket TEXT NOT NULL, path BLOB NOT NULL, size INTEGER, mtime_ns INTEGER NOT NULL, "
        "checksum TEXT, PRIMARY KEY (bucket, path)) WITHOUT ROWID"
    )
    old.execute("INSERT INTO files VALUES ('b', x'2f61', 1, 2, NULL)")
    old.commit()
    old.close()
    conn = connect(db)
    try:
        assert conn.execute("SELECT kind FROM files").fetchall() == [(None,)]
    finally:
        conn.close()
