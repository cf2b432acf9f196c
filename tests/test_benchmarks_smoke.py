"""Smoke test of the benchmark harness (issue 5): a tiny run against moto, plus its pure parts.

The run asserts that the harness produces its Markdown and JSON reports and that every contender that
is installed ran and verified. No timing assertions: figures from a loaded CI machine mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# benchmarks/ is not an installed package: make it importable however pytest was started.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.datasets import PROFILES, Generator, key_for, listing  # noqa: E402
from benchmarks.proxy import classify  # noqa: E402
from benchmarks.runner import rotated  # noqa: E402

HARNESS_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--server",
            "moto",
            "--tiny",
            "--repeat",
            "1",
            "--no-install",
            "--no-proxy-overhead",
            "--warmup-runs",  # off by default with --tiny; on here so that path is run too
            "--workdir",
            str(tmp / "work"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_S,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "latest.md").exists() and (out / "latest.json").exists()
    doc: dict[str, Any] = json.loads((out / "latest.json").read_text())
    doc["_markdown"] = (out / "latest.md").read_text()
    return doc


def _runs(doc: dict[str, Any], contender: str) -> list[dict[str, Any]]:
    return [r for r in doc["runs"] if r["contender"] == contender]


@pytest.mark.slow
def test_report_has_a_table_per_data_set(tiny_report: dict[str, Any]) -> None:
    md = tiny_report["_markdown"]
    assert "| contender | result | wall s |" in md
    for title in (
        "Small files, full upload",
        "No-op rerun",
        "Incremental",
        "Large files",
        "Scanned pages",
        "Big tree, no-op",
    ):
        assert title in md
    assert "| CPU s/GB |" in md and "| minor faults/GB |" in md
    assert tiny_report["meta"]["server"]["kind"] == "moto"
    assert tiny_report["meta"]["warmup_runs"] is True and tiny_report["meta"]["warmup_gib"] == 0
    assert "one unmeasured run per contender first" in md
    # The warm-up runs are not figures: every run recorded is one of the measured data sets.
    assert not [r for r in tiny_report["runs"] if r["dataset"].startswith("warmup")]
    datasets = {row["dataset"] for row in tiny_report["summary"]}
    assert datasets >= {"small", "noop", "incremental", "large", "pages", "bignoop"}
    pages = next(r for r in tiny_report["summary"] if r["contender"] == "async-backup" and r["dataset"] == "pages")
    assert pages["runs_ok"] == 1 and pages["mb_per_s"] and pages["cpu_s_per_gb"] and pages["minor_faults_per_gb"]


@pytest.mark.slow
def test_every_installed_peer_ran_and_verified(tiny_report: dict[str, Any]) -> None:
    peers = {r["contender"] for r in tiny_report["runs"]} - {"async-backup"}
    assert "baseline-script" in peers  # needs only boto3, so it is always installed
    for name in sorted(peers):
        runs = _runs(tiny_report, name)
        if all(r["status"] == "skipped" for r in runs):
            assert all("not installed" in r["detail"] for r in runs)
            continue
        bad = [(r["dataset"], r["status"], r["detail"]) for r in runs if r["status"] != "ok"]
        assert not bad, f"{name}: {bad}"
        for r in runs:
            assert r["verification"]["ok"]
            assert r["verification"]["storage_classes"] == {"DEEP_ARCHIVE": r["verification"]["objects"]}


@pytest.mark.slow
def test_requests_are_counted_at_the_proxy(tiny_report: dict[str, Any]) -> None:
    by_ds = {r["dataset"]: r for r in _runs(tiny_report, "baseline-script")}
    small = by_ds["small"]
    assert small["requests"].get("PutObject") == small["files"]
    assert sum(by_ds["noop"]["requests"].values()) == 0  # its cache says nothing changed
    inc = by_ds["incremental"]
    per_kind = inc["changed_files"] // 3  # as many modified as deleted as added
    assert per_kind >= 1
    assert inc["requests"].get("DeleteObject") == per_kind  # one by one, as the old script does
    assert inc["requests"].get("PutObject") == 2 * per_kind
    large = by_ds["large"]
    assert large["requests"].get("UploadPart", 0) > 0  # 12 MiB files go multipart in boto3


@pytest.mark.slow
@pytest.mark.skipif(
    not (REPO / "async_backup" / "backup" / "pipeline.py").exists(), reason="async_backup not built yet"
)
def test_async_backup_ran_and_verified(tiny_report: dict[str, Any]) -> None:
    runs = _runs(tiny_report, "async-backup")
    bad = [(r["dataset"], r["status"], r["detail"]) for r in runs if r["status"] != "ok"]
    assert not bad
    small = next(r for r in tiny_report["summary"] if r["contender"] == "s5cmd" and r["dataset"] == "small")
    if small["runs_ok"]:
        assert small["ratio_wall"] is not None  # ratios to async-backup are filled in


def test_classify_s3_operations() -> None:
    h: dict[str, str] = {}
    assert classify("PUT", "/b/k/x.jpg", h) == "PutObject"
    assert classify("PUT", "/b/k?partNumber=3&uploadId=u", h) == "UploadPart"
    assert classify("POST", "/b/k?uploads", h) == "CreateMultipartUpload"
    assert classify("POST", "/b/k?uploadId=u", h) == "CompleteMultipartUpload"
    assert classify("DELETE", "/b/k?uploadId=u", h) == "AbortMultipartUpload"
    assert classify("POST", "/b?delete", h) == "DeleteObjects"
    assert classify("DELETE", "/b/k", h) == "DeleteObject"
    assert classify("GET", "/b?list-type=2&prefix=a%2F", h) == "ListObjects"
    assert classify("GET", "/b?versioning", h) == "GetBucketSubresource"
    assert classify("HEAD", "/b/k", h) == "HeadObject"
    assert classify("HEAD", "/b", h) == "HeadBucket"
    assert classify("PUT", "/b", h) == "CreateBucket"
    assert classify("PUT", "/b?versioning", h) == "PutBucketSubresource"
    assert classify("PUT", "/b/k", {"x-amz-copy-source": "/a/b"}) == "CopyObject"


def test_data_sets_are_deterministic_and_mutation_undoes(tmp_path: Path) -> None:
    a = Generator(tmp_path / "a", PROFILES["tiny"], seed=7)
    b = Generator(tmp_path / "b", PROFILES["tiny"], seed=7)
    ta, tb = a.ensure("small"), b.ensure("small")
    files_a = sorted(p.relative_to(ta) for p in ta.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(tb) for p in tb.rglob("*") if p.is_file())
    assert all((ta / p).read_bytes() == (tb / p).read_bytes() for p in files_a)
    before = listing(ta)
    m = a.mutate_small(rep=0)
    assert len(m.modified) == len(m.deleted) == len(m.added) >= 1
    after = listing(ta)
    assert len(after) == len(before)
    assert all(before[k] != after[k] for k in (key_for(p) for p in m.modified))
    a.restore_small()
    assert listing(ta) == before


def test_pages_are_seeded_and_spread_over_their_range(tmp_path: Path) -> None:
    sizes = PROFILES["full"]
    a = Generator(tmp_path / "a", sizes, seed=5)
    lengths = [n for _path, n in a._pages_files()]
    assert lengths == [n for _path, n in Generator(tmp_path / "b", sizes, seed=5)._pages_files()]
    assert len(lengths) == 250 and all(256 * 1024 <= n <= 48 * 1024 * 1024 for n in lengths)
    # log-uniform: sub-MiB pages and files over 16 MiB both make up a good share
    assert sum(n < 1024 * 1024 for n in lengths) > 25 and sum(n > 16 * 1024 * 1024 for n in lengths) > 25
    tree = Generator(tmp_path / "t", PROFILES["tiny"], seed=5).ensure("pages")
    assert len(listing(tree)) == PROFILES["tiny"].pages_files


def test_contenders_order_rotates_per_repetition() -> None:
    names = ["async-backup", "s5cmd", "rclone"]
    orders = [rotated(names, rep) for rep in range(3)]
    assert [o[0] for o in orders] == names  # each one first once in three repetitions
    assert all(sorted(o) == sorted(names) for o in orders)
    assert rotated(names, 3) == names and rotated([], 2) == []


LOST_CACHE_TIMEOUT_S = 240


@pytest.mark.slow
def test_lost_cache_cost_runs_every_scenario_without_an_upload(tmp_path: Path) -> None:
    """benchmarks.lost_cache_cost on a few files: every state is built, nothing is uploaded, and
    the ETag proof's reads are found (every file in the stale-copy and bare-bucket cases)."""
    out = tmp_path / "lost.json"
    files = 12
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.lost_cache_cost", "--files", str(files), "--big", "1", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=LOST_CACHE_TIMEOUT_S,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["scenario"][:3] for r in runs] == ["(a)", "(a)", "(b)", "(c)"]
    assert all(r["exit"] == 0 and r["uploads"] == 0 for r in runs), runs
    snapshot, no_snapshot, stale, bare = runs
    assert snapshot["requests"].get("GetObject") and not snapshot["requests"].get("HeadObject")
    assert no_snapshot["read_files"] == 0  # a year-old mtime is taken on time alone
    assert stale["read_files"] == files and stale["read_bytes"] >= 8 * 1024 * 1024
    assert bare["requests"]["HeadObject"] == files and bare["read_files"] == files
    assert "| scenario | seconds |" in res.stdout
