"""Per-key request rate limit: a fixed window per API key.

Fixed windows (aligned to wall-clock multiples of the window) are what every replica can agree
on without talking to each other, which is what makes the same counting work in Redis later.
Keys are stored as digests, never as the key itself.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

from . import errors
from .config import Settings


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class RateLimiter:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.enabled = settings.rate_limit_enabled
        self.window_s = settings.rate_limit_window_ms / 1000
        self.limit = settings.rate_limit_max
        self._clock = clock
        self._counts: dict[str, tuple[int, int]] = {}

    def check(self, key: str) -> None:
        """Count one request for ``key``; 429 with Retry-After when over the limit."""
        if not self.enabled:
            return
        now = self._clock()
        window = int(now // self.window_s)
        ident = key_id(key)
        current, count = self._counts.get(ident, (window, 0))
        if current != window:
            count = 0
        count += 1
        self._counts[ident] = (window, count)
        if len(self._counts) > 10_000:
            self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
        if count > self.limit:
            retry_after = math.ceil((window + 1) * self.window_s - now)
            raise errors.rate_limited(retry_after)
