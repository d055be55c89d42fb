"""Rows taken on the request path while the outbox was unavailable, waiting in memory for it.

A page or a checkout must never fail, nor wait long, because the outbox is locked, read-only,
full or its database is down (``Bridge.submit``). Such rows wait here, in this process, and
the dispatcher writes them as soon as the store takes writes again. The buffer is bounded
(anonymous traffic must not grow memory without bound): past ``limit`` rows a new event is
dropped and counted as lost, and a WARNING says so at most once per ``LOG_EVERY`` seconds,
with counts only (no event data). Rows here are not durable: a crash loses them, which is the
price of keeping the page up; ``Bridge.enqueue`` keeps its all-or-nothing, durable contract.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from capi_bridge.delivery.store import NewRow
from capi_bridge.observations import Tag

logger = logging.getLogger("capi_bridge.delivery")

#: Rows kept in memory at most (about 2 KB each: 10,000 rows is ~20 MB at worst).
LIMIT = 10_000
#: At most one WARNING per this many seconds about buffering or losing rows.
LOG_EVERY = 60.0


class Pending(NamedTuple):
    """One call's rows, stored together when the outbox is back (all or nothing)."""

    rows: Sequence[NewRow]
    now: float
    hold: str | None
    tags: Sequence[Tag]


class RowBuffer:
    """A bounded FIFO of :class:`Pending` calls; thread-safe."""

    def __init__(self, limit: int = LIMIT, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.lost = 0
        self._rows = 0
        self._items: deque[Pending] = deque()
        self._lock = threading.Lock()
        self._clock = clock
        self._next_log = 0.0
        self._lost_logged = 0

    def __len__(self) -> int:
        """Rows waiting (one per pixel an event goes to)."""
        return self._rows

    def add(self, item: Pending, cause: BaseException) -> bool:
        """Keep ``item`` for later; False (and counted lost) when the buffer is full."""
        with self._lock:
            kept = self._rows + len(item.rows) <= self.limit
            if kept:
                self._items.append(item)
                self._rows += len(item.rows)
            else:
                self.lost += len(item.rows)
            waiting, lost = self._rows, self.lost
            log = self._clock() >= self._next_log
            if log:
                self._next_log = self._clock() + LOG_EVERY
                new_losses, self._lost_logged = lost - self._lost_logged, lost
        if log:
            logger.warning(
                "capi-bridge: the outbox is unavailable (%s); %d events wait in this process's "
                "memory until it is back%s",
                type(cause).__name__,
                waiting,
                f", {new_losses} lost because that buffer is full (limit {self.limit})"
                if new_losses
                else "",
            )
        return kept

    def first(self) -> Pending | None:
        """The oldest call, left in place until :meth:`stored` (so ``flush()`` keeps waiting
        for it while it is being written)."""
        with self._lock:
            return self._items[0] if self._items else None

    def stored(self, item: Pending) -> None:
        """``item`` (the oldest) is in the outbox now."""
        with self._lock:
            if self._items and self._items[0] is item:
                self._items.popleft()
                self._rows -= len(item.rows)
