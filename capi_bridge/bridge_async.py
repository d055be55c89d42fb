"""The ``async`` face of :class:`~capi_bridge.bridge.Bridge`: each method runs the plain one
in a worker thread (``asyncio.to_thread``), so the event loop never waits on the outbox's lock
or a database round trip. Apart from ``Bridge`` so that module keeps to delivery itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from capi_bridge.delivery.records import OutboxStats
from capi_bridge.delivery.report import Diagnostics
from capi_bridge.events import Event

EventLike = Event | Mapping[str, Any]


class AsyncBridge:
    """Mixed into ``Bridge``: ``aenqueue``, ``aflush``... for ASGI apps."""

    if TYPE_CHECKING:  # provided by Bridge

        def enqueue(
            self,
            event: EventLike,
            *,
            pixel_id: str | None = None,
            test_event_code: str | None = None,
            hold: str | None = None,
        ) -> str: ...

        def enqueue_many(
            self,
            events: Iterable[EventLike],
            *,
            pixel_id: str | None = None,
            test_event_code: str | None = None,
            hold: str | None = None,
        ) -> list[str]: ...

        def release(self, hold_key: str) -> int: ...

        def forget(self, hold_key: str) -> int: ...

        def flush(self, timeout: float = 10.0) -> bool: ...

        def close(self, timeout: float | None = None) -> bool: ...

        def stats(self) -> OutboxStats: ...

        def diagnostics(self, window: float = 86400.0) -> Diagnostics: ...

    async def aenqueue(
        self,
        event: EventLike,
        *,
        pixel_id: str | None = None,
        test_event_code: str | None = None,
        hold: str | None = None,
    ) -> str:
        """:meth:`enqueue` in a worker thread: the event loop never waits on the SQLite lock."""
        return await asyncio.to_thread(
            self.enqueue, event, pixel_id=pixel_id, test_event_code=test_event_code, hold=hold
        )

    async def aenqueue_many(
        self,
        events: Iterable[EventLike],
        *,
        pixel_id: str | None = None,
        test_event_code: str | None = None,
        hold: str | None = None,
    ) -> list[str]:
        return await asyncio.to_thread(
            self.enqueue_many,
            list(events),
            pixel_id=pixel_id,
            test_event_code=test_event_code,
            hold=hold,
        )

    async def arelease(self, hold_key: str) -> int:
        return await asyncio.to_thread(self.release, hold_key)

    async def aforget(self, hold_key: str) -> int:
        return await asyncio.to_thread(self.forget, hold_key)

    async def aflush(self, timeout: float = 10.0) -> bool:
        return await asyncio.to_thread(self.flush, timeout)

    async def aclose(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.close, timeout)

    async def astats(self) -> OutboxStats:
        return await asyncio.to_thread(self.stats)

    async def adiagnostics(self, window: float = 86400.0) -> Diagnostics:
        return await asyncio.to_thread(self.diagnostics, window)
