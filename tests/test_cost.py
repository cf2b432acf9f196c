"""What runs, storage and restores cost: the arithmetic against hand calculations, the prices'
overrides from config.json, and the requests a real run reports against what reached S3."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process, last_report, make_tree, run_cli, write_config
from s3proxy import ProxyServer

import async_backup
from async_backup.errors import ConfigError
from async_backup.s3.pricing import (
    US_EAST_1,
    format_usd,
    part_size_cost_per_tib,
    price_requests,
    prices_for,
    request_class,
    restore_cost,
    storage_month,
    upload_requests,
)
from async_backup.settings.config import parse_config

MiB = 1024 * 1024
GB = 1024**3  # AWS's billing GB


# ----------------------------------------------------------------------------- by hand


def test_ten_thousand_puts_to_deep_archive_cost_fifty_cents() -> None:
    cost = price_requests({("PutObject", "DEEP_ARCHIVE"): 10_000}, US_EAST_1)
    assert cost.count == 10_000
    assert cost.usd == pytest.approx(0.50)  # 10 x $0.05 per 1,000
    # The same to STANDARD: a tenth; DELETE is free; a HEAD is a GET-class request.
    standard = price_requests({("PutObject", "STANDARD"): 10_000, ("DeleteObjects", ""): 7}, US_EAST_1)
    assert standard.usd == pytest.approx(0.05)
    heads = price_requests({("HeadObject", ""): 1_000_000}, US_EAST_1)
    assert heads.usd == pytest.approx(0.40)  # 1,000 x $0.0004
    # Bucket setup and LIST are PUT-class requests at the STANDARD rate.
    assert price_requests({("ListObjectsV2", ""): 1000, ("CreateBucket", ""): 1000}, US_EAST_1).usd == pytest.approx(
        0.01
    )
    assert [request_class(op) for op in ("UploadPart", "AbortMultipartUpload", "GetObject", "RestoreObject")] == [
        "write",
        "free",
        "read",
        "retrieval",
    ]


def test_one_tib_in_a_million_objects_for_a_month_by_hand() -> None:
    cost = storage_month(1024 * GB, 1_000_000, "DEEP_ARCHIVE", US_EAST_1)
    data = 1024 * 0.00099  # 1,024 GB at $0.00099 = $1.01376
    archive_overhead = 1_000_000 * 32 * 1024 / GB * 0.00099  # 30.52 GB at the archive rate = $0.03021
    standard_overhead = 1_000_000 * 8 * 1024 / GB * 0.023  # 7.63 GB at STANDARD = $0.17548
    assert cost.data_usd == pytest.approx(data) == pytest.approx(1.01376)
    assert cost.overhead_usd == pytest.approx(archive_overhead + standard_overhead)
    assert cost.usd == pytest.approx(1.21945, abs=1e-5)
    # STANDARD has no per-object overhead.
    assert storage_month(1024 * GB, 1_000_000, "STANDARD", US_EAST_1).usd == pytest.approx(1024 * 0.023)


def test_a_multipart_upload_bills_one_request_per_part() -> None:
    assert upload_requests(10 * MiB, 16 * MiB, 16 * MiB) == {"PutObject": 1}
    assert upload_requests(100 * MiB, 16 * MiB, 16 * MiB) == {
        "CreateMultipartUpload": 1,
        "UploadPart": 7,
        "CompleteMultipartUpload": 1,
    }
    # 1 TiB: 65,536 parts of 16 MiB = $3.28 at $0.05 per 1,000; 32 MiB halves it, 64 MiB quarters it.
    assert part_size_cost_per_tib(16 * MiB, "DEEP_ARCHIVE", US_EAST_1) == (65_536, pytest.approx(3.2768))
    assert part_size_cost_per_tib(32 * MiB, "DEEP_ARCHIVE", US_EAST_1) == (32_768, pytest.approx(1.6384))
    assert part_size_cost_per_tib(64 * MiB, "DEEP_ARCHIVE", US_EAST_1) == (16_384, pytest.approx(0.8192))


def test_a_restore_per_tier_by_hand() -> None:
    # 10,000 archived objects, 100 GB, kept 7 days, downloaded once (10,000 GetObject).
    args: dict[str, Any] = {
        "retrievals": 10_000,
        "archived_bytes": 100 * GB,
        "downloaded_bytes": 100 * GB,
        "read_requests": 10_000,
        "days": 7,
        "prices": US_EAST_1,
    }
    bulk = restore_cost("Bulk", **args)
    assert bulk.requests_usd == pytest.approx(0.25)  # 10 x $0.025
    assert bulk.retrieval_usd == pytest.approx(0.25)  # 100 GB x $0.0025
    assert bulk.copy_usd == pytest.approx(100 * 0.023 * 7 / 30)  # the copy at STANDARD for 7 days
    assert bulk.gets_usd == pytest.approx(0.004)
    assert bulk.transfer_usd == pytest.approx(9.0)  # 100 GB out at $0.09
    standard = restore_cost("Standard", **args)
    assert standard.requests_usd == pytest.approx(1.0) and standard.retrieval_usd == pytest.approx(2.0)
    assert standard.usd - bulk.usd == pytest.approx(0.75 + 1.75)


def test_amounts_are_shown_to_the_cent_and_small_ones_to_the_millionth() -> None:
    assert format_usd(0.5) == "$0.50"
    assert format_usd(1234.567) == "$1,234.57"
    assert format_usd(0.000522) == "$0.000522"
    assert format_usd(0) == "$0.00"
    assert format_usd(1e-9) == "<$0.000001"


# ----------------------------------------------------------------------------- config.json "pricing"


def config_with(pricing: Any) -> Any:
    return parse_config({"backup": {"folders": ["/srv"]}, "pricing": pricing}, Path("/c/config.json"))


def test_pricing_in_config_overrides_single_entries_and_says_so() -> None:
    config = config_with({"write_per_1000": {"DEEP_ARCHIVE": 0.06}, "transfer_out_per_gb": 0})
    prices = prices_for("us-east-1", config.pricing)
    assert prices.write_price("DEEP_ARCHIVE") == 0.06
    assert prices.write_price("STANDARD") == 0.005  # the rest of the table stays
    assert prices.transfer_out_per_gb == 0.0
    assert price_requests({("PutObject", "DEEP_ARCHIVE"): 10_000}, prices).usd == pytest.approx(0.60)
    assert "changed in config.json: transfer_out_per_gb, write_per_1000" in prices.describe()
    # A region without figures here is priced at us-east-1's, and says so.
    assert prices_for("eu-central-1").describe().startswith("us-east-1 (no figures for eu-central-1 here) prices")


def test_prices_cite_the_table_in_the_package_and_when_it_was_read() -> None:
    assert US_EAST_1.describe() == (
        "us-east-1 prices from async_backup/s3/pricing.py "
        "(read 2026-11 from the AWS S3 pricing page, https://aws.amazon.com/s3/pricing/); estimates"
    )
    assert (Path(async_backup.__file__).parent.parent / "async_backup/s3/pricing.py").is_file()


def test_the_package_cites_no_file_it_does_not_ship() -> None:
    """FACTS.md is the developers' notes, not part of the product: no text of the package names it."""
    package = Path(async_backup.__file__).parent
    citing = [str(p.relative_to(package)) for p in package.rglob("*.py") if "FACTS" in p.read_text(encoding="utf-8")]
    assert citing == []


@pytest.mark.parametrize(
    ("pricing", "expected"),
    [
        ({"put": 1}, "pricing.put is not a known price"),
        ({"write_per_1000": 0.05}, "pricing.write_per_1000 must be an object"),
        ({"write_per_1000": {"DEEP": 0.05}}, "pricing.write_per_1000.DEEP is unknown"),
        ({"retrieval_per_gb": {"Expedited": 0.03}}, "pricing.retrieval_per_gb.Expedited is unknown"),
        ({"storage_per_gb_month": {"STANDARD": -1}}, "pricing.storage_per_gb_month.STANDARD must be a price"),
        ({"transfer_out_per_gb": "0.09"}, "pricing.transfer_out_per_gb must be a price"),
        ([1], '"pricing" must be a JSON object'),
    ],
)
def test_bad_pricing_is_a_one_line_config_error(pricing: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(pricing)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- a real run


def test_the_report_and_summary_line_give_the_requests_s3_received_and_their_price(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    data = tmp_path / "data"
    make_tree(data, {**{f"small-{i}.jpg": b"s" * i for i in range(7)}, "big.tif": os.urandom(12 * MiB + 1)})
    cache = tmp_path / "cache"
    write_config(
        cache,
        proxy.url,
        folders=[str(data)],
        bucket_prefix=bucket_prefix,
        tuning={"multipart_threshold_mib": 5, "part_size_mib": 5},
    )

    dry = run_cli("--cache", str(cache), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert proxy.wait_done() == []
    # 7 PutObject + create, 3 parts, complete, all at $0.05 per 1,000: 12 requests = $0.0006.
    assert "12 S3 requests its uploads and deletes would send, $0.0006 " in dry.stderr, dry.stderr
    assert "UploadPart (DEEP_ARCHIVE) 3 $0.00015" in dry.stderr

    result = run_cli("--cache", str(cache))
    assert result.returncode == 0, result.stderr
    sent = Counter(r.op for r in proxy.wait_done())
    requests = last_report(cache)["requests"]
    reported: Counter[str] = Counter()
    for line in requests["by_kind"]:
        reported[line["operation"]] += line["count"]
    assert reported == sent  # every request that reached S3, and no other
    assert requests["total"] == sum(sent.values())
    by_kind = {(ln["operation"], ln["storage_class"]): ln for ln in requests["by_kind"]}
    assert by_kind[("PutObject", "DEEP_ARCHIVE")]["count"] == 7
    assert by_kind[("UploadPart", "DEEP_ARCHIVE")]["count"] == 3
    assert by_kind[("PutObject", "STANDARD")]["count"] == 2  # the cache snapshot and the log
    # The total by hand: object writes at $0.05, other PUT/LIST at $0.005, GET-class at $0.0004 per 1,000.
    archive = sum(n for (op, cls), ln in by_kind.items() if cls == "DEEP_ARCHIVE" for n in [ln["count"]])
    reads = sum(ln["count"] for (op, _), ln in by_kind.items() if op.startswith(("Get", "Head")))
    free = sum(ln["count"] for (op, _), ln in by_kind.items() if op.startswith(("Delete", "Abort")))
    other = requests["total"] - archive - reads - free
    assert archive == 12
    assert requests["usd"] == pytest.approx(archive * 0.05e-3 + other * 0.005e-3 + reads * 0.0004e-3, abs=1e-6)
    assert "us-east-1 (no figures for eu-central-1 here)" in requests["prices"]
    line = next(ln for ln in result.stderr.splitlines() if " done: " in ln)
    assert re.search(rf"; {requests['total']} S3 requests, \$0\.000\d+ \(PutObject \(DEEP_ARCHIVE\) 7 ", line), line


def test_status_gives_objects_bytes_and_monthly_price_per_target_without_a_request(
    tmp_path: Path, proxy: ProxyServer, bucket_prefix: str
) -> None:
    import sqlite3

    data = tmp_path / "data"
    sizes = {f"img-{i}.jpg": 1000 * (i + 1) for i in range(8)}
    make_tree(data, {name: b"x" * n for name, n in sizes.items()})
    cache = tmp_path / "cache"
    write_config(cache, proxy.url, folders=[str(data)], bucket_prefix=bucket_prefix)
    assert run_cli("--cache", str(cache)).returncode == 0
    proxy.wait_done()
    proxy.clear()
    conn = sqlite3.connect(cache / "async-backup.db")
    with conn:  # a row adopted from the old script's cache: no size known
        bucket = conn.execute("SELECT bucket FROM files LIMIT 1").fetchone()[0]
        conn.execute(
            "INSERT INTO files(bucket, path, size, mtime_ns) VALUES (?, ?, NULL, 1)", (bucket, b"/old/adopted.jpg")
        )
    conn.close()

    result = in_process("--cache", str(cache), "status", "--json")  # local files only: no interpreter of its own
    assert result.returncode == 0, result.stderr
    assert proxy.wait_done() == []  # the cache and the report only
    status = json.loads(result.stdout)
    (target,) = status["targets"]
    assert target["target"] == str(data) and target["bucket"] == bucket
    assert (target["objects"], target["bytes"], target["objects_of_unknown_size"]) == (9, 36_000, 1)
    # By hand: 36,000 bytes at $0.00099 per GB-month, 9 objects x 32 KiB at the same, 9 x 8 KiB at $0.023.
    by_hand = 36_000 / GB * 0.00099 + 9 * 32 * 1024 / GB * 0.00099 + 9 * 8 * 1024 / GB * 0.023
    assert target["usd_per_month"] == pytest.approx(by_hand, abs=1e-9)
    assert target["last_run"]["new"] == 8 and target["last_run"]["failed"] == 0
    assert status["last_run"]["succeeded"] is True and status["last_run"]["requests"]["total"] > 8

    table = in_process("--cache", str(cache), "status")
    assert table.returncode == 0, table.stderr
    assert str(data) in table.stdout and "9 (1 of unknown size)" in table.stdout
    assert "1 object adopted from the old script's cache has no size recorded" in table.stdout
    assert "last run: started " in table.stdout and ", succeeded; report " in table.stdout
    assert "estimates" in table.stdout
