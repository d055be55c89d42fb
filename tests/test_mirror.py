"""settle(): what a browser request's decision does, against a real Bridge (SQLite outbox, the
fake Graph). Accepted events are stored with one enqueue_many (all or none, Meta's rules checked
once per event); an event Meta would reject is a 400 with Meta's reasons and counts as refused
(no value it quotes is kept); a broken outbox is a 503; consent choices release or forget."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.visits import Visitor, new_id

from capi_bridge import drops
from capi_bridge.bridge import Bridge
from capi_bridge.delivery.journal import journals
from capi_bridge.drops import Drop, DropTally
from capi_bridge.errors import InvalidEvent
from capi_bridge.mirror import Batch, Choice, EndpointResult, settle
from capi_bridge.observations import Origin
from capi_bridge.pages import PageBridge
from capi_bridge.request import Response
from capi_bridge.testing import FakeGraph

SECRET = "mirror-tests-secret-key-0123456789"


def event(name: str = "Lead", **extra: Any) -> dict[str, Any]:
    return {
        "event_name": name,
        "event_id": new_id(),
        "event_time": int(time.time()),
        "action_source": "website",
        "event_source_url": "http://shop.test/",
        "user_data": {
            "client_ip_address": "81.2.69.142",
            "client_user_agent": "Mozilla/5.0",
            "fbp": "fb.1.1700000000000.123456789",
        },
        **extra,
    }


def accepted(*events: dict[str, Any], **batch: Any) -> EndpointResult:
    answer = Response.json(202, {"accepted": len(events)})
    return EndpointResult(answer, batch=Batch(tuple(events), **batch))


@pytest.fixture
def bridge(make_bridge: Any) -> Bridge:
    made: Bridge = make_bridge(secret_key=SECRET)
    return made


@pytest.fixture
def tally(bridge: Bridge) -> DropTally:
    return DropTally(lambda: bridge.outbox)


def counted(bridge: Bridge, tally: DropTally) -> list[tuple[str, str, str, int]]:
    tally.flush()
    return [
        (c.event_name, c.reason, c.detail, c.count)
        for c in drops.read(bridge.outbox, 0, time.time() + 3600)
    ]


def test_accepted_events_are_stored_as_the_batch_says(
    bridge: Bridge, tally: DropTally, fake_graph: FakeGraph
) -> None:
    lead, contact = event(), event("Contact")
    origin = Origin("browser", pixel_loaded=False)
    reply = settle(accepted(lead, contact, test_event_code="TEST7", origin=origin), bridge, tally)
    assert reply.status == 202
    assert bridge.flush(10)
    sent = {e["event_id"]: e for e in fake_graph.events}
    assert set(sent) == {lead["event_id"], contact["event_id"]}
    assert {e["test_event_code"] for e in sent.values()} == {"TEST7"}
    assert counted(bridge, tally) == []


def test_held_events_wait_for_the_choice(
    bridge: Bridge, tally: DropTally, fake_graph: FakeGraph
) -> None:
    hold = "mx5qqf1v-f73710d2-e2fd-4a5c-9cce-1b6fc8c73fa7"
    settle(accepted(event(), hold=hold), bridge, tally)
    assert bridge.stats().held == 1 and bridge.flush(5) and fake_graph.events == []
    granted = EndpointResult(Response.empty(204), choice=Choice(hold, "release"))
    assert settle(granted, bridge, tally).status == 204
    assert fake_graph.wait_for_events(1, timeout=10)
    settle(accepted(event(), hold=hold), bridge, tally)
    refused = EndpointResult(Response.empty(204), choice=Choice(hold, "forget"))
    assert settle(refused, bridge, tally).status == 204
    assert bridge.stats().held == 0


def test_a_trackSingle_batch_goes_to_its_pixel_only(
    make_bridge: Any, fake_graph: FakeGraph
) -> None:
    two = make_bridge(secret_key=SECRET, pixel_id="111,222")
    settle(accepted(event(), pixel_id="222"), two)
    assert two.flush(10)
    assert [e["pixel_id"] for e in fake_graph.events] == ["222"]


def test_an_event_meta_would_reject_is_a_400_with_its_reasons_and_counts_as_refused(
    bridge: Bridge, tally: DropTally, fake_graph: FakeGraph
) -> None:
    fine = event("Contact")
    no_currency = event("Purchase", custom_data={"value": 3, "currency": "XXX"})
    reply = settle(accepted(fine, no_currency, positions=(0, 2)), bridge, tally)
    error = json.loads(reply.body)["error"]
    assert (reply.status, error["code"], error["field"]) == (400, "invalid_event", "events[2]")
    assert error["problems"] == ["custom_data.currency 'XXX' is not an ISO 4217 code (e.g. USD)"]
    assert bridge.flush(5) and fake_graph.events == []  # all or none: the Contact neither
    assert sorted(counted(bridge, tally)) == [
        ("Contact", "refused", "not stored: another event of its post was refused", 1),
        # Meta's reason, without the value it quotes
        ("Purchase", "refused", "custom_data.currency … is not an ISO 4217 code (e.g. USD)", 1),
    ]


def test_invalid_event_says_which_events_of_a_bulk_import_failed(bridge: Bridge) -> None:
    with pytest.raises(InvalidEvent) as caught:
        bridge.enqueue_many([event(), event(event_time="soon"), event(), {"event_name": "X"}])
    assert sorted(caught.value.events) == [1, 3]
    assert caught.value.problems[0].startswith("event 1: ")
    assert not any(p.startswith("event ") for p in caught.value.events[1])


def _break(bridge: Bridge) -> None:
    """A broken outbox: its table gone from under the running app."""
    conn = sqlite3.connect(bridge.outbox.path)
    conn.execute("DROP TABLE outbox")
    conn.commit()
    conn.close()


def test_a_broken_outbox_keeps_the_events_and_logs_no_payload(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    _break(bridge)
    with caplog.at_level(logging.DEBUG, logger="capi_bridge"):
        reply = settle(accepted(event(custom_data={"note": "jsmith@example.com"})), bridge)
        # the request path never fails for the outbox: the event is journaled (durable, the
        # outbox's table is not needed for that) and the visitor gets the usual answer...
        assert (reply.status, json.loads(reply.body)) == (202, {"accepted": 1})
        # ...and it stays journaled while the outbox cannot take it
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            bridge.outbox.ingest()
        assert journals(bridge.outbox.journal.directory)
    assert "jsmith" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_failing_release_still_sends_the_choice(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    _break(bridge)
    hold = "mx5qqf1v-f73710d2-e2fd-4a5c-9cce-1b6fc8c73fa7"
    cookie = ("Set-Cookie", "capib_consent=1; Max-Age=15552000; Path=/")
    result = EndpointResult(Response.empty(204, headers=[cookie]), choice=Choice(hold, "release"))
    with caplog.at_level(logging.ERROR, logger="capi_bridge"):
        reply = settle(result, bridge)
    assert (reply.status, json.loads(reply.body)["error"]["code"]) == (503, "unavailable")
    assert reply.header("Retry-After") == "30" and reply.header("Set-Cookie") == cookie[1]
    assert "release of held events raised" in caplog.text and hold not in caplog.text


def test_drops_are_counted_even_when_nothing_is_stored(bridge: Bridge, tally: DropTally) -> None:
    ignored = EndpointResult(
        Response.json(202, {"accepted": 0}), dropped=(Drop("PageView", "bot", "headlesschrome"),)
    )
    settle(ignored, bridge, tally)
    assert counted(bridge, tally) == [("PageView", "bot", "headlesschrome", 1)]


# --- through PageBridge -----------------------------------------------------------------------


@pytest.fixture
def core(delivery_settings: Any) -> Iterator[PageBridge]:
    made = PageBridge(delivery_settings(secret_key=SECRET))
    yield made
    made.close(timeout=0)


def test_meta_reasons_reach_the_browser(core: PageBridge) -> None:
    visitor = Visitor(core)
    page = visitor.page("/")
    reply = visitor.post(page["token"], ("Purchase", new_id()), value=3)
    error = json.loads(reply.body)["error"]
    assert (reply.status, error["field"]) == (400, "events[0]")
    assert error["problems"] == [
        "custom_data.currency is required for Purchase (ISO 4217, e.g. USD)"
    ]
