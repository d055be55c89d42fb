"""The endpoint's per-client rate limit: a token bucket of *events* per client, in bounded memory.

README promises ``rate_limit`` events per minute, and a post carries up to 20: a bucket that
counted requests let one address store 20 times the limit. Every request costs at least one
token (a token refresh, a consent message, a refused post: each costs parsing) and a post of
``n`` events costs ``n``. Clients are keyed by address, an IPv6 client by its /64 (one
household or server gets a whole /64, so rotating addresses inside it buys nothing).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from capi_bridge.bounded import MAX_KEYS, Recent

#: Clients whose rate-limit buckets are remembered; the least recently seen are forgotten.
MAX_TRACKED_CLIENTS = MAX_KEYS

_Bucket = tuple[float, float]  # tokens left, when last counted


def client_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str:
    """The key a client's limits are counted under: its IPv4 address, its IPv6 /64."""
    if ip is None:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class RateLimiter:
    """A token bucket per client key: ``per_minute`` events, refilled continuously.

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
        self._buckets: Recent[_Bucket] = Recent(max_clients)

    def wait_time(self, key: str, cost: int = 1) -> float:
        """0 when ``cost`` events may go ahead (and are counted), else seconds until they may.

        A cost above the bucket's size is taken from a full bucket (a post of 20 events under a
        limit of 10 a minute goes through once a minute, not never)."""
        now = self._clock()
        need = min(float(cost), self.capacity)

        def step(old: _Bucket | None) -> tuple[_Bucket, float]:
            tokens, last = old if old is not None else (self.capacity, now)
            tokens = min(self.capacity, tokens + max(0.0, now - last) * self.rate)
            if tokens >= need:
                return (tokens - need, now), 0.0
            return (tokens, now), (need - tokens) / self.rate

        return self._buckets.change(key, step)
