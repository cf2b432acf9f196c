"""Legacy bucket names in use survive a config change and a lost cache, and a new subfolder is
named like its siblings: against moto's server over HTTP, the old script's state made by
oldscript.py, the real CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import ACCESS_KEY, REGION, SECRET_KEY, legacy_token, make_tree, moto_server, run_cli, write_config
from oldscript import run_old_script


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    """A moto server of each test's own: `_state` lists every bucket and version the server holds,
    which on the session's shared server (hundreds of buckets by then) took most of a minute."""
    with moto_server(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY) as url:
        yield url


@pytest.fixture
def s3_inspect(moto_endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


def _state(client: Any) -> dict[str, dict[str, int]]:
    """Every bucket, and the versions of each key in it: a new bucket or a new upload shows here."""
    state: dict[str, dict[str, int]] = {}
    for bucket in sorted(b["Name"] for b in client.list_buckets()["Buckets"]):
        counts: dict[str, int] = {}
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                counts[v["Key"]] = counts.get(v["Key"], 0) + 1
        state[bucket] = counts
    return state


def _lose_cache(cache: Path) -> None:
    for name in ("async-backup.db", "async-backup.db-wal", "async-backup.db-shm"):
        (cache / name).unlink(missing_ok=True)


def _set_config(cache: Path, *, folders: list[str], roots: list[str]) -> None:
    raw = json.loads((cache / "config.json").read_text())
    raw["backup"]["folders"] = folders
    raw["backup"]["roots"] = roots
    (cache / "config.json").write_text(json.dumps(raw))


@pytest.fixture
def adopted(tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str) -> dict[str, Any]:
    return _adopt(tmp_path, moto_endpoint, s3_inspect, bucket_prefix)


def _adopt(tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str, *args: str) -> dict[str, Any]:
    """Two folders and a root, common path `data`, backed up by the old script, then adopted."""
    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    make_tree(
        data,
        {
            f"sub/letters {tok}/1901/a.tif": b"a",
            f"sub/maps {tok}/b.tif": b"b",
            f"archives/Archive 3 {tok}/c.tif": b"c",
            f"archives/Grüße {tok}/vol 1/d.tif": b"d",
        },
    )
    cache = tmp_path / "cache"
    folders = [str(data / "sub" / f"letters {tok}"), str(data / "sub" / f"maps {tok}")]
    roots = [str(data / "archives")]
    write_config(
        cache,
        moto_endpoint,
        folders=folders,
        roots=roots,
        bucket_prefix=bucket_prefix,
        backup_extra={"naming": "legacy"},
    )
    raw = json.loads((cache / "config.json").read_text())
    raw["notification"] = {}  # the old script needs the section to exist
    (cache / "config.json").write_text(json.dumps(raw))
    buckets = run_old_script(cache, s3_inspect)
    first = run_cli("--cache", str(cache), *args)
    assert first.returncode == 0, first.stderr
    assert "0 files uploaded" in first.stderr
    return {
        "tmp": tmp_path,
        "data": data,
        "cache": cache,
        "tok": tok,
        "folders": folders,
        "roots": roots,
        "buckets": buckets,
    }


@pytest.mark.slow
def test_a_lost_cache_after_a_root_outside_the_common_path_was_added_keeps_every_bucket(
    adopted: dict[str, Any], s3_inspect: Any
):
    tmp, cache, tok = adopted["tmp"], adopted["cache"], adopted["tok"]
    outside = tmp / f"other {tok}" / "rootb"
    make_tree(outside, {"new/e.tif": b"e"})
    _set_config(cache, folders=adopted["folders"], roots=[*adopted["roots"], str(outside)])
    added = run_cli("--cache", str(cache))
    assert added.returncode == 0, added.stderr
    assert "1 files uploaded" in added.stderr or "1 file uploaded" in added.stderr, added.stderr
    before = _state(s3_inspect)
    _lose_cache(cache)
    lost = run_cli("--cache", str(cache), "--no-cache-backup")
    assert lost.returncode == 0, lost.stderr
    assert "0 files uploaded" in lost.stderr, lost.stderr
    assert _state(s3_inspect) == before  # no new bucket, no new object version anywhere


@pytest.mark.slow
def test_a_lost_cache_after_a_root_was_removed_keeps_every_bucket(adopted: dict[str, Any], s3_inspect: Any):
    """Without the root, the old rule's common path moves from `data` to `data/sub`."""
    cache = adopted["cache"]
    _set_config(cache, folders=adopted["folders"], roots=[])
    removed = run_cli("--cache", str(cache))
    assert removed.returncode == 0, removed.stderr
    before = _state(s3_inspect)
    _lose_cache(cache)
    lost = run_cli("--cache", str(cache), "--no-cache-backup")
    assert lost.returncode == 0, lost.stderr
    assert "0 files uploaded" in lost.stderr, lost.stderr
    assert _state(s3_inspect) == before


@pytest.mark.slow
def test_a_subfolder_added_after_a_root_outside_the_common_path_is_named_like_its_siblings(
    adopted: dict[str, Any], s3_inspect: Any
):
    tmp, cache, data, tok = adopted["tmp"], adopted["cache"], adopted["data"], adopted["tok"]
    assert f"images--archives-archive-3-{tok}" in adopted["buckets"].values()
    outside = tmp / f"other {tok}" / "rootb"
    make_tree(outside, {"new/e.tif": b"e"})
    _set_config(cache, folders=adopted["folders"], roots=[*adopted["roots"], str(outside)])
    assert run_cli("--cache", str(cache)).returncode == 0
    make_tree(data, {f"archives/later {tok}/f.tif": b"f"})
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    names = {b["Name"] for b in s3_inspect.list_buckets()["Buckets"]}
    assert f"images--archives-later-{tok}" in names
    assert f"images--data-archives-later-{tok}" not in names


@pytest.mark.slow
@pytest.mark.parametrize("old_caches", ["local", "copies"])
def test_without_any_snapshot_the_old_caches_give_the_names_back(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str, old_caches: str
):
    """Every run with --no-cache-backup: no snapshot names the targets. The old script's caches (its
    db/ here, or its copies in image-backup-cache on a new machine) name them at its common path."""
    site = _adopt(tmp_path, moto_endpoint, s3_inspect, bucket_prefix, "--no-cache-backup")
    cache = site["cache"]
    _set_config(cache, folders=site["folders"], roots=[])
    removed = run_cli("--cache", str(cache), "--no-cache-backup")
    assert removed.returncode == 0, removed.stderr
    before = _state(s3_inspect)
    _lose_cache(cache)
    if old_caches == "copies":
        shutil.rmtree(cache / "db")
    lost = run_cli("--cache", str(cache), "--no-cache-backup")
    assert lost.returncode == 0, lost.stderr
    assert "0 files uploaded" in lost.stderr, lost.stderr
    assert _state(s3_inspect) == before


@pytest.mark.slow
def test_a_dry_run_on_a_lost_cache_sends_no_request(adopted: dict[str, Any], moto_endpoint: str):
    """The names in use are read from S3 only by a real run; a dry run takes the old caches here."""
    from s3proxy import ProxyServer

    cache = adopted["cache"]
    _set_config(cache, folders=adopted["folders"], roots=[])
    _lose_cache(cache)
    raw = json.loads((cache / "config.json").read_text())
    with ProxyServer(moto_endpoint) as proxy:
        raw["aws"]["endpoint_url"] = proxy.url
        (cache / "config.json").write_text(json.dumps(raw))
        result = run_cli("--cache", str(cache), "--dry-run")
        records = proxy.wait_done()
    assert result.returncode == 0, result.stderr
    assert records == []
    assert "0 files uploaded" in result.stderr, result.stderr  # the old caches found at the names in use
