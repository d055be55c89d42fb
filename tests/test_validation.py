from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from capi_bridge.events import Event, UserData
from capi_bridge.validation import validate_event

NOW = 1_800_000_000


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def good(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": NOW - 10,
        "event_id": "order-1",
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": sha("a@b.co"),
            "client_user_agent": "Mozilla/5.0",
            "client_ip_address": "203.0.113.9",
            "fbp": "fb.1.1596403881668.1116446470",
            "fbc": "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890",
        },
        "custom_data": {"value": 12.5, "currency": "USD", "contents": [{"id": "a", "quantity": 1}]},
    }
    event.update(copy.deepcopy(changes))
    return event


def problems_of(event: Any) -> list[str]:
    return validate_event(event, now=NOW)


def assert_one_problem(event: Any, *needles: str) -> None:
    found = problems_of(event)
    assert len(found) == 1, found
    for needle in needles:
        assert needle in found[0], found


def test_a_good_event_passes() -> None:
    assert problems_of(good()) == []


def test_event_object_is_checked_as_sent() -> None:
    event = Event(
        event_name="Lead",
        event_time=NOW,
        event_source_url="https://shop.example/",
        user_data=UserData(em="A@B.co", client_user_agent="Mozilla/5.0"),
    )
    assert validate_event(event, now=NOW) == []


def test_event_object_with_unnormalizable_pii_reports_the_field() -> None:
    event = Event(
        event_name="Lead",
        event_time=NOW,
        event_source_url="https://shop.example/",
        user_data=UserData(em="not-an-email", client_user_agent="Mozilla/5.0"),
    )
    found = validate_event(event, now=NOW)
    assert len(found) == 1
    assert "user_data.em" in found[0]


@pytest.mark.parametrize("key", ["event_name", "event_time", "action_source", "user_data"])
def test_required_fields(key: str) -> None:
    event = good()
    del event[key]
    found = problems_of(event)
    assert any(key in p and "required" in p for p in found), found


def test_action_source_values() -> None:
    assert_one_problem(good(action_source="web"), "action_source", "'web'")
    event = good(action_source="physical_store")
    del event["event_source_url"]
    assert problems_of(event) == []


def test_website_events_need_url_and_user_agent() -> None:
    event = good()
    del event["event_source_url"]
    assert_one_problem(event, "event_source_url")
    event = good()
    del event["user_data"]["client_user_agent"]
    assert_one_problem(event, "client_user_agent")


def test_event_time_window() -> None:
    assert_one_problem(good(event_time=NOW - 8 * 86400), "7 days")
    assert problems_of(good(event_time=NOW - 6 * 86400)) == []
    assert_one_problem(good(event_time=NOW + 3600), "future")
    assert_one_problem(good(event_time=NOW * 1000), "milliseconds")
    assert_one_problem(good(event_time="2026-01-01"), "integer")
    assert_one_problem(good(event_time=True), "integer")
    store = good(event_time=NOW - 30 * 86400, action_source="physical_store")
    assert problems_of(store) == []


@pytest.mark.parametrize(
    "keys",
    [
        {"ge": "m", "ct": "x", "st": "ca", "country": "us", "zp": "94025"},
        {"ct": "paris", "country": "fr", "client_user_agent": "Mozilla"},
        {"db": "19970216", "client_user_agent": "Mozilla"},
        {"fn": "mary", "ge": "f"},
        {"ln": "smith", "ge": "f"},
        {"client_user_agent": "Mozilla"},
    ],
)
def test_too_broad_customer_information(keys: dict[str, str]) -> None:
    user = {k: (v if k == "client_user_agent" else sha(v)) for k, v in keys.items()}
    event = good(user_data=user, action_source="other")
    del event["event_source_url"]
    found = problems_of(event)
    assert any("too little customer information" in p for p in found), found


@pytest.mark.parametrize(
    "keys",
    [
        {"fn": "mary", "ln": "smith", "ge": "f"},
        {"em": "a@b.co"},
        {"ct": "x", "client_ip_address": "203.0.113.1"},
        {"external_id": "42", "ge": "f"},
    ],
)
def test_enough_customer_information(keys: dict[str, str]) -> None:
    user = {k: (v if k == "client_ip_address" else sha(v)) for k, v in keys.items()}
    event = good(user_data=user, action_source="other")
    del event["event_source_url"]
    assert problems_of(event) == []


def test_unhashed_pii_is_named() -> None:
    event = good()
    event["user_data"]["em"] = "a@b.co"
    event["user_data"]["ph"] = ["16505551212"]
    found = problems_of(event)
    assert len(found) == 2
    assert any("user_data.em is not SHA-256 hashed" in p for p in found)
    assert any("user_data.ph is not SHA-256 hashed" in p for p in found)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fbc", "AbCdEfGhIj"),  # a raw fbclid sent as fbc (peers.md complaint 4)
        ("fbc", "fb.1..AbC"),
        ("fbp", "fb.1.1596403881.1116446470"),  # seconds, not ms
        ("fbp", "garbage.x.y.z"),
    ],
)
def test_malformed_fbc_fbp(key: str, value: str) -> None:
    event = good()
    event["user_data"][key] = value
    assert_one_problem(event, f"user_data.{key}", "malformed")


def test_param_builder_appendix_is_accepted() -> None:
    event = good()
    event["user_data"]["fbc"] = "fb.1.1554763741205.AbCdEf.AQICAQMC"
    event["user_data"]["fbp"] = "fb.1.1596403881668.1116446470.Bg"
    assert problems_of(event) == []


@pytest.mark.parametrize("ip", ["203.0.113.9:443", "[2001:db8::1]", "2001:db8::1 ", "example.com"])
def test_bad_ips(ip: str) -> None:
    event = good()
    event["user_data"]["client_ip_address"] = ip
    assert_one_problem(event, "client_ip_address")


def test_ipv6_is_fine() -> None:
    event = good()
    event["user_data"]["client_ip_address"] = "2001:db8:85a3::8a2e:370:7334"
    assert problems_of(event) == []


def test_purchase_needs_currency_and_numeric_value() -> None:
    assert_one_problem(good(custom_data={"value": 1}), "currency", "required")
    assert_one_problem(good(custom_data={"currency": "USD"}), "value", "required")
    assert_one_problem(good(custom_data={"value": "ten", "currency": "USD"}), "value", "number")
    assert_one_problem(good(custom_data={"value": 1, "currency": "XXQ"}), "ISO 4217")
    assert problems_of(good(custom_data={"value": "142.52", "currency": "usd"})) == []


def test_contents_need_ids() -> None:
    assert_one_problem(
        good(custom_data={"value": 1, "currency": "USD", "contents": [{"quantity": 1}]}),
        "contents[0].id",
    )


def test_unknown_keys_are_named() -> None:
    found = problems_of(good(advertiser_tracking_enabled=1))
    assert found == [
        "unknown key 'advertiser_tracking_enabled': Meta rejects unexpected keys "
        "(put custom values in custom_data)"
    ]
    event = good()
    event["user_data"]["email"] = sha("x")
    assert_one_problem(event, "user_data.email")


def test_ldu() -> None:
    assert (
        problems_of(
            good(
                data_processing_options=["LDU"],
                data_processing_options_country=1,
                data_processing_options_state=1000,
            )
        )
        == []
    )
    assert_one_problem(good(data_processing_options=["GDPR"]), "data_processing_options")
    assert_one_problem(
        good(data_processing_options=["LDU"], data_processing_options_state=0),
        "data_processing_options_country",
    )


def test_not_a_mapping() -> None:
    assert problems_of(["event"]) == ["an event must be a mapping or an Event, not list"]


def test_each_fault_is_reported_once() -> None:
    event = good(action_source="web", event_time=NOW - 9 * 86400, custom_data={"value": 1})
    assert len(problems_of(event)) == 3


def test_a_purchase_without_custom_data_lacks_value_and_currency() -> None:
    event = good()
    del event["custom_data"]
    found = problems_of(event)
    assert any("currency is required for Purchase" in p for p in found), found
    assert any("value is required for Purchase" in p for p in found), found
    lead = good(event_name="Lead")
    del lead["custom_data"]
    assert problems_of(lead) == []
