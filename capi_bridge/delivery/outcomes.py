"""Settling a batch after Meta answered: the one place where a reply becomes a decision.

:meth:`Settler.settle` takes Meta's reply to one request (a :class:`GraphResult` or a
:class:`GraphError`), asks the retry policy once what it means, writes the outcome to the store
(so every process, every host, sees it) and logs it once, naming the pixel, the event's name and
id, Meta's code, subcode, message and fbtrace_id, and where to look next; never a payload or
the token. A circuit that opens logs one WARNING with the fix; the probes that follow log at
INFO, so a dead token does not flood the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

from capi_bridge.delivery.records import LastError
from capi_bridge.delivery.retry import Action, RetryPolicy
from capi_bridge.delivery.store import Claimed, Store
from capi_bridge.graph import ErrorKind, GraphError, GraphResult

logger = logging.getLogger("capi_bridge.delivery")

_FIXES = {
    ErrorKind.AUTH: "generate a new access token (Events Manager > Settings > Conversions API)",
    ErrorKind.CONFIG: "check the pixel id and that the access token has access to this pixel",
}
_EXPIRED = "event_time is older than Meta's window (7 days): Meta would reject the batch"


class Decision(NamedTuple):
    """What the dispatcher does next: ``action`` None means the chunk was delivered;
    ``retry_at`` is set when the pixel is paused (BACKOFF or PAUSE) until then."""

    action: Action | None
    retry_at: float | None = None


def last_error(pixel_id: str, error: GraphError, now: float) -> str:
    """The ``last_error`` record for ``stats()``: Meta's words and trace id, no payload."""
    return LastError(
        at=now,
        pixel_id=pixel_id,
        kind=error.kind.value,
        message=error.error_user_msg or error.message,
        status=error.status,
        code=error.code,
        subcode=error.error_subcode,
        fbtrace_id=error.fbtrace_id,
    ).encode()


class Settler:
    """Turns each reply of one dispatcher (``owner``) into a store transition and a log line."""

    def __init__(
        self, store: Store, policy: RetryPolicy, owner: str, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.policy = policy
        self.owner = owner
        self.clock = clock

    def settle(
        self,
        pixel_id: str,
        chunk: Sequence[Claimed],
        rest: Sequence[int],
        reply: GraphResult | GraphError,
    ) -> Decision:
        """Settle ``chunk`` (and, when the pixel pauses, ``rest``: the ids still waiting in
        this claim) according to ``reply``."""
        if isinstance(reply, GraphResult):
            self.delivered(pixel_id, [r.id for r in chunk], reply)
            return Decision(None)
        action = self.policy.action(reply, len(chunk))
        if action is Action.DEAD_LETTER:
            self._reject(pixel_id, chunk[0], reply)
        elif action in (Action.BACKOFF, Action.PAUSE):
            ids = [r.id for r in chunk] + list(rest)
            return Decision(action, self._fail(pixel_id, ids, reply, action))
        return Decision(action)

    def expire(self, pixel_id: str, rows: Sequence[Claimed], now: float) -> None:
        """Dead-letter events past Meta's window before they make a whole batch fail."""
        self.store.dead_letter(
            [r.id for r in rows], self.owner, reason="expired", now=now, message=_EXPIRED
        )
        logger.warning(
            "pixel %s: %d events dead-lettered as expired before sending (first: %s %s); "
            "see `capi-bridge outbox dead`",
            pixel_id,
            len(rows),
            rows[0].event_name,
            rows[0].event_id,
        )

    def delivered(
        self,
        pixel_id: str,
        ids: Sequence[int],
        result: GraphResult,
        claim: int | None = None,
    ) -> None:
        """Meta took the rows ``ids`` (of a fast-path ``claim``, or leased rows)."""
        if self.store.delivered(ids, pixel_id, self.owner, result, self.clock(), claim=claim):
            logger.info("pixel %s: delivery resumed, Meta accepts events again", pixel_id)
        if result.events_received != len(ids):
            logger.warning(
                "pixel %s: sent %d events, Meta reports %d received (fbtrace_id %s)",
                pixel_id,
                len(ids),
                result.events_received,
                result.fbtrace_id,
            )

    def _reject(self, pixel_id: str, row: Claimed, error: GraphError) -> None:
        """One event Meta refuses on its own: set aside with Meta's reason."""
        now = self.clock()
        message = error.error_user_msg or error.message
        self.store.dead_letter(
            [row.id],
            self.owner,
            reason="rejected",
            now=now,
            message=message,
            code=error.code,
            subcode=error.error_subcode,
            fbtrace_id=error.fbtrace_id,
            error=last_error(pixel_id, error, now),
        )
        logger.warning(
            "pixel %s: Meta rejected %s event %s (code %s/%s, fbtrace_id %s): %s; "
            "dead-lettered, see `capi-bridge outbox dead`",
            pixel_id,
            row.event_name,
            row.event_id,
            error.code,
            error.error_subcode,
            error.fbtrace_id,
            message,
        )

    def _fail(self, pixel_id: str, ids: Sequence[int], error: GraphError, action: Action) -> float:
        """Keep the events and pause the pixel (backoff or open circuit); returns the retry
        time."""
        pause = action is Action.PAUSE
        policy = self.policy

        def delay(failures: int) -> float:
            return (
                policy.pause_for(failures) if pause else policy.backoff(failures, error.retry_after)
            )

        now = self.clock()
        failures, until = self.store.failed(
            ids,
            pixel_id,
            self.owner,
            kind=error.kind.value,
            now=now,
            delay=delay,
            error=last_error(pixel_id, error, now),
            burn_attempt=not pause,
        )
        wait = max(0.0, until - self.clock())
        if pause and failures == 1:
            logger.warning(
                "pixel %s: delivery paused, %s; %d events kept in %s, next try in %.0f s. Fix: %s",
                pixel_id,
                error,
                len(ids),
                self.store.location,
                wait,
                _FIXES.get(error.kind, "see the error above"),
            )
        else:
            logger.log(
                logging.INFO if failures == 1 or pause else logging.DEBUG,
                "pixel %s: %d events not delivered (%s), retry %d in %.1f s",
                pixel_id,
                len(ids),
                error,
                failures,
                wait,
            )
        return until
