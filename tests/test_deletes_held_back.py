"""Deletes only from certain knowledge: an entry the walk cannot read, or a target folder that is now
on another device, is never a reason to delete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import key_of, make_tree, reports, run_cli, write_config
from faultcheck import bucket_objects, cache_rows

from async_backup.backup.plan import Delete, PlanCounts, merge
from async_backup.cache.records import Recorded
from async_backup.disk.walk import Excluder, walk_target
from async_backup.errors import Failure
from async_backup.settings.naming import stable_bucket_name


def delete_markers(client: Any, bucket: str) -> list[str]:
    found: list[str] = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        found.extend(m["Key"] for m in page.get("DeleteMarkers", []))
    return found


# Part 1, at the lowest layer: DirEntry objects whose type and status cannot be read, as on NFS,
# FUSE or XFS without ftype (DT_UNKNOWN) when the lstat that is_dir() falls back to fails.


class _UnreadableEntry:
    """A DirEntry of unknown type whose lstat fails: is_dir() and stat() raise like the real one."""

    def __init__(self, entry: os.DirEntry[bytes], code: int) -> None:
        self.name = entry.name
        self.path = entry.path
        self._code = code

    def _fail(self) -> OSError:
        return OSError(self._code, os.strerror(self._code), os.fsdecode(self.path))

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        raise self._fail()

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise self._fail()


def _scandir_with_unreadable(unreadable: set[bytes], code: int) -> Any:
    real_scandir = os.scandir

    @contextlib.contextmanager
    def scandir(path: bytes) -> Iterator[Iterator[Any]]:
        with real_scandir(path) as it:
            yield iter([_UnreadableEntry(e, code) if e.path in unreadable else e for e in it])

    return scandir


def _recorded(root: Path) -> list[Recorded]:
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.lstat()
        rows.append(Recorded(os.fsencode(path), st.st_size, st.st_mtime_ns, None, st.st_ino, st.st_ctime_ns))
    return sorted(rows, key=lambda r: r.path)


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE, errno.EACCES], ids=errno.errorcode.get)
def test_an_entry_of_unknown_type_keeps_its_cached_path_and_everything_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    root = tmp_path / "t"
    # "scans-old.tif" sorts between "scans" and "scans/...", and "gone.tif" really was removed.
    make_tree(root, {"a.tif": b"1", "scans/x.tif": b"2", "scans/deep/y.tif": b"3", "scans-old.tif": b"4"})
    make_tree(root, {"gone.tif": b"5"})
    cache = _recorded(root)
    cache.append(Recorded(os.fsencode(root / "scans"), 1, 1))  # once a file of that name, say
    cache.sort(key=lambda r: r.path)
    (root / "gone.tif").unlink()
    scans = os.fsencode(root / "scans")
    monkeypatch.setattr(os, "scandir", _scandir_with_unreadable({scans}, code))
    failures: list[Failure] = []

    walk = walk_target(os.fsencode(root), Excluder(()), failures.append, "t")
    actions = list(merge(walk, cache, PlanCounts()))

    assert [a for a in actions if isinstance(a, Delete)] == [Delete(os.fsencode(root / "gone.tif"))]
    assert [(f.kind.value, f.path, f.code) for f in failures] == [
        ("unreadable", str(root / "scans"), errno.errorcode[code])
    ]
    assert "kept" in failures[0].message


def test_an_entry_whose_lstat_fails_keeps_cached_files_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory listed, then unreadable when its type is asked: also under a directory of its own."""
    root = tmp_path / "t"
    make_tree(root, {"keep.tif": b"1", "sub/one/a.tif": b"2", "sub/one/b.tif": b"3", "sub/two.tif": b"4"})
    cache = _recorded(root)
    one = os.fsencode(root / "sub/one")
    monkeypatch.setattr(os, "scandir", _scandir_with_unreadable({one}, errno.EIO))
    failures: list[Failure] = []
    actions = list(merge(walk_target(os.fsencode(root), Excluder(()), failures.append, "t"), cache, PlanCounts()))
    assert actions == []
    assert [f.path for f in failures] == [str(root / "sub/one")]


# Part 1, for real: a file system without file types in its directories (ext4 made with
# -O ^filetype, loop-mounted), where DirEntry.is_dir() must lstat, and a directory that can be
# listed but not entered (mode r--), so that lstat fails with EACCES. Root reads everything, so the
# backup runs as root without the capabilities that override file permissions (not as `nobody`,
# who may not reach this checkout: a clone under a `mktemp -d` folder is root's alone).

DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@contextlib.contextmanager
def filesystem_without_file_types(base: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount a file system without d_type")
    for tool in ("mkfs.ext4", "mount", "umount", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    image, mount_point = base / "fs.img", base / "mnt"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "^filetype,^has_journal", str(image)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 cannot make a file system without file types: {made.stderr.strip()}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"loop mounts are not allowed here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def _lstat_denied_without_dac(path: Path) -> bool:
    probe = subprocess.run(
        [*DROP_DAC, sys.executable, "-c", "import os, sys; os.lstat(sys.argv[1])", str(path)],
        capture_output=True,
        text=True,
    )
    return probe.returncode != 0 and "PermissionError" in probe.stderr


def test_a_folder_whose_entries_cannot_be_stated_keeps_its_cached_files_in_s3(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    with filesystem_without_file_types(tmp_path) as mnt:
        target = mnt / "images"
        make_tree(
            target,
            {
                "top1.tif": b"1",
                "top2.tif": b"2",
                "top3.tif": b"3",
                "other/x.tif": b"4",
                "scans/a.tif": b"5",
                "scans/deep/b.tif": b"6",
                "scans/deep/c.tif": b"7",
                "scans/deep/more/d.tif": b"8",
            },
        )
        cache = tmp_path / "cache"
        write_config(cache, moto_endpoint, folders=[str(target)], bucket_prefix=bucket_prefix)
        first = run_cli("--cache", str(cache))
        assert first.returncode == 0, first.stderr
        bucket = stable_bucket_name(bucket_prefix, str(target))
        backed_up = bucket_objects(s3_inspect, bucket)
        assert len(backed_up) == 8

        scans = target / "scans"
        scans.chmod(0o644)  # listable, but its entries cannot be stated: lstat fails with EACCES
        try:
            if not _lstat_denied_without_dac(scans / "deep"):
                pytest.skip("dropping CAP_DAC_OVERRIDE does not make permissions apply to root here")
            second = subprocess.run(
                [*DROP_DAC, sys.executable, "-m", "async_backup", "--cache", str(cache)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            scans.chmod(0o755)

        assert second.returncode == 1, second.stderr
        assert bucket_objects(s3_inspect, bucket) == backed_up
        assert delete_markers(s3_inspect, bucket) == []
        assert set(cache_rows(cache, bucket)) == set(backed_up)
        failures = reports(cache)[-1]["failures"]
        assert sorted(f["path"] for f in failures) == [str(scans / "a.tif"), str(scans / "deep")]
        assert {f["kind"] for f in failures} == {"unreadable"}
        assert all("kept" in f["message"] for f in failures)
        assert str(scans / "deep") in second.stderr

        third = run_cli("--cache", str(cache))
        assert third.returncode == 0, third.stderr
        assert bucket_objects(s3_inspect, bucket) == backed_up


# Part 2: a target folder that is now on another device. As root a tmpfs can be mounted over the
# folder: the same path on another st_dev, as an unmounted share leaves its mount point (here with
# most of the files copied in, so that the deletion guard's counts alone would let the delete go).


def recorded_device(cache: Path, target: Path) -> int | None:
    conn = sqlite3.connect(cache / "async-backup.db")
    try:
        row = conn.execute("SELECT value FROM meta WHERE name=?", (f"device:{target}",)).fetchone()
    finally:
        conn.close()
    return None if row is None else int(row[0])


@contextlib.contextmanager
def tmpfs_over(folder: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs over the target folder")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting is not allowed here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.slow
def test_a_folder_now_on_another_device_holds_back_its_deletes_until_allowed(
    tmp_path: Path, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
) -> None:
    target, spare = tmp_path / "share", tmp_path / "spare"
    files = {f"img{i}.tif": bytes([i]) * 10 for i in range(10)}
    make_tree(target, files)
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(target)], bucket_prefix=bucket_prefix)
    bucket = stable_bucket_name(bucket_prefix, str(target))
    first = run_cli("--cache", str(cache))
    assert first.returncode == 0, first.stderr
    old_device = os.stat(target).st_dev
    assert recorded_device(cache, target) == old_device
    shutil.copytree(target, spare)  # copy2: the same mtimes, so these count as unchanged
    (spare / "img9.tif").unlink()

    with tmpfs_over(target):
        shutil.copytree(spare, target, dirs_exist_ok=True)
        new_device = os.stat(target).st_dev
        assert new_device != old_device
        expected = (
            f"{target} is now on another device (st_dev {new_device}, was {old_device}): an unmounted share? "
            "deletes held back; mount it, or run with --allow-mass-delete if the move was intended"
        )

        dry = run_cli("--cache", str(cache), "--dry-run")
        assert expected in dry.stderr + dry.stdout
        assert recorded_device(cache, target) == old_device  # a dry run reads it, never writes it

        held = run_cli("--cache", str(cache))
        assert held.returncode == 1, held.stderr
        assert expected in held.stderr
        (failure,) = reports(cache)[-1]["failures"]
        assert failure["kind"] == "deletion guard" and failure["path"] == str(target)
        assert failure["message"] == expected
        assert len(bucket_objects(s3_inspect, bucket)) == 10 and delete_markers(s3_inspect, bucket) == []
        assert len(cache_rows(cache, bucket)) == 10
        assert recorded_device(cache, target) == old_device  # held back: not the new device yet

        again = run_cli("--cache", str(cache))
        assert again.returncode == 1 and expected in again.stderr  # still held back, night after night

        allowed = run_cli("--cache", str(cache), "--allow-mass-delete")
        assert allowed.returncode == 0, allowed.stderr
        assert delete_markers(s3_inspect, bucket) == [key_of(target / "img9.tif")]
        assert recorded_device(cache, target) == new_device

        settled = run_cli("--cache", str(cache))
        assert settled.returncode == 0, settled.stderr
