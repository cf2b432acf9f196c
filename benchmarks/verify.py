"""Checking what a bucket holds after a run, and making / dropping buckets, straight at the server.

Owns: an admin S3 client that talks to the server directly (never through the recording proxy, so
checks are not counted as the contender's requests), bucket creation, the verification of a listing
against the source tree, and emptying + deleting a bucket afterwards so servers that keep data in RAM
(moto, Ceph memstore) do not fill up. Imports ``servers`` and ``datasets`` from the harness.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from benchmarks.datasets import Mutation, key_for
from benchmarks.servers import S3Server

EXPECTED_STORAGE_CLASS = "DEEP_ARCHIVE"
DELETE_BATCH = 1000  # S3's limit of keys per DeleteObjects
MAX_LIST_PAGES = 100_000  # a bound on paginated loops: 100 M objects


def admin_client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        verify=server.ca_bundle or True,
        config=Config(
            request_checksum_calculation=server.checksum_calculation,
            response_checksum_validation=server.checksum_calculation,
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=20,
        ),
    )


def peers_versioned() -> bool:
    """Whether the peers' buckets are versioned like async-backup's own (the default: like for
    like). Versioned writes cost the server more (Ceph RGW keeps an index entry per version), which
    is the price of keeping old versions, not the client's. BENCH_VERSIONED_PEERS=0 gives the peers
    plain buckets, as before issue 13."""
    return os.environ.get("BENCH_VERSIONED_PEERS", "1") != "0"


def make_bucket(s3: Any, bucket: str) -> None:
    s3.create_bucket(Bucket=bucket)
    if peers_versioned():
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


@dataclass
class Verification:
    ok: bool
    objects: int
    bytes: int
    expected_objects: int
    expected_bytes: int
    storage_classes: dict[str, int]
    missing: int
    extra: int
    wrong_size: int
    wrong_class: int
    deleted_still_listed: int
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.objects} objects, {self.bytes} bytes, all {EXPECTED_STORAGE_CLASS}"
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.missing, "missing"),
                (self.extra, "extra"),
                (self.wrong_size, "wrong size"),
                (self.wrong_class, "not " + EXPECTED_STORAGE_CLASS),
                (self.deleted_still_listed, "deleted but still listed"),
            )
            if n
        ]
        return "verify FAILED: " + ", ".join(parts) + (f" (e.g. {self.examples[:3]})" if self.examples else "")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def list_bucket(s3: Any, bucket: str) -> dict[str, tuple[int, str]]:
    """Current objects (the latest versions only): key -> (size, storage class)."""
    out: dict[str, tuple[int, str]] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 1000})
    for n, page in enumerate(pages):
        if n >= MAX_LIST_PAGES:
            raise RuntimeError(f"listing {bucket}: more than {MAX_LIST_PAGES} pages")
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (int(obj["Size"]), str(obj.get("StorageClass", "STANDARD")))
    return out


def verify(s3: Any, bucket: str, expected: dict[str, int], mutation: Mutation | None = None) -> Verification:
    got = list_bucket(s3, bucket)
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong_size = [k for k, size in expected.items() if k in got and got[k][0] != size]
    wrong_class = [k for k, (_s, sc) in got.items() if sc != EXPECTED_STORAGE_CLASS]
    deleted = [key_for(p) for p in mutation.deleted] if mutation else []
    deleted_listed = [k for k in deleted if k in got]
    examples = (missing[:2] + extra[:2] + wrong_size[:2] + wrong_class[:2])[:6]
    return Verification(
        ok=not (missing or extra or wrong_size or wrong_class or deleted_listed),
        objects=len(got),
        bytes=sum(s for s, _c in got.values()),
        expected_objects=len(expected),
        expected_bytes=sum(expected.values()),
        storage_classes=dict(Counter(sc for _s, sc in got.values())),
        missing=len(missing),
        extra=len(extra),
        wrong_size=len(wrong_size),
        wrong_class=len(wrong_class),
        deleted_still_listed=len(deleted_listed),
        examples=examples,
    )


def drop_bucket(s3: Any, bucket: str) -> None:
    """Delete every object version, delete marker and pending upload, then the bucket.

    Lists from the start again after every batch instead of following markers: moto's
    ListObjectVersions pagination lost objects here on 5,000-object buckets (BucketNotEmpty after).
    """
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        return
    for _round in range(MAX_LIST_PAGES):
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=DELETE_BATCH)
        items = page.get("Versions", []) + page.get("DeleteMarkers", [])
        if not items:
            break
        batch = []
        for item in items[:DELETE_BATCH]:
            entry = {"Key": item["Key"]}
            if item.get("VersionId") and item["VersionId"] != "null":
                entry["VersionId"] = item["VersionId"]
            batch.append(entry)
        reply = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if reply.get("Errors"):
            raise RuntimeError(f"deleting from {bucket}: {reply['Errors'][:3]}")
    for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    s3.delete_bucket(Bucket=bucket)
