"""Shares mounted inside a target are remembered: one that is not mounted, empty or missing is no
evidence that its files were deleted, in a backup, in a lost cache's rebuild and in `verify --repair`.

Real file systems: ext2 images loop-mounted inside a target folder that lives on the test's tmp
file system (as root; skipped with the reason otherwise), against moto over HTTP with the real CLI.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from conftest import key_of, last_report, make_tree, run_cli, write_config
from faultcheck import bucket_objects, cache_rows
from loopfs import loop_mount, remount, unmount

from async_backup.disk.walk import Excluder, walk_target
from async_backup.errors import Failure
from async_backup.settings.naming import stable_bucket_name

TOP = {f"letters/{i}.txt": b"letter %d" % i for i in range(8)}
SCANS = {"scan-a.tif": b"a" * 100, "scan-b.tif": b"b" * 200, "2019-05/scan-c.tif": b"c" * 300}
NESTED = {"deep-1.tif": b"1" * 50, "deep-2.tif": b"2" * 60}


def versions(client: Any, bucket: str) -> tuple[list[str], list[str]]:
    """(keys of every object version, keys of every delete marker)."""
    found: list[str] = []
    markers: list[str] = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        found.extend(v["Key"] for v in page.get("Versions", []))
        markers.extend(m["Key"] for m in page.get("DeleteMarkers", []))
    return sorted(found), sorted(markers)


def remembered(cache: Path, target: Path) -> dict[bytes, int | None]:
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        rows = conn.execute("SELECT path, device FROM mounts WHERE target=?", (str(target),)).fetchall()
    except sqlite3.OperationalError:  # a cache from before mount points were remembered
        rows = []
    finally:
        conn.close()
    return {bytes(p): d for p, d in rows}


def gone_rows(cache: Path, bucket: str) -> list[bytes]:
    """Rows a rebuild or a repair writes for an object whose file is gone (mtime 0)."""
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        rows = conn.execute("SELECT path FROM files WHERE bucket=? AND mtime_ns=0", (bucket,))
        return sorted(bytes(p) for (p,) in rows)
    finally:
        conn.close()


def failures_naming(cache: Path, folder: Path) -> list[dict[str, Any]]:
    return [f for f in last_report(cache)["failures"] if f["path"] == str(folder)]


def under(rows: dict[bytes, Any], folder: Path) -> set[bytes]:
    prefix = os.fsencode(folder) + b"/"
    return {p for p in rows if p.startswith(prefix)}


def test_an_unmounted_share_inside_a_target_keeps_its_files_until_it_is_back(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    target = tmp_path / "parish"
    make_tree(target, TOP)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(target)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(target))
    with loop_mount(target / "scans-2019") as scans, loop_mount(scans / "nested") as nested:
        make_tree(scans, SCANS)
        make_tree(nested, NESTED)
        first = run_cli("--cache", str(cache))
        assert first.returncode == 0, first.stderr
        uploaded, _ = versions(s3_inspect, bucket)
        assert len(uploaded) == 13
        assert set(remembered(cache, target)) == {os.fsencode(scans), os.fsencode(nested)}

        # The nested share alone goes away: only it is named, the outer share is backed up as usual.
        unmount(nested)
        (scans / "scan-new.tif").write_bytes(b"n" * 10)
        inner_gone = run_cli("--cache", str(cache))
        assert inner_gone.returncode == 1, inner_gone.stderr
        assert str(nested) in inner_gone.stderr and "--allow-mass-delete" in inner_gone.stderr
        (failure,) = last_report(cache)["failures"]
        assert failure["path"] == str(nested) and failure["kind"] == "deletion guard"
        assert versions(s3_inspect, bucket)[1] == []
        assert key_of(scans / "scan-new.tif") in versions(s3_inspect, bucket)[0]

        # Then the outer share too: the empty mount point is on the parent's file system again.
        unmount(scans)
        assert os.listdir(scans) == []
        dry = run_cli("--cache", str(cache), "--dry-run")
        assert str(scans) in dry.stderr + dry.stdout
        gone = run_cli("--cache", str(cache))
        assert gone.returncode == 1, gone.stderr
        assert str(scans) in gone.stderr
        (failure,) = last_report(cache)["failures"]  # the nested one lies inside it: not named again
        assert failure["path"] == str(scans)
        assert "--only" in failure["message"] and "--allow-mass-delete" in failure["message"]
        found, markers = versions(s3_inspect, bucket)
        assert markers == [] and len(found) == 14  # nothing deleted, nothing uploaded
        assert len(under(cache_rows(cache, bucket), scans)) == 6
        assert set(remembered(cache, target)) == {os.fsencode(scans), os.fsencode(nested)}

        # Back again: nothing is uploaded twice, no failure.
        remount(scans)
        remount(nested)
        back = run_cli("--cache", str(cache))
        assert back.returncode == 0, back.stderr
        assert last_report(cache)["failures"] == []
        assert versions(s3_inspect, bucket) == (found, [])


def test_a_mount_point_removed_on_purpose_is_let_go_with_allow_mass_delete(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    target = tmp_path / "parish"
    make_tree(target, TOP)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(target)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(target))
    with loop_mount(target / "scans-2019") as scans:
        make_tree(scans, SCANS)
        assert run_cli("--cache", str(cache)).returncode == 0
        unmount(scans)
        scans.rmdir()

        held = run_cli("--cache", str(cache))
        assert held.returncode == 1, held.stderr
        assert [f["path"] for f in last_report(cache)["failures"]] == [str(scans)]
        assert "missing" in last_report(cache)["failures"][0]["message"]
        assert versions(s3_inspect, bucket)[1] == []

        dry = run_cli("--cache", str(cache), "--only", str(target), "--allow-mass-delete", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert set(remembered(cache, target)) == {os.fsencode(scans)}  # a dry run forgets nothing
        assert versions(s3_inspect, bucket)[1] == []

        allowed = run_cli("--cache", str(cache), "--only", str(target), "--allow-mass-delete")
        assert allowed.returncode == 0, allowed.stderr
        assert versions(s3_inspect, bucket)[1] == sorted(key_of(scans / rel) for rel in SCANS)
        assert remembered(cache, target) == {}  # forgotten: the next night is quiet

        quiet = run_cli("--cache", str(cache))
        assert quiet.returncode == 0, quiet.stderr
        scans.mkdir()  # for loop_mount's clean-up


def test_a_cache_lost_while_a_share_is_unmounted_writes_no_gone_rows_for_it(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    target = tmp_path / "parish"
    make_tree(target, TOP)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(target)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(target))
    with loop_mount(target / "scans-2019") as scans:
        make_tree(scans, SCANS)
        assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
        unmount(scans)
        (target / "letters" / "7.txt").unlink()  # deleted while the cache is lost: that one is gone
        for name in ("async-backup.db", "async-backup.db-wal", "async-backup.db-shm"):
            (cache / name).unlink(missing_ok=True)

        rebuilt = run_cli("--cache", str(cache), "--no-cache-backup")
        assert rebuilt.returncode == 1, rebuilt.stderr
        assert gone_rows(cache, bucket) == []  # nothing under the empty mount point is taken for deleted
        assert under(cache_rows(cache, bucket), scans) == set()
        assert [f["path"] for f in last_report(cache)["failures"]] == [str(scans)]
        assert versions(s3_inspect, bucket)[1] == [key_of(target / "letters" / "7.txt")]  # truly deleted
        assert set(bucket_objects(s3_inspect, bucket)) >= {os.fsencode(scans / rel) for rel in SCANS}
        assert remembered(cache, target) == {os.fsencode(scans): None}  # suspected: never seen mounted

        remount(scans)
        back = run_cli("--cache", str(cache), "--no-cache-backup")
        assert back.returncode == 0, back.stderr
        assert last_report(cache)["failures"] == []
        assert versions(s3_inspect, bucket)[1] == [key_of(target / "letters" / "7.txt")]
        assert under(cache_rows(cache, bucket), scans) == {os.fsencode(scans / rel) for rel in SCANS}
        assert remembered(cache, target)[os.fsencode(scans)] == os.stat(scans).st_dev


def test_a_cache_rebuilt_from_a_snapshot_while_a_share_is_unmounted_keeps_its_rows(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    target = tmp_path / "parish"
    make_tree(target, TOP)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(target)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(target))
    with loop_mount(target / "scans-2019") as scans:
        make_tree(scans, SCANS)
        assert run_cli("--cache", str(cache)).returncode == 0  # its snapshot remembers the mount point
        unmount(scans)
        for name in ("async-backup.db", "async-backup.db-wal", "async-backup.db-shm"):
            (cache / name).unlink(missing_ok=True)

        rebuilt = run_cli("--cache", str(cache))
        assert rebuilt.returncode == 1, rebuilt.stderr
        assert "rebuilt from" in rebuilt.stderr and "snapshot" in rebuilt.stderr
        assert [f["path"] for f in last_report(cache)["failures"]] == [str(scans)]
        assert under(cache_rows(cache, bucket), scans) == {os.fsencode(scans / rel) for rel in SCANS}
        assert versions(s3_inspect, bucket)[1] == []


def test_verify_repair_while_a_share_is_unmounted_keeps_its_rows_and_adds_no_gone_rows(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    target = tmp_path / "parish"
    make_tree(target, TOP)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(target)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(target))
    with loop_mount(target / "scans-2019") as scans:
        make_tree(scans, SCANS)
        assert run_cli("--cache", str(cache), "--no-cache-backup").returncode == 0
        before = cache_rows(cache, bucket)
        unmount(scans)
        # One of its rows lost (as a rebuild without proof leaves it): an object no row explains.
        conn = sqlite3.connect(cache / "async-backup.db")
        with conn:
            conn.execute("DELETE FROM files WHERE bucket=? AND path=?", (bucket, os.fsencode(scans / "scan-a.tif")))
        conn.close()

        checked = run_cli("--cache", str(cache), "verify", "--repair")
        assert str(scans) in checked.stdout + checked.stderr
        assert "gone from disk" not in checked.stdout
        rows = cache_rows(cache, bucket)
        assert gone_rows(cache, bucket) == []
        assert rows == {p: s for p, s in before.items() if p != os.fsencode(scans / "scan-a.tif")}

        held = run_cli("--cache", str(cache), "--no-cache-backup")
        assert held.returncode == 1, held.stderr
        assert versions(s3_inspect, bucket)[1] == []


def test_the_walk_finds_mount_points_with_one_lstat_per_directory_and_holds_absent_ones(tmp_path: Path) -> None:
    from async_backup.disk.walk import MountWatch  # new with the rule: only this test needs it

    target = tmp_path / "t"
    make_tree(target, {"a.txt": b"a", "b/c.txt": b"c", "m-empty/.keep": b"", "z.txt": b"z"})
    (target / "m-empty" / ".keep").unlink()
    failures: list[Failure] = []
    absent: list[tuple[bytes, str]] = []
    found: list[tuple[bytes, int]] = []
    t = os.fsencode(target)
    watch = MountWatch(
        frozenset({t + b"/b", t + b"/m-empty", t + b"/gone/deeper/share", t + b"/gone/deeper/share/inner"}),
        found=lambda p, d: found.append((p, d)),
        absent=lambda p, why: absent.append((p, why)),
    )
    entries = list(walk_target(t, Excluder(()), failures.append, str(target), mounts=watch))
    paths = [e.path for e in entries]
    assert paths == sorted(paths)
    assert paths == [t + b"/a.txt", t + b"/b/", t + b"/gone/deeper/share/", t + b"/m-empty/", t + b"/z.txt"]
    assert absent == [
        (t + b"/b", "not mounted"),
        (t + b"/gone/deeper/share", "missing"),
        (t + b"/m-empty", "not mounted"),
    ]
    assert found == [] and failures == []


def test_a_suspected_mount_point_back_with_files_on_its_parents_device_is_walked(tmp_path: Path) -> None:
    """An empty folder a rebuild suspected to be a share, refilled on the parent's file system: it
    was no share after all, so it is walked and reported for forgetting, not held every night."""
    from async_backup.disk.walk import MountWatch

    target = tmp_path / "t"
    make_tree(target, {"refilled/x.txt": b"x", "still-empty/.keep": b""})
    (target / "still-empty" / ".keep").unlink()
    t = os.fsencode(target)
    absent: list[bytes] = []
    unmounted: list[bytes] = []
    suspected = frozenset({t + b"/refilled", t + b"/still-empty"})
    watch = MountWatch(
        suspected, absent=lambda p, _why: absent.append(p), suspected=suspected, unmounted=unmounted.append
    )
    paths = [e.path for e in walk_target(t, Excluder(()), lambda _f: None, str(target), mounts=watch)]
    assert paths == [t + b"/refilled/x.txt", t + b"/still-empty/"]
    assert absent == [t + b"/still-empty"] and unmounted == [t + b"/refilled"]
