"""The enqueue path's memo of hashed customer information (capi_bridge.hash_memo): the same
result as hash_user_data, bounded, and no raw value held anywhere in it."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from helpers.delivery_worker import make_event

from capi_bridge.errors import InvalidUserData
from capi_bridge.hash_memo import HashMemo
from capi_bridge.normalize import hash_user_data

RAW = {
    "em": ["Ada.Lovelace@Example.COM", " ada@example.com ", None],
    "ph": "+1 (650) 555-0123",
    "fn": "Ada",
    "ln": "Lovelace",
    "ct": "San José",
    "st": "California",
    "zp": "94025-1234",
    "country": "United States",
    "db": "1815-12-10",
    "ge": "female",
    "external_id": ["Customer 42", "customer42"],
    "client_ip_address": " 203.0.113.7 ",
    "client_user_agent": "Mozilla/5.0",
    "fbp": "fb.1.1700000000000.1234567890",
    "unknown_key": "passes through for the schema guard",
    "empty": "",
}


def test_the_memo_gives_exactly_what_hash_user_data_gives() -> None:
    memo = HashMemo(size=64)
    expected = hash_user_data(RAW)
    assert memo.hash_user_data(RAW) == expected  # computed
    assert memo.hash_user_data(RAW) == expected  # remembered
    for i in range(50):  # the benchmark's events, each twice
        user = make_event(i, "memo")["user_data"]
        assert memo.hash_user_data(user) == hash_user_data(user)
        assert memo.hash_user_data(user) == hash_user_data(user)


def test_the_memo_is_bounded() -> None:
    memo = HashMemo(size=100)
    for i in range(1000):
        memo.hash_user_data({"ph": f"+1 650 555 {i:04d}", "fn": f"visitor{i}"})
        assert len(memo) <= 100
    assert len(memo) > 50  # it still remembers the recent ones


def test_e_mails_and_external_ids_are_hashed_each_time_not_kept() -> None:
    """DIRECT_FIELDS: cheap to normalize and mostly new on every event, so not memoized;
    their hashes are the same all the same."""
    memo = HashMemo(size=100)
    user = {"em": [" Ada@Example.com", "b@c.co"], "external_id": "Customer 42"}
    for _ in range(2):
        assert memo.hash_user_data(user) == hash_user_data(user)
        assert memo.hash_one("em", "Ada@Example.com", None) == hash_user_data(user)["em"][0]
    assert len(memo) == 0


def test_the_memo_holds_no_raw_value() -> None:
    memo = HashMemo(size=1000)
    secret = "very.private.person@example.com"
    phone = "+44 20 7946 0958"
    memo.hash_user_data({"em": secret, "ph": phone, "fn": "Zebedee"})
    held: list[Any] = [memo.__dict__, memo._values, *memo._values.items()]
    for key, value in memo._values.items():
        assert isinstance(key, bytes) and len(key) == 16  # a keyed digest, not the value
        assert value is None or len(value) == 64  # a SHA-256 hash
        held += [key, value]
    text = repr(held).lower()
    for raw in (secret, phone, "zebedee", "private.person", "7946"):
        assert raw.lower() not in text
    # Nothing the memo refers to is one of the raw strings either.
    referred = {id(obj) for obj in gc.get_referents(memo._values, *memo._values)}
    assert id(secret) not in referred and id(phone) not in referred


def test_the_memo_key_is_per_process_and_secret() -> None:
    one, two = HashMemo(), HashMemo()
    assert one._digest("em", None, "a@b.co") != two._digest("em", None, "a@b.co")
    assert one._digest("em", None, "a@b.co") == one._digest("em", None, "a@b.co")
    assert one._digest("em", "us", "a@b.co") != one._digest("em", None, "a@b.co")


def test_invalid_values_raise_every_time_and_are_not_kept() -> None:
    memo = HashMemo(size=10)
    for _ in range(2):
        with pytest.raises(InvalidUserData):
            memo.hash_user_data({"em": "not an address"})
    assert len(memo) == 0


def test_the_hint_is_part_of_the_key() -> None:
    """A national number hashes differently per country: the memo must not mix them up."""
    memo = HashMemo()
    us = memo.hash_user_data({"ph": "020 7946 0958", "country": "de"})
    gb = memo.hash_user_data({"ph": "020 7946 0958", "country": "gb"})
    assert us == hash_user_data({"ph": "020 7946 0958", "country": "de"})
    assert gb == hash_user_data({"ph": "020 7946 0958", "country": "gb"})
    assert us["ph"] != gb["ph"]


def test_a_bridge_hashes_through_its_memo(tmp_path: Any) -> None:
    from capi_bridge.bridge import Bridge
    from capi_bridge.settings import Settings

    settings = Settings(
        pixel_id="1234567890",
        access_token="t",
        graph_url="http://127.0.0.1:9",
        outbox_path=str(tmp_path / "o.sqlite3"),
    )
    bridge = Bridge(settings)
    try:
        before = len(bridge.rows.memo)
        bridge.rows.rows(make_event(1, "b"), None, None, float(make_event(1)["event_time"]), None)
        assert len(bridge.rows.memo) > before
    finally:
        bridge.close(1)
