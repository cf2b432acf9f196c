"""The existing script's state, made the way that script makes it (../shared/FACTS.md, "The old
script's state on disk and in S3"), so adoption is tested against the real shapes and names.

What it does, step by step as the old script does: the target list is every folder
(expanduser-ed) and every entry of every root, sorted; a target's name is its path relative to
the common path; its bucket is "images--" + the name with every character outside [a-zA-Z0-9]
turned into "-", lowercased, created with versioning and the `Delete_noncurrent_versions` rule;
every file is uploaded with boto3's upload_file (StorageClass DEEP_ARCHIVE, key = the path
without the leading "/", no metadata) and recorded in `db/<quote_plus(name)>.db`, table
`files (key TEXT PRIMARY KEY, timestamp REAL)`, as str(path) and os.stat(path).st_mtime. At the
end the whole cache directory (db files, backup.log, config.json with the keys) goes to the
non-versioned bucket `image-backup-cache`, key = the absolute path without the leading "/".
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

OLD_CACHE_BUCKET = "image-backup-cache"


def old_targets(config: dict[str, Any]) -> list[str]:
    backup = config["backup"]
    paths = [os.path.expanduser(f) for f in backup.get("folders", [])]
    for root in backup.get("roots", []):
        paths.extend(os.path.join(root, entry) for entry in os.listdir(root))
    return sorted(paths)


def old_name(target: str, targets: list[str]) -> str:
    return os.path.relpath(target, os.path.commonpath(targets))


def old_bucket(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]", "-", "images--" + name).lower()


def run_old_script(cache: Path, client: Any, *, copy_caches: bool = True) -> dict[str, str]:
    """Back up as the old script does; returns target path -> bucket for the targets it uploaded.
    `copy_caches=False`: the run dies after its uploads, before it copies its cache directory to
    image-backup-cache (it posts to Teams first, and pymsteams raises on a retired connector URL),
    so the copies there stay one run old."""
    config = json.loads((cache / "config.json").read_text())
    targets = old_targets(config)
    (cache / "db").mkdir(exist_ok=True)
    done: dict[str, str] = {}
    for target in targets:
        name = old_name(target, targets)
        bucket = old_bucket(name)
        db = sqlite3.connect(cache / "db" / f"{urllib.parse.quote_plus(name)}.db")
        db.execute("CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, timestamp REAL)")
        uploaded = False
        for folder, _dirs, files in os.walk(target):
            for file_name in files:
                path = Path(folder) / file_name
                if path.is_symlink():
                    continue
                if not uploaded:
                    _make_bucket(client, bucket)
                    uploaded = True
                client.upload_file(str(path), bucket, str(path).lstrip("/"), ExtraArgs={"StorageClass": "DEEP_ARCHIVE"})
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (str(path), os.stat(path).st_mtime))
        db.commit()
        db.close()
        if uploaded:
            done[target] = bucket
    (cache / "backup.log").write_text("old script log\n")
    if not copy_caches:
        return done
    if OLD_CACHE_BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        _create(client, OLD_CACHE_BUCKET)
    for folder, _dirs, files in os.walk(cache):
        for file_name in files:
            path = Path(folder) / file_name
            client.upload_file(str(path), OLD_CACHE_BUCKET, str(path).lstrip("/"))
    return done


def _make_bucket(client: Any, bucket: str) -> None:
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        _create(client, bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "Delete_noncurrent_versions",
                    "Filter": {},
                    "Status": "Enabled",
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 180},
                }
            ]
        },
    )


def _create(client: Any, bucket: str) -> None:
    region = str(client.meta.region_name)
    if region == "us-east-1":  # the one region that takes no location constraint
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
