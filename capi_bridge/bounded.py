"""Per-key state for the most recently seen keys only: the one shape of memory anonymous input
may grow.

The mirror endpoint remembers things about clients and pages it cannot trust to be few: a rate
bucket per client, events stored per client, PageViews bound per page load, pixel twins already
fired, the last time a client's refusal was logged. Each lives in a :class:`Recent` map holding
at most ``limit`` keys; past that the least recently used key is forgotten, so spraying keys
(addresses, page loads) only evicts state of keys that went quiet, and memory stays bounded
whatever is posted. Every change is one atomic read-modify-write under the map's lock, which
keeps the callers (threads of a WSGI server) free of races without locks of their own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
R = TypeVar("R")

#: Keys remembered by default: about 1-2 MB of small values.
MAX_KEYS = 10_000


class Recent(Generic[V]):
    """At most ``limit`` keys, least recently used forgotten first; thread-safe."""

    __slots__ = ("_items", "_lock", "limit")

    def __init__(self, limit: int = MAX_KEYS) -> None:
        self.limit = limit
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def change(self, key: str, step: Callable[[V | None], tuple[V | None, R]]) -> R:
        """Replace ``key``'s value by ``step(old)[0]`` (None: forget the key) and return
        ``step(old)[1]``, atomically; ``old`` is None for a key not (or no longer) known."""
        with self._lock:
            new, result = step(self._items.pop(key, None))
            if new is not None:
                self._items[key] = new
                while len(self._items) > self.limit:
                    self._items.popitem(last=False)
            return result

    def get(self, key: str) -> V | None:
        """``key``'s value without refreshing its place (None when unknown)."""
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)
