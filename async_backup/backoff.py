"""How long to wait before trying again: exponential delays, capped, with full jitter if asked.

Owns the arithmetic both retry loops use: DirectPut's PUT (botocore's standard mode: full
jitter, first delay up to 1 s, at most 20 s) and the Teams sender (no jitter, doubling from its
first delay, Retry-After taking precedence). The loops stay with their callers: each decides what
is retryable and what one failure means. Pure: imports nothing of the package, no I/O, no sleep.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float  # the wait before the second attempt (its upper bound, with jitter)
    cap_s: float = math.inf
    jitter: bool = False  # full jitter: uniform in [0, delay), as botocore's standard mode

    def delay_s(self, retry: int) -> float:
        """The wait before retry number `retry` (1 = before the second attempt)."""
        delay = min(self.cap_s, self.first_s * 2.0 ** (retry - 1))
        return random.random() * delay if self.jitter else delay
