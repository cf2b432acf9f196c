"""Properties of the pure planner, checked with Hypothesis over generated trees and caches."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from async_backup.backup.plan import (
    MAX_DELETE_BATCH,
    MAX_OBJECT_BYTES,
    MAX_PART_BYTES,
    MAX_PARTS,
    MIN_PART_BYTES,
    Delete,
    Observed,
    PlanCounts,
    Proof,
    Upload,
    batches,
    deletion_guard,
    device_guard,
    merge,
    part_ranges,
    part_size_for,
)
from async_backup.cache.records import Recorded, is_racy
from async_backup.disk.entries import DiskFile, Hole, Skipped, WalkEntry

names = st.sampled_from([b"a", b"b", b"a-c", b"a.b", b"z", b"\xc3\xa9", b"A", b"0"])
rel_paths = st.lists(names, min_size=1, max_size=3).map(lambda parts: b"/t/" + b"/".join(parts))


@st.composite
def disk_and_cache(draw: st.DrawFn) -> tuple[list[DiskFile], list[Recorded]]:
    """A set of files (no path both a file and a directory) and a cache that overlaps it."""
    paths = sorted(set(draw(st.lists(rel_paths, max_size=25))))
    files = [p for p in paths if not any(q.startswith(p + b"/") for q in paths)]
    small = st.integers(0, 3)
    disk = [DiskFile(p, draw(small), draw(small), draw(st.integers(0, 2)), draw(st.integers(0, 2))) for p in files]
    cached_paths = sorted(
        set(draw(st.lists(rel_paths, max_size=25)))
        | {d.path for d in draw(st.lists(st.sampled_from(disk), max_size=10))}
        if disk
        else set(draw(st.lists(rel_paths, max_size=25)))
    )
    evidence = st.none() | st.integers(0, 2)  # None: a row from before inodes and ctimes were kept
    cache = [
        Recorded(p, draw(small), draw(small), None, draw(evidence), draw(evidence), draw(st.booleans()))
        for p in cached_paths
    ]
    return disk, cache


def apply(cache: list[Recorded], actions: list[Upload | Delete | Observed]) -> list[Recorded]:
    """The rows after the plan was carried out: an upload (or a content check that matched) records
    the file with its inode and ctime, read long after its last change (so sure)."""
    rows = {r.path: r for r in cache}
    for a in actions:
        if isinstance(a, Upload):
            f = a.file
            rows[f.path] = Recorded(f.path, f.size, f.mtime_ns, None, f.ino, f.ctime_ns, unsure=False)
        elif isinstance(a, Observed):
            rows[a.file.path] = replace(rows[a.file.path], ino=a.file.ino, ctime_ns=a.file.ctime_ns)
        else:
            del rows[a.path]
    return sorted(rows.values(), key=lambda r: r.path)


@given(disk_and_cache())
@settings(max_examples=300)
def test_replanning_after_applying_a_plan_is_empty(case: tuple[list[DiskFile], list[Recorded]]):
    disk, cache = case
    actions = list(merge(disk, cache, PlanCounts()))
    after = apply(cache, actions)
    assert list(merge(disk, after, PlanCounts())) == []
    assert [r.path for r in after] == [d.path for d in disk]


@given(disk_and_cache())
@settings(max_examples=300)
def test_no_delete_for_a_path_on_disk_and_every_change_uploaded(case: tuple[list[DiskFile], list[Recorded]]):
    disk, cache = case
    actions = list(merge(disk, cache, PlanCounts()))
    on_disk = {d.path for d in disk}
    deleted = {a.path for a in actions if isinstance(a, Delete)}
    assert not deleted & on_disk
    assert deleted == {r.path for r in cache} - on_disk
    uploads = {a.file.path for a in actions if isinstance(a, Upload) and a.proof is not Proof.CONTENT}
    rows = {r.path: r for r in cache}
    assert uploads == {
        d.path for d in disk if d.path not in rows or (rows[d.path].size, rows[d.path].mtime_ns) != (d.size, d.mtime_ns)
    }
    # A match by size and mtime is compared by content exactly when its row is unsure or the file's
    # inode or ctime moved; a row without them is no evidence (after an upgrade nothing is read).
    proved = {a.file.path for a in actions if isinstance(a, Upload) and a.proof is Proof.CONTENT}
    assert all(not a.is_new for a in actions if isinstance(a, Upload) and a.proof is Proof.CONTENT)
    matched = [d for d in disk if d.path in rows and (rows[d.path].size, rows[d.path].mtime_ns) == (d.size, d.mtime_ns)]
    assert proved == {
        d.path
        for d in matched
        if rows[d.path].unsure
        or rows[d.path].ino not in (None, d.ino)
        or rows[d.path].ctime_ns not in (None, d.ctime_ns)
    }
    observed = {a.file.path for a in actions if isinstance(a, Observed)}
    assert observed == {
        d.path
        for d in matched
        if d.path not in proved and (rows[d.path].ino is None or rows[d.path].ctime_ns is None)
    }


@given(disk_and_cache(), st.sampled_from([b"/t/a/", b"/t/b/", b"/t/z/"]))
def test_nothing_under_a_hole_is_deleted(case: tuple[list[DiskFile], list[Recorded]], hole: bytes):
    disk, cache = case
    entries: list[WalkEntry] = [d for d in disk if not d.path.startswith(hole)]
    entries.append(Hole(hole, "unreadable"))
    entries.sort(key=lambda e: e.path)
    actions = list(merge(entries, cache, PlanCounts()))
    assert not any(isinstance(a, Delete) and a.path.startswith(hole) for a in actions)


def unknown(path: bytes) -> list[WalkEntry]:
    """How the walk yields an entry whose type or status it cannot read: at the place of a file
    of that name and again at the place of a directory of that name."""
    return [Skipped(path, "unreadable"), Hole(path + b"/", "unreadable")]


@given(disk_and_cache(), st.sampled_from([b"/t/a", b"/t/b", b"/t/a/b", b"/t/z"]))
@settings(max_examples=300)
def test_no_delete_for_a_key_under_an_unknown_entry(case: tuple[list[DiskFile], list[Recorded]], name: bytes):
    disk, cache = case

    def covered(path: bytes) -> bool:
        return path == name or path.startswith(name + b"/")

    entries: list[WalkEntry] = [d for d in disk if not covered(d.path)] + unknown(name)
    entries.sort(key=lambda e: e.path)
    actions = list(merge(entries, cache, PlanCounts()))
    deleted = {a.path for a in actions if isinstance(a, Delete)}
    assert not any(covered(p) for p in deleted)
    # Everything else is planned as without the unknown entry.
    on_disk = {e.path for e in entries if isinstance(e, DiskFile)}
    assert deleted == {r.path for r in cache if not covered(r.path)} - on_disk


def test_an_unknown_entry_keeps_its_cached_path_and_subtree_around_siblings_between():
    # "a" < "a-c" < "a.b" < "a/x": rows for the path itself and for its subtree are not adjacent.
    cache = [Recorded(p, 1, 1) for p in (b"/t/a", b"/t/a-c", b"/t/a.b", b"/t/a/x", b"/t/a/y/z", b"/t/b")]
    disk: list[WalkEntry] = [*unknown(b"/t/a"), DiskFile(b"/t/a-c", 1, 1), DiskFile(b"/t/b", 1, 1)]
    disk.sort(key=lambda e: e.path)
    counts = PlanCounts()
    actions = list(merge(disk, cache, counts))
    assert actions == [Delete(b"/t/a.b")]
    assert counts.kept == 3  # /t/a, /t/a/x, /t/a/y/z


def test_skipped_entries_keep_their_cached_copy():
    counts = PlanCounts()
    actions = list(merge([Skipped(b"/t/link", "symlink")], [Recorded(b"/t/link", 1, 1)], counts))
    assert actions == [] and counts.kept == 1


def test_rows_without_evidence_are_filled_in_and_never_compared_by_content():
    file = DiskFile(b"/t/a", 5, 10, ino=7, ctime_ns=11)
    old = Recorded(b"/t/a", 5, 10)  # written before inodes and ctimes were kept
    counts = PlanCounts()
    assert list(merge([file], [old], counts)) == [Observed(file)]
    assert counts.unchanged == 1 and counts.unsure == 0
    sure = Recorded(b"/t/a", 5, 10, None, 7, 11)
    assert list(merge([file], [sure], PlanCounts())) == []
    for moved in (replace(sure, ino=8), replace(sure, ctime_ns=12), replace(sure, unsure=True)):
        counts = PlanCounts()
        assert list(merge([file], [moved], counts)) == [Upload(file, is_new=False, proof=Proof.CONTENT)]
        assert counts.unsure == 1 and counts.unchanged == 0


def test_racy_rule():
    second = 1_000_000_000
    read_at = 1_700_000_000 * second
    assert is_racy(read_at - second, read_at - 5 * second, read_at)  # mtime within the margin
    assert is_racy(read_at - 5 * second, read_at - second, read_at)  # ctime within the margin
    assert is_racy(read_at + 60 * second, read_at + 60 * second, read_at)  # a future mtime stays unsure
    assert not is_racy(read_at - 2 * second, read_at - 3 * second, read_at)  # 2 s older: sure
    assert is_racy(read_at - 2 * second + 1, 0, read_at)


def test_legacy_rows_compare_by_mtime_only_with_float_tolerance():
    mtime_ns = 1_700_000_000_123_456_789
    legacy = Recorded(b"/t/a", None, round((mtime_ns / 1e9) * 1e9))
    assert list(merge([DiskFile(b"/t/a", 99, mtime_ns)], [legacy], PlanCounts())) == []
    moved = DiskFile(b"/t/a", 99, mtime_ns + 1_000_000)
    assert list(merge([moved], [legacy], PlanCounts())) == [Upload(moved, is_new=False)]


@given(st.integers(0, MAX_OBJECT_BYTES), st.sampled_from([5, 8, 16, 64, 100]).map(lambda m: m * 1024 * 1024))
@settings(max_examples=500)
def test_part_limits_always_hold(size: int, preferred: int):
    part = part_size_for(size, preferred)
    assert MIN_PART_BYTES <= part <= MAX_PART_BYTES
    ranges = part_ranges(size, part)
    assert len(ranges) <= MAX_PARTS
    assert sum(length for _, length in ranges) == size
    assert all(length == part for _, length in ranges[:-1])
    assert ranges[-1][1] <= part


@given(st.lists(st.integers(), max_size=3500), st.integers(1, MAX_DELETE_BATCH))
def test_delete_batches_hold_at_most_1000_keys_and_lose_none(keys: list[int], size: int):
    chunks = list(batches(keys, size))
    assert all(1 <= len(c) <= size for c in chunks)
    assert [k for c in chunks for k in c] == keys


def test_deletion_guard():
    assert deletion_guard(recorded=10, deletes=5, on_disk=5, max_delete_percent=50, allow_mass_delete=False) is None
    assert "60%" in str(
        deletion_guard(recorded=10, deletes=6, on_disk=4, max_delete_percent=50, allow_mass_delete=False)
    )
    assert "empty" in str(
        deletion_guard(recorded=3, deletes=3, on_disk=0, max_delete_percent=100, allow_mass_delete=False)
    )
    assert deletion_guard(recorded=3, deletes=3, on_disk=0, max_delete_percent=50, allow_mass_delete=True) is None


def test_device_guard():
    def guard(device: int | None, recorded: int | None, deletes: int = 1, allow: bool = False) -> str | None:
        return device_guard(
            target="/srv/share", device=device, recorded_device=recorded, deletes=deletes, allow_mass_delete=allow
        )

    reason = guard(device=64, recorded=2049)
    assert reason == (
        "/srv/share is now on another device (st_dev 64, was 2049): an unmounted share? deletes held back; "
        "mount it, or run with --allow-mass-delete if the move was intended"
    )
    assert guard(device=2049, recorded=2049) is None  # the same device
    assert guard(device=64, recorded=2049, deletes=0) is None  # nothing to hold back
    assert guard(device=64, recorded=2049, allow=True) is None  # the move was intended
    assert guard(device=64, recorded=None) is None  # no run recorded a device yet
    assert guard(device=None, recorded=2049) is None  # the folder could not be stat'ed: the walk says so
