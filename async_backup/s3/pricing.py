"""What S3 charges: one price table, and the arithmetic from requests, bytes and objects to dollars.

Owns the published prices this tool knows (with the date they were read and where from), the
overrides from config.json's ``pricing`` section, which S3 operation falls in which billing class,
and the cost of requests, of a month of storage (Deep Archive's per-object overhead included) and
of a restore per tier. Every figure is an estimate: AWS bills by its own meters, in its own
rounding, and changes prices; taxes, free tiers and data transfer discounts are not modelled.

Pure: no clock, no I/O, no logging, and no import from this package but `wording`, so any module
may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..wording import counted

# AWS bills storage and retrieval per GB of 2^30 bytes ("GB-month"; S3 pricing page, footnotes).
BILLING_GB = 1024**3
KiB = 1024
# Deep Archive and Glacier Flexible Retrieval keep about 40 KB per object for their index: 32 KB
# billed at the archive rate and 8 KB (the object's name and metadata) at Standard rates.
# [S3 pricing page, footnotes; S3 user guide, "Storage classes for archiving objects"]
ARCHIVE_OVERHEAD_ARCHIVE_BYTES = 32 * KiB
ARCHIVE_OVERHEAD_STANDARD_BYTES = 8 * KiB
ARCHIVE_CLASSES = frozenset({"DEEP_ARCHIVE", "GLACIER"})

# Which request class each S3 operation is billed in [S3 pricing page, "Requests & data retrievals"].
# "write" is PUT, COPY, POST, LIST; "read" is GET, SELECT and all other requests (HEAD included);
# DELETE and CANCEL are free (DeleteObjects, a POST of DELETEs, and AbortMultipartUpload among them).
WRITE = "write"
READ = "read"
FREE = "free"
RETRIEVAL = "retrieval"  # RestoreObject: priced per tier, see Prices.retrieval_per_1000
_OBJECT_WRITES = frozenset(
    {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject"}
)
_FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload"})


def request_class(operation: str) -> str:
    """The billing class of an S3 operation name as botocore spells it (PutObject, HeadObject, ...)."""
    if operation in _FREE:
        return FREE
    if operation == "RestoreObject":
        return RETRIEVAL
    if operation in _OBJECT_WRITES or operation.startswith(("List", "Put", "Create")):
        return WRITE
    return READ


@dataclass(frozen=True, slots=True)
class Prices:
    """Dollar prices of one region. Per-1,000-request and per-GB figures, as AWS publishes them."""

    region: str
    read_on: str  # when the figures were read from their source
    source: str
    # PUT, COPY, POST, LIST requests per 1,000, by the storage class of the object written.
    # Bucket-level writes and LIST requests are billed at the STANDARD rate.
    write_per_1000: Mapping[str, float]
    read_per_1000: Mapping[str, float]  # GET, HEAD and other requests per 1,000, by storage class
    storage_per_gb_month: Mapping[str, float]
    # Deep Archive retrieval, per tier: per 1,000 RestoreObject requests and per GB restored.
    retrieval_per_1000: Mapping[str, float]
    retrieval_per_gb: Mapping[str, float]
    transfer_out_per_gb: float  # data transfer from S3 to the internet (a restore downloads)
    overridden: tuple[str, ...] = ()  # the keys config.json's "pricing" changed

    def write_price(self, storage_class: str) -> float:
        return self.write_per_1000.get(storage_class, self.write_per_1000["STANDARD"])

    def read_price(self, storage_class: str) -> float:
        return self.read_per_1000.get(storage_class, self.read_per_1000["STANDARD"])

    def storage_price(self, storage_class: str) -> float:
        return self.storage_per_gb_month.get(storage_class, self.storage_per_gb_month["STANDARD"])

    def describe(self) -> str:
        """One line for reports and cards: whose prices, from which table, read when and where."""
        changed = f"; changed in config.json: {', '.join(self.overridden)}" if self.overridden else ""
        table = f"{PRICE_TABLE_FILE} (read {self.read_on} from {self.source})"
        return f"{self.region} prices from {table}{changed}; estimates"


# Where the table's figures were read, and when: reports and cards cite both (`Prices.describe`).
PRICE_TABLE_FILE = "async_backup/s3/pricing.py"
PRICES_SOURCE = "the AWS S3 pricing page, https://aws.amazon.com/s3/pricing/"
PRICES_READ_ON = "2026-11"

# The one table. us-east-1 as published on the S3 pricing page (storage, requests and retrievals
# per storage class; data transfer out to the internet). Other regions differ (most are dearer):
# until their figures are added here, they are priced at these, and say so. Storage classes
# without figures here (STANDARD_IA, GLACIER, ...) are priced at STANDARD's: set them in
# config.json's "pricing" when you use them.
US_EAST_1 = Prices(
    region="us-east-1",
    read_on=PRICES_READ_ON,
    source=PRICES_SOURCE,
    write_per_1000={"STANDARD": 0.005, "DEEP_ARCHIVE": 0.05},
    read_per_1000={"STANDARD": 0.0004, "DEEP_ARCHIVE": 0.0004},
    storage_per_gb_month={"STANDARD": 0.023, "DEEP_ARCHIVE": 0.00099},
    retrieval_per_1000={"Bulk": 0.025, "Standard": 0.10},
    retrieval_per_gb={"Bulk": 0.0025, "Standard": 0.02},
    transfer_out_per_gb=0.09,
)
PRICE_TABLE: dict[str, Prices] = {US_EAST_1.region: US_EAST_1}
DEFAULT_REGION_PRICES = US_EAST_1

# config.json "pricing": {"write_per_1000": {"DEEP_ARCHIVE": 0.06}, "storage_per_gb_month": {...}, ...}
OVERRIDABLE_MAPS = (
    "write_per_1000",
    "read_per_1000",
    "storage_per_gb_month",
    "retrieval_per_1000",
    "retrieval_per_gb",
)
OVERRIDABLE_NUMBERS = ("transfer_out_per_gb",)


def prices_for(region: str, overrides: Mapping[str, Any] | None = None) -> Prices:
    """The table's prices for `region` (us-east-1's where the table has none), with overrides applied.

    `overrides` is config.json's validated ``pricing`` section: maps of class or tier to dollars
    replace single entries, numbers replace the figure. Any override makes the region's name say
    so, and `Prices.overridden` lists the keys."""
    base = PRICE_TABLE.get(region)
    if base is None:
        base = replace(DEFAULT_REGION_PRICES, region=f"{DEFAULT_REGION_PRICES.region} (no figures for {region} here)")
    if not overrides:
        return base
    changes: dict[str, Any] = {}
    for name in OVERRIDABLE_MAPS:
        if name in overrides:
            changes[name] = {**getattr(base, name), **overrides[name]}
    for name in OVERRIDABLE_NUMBERS:
        if name in overrides:
            changes[name] = float(overrides[name])
    return replace(base, overridden=tuple(sorted(overrides)), **changes)


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class RequestLine:
    """One kind of request sent: an operation, the storage class it was billed in, how many, what it costs."""

    operation: str
    storage_class: str  # "" for requests not tied to an object's class (bucket setup, LIST, HEAD)
    count: int
    usd: float

    @property
    def label(self) -> str:
        return f"{self.operation} ({self.storage_class})" if self.storage_class else self.operation


@dataclass(frozen=True, slots=True)
class RequestCost:
    lines: tuple[RequestLine, ...]
    prices: Prices
    estimated: bool = False  # a dry run's plan, not requests sent

    @property
    def count(self) -> int:
        return sum(line.count for line in self.lines)

    @property
    def usd(self) -> float:
        return sum(line.usd for line in self.lines)

    def brief(self, max_kinds: int = 4) -> str:
        """'10,003 S3 requests, $0.50 (PutObject (DEEP_ARCHIVE) 10,000 $0.50, ...)'"""
        what = "S3 requests its uploads and deletes would send" if self.estimated else "S3 requests"
        head = f"{self.count:,} {what}, {format_usd(self.usd)}"
        if not self.lines:
            return head
        shown = [f"{line.label} {line.count:,} {format_usd(line.usd)}" for line in self.lines[:max_kinds]]
        more = len(self.lines) - max_kinds
        if more > 0:
            shown.append(counted(more, "more kind"))
        return f"{head} ({', '.join(shown)})"

    def as_json(self) -> dict[str, Any]:
        return {
            "estimated": self.estimated,
            "total": self.count,
            "usd": round(self.usd, 6),
            "by_kind": [
                {
                    "operation": ln.operation,
                    "storage_class": ln.storage_class,
                    "count": ln.count,
                    "usd": round(ln.usd, 6),
                }
                for ln in self.lines
            ],
            "prices": self.prices.describe(),
        }


def request_usd(operation: str, storage_class: str, count: int, prices: Prices, *, tier: str = "Bulk") -> float:
    """What `count` requests of `operation` cost; `storage_class` is the class the object is written in."""
    kind = request_class(operation)
    if kind == FREE:
        return 0.0
    if kind == RETRIEVAL:
        return count / 1000 * prices.retrieval_per_1000[tier]
    if kind == WRITE:
        # Object writes bill at the object's class; bucket-level writes and LIST at STANDARD.
        rate = prices.write_price(storage_class or "STANDARD")
        return count / 1000 * rate
    return count / 1000 * prices.read_price(storage_class or "STANDARD")


def price_requests(counts: Mapping[tuple[str, str], int], prices: Prices, *, estimated: bool = False) -> RequestCost:
    """`counts` ((operation, storage class) -> requests) as priced lines, dearest first."""
    lines = [
        RequestLine(operation, storage_class, n, request_usd(operation, storage_class, n, prices))
        for (operation, storage_class), n in counts.items()
        if n
    ]
    lines.sort(key=lambda ln: (-ln.usd, -ln.count, ln.operation, ln.storage_class))
    return RequestCost(tuple(lines), prices, estimated)


def upload_requests(size_bytes: int, multipart_threshold_bytes: int, part_bytes: int) -> dict[str, int]:
    """The requests one file's upload sends: one PutObject, or create + one per part + complete."""
    if size_bytes < multipart_threshold_bytes:
        return {"PutObject": 1}
    parts = max(1, math.ceil(size_bytes / part_bytes))
    return {"CreateMultipartUpload": 1, "UploadPart": parts, "CompleteMultipartUpload": 1}


def planned_counts(plans: Iterable[Mapping[str, int]], storage_class: str) -> dict[tuple[str, str], int]:
    """Planned requests per target (operation -> n) as one count per (operation, billed class)."""
    total: dict[tuple[str, str], int] = {}
    for plan in plans:
        for operation, n in plan.items():
            key = (operation, storage_class if operation in _OBJECT_WRITES else "")
            total[key] = total.get(key, 0) + n
    return total


def part_size_cost_per_tib(part_bytes: int, storage_class: str, prices: Prices) -> tuple[int, float]:
    """(UploadPart requests, dollars) to upload 1 TiB in parts of `part_bytes`."""
    parts = math.ceil(1024**4 / part_bytes)
    return parts, parts / 1000 * prices.write_price(storage_class)


# ----------------------------------------------------------------------------- storage


@dataclass(frozen=True, slots=True)
class StorageCost:
    data_usd: float  # the bytes themselves at the class's rate
    overhead_usd: float  # Deep Archive's per-object index: 32 KB at the archive rate + 8 KB at STANDARD

    @property
    def usd(self) -> float:
        return self.data_usd + self.overhead_usd


def storage_month(size_bytes: int, objects: int, storage_class: str, prices: Prices) -> StorageCost:
    """What `objects` objects of `size_bytes` in total cost per month in `storage_class`."""
    data = size_bytes / BILLING_GB * prices.storage_price(storage_class)
    overhead = 0.0
    if storage_class in ARCHIVE_CLASSES:
        overhead = objects * ARCHIVE_OVERHEAD_ARCHIVE_BYTES / BILLING_GB * prices.storage_price(
            storage_class
        ) + objects * ARCHIVE_OVERHEAD_STANDARD_BYTES / BILLING_GB * prices.storage_price("STANDARD")
    return StorageCost(data, overhead)


# ----------------------------------------------------------------------------- restore


@dataclass(frozen=True, slots=True)
class RestoreCost:
    tier: str
    requests_usd: float  # RestoreObject requests at the tier's rate
    retrieval_usd: float  # per GB retrieved at the tier's rate
    copy_usd: float  # the restored copy, billed at STANDARD storage for the days it stays readable
    gets_usd: float  # GetObject and HeadObject requests
    transfer_usd: float  # the download out of AWS

    @property
    def usd(self) -> float:
        return self.requests_usd + self.retrieval_usd + self.copy_usd + self.gets_usd + self.transfer_usd


def restore_cost(
    tier: str,
    *,
    retrievals: int,
    archived_bytes: int,
    downloaded_bytes: int,
    read_requests: int,
    days: int,
    prices: Prices,
) -> RestoreCost:
    """The price of a restore at `tier`: `retrievals` RestoreObject requests for `archived_bytes`,
    a copy kept `days` days, `read_requests` HeadObject/GetObject and `downloaded_bytes` downloaded."""
    gb = archived_bytes / BILLING_GB
    return RestoreCost(
        tier=tier,
        requests_usd=retrievals / 1000 * prices.retrieval_per_1000[tier],
        retrieval_usd=gb * prices.retrieval_per_gb[tier],
        copy_usd=gb * prices.storage_price("STANDARD") * days / 30,
        gets_usd=read_requests / 1000 * prices.read_price("STANDARD"),
        transfer_usd=downloaded_bytes / BILLING_GB * prices.transfer_out_per_gb,
    )


def format_usd(usd: float) -> str:
    """Dollars to the cent; amounts under a cent to the millionth (a small run's $0.000522)."""
    if usd == 0 or usd >= 0.01:
        # Half a cent rounds up, as on a bill (float arithmetic would make $3.125 print as $3.12).
        cents = Decimal(repr(round(usd, 9))).quantize(Decimal("0.01"), ROUND_HALF_UP)
        return f"${cents:,}"
    if usd < 0.000001:
        return "<$0.000001"
    return "$" + f"{usd:.6f}".rstrip("0")


@dataclass(slots=True)
class RequestTally:
    """Requests sent, by (operation, storage class); filled by the S3 adapter, read after the run."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, operation: str, storage_class: str = "", n: int = 1) -> None:
        key = (operation, storage_class)
        self.counts[key] = self.counts.get(key, 0) + n
