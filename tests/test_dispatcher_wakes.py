"""When the dispatcher's loop is woken, on both stores: one pass at a time, its clock injected,
its thread never started, so what a pass leaves for the next is read, not timed.

An event stored while a pass runs (a request thread beside the dispatcher) must not cost a pass
of its own when the pass ends lingering on a partial batch: the timed wake at the end of the
linger serves it too. Measured on PostgreSQL from 4 processes, keeping that wake made a pass
(five statements) per event or two. It must still wake the loop when the pass found nothing
(no timed wake is due), when a full batch is ready, while ``flush`` forces, and on stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from capi_bridge.bridge import Bridge
from capi_bridge.delivery import dispatcher as dispatching
from capi_bridge.delivery.dispatcher import Dispatcher

PIXEL = "1234567890"
NOW = 1_900_000_000.0
LINGER = 0.5


@pytest.fixture
def make_bridge(delivery_settings: Any, store_target: dict[str, Any]) -> Iterator[Any]:
    bridges: list[Bridge] = []

    def make() -> Bridge:
        bridge = Bridge(delivery_settings(**store_target, linger=LINGER))
        bridges.append(bridge)
        return bridge

    yield make
    for bridge in bridges:
        bridge.close(timeout=0)


def dispatcher_of(
    bridge: Bridge, during_pass: Callable[[Dispatcher], None], after: str | None = None
) -> Dispatcher:
    """A dispatcher on the bridge's store whose passes call ``during_pass`` right after the
    store's ``after`` method (as a request thread storing an event at that moment), at a
    fixed clock. By default the method that finds the young partial batch: SQLite's fast
    path (``take``), PostgreSQL's ``claim``."""
    dispatcher = Dispatcher(bridge.settings, bridge.outbox, bridge.policy, clock=lambda: NOW)
    name = after or ("take" if bridge.outbox.local else "claim")
    method = getattr(bridge.outbox, name)

    def then_event(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        during_pass(dispatcher)
        return result

    setattr(bridge.outbox, name, then_event)
    return dispatcher


def store_young_event(bridge: Bridge, name: str) -> None:
    """A row due now: with a long linger, the pass waits for its batch to fill."""
    row = (PIXEL, "Purchase", name, "", NOW + 86400, '{"event_name":"Purchase"}')
    bridge.outbox.enqueue([row], NOW)


def test_event_stored_during_a_lingering_pass_waits_for_the_timed_wake(
    make_bridge: Callable[[], Bridge],
) -> None:
    bridge = make_bridge()
    store_young_event(bridge, "first")
    dispatcher = dispatcher_of(bridge, lambda d: d.notify(1))
    wait = dispatcher._cycle()
    assert wait == pytest.approx(LINGER)  # the linger of the partial batch...
    assert not dispatcher._wake.is_set()  # ...serves the event stored meanwhile
    dispatcher.notify(1)  # and so do later ones until then
    assert not dispatcher._wake.is_set()


def test_event_stored_during_an_idle_pass_wakes_the_loop(
    make_bridge: Callable[[], Bridge],
) -> None:
    bridge = make_bridge()  # nothing stored: the pass finds nothing, no timed wake is due
    dispatcher = dispatcher_of(bridge, lambda d: d.notify(1), after="groups")
    assert dispatcher._cycle() == pytest.approx(dispatching.IDLE_POLL)
    assert dispatcher._wake.is_set()


@pytest.mark.parametrize("cause", ["full batch", "flush", "stop"])
def test_a_lingering_pass_keeps_the_wakes_that_cannot_wait(
    make_bridge: Callable[[], Bridge], cause: str
) -> None:
    bridge = make_bridge()
    store_young_event(bridge, "first")

    def meanwhile(d: Dispatcher) -> None:
        if cause == "full batch":
            d.notify(bridge.settings.batch_size)
        elif cause == "flush":
            d._forcing += 1  # as flush() does while it waits
            d._wake.set()
        else:
            d._stop.set()
            d._wake.set()

    dispatcher = dispatcher_of(bridge, meanwhile)
    dispatcher._cycle()
    assert dispatcher._wake.is_set()
