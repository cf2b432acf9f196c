"""The live progress display, in-process: fed a fake terminal width, it never wraps; many
targets collapse into the busiest few; the last frame shows the final counts."""

from __future__ import annotations

import re
import time

import anyio
import pytest

from async_backup.report.progress import Frame, Progress
from async_backup.report.summary import TargetStats


def _targets(n: int) -> list[TargetStats]:
    stats = [TargetStats(name=f"/srv/archive/photographs/collection-{i:03d}/scans", bucket="b") for i in range(n)]
    for t in stats:
        t.planned_uploads = 4000
        t.planned_upload_bytes = 140 * 1024**3
        t.walk_finished = True
    return stats


@pytest.mark.parametrize("width", [40, 60, 80, 100, 160])
def test_every_line_fits_the_terminal(width: int):
    stats = _targets(3)
    frame = Frame()
    for second in (1.0, 2.0, 3.0):
        for i, t in enumerate(stats):
            t.bytes_uploaded += (i + 1) * 123_456_789
            t.new += 397 * (i + 1)
        lines = frame.render(stats, second, width, 24)
        assert lines and all(len(line) <= width for line in lines), lines
        assert all("\n" not in line for line in lines)
    # At 80 columns the counts and sizes are whole, not cut ("140.… 5.9"), in binary units only.
    lines = Frame().render(stats, 3.0, 80, 24)
    assert any("2,382/4,000 files" in line for line in lines), lines
    assert any("140.0 GiB" in line for line in lines), lines
    assert not any(re.search(r"\b[kMG]B\b", line) for line in lines), lines


def test_many_targets_collapse_into_the_busiest_and_one_line_for_the_rest():
    stats = _targets(40)
    frame = Frame()
    frame.render(stats, 1.0, 80, 24)
    for busy in (7, 31):
        stats[busy].bytes_uploaded += 500 * 1024**2
    lines = frame.render(stats, 2.0, 80, 24)
    assert len(lines) <= 24 // 3, lines  # the log keeps most of the screen
    assert any("collection-007" in line for line in lines) and any("collection-031" in line for line in lines)
    rest = [line for line in lines if "more targets" in line]
    assert len(rest) == 1 and rest[0].startswith(f"{40 - (len(lines) - 2)} more targets"), lines
    assert lines[-1].startswith("all 40 targets")


def test_the_last_frame_shows_the_final_counts(capsys: pytest.CaptureFixture[str]):
    stats = _targets(1)

    async def run_then_finish() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Progress(mode="live", interval_s=60).run, stats)
            await anyio.sleep(0.7)  # one frame drawn with 0 files done
            stats[0].new, stats[0].bytes_uploaded = 4000, stats[0].planned_upload_bytes
            stats[0].finished_at = time.time()
            tg.cancel_scope.cancel()  # the run ends between two redraws

    anyio.run(run_then_finish)
    out = capsys.readouterr()
    shown = out.err + out.out
    counts = re.findall(r"(\d[\d,]*)/(\d[\d,]*) files", shown)
    assert counts and counts[-1] == ("4,000", "4,000"), shown
