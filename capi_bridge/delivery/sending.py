"""Sending claimed batches and settling Meta's replies: the dispatcher's delivery steps.

A mixin of :class:`~capi_bridge.delivery.dispatcher.Dispatcher` (whose loop decides *what* to
send and when), kept apart so each reads in one place. Two ways in: a fast-path group taken as
stored (:meth:`Sending._deliver_taken`, one request and one settling statement when Meta takes
it), and leased rows (:meth:`Sending._deliver`, which bisects a rejected batch down to the
event Meta refuses and hands every reply to the
:class:`~capi_bridge.delivery.outcomes.Settler`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from capi_bridge.clock import ClockWatch
from capi_bridge.delivery.outcomes import Settler
from capi_bridge.delivery.retry import Action
from capi_bridge.delivery.store import Claimed, Store, TakenGroup
from capi_bridge.graph import GraphClient, GraphError, GraphResult
from capi_bridge.settings import Settings

logger = logging.getLogger("capi_bridge.delivery")

#: Events this close to Meta's age limit are dead-lettered before sending instead of risking a
#: rejected batch (the request takes time, and Meta's clock is not ours).
EXPIRY_MARGIN = 60.0


class Sending:
    """Mixed into the dispatcher, which sets these attributes."""

    if TYPE_CHECKING:
        settings: Settings
        store: Store
        settler: Settler
        owner: str
        clock: Callable[[], float]
        clock_watch: ClockWatch | None
        _client: GraphClient | None

    def _graph(self) -> GraphClient:
        if self._client is None:
            self._client = GraphClient.from_settings(self.settings, clock_watch=self.clock_watch)
        return self._client

    def _deliver_taken(
        self, pixel_id: str, test_code: str, claim: int, group: TakenGroup
    ) -> float | None:
        """Send one group of a fast-path claim as it was read (:meth:`Store.take`); returns a
        retry time on failure.

        A healthy batch is one request and one settling statement, without reading its rows
        one by one. Anything else (a send that failed, an event near Meta's age limit, a
        group larger than one request) first moves the rows into ordinary leases
        (:meth:`Store.adopt`), where :meth:`_deliver` deals with them as with any claimed
        batch, the reply already in hand included."""
        size = self.settings.batch_size
        soon = group.soonest <= self.clock() + EXPIRY_MARGIN
        reply: GraphResult | GraphError | None = None
        if not soon and len(group.ids) <= size:
            reply = self._send(pixel_id, test_code, group.payloads, len(group.ids))
            if isinstance(reply, GraphResult):
                self.settler.delivered(pixel_id, group.ids, reply, claim)
                return None
        until = self.clock() + self.settings.lease_seconds
        rows = self.store.adopt(claim, group.ids, self.owner, until)
        retry_at = None
        for start in range(0, len(rows), size):
            retry_at = self._deliver(pixel_id, test_code, rows[start : start + size], reply)
            if retry_at is not None:  # paused: the rest waits for the probe, as pending
                rest = [r.id for r in rows[start + size :]]
                if rest:  # rows (an expired lease)
                    self.store.renew(rest, self.owner, self.clock())
                break
        return retry_at

    def _deliver(
        self,
        pixel_id: str,
        test_code: str,
        rows: list[Claimed],
        reply: GraphResult | GraphError | None = None,
    ) -> float | None:
        """Send one claimed batch, bisecting on rejection; returns a retry time on failure.
        ``reply`` is Meta's answer to the whole batch when it was sent already."""
        now = self.clock()
        expired = [r for r in rows if r.expires <= now + EXPIRY_MARGIN]
        if expired:
            self.settler.expire(pixel_id, expired, now)
            rows = [r for r in rows if r.expires > now + EXPIRY_MARGIN]
            reply = None  # an answer to rows that are no longer all here
        lease_until = now + self.settings.lease_seconds
        stack: list[list[Claimed]] = [rows] if rows else []
        while stack:
            chunk = stack.pop()
            if self.clock() > lease_until - self.settings.lease_seconds / 2:
                lease_until = self.clock() + self.settings.lease_seconds
                held = [r.id for part in (chunk, *stack) for r in part]
                self.store.renew(held, self.owner, lease_until)
            if reply is None:
                payloads = ",".join(r.payload for r in chunk)
                reply = self._send(pixel_id, test_code, payloads, len(chunk))
            rest = [r.id for part in stack for r in part]
            decision = self.settler.settle(pixel_id, chunk, rest, reply)
            reply = None
            if decision.action is Action.BISECT:
                half = len(chunk) // 2
                stack += [chunk[half:], chunk[:half]]
            elif decision.retry_at is not None:
                return decision.retry_at
        return None

    def _send(
        self, pixel_id: str, test_code: str, payloads: str, count: int
    ) -> GraphResult | GraphError:
        """One Graph request of ``count`` events (their JSON texts joined by commas); every
        failure comes back as a :class:`GraphError`."""
        try:
            return self._graph().send_joined(
                pixel_id, payloads, count, test_event_code=test_code or None
            )
        except GraphError as error:
            return error
        except Exception as exc:  # a bug, or a transport error the client did not wrap
            logger.exception("capi-bridge dispatcher: sending to pixel %s failed", pixel_id)
            return GraphError(f"unexpected {type(exc).__name__} while sending")
