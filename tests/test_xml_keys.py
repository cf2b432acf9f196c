"""Keys S3's XML cannot carry, and DeleteObjects batches refused as malformed.

XML 1.0 carries no U+FFFE or U+FFFF: a DeleteObjects body naming such a key is refused whole (moto
answers 500 after botocore's retries; S3 refuses the body as MalformedXML), so every other delete of
its batch failed with it, every night. Such names now take the escaped key form; an object an
earlier release stored under the plain key is deleted by DeleteObject, which carries the key in the
URL; and a batch refused as MalformedXML is split until the key it chokes on is alone.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import all_keys, in_process, key_of, make_tree, run_cli, write_config
from faultcheck import assert_whole, cache_rows, reported_failures
from s3proxy import ErrorReply, ProxyServer, RefuseDeleteBatch

from async_backup.disk.keys import path_for_key
from async_backup.settings.naming import stable_bucket_name

NOT_XML = ["scan-\ufffe.tif", "scan-\uffff.tif"]


def backup(cache: Path) -> None:
    result = run_cli("--cache", str(cache), "--no-cache-backup", "-q")
    assert result.returncode == 0, result.stderr


def test_names_xml_cannot_carry_are_deleted_with_their_batch(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root = tmp_path / "images"
    make_tree(root, {f"kept/page-{i:02d}.tif": b"k%d" % i for i in range(20)})
    make_tree(root, {f"box/{name}": name.encode() for name in NOT_XML})
    make_tree(root, {f"box/page-{i}.tif": b"p%d" % i for i in range(5)})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(root))
    backup(cache)
    assert len([k for k in all_keys(s3_inspect, bucket) if "/box/" in k]) == 7

    # The two names and five others in one DeleteObjects batch: all seven go.
    for path in (root / "box").iterdir():
        path.unlink()
    backup(cache)
    assert_whole(s3_inspect, bucket, root, cache)
    assert [k for k in all_keys(s3_inspect, bucket) if "/box/" in k] == []
    for name in NOT_XML:  # because their keys hold only what XML carries
        key = key_of(root / "box" / name)
        assert key.startswith("/") and "\ufffe" not in key and "\uffff" not in key, key


def test_names_xml_cannot_carry_round_trip_through_restore(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root = tmp_path / "images"
    make_tree(root, {f"box/{name}": name.encode() for name in NOT_XML})
    make_tree(root, {"box/page.tif": b"p"})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(root))
    backup(cache)
    for name in NOT_XML:
        assert path_for_key(key_of(root / "box" / name)) == os.fsencode(root / "box" / name)
    assert_whole(s3_inspect, bucket, root, cache)
    # The first restore asks for the retrievals, the second downloads (moto's restores complete at
    # once); both list the bucket's versions, which moto cannot do while it holds a plain U+FFFE key.
    out = tmp_path / "restored"
    for _ in range(2):
        ran = in_process("restore", str(root), "--to", str(out), "--yes", "--cache", str(cache))
        assert ran.returncode == 0, ran.stdout + ran.stderr
    restored = out / root.relative_to("/") / "box"
    assert sorted(p.name for p in restored.iterdir()) == sorted([*NOT_XML, "page.tif"])
    assert all((restored / name).read_bytes() == name.encode() for name in NOT_XML)


def test_an_object_an_earlier_release_stored_under_the_plain_key_is_deleted_and_replaced(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    """Before this release such a name was stored under its plain key (PutObject carries the key
    in the URL, so the upload went through): that object and its cache row are made here as that
    release left them. Its file deleted, the plain key is deleted too; its file changed, the new
    content goes under the escaped key and the plain key is deleted, so no restore finds both."""
    root = tmp_path / "images"
    make_tree(root, {f"kept/page-{i:02d}.tif": b"k%d" % i for i in range(12)})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(root))
    backup(cache)
    gone, changed = root / "box" / NOT_XML[0], root / "box" / NOT_XML[1]
    make_tree(root, {f"box/{p.name}": b"old " + p.name.encode() for p in (gone, changed)})
    with sqlite3.connect(cache / "async-backup.db") as db:
        for path in (gone, changed):
            plain = str(path)[1:]
            s3_inspect.put_object(Bucket=bucket, Key=plain, Body=path.read_bytes(), StorageClass="DEEP_ARCHIVE")
            st = path.stat()
            db.execute(
                "INSERT INTO files(bucket, path, size, mtime_ns, checksum) VALUES (?, ?, ?, ?, NULL)",
                (bucket, os.fsencode(path), st.st_size, st.st_mtime_ns),
            )
    db.close()
    assert str(gone)[1:] in all_keys(s3_inspect, bucket)

    gone.unlink()
    changed.write_bytes(b"rescanned, longer than before")
    for i in range(4):
        (root / "kept" / f"page-{i:02d}.tif").unlink()  # deleted in the same batch
    backup(cache)
    keys = all_keys(s3_inspect, bucket)
    assert str(gone)[1:] not in keys and key_of(gone) not in keys
    assert str(changed)[1:] not in keys, "the earlier release's object is no longer current"
    assert key_of(changed) in keys
    assert s3_inspect.head_object(Bucket=bucket, Key=key_of(changed))["ContentLength"] == changed.stat().st_size
    assert_whole(s3_inspect, bucket, root, cache)


@pytest.mark.slow
def test_a_batch_refused_as_malformed_is_split_so_the_other_deletes_go_through(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root = tmp_path / "images"
    make_tree(root, {f"box/page-{i:02d}.tif": b"p%d" % i for i in range(30)})
    cache = tmp_path / "cache"
    bucket = stable_bucket_name(bucket_prefix, str(root))
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    backup(cache)
    deleted = [root / "box" / f"page-{i:02d}.tif" for i in range(12)]
    choking = key_of(deleted[7])
    for path in deleted:
        path.unlink()
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(RefuseDeleteBatch(refused_keys={choking}))
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix)
        backup(cache)
        sent = proxy.wait_done()
    refused = [r for r in sent if r.op == "DeleteObjects" and r.status == 400]
    assert 1 < len(refused) <= 5, "halved down to the one key: 12, 6, 3, 2 (or 1) keys"
    assert [r.key for r in sent if r.op == "DeleteObject"] == [choking], "the key alone, in the URL"
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    assert_whole(s3_inspect, bucket, root, cache)


@pytest.mark.slow
def test_a_key_refused_alone_too_is_that_files_failure_and_stays_cached(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root = tmp_path / "images"
    make_tree(root, {f"box/page-{i:02d}.tif": b"p%d" % i for i in range(10)})
    cache = tmp_path / "cache"
    bucket = stable_bucket_name(bucket_prefix, str(root))
    write_config(cache, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    backup(cache)
    deleted = [root / "box" / f"page-{i:02d}.tif" for i in range(4)]
    choking = key_of(deleted[2])
    for path in deleted:
        path.unlink()
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(
            RefuseDeleteBatch(refused_keys={choking}),
            ErrorReply(ops={"DeleteObject"}, keys={choking}, status=403, code="AccessDenied"),
        )
        write_config(cache, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix)
        ran = run_cli("--cache", str(cache), "--no-cache-backup", "-q")
    assert ran.returncode == 1, ran.stderr
    assert reported_failures(cache) == {str(deleted[2])}
    assert os.fsencode(deleted[2]) in cache_rows(cache, bucket), "not confirmed, so still cached"
    keys = all_keys(s3_inspect, bucket)
    assert choking in keys and not {key_of(p) for p in deleted if p != deleted[2]} & set(keys)
