"""The plan a dry run states for what it would send: how many nights it takes, what it costs.

Owns the arithmetic and the wording of that plan (a first upload of hundreds of TB, or any large
backlog): the bytes and files to send; the nights they take at a rate (the configured bandwidth
limit, else the measured rate of the last runs, else unknown) in the configured window (else in
days of continuous sending); the requests they send and the first month of their storage.

Pure: no clock, no I/O. Imports `summary`, `pricing` and `wording` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..s3.pricing import Prices, RequestCost, format_usd, storage_month
from ..wording import counted
from .summary import format_bytes

DAY_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SendRate:
    """Bytes per second and where the figure comes from, for the plan's wording."""

    bytes_per_s: float
    source: str  # "tuning.bandwidth", "the measured rate of the last 3 runs"


def nights_needed(total_bytes: int, rate: SendRate, window_s: float | None) -> int:
    """Runs of `window_s` seconds (days of continuous sending without a window) to send `total_bytes`."""
    per_night = rate.bytes_per_s * (window_s if window_s else DAY_S)
    return max(1, math.ceil(total_bytes / per_night)) if total_bytes > 0 else 0


def plan_lines(
    files: int,
    total_bytes: int,
    *,
    rate: SendRate | None,
    window_s: float | None,
    requests: RequestCost | None,
    storage_class: str,
    prices: Prices,
) -> list[str]:
    """The plan, a few lines for stdout: what, how long, what it costs."""
    if files <= 0:
        return []
    lines = [f"to send: {counted(files, 'file')}, {format_bytes(total_bytes)}"]
    if rate is None or rate.bytes_per_s <= 0:
        lines.append(
            "how long: the rate is unknown (no tuning.bandwidth, and no run report of a run that uploaded "
            "something): set tuning.bandwidth, or run once with a window (--max-duration) and ask again"
        )
    else:
        speed = f"{format_bytes(int(rate.bytes_per_s))}/s ({rate.source})"
        n = nights_needed(total_bytes, rate, window_s)
        if window_s:
            per_night = format_bytes(int(rate.bytes_per_s * window_s))
            lines.append(
                f"how long: {counted(n, 'night')} at {speed} in a window of {_hours(window_s)} ({per_night} a night)"
            )
        else:
            lines.append(f"how long: {counted(n, 'day')} of continuous sending at {speed} (no window set)")
    storage = storage_month(total_bytes, files, storage_class, prices)
    cost = f"cost: first month of storage {format_usd(storage.usd)} ({storage_class}"
    cost += ", per-object overhead included)" if storage.overhead_usd else ")"
    if requests is not None:
        cost += f"; {requests.count:,} S3 requests {format_usd(requests.usd)}"
    lines.append(cost)
    return lines


def _hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest:02d} min" if hours else f"{rest} min"
