"""Shared checks for the fault and crash tests: what the tree, the bucket and the cache hold.

Contents are compared too, not only sizes: an object's ETag is the MD5 that moto computed over the
bytes it received (for a multipart upload, the MD5 of the parts' MD5s and "-N"), so a body corrupted
on the way without changing its length shows up as a different ETag. Archived objects cannot be read
back (GetObject fails until a restore), so the ETag is the one view of their contents a test has.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from async_backup.disk.keys import key_for_path, path_for_key


def tree_files(root: Path) -> dict[bytes, int]:
    """Every regular file under root: path bytes -> size."""
    found: dict[bytes, int] = {}
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            path = os.path.join(dirpath, name)
            found[path] = os.lstat(path).st_size
    return found


def bucket_exists(client: Any, bucket: str) -> bool:
    return bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}


def bucket_objects(client: Any, bucket: str) -> dict[bytes, int]:
    """Current objects: original path bytes -> size ({} when there is no bucket yet)."""
    found: dict[bytes, int] = {}
    if not bucket_exists(client, bucket):
        return found
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            found[path_for_key(obj["Key"])] = int(obj["Size"])
    return found


def bucket_etags(client: Any, bucket: str) -> dict[bytes, str]:
    """Current objects: original path bytes -> ETag without quotes."""
    found: dict[bytes, str] = {}
    if not bucket_exists(client, bucket):
        return found
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            found[path_for_key(obj["Key"])] = str(obj["ETag"]).strip('"')
    return found


MIB = 1024 * 1024


def etag_matches_file(path: bytes, etag: str) -> bool:
    """Whether `etag` is what S3 computes for the file's bytes (a single PUT, or multipart with
    any whole-MiB part size of at least 5 MiB that gives the ETag's part count)."""
    with open(path, "rb") as f:
        data = f.read()
    digest, _, count = etag.partition("-")
    if not count:
        return hashlib.md5(data).hexdigest() == digest
    parts = int(count)
    for part_bytes in range(5 * MIB, max(len(data), 5 * MIB) + MIB, MIB):
        if -(-len(data) // part_bytes) != parts:
            continue
        sums = b"".join(hashlib.md5(data[i : i + part_bytes]).digest() for i in range(0, len(data), part_bytes))
        if hashlib.md5(sums).hexdigest() == digest:
            return True
    return False


def assert_contents(client: Any, bucket: str, paths: Any = None) -> None:
    """Every current object (or those of `paths`) holds the bytes of its file on disk."""
    etags = bucket_etags(client, bucket)
    chosen = etags if paths is None else {p: etags[p] for p in paths if p in etags}
    wrong = sorted(p for p, etag in chosen.items() if os.path.exists(p) and not etag_matches_file(p, etag))
    assert not wrong, f"objects whose contents differ from the file: {wrong[:5]}"


def stored_versions(client: Any, bucket: str) -> set[tuple[bytes, int]]:
    """(path, size) of every version S3 holds, current or not."""
    if not bucket_exists(client, bucket):
        return set()
    found: set[tuple[bytes, int]] = set()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        found.update((path_for_key(v["Key"]), int(v["Size"])) for v in page.get("Versions", []))
    return found


def cache_rows(cache: Path, bucket: str) -> dict[bytes, int | None]:
    db = cache / "async-backup.db"
    if not db.exists():
        return {}
    conn = sqlite3.connect(db)
    try:
        return {bytes(p): s for p, s in conn.execute("SELECT path, size FROM files WHERE bucket=?", (bucket,))}
    except sqlite3.OperationalError:  # killed before it created its tables
        return {}
    finally:
        conn.close()


def _newest_failures(cache: Path) -> list[dict[str, Any]]:
    """The failures of the newest run report ([] when there is none)."""
    reports = sorted((cache / "reports").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    if not reports:
        return []
    return list(json.loads(reports[-1].read_text()).get("failures", []))


def reported_failures(cache: Path) -> set[str]:
    """Paths named as failures in the newest run report."""
    return {f["path"] for f in _newest_failures(cache)}


def run_stopped(cache: Path) -> bool:
    """Whether the newest run report says the run stopped early (a failure of kind "fatal")."""
    return any(f.get("kind") == "fatal" for f in _newest_failures(cache))


def open_uploads(client: Any, bucket: str) -> list[str]:
    if not bucket_exists(client, bucket):
        return []
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def versions_per_key(client: Any, bucket: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not bucket_exists(client, bucket):
        return counts
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts


def uploads_holding_parts(client: Any, bucket: str) -> list[str]:
    """Keys of open multipart uploads that hold at least one part."""
    return [
        u["Key"]
        for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        if client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
    ]


def assert_whole(client: Any, bucket: str, root: Path, cache: Path, *, unrecorded_creates: bool = False) -> None:
    """The bucket's current objects equal the tree (sizes and contents), and the cache equals the bucket.

    `unrecorded_creates`: a CreateMultipartUpload whose reply was lost (a stall past the read timeout,
    then botocore's retry) or cut off by SIGKILL before its id was committed leaves an upload no cache
    knows, so no run aborts it (it may be another installation's); it holds no part, since parts are
    sent only after the id is committed, and the bucket's lifecycle rule aborts it."""
    tree = tree_files(root)
    objects = bucket_objects(client, bucket)
    assert objects == tree, _diff("bucket", objects, tree)
    rows = cache_rows(cache, bucket)
    assert rows == objects, _diff("cache", rows, objects)
    if unrecorded_creates:
        assert uploads_holding_parts(client, bucket) == []
    else:
        assert open_uploads(client, bucket) == []
    assert_contents(client, bucket)


def _diff(name: str, got: dict[bytes, Any], want: dict[bytes, Any]) -> str:
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])[:5]
    return f"{name}: missing {missing}, unexpected {extra}, different {wrong}"


def key_of(path: bytes) -> str:
    return key_for_path(path)
