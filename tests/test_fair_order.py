"""Every target advances within a run: a huge first upload does not hold back the others' changes.

Against moto over HTTP through the recording proxy (the order of PutObject requests is what S3
saw), the turns by bytes on the lanes themselves, and a folder's or root's `priority` in config.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import in_process, key_of, make_tree, write_config
from s3proxy import Delay, ProxyServer

from async_backup.backup.lanes import Lanes
from async_backup.settings.config import parse_config
from async_backup.settings.targets import discover_targets


@pytest.mark.slow
def test_a_small_targets_new_files_go_out_before_a_large_first_upload_is_half_done(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    """One worker and one walk at a time make the order deterministic: the large target (listed
    first) is walked and queued whole before the small one is walked at all. One queue in walk order
    sent the small target's files after every queued file of the large one."""
    large, small = tmp_path / "large", tmp_path / "small"
    make_tree(large, {f"vol/page-{i:04d}.tif": bytes([i % 251]) * 1024 for i in range(120)})
    make_tree(small, {f"new-{i}.tif": b"s" * 2048 for i in range(3)})
    cache = tmp_path / "cache"
    tuning = {"workers": 1, "walk_threads": 1}
    write_config(cache, proxy.url, folders=[str(large), str(small)], bucket_prefix=bucket_prefix, tuning=tuning)
    proxy.set_faults(Delay(seconds=0.02, ops={"PutObject"}))  # about 3 s of sending for the large target

    result = in_process("--cache", str(cache))

    assert result.returncode == 0, result.stderr[-2000:]
    puts = [r.key for r in proxy.requests if r.op == "PutObject" and r.status == 200 and r.key]
    small_keys = {key_of(small / f"new-{i}.tif") for i in range(3)}
    large_puts = [k for k in puts if k.startswith(key_of(large) + "/")]
    assert len(large_puts) == 120 and small_keys <= set(puts)
    last_small = max(puts.index(k) for k in small_keys)
    middle_of_large = puts.index(large_puts[len(large_puts) // 2])
    assert last_small < middle_of_large, (last_small, middle_of_large)


def _served(lanes_spec: list[tuple[int, list[int]]], taken: int) -> list[int]:
    """Fill lanes (priority, item sizes), take `taken` items by turns; the lane index of each."""
    order: list[int] = []

    async def main() -> None:
        lanes: Lanes[tuple[int, int]] = Lanes(lambda item: item[1])
        opened = [lanes.open(priority=p, limit=len(sizes)) for p, sizes in lanes_spec]
        for index, (lane, (_, sizes)) in enumerate(zip(opened, lanes_spec, strict=True)):
            for size in sizes:
                await lane.put((index, size))
        for _ in range(taken):
            item = await lanes.get()
            assert item is not None
            order.append(item[0])

    anyio.run(main)
    return order


def test_turns_are_counted_in_bytes_so_a_large_file_is_not_one_turn_like_a_small_one() -> None:
    mib = 1024 * 1024
    order = _served([(1, [64 * mib] * 3), (1, [16 * 1024] * 2000)], 1000)
    # Fair by bytes: while the large lane sends one 64 MiB file, the small lane sends about as many
    # bytes in 16 KiB files (with their request cost), not one file.
    first_large = order.index(0)
    assert 100 < first_large < 1000
    assert order.count(0) == 1


def test_priority_gives_a_target_that_many_times_the_bytes_per_turn() -> None:
    order = _served([(1, [100 * 1024] * 400), (3, [100 * 1024] * 400)], 400)
    low, high = order.count(0), order.count(1)
    assert 2.5 < high / low < 3.5, (low, high)


def test_priority_of_a_folder_or_a_root_is_read_and_each_subfolder_has_its_roots(tmp_path: Path) -> None:
    for name in ("plain", "urgent", "roots/a/x", "roots/b/y", "other/c/z"):
        (tmp_path / name).mkdir(parents=True)
    raw: dict[str, Any] = {
        "backup": {
            "folders": [
                str(tmp_path / "plain"),
                {"path": str(tmp_path / "urgent"), "priority": 5},
            ],
            "roots": [{"path": str(tmp_path / "roots"), "priority": 2}, str(tmp_path / "other")],
            "bucket_prefix": "t-",
        }
    }
    config = parse_config(raw, tmp_path / "config.json")
    priorities = {Path(t.path).relative_to(tmp_path).as_posix(): t.priority for t in discover_targets(config, {})}
    assert priorities == {"plain": 1, "urgent": 5, "roots/a": 2, "roots/b": 2, "other/c": 1}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('"folders": [{"path": "/tmp", "priority": 0}]', "backup.folders[0].priority is 0; give a whole number"),
        ('"folders": [{"path": "/tmp", "priority": "high"}]', "backup.folders[0].priority is 'high'"),
        ('"roots": [{"path": "/tmp", "priority": 1.5}]', "backup.roots[0].priority is 1.5"),
        ('"roots": [{"path": "/tmp", "bucket": "x"}]', "backup.roots[0] has unknown keys ['bucket']"),
    ],
)
def test_a_bad_priority_is_one_line_and_exit_2(tmp_path: Path, entry: str, expected: str) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "config.json").write_text('{"backup": {' + entry + "}}")
    (cache / "config.json").chmod(0o600)
    result = in_process("--cache", str(cache), "--dry-run")
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
