"""Events the mirror did not store, counted by event name and reason, so no drop is silent.

A browser event the endpoint ignores (a crawler's, a ``trackSingle`` to a pixel the site does not
configure...) or refuses (Meta would reject it) has a pixel copy and no server copy: left
unrecorded, the inspector shows nothing and diagnostics report a perfect dedup coverage (issue
10, gap 4). Anyone can post to the endpoint, so these are not recorded one row per event, which
would let anonymous input grow the disk: they are *counted*, per hour, event name, reason and a
short detail, in a table whose size is bounded whatever is posted:

* in memory, a process holds at most :data:`MAX_PENDING` distinct keys between writes (more fold
  into one ``(other)`` key per reason), written at most every :data:`FLUSH_SECONDS`;
* on disk, an hour holds at most :data:`MAX_KEYS_PER_HOUR` keys (the same folding), and hours
  older than the observations' retention (7 days) are deleted.

Nothing here is customer data: event names, a fixed set of reasons, and details that are a
pixel id, a user-agent product word or Meta's reason for refusing an event.

The counts live in a small ``dropped`` table of the outbox (its SQL is in the stores,
:meth:`~capi_bridge.delivery.store.Store.record_drops`), written only by
:meth:`DropTally.flush` and read through :func:`read`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from capi_bridge.delivery.records import DropRow
from capi_bridge.observations import RETENTION

logger = logging.getLogger("capi_bridge.drops")

#: Distinct keys a process holds between writes, and an hour holds on disk.
MAX_PENDING = 200
MAX_KEYS_PER_HOUR = 200
#: Longest wait before a process writes its counts (readers in the same process flush first).
FLUSH_SECONDS = 10.0
#: Where counts beyond the caps go.
OTHER = "(other)"
#: The event name under which pages whose fbq calls could not be mirrored are counted.
PIXEL_CALLS = "(fbq calls)"
_HOUR = 3600

#: Every reason, with what it means for the site: the inspector and diagnostics show these.
REASONS: dict[str, str] = {
    "crawler": "ignored: the user agent is a crawler or link preview",
    "bot": (
        "ignored: the user agent is a headless browser or an HTTP library (testing with "
        "Playwright or Puppeteer: set a desktop user agent)"
    ),
    "unknown_pixel": "ignored: trackSingle to a pixel id that is not in CAPI_BRIDGE_PIXEL_ID",
    "unknown_event": (
        "ignored: neither a standard event nor one of CAPI_BRIDGE_CUSTOM_EVENTS (add it there "
        "to mirror it)"
    ),
    "automatic": "ignored: an event the pixel sends by itself (button clicks, microdata)",
    "refused": "refused: Meta would reject it, so the server copy was not stored",
    "not_mirrored": "the page's own fbq calls were not mirrored",
}
#: Reasons whose events had a pixel copy for one of the site's pixels: dedup coverage counts
#: them as browser copies without a server copy.
UNCOVERED = frozenset({"crawler", "bot", "unknown_event", "refused"})
#: Why the fbq hook could not attach (capi-bridge.js reports the code boot.js set).
HOOK_FAILURES = {
    1: "fbevents.js ran before capi-bridge's snippet (the site's own base code comes first)",
    2: "window.fbq is not Meta's base code (another script defined it)",
}

_CRAWLER = re.compile(
    r"[\w.-]*(?:bot\b|crawl|spider|slurp|facebookexternalhit|facebookcatalog|embedly|preview)"
    r"[\w.-]*",
    re.IGNORECASE,
)
_AUTOMATION = re.compile(
    r"headlesschrome|lighthouse|pagespeed|phantomjs|curl/|wget/|python-|httpx|okhttp|go-http|"
    r"java/",
    re.IGNORECASE,
)


def classify_agent(user_agent: str | None) -> tuple[str, str] | None:
    """``(reason, product word)`` for a crawler or a non-browser client, else None. Real
    browsers never carry these words; a request without a user agent is left to validation
    (Meta needs the user agent of website events)."""
    if not user_agent:
        return None
    found = _AUTOMATION.search(user_agent)
    if found:
        return "bot", found.group(0).rstrip("/-").lower()
    found = _CRAWLER.search(user_agent)
    if found:
        return "crawler", found.group(0)[:40].lower()
    return None


def is_bot(user_agent: str | None) -> bool:
    """Whether a request comes from a crawler or a non-browser client."""
    return classify_agent(user_agent) is not None


@dataclasses.dataclass(frozen=True)
class Drop:
    """One event not stored: its name, a reason of :data:`REASONS` and a short detail."""

    event_name: str
    reason: str
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class DropCount:
    """How many events of one name were dropped for one reason (and detail) in a window."""

    event_name: str
    reason: str
    detail: str
    count: int
    last_at: float

    @property
    def uncovered(self) -> bool:
        return self.reason in UNCOVERED

    def as_dict(self) -> dict[str, object]:
        return {
            "event_name": self.event_name,
            "reason": self.reason,
            "meaning": REASONS.get(self.reason, self.reason),
            "detail": self.detail,
            "count": self.count,
            "last_at": self.last_at,
        }


_Key = tuple[int, str, str, str]


class Store(Protocol):
    """What is used of the outbox (its SQL is in :mod:`capi_bridge.delivery`)."""

    errors: tuple[type[BaseException], ...]

    def record_drops(
        self,
        counts: Mapping[_Key, tuple[int, float]],
        *,
        before_hour: int,
        max_keys_per_hour: int,
        other: str,
    ) -> None: ...

    def drop_counts(self, since_hour: int, until_hour: int) -> list[DropRow]: ...


class DropTally:
    """This process's counts, bounded, written to the outbox database now and then."""

    def __init__(self, store: Callable[[], Store], *, clock: Callable[[], float] = time.time):
        """``store`` returns the outbox when the counts are written."""
        self._store = store
        self._clock = clock
        self._pending: dict[_Key, list[float]] = {}  # key -> [count, last_at]
        self._lock = threading.Lock()
        self._flushed = clock()

    def add(self, drops: Iterable[Drop]) -> None:
        """Count ``drops`` (now); writes the counts when the last write is old enough. Never
        raises: a count is not worth failing a request for."""
        now = self._clock()
        hour = int(now // _HOUR)
        with self._lock:
            for drop in drops:
                key = (hour, drop.event_name[:50], drop.reason, drop.detail[:200])
                if key not in self._pending and len(self._pending) >= MAX_PENDING:
                    key = (hour, OTHER, drop.reason, "")
                entry = self._pending.setdefault(key, [0, now])
                entry[0] += 1
                entry[1] = now
            due = now - self._flushed >= FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        """Write what this process counted (readers call it first); keeps the counts in
        memory, bounded, when the outbox cannot be written now."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed = self._clock()
        if not pending:
            return
        store = self._store()
        try:
            store.record_drops(
                {key: (int(count), at) for key, (count, at) in pending.items()},
                before_hour=int((self._flushed - RETENTION) // _HOUR),
                max_keys_per_hour=MAX_KEYS_PER_HOUR,
                other=OTHER,
            )
        except store.errors as exc:
            logger.warning("capi-bridge: dropped-event counts not written yet: %s", exc)
            with self._lock:
                for key, (count, at) in pending.items():
                    if key not in self._pending and len(self._pending) >= MAX_PENDING:
                        key = (key[0], OTHER, key[2], "")
                    entry = self._pending.setdefault(key, [0, at])
                    entry[0] += count
                    entry[1] = max(entry[1], at)


def read(store: Store, since: float, until: float) -> list[DropCount]:
    """The counts of the hours overlapping ``[since, until]``, most frequent first."""
    rows = store.drop_counts(int(since // _HOUR), int(until // _HOUR))
    return [DropCount(*row) for row in rows]
