"""The dispatcher: one daemon thread per process that moves events from the outbox to Meta.

It is woken by ``enqueue`` (a :class:`threading.Event`), or by the store when another process
stored rows (PostgreSQL's LISTEN/NOTIFY), lingers briefly so a partial batch can fill (Meta wants
events near real time, so ``linger`` is a fraction of a second), claims a batch under a lease,
sends it with one Graph request and settles it. Every outcome is written to the store before the
next claim, so any process, on any host sharing the store, can pick up where another one died.
New rows first go by the store's fast path (:meth:`Store.take`: SQLite sends its fresh rows as
one leased id range, without rewriting them first); retries, probes and rows another dispatcher
left behind go by :meth:`Store.claim`, one (pixel, test code) group at a time.

Each reply becomes one decision in :class:`~capi_bridge.delivery.outcomes.Settler` (following
:mod:`capi_bridge.delivery.retry`): delivered, back off, bisect then dead-letter, or open the
pixel's circuit and keep the events. The loop never dies: an unexpected exception is logged and
the loop goes on after a pause, with the events still in the outbox. It also writes what the
request path could not (observations noted during a render, rows taken while the outbox was
unavailable: :mod:`capi_bridge.delivery.buffer`). It delivers in the app's process with
``delivery="thread"``; otherwise a delivery process does (one the app's processes start,
:mod:`capi_bridge.delivery.host_worker`, or a ``capi-bridge worker``), faster on a busy host
because its GIL is its own, and this loop only writes what waits in memory and, through
``tend``, keeps that process running. Each pass begins by moving every process's journaled
rows into the outbox (:mod:`capi_bridge.delivery.sqlite_intake`), so the request path never
writes SQLite.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from capi_bridge.clock import ClockWatch
from capi_bridge.delivery.buffer import RowBuffer
from capi_bridge.delivery.chores import ERROR_PAUSE, SPILL_RETRY, Chores
from capi_bridge.delivery.outcomes import Settler
from capi_bridge.delivery.processes import new_owner_id, pid_alive, running
from capi_bridge.delivery.retry import RetryPolicy
from capi_bridge.delivery.sending import Sending
from capi_bridge.delivery.store import Claim, Store
from capi_bridge.graph import GraphClient
from capi_bridge.observations import ObservationBuffer
from capi_bridge.settings import Settings

logger = logging.getLogger("capi_bridge.delivery")

#: With nothing to do, look for rows of other (maybe dead) processes this often.
IDLE_POLL = 1.0
#: Send at most this many full batches of one group before serving the next group.
FAIR_SHARE = 8


class Dispatcher(Chores, Sending):
    """The delivery loop of one process; :class:`~capi_bridge.bridge.Bridge` owns it."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        policy: RetryPolicy,
        *,
        owner: str | None = None,
        observed: ObservationBuffer | None = None,
        buffered: RowBuffer | None = None,
        clock: Callable[[], float] = time.time,
        clock_watch: ClockWatch | None = None,
        tend: Callable[[], bool] | None = None,
    ) -> None:
        """``owner`` is this process's id (leases, and the ``origin`` of the rows it stored);
        ``observed`` holds observations noted where the store must not be touched (a page
        being rendered) and ``buffered`` rows the store refused on the request path: every
        pass writes them. ``clock_watch`` reads Meta's ``Date`` off every answer. ``tend``,
        where another process delivers, keeps it running (each idle pass); once it returns
        False, this loop delivers instead."""
        self.settings = settings
        self.store = store
        self.policy = policy
        self.observed = observed if observed is not None else ObservationBuffer()
        self.buffered = buffered if buffered is not None else RowBuffer()
        self.clock = clock
        self.clock_watch = clock_watch
        self.owner = owner or new_owner_id()
        self.settler = Settler(store, policy, self.owner, clock)
        self.pid = os.getpid()
        #: Whether this loop delivers: otherwise a delivery process does (``delivery`` is
        #: "process" or "worker"), and this one only writes what waits in this process's
        #: memory (observations noted during a render, spilled rows).
        mode = settings.delivery_mode
        self.delivers = mode == "thread" or (mode == "process" and tend is None)  # none set up
        self.tend = tend
        #: With nothing to do, look again after this long (a worker sets it lower).
        self.idle_poll = IDLE_POLL
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._lock = threading.Lock()
        self._unsent = 0  # events stored since the current pass began
        self._idle = True  # the loop knows of nothing pending: the next event wakes it
        self._full = False  # a full batch was stored since the current pass began
        self._forcing = 0
        self._client: GraphClient | None = None
        self._next_checkpoint = 0.0
        self._next_forget = 0.0
        self._next_expire_held = 0.0
        self._next_spill = 0.0
        self._next_unavailable_log = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"capi-bridge-dispatcher-{self.pid}", daemon=True
        )

    # --- control (any thread) -----------------------------------------------------------------

    def start(self) -> None:
        running.add(self)
        self._thread.start()

    @property
    def close_timeout(self) -> float:
        """What the interpreter-exit flush gives this dispatcher."""
        return float(self.settings.close_timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def notify(self, count: int) -> None:
        """``count`` events were stored: wake the loop if it is idle or a batch just filled.

        While the loop lingers on a partial batch it is not woken for every event (that
        would be a pass per enqueue), only when a full batch is ready.
        """
        if count and not self.delivers:  # stored rows are the worker's business
            return
        with self._lock:
            before = self._unsent
            self._unsent = before + count
            full = before < self.settings.batch_size <= self._unsent
            wake, self._idle, self._full = self._idle or full, False, self._full or full
        if wake:
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Send what is due now, partial batches included; True once all of it is settled.

        "All of it" is every row this process stored (or released) before the call, and the
        rows it holds in memory for an unavailable outbox; other processes' rows (other hosts'
        on a shared database) are theirs to wait for. Events paused by an open circuit or
        backing off keep it False until ``timeout``.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        target = -1  # the store's mark, read once nothing of ours waits in memory
        with self._lock:
            self._forcing += 1
        self._wake.set()
        try:
            while True:
                try:
                    if len(self.buffered):  # stored later, with ids above today's mark
                        target = -1
                    else:
                        if target < 0:  # this process's journaled rows first, or wait
                            self.store.ingest(own=True)
                            target = self.store.mark()
                        if not self.store.pending(self.owner, target):
                            return True
                except self.store.errors:
                    pass  # unavailable for now: wait, as for a send that failed
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with self._progress:
                    self._progress.wait(min(remaining, 0.05))
        finally:
            with self._lock:
                self._forcing -= 1

    def close(self, timeout: float) -> bool:
        """Flush within ``timeout``, then stop; says where leftovers wait if any remain.

        A delivery process this process keeps (``tend``) is waited for as this thread would
        be: a container that stops with the app takes the delivery process with it, so the
        app's exit is where its events must be sent. With a site-run ``capi-bridge worker``,
        only stop (and store rows still in memory): what is stored is the worker's to send,
        so an app process exits at once, worker running or not."""
        deadline = time.monotonic() + max(0.0, timeout)
        if not self.delivers and self.tend is None:  # nothing to wait for but the rows in
            self.stop(timeout)  # memory (Bridge.close says if some are left there)
            return not len(self.buffered) or self._spill()
        flushed = self.flush(timeout)
        self.stop(max(0.05, deadline - time.monotonic()))
        if not flushed:
            logger.warning(
                "capi-bridge: events not yet delivered at close; they stay in %s and are sent "
                "by the next start (see `capi-bridge outbox stats`)",
                self.store.location,
            )
        return flushed

    def stop(self, timeout: float) -> bool:
        """Ask the loop to end and wait up to ``timeout``; True if the thread has ended."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    # --- the loop (dispatcher thread) ---------------------------------------------------------

    def _run(self) -> None:
        stop_listening = None
        try:
            self.store.defer_intake()  # ingested once per pass below, or by the worker
            if self.delivers:
                self._startup()
                stop_listening = self._listen()
            while not self._stop.is_set():
                try:
                    wait = self._cycle()
                except self.store.errors as exc:  # locked, read-only, disk full, db down
                    self._unavailable(exc)
                    wait = ERROR_PAUSE
                except Exception:
                    logger.exception(
                        "capi-bridge dispatcher: unexpected error; events stay in %s, "
                        "retrying in %.0f s",
                        self.store.location,
                        ERROR_PAUSE,
                    )
                    wait = ERROR_PAUSE
                with self._progress:
                    self._progress.notify_all()
                if wait > 0:
                    self._wake.wait(wait)
                self._wake.clear()
        finally:
            running.discard(self)
            if stop_listening is not None:
                stop_listening()
            if self._client is not None:
                self._client.close()
            self.store.close()

    def _listen(self) -> Callable[[], None] | None:
        """Be woken when another process stores rows (a store that can signal it)."""
        try:
            return self.store.listen(lambda: self.notify(1))
        except self.store.errors as exc:
            logger.warning("capi-bridge dispatcher: no wake-ups from the outbox (%s); polling", exc)
            return None

    def _deliver_here(self) -> None:
        """The delivery process cannot run (``tend`` said why): deliver in this thread."""
        self.delivers, self.tend = True, None
        self._startup()

    def _startup(self) -> None:
        if not self.store.local:
            return  # other hosts' pids mean nothing here: their leases simply expire
        try:
            freed = self.store.reclaim(socket.gethostname(), pid_alive)
        except self.store.errors as exc:  # locked, read-only, broken: the loop says so, and
            self._unavailable(exc)  # other processes' leases still expire in time
            return
        except Exception:
            logger.exception("capi-bridge dispatcher: could not reclaim stale leases")
            return
        if freed:
            logger.info("reclaimed %d events leased by processes that no longer run", freed)

    def _cycle(self) -> float:
        """One pass over every group; returns how long to sleep before the next pass."""
        with self._lock:
            self._unsent, self._idle, self._full = 0, True, False
        now = self.clock()
        next_at = now + self.idle_poll
        if len(self.buffered) and not self._spill():
            next_at = min(next_at, now + SPILL_RETRY)
        if not self.delivers:  # a worker process delivers: only what waits in our memory
            self.observed.write_to(self.store.observe)
            if self.tend is None or self.tend():
                return max(0.0, next_at - self.clock())
            self._deliver_here()
        self.store.ingest()  # every process's journaled rows, in one transaction
        self._expire_held()  # before claiming: a dispatcher's first pass always runs it
        next_at = min(next_at, self._take_fresh(now))  # files enqueued rows' observations...
        self.observed.write_to(self.store.observe)  # ...then the later ones noted in memory
        for pixel_id, test_code in self.store.groups():
            if self._stop.is_set():
                break
            for _ in range(FAIR_SHARE):
                claim = self._claim(pixel_id, test_code)
                if not claim.rows:
                    for when in (claim.wake_at, claim.paused_until):
                        if when is not None:
                            next_at = min(next_at, when)
                    break
                retry_at = self._deliver(pixel_id, test_code, claim.rows)
                if retry_at is not None:
                    next_at = min(next_at, retry_at)
                    break
                if len(claim.rows) < self.settings.batch_size:
                    break
            else:
                next_at = now  # this group has more full batches: come straight back
        if next_at < now + self.idle_poll:
            # Lingering or backing off: the timed wake serves the events stored during this
            # pass too, so their wake is dropped (kept, it made a pass per event or two).
            with self._lock:
                self._idle = False
                if not (self._full or self._forcing or self._stop.is_set()):
                    self._wake.clear()
        self._housekeeping()
        return max(0.0, next_at - self.clock())

    def _take_fresh(self, now: float) -> float:
        """The fast path (:meth:`Store.take`): send the rows stored since the last pass as
        they are, up to FAIR_SHARE full takes; returns when to come back.

        A take is a full batch per pixel (rows of several pixels interleave in store order),
        each group sent in requests of at most ``batch_size`` events."""
        next_at = now + self.idle_poll
        lease, size = self.settings.lease_seconds, self.settings.batch_size
        limit = size * len(self.settings.pixel_ids)
        for _ in range(FAIR_SHARE):
            if self._stop.is_set():
                return next_at
            taken = self.store.take(
                owner=self.owner,
                now=self.clock(),
                limit=limit,
                lease=lease,
                linger=0.0 if self._forcing else self.settings.linger,
            )
            if taken.claim is None:
                return next_at if taken.wake_at is None else min(next_at, taken.wake_at)
            deadline = self.clock() + lease
            for (pixel_id, test_code), group in taken.groups.items():
                if self.clock() > deadline - lease / 2:  # many groups, slow answers
                    deadline = self.clock() + lease
                    self.store.renew((), self.owner, deadline, claim=taken.claim)
                retry_at = self._deliver_taken(pixel_id, test_code, taken.claim, group)
                if retry_at is not None:  # that pixel is paused: the others go on
                    next_at = min(next_at, retry_at)
            if taken.size < limit:
                return next_at
        return now  # more full batches: come straight back

    def _claim(self, pixel_id: str, test_code: str) -> Claim:
        return self.store.claim(
            pixel_id,
            test_code,
            owner=self.owner,
            now=self.clock(),
            limit=self.settings.batch_size,
            lease=self.settings.lease_seconds,
            linger=0.0 if self._forcing else self.settings.linger,
        )
