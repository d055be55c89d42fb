"""``Bridge``'s accepting side: the schema guard, hashing, ids, pixels, settings, bulk import."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from helpers.delivery_worker import PIXEL, make_event
from helpers.stores import read_only

import capi_bridge
from capi_bridge.bridge import Bridge
from capi_bridge.delivery.records import OutboxStats
from capi_bridge.errors import InvalidEvent
from capi_bridge.events import Event, UserData
from capi_bridge.testing import FakeGraph

MakeBridge = Callable[..., Bridge]


def stored(bridge: Bridge) -> list[tuple[str, str, str, dict[str, object]]]:
    rows = bridge.outbox.query("SELECT pixel_id, event_id, test_code, payload FROM outbox")
    return [(p, e, t, json.loads(payload)) for p, e, t, payload in rows]


def test_bridge_is_exported() -> None:
    assert capi_bridge.Bridge is Bridge


def test_enqueue_stores_hashed_wire_json_and_returns_the_id(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()
    assert bridge.enqueue(make_event(1, "order")) == "order-1"
    [(pixel, event_id, test_code, wire)] = stored(bridge)
    assert (pixel, event_id, test_code) == (PIXEL, "order-1", "")
    user = wire["user_data"]
    assert isinstance(user, dict) and len(user["em"]) == 64 and "@" not in json.dumps(user)
    assert user["client_ip_address"] == "203.0.113.7"  # not hashed, as Meta wants


def test_invalid_event_raises_with_every_problem_and_stores_nothing(
    make_bridge: MakeBridge,
) -> None:
    bridge = make_bridge()
    event = make_event(1)
    del event["action_source"]
    event["event_time"] = int(time.time()) - 9 * 86400
    with pytest.raises(InvalidEvent) as info:
        bridge.enqueue(event)
    assert len(info.value.problems) >= 2
    assert any("action_source" in p for p in info.value.problems)
    assert any("7 days" in p for p in info.value.problems)
    assert stored(bridge) == []


def test_unhashable_user_data_becomes_invalid_event(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()
    event = make_event(1)
    event["user_data"]["em"] = "not an e-mail"
    with pytest.raises(InvalidEvent, match="em"):
        bridge.enqueue(event)
    with pytest.raises(InvalidEvent, match="mapping"):
        bridge.enqueue("Purchase")  # type: ignore[arg-type]
    assert stored(bridge) == []


def test_event_objects_and_missing_ids(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()
    event = Event(
        "Lead",
        event_id=None,
        event_source_url="https://example-shop.test/contact",
        user_data=UserData(em="ada@example.com", client_user_agent="Mozilla/5.0"),
    )
    event_id = bridge.enqueue(event)
    assert len(event_id) == 36  # a fresh UUID: dedup and idempotency need one
    mapping = make_event(2)
    del mapping["event_id"]
    other = bridge.enqueue(mapping)
    assert other != event_id and {row[1] for row in stored(bridge)} == {event_id, other}


def test_every_pixel_gets_a_row_unless_one_is_named(make_bridge: MakeBridge) -> None:
    bridge = make_bridge(pixel_id="111, 222", test_event_code="TEST42")
    bridge.enqueue(make_event(1))
    bridge.enqueue(make_event(2), pixel_id="333", test_event_code="")
    rows = sorted((p, e, t) for p, e, t, _ in stored(bridge))
    assert rows == [("111", "ev-1", "TEST42"), ("222", "ev-1", "TEST42"), ("333", "ev-2", "")]
    with pytest.raises(InvalidEvent, match="pixel"):
        bridge.enqueue(make_event(3), pixel_id="my-pixel")


def test_data_processing_options_from_settings_apply_when_absent(
    make_bridge: MakeBridge,
) -> None:
    bridge = make_bridge(
        data_processing_options="LDU",
        data_processing_options_country=1,
        data_processing_options_state=1000,
    )
    bridge.enqueue(make_event(1))
    explicit = make_event(2)
    explicit["data_processing_options"] = []
    bridge.enqueue(explicit)
    wires = {e: w for _, e, _, w in stored(bridge)}
    assert wires["ev-1"]["data_processing_options"] == ["LDU"]
    assert wires["ev-1"]["data_processing_options_state"] == 1000
    assert wires["ev-2"]["data_processing_options"] == []


def test_enqueue_many_is_all_or_nothing(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()
    bad = make_event(2)
    bad["event_name"] = ""
    with pytest.raises(InvalidEvent) as info:
        bridge.enqueue_many([make_event(1), bad, make_event(3)])
    assert info.value.problems[0].startswith("event 1: event_name")
    assert stored(bridge) == []
    ids = bridge.enqueue_many(make_event(i) for i in range(5))
    assert ids == [f"ev-{i}" for i in range(5)] and len(stored(bridge)) == 5
    assert bridge.enqueue_many([]) == []


def test_stats_is_typed_and_serialisable(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    bridge = make_bridge()
    bridge.enqueue(make_event(1))
    bridge.enqueue(make_event(1))
    assert bridge.flush(10)
    stats = bridge.stats()
    assert isinstance(stats, OutboxStats)
    data = stats.as_dict()
    assert data["delivered"] == 1 and data["deduplicated"] == 1 and data["undelivered"] == 0
    assert json.loads(json.dumps(data)) == data
    assert "test-token" not in repr(bridge) + json.dumps(data)


def test_enqueue_after_close_is_still_durable(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge()
    bridge.enqueue(make_event(1))
    assert bridge.close(5)
    bridge.enqueue(make_event(2))  # e.g. a request finishing during shutdown
    assert bridge.stats().undelivered == 1
    assert not bridge.flush(0)  # closed: nothing is sent from this process any more (no wait)
    again = make_bridge()  # the next start sends it (its own flush waits for its own events)
    again.flush(0)
    assert fake_graph.wait_for_events(2, 10)
    assert {e["event_id"] for e in fake_graph.events} == {"ev-1", "ev-2"}


def test_settings_for_delivery_are_validated() -> None:
    from capi_bridge.errors import ConfigError
    from capi_bridge.settings import Settings

    base = {"pixel_id": "1", "access_token": "t"}
    assert Settings(**base).outbox_synchronous == "NORMAL"  # type: ignore[arg-type]
    assert Settings(**base, outbox_synchronous="full").outbox_synchronous == "FULL"  # type: ignore[arg-type]
    for bad in ({"outbox_synchronous": "OFF"}, {"retry_base": 0}, {"dedup_window": -1}):
        with pytest.raises(ConfigError):
            Settings(**base, **bad)  # type: ignore[arg-type]
    environ = {"CAPI_BRIDGE_PIXEL_ID": "1", "CAPI_BRIDGE_ACCESS_TOKEN": "t"}
    environ |= {"CAPI_BRIDGE_RETRY_BASE": "0.5", "CAPI_BRIDGE_DEDUP_WINDOW": "3600"}
    env = Settings.from_env(environ)
    assert (env.retry_base, env.dedup_window) == (0.5, 3600.0)


def test_a_failing_outbox_is_reported_not_swallowed(make_bridge: MakeBridge) -> None:
    from capi_bridge.delivery.store import OutboxUnavailable

    bridge = make_bridge()
    bridge.enqueue(make_event(0))
    bridge.enqueue(make_event(5), hold="tab-session-id-0001")  # a release has rows to write
    with read_only(bridge.outbox.location):  # the file cannot be written any more
        with pytest.raises(OutboxUnavailable, match="nothing was stored"):
            bridge.enqueue(make_event(1))
        with pytest.raises(OutboxUnavailable):
            bridge.enqueue_many([make_event(2), make_event(3)])
        with pytest.raises(OutboxUnavailable):
            bridge.release("tab-session-id-0001")
    bridge.enqueue(make_event(4))  # writable again: a connection opened meanwhile recovers
    stored = bridge.outbox.query("SELECT event_id FROM outbox WHERE hold_key IS NULL ORDER BY id")
    assert [r[0] for r in stored] == ["ev-0", "ev-4"]
