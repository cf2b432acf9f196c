"""Proof by content where the old script left no `mtime` metadata (issue 21): an object whose
ETag the file's content gives (single-part MD5, or multipart at boto3's 8 MiB parts or at a part
size our cache recorded) is proven by reading the file, never uploaded again; and `verify`
compares adopted rows at the old script's float precision. The old script's state is made by
oldscript.py (boto3 upload_file: multipart from 8 MiB on, 8 MiB parts, no metadata), against
moto's server over HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from conftest import in_process, legacy_token, make_tree, run_cli, write_config
from oldscript import OLD_CACHE_BUCKET, run_old_script

from async_backup.disk.digest import (
    OLD_PART_BYTES,
    content_proves_etag,
    etag_computable,
    etag_part_sizes,
    old_part_bytes,
)

MIB = 1024 * 1024


def _current_versions(client: Any, buckets: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for bucket in buckets:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts


def _bump(path: Path, data: bytes) -> None:
    """Rewrite a file as a rescan does: new content, an mtime clearly later."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before, before + 10_000_000_000))


@pytest.fixture
def two_runs(tmp_path: Path, moto_endpoint: str, s3_inspect: Any) -> dict[str, Any]:
    """11 files in a root of two subfolders (three above 8 MiB: multipart), backed up by the old
    script; then 8 of them rescanned and a second run of the old script that dies before copying
    its caches to image-backup-cache: the copies there are one run old."""
    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    a, b = f"Band A {tok}", f"Band+B {tok}"
    files = {f"archives/{a}/small-{i}.tif": os.urandom(1000 + i) for i in range(4)}
    files |= {f"archives/{b}/small-{i}.tif": os.urandom(2000 + i) for i in range(4)}
    files[f"archives/{a}/big-1.tif"] = os.urandom(9 * MIB + 7)  # 2 parts
    files[f"archives/{a}/big-2.tif"] = os.urandom(8 * MIB)  # exactly the threshold: 1 part, "-1"
    files[f"archives/{b}/big-3.tif"] = os.urandom(17 * MIB + 1)  # 3 parts
    make_tree(data, files)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, roots=[str(data / "archives")], backup_extra={"naming": "legacy"})
    raw = json.loads((cache / "config.json").read_text())
    raw["notification"] = {}  # the old script needs the section to exist
    (cache / "config.json").write_text(json.dumps(raw))
    buckets = run_old_script(cache, s3_inspect)
    changed = [f"archives/{a}/small-{i}.tif" for i in range(3)] + [f"archives/{b}/small-{i}.tif" for i in range(3)]
    changed += [f"archives/{a}/big-1.tif", f"archives/{b}/big-3.tif"]
    for rel in changed:
        size = len(files[rel]) + (0 if "big" in rel else 5)  # the big ones keep their size
        _bump(data / rel, os.urandom(size))
    assert run_old_script(cache, s3_inspect, copy_caches=False) == buckets
    new_cache = tmp_path / "new-machine"
    new_cache.mkdir()
    (new_cache / "config.json").write_text((cache / "config.json").read_text())
    (new_cache / "config.json").chmod(0o600)
    return {"data": data, "new_cache": new_cache, "buckets": sorted(buckets.values()), "changed": changed}


def test_stale_copies_of_the_old_caches_upload_nothing_s3_holds(two_runs: dict[str, Any], s3_inspect: Any):
    """Row 3: 8 of 11 rows in the copies are one run old. Their files' content has the listed ETags
    (single-part and multipart at 8 MiB), so they are proven by reading, and nothing is uploaded."""
    buckets = two_runs["buckets"]
    before = _current_versions(s3_inspect, buckets)
    result = run_cli("--cache", str(two_runs["new_cache"]), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    assert "using its copy s3://image-backup-cache/" in result.stderr
    assert "0 files uploaded" in result.stderr, result.stderr
    assert _current_versions(s3_inspect, buckets) == before
    again = run_cli("--cache", str(two_runs["new_cache"]), "--no-cache-backup")
    assert again.returncode == 0 and "0 files uploaded" in again.stderr, again.stderr


@pytest.mark.slow
def test_a_bare_bucket_is_proven_by_content_without_any_old_cache(
    two_runs: dict[str, Any], s3_inspect: Any, tmp_path: Path
):
    """No copy of the old caches at all (the old script never reached its copy step): the rebuild
    from the listing finds objects without `mtime` metadata and proves them by their ETags."""
    for page in s3_inspect.get_paginator("list_objects_v2").paginate(Bucket=OLD_CACHE_BUCKET):
        for o in page.get("Contents", []):
            if str(tmp_path).lstrip("/") in o["Key"]:
                s3_inspect.delete_object(Bucket=OLD_CACHE_BUCKET, Key=o["Key"])
    buckets = two_runs["buckets"]
    before = _current_versions(s3_inspect, buckets)
    result = run_cli("--cache", str(two_runs["new_cache"]), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    assert "using its copy" not in result.stderr
    assert "0 files uploaded" in result.stderr, result.stderr
    assert "read to compare objects without mtime metadata with their ETag" in result.stderr
    assert _current_versions(s3_inspect, buckets) == before


def test_verify_after_adoption_finds_nothing_new_or_changed(tmp_path: Path, moto_endpoint: str, s3_inspect: Any):
    """verify compares adopted rows at the old script's float precision, as the backup does: right
    after an adoption that uploaded nothing, no file on disk is new or changed."""
    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    make_tree(data, {f"archives/{sub} {tok}/page-{i}.tif": os.urandom(500 + i) for sub in "AB" for i in range(6)})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, roots=[str(data / "archives")], backup_extra={"naming": "legacy"})
    raw = json.loads((cache / "config.json").read_text())
    raw["notification"] = {}
    (cache / "config.json").write_text(json.dumps(raw))
    run_old_script(cache, s3_inspect)
    adopted = run_cli("--cache", str(cache), "--no-cache-backup")
    assert adopted.returncode == 0 and "0 files uploaded" in adopted.stderr, adopted.stderr
    checked = in_process("verify", "--cache", str(cache))
    assert "new or changed" not in checked.stdout + checked.stderr, checked.stdout + checked.stderr


def test_the_etag_boto3_upload_file_made_is_the_files_content(tmp_path: Path, s3_inspect: Any, bucket_prefix: str):
    """content_proves_etag against the ETags moto gives boto3's uploads: the old script's parts,
    a part size only the cache knows (5 MiB), and one changed byte."""
    bucket = f"{bucket_prefix}etag"
    region = str(s3_inspect.meta.region_name)
    s3_inspect.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    data = os.urandom(13 * MIB + 3)
    path = tmp_path / "scan.tif"
    path.write_bytes(data)

    def etag_after(config: TransferConfig | None) -> str:
        extra = {} if config is None else {"Config": config}
        s3_inspect.upload_file(str(path), bucket, "scan.tif", **extra)
        return str(s3_inspect.head_object(Bucket=bucket, Key="scan.tif")["ETag"])

    st = path.stat()
    old = etag_after(None)
    assert old.strip('"').endswith("-2")
    assert content_proves_etag(os.fsencode(path), st.st_size, st.st_mtime_ns, old) == (True, OLD_PART_BYTES)
    ours = etag_after(TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB))
    assert ours.strip('"').endswith("-3")
    assert content_proves_etag(os.fsencode(path), st.st_size, st.st_mtime_ns, ours) == (False, None)
    assert content_proves_etag(os.fsencode(path), st.st_size, st.st_mtime_ns, ours, (5 * MIB,)) == (True, 5 * MIB)
    changed = bytearray(data)
    changed[9 * MIB] ^= 1
    path.write_bytes(bytes(changed))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_proves_etag(os.fsencode(path), st.st_size, st.st_mtime_ns, old) == (False, None)


def test_only_fitting_part_sizes_are_read():
    etag = '"0123456789abcdef0123456789abcdef-3"'
    assert etag_part_sizes(etag, 17 * MIB, [8 * MIB, None, 8 * MIB, 5 * MIB]) == [8 * MIB]
    assert etag_part_sizes(etag, 11 * MIB, [8 * MIB, 5 * MIB]) == [5 * MIB]
    assert etag_part_sizes('"0123456789abcdef0123456789abcdef"', 17 * MIB, [8 * MIB]) == []
    assert not etag_computable(etag, 11 * MIB) and etag_computable(etag, 11 * MIB, [5 * MIB])
    assert etag_computable('"0123456789abcdef0123456789abcdef"', 3)
    assert old_part_bytes(80_000 * MIB) == 8 * MIB and old_part_bytes(80_000 * MIB + 1) == 16 * MIB


def test_a_file_back_at_a_gone_row_is_proven_by_its_multipart_etag(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any
):
    """proven_by_head: files away while the cache was rebuilt from a bare bucket get "gone" rows
    (the deletion guard holds their deletes); back as they were, HeadObject shows no metadata,
    and the ETag (multipart at 8 MiB, and single-part) proves them: nothing uploaded."""
    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    folder = data / f"a{tok}"
    make_tree(folder, {"scans/big.tif": os.urandom(9 * MIB + 1), "scans/small.tif": b"small scan"})
    make_tree(data / f"b{tok}", {"other.tif": b"other target"})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(folder), str(data / f"b{tok}")], backup_extra={"naming": "legacy"})
    raw = json.loads((cache / "config.json").read_text())
    raw["notification"] = {}
    (cache / "config.json").write_text(json.dumps(raw))
    buckets = run_old_script(cache, s3_inspect, copy_caches=False)
    new_cache = tmp_path / "new-machine"
    new_cache.mkdir()
    (new_cache / "config.json").write_text((cache / "config.json").read_text())
    (new_cache / "config.json").chmod(0o600)
    away = tmp_path / "away"
    os.rename(folder / "scans", away)
    first = run_cli("--cache", str(new_cache), "--no-cache-backup")
    assert "2 of them for files gone from disk" in first.stderr, first.stderr
    os.rename(away, folder / "scans")
    before = _current_versions(s3_inspect, sorted(buckets.values()))

    result = run_cli("--cache", str(new_cache), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    assert "0 files uploaded" in result.stderr, result.stderr
    assert _current_versions(s3_inspect, sorted(buckets.values())) == before
