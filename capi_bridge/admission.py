"""How much one client, and every client together, may put into the outbox through the endpoint.

The mirror endpoint is open to the internet by design, so anonymous input must never grow the
disk without bound. Three limits stand between a post and the outbox, each answered with a 429
and ``Retry-After`` (the browser's script waits and does not retry on its own):

* **events per minute** per client (``rate_limit``), a token bucket
  (:class:`~capi_bridge.ratelimit.RateLimiter`): every request costs one, a post of ``n``
  events costs ``n``;
* **rows per client**: at most ``held_per_client`` rows held for consent over ``held_ttl`` (the
  longest a held row stays), and ``pending_per_client`` rows queued for delivery per hour. Counted
  in this process's memory (the 10,000 most recent clients, a sliding window each), so a site
  running N worker processes lets one client store up to N times these: the totals still hold;
* **rows in total** (``max_held_rows``, ``max_pending_rows``): the outbox's own counts, read off
  the request path at most every :data:`LEVELS_MAX_AGE` seconds through the store's
  ``waiting`` method (each count stops at the cap, so the read stays cheap however large the
  outbox), plus what this process admitted since. Server events (``track``, ``enqueue``) are
  the app's own and never refused; they do count towards the totals.

One more bound lives here, on what a page load may claim: the PageView ids it binds through
token refreshes (an SPA's route changes), at most ``page_views_per_load`` (counted per process,
by the page load's first PageView id, which refreshed tokens carry).

A row is one event for one pixel (an event for every configured pixel makes one row per pixel).
A refusal is logged once per client and minute (a WARNING with the masked address), never once
per request: a flood must not fill the log either.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from capi_bridge.bounded import Recent
from capi_bridge.browser_payload import Rejected
from capi_bridge.observations import mask_ip
from capi_bridge.ratelimit import RateLimiter

logger = logging.getLogger("capi_bridge.endpoint")

#: How old the outbox's counts may be before a request asks for fresh ones (off its path).
LEVELS_MAX_AGE = 5.0
#: The window of ``pending_per_client``.
PENDING_WINDOW = 3600.0
#: Slots of a sliding window: its counts age out in steps of window / SLOTS.
SLOTS = 12
#: A client's refusals are logged at most once per this many seconds.
LOG_EVERY = 60.0
#: Retry-After when the outbox as a whole is full: the counts are read again within seconds, but
#: a full outbox drains at the speed of delivery.
FULL_RETRY = 60

_Slots = tuple[tuple[int, int], ...]  # (slot number, rows), oldest first


class _AdmissionSettings(Protocol):
    @property
    def rate_limit(self) -> int: ...
    @property
    def held_ttl(self) -> float: ...
    @property
    def held_per_client(self) -> int: ...
    @property
    def pending_per_client(self) -> int: ...
    @property
    def max_held_rows(self) -> int: ...
    @property
    def max_pending_rows(self) -> int: ...
    @property
    def page_views_per_load(self) -> int: ...
    def name_of(self, field: str) -> str: ...


class Windows:
    """Rows taken per client over a sliding ``window``, in bounded memory."""

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.width = window / SLOTS
        self._clock = clock
        self._counts: Recent[_Slots] = Recent()

    def take(self, key: str, rows: int, cap: int) -> float:
        """0 when ``key`` may take ``rows`` more without passing ``cap`` (and they are counted),
        else the seconds until enough of its older rows leave the window."""
        now = self._clock()
        slot = int(now // self.width)

        def step(old: _Slots | None) -> tuple[_Slots, float]:
            live = tuple((s, n) for s, n in old or () if s > slot - SLOTS)
            total = sum(n for _, n in live)
            if total + rows <= cap:
                if live and live[-1][0] == slot:
                    return (*live[:-1], (slot, live[-1][1] + rows)), 0.0
                return (*live, (slot, rows)), 0.0
            excess, freed = total + rows - cap, 0
            for s, n in live:  # the oldest slots leave the window first
                freed += n
                if freed >= excess:
                    return live, (s + SLOTS) * self.width - now
            return live, SLOTS * self.width  # more than the cap at once: a whole window

        return self._counts.change(key, step)


def _spawn(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="capi-bridge-levels", daemon=True).start()


class OutboxLevels:
    """The outbox's held and pending row counts, at most :data:`LEVELS_MAX_AGE` seconds old.

    ``read(bound)`` returns (held, pending), each counted up to ``bound``; it runs in a thread of
    its own (``spawn``) so no request waits on the store, and a failing read keeps the last
    counts. Rows this process admits are added at once, so one process cannot overshoot a cap
    while its next read is under way.
    """

    def __init__(
        self,
        read: Callable[[int], tuple[int, int]],
        *,
        bound: int,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] = _spawn,
        max_age: float = LEVELS_MAX_AGE,
    ) -> None:
        self._read = read
        self._bound = bound
        self._clock = clock
        self._spawn = spawn
        self._max_age = max_age
        self._lock = threading.Lock()
        self._stored = (0, 0)  # as last read
        self._added = [0, 0]  # admitted here since that read began
        self._since_mark = (0, 0)
        self._read_at = -math.inf
        self._reading = False

    def current(self) -> tuple[int, int]:
        """(held, pending) rows: the last read plus what was admitted here since."""
        start = False
        with self._lock:
            if not self._reading and self._clock() - self._read_at >= self._max_age:
                self._reading = start = True
                self._read_at = self._clock()
                self._since_mark = (self._added[0], self._added[1])
            held = self._stored[0] + self._added[0]
            pending = self._stored[1] + self._added[1]
        if start:
            self._spawn(self._refresh)
        return held, pending

    def added(self, rows: int, *, held: bool) -> None:
        with self._lock:
            self._added[0 if held else 1] += rows

    def _refresh(self) -> None:
        try:
            counts = self._read(self._bound)
        except Exception as exc:  # the store is down: keep the last counts; delivery says why
            logger.debug("outbox counts not read: %s", type(exc).__name__)
            counts = None
        with self._lock:
            if counts is not None:
                self._stored = (int(counts[0]), int(counts[1]))
                self._added = [a - m for a, m in zip(self._added, self._since_mark, strict=True)]
                self._since_mark = (0, 0)
            self._reading = False


class Admission:
    """The three limits for one app's endpoint; methods raise :class:`Rejected` (429)."""

    def __init__(
        self,
        settings: _AdmissionSettings,
        *,
        limiter: RateLimiter | None = None,
        levels: OutboxLevels | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``levels``: the outbox's counts (None: no total caps, for an endpoint without one)."""
        self.settings = settings
        self.limiter = limiter or RateLimiter(settings.rate_limit, clock=clock)
        self.levels = levels
        self._held = Windows(settings.held_ttl, clock=clock)
        self._pending = Windows(PENDING_WINDOW, clock=clock)
        self._logged: Recent[float] = Recent()
        self._page_views: Recent[int] = Recent()
        self._clock = clock

    def request(self, key: str) -> None:
        """Count one request (every request to the endpoint costs one event's worth)."""
        self._rate(key, 1)

    def events(self, key: str, posted: int) -> None:
        """Count the rest of a post of ``posted`` events (its request counted one)."""
        if posted > 1:
            self._rate(key, posted - 1)

    def rows(self, key: str, rows: int, *, held: bool) -> None:
        """Admit ``rows`` outbox rows from ``key``: held for consent, or pending delivery."""
        s = self.settings
        field = "held_per_client" if held else "pending_per_client"
        cap = s.held_per_client if held else s.pending_per_client
        if self.levels is not None:
            total_field = "max_held_rows" if held else "max_pending_rows"
            total_cap = s.max_held_rows if held else s.max_pending_rows
            if self.levels.current()[0 if held else 1] + rows > total_cap:
                raise self._refuse(
                    key,
                    "outbox_full",
                    f"the outbox holds {s.name_of(total_field)} rows "
                    f"{'waiting for consent' if held else 'waiting for delivery'}; retry later",
                    FULL_RETRY,
                )
        window = self._held if held else self._pending
        wait = window.take(key, rows, cap)
        if wait:
            what = "held for consent" if held else "queued for delivery"
            raise self._refuse(
                key,
                "client_limit",
                f"this client has {cap} events {what} ({s.name_of(field)}); retry later",
                wait,
            )
        if self.levels is not None:
            self.levels.added(rows, held=held)

    def page_view(self, page_load: str) -> None:
        """Count one more PageView bound for ``page_load`` (its first PageView id); a 403 past
        ``page_views_per_load``: an SPA's route changes fit, one page load cannot mint
        PageViews without end."""
        limit = self.settings.page_views_per_load

        def step(bound: int | None) -> tuple[int, bool]:
            count = bound or 0
            return (count + 1, True) if count < limit else (count, False)

        if not self._page_views.change(page_load, step):
            name = self.settings.name_of("page_views_per_load")
            raise Rejected(
                403,
                "page_view_limit",
                f"this page load has bound {limit} PageViews ({name}): reload the page",
                "pv",
            )

    def _rate(self, key: str, cost: int) -> None:
        wait = self.limiter.wait_time(key, cost)
        if wait:
            name = self.settings.name_of("rate_limit")
            raise self._refuse(
                key,
                "rate_limited",
                f"over {self.settings.rate_limit} events per minute from this client ({name}); "
                "retry later",
                wait,
            )

    def _refuse(self, key: str, code: str, message: str, wait: float) -> Rejected:
        """The 429; logged once per client and :data:`LOG_EVERY` seconds."""
        now = self._clock()

        def step(last: float | None) -> tuple[float, bool]:
            if last is not None and now - last < LOG_EVERY:
                return last, False
            return now, True

        if self._logged.change(key, step):
            logger.warning(
                "capi-bridge: 429 for client %s: %s (further refusals of this client are not "
                "logged for a minute)",
                mask_ip(key),
                message,
            )
        return Rejected(
            429, code, message, headers=(("Retry-After", str(max(1, math.ceil(wait)))),)
        )
