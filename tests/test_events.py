from __future__ import annotations

import hashlib
import json
import time
import uuid

import pytest

from capi_bridge.events import STANDARD_EVENTS, Content, CustomData, Event, UserData, new_event_id


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_standard_events_are_metas_seventeen_plus_pageview() -> None:
    """The pixel reference's table of standard events (Meta Pixel reference, "Standard
    events"), and the base code's PageView."""
    metas = [
        *("AddPaymentInfo", "AddToCart", "AddToWishlist", "CompleteRegistration", "Contact"),
        *("CustomizeProduct", "Donate", "FindLocation", "InitiateCheckout", "Lead", "Purchase"),
        *("Schedule", "Search", "StartTrial", "SubmitApplication", "Subscribe", "ViewContent"),
    ]
    assert len(metas) == 17
    assert set(metas) | {"PageView"} == STANDARD_EVENTS


def test_new_event_id_is_a_random_uuid() -> None:
    a, b = new_event_id(), new_event_id()
    assert a != b
    assert str(uuid.UUID(a)) == a
    for _ in range(200):  # written out by hand: always a version 4, RFC 4122 variant UUID
        made = uuid.UUID(new_event_id())
        assert (made.version, made.variant) == (4, uuid.RFC_4122)


def test_to_graph_hashes_user_data_and_keeps_identifiers() -> None:
    event = Event(
        event_name="Purchase",
        event_time=1_700_000_000,
        event_id="order-1",
        event_source_url="https://shop.example/thanks",
        user_data=UserData(
            em=" John_Smith@gmail.com ",
            external_id="User-42",
            client_ip_address="203.0.113.9",
            client_user_agent="Mozilla/5.0",
            fbp="fb.1.1596403881668.1116446470",
        ),
        custom_data=CustomData(
            value=10.5,
            currency="EUR",
            contents=[Content(id="sku-1", quantity=2)],
            custom_properties={"coupon": "WINTER"},
        ),
    )
    wire = event.to_graph()
    assert wire["event_name"] == "Purchase"
    assert wire["action_source"] == "website"
    user = wire["user_data"]
    assert user["em"] == "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    assert user["external_id"] == sha("user-42")  # what the pixel sends for the same id
    assert user["client_ip_address"] == "203.0.113.9"
    assert user["fbp"] == "fb.1.1596403881668.1116446470"
    assert wire["custom_data"] == {
        "value": 10.5,
        "currency": "EUR",
        "contents": [{"id": "sku-1", "quantity": 2}],
        "coupon": "WINTER",
    }
    json.dumps(wire)  # the wire dict is JSON-serializable as is
    assert "opt_out" not in wire


def test_defaults_are_a_website_event_now_with_an_id() -> None:
    before = int(time.time())
    event = Event(event_name="Lead")
    assert before <= event.event_time <= int(time.time())
    assert event.event_id
    assert event.action_source == "website"


def test_custom_property_may_not_shadow_a_field() -> None:
    with pytest.raises(ValueError, match=r"custom_data\.value"):
        CustomData(value=1, custom_properties={"value": 2}).to_dict()


def test_from_graph_round_trip() -> None:
    data = {
        "event_name": "Lead",
        "event_time": 1_700_000_000,
        "event_id": "x",
        "action_source": "website",
        "user_data": {"em": "a@b.co"},
    }
    assert Event.from_graph(data).to_dict() == data
