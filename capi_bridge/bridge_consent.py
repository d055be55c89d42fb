"""Consent on :class:`~capi_bridge.bridge.Bridge`: releasing or forgetting held events.

Events stored with ``hold=key`` wait, validated, hashed and deduplicated, for their visitor's
answer; these are the two answers. Apart from ``Bridge`` so that module keeps to accepting and
delivering; the rows stay in the store, so any process's dispatcher sends what one releases.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from capi_bridge.delivery.store import OutboxUnavailable, Store

logger = logging.getLogger("capi_bridge.bridge")

#: Longest hold key accepted (the browser sends 16-64 characters; apps may use their own keys).
MAX_HOLD_KEY = 128


def check_hold_key(key: object, name: str) -> None:
    """A hold key is an opaque, non-empty string; anything else is a programming error."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_HOLD_KEY:
        raise ValueError(
            f"{name} must be a non-empty string of at most {MAX_HOLD_KEY} characters (the "
            f"browser's hold id, or your own per-visitor key), not a {type(key).__name__}"
            + (f" of length {len(key)}" if isinstance(key, str) else "")
        )


class ConsentBridge:
    """Mixed into ``Bridge``: ``release`` and ``forget``."""

    if TYPE_CHECKING:  # provided by Bridge
        outbox: Store
        _origin: str

        def _notify(self, count: int) -> None: ...

    def release(self, hold_key: str) -> int:
        """Consent given: send the events held under ``hold_key``; returns how many (rows, one
        per pixel).

        They go out with their original ``event_time`` and ``event_id`` (the browser copy the
        pixel replays carries the same id, so Meta deduplicates the pair), due now, in any
        process's dispatcher. Those past Meta's 7-day window are dead-lettered as expired.
        Unknown or already released keys release nothing.
        """
        check_hold_key(hold_key, "hold_key")
        try:
            count = self.outbox.release(hold_key, time.time(), self._origin)
        except self.outbox.errors as exc:
            raise OutboxUnavailable(self.outbox.location, exc) from exc
        if count:
            self._notify(count)
        logger.debug("released %d held events", count)  # never the key: it names a visitor
        return count

    def forget(self, hold_key: str) -> int:
        """Consent refused: delete the events held under ``hold_key``; returns how many rows.

        They are never sent, and their keys are forgotten with them (a later consent in a
        new session starts from nothing).
        """
        check_hold_key(hold_key, "hold_key")
        try:
            count = self.outbox.forget(hold_key)
        except self.outbox.errors as exc:
            raise OutboxUnavailable(self.outbox.location, exc) from exc
        logger.debug("forgot %d held events", count)
        return count
