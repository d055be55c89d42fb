"""``Bridge``: accept events on the request path, deliver them to Meta off it.

``enqueue`` does only local work (schema guard, hashing, one commit to the outbox store: a
SQLite file on one host, or PostgreSQL shared by several, see :mod:`capi_bridge.delivery`) and
returns; batches go to the Conversions API from a delivery process the app's processes share
(``delivery="process"``, the default with SQLite: :mod:`capi_bridge.delivery.host_worker`), a
dispatcher thread per process (``"thread"``) or a ``capi-bridge worker`` (``"worker"``). The
page never waits for Meta, and an event ``enqueue`` returned for is never lost.

``submit`` is the request path's variant (``Page.track``, the mirror endpoint): it never waits
more than about 100 ms for the store and never raises because the store is unavailable; the
rows then wait in a bounded in-memory buffer of this process until the dispatcher can store
them (:mod:`capi_bridge.delivery.buffer`), so a locked or read-only outbox, a full disk or a
database that is down never turns a page into a 5xx.

Threads (WSGI) call the plain methods. Coroutines (ASGI) may call the plain ``enqueue`` too: it
costs one local commit and no call to Meta, the same as a cache write. When the outbox is busy
(another process holding the write lock) that commit can wait, so ``aenqueue`` and friends run
the same work in a thread (``asyncio.to_thread``) and never block the event loop.

Consent: ``enqueue(..., hold=key)`` stores an event *held* under ``key`` (the browser's per-tab
id) while its visitor has not consented: validated and hashed like any event, deduplicated by
its key, but not sent. ``release(key)`` sends the held events with their original time and id
when the visitor consents, ``forget(key)`` deletes them when they refuse, and the dispatcher
drops those that waited longer than ``held_ttl``.

Lifecycle: the dispatcher starts lazily on the first ``enqueue``/``flush`` of each process, so a
``Bridge`` built before a fork (gunicorn ``--preload``) works in every worker. ``close()`` and
interpreter exit flush within a bound (a delivery process then stays to send what is left,
for as long again); what is left after that stays in the outbox for the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable

from capi_bridge.accept import EventLike, RowMaker
from capi_bridge.bridge_async import AsyncBridge
from capi_bridge.bridge_consent import ConsentBridge, check_hold_key
from capi_bridge.clock import ClockSkew, ClockWatch
from capi_bridge.delivery import store_for
from capi_bridge.delivery.buffer import Pending, RowBuffer
from capi_bridge.delivery.dispatcher import Dispatcher
from capi_bridge.delivery.host_worker import WorkerTender, tender_for
from capi_bridge.delivery.processes import current_pid, new_owner_id
from capi_bridge.delivery.records import OutboxStats
from capi_bridge.delivery.report import Diagnostics, compute
from capi_bridge.delivery.retry import RetryPolicy
from capi_bridge.delivery.store import NewRow, OutboxUnavailable
from capi_bridge.observations import Observation, ObservationBuffer, Origin, Tag
from capi_bridge.outbox_location import announce
from capi_bridge.settings import Settings

logger = logging.getLogger("capi_bridge.bridge")

#: The most ``submit`` waits for a busy store before keeping the rows in memory instead.
SUBMIT_WAIT = 0.1

#: Objects kept referenced after fork() so the child never closes what the parent uses.
_INHERITED: list[object] = []


class Bridge(ConsentBridge, AsyncBridge):
    """The delivery engine: durable outbox plus a background dispatcher per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The outbox store (:class:`~capi_bridge.delivery.store.Store`).
        self.outbox = store_for(settings)
        if settings.outbox_default:  # said once per process: where, and how to choose
            announce(
                self.outbox.location,
                (settings.name_of("outbox_path"), settings.name_of("outbox_url")),
            )
        self.policy = RetryPolicy(
            base=settings.retry_base,
            cap=settings.max_backoff,
            pause=settings.auth_pause,
            probe=settings.probe_interval,
        )
        self._pixels = settings.pixel_ids
        #: Builds the rows of events: hashing (memoized), the schema guard, the wire JSON.
        self.rows = RowMaker(settings)
        self._dispatcher: Dispatcher | None = None
        self._tender: WorkerTender | None = None  # delivery="process": see _start
        self._origin = new_owner_id()  # this process: leases and the rows flush() waits for
        self._buffer = ObservationBuffer()
        self._spilled = RowBuffer()
        self.clock_watch = ClockWatch(on_reading=self._note_clock)
        self._lock = threading.Lock()
        self._closed = False
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def __repr__(self) -> str:
        return f"Bridge(outbox={self.outbox.location!r}, pixels={list(self._pixels)!r})"

    # --- accepting events ---------------------------------------------------------------------

    def enqueue(
        self,
        event: EventLike,
        *,
        pixel_id: str | None = None,
        test_event_code: str | None = None,
        hold: str | None = None,
        origin: Origin | None = None,
    ) -> str:
        """Validate, hash and durably store ``event``; returns its ``event_id``.

        The event goes to every configured pixel (as ``fbq('track')`` does) unless
        ``pixel_id`` names one. Raises :class:`~capi_bridge.errors.InvalidEvent` with every
        problem when Meta would refuse it, and
        :class:`~capi_bridge.delivery.store.OutboxUnavailable` when the outbox cannot store it
        (answer 503); nothing is stored then. The same
        (pixel, event_name, event_id) stored again within the dedup window is not sent twice.
        With ``hold`` the event waits for consent under that key: see :meth:`release`.
        ``origin`` says how it reached us, for the inspector (default: a server event).
        """
        if hold is not None:
            check_hold_key(hold, "hold")
        now = time.time()
        rows, event_id, tags = self.rows.rows(event, pixel_id, test_event_code, now, origin)
        self._store(rows, now, hold, tags)
        return event_id

    def submit(
        self,
        event: EventLike,
        *,
        pixel_id: str | None = None,
        test_event_code: str | None = None,
        hold: str | None = None,
        origin: Origin | None = None,
    ) -> str:
        """:meth:`enqueue` for the request path: never fails nor waits long for the outbox.

        Validated and hashed the same way (:class:`InvalidEvent` still raises), then stored if
        the outbox takes it within about 100 ms. If it cannot (locked, read-only, disk full,
        database down), the event waits in this process's bounded memory buffer until the
        dispatcher can store it: not durable until then, counted in ``stats().buffered``, and
        in ``stats().lost`` (with a WARNING) if the buffer is full. Use it where a failing
        outbox must not fail the response; use :meth:`enqueue` where the caller can retry.
        """
        if hold is not None:
            check_hold_key(hold, "hold")
        now = time.time()
        rows, event_id, tags = self.rows.rows(event, pixel_id, test_event_code, now, origin)
        self._submit(rows, now, hold, tags)
        return event_id

    def submit_many(
        self,
        events: Iterable[EventLike],
        *,
        pixel_id: str | None = None,
        test_event_code: str | None = None,
        hold: str | None = None,
        origin: Origin | None = None,
    ) -> list[str]:
        """:meth:`enqueue_many` (all valid, or :class:`InvalidEvent` and none stored) for the
        request path, stored as :meth:`submit` stores: the mirror endpoint's posts."""
        now, rows, ids, tags = self._rows_of(events, pixel_id, test_event_code, hold, origin)
        if rows:
            self._submit(rows, now, hold, tags)
        return ids

    def _rows_of(
        self,
        events: Iterable[EventLike],
        pixel_id: str | None,
        test_event_code: str | None,
        hold: str | None,
        origin: Origin | None,
    ) -> tuple[float, list[NewRow], list[str], list[Tag]]:
        """The checked rows of a batch, dated now: what both ways of storing one start with."""
        if hold is not None:
            check_hold_key(hold, "hold")
        now = time.time()
        rows, ids, tags = self.rows.many(events, pixel_id, test_event_code, now, origin)
        return now, rows, ids, tags

    def _submit(self, rows: list[NewRow], now: float, hold: str | None, tags: list[Tag]) -> None:
        try:
            self._keep(rows, now, hold, tags, SUBMIT_WAIT)
        except self.outbox.errors as exc:
            self._spilled.add(Pending(rows, now, hold, tags), exc)
            self._notify(len(rows))
            return
        if hold is None:
            self._notify(len(rows))
        else:
            self._running()

    def enqueue_many(
        self,
        events: Iterable[EventLike],
        *,
        pixel_id: str | None = None,
        test_event_code: str | None = None,
        hold: str | None = None,
        origin: Origin | None = None,
    ) -> list[str]:
        """Like :meth:`enqueue` for a bulk import, in one transaction: all stored or none.

        Every event is checked first; :class:`InvalidEvent` lists the problems of all invalid
        ones, each prefixed with its position (and ``events`` has them by position).
        """
        now, rows, ids, tags = self._rows_of(events, pixel_id, test_event_code, hold, origin)
        if rows:
            self._store(rows, now, hold, tags)
        return ids

    def _keep(
        self, rows: list[NewRow], now: float, hold: str | None, tags: list[Tag], wait: float | None
    ) -> None:
        """Into the outbox: held rows at once (their key must hold now), the others by the
        store's journal where it has one (``Store.append``)."""
        if hold is None:
            self.outbox.append(rows, now, tags=tags, origin=self._origin, wait=wait)
        else:
            self.outbox.enqueue(rows, now, hold=hold, tags=tags, origin=self._origin, wait=wait)

    def _store(self, rows: list[NewRow], now: float, hold: str | None, tags: list[Tag]) -> None:
        try:
            self._keep(rows, now, hold, tags, None)
        except self.outbox.errors as exc:  # disk full, read-only, lock held for 10 s, db down
            raise OutboxUnavailable(self.outbox.location, exc) from exc
        if hold is None:
            self._notify(len(rows))
        else:  # nothing to send, but some dispatcher must expire what is never released
            self._running()

    # --- delivery -----------------------------------------------------------------------------

    def _running(self) -> Dispatcher | None:
        """This process's dispatcher, started if need be (None once closed)."""
        dispatcher = self._dispatcher
        if dispatcher is None or dispatcher.pid != current_pid():
            dispatcher = self._start()
        return dispatcher

    def _notify(self, count: int) -> None:
        dispatcher = self._running()
        if dispatcher is not None:
            dispatcher.notify(count)

    def _start(self) -> Dispatcher | None:
        """Start this process's dispatcher (lazily, so it is born after any fork)."""
        with self._lock:
            if self._closed:
                return None
            dispatcher = self._dispatcher
            if dispatcher is None or dispatcher.pid != os.getpid():
                tender = self._tender = tender_for(self.settings)  # delivery="process"
                dispatcher = Dispatcher(
                    self.settings,
                    self.outbox,
                    self.policy,
                    owner=self._origin,
                    observed=self._buffer,
                    buffered=self._spilled,
                    clock_watch=self.clock_watch,
                    tend=None if tender is None else tender.tend,
                )
                dispatcher.start()
                self._dispatcher = dispatcher
                logger.debug(
                    "delivery started in pid %d from %s", os.getpid(), self.outbox.location
                )
            return dispatcher

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver what was accepted so far (partial batches too) within ``timeout`` seconds.

        True when every event this process stored (or released) before the call has been
        delivered or dead-lettered; False when some remain (Meta down, circuit open, time up).
        Other processes' events, other hosts' on a shared store, are theirs to flush. Events
        already backing off are not hurried: flush never makes delivery hammer Meta. Held
        events are not waited for: until :meth:`release` they are not accepted for delivery
        (they may wait up to ``held_ttl`` for a consent that never comes).
        """
        dispatcher = self._start()
        if dispatcher is None:
            return not len(self._spilled) and not self.outbox.pending(
                self._origin, self.outbox.mark()
            )
        return dispatcher.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout`` (default ``close_timeout``), then stop the dispatcher.

        Returns whether everything was flushed. Events left over stay in the outbox and are
        sent by the next start; an ``enqueue`` after ``close`` still stores durably. With
        ``delivery="worker"`` nothing is waited for: what is stored is the worker's to send
        (call :meth:`flush` first to wait for it).
        """
        timeout = self.settings.close_timeout if timeout is None else timeout
        with self._lock:
            self._closed = True
            dispatcher = self._dispatcher
        flushed = True
        if dispatcher is not None and dispatcher.pid == os.getpid() and dispatcher.alive:
            flushed = dispatcher.close(timeout)
        try:  # what the dispatcher had no time to write
            self._buffer.write_to(self.outbox.observe)
        except self.outbox.errors as exc:
            logger.warning(
                "capi-bridge: %d observations not written at close: %s", len(self._buffer), exc
            )
        if len(self._spilled):
            logger.warning(
                "capi-bridge: %d events taken while the outbox was unavailable are lost at close",
                len(self._spilled),
            )
        if self._tender is not None:  # after the flush: the worker may go once we all have
            self._tender.close()
        self.outbox.close()
        return flushed

    def stats(self) -> OutboxStats:
        """Counts across every process sharing the outbox, plus Meta's last error and the last
        reading of the clock against Meta's (``clock``); and this process's rows waiting in
        memory for an unavailable outbox (``buffered``, ``lost``)."""
        stats = self.outbox.stats(time.time())
        return dataclasses.replace(stats, buffered=len(self._spilled), lost=self._spilled.lost)

    def _note_clock(self, reading: ClockSkew) -> None:
        """Store a new reading of the clock for ``stats()`` in every process (the dispatcher
        thread calls this, rarely: see :class:`~capi_bridge.clock.ClockWatch`)."""
        try:
            self.outbox.note_clock(reading)
        except self.outbox.errors as exc:  # only a figure: a later reading that moved is stored
            logger.debug("clock reading not stored: %s", exc)

    # --- observations (inspector, diagnostics) -------------------------------------------------

    def observe_later(self, observed: list[Observation]) -> None:
        """Record observations without touching SQLite now (a page being rendered): this
        process's dispatcher writes them within moments."""
        if observed:
            self._buffer.add(observed)
            self._notify(0)

    def observe(self, observed: list[Observation]) -> None:
        """Record observations of events that were not enqueued (the mirror refused them)."""
        try:
            self.outbox.observe(observed)
        except self.outbox.errors as exc:
            raise OutboxUnavailable(self.outbox.location, exc) from exc

    def diagnostics(self, window: float = 86400.0) -> Diagnostics:
        """Per event name over the last ``window`` seconds, across every process: counts,
        match-key shares, dedup coverage, fbc age, refusals and an estimated match quality
        (see :mod:`capi_bridge.delivery.report`). Counts and key presence only, never user
        data."""
        self.write_observations()
        return compute(self.outbox, time.time(), window)

    def write_observations(self) -> None:
        """File every observation not yet in ``observations``: those riding in fresh outbox
        rows (any process's, by ingesting them now rather than at the dispatcher's next
        pass) and this process's pixel twins; for readers that want the latest."""
        self.outbox.prepare()
        self._buffer.write_to(self.outbox.observe)  # waits for a write the dispatcher began

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _after_fork(ref: weakref.ref[Bridge]) -> None:
    """In a forked child: forget the parent's dispatcher; the child starts its own lazily."""
    bridge = ref()
    if bridge is None:
        return
    if bridge._dispatcher is not None:
        _INHERITED.append(bridge._dispatcher)
    bridge._dispatcher = None
    bridge._tender = None  # the parent's; the child says it is here when it starts
    bridge._lock = threading.Lock()
    bridge._origin = new_owner_id()  # the parent's rows are the parent's to flush
    bridge._spilled = RowBuffer()
    bridge.clock_watch = ClockWatch(on_reading=bridge._note_clock)  # its lock may be held
