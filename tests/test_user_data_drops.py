"""Tracking never breaks the app: a visitor's invalid value is dropped, never raised.

``<input type=email>`` accepts ``jane@intranet``; Meta does not. The event goes out without the
field, a warning names the field (never the value), and the inspector and diagnostics count the
drop. ``CAPI_BRIDGE_STRICT`` turns data problems back into exceptions for the app's own tests.
(The adapters' end-to-end version, a checkout on every framework: test_e2e_shops.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers.web import BROWSER, SECRET

from capi_bridge.assembly import build_core
from capi_bridge.errors import InvalidUserData
from capi_bridge.pages import PageBridge
from capi_bridge.request import RequestView
from capi_bridge.testing import FakeGraph
from capi_bridge.visitor_data import DropWarnings, visitor_value

BAD_EMAIL = "jane@intranet"


@pytest.fixture
def make_core(delivery_settings: Any) -> Iterator[Any]:
    cores: list[PageBridge] = []

    def make(**overrides: Any) -> PageBridge:
        settings = delivery_settings(
            secret_key=SECRET, inspector=True, allowed_hosts=("shop.test",), **overrides
        )
        core = build_core(settings)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close(timeout=0)


def view() -> RequestView:
    headers = {"user-agent": BROWSER["User-Agent"], "sec-fetch-dest": "document"}
    return RequestView.build("POST", "http", "shop.test", "/checkout", "", headers, "81.2.69.142")


def purchase(core: PageBridge, **user_data: Any) -> str:
    page = core.open_page(view())
    page.identify(em=BAD_EMAIL, external_id="user-7")
    return page.track(
        "Purchase", custom_data={"value": 5, "currency": "EUR"}, user_data=user_data or None
    )


def test_invalid_email_is_dropped_and_the_event_goes_out_with_the_rest(
    make_core: Any, fake_graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core()
    event_id = purchase(core)
    assert core.bridge.flush(10)
    [event] = fake_graph.events
    assert event["event_id"] == event_id
    assert "em" not in event["user_data"]
    assert event["user_data"]["external_id"]  # the rest went out
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "user_data.em" in warning.getMessage()
    assert "intranet" not in warning.getMessage()  # never the value


def test_the_warning_is_said_once_a_minute_per_field_with_the_count_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    warnings = DropWarnings(clock=lambda: now[0])

    def drop(field: str, value: str) -> dict[str, str]:
        dropped: dict[str, str] = {}
        kept = visitor_value(
            field, value, country=None, strict=False, dropped=dropped, warnings=warnings
        )
        assert kept is None
        return dropped

    def said() -> list[str]:
        messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        caplog.clear()
        return messages

    for _ in range(5):  # five checkouts with the same bad address: one line
        assert drop("em", BAD_EMAIL) == {"em": "is not an e-mail address"}  # counted each time
    [first] = said()
    assert "user_data.em" in first and "more dropped" not in first
    assert BAD_EMAIL not in first
    drop("ph", "call me")  # another field has its own minute
    [other_field] = said()
    assert "user_data.ph" in other_field
    now[0] += 59.9
    drop("em", BAD_EMAIL)
    assert said() == []
    now[0] += 0.1  # a minute after the first line: the next one, with what was left out
    drop("em", BAD_EMAIL)
    [second] = said()
    assert "user_data.em" in second and "; 5 more dropped since the last warning" in second
    now[0] += 60
    drop("em", BAD_EMAIL)
    [third] = said()
    assert "more dropped" not in third  # nothing was left out since the second


def test_every_drop_still_reaches_the_diagnostics_while_the_log_is_quiet(
    make_core: Any, fake_graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core()
    for _ in range(3):
        purchase(core)
    assert core.bridge.flush(10)
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    [dropped] = core.bridge.diagnostics(3600).by_name()["Purchase"].dropped
    assert dropped["count"] == 3


def test_a_bad_value_given_to_track_concerns_that_event_only(
    make_core: Any, fake_graph: FakeGraph
) -> None:
    core = make_core()
    page = core.open_page(view())
    page.track("Lead", user_data={"ph": "call me", "zp": "10001"})
    page.track("Lead")
    assert core.bridge.flush(10)
    with_zp, without = sorted(fake_graph.events, key=lambda e: "zp" not in e["user_data"])
    assert "ph" not in with_zp["user_data"] and with_zp["user_data"]["zp"]
    assert "zp" not in without["user_data"]
    diagnostics = core.bridge.diagnostics(3600).by_name()["Lead"]
    assert [d["count"] for d in diagnostics.dropped] == [1]  # the second Lead dropped nothing


def test_the_inspector_and_diagnostics_count_the_drop(
    make_core: Any, fake_graph: FakeGraph
) -> None:
    core = make_core()
    event_id = purchase(core)
    purchase(core)
    assert core.bridge.flush(10)
    diagnostics = core.bridge.diagnostics(3600).by_name()["Purchase"]
    assert diagnostics.count == 2  # notes are not events
    assert diagnostics.server_copies == 2
    [dropped] = diagnostics.dropped
    assert dropped["count"] == 2
    assert dropped["message"] == "user_data.em dropped: is not an e-mail address"
    assert core.inspector is not None
    rows = {row["event_id"]: row for row in core.inspector.data()["rows"]}
    row = rows[event_id]
    assert row["server"] is not None and row["state"] == "delivered"
    assert any("user_data.em dropped" in flag for flag in row["flags"])
    assert BAD_EMAIL not in str(rows)


def test_strict_settings_raise_without_the_value(make_core: Any, fake_graph: FakeGraph) -> None:
    core = make_core(strict=True)
    with pytest.raises(InvalidUserData, match=r"user_data\.em: is not an e-mail address") as caught:
        purchase(core)
    assert "intranet" not in str(caught.value)
    page = core.open_page(view())
    with pytest.raises(InvalidUserData, match=r"user_data\.ph"):
        page.track("Lead", user_data={"ph": "call me"})
    assert core.bridge.flush(10)
    assert fake_graph.events == []


def test_programming_errors_still_raise(make_core: Any) -> None:
    page = make_core().open_page(view())
    with pytest.raises(ValueError, match="'email' is not a Meta customer-information key"):
        page.track("Lead", user_data={"email": "a@example.com"})
    with pytest.raises(TypeError, match="'zp' must be text"):
        page.track("Lead", user_data={"zp": 10001.5})
