"""Two installations (two cache directories) writing to one bucket: each aborts only the multipart
uploads its own cache recorded, never the other's uploads in flight.

Both back up the same folder path with the same bucket prefix, so they share a bucket, as two image
servers with identical layouts would. The multipart uploads are made with boto3: one recorded in
installation A's cache as a run killed mid-upload leaves it, one "foreign" that no cache knows (a
third installation's upload in flight). moto's clock cannot be set back, and an upload in flight for
an hour is what a large file gives, so the proxy in front of B answers ListMultipartUploads with the
bucket's real uploads dated an hour back (the release before this one aborted every upload older than
a minute that it listed).
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conftest import key_of, make_tree, run_cli, write_config
from s3proxy import FakeReply, ProxyServer

from async_backup.settings.naming import stable_bucket_name


def open_upload_ids(client: Any, bucket: str) -> set[str]:
    return {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def uploads_dated_back(client: Any, bucket: str, seconds: float) -> bytes:
    """The bucket's ListMultipartUploads reply as S3 gives it, each upload initiated `seconds` ago."""
    when = datetime.fromtimestamp(time.time() - seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    uploads = "".join(
        f"<Upload><Key>{u['Key']}</Key><UploadId>{u['UploadId']}</UploadId>"
        "<Initiator><ID>x</ID><DisplayName>x</DisplayName></Initiator><Owner><ID>x</ID><DisplayName>x</DisplayName>"
        f"</Owner><StorageClass>DEEP_ARCHIVE</StorageClass><Initiated>{when}</Initiated></Upload>"
        for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Bucket>{bucket}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>"
        f"<MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>{uploads}</ListMultipartUploadsResult>"
    ).encode()


def test_a_second_installation_leaves_the_others_uploads_in_flight(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    root = tmp_path / "images"
    make_tree(root, {f"box/page-{i}.tif": b"p" * (100 + i) for i in range(5)})
    bucket = stable_bucket_name(bucket_prefix, str(root))
    cache_a, cache_b = tmp_path / "cache-a", tmp_path / "cache-b"
    write_config(cache_a, moto_endpoint, folders=[str(root)], bucket_prefix=bucket_prefix)
    first = run_cli("--cache", str(cache_a), "--no-cache-backup", "-q")
    assert first.returncode == 0, first.stderr

    # A's leftover: created, its id committed to A's cache, then the run was killed.
    own_key = key_of(root / "box" / "volume-a.tif")
    own = s3_inspect.create_multipart_upload(Bucket=bucket, Key=own_key, StorageClass="DEEP_ARCHIVE")["UploadId"]
    s3_inspect.upload_part(Bucket=bucket, Key=own_key, UploadId=own, PartNumber=1, Body=b"a" * 1024)
    with sqlite3.connect(cache_a / "async-backup.db") as db:
        db.execute(
            "INSERT INTO multipart_uploads(bucket, key, upload_id, started) VALUES (?, ?, ?, ?)",
            (bucket, own_key, own, time.time()),
        )
    db.close()
    # A third installation's upload, in flight: no cache here knows it.
    foreign_key = key_of(root / "box" / "volume-elsewhere.tif")
    foreign = s3_inspect.create_multipart_upload(Bucket=bucket, Key=foreign_key, StorageClass="DEEP_ARCHIVE")[
        "UploadId"
    ]
    s3_inspect.upload_part(Bucket=bucket, Key=foreign_key, UploadId=foreign, PartNumber=1, Body=b"f" * 1024)

    # B's first run uploads a new file, so it sets the existing bucket up (where the sweep was).
    (root / "box" / "page-new.tif").write_bytes(b"new")
    with ProxyServer(moto_endpoint) as proxy:
        proxy.set_faults(FakeReply(ops={"ListMultipartUploads"}, body=uploads_dated_back(s3_inspect, bucket, 3600)))
        write_config(cache_b, proxy.url, folders=[str(root)], bucket_prefix=bucket_prefix)
        second = run_cli("--cache", str(cache_b), "--no-cache-backup", "-q")
        sent = proxy.wait_done()
    assert second.returncode == 0, second.stderr
    new_key = key_of(root / "box" / "page-new.tif")
    assert any(r.op == "PutObject" and r.key == new_key for r in sent), "B used the bucket"
    assert [r.key for r in sent if r.op == "AbortMultipartUpload"] == []
    assert open_upload_ids(s3_inspect, bucket) == {own, foreign}, "B aborted uploads it never started"
    # What nobody's cache knows is the lifecycle rule's to abort, a week after it began.
    rules = s3_inspect.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert {"DaysAfterInitiation": 7} in [r.get("AbortIncompleteMultipartUpload") for r in rules]

    # A's next run aborts its own leftover, and only that.
    third = run_cli("--cache", str(cache_a), "--no-cache-backup", "-q")
    assert third.returncode == 0, third.stderr
    assert open_upload_ids(s3_inspect, bucket) == {foreign}
    with sqlite3.connect(cache_a / "async-backup.db") as db:
        assert db.execute("SELECT count(*) FROM multipart_uploads").fetchone() == (0,)
    db.close()
