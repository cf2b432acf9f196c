"""The existing backup script's approach, reproduced as a benchmark baseline (not a tool to use).

What it does, on purpose without improvements, so the figures show what async-backup replaces:
- walk the source tree; for every file open one SQLite connection, look up key+mtime, and when it
  changed upload it with boto3's ``upload_file`` (StorageClass DEEP_ARCHIVE), record key+mtime and
  commit, then close the connection: strictly one file after another;
- then a second pass over every cached key: stat its path, and delete a missing one from the bucket
  with one DeleteObject per file (and from the cache, again one connection and commit each).

Keys are the file's absolute path without the leading '/'. Credentials, region and checksum settings
come from the environment (AWS_ACCESS_KEY_ID, AWS_REQUEST_CHECKSUM_CALCULATION, ...).
Run: ``python -m benchmarks.baseline --src DIR --bucket B --db FILE --endpoint URL``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

import boto3


def _key(path: str) -> str:
    return os.path.abspath(path).lstrip("/")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.baseline")
    ap.add_argument("--src", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--endpoint", required=True)
    args = ap.parse_args()

    s3 = boto3.client("s3", endpoint_url=args.endpoint)
    conn = sqlite3.connect(args.db)
    conn.execute("CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, timestamp REAL)")
    conn.commit()
    conn.close()

    uploaded = deleted = 0
    for dirpath, dirnames, filenames in os.walk(args.src):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            key = _key(path)
            mtime = os.stat(path).st_mtime
            conn = sqlite3.connect(args.db)
            row = conn.execute("SELECT timestamp FROM files WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] != mtime:
                s3.upload_file(path, args.bucket, key, ExtraArgs={"StorageClass": "DEEP_ARCHIVE"})
                conn.execute("INSERT OR REPLACE INTO files (key, timestamp) VALUES (?, ?)", (key, mtime))
                conn.commit()
                uploaded += 1
            conn.close()

    conn = sqlite3.connect(args.db)
    keys = [k for (k,) in conn.execute("SELECT key FROM files")]
    conn.close()
    for key in keys:
        if os.path.exists("/" + key):
            continue
        s3.delete_object(Bucket=args.bucket, Key=key)
        conn = sqlite3.connect(args.db)
        conn.execute("DELETE FROM files WHERE key = ?", (key,))
        conn.commit()
        conn.close()
        deleted += 1
    print(f"baseline: uploaded {uploaded}, deleted {deleted}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
