"""Figures from run records: medians per contender and data set, ratios to async-backup, Markdown + JSON.

Owns: aggregation (medians over the repetitions that succeeded), grouping S3 operations into the
table's columns, and writing ``bench-<UTC time>.md/.json`` plus ``latest.md/.json`` into the output
dir. Pure apart from the final write; imports nothing from the harness but the record type.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.runner import RunRecord

REFERENCE = "async-backup"
DATASET_ORDER = ("small", "noop", "incremental", "large", "pages", "bigfull", "bignoop")
DATASET_TITLES = {
    "small": "Small files, full upload",
    "noop": "No-op rerun of small (nothing changed)",
    "incremental": "Incremental: 1 % modified, 1 % deleted, 1 % added",
    "large": "Large files, full upload",
    "pages": "Scanned pages (hundreds of KiB to tens of MiB), full upload",
    "bigfull": "Big tree, initial full upload (setup of the big no-op; one run)",
    "bignoop": "Big tree, no-op rerun",
}
# Table columns: S3 operations grouped the way the issue asks (PUT, parts, GET/HEAD, LIST, DELETE).
GROUPS: dict[str, tuple[str, ...]] = {
    "PUT": ("PutObject", "CopyObject"),
    "parts": (
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListParts",
    ),
    "GET/HEAD": (
        "GetObject",
        "HeadObject",
        "HeadBucket",
        "GetBucketLocation",
        "GetObjectSubresource",
        "GetBucketSubresource",
    ),
    "LIST": ("ListObjects", "ListObjectVersions", "ListMultipartUploads", "ListBuckets"),
    "DELETE": ("DeleteObject", "DeleteObjects"),
}
UPLOAD_OPS = ("PutObject", "UploadPart")
# Data sets whose run uploads the whole tree: without the proxy (--tls), MB/s is the tree's bytes / wall.
FULL_UPLOADS = frozenset({"small", "large", "pages", "bigfull"})


def group_of(op: str) -> str:
    for group, ops in GROUPS.items():
        if op in ops:
            return group
    return "other"


@dataclass
class Row:
    contender: str
    dataset: str
    result: str
    runs_ok: int
    runs: int
    files: int | None = None
    wall_s: float | None = None
    files_per_s: float | None = None
    mb_per_s: float | None = None
    cpu_s: float | None = None
    cpu_s_per_1k_files: float | None = None
    cpu_s_per_gb: float | None = None  # client CPU per 10^9 bytes uploaded
    minor_faults_per_gb: float | None = None
    peak_rss_mib: float | None = None
    requests_total: float | None = None
    requests_by_group: dict[str, float] = field(default_factory=dict)
    requests_by_op: dict[str, float] = field(default_factory=dict)
    proxy_cpu_s: float | None = None
    ratio_wall: float | None = None
    ratio_cpu_per_file: float | None = None
    ratio_requests: float | None = None


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _row(contender: str, dataset: str, recs: Sequence[RunRecord]) -> Row:
    ok = [r for r in recs if r.ok]
    if ok:
        result = "ok" if len(ok) == len(recs) else f"ok {len(ok)}/{len(recs)}"
    else:
        first = recs[0]
        skipped = first.status == "skipped"
        result = f"skipped ({first.detail})" if skipped else f"{first.status.upper()}: {first.detail}"
    row = Row(contender, dataset, result, len(ok), len(recs))
    if not ok:
        return row
    row.files = ok[0].files
    row.wall_s = _median(r.wall_s for r in ok)
    row.files_per_s = _median(r.files / r.wall_s for r in ok if r.wall_s)
    row.mb_per_s = _median(_uploaded(r) / 1e6 / r.wall_s for r in ok if r.wall_s)
    row.cpu_s_per_gb = _median(((r.user_s or 0) + (r.sys_s or 0)) * 1e9 / _uploaded(r) for r in ok if _uploaded(r))
    row.minor_faults_per_gb = _median(
        (r.minor_faults or 0) * 1e9 / _uploaded(r) for r in ok if _uploaded(r) and r.minor_faults is not None
    )
    row.cpu_s = _median((r.user_s or 0) + (r.sys_s or 0) for r in ok)
    row.cpu_s_per_1k_files = _median(((r.user_s or 0) + (r.sys_s or 0)) * 1000 / r.files for r in ok if r.files)
    row.peak_rss_mib = _median((r.maxrss_kib or 0) / 1024 for r in ok)
    row.peak_rss_mib = _median((r.maxrss_kib or 0) / 1024 for r in ok)
    if not all(r.counted for r in ok):
        row.proxy_cpu_s = None
        return row
    row.requests_total = _median(sum(r.requests.values()) for r in ok)
    ops = sorted({op for r in ok for op in r.requests})
    row.requests_by_op = {op: _median(r.requests.get(op, 0) for r in ok) or 0 for op in ops}
    groups = [*GROUPS, "other"]
    row.requests_by_group = {
        g: _median(sum(n for op, n in r.requests.items() if group_of(op) == g) for r in ok) or 0 for g in groups
    }
    row.proxy_cpu_s = _median(r.proxy_cpu_s for r in ok)
    return row


def _uploaded(r: RunRecord) -> int:
    """Body bytes of PutObject and UploadPart at the proxy, or without it the tree of a full upload."""
    if r.counted:
        return sum(r.body_bytes.get(op, 0) for op in UPLOAD_OPS)
    return r.tree_bytes if r.dataset in FULL_UPLOADS else 0


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def summarize(records: Sequence[RunRecord]) -> list[Row]:
    keys: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        keys.setdefault((r.dataset, r.contender), []).append(r)
    rows = [_row(c, d, recs) for (d, c), recs in keys.items()]
    refs = {row.dataset: row for row in rows if row.contender == REFERENCE and row.runs_ok}
    for row in rows:
        ref = refs.get(row.dataset)
        if ref is not None and row.runs_ok:
            row.ratio_wall = _ratio(row.wall_s, ref.wall_s)
            row.ratio_cpu_per_file = _ratio(row.cpu_s_per_1k_files, ref.cpu_s_per_1k_files)
            row.ratio_requests = _ratio(row.requests_total, ref.requests_total)
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    return sorted(rows, key=lambda r: order.get(r.dataset, 99))


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _fmt_n(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}" if v == int(v) else f"{v:,.1f}"


def markdown(rows: Sequence[Row], meta: dict[str, Any], overhead: dict[str, Any] | None) -> str:
    lines = [
        "# async-backup benchmark",
        "",
        f"- when: {meta['started']} – {meta['finished']} (UTC); profile `{meta['profile']}`, scale "
        f"{meta['scale']}, seed {meta['seed']}, {meta['repeat']} repetition(s), medians of the successful ones",
        f"- server: {meta['server']['kind']} at {meta['server']['endpoint']} "
        f"(checksums {meta['server']['checksum_calculation']}); requests counted at "
        f"{'the recording proxy' if meta['proxy'] else 'nowhere (--no-proxy)'}; the peers' buckets "
        + ("versioned, as async-backup's" if meta.get("peers_versioned") else "plain (BENCH_VERSIONED_PEERS=0)"),
        f"- server warm-up before measuring: {meta.get('warmup_gib', 0):g} GiB written and dropped"
        + (f" ({meta.get('warmup_s', 0):g} s)" if meta.get("warmup_gib") else "")
        + ("; one unmeasured run per contender first (tiny small and large trees)" if meta.get("warmup_runs") else ""),
        f"- machine: {meta['machine']}",
        "- ratios (×) are contender / async-backup on the same data set: wall time, CPU per file, requests",
        "",
    ]
    for name, version in meta["versions"].items():
        lines.append(f"  - {name}: {version}")
    lines.append("")
    header = (
        "| contender | result | wall s | files/s | MB/s | CPU s/1k files | CPU s/GB | peak RSS MiB | "
        "minor faults/GB | PUT | parts | "
        "GET/HEAD | LIST | DELETE | other | requests | × wall | × CPU/file | × req |"
    )
    sep = "|" + "---|" * header.count("|")
    sep = sep[: -len("---|")]
    by_ds: dict[str, list[Row]] = {}
    for row in rows:
        by_ds.setdefault(row.dataset, []).append(row)
    for ds, ds_rows in by_ds.items():
        files = next((r.files for r in ds_rows if r.files), None)
        lines += [f"## {DATASET_TITLES.get(ds, ds)}" + (f" ({files:,} files)" if files else ""), "", header, sep]
        for r in ds_rows:
            g = r.requests_by_group
            cells = [
                r.contender,
                r.result.replace("|", "/")[:120],
                _fmt(r.wall_s),
                _fmt(r.files_per_s, 0),
                _fmt(r.mb_per_s, 1) if r.mb_per_s else "–",
                _fmt(r.cpu_s_per_1k_files, 3),
                _fmt(r.cpu_s_per_gb, 2),
                _fmt(r.peak_rss_mib, 0),
                _fmt(r.minor_faults_per_gb, 0),
            ]
            cells += [_fmt_n(g.get(k)) if r.requests_by_group else "–" for k in (*GROUPS, "other")]
            cells += [_fmt_n(r.requests_total), _fmt(r.ratio_wall), _fmt(r.ratio_cpu_per_file), _fmt(r.ratio_requests)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if overhead:
        lines += ["## Recording proxy overhead", ""]
        if "error" in overhead:
            lines.append(f"not measured: {overhead['error']}")
        else:
            lines.append(
                f"{overhead['contender']}, full upload of small: through the proxy "
                f"{overhead['via_proxy_wall_s']} s, direct {overhead['direct_wall_s']} s "
                f"(medians: {overhead['overhead_pct']:+.1f} %); proxy CPU {overhead['proxy_cpu_s']} s."
            )
        lines.append("")
    return "\n".join(lines)


def write(
    out_dir: Path,
    stamp: str,
    rows: Sequence[Row],
    records: Sequence[RunRecord],
    meta: dict[str, Any],
    overhead: dict[str, Any] | None,
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, meta, overhead)
    doc = {
        "meta": meta,
        "summary": [asdict(r) for r in rows],
        "runs": [r.as_dict() for r in records],
        "proxy_overhead": overhead,
    }
    md_path = out_dir / f"bench-{stamp}.md"
    json_path = out_dir / f"bench-{stamp}.json"
    md_path.write_text(md)
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=False))
    (out_dir / "latest.md").write_text(md)
    (out_dir / "latest.json").write_text(json.dumps(doc, indent=2))
    return md_path, json_path
