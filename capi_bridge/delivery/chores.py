"""The dispatcher's chores beside delivery: housekeeping, held-event expiry, the rows the
request path had to keep in memory, and saying (once a minute) that the store is unavailable.

A mixin of :class:`~capi_bridge.delivery.dispatcher.Dispatcher`, kept apart so the delivery
loop reads in one place; every chore runs in the dispatcher's thread, never on the request path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from capi_bridge.delivery.buffer import RowBuffer
from capi_bridge.delivery.store import Store
from capi_bridge.observations import RETENTION
from capi_bridge.settings import Settings

logger = logging.getLogger("capi_bridge.delivery")

#: After an unexpected error, wait this long before the next cycle.
ERROR_PAUSE = 1.0
CHECKPOINT_EVERY = 0.5
FORGET_EVERY = 600.0
#: How often held events past ``held_ttl`` are dropped (a minute late is no harm).
EXPIRE_HELD_EVERY = 60.0
#: At most one WARNING per this many seconds while the store is unavailable.
UNAVAILABLE_LOG_EVERY = 60.0
#: While the store refuses the rows buffered in memory, try again this often.
SPILL_RETRY = 0.5


class Chores:
    """Mixed into the dispatcher, which sets these attributes."""

    if TYPE_CHECKING:
        settings: Settings
        store: Store
        buffered: RowBuffer
        owner: str
        clock: Callable[[], float]
        _next_checkpoint: float
        _next_forget: float
        _next_expire_held: float
        _next_spill: float
        _next_unavailable_log: float

    def _unavailable(self, exc: BaseException) -> None:
        """The store failed: one WARNING per UNAVAILABLE_LOG_EVERY, not a traceback a second
        (the events are safe where they are; the loop tries again)."""
        now = time.monotonic()
        if now >= self._next_unavailable_log:
            self._next_unavailable_log = now + UNAVAILABLE_LOG_EVERY
            logger.warning(
                "capi-bridge dispatcher: the outbox at %s is unavailable (%s); retrying every "
                "%.0f s, events kept where they are",
                self.store.location,
                exc,
                ERROR_PAUSE,
            )

    def _spill(self) -> bool:
        """Store the rows the request path had to keep in memory; False while it cannot."""
        if time.monotonic() < self._next_spill:
            return False
        while (item := self.buffered.first()) is not None:
            try:
                self.store.enqueue(
                    item.rows,
                    item.now,
                    hold=item.hold,
                    tags=item.tags,
                    origin=self.owner,
                    wait=SPILL_RETRY,  # a lock still held: deliver meanwhile, retry soon
                )
            except self.store.errors as exc:
                self._next_spill = time.monotonic() + SPILL_RETRY
                logger.debug("outbox still unavailable for buffered events: %s", exc)
                return False
            self.buffered.stored(item)
        logger.info("capi-bridge: the outbox is back; events kept in memory are stored")
        return True

    def _expire_held(self) -> None:
        """Drop held events that waited longer than ``held_ttl`` for consent: never sent."""
        now = time.monotonic()
        if now < self._next_expire_held:
            return
        self._next_expire_held = now + EXPIRE_HELD_EVERY
        ttl = float(self.settings.held_ttl)
        dropped = self.store.expire_held(self.clock() - ttl)
        if dropped:
            logger.info(
                "dropped %d held events that waited more than %.0f s for consent (held_ttl)",
                dropped,
                ttl,
            )

    def _housekeeping(self) -> None:
        """Checkpoint the WAL and forget keys past the dedup window: never on the enqueue path."""
        now = time.monotonic()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + CHECKPOINT_EVERY
            self.store.checkpoint()
        if now >= self._next_forget:
            self._next_forget = now + FORGET_EVERY
            removed = self.store.forget_settled(self.clock() - self.settings.dedup_window)
            if removed:
                logger.debug("forgot %d delivered keys past the dedup window", removed)
            pruned = self.store.prune(self.clock() - RETENTION)
            if pruned:
                logger.debug("pruned %d observations older than %.0f s", pruned, RETENTION)
