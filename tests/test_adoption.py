"""Taking over an installation of the existing script: its buckets and `db/` caches, made by a
faithful re-enactment of that script (oldscript.py), against moto's server over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from conftest import SECRET_KEY, key_versions, legacy_token, make_tree, run_cli, write_config
from oldscript import OLD_CACHE_BUCKET, run_old_script
from s3proxy import ProxyServer

from async_backup.backup.plan import PlanCounts, merge
from async_backup.cache.records import Recorded, is_unchanged, stat_float_mtime
from async_backup.disk.entries import DiskFile


def test_the_old_caches_are_found_at_the_old_scripts_names(old_site: dict[str, Any]):
    cache, tok = old_site["cache"], old_site["tok"]
    names = sorted(p.name for p in (cache / "db").iterdir())
    # The name before cleaning, quote_plus-ed: "/" -> %2F, " " -> "+", "+" -> %2B, umlauts as UTF-8 %XX.
    assert urllib.parse.quote_plus(f"archives/Archive 3 {tok}") + ".db" in names
    assert f"archives%2FArchive+3+{tok}.db" in names
    assert old_site["buckets"][str(old_site["data"] / "archives" / f"Archive 3 {tok}")] == (
        f"images--archives-archive-3-{tok}"
    )


def test_adoption_uploads_only_what_changed_and_says_so(old_site: dict[str, Any], s3_inspect: Any):
    data, cache, tok, buckets = old_site["data"], old_site["cache"], old_site["tok"], old_site["buckets"]
    archive = data / "archives" / f"Archive 3 {tok}"
    changed = archive / "page-0-1.tif"
    changed.write_bytes(b"rescanned page")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 5_000_000_000))
    # Same content, newer mtime: its row is stale, and the file's MD5 (the ETag) proves it: not sent.
    touched = data / "archives" / f"Grüße {tok}" / "page-2-1.tif"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1_000))
    (archive / "new.tif").write_bytes(b"new page")
    (data / f"letters {tok}" / "1902" / "other.tif").unlink()

    before = {b: key_versions(s3_inspect, b)[0] for b in buckets.values()}
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    assert SECRET_KEY not in result.stderr + result.stdout

    uploaded: set[str] = set()
    for target, bucket in buckets.items():
        after, deleted = key_versions(s3_inspect, bucket)
        uploaded |= {k for k, n in after.items() if n > before[bucket].get(k, 0)}
        if "letters" in target:
            assert deleted == {str(data / f"letters {tok}" / "1902" / "other.tif").lstrip("/")}
        else:
            assert deleted == set()
    assert uploaded == {str(p).lstrip("/") for p in (changed, archive / "new.tif")}
    for target in buckets:
        assert f"{target}: adopted 2 of 2 files from the old cache" in result.stderr
    (report_path,) = (cache / "reports").glob("*.json")
    report = json.loads(report_path.read_text())
    assert {t["name"]: t["adopted"] for t in report["targets"]} == dict.fromkeys(buckets, 2)

    again = run_cli("--cache", str(cache))
    assert again.returncode == 0, again.stderr
    assert "0 files uploaded" in again.stderr


def test_a_dry_run_shows_the_adoption_and_writes_nothing(old_site: dict[str, Any], s3_inspect: Any):
    data, cache, tok, buckets = old_site["data"], old_site["cache"], old_site["tok"], old_site["buckets"]
    (data / f"letters {tok}" / "1901" / "new.tif").write_bytes(b"new")
    before = {b: key_versions(s3_inspect, b) for b in buckets.values()}
    result = run_cli("--cache", str(cache), "--dry-run")
    assert result.returncode == 0, result.stderr
    letters = str(data / f"letters {tok}")
    line = next(x for x in result.stdout.splitlines() if x.startswith(letters + " "))
    assert "would adopt 2 files" in line and "would upload 1 file " in line
    archive_line = next(x for x in result.stdout.splitlines() if f"Archive 3 {tok}" in x)
    assert "would adopt 2 files" in archive_line and "would upload 0 files" in archive_line
    assert not (cache / "async-backup.db").exists()
    assert {b: key_versions(s3_inspect, b) for b in buckets.values()} == before


def test_an_old_row_whose_object_s3_lost_is_uploaded(old_site: dict[str, Any], s3_inspect: Any):
    """The old cache may claim more than S3 holds (an upload that failed after its row, a delete by
    hand): only what the bucket listing shows is adopted."""
    data, cache, tok, buckets = old_site["data"], old_site["cache"], old_site["tok"], old_site["buckets"]
    target = str(data / f"letters {tok}")
    lost = str(data / f"letters {tok}" / "1901" / "letter.tif").lstrip("/")
    s3_inspect.delete_object(Bucket=buckets[target], Key=lost)
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    assert f"{target}: adopted 1 of 2 files from the old cache" in result.stderr
    assert "1 are not in s3://" in result.stderr
    counts, deleted = key_versions(s3_inspect, buckets[target])
    assert lost not in deleted and counts[lost] == 2


def test_the_old_config_copy_with_keys_is_named_once_and_never_deleted(old_site: dict[str, Any], s3_inspect: Any):
    cache = old_site["cache"]
    own_copy = str(cache / "config.json").lstrip("/")
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    lines = [x for x in result.stderr.splitlines() if OLD_CACHE_BUCKET in x and "config.json" in x]
    assert len(lines) == 1
    assert f"s3://{OLD_CACHE_BUCKET}/{own_copy}" in lines[0]
    assert "rotate" in lines[0] and "delete that object" in lines[0]
    assert s3_inspect.head_object(Bucket=OLD_CACHE_BUCKET, Key=own_copy)["ContentLength"] > 0


def test_a_legacy_name_that_is_no_bucket_fails_alone(tmp_path: Path, moto_endpoint: str, s3_inspect: Any):
    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    make_tree(data, {f"root/good {tok}/a.tif": b"a", f"root/neu {tok} ö/b.tif": b"b"})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, roots=[str(data / "root")], backup_extra={"naming": "legacy"})
    result = run_cli("--cache", str(cache))
    assert result.returncode == 1, result.stderr
    bad = str(data / "root" / f"neu {tok} ö")
    line = next(x for x in result.stderr.splitlines() if "failed: [bucket setup]" in x)
    assert bad in line and f"images--neu-{tok}--" in line
    assert '"bucket"' in line and "backup.folders" in line
    assert "Traceback" not in result.stderr
    good = s3_inspect.list_objects_v2(Bucket=f"images--good-{tok}")
    assert [o["Key"] for o in good["Contents"]] == [str(data / "root" / f"good {tok}" / "a.tif").lstrip("/")]
    # The fix the line names works: the folder, pinned to a valid bucket, overrides the root's subfolder.
    raw = json.loads((cache / "config.json").read_text())
    raw["backup"]["folders"] = [{"path": bad, "bucket": f"images--neu-oe-{tok}"}]
    (cache / "config.json").write_text(json.dumps(raw))
    fixed = run_cli("--cache", str(cache))
    assert fixed.returncode == 0, fixed.stderr
    assert s3_inspect.list_objects_v2(Bucket=f"images--neu-oe-{tok}")["KeyCount"] == 1


def test_a_subfolder_added_later_is_named_like_its_siblings(tmp_path: Path, moto_endpoint: str, s3_inspect: Any):
    """Folders in two places: the common path is their parent. When one is gone, the old rule over
    what is left would move the common path; a new subfolder still gets its siblings' scheme."""
    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    make_tree(data, {f"x{tok}/r/one/a.tif": b"a", f"y{tok}/two/b.tif": b"b"})
    cache = tmp_path / "cache"
    write_config(
        cache,
        moto_endpoint,
        folders=[str(data / f"y{tok}" / "two")],
        roots=[str(data / f"x{tok}" / "r")],
        backup_extra={"naming": "legacy"},
    )
    assert run_cli("--cache", str(cache)).returncode == 0
    assert s3_inspect.list_objects_v2(Bucket=f"images--x{tok}-r-one")["KeyCount"] == 1
    raw = json.loads((cache / "config.json").read_text())
    raw["backup"]["folders"] = []
    (cache / "config.json").write_text(json.dumps(raw))
    run_cli("--cache", str(cache), "--forget-target", str(data / f"y{tok}" / "two"))
    make_tree(data, {f"x{tok}/r/three/c.tif": b"c"})
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    assert s3_inspect.list_objects_v2(Bucket=f"images--x{tok}-r-three")["KeyCount"] == 1


def test_symlinked_subfolders_and_folders_are_backed_up_under_the_link(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any, bucket_prefix: str
):
    from async_backup.settings.naming import stable_bucket_name

    real = tmp_path / "elsewhere"
    make_tree(real, {"scans/p.tif": b"p", "scans/inner/q.tif": b"q", "folder/f.tif": b"f"})
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(real / "scans")
    (real / "scans" / "inner-link").symlink_to(real / "folder")  # inside a target: not followed
    (tmp_path / "folder-link").symlink_to(real / "folder")
    cache = tmp_path / "cache"
    write_config(
        cache, moto_endpoint, folders=[str(tmp_path / "folder-link")], roots=[str(root)], bucket_prefix=bucket_prefix
    )
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    linked = s3_inspect.list_objects_v2(Bucket=stable_bucket_name(bucket_prefix, str(root / "linked")))
    assert sorted(o["Key"] for o in linked["Contents"]) == [
        str(root / "linked" / "inner" / "q.tif").lstrip("/"),
        str(root / "linked" / "p.tif").lstrip("/"),
    ]
    folder = s3_inspect.list_objects_v2(Bucket=stable_bucket_name(bucket_prefix, str(tmp_path / "folder-link")))
    assert [o["Key"] for o in folder["Contents"]] == [str(tmp_path / "folder-link" / "f.tif").lstrip("/")]
    assert "1 skipped" in result.stderr  # the symlink inside the target


def test_a_vanished_subfolder_of_a_root_points_to_forget_target(tmp_path: Path, moto_endpoint: str, bucket_prefix: str):
    data = tmp_path / "root"
    make_tree(data, {"keep/a.tif": b"a", "gone/b.tif": b"b"})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, roots=[str(data)], bucket_prefix=bucket_prefix)
    assert run_cli("--cache", str(cache)).returncode == 0
    (data / "gone" / "b.tif").unlink()
    (data / "gone").rmdir()
    result = run_cli("--cache", str(cache))
    assert result.returncode == 1
    line = next(x for x in result.stderr.splitlines() if "target missing" in x)
    assert f"subfolder of root {data}" in line and f"--forget-target '{data / 'gone'}'" in line
    assert "config.json" not in line


# Float precision: the old script compared os.stat().st_mtime floats.


def test_the_float_mtime_is_exactly_what_os_stat_gives(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    rng = random.Random(7)
    for _ in range(300):
        ns = rng.randrange(0, 4_000_000_000 * 10**9)
        os.utime(path, ns=(ns, ns))
        st = os.stat(path)
        assert stat_float_mtime(st.st_mtime_ns) == st.st_mtime


def test_an_old_row_matches_only_the_same_float_mtime():
    ns = 1_700_000_000_123_456_789
    row = Recorded(b"/t/a", None, round(stat_float_mtime(ns) * 1e9), stat_float_mtime(ns))
    assert is_unchanged(DiskFile(b"/t/a", 5, ns), row)
    # 1 us later is another float (a double near 1.7e9 s resolves about 0.24 us): changed.
    assert not is_unchanged(DiskFile(b"/t/a", 5, ns + 1_000), row)
    sized = Recorded(b"/t/a", 5, row.mtime_ns, row.legacy_mtime)
    assert not is_unchanged(DiskFile(b"/t/a", 6, ns), sized)  # the listing's size is checked too
    assert list(merge([DiskFile(b"/t/a", 5, ns)], [sized], PlanCounts())) == []


def test_a_damaged_old_cache_is_one_warning_and_its_files_are_new(tmp_path: Path, moto_endpoint: str, s3_inspect: Any):
    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    make_tree(data, {f"a{tok}/one.tif": b"1", f"b{tok}/two.tif": b"2"})
    cache = tmp_path / "cache"
    write_config(
        cache, moto_endpoint, folders=[str(data / f"a{tok}"), str(data / f"b{tok}")], backup_extra={"naming": "legacy"}
    )
    (cache / "db").mkdir()
    (cache / "db" / f"a{tok}.db").write_bytes(b"this is not SQLite at all" * 100)
    good = sqlite3.connect(cache / "db" / f"b{tok}.db")
    good.execute("CREATE TABLE files (key TEXT PRIMARY KEY, timestamp REAL)")
    good.commit()
    good.close()
    # What the old script uploaded before its cache was damaged.
    s3_inspect.create_bucket(Bucket=f"images--a{tok}", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    s3_inspect.put_bucket_versioning(Bucket=f"images--a{tok}", VersioningConfiguration={"Status": "Enabled"})
    one = str(data / f"a{tok}" / "one.tif").lstrip("/")
    s3_inspect.upload_file(str(data / f"a{tok}" / "one.tif"), f"images--a{tok}", one)
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    assert sum(1 for x in result.stderr.splitlines() if f"a{tok}.db" in x) == 1
    assert "Traceback" not in result.stderr
    counts, _deleted = key_versions(s3_inspect, f"images--a{tok}")
    assert counts == {one: 1}  # no metadata, but the file's MD5 is its ETag: proven, not uploaded


def test_adopting_sends_one_listing_per_target_and_no_upload(old_site: dict[str, Any], moto_endpoint: str):
    from s3proxy import ProxyServer

    cache = old_site["cache"]
    raw = json.loads((cache / "config.json").read_text())
    with ProxyServer(moto_endpoint) as proxy:
        raw["aws"]["endpoint_url"] = proxy.url
        (cache / "config.json").write_text(json.dumps(raw))
        result = run_cli("--cache", str(cache), "--no-cache-backup")
        records = proxy.wait_done()
    assert result.returncode == 0, result.stderr
    lists = sorted(r.bucket or "" for r in records if r.op == "ListObjectsV2")
    targets = sorted(old_site["buckets"].values())
    assert [b for b in lists if b in targets] == targets  # one page each: two objects per bucket
    # Besides: the old script's cache bucket (for its config.json) once, and the two cache buckets
    # searched for snapshots (the default one and the host-derived one of earlier versions) twice
    # each: on a cache without targets, once for the names in use before naming, once by the rebuild.
    others = [b for b in lists if b not in targets]
    assert others.count(OLD_CACHE_BUCKET) == 1, others
    snapshot_lists = [b for b in others if b != OLD_CACHE_BUCKET]
    assert len(set(snapshot_lists)) == 2 and all(snapshot_lists.count(b) == 2 for b in snapshot_lists), others
    assert not [r for r in records if r.op in ("PutObject", "UploadPart", "CreateMultipartUpload")]


def test_an_adopted_cache_that_is_lost_comes_back_without_uploads(old_site: dict[str, Any], s3_inspect: Any):
    """Rows adopted from the old script keep its float mtime through the snapshot: losing the cache
    afterwards (or --reset) uploads nothing, from the snapshot or else from the old caches again."""
    cache, buckets = old_site["cache"], old_site["buckets"]
    assert run_cli("--cache", str(cache)).returncode == 0
    before = {b: key_versions(s3_inspect, b) for b in buckets.values()}
    for name in ("async-backup.db", "async-backup.db-wal", "async-backup.db-shm"):
        (cache / name).unlink(missing_ok=True)
    lost = run_cli("--cache", str(cache), "--no-cache-backup")
    assert lost.returncode == 0, lost.stderr
    assert "0 files uploaded" in lost.stderr and "rebuilt from snapshot" in lost.stderr
    reset = run_cli("--cache", str(cache), "--reset", "--no-cache-backup")
    assert reset.returncode == 0, reset.stderr
    assert "0 files uploaded" in reset.stderr
    assert {b: key_versions(s3_inspect, b) for b in buckets.values()} == before


def test_a_new_server_adopts_the_old_caches_from_the_old_scripts_cache_bucket(
    old_site: dict[str, Any], s3_inspect: Any, tmp_path: Path
):
    """The old script's server is gone with its db/ folder; only config.json made it to the new
    one. The old script copied db/*.db to image-backup-cache after every run: those copies serve."""
    new_cache = tmp_path / "new-server-cache"
    new_cache.mkdir()
    (new_cache / "config.json").write_text((old_site["cache"] / "config.json").read_text())
    (new_cache / "config.json").chmod(0o600)
    buckets = old_site["buckets"]
    before = {b: key_versions(s3_inspect, b) for b in buckets.values()}
    result = run_cli("--cache", str(new_cache), "--no-cache-backup")
    assert result.returncode == 0, result.stderr
    assert "0 files uploaded" in result.stderr
    assert sum("using its copy s3://image-backup-cache/" in x for x in result.stderr.splitlines()) == len(buckets)
    assert {b: key_versions(s3_inspect, b) for b in buckets.values()} == before


def test_a_chmod_over_adopted_files_costs_reads_never_uploads(old_site: dict[str, Any], s3_inspect: Any):
    """Adopted rows keep no checksum of their own; once a run recorded the files' inode and ctime,
    a `chmod -R` moves every ctime. The object's ETag (the old script's MD5) then decides, against
    the file's content: nothing unchanged is sent again, a file rewritten with its mtime put back is."""
    data, cache, buckets = old_site["data"], old_site["cache"], old_site["buckets"]
    for _ in range(2):  # adopt, then a run that records inode and ctime
        result = run_cli("--cache", str(cache))
        assert result.returncode == 0, result.stderr
    files = sorted(p for p in data.rglob("*.tif") if p.is_file())
    for path in files:
        path.chmod(0o640)
    edited = files[0]
    st = edited.stat()
    edited.write_bytes(bytes(b ^ 0xFF for b in edited.read_bytes()))  # same size, other bytes
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))  # `exiftool -P`: mtime put back

    before = {b: key_versions(s3_inspect, b)[0] for b in buckets.values()}
    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    uploaded = set()
    for bucket in buckets.values():
        after = key_versions(s3_inspect, bucket)[0]
        uploaded |= {k for k, n in after.items() if n > before[bucket].get(k, 0)}
    assert uploaded == {str(edited).lstrip("/")}

    again = run_cli("--cache", str(cache))  # the proven rows now carry the ETag: no request, no upload
    assert again.returncode == 0, again.stderr
    assert "0 files uploaded" in again.stderr


def test_adopted_rows_keep_the_etag_as_checksum_and_a_chmod_costs_no_head(
    tmp_path: Path, moto_endpoint: str, s3_inspect: Any
):
    """An adopted row records the listed ETag as its checksum: the MD5 of a single-part upload, and
    for a multipart one the MD5 of its parts' MD5s with the old script's part size (boto3's 8 MiB).
    A `chmod -R` then costs a read of each file and no HeadObject."""
    tok = legacy_token(tmp_path)
    data = tmp_path / "data"
    small = b"a scanned page"
    big = bytes(random.Random(7).getrandbits(8) for _ in range(256)) * (8 * 4096 + 1)  # 8 MiB + 256 bytes
    # Two folders: the old script names a lone target ".", which gives no valid bucket.
    make_tree(data, {f"m{tok}/small.tif": small, f"m{tok}/big.tif": big, f"n{tok}/other.tif": b"other"})
    cache = tmp_path / "cache"
    folders = [str(data / f"m{tok}"), str(data / f"n{tok}")]
    write_config(cache, moto_endpoint, folders=folders, backup_extra={"naming": "legacy"})
    raw = json.loads((cache / "config.json").read_text())
    raw["notification"] = {}
    (cache / "config.json").write_text(json.dumps(raw))
    bucket = run_old_script(cache, s3_inspect)[folders[0]]
    etags = {o["Key"]: o["ETag"].strip('"') for o in s3_inspect.list_objects_v2(Bucket=bucket)["Contents"]}
    assert etags[str(data / f"m{tok}" / "big.tif").lstrip("/")].endswith("-2")

    for _ in range(2):  # adopt, then a run that records inode and ctime
        result = run_cli("--cache", str(cache), "--no-cache-backup")
        assert result.returncode == 0, result.stderr
    db = sqlite3.connect(cache / "async-backup.db")
    rows = {
        os.fsdecode(p): (c, b)
        for p, c, b in db.execute("SELECT path, checksum, part_bytes FROM files WHERE bucket=?", (bucket,))
    }
    db.close()
    assert rows == {
        str(data / f"m{tok}" / "small.tif"): (f"md5:{hashlib.md5(small).hexdigest()}", None),
        str(data / f"m{tok}" / "big.tif"): (f"md5:{etags[str(data / f'm{tok}' / 'big.tif').lstrip('/')]}", 8 << 20),
    }

    for path in data.rglob("*.tif"):
        path.chmod(0o640)
    with ProxyServer(moto_endpoint) as proxy:
        raw["aws"]["endpoint_url"] = proxy.url
        (cache / "config.json").write_text(json.dumps(raw))
        result = run_cli("--cache", str(cache), "--no-cache-backup")
        records = proxy.wait_done()
    assert result.returncode == 0, result.stderr
    assert "0 files uploaded" in result.stderr
    assert not [r for r in records if r.op in ("HeadObject", "PutObject", "UploadPart")]
