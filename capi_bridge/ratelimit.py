"""The endpoint's per-client rate limit: a token bucket per client key, in bounded memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

#: Clients whose rate-limit buckets are remembered; the least recently seen are forgotten.
MAX_TRACKED_CLIENTS = 10_000


class RateLimiter:
    """A token bucket per client key: ``per_minute`` requests, refilled continuously.

    Memory is bounded: past ``max_clients`` keys the least recently seen is dropped (an
    attacker spraying addresses only resets buckets of clients that went quiet).
    """

    def __init__(
        self,
        per_minute: int,
        *,
        max_clients: int = MAX_TRACKED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_time(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait
