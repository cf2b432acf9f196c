"""`async-backup restore` end to end: real backups into moto's S3 server, restores through the CLI.

moto keeps DEEP_ARCHIVE objects unreadable until RestoreObject, which it completes at once: so the
first run of a restore requests the retrievals and the second one downloads. Restore requests are
counted on the wire by the recording proxy (tests/s3proxy.py), not by patching the client.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Ran, in_process, make_tree, run_cli, write_config
from s3proxy import CorruptBody, ErrorReply, ProxyServer, Stall

from async_backup.cache.records import Recorded
from async_backup.disk.keys import key_for_path
from async_backup.restore.checksum import expected_checksum
from async_backup.restore.choose import choose_versions, is_safe, list_prefixes, under_prefix
from async_backup.s3.checksums import StreamSum
from async_backup.s3.objects import ObjectHead, ObjectVersion
from async_backup.settings.naming import stable_bucket_name

MIB = 1024 * 1024
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def restore(cache: Path, *args: str) -> Ran:
    return in_process("restore", *args, "--cache", str(cache))


def request_counts(output: str) -> dict[str, int]:
    """The tool's own "requests sent: N (Op n, ...)" line, as a dict."""
    line = next(x for x in output.splitlines() if x.startswith("requests sent:"))
    return {op: int(n) for op, n in re.findall(r"([A-Za-z0-9]+) (\d+)", line.split("(", 1)[-1])}


def same_tree(source: Path, restored: Path) -> None:
    """Every file of `source` exists in `restored` with the same bytes and mtime, and nothing else."""
    want = {p.relative_to(source) for p in source.rglob("*") if p.is_file()}
    got = {p.relative_to(restored) for p in restored.rglob("*") if p.is_file()}
    assert got == want
    for rel in want:
        assert (restored / rel).read_bytes() == (source / rel).read_bytes(), rel
        assert (restored / rel).stat().st_mtime_ns == (source / rel).stat().st_mtime_ns, rel


@pytest.fixture
def site(tmp_path: Path, moto_endpoint: str, bucket_prefix: str) -> dict[str, Any]:
    """One target with a multipart file (two 5 MiB parts), nested folders, an empty file, a name
    with non-ASCII characters and one that is not UTF-8 (an escaped key)."""
    photos = tmp_path / "data" / "photos"
    make_tree(
        photos,
        {
            "a.txt": b"hello",
            "empty.dat": b"",
            "sub/b.bin": os.urandom(6 * MIB),
            "sub/deeper/c.jpg": os.urandom(1000),
            "Ärger ü.txt": b"umlauts",
        },
    )
    (photos / os.fsdecode(b"raw-\xff.bin")).write_bytes(b"not utf-8 name")
    os.utime(photos / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(photos)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5, "max_attempts": 2},
    )
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    return {"photos": photos, "cache": cache, "bucket": stable_bucket_name(bucket_prefix, str(photos))}


@pytest.mark.slow
def test_restore_one_file_then_whole_target_to_another_root(site: dict[str, Any], tmp_path: Path) -> None:
    photos, cache = site["photos"], site["cache"]

    # Without --yes and off a terminal: the estimate, then exit 2 with one line.
    asked = restore(cache, str(photos), "--path", "sub/b.bin", "--to", str(tmp_path / "one"))
    assert asked.returncode == 2
    assert "1 object, 6.0 MiB" in asked.stdout and "1 retrieval request to send (tier Bulk" in asked.stdout
    assert asked.stderr.strip().splitlines()[-1].startswith("async-backup: error: restore asks before it starts")
    assert not (tmp_path / "one").exists()
    # Its price per tier, by hand: 6 MiB = 6/1024 GB; 1 retrieval; the copy at STANDARD ($0.023) for 7 days;
    # 1 GetObject ($0.0004 per 1,000); 6 MiB out at $0.09 per GB.
    gb = 6 / 1024
    copy_and_rest = gb * 0.023 * 7 / 30 + 0.0004 / 1000 + gb * 0.09
    bulk = 0.025 / 1000 + gb * 0.0025 + copy_and_rest
    standard = 0.10 / 1000 + gb * 0.02 + copy_and_rest
    assert f"price at tier Bulk (this restore): ${bulk:.6f} = $0.000025 for 1 retrieval + " in asked.stdout, (
        asked.stdout
    )
    assert f"price at tier Standard: ${standard:.6f} = $0.0001 for 1 retrieval + " in asked.stdout
    assert (
        "prices: us-east-1 (no figures for eu-central-1 here) prices from async_backup/s3/pricing.py (read 2026-11"
        in asked.stdout
    )

    first = restore(cache, str(photos), "--path", "sub/b.bin", "--to", str(tmp_path / "one"), "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 pending (1 retrieval requested now)" in first.stdout
    assert request_counts(first.stdout).get("RestoreObject") == 1
    second = restore(
        cache, site["bucket"], "--path", str(photos / "sub" / "b.bin"), "--to", str(tmp_path / "one"), "--yes"
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 restored (6.0 MiB; 1 checksum verified)" in second.stdout
    assert "RestoreObject" not in request_counts(second.stdout)
    one = tmp_path / "one" / photos.relative_to("/")
    assert [p.name for p in one.rglob("*") if p.is_file()] == ["b.bin"]
    assert (one / "sub/b.bin").read_bytes() == (photos / "sub/b.bin").read_bytes()
    assert (one / "sub/b.bin").stat().st_mtime_ns == (photos / "sub/b.bin").stat().st_mtime_ns

    # The whole target (by its bucket name) to another disk: request, then download.
    other = tmp_path / "other-disk"
    first = restore(cache, site["bucket"], "--to", str(other), "--yes", "--tier", "Standard", "--days", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "6 objects" in first.stdout and "tier Standard" in first.stdout
    # b.bin's restored copy from above is still readable: S3 answers 200 and it downloads at once.
    assert "restore: 1 restored" in first.stdout and "5 pending (5 retrievals requested now)" in first.stdout
    second = restore(cache, site["bucket"], "--to", str(other), "--yes")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "restore: 5 restored" in second.stdout and "0 failed, 1 left alone" in second.stdout
    same_tree(photos, other / photos.relative_to("/"))
    assert not [p for p in other.rglob("*") if b".async-backup-restore-" in os.fsencode(p.name)]

    # A third run finds everything in place and leaves it alone; --overwrite replaces a changed file.
    target_copy = other / photos.relative_to("/")
    (target_copy / "a.txt").write_bytes(b"changed locally")
    again = restore(cache, str(photos), "--to", str(other), "--yes")
    assert again.returncode == 0 and "6 left alone" in again.stdout
    assert (target_copy / "a.txt").read_bytes() == b"changed locally"
    forced = restore(cache, str(photos), "--path", "a.txt", "--to", str(other), "--yes", "--overwrite")
    assert forced.returncode == 0 and "1 restored" in forced.stdout, forced.stdout + forced.stderr
    assert (target_copy / "a.txt").read_bytes() == b"hello"
    assert (target_copy / "a.txt").stat().st_mtime_ns == 1_600_000_000_123_456_789


@pytest.mark.slow
def test_restore_in_place_after_the_disk_is_lost(site: dict[str, Any]) -> None:
    """The folder and the cache's rows gone: the target is found from the config, the files come back."""
    photos, cache = site["photos"], site["cache"]
    saved = {p.relative_to(photos): (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()}
    subprocess.run(["rm", "-rf", str(photos), str(cache / "async-backup.db")], check=True)
    assert restore(cache, str(photos), "--yes").returncode == 0
    done = restore(cache, str(photos), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 restored" in done.stdout
    for rel, (data, mtime_ns) in saved.items():
        assert (photos / rel).read_bytes() == data
        assert (photos / rel).stat().st_mtime_ns == mtime_ns


@pytest.mark.slow
def test_as_of_brings_back_a_deleted_file_and_older_content(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    """STANDARD class here: moto's RestoreObject ignores VersionId (it restores the current version,
    and answers NoSuchKey under a delete marker), so old archived versions cannot be read on moto.
    Real S3 restores the version asked for; the selection by time is what this test is about."""
    docs = tmp_path / "docs"
    make_tree(docs, {"report.txt": b"version one", "notes.txt": b"to be deleted", "keep.txt": b"k", "k2.txt": b"2"})
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(docs)],
        bucket_prefix=bucket_prefix,
        backup_extra={"storage_class": "STANDARD"},
    )
    assert run_cli("--cache", str(cache)).returncode == 0
    time.sleep(1.1)  # listings carry whole seconds: keep the moment clear of both backups
    moment = datetime.now(UTC)
    time.sleep(1.1)
    (docs / "report.txt").write_bytes(b"version two, longer")
    (docs / "notes.txt").unlink()
    assert run_cli("--cache", str(cache)).returncode == 0

    then = tmp_path / "then"
    args = (str(docs), "--as-of", moment.isoformat(), "--to", str(then), "--yes")
    first = restore(cache, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 objects" in first.stdout and "readable now: 4 objects download at once" in first.stdout
    assert "restore: 4 restored" in first.stdout
    old = then / docs.relative_to("/")
    assert (old / "report.txt").read_bytes() == b"version one"
    assert (old / "notes.txt").read_bytes() == b"to be deleted"

    now = tmp_path / "now"
    latest = restore(cache, str(docs), "--to", str(now), "--yes")
    assert latest.returncode == 0, latest.stdout + latest.stderr
    assert "3 objects" in latest.stdout and "1 more is deleted (older versions remain: see --as-of)" in latest.stdout
    current = now / docs.relative_to("/")
    assert (current / "report.txt").read_bytes() == b"version two, longer"
    assert not (current / "notes.txt").exists()

    # Before the first backup nothing existed: nothing to restore is an error, not a silent success.
    empty = restore(cache, str(docs), "--as-of", "2000-01-01T00:00", "--to", str(tmp_path / "x"), "--yes")
    assert empty.returncode == 1 and "nothing to restore" in empty.stdout
    bad = restore(cache, str(docs), "--as-of", "last tuesday", "--yes")
    assert bad.returncode == 2 and "--as-of 'last tuesday' is not a time" in bad.stderr
    unknown = restore(cache, "no-such-bucket-here", "--yes")
    assert unknown.returncode == 2 and "bucket no-such-bucket-here does not exist" in unknown.stderr


@pytest.mark.slow
def test_rerun_after_interrupted_restore_sends_no_restore_twice(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str
) -> None:
    data = tmp_path / "set"
    files = {f"d{d}/f{i}.bin": os.urandom(2000 + i) for d in (1, 2) for i in range(3)}
    make_tree(data, files)
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        write_config(cache, proxy.url, folders=[str(data)], bucket_prefix=bucket_prefix, tuning={"max_attempts": 2})
        assert run_cli("--cache", str(cache)).returncode == 0
        out = tmp_path / "out"
        args = (str(data), "--to", str(out), "--yes", "--concurrency", "2")

        proxy.clear()
        first = restore(cache, *args)
        assert first.returncode == 0, first.stdout + first.stderr
        assert proxy.count("RestoreObject") == 6 and proxy.count("GetObject") == 0
        # Recorded in restore's own log, not in the cache (which restore only reads).
        with sqlite3.connect(cache / "restores.db") as db:
            assert db.execute("SELECT COUNT(*) FROM restores").fetchone()[0] == 6

        # Second run: the downloads of d2 fail (the server errors), the others land.
        proxy.clear()
        d2_keys = {key_for_path(os.fsencode(data / rel)) for rel in files if rel.startswith("d2/")}
        proxy.set_faults(ErrorReply(ops={"GetObject"}, keys=d2_keys, status=500, code="InternalError"))
        broken = restore(cache, *args)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "3 restored" in broken.stdout and "3 failed" in broken.stdout
        assert proxy.count("RestoreObject") == 0

        # Third run, interrupted by SIGINT while one download hangs.
        proxy.clear()
        hung = key_for_path(os.fsencode(data / "d2/f0.bin"))
        proxy.set_faults(Stall(ops={"GetObject"}, keys={hung}, seconds=30))
        proc = subprocess.Popen(
            [sys.executable, "-m", "async_backup", "restore", *args, "--cache", str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not any(r.op == "GetObject" and r.key == hung for r in proxy.requests):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 130, stdout + stderr
        assert "interrupted; run the same command again to resume" in stdout
        assert proxy.count("RestoreObject") == 0
        assert not [p for p in out.rglob("*") if b".async-backup-restore-" in os.fsencode(p.name)]

        # The rerun resumes: what landed is left alone, the rest downloads; still no RestoreObject.
        proxy.clear()
        done = restore(cache, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert proxy.count("RestoreObject") == 0
        assert request_counts(done.stdout).get("RestoreObject") is None
        assert proxy.count("GetObject") == int(re.search(r"restore: (\d+) restored", done.stdout).group(1))  # type: ignore[union-attr]
    same_tree(data, out / data.relative_to("/"))


# Pure parts


def _version(key: str, seconds: int, *, latest: bool = False, marker: bool = False, vid: str = "") -> ObjectVersion:
    return ObjectVersion(
        key=key,
        version_id=vid or f"{key}-{seconds}",
        last_modified=T0 + timedelta(seconds=seconds),
        is_latest=latest,
        is_delete_marker=marker,
        size=0 if marker else seconds,
        storage_class="DEEP_ARCHIVE",
    )


def test_choose_versions_picks_the_version_current_at_the_moment() -> None:
    listing = [
        _version("a", 30, latest=True),
        _version("a", 10),
        _version("b", 20, latest=True, marker=True),
        _version("b", 5),
        _version("c", 40, latest=True),
    ]
    assert [v.version_id for v in choose_versions(listing, None)] == ["a-30", "c-40"]
    at_25 = [v.version_id for v in choose_versions(listing, T0 + timedelta(seconds=25))]
    assert at_25 == ["a-10"]  # b was deleted at 20, c did not exist yet
    assert [v.version_id for v in choose_versions(listing, T0 + timedelta(seconds=15))] == ["a-10", "b-5"]


def test_prefixes_and_safe_paths() -> None:
    assert list_prefixes(None) == [""]
    assert list_prefixes(b"/data/photos") == ["data/photos", "/"]
    assert list_prefixes(b"/data/\xff") == [""]
    assert under_prefix(b"/data/photos/a.jpg", b"/data/photos")
    assert under_prefix(b"/data/photos", b"/data/photos")
    assert not under_prefix(b"/data/photos-old/a.jpg", b"/data/photos")
    assert is_safe(b"/data/a.jpg") and not is_safe(b"/data/../etc/passwd") and not is_safe(b"data/a")


def test_stream_sum_matches_single_and_composite_values() -> None:
    data = os.urandom(3 * 1000 + 17)
    single = StreamSum("crc32", None)
    for i in range(0, len(data), 999):
        single.update(data[i : i + 999])
    assert single.result() == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()

    parts = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    joined = b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)
    composite = StreamSum("crc32", 1000)
    for i in range(0, len(data), 777):
        composite.update(data[i : i + 777])
    assert composite.result() == base64.b64encode(zlib.crc32(joined).to_bytes(4, "big")).decode()
    assert composite.part_count == 4


def test_expected_checksum_uses_the_cache_only_for_the_same_upload() -> None:
    head = ObjectHead(
        size=5,
        etag="5d41402abc4b2a76b9719d911017c592",
        storage_class="DEEP_ARCHIVE",
        version_id="v1",
        metadata={"mtime": "1.000000002"},
        restore=None,
        checksum_crc32=None,
        other_checksum=False,
        checksum_type="",
        parts_count=None,
        encrypted_with_key=False,
    )
    current = _version("k", 1, latest=True)
    row = Recorded(b"/k", 5, 1_000_000_002, checksum="crc32:NhCmhg==")
    assert expected_checksum(head, current, row) is not None
    assert expected_checksum(head, current, replace(row, mtime_ns=1_000_000_003)) is None  # another upload
    assert expected_checksum(head, _version("k", 1), row) is None  # old version
    assert expected_checksum(head, current, None) is None


@pytest.mark.parametrize(
    ("aws_extra", "source"),
    [({}, "S3"), ({"checksum_calculation": "when_required", "direct_put": False}, "the cache")],
    ids=["crc32-in-s3", "md5-server"],
)
def test_a_download_that_fails_its_checksum_is_not_written(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, aws_extra: dict[str, Any], source: str
) -> None:
    """A server that checks nothing stored a body with one byte flipped (the proxy's CorruptBody
    without verify): the download must match S3's CRC32, or, where S3 keeps none (Content-MD5
    bodies), the whole-file CRC32 the cache recorded, and a download that fails it is not written."""
    photos = tmp_path / "photos"
    make_tree(photos, {"a.txt": b"hello, bit rot", "b.txt": b"untouched"})
    cache = tmp_path / "cache"
    with ProxyServer(moto_endpoint) as proxy:
        write_config(cache, proxy.url, folders=[str(photos)], bucket_prefix=bucket_prefix, aws_extra=aws_extra)
        proxy.set_faults(
            CorruptBody(ops={"PutObject"}, keys={key_for_path(os.fsencode(photos / "a.txt"))}, verify=False)
        )
        backup = run_cli("--cache", str(cache), "--no-cache-backup")
        assert backup.returncode == 0, backup.stderr
        assert proxy.count(faulted=True) == 1
    write_config(cache, moto_endpoint, folders=[str(photos)], bucket_prefix=bucket_prefix, aws_extra=aws_extra)
    whole = base64.b64encode(zlib.crc32(b"hello, bit rot").to_bytes(4, "big")).decode()
    out = tmp_path / "out"
    # TARGET may name a file inside a target: the same as TARGET --path FILE.
    assert restore(cache, str(photos), "--to", str(out), "--yes").returncode == 0  # asks for the retrievals
    failed = restore(cache, str(photos), "--to", str(out), "--yes")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = next(x.strip() for x in failed.stdout.splitlines() if x.strip().startswith("failed: "))
    assert line.startswith(f"failed: {photos / 'a.txt'}: ChecksumMismatch: "), line
    # botocore checks a body against the CRC32 S3 stores as it arrives; restore checks the rest itself.
    assert (whole in line and "S3 stores" in line) if source == "S3" else f"the cache says {whole}" in line, line
    assert "1 restored" in failed.stdout and "1 failed" in failed.stdout
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["b.txt"]


def test_a_multipart_download_takes_its_part_size_from_the_cache_row(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str, s3_inspect: Any
) -> None:
    """A composite multipart object (its server refused ChecksumType=FULL_OBJECT, so S3 keeps the
    CRC32 of the parts' CRC32s): the row records its part size, and the download's composite value
    is summed over it with no HeadObject PartNumber=1; only a row without it asks S3. A FULL_OBJECT
    object (S3 keeps the whole file's CRC32) needs no part size: no PartNumber HeadObject at all."""
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    composite, full = os.urandom(6 * MIB), os.urandom(6 * MIB)
    make_tree(photos, {"composite.bin": composite})
    write_config(
        cache,
        proxy.url,
        folders=[str(photos)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5, "max_attempts": 2},
    )
    # A server that knows no ChecksumType: the tool falls back to a composite checksum.
    proxy.set_faults(
        ErrorReply(ops={"CreateMultipartUpload"}, header="x-amz-checksum-type", status=400, code="InvalidArgument")
    )
    assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
    assert proxy.count("CreateMultipartUpload", faulted=True) == 1
    # The next run's server takes it: the file added then gets a FULL_OBJECT CRC32.
    proxy.clear()
    make_tree(photos, {"full.bin": full})
    assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
    bucket = stable_bucket_name(bucket_prefix, str(photos))
    paths = {name: os.fsencode(photos / name) for name in ("composite.bin", "full.bin")}
    heads = {
        name: s3_inspect.head_object(Bucket=bucket, Key=key_for_path(path), ChecksumMode="ENABLED")
        for name, path in paths.items()
    }

    def b64(crc: int) -> str:
        return base64.b64encode(crc.to_bytes(4, "big")).decode()

    # COMPOSITE: the CRC32 of the parts' CRC32s (moto leaves off S3's "-2"); FULL_OBJECT: the file's.
    halves = (composite[: 5 * MIB], composite[5 * MIB :])
    parts_crc = b"".join(zlib.crc32(h).to_bytes(4, "big") for h in halves)
    assert heads["composite.bin"].get("ChecksumType") != "FULL_OBJECT"
    assert heads["composite.bin"]["ChecksumCRC32"].removesuffix("-2") == b64(zlib.crc32(parts_crc))
    assert heads["full.bin"]["ChecksumType"] == "FULL_OBJECT"
    assert heads["full.bin"]["ChecksumCRC32"] == b64(zlib.crc32(full))
    with sqlite3.connect(cache / "async-backup.db") as db:
        for path in paths.values():
            assert db.execute("SELECT part_bytes FROM files WHERE path=?", (path,)).fetchone()[0] == 5 * MIB
    assert restore(cache, str(photos), "--to", str(tmp_path / "one"), "--yes").returncode == 0  # the retrievals

    def part_heads() -> int:
        return sum(1 for r in proxy.requests if r.op == "HeadObject" and "partNumber=" in r.query)

    def restored(name: str, to: str) -> None:
        proxy.clear()
        done = restore(cache, str(photos / name), "--to", str(tmp_path / to), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 restored (6.0 MiB; 1 checksum verified)" in done.stdout
        assert proxy.count("GetObject") == 1

    restored("composite.bin", "one")
    assert part_heads() == 0
    with sqlite3.connect(cache / "async-backup.db") as db:
        db.execute("UPDATE files SET part_bytes=NULL WHERE path IN (?, ?)", tuple(paths.values()))
    restored("composite.bin", "two")
    assert part_heads() == 1
    # The whole file's CRC32 is checked as it stands, whatever the row says of parts.
    restored("full.bin", "one")
    assert part_heads() == 0

    def placed(to: str, name: str) -> bytes:  # --to keeps the file's whole path under it
        return (tmp_path / to / (photos / name).relative_to("/")).read_bytes()

    assert placed("one", "composite.bin") == placed("two", "composite.bin") == composite
    assert placed("one", "full.bin") == full
