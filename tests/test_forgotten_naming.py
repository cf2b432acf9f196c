"""A forgotten `"naming": "legacy"` beside an installation of the old script: the run stops before
any bucket or upload (exit 2, one line naming the setting), from the local db/ or from the old
script's copies in image-backup-cache; a "naming" written out is the operator's choice. The old
script's state is made by its faithful re-enactment (oldscript.py), against moto over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import SECRET_KEY, key_versions, run_cli
from oldscript import OLD_CACHE_BUCKET
from s3proxy import ProxyServer

from async_backup.settings.config import parse_config

SETTING = (
    'set "naming": "legacy" in backup of config.json to adopt the existing script\'s installation, '
    'or "naming": "stable" to start new buckets on purpose'
)
WRITES = ("PutObject", "UploadPart", "CreateMultipartUpload", "CreateBucket", "PutBucketVersioning")


def _set_naming(cache: Path, naming: str | None, **backup: Any) -> None:
    raw = json.loads((cache / "config.json").read_text())
    raw["backup"].pop("naming", None)
    if naming is not None:
        raw["backup"]["naming"] = naming
    raw["backup"].update(backup)
    (cache / "config.json").write_text(json.dumps(raw))


def _buckets(client: Any) -> set[str]:
    return {b["Name"] for b in client.list_buckets()["Buckets"]}


def _stopped(result: Any) -> None:
    assert result.returncode == 2, result.stderr
    lines = [x for x in result.stderr.splitlines() if SETTING in x]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and SECRET_KEY not in result.stderr + result.stdout


def test_naming_written_out_is_told_apart_from_the_default(tmp_path: Path):
    base = {"backup": {"folders": [str(tmp_path)]}}
    absent = parse_config(base, tmp_path / "config.json")
    stable = parse_config({"backup": {"folders": [str(tmp_path)], "naming": "stable"}}, tmp_path / "config.json")
    assert (absent.naming, absent.naming_set) == ("stable", False)
    assert (stable.naming, stable.naming_set) == ("stable", True)


def test_the_old_scripts_db_without_naming_stops_before_any_bucket_or_upload(
    old_site: dict[str, Any],
    s3_inspect: Any,
    moto_endpoint: str,
):
    cache, buckets = old_site["cache"], old_site["buckets"]
    _set_naming(cache, None)
    before = _buckets(s3_inspect)
    raw = json.loads((cache / "config.json").read_text())
    with ProxyServer(moto_endpoint) as proxy:
        raw["aws"]["endpoint_url"] = proxy.url
        (cache / "config.json").write_text(json.dumps(raw))
        result = run_cli("--cache", str(cache))
        records = proxy.wait_done()
    _stopped(result)
    line = next(x for x in result.stderr.splitlines() if SETTING in x)
    olds = len(list((cache / "db").glob("*.db")))  # a file lying in the root got one too
    assert f"{cache}/db holds the old script's caches of {olds} targets" in line, line
    assert sorted(buckets.values())[0] in line, line
    # The exposed keys are said even though the run stops.
    assert any(OLD_CACHE_BUCKET in x and "config.json" in x for x in result.stderr.splitlines()), result.stderr
    assert not [r for r in records if r.op in WRITES], [(r.op, r.bucket) for r in records]
    assert _buckets(s3_inspect) == before

    # A dry run sees the local db/ too, without a request.
    dry = run_cli("--cache", str(cache), "--dry-run")
    _stopped(dry)

    # Set afterwards, legacy adopts it all: the stopped run remembered no new bucket names.
    raw["aws"]["endpoint_url"] = moto_endpoint
    (cache / "config.json").write_text(json.dumps(raw))
    _set_naming(cache, "legacy")
    versions = {b: key_versions(s3_inspect, b) for b in buckets.values()}
    adopted = run_cli("--cache", str(cache), "--no-cache-backup")
    assert adopted.returncode == 0, adopted.stderr
    assert "0 files uploaded" in adopted.stderr
    assert {b: key_versions(s3_inspect, b) for b in buckets.values()} == versions
    assert _buckets(s3_inspect) == before


def test_the_old_scripts_copies_on_a_new_machine_without_naming_stop_it(
    old_site: dict[str, Any],
    s3_inspect: Any,
    moto_endpoint: str,
):
    """The new machine has only config.json, at the old cache directory's path: image-backup-cache
    holds that directory's db/*.db copies."""
    cache = old_site["cache"]
    olds = len(list((cache / "db").glob("*.db")))
    for db in (cache / "db").iterdir():
        db.unlink()
    (cache / "db").rmdir()
    assert sorted(p.name for p in cache.iterdir()) == ["backup.log", "config.json"]
    (cache / "backup.log").unlink()
    _set_naming(cache, None)
    before = _buckets(s3_inspect)
    raw = json.loads((cache / "config.json").read_text())
    with ProxyServer(moto_endpoint) as proxy:
        raw["aws"]["endpoint_url"] = proxy.url
        (cache / "config.json").write_text(json.dumps(raw))
        result = run_cli("--cache", str(cache))
        records = proxy.wait_done()
    _stopped(result)
    line = next(x for x in result.stderr.splitlines() if SETTING in x)
    assert f"s3://{OLD_CACHE_BUCKET} holds the old script's caches of {olds} targets" in line, line
    assert any(OLD_CACHE_BUCKET in x and "config.json" in x and x != line for x in result.stderr.splitlines())
    assert not [r for r in records if r.op in WRITES], [(r.op, r.bucket) for r in records]
    assert _buckets(s3_inspect) == before


def test_the_old_scripts_buckets_alone_without_naming_stop_it(
    old_site: dict[str, Any],
    s3_inspect: Any,
    moto_endpoint: str,
):
    """No db/ here and no copy in image-backup-cache (the old script never got to copy it): its
    bucket of each target still holds the target's files."""
    cache, buckets = old_site["cache"], old_site["buckets"]
    for db in (cache / "db").iterdir():
        db.unlink()
    (cache / "db").rmdir()
    own = str(cache).lstrip("/") + "/"
    for obj in s3_inspect.list_objects_v2(Bucket=OLD_CACHE_BUCKET, Prefix=own).get("Contents", []):
        s3_inspect.delete_object(Bucket=OLD_CACHE_BUCKET, Key=obj["Key"])
    _set_naming(cache, None)
    before = _buckets(s3_inspect)
    raw = json.loads((cache / "config.json").read_text())
    with ProxyServer(moto_endpoint) as proxy:
        raw["aws"]["endpoint_url"] = proxy.url
        (cache / "config.json").write_text(json.dumps(raw))
        result = run_cli("--cache", str(cache))
        records = proxy.wait_done()
    _stopped(result)
    line = next(x for x in result.stderr.splitlines() if SETTING in x)
    assert f"the old script's buckets hold files of {len(buckets)} targets" in line, line
    assert not [r for r in records if r.op in WRITES], [(r.op, r.bucket) for r in records]
    old = [r for r in records if r.bucket in buckets.values()]
    assert sorted(r.bucket or "" for r in old) == sorted(buckets.values())  # one listing each
    assert {r.op for r in old} == {"ListObjectsV2"}
    assert _buckets(s3_inspect) == before


def test_naming_stable_written_out_starts_new_buckets_and_names_the_old_ones(
    old_site: dict[str, Any],
    s3_inspect: Any,
    bucket_prefix: str,
):
    cache, buckets = old_site["cache"], old_site["buckets"]
    _set_naming(cache, "stable", bucket_prefix=bucket_prefix)
    versions = {b: key_versions(s3_inspect, b) for b in buckets.values()}
    result = run_cli("--cache", str(cache), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "are left alone" in x]
    assert '"naming": "stable" is set' in line
    assert sorted(buckets.values())[0] in line
    assert any(OLD_CACHE_BUCKET in x and "config.json" in x for x in result.stderr.splitlines()), result.stderr
    assert {b: key_versions(s3_inspect, b) for b in buckets.values()} == versions  # the old ones untouched
    assert [b for b in _buckets(s3_inspect) if b.startswith(bucket_prefix)]  # the new ones made


def test_the_adoption_log_line_names_its_source_and_count(old_site: dict[str, Any]):
    cache, buckets = old_site["cache"], old_site["buckets"]
    result = run_cli("--cache", str(cache), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    for target, bucket in buckets.items():
        (line,) = [x for x in result.stderr.splitlines() if f"{target} -> s3://{bucket}: the cache held no rows" in x]
        assert "2 of 2 objects rebuilt from the old script's cache " in line, line
        assert "(2 rows adopted)" in line and "/db/" in line, line
