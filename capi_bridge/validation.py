"""The schema guard: what Meta would reject, said before anything is stored or sent.

Meta rejects a whole batch of up to 1000 events when one of them is invalid, and reports it hours
later in Events Manager if at all. :func:`validate_event` checks one wire event against the rules
Meta documents (server-event, customer-information and standard-parameter pages, the "baseline
requirements for matching" of the best-practices page) and returns one plain sentence per fault,
each naming the field, so the caller learns why at once. It runs on every enqueued event, so it
is written for speed: no regex compiled per call, no allocation on the happy path beyond the list.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from capi_bridge.errors import InvalidUserData
from capi_bridge.events import (
    ACTION_SOURCES,
    SERVER_EVENT_KEYS,
    Event,
)
from capi_bridge.normalize import HASHED_FIELDS, PLAIN_FIELDS
from capi_bridge.normalize_text import masked

#: Meta's window for website events; physical-store events may be 62 days old.
MAX_AGE_SECONDS = 7 * 24 * 3600
MAX_AGE_PHYSICAL_STORE = 62 * 24 * 3600
#: Meta documents no future bound; client clocks drift, so allow a minute and flag the rest.
FUTURE_TOLERANCE = 60

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: fb.<subdomain index>.<creation time in ms>.<payload>[.<Parameter Builder appendix>]
_FB_COOKIE = re.compile(
    r"fb\.\d{1,2}\.\d{12,13}\.[^.\s]{1,600}(\.[A-Za-z0-9_-]{2}|\.[A-Za-z0-9_-]{8})?"
)
_CURRENCY = re.compile(r"[A-Za-z]{3}")

#: "Baseline requirements for matching" (best practices, Graph API v13.0): an event whose
#: customer information is a subset of one of these sets is rejected.
TOO_BROAD = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)

_USER_DATA_KEYS = HASHED_FIELDS | PLAIN_FIELDS
_HASHED, _PLAIN, _AGENT = 1, 2, 3
#: What each user_data key Meta knows is: one look-up per key in the guard's loop.
_USER_KEY_KINDS = {
    **dict.fromkeys(HASHED_FIELDS, _HASHED),
    **dict.fromkeys(PLAIN_FIELDS, _PLAIN),
    "client_user_agent": _AGENT,
}
#: Keys that appear in some TOO_BROAD set: an event with any other key present is not too broad.
_BROAD_KEYS = frozenset().union(*TOO_BROAD)
_DELIVERY_CATEGORIES = frozenset({"in_store", "curbside", "home_delivery"})
_CONTENT_TYPES = frozenset({"product", "product_group"})
_SEGMENTS = frozenset(
    {
        "new_customer_to_business",
        "new_customer_to_business_line",
        "new_customer_to_product_area",
        "new_customer_to_medium",
        "existing_customer_to_business",
        "existing_customer_to_business_line",
        "existing_customer_to_product_area",
        "existing_customer_to_medium",
        "customer_in_loyalty_program",
    }
)
#: ISO 4217 active codes (Meta: "valid ISO 4217 three-digit currency code").
_ISO_4217_CODES = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CLP CNY COP CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP
    GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS
    KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR
    MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF
    SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD
    TWD TZS UAH UGX USD UYU UZS VES VED VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG ZWL
"""
ISO_4217 = frozenset(_ISO_4217_CODES.split())


def validate_event(event: Event | Mapping[str, Any], *, now: float | None = None) -> list[str]:
    """Every reason Meta would reject ``event``; empty when it would be accepted.

    An :class:`~capi_bridge.events.Event` is checked as it will be sent (its customer
    information normalized and hashed); a mapping is checked as the wire dict it already is, so
    raw e-mails in it are reported as unhashed.
    """
    given: object = event  # untyped callers (JSON bodies, bulk imports) pass anything
    if isinstance(given, Event):
        try:
            data: Mapping[str, Any] = given.to_graph()
        except InvalidUserData as exc:
            return [str(exc)]
    elif isinstance(given, Mapping):
        data = given
    else:
        return [f"an event must be a mapping or an Event, not {type(given).__name__}"]
    return validate_wire(data, time.time() if now is None else now)


def validate_wire(data: Mapping[str, Any], now: float, *, hashed_here: bool = False) -> list[str]:
    """:func:`validate_event` of a wire mapping, at ``now``.

    ``hashed_here`` says its ``user_data`` is the output of capi-bridge's own hasher
    (:func:`~capi_bridge.normalize.hash_user_data` or its memo), as on ``Bridge``'s enqueue
    path: every hashed field there is lowercase SHA-256 hex by construction (the hasher
    hashes a value, passes on one already hashed only if it is 64 hex digits, lowercased, or
    raises), so their shape is not matched again. Everything else is checked the same.
    """
    problems: list[str] = []
    if not data.keys() <= SERVER_EVENT_KEYS:  # no set built when every key is known
        unknown = data.keys() - SERVER_EVENT_KEYS
        problems.extend(
            f"unknown key {key!r}: Meta rejects unexpected keys (put custom values in custom_data)"
            for key in sorted(map(str, unknown))
        )
    _check_name_and_source(data, problems)
    _check_time(data, problems, now)
    _check_user_data(data, problems, not hashed_here)
    custom = data.get("custom_data")
    if custom is not None or data.get("event_name") == "Purchase":
        # A Purchase with no custom_data at all lacks value and currency just as one with an
        # empty custom_data does; checking only when present let the bare event through.
        _check_custom_data(str(data.get("event_name")), {} if custom is None else custom, problems)
    _check_dpo(data, problems)
    segment = data.get("customer_segmentation")
    if segment is not None and segment not in _SEGMENTS:
        problems.append(f"customer_segmentation: {segment!r} is not one of Meta's segments")
    opt_out = data.get("opt_out")
    if opt_out is not None and not isinstance(opt_out, bool):
        problems.append("opt_out must be true or false")
    return problems


def _check_name_and_source(data: Mapping[str, Any], problems: list[str]) -> None:
    name = data.get("event_name")
    if not isinstance(name, str) or not name.strip():
        problems.append(
            "event_name is required (a standard event such as Purchase, or a custom name)"
        )
    elif len(name) > 50:
        problems.append(f"event_name {name[:20]!r}... is longer than 50 characters")
    event_id = data.get("event_id")
    if event_id is not None and (
        not isinstance(event_id, str) or not event_id or len(event_id) > 500
    ):
        problems.append("event_id must be a non-empty string (it is the deduplication key)")
    source = data.get("action_source")
    if source is None:
        problems.append("action_source is required (use 'website' for events on your site)")
    elif source not in ACTION_SOURCES:
        problems.append(
            f"action_source {source!r} is not one of {', '.join(sorted(ACTION_SOURCES))}"
        )
    if source == "website":
        url = data.get("event_source_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems.append("event_source_url is required for website events (the page's URL)")
    for key in ("event_source_url", "referrer_url"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{key} must be a string")


def _check_time(data: Mapping[str, Any], problems: list[str], now: float) -> None:
    when = data.get("event_time")
    if isinstance(when, bool) or not isinstance(when, int):
        problems.append("event_time is required: an integer Unix timestamp in seconds")
        return
    if when > 100_000_000_000:
        problems.append("event_time looks like milliseconds: Meta wants seconds (divide by 1000)")
        return
    limit = (
        MAX_AGE_PHYSICAL_STORE if data.get("action_source") == "physical_store" else MAX_AGE_SECONDS
    )
    if when < now - limit:
        days = limit // 86400
        problems.append(f"event_time is more than {days} days old: Meta rejects the whole batch")
    elif when > now + FUTURE_TOLERANCE:
        problems.append("event_time is in the future: check the client's or server's clock")


def _check_user_data(data: Mapping[str, Any], problems: list[str], hashes: bool) -> None:
    """One pass over ``user_data``, no set built on the happy path (it runs on every event);
    ``hashes``: check that hashed fields are SHA-256 hex (see :func:`validate_wire`)."""
    user = data.get("user_data")
    if not (user.__class__ is dict or isinstance(user, Mapping)) or not user:
        problems.append("user_data is required and must hold at least one customer parameter")
        return
    unknown: list[str] = []
    unhashed: list[str] = []
    agent = False  # client_user_agent present
    narrow = True  # every key present could be too broad to match (see TOO_BROAD)
    present: list[str] = []  # the keys present, while they all could be
    kinds = _USER_KEY_KINDS
    for key, value in user.items():
        kind = kinds.get(key)
        if kind is None:
            unknown.append(str(key))
            continue
        if value.__class__ is str:  # the usual case: one test for emptiness, not three
            if not value:
                continue
        elif value is None or value == "" or value == []:
            continue
        if kind == _HASHED:
            if hashes and not _all_hashed(value):
                unhashed.append(key)
        elif kind == _AGENT:
            agent = True
        if narrow:
            if key in _BROAD_KEYS:
                present.append(key)
            else:
                narrow = False
    if unknown:
        for key in sorted(unknown):
            problems.append(f"user_data.{key} is not a customer information parameter Meta knows")
    for key in unhashed:
        problems.append(
            f"user_data.{key} is not SHA-256 hashed: hash it (capi_bridge.hash_user_data) "
            "or pass raw values through Event/Bridge, which hash them"
        )
    if not agent and data.get("action_source") == "website":
        problems.append("user_data.client_user_agent is required for website events")
    for key in ("fbc", "fbp"):
        value = user.get(key)
        if value is not None and not (isinstance(value, str) and _fb_cookie(value)):
            payload = "fbclid" if key == "fbc" else "random number"
            problems.append(
                f"user_data.{key} {masked(str(value))} is malformed: "
                f"expected fb.<subdomain index>.<ms timestamp>.<{payload}>"
            )
    ip = user.get("client_ip_address")
    if ip is not None and not _valid_ip(ip):
        problems.append(
            f"user_data.client_ip_address {masked(str(ip))} is not a bare IPv4/IPv6 address "
            "(no port, no brackets)"
        )
    if present and narrow:
        matchable = frozenset(present)
        if any(matchable <= combo for combo in TOO_BROAD):
            problems.append(
                "user_data holds too little customer information to match "
                f"({', '.join(sorted(matchable))}): add em, ph, external_id, fbp, fbc or the "
                "client IP"
            )


def _all_hashed(value: object) -> bool:
    """A SHA-256 hex digest, or a list of them."""
    if value.__class__ is str:
        return len(value) == 64 and _SHA256.fullmatch(value) is not None  # type: ignore[arg-type,unused-ignore]
    values = value if isinstance(value, list) else [value]
    return all(isinstance(v, str) and _SHA256.fullmatch(v) for v in values)


@functools.lru_cache(maxsize=4096)  # a visitor's cookies repeat on every event of the visit
def _fb_cookie(value: str) -> bool:
    return _FB_COOKIE.fullmatch(value) is not None


def _valid_ip(value: object) -> bool:
    if not isinstance(value, str):
        return False
    return _parses_as_ip(value)


@functools.lru_cache(maxsize=4096)  # visitors and proxies repeat; ipaddress costs ~4 µs a call
def _parses_as_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _is_finite(value: object) -> bool:
    """A number Meta can read: NaN and infinities (``float("nan")``, ``"inf"``) have no JSON
    form, and an integer too large for a float has no meaning as money. Apart from
    :func:`_is_number` so the check reads as the one bound server events share with the
    endpoint's (which also bounds the size and the sign: a browser's value is untrusted)."""
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (OverflowError, ValueError, TypeError):
        return False


def _check_custom_data(name: str, custom: object, problems: list[str]) -> None:
    if not (custom.__class__ is dict or isinstance(custom, Mapping)):
        problems.append("custom_data must be an object")
        return
    value, currency = custom.get("value"), custom.get("currency")
    if name == "Purchase":
        if currency is None:
            problems.append("custom_data.currency is required for Purchase (ISO 4217, e.g. USD)")
        if value is None:
            problems.append("custom_data.value is required for Purchase (a number)")
    if currency is not None and not (
        (currency.__class__ is str and currency in ISO_4217)  # the usual "USD": one look-up
        or (
            isinstance(currency, str)
            and _CURRENCY.fullmatch(currency)
            and currency.upper() in ISO_4217
        )
    ):
        problems.append(f"custom_data.currency {currency!r} is not an ISO 4217 code (e.g. USD)")
    for key in ("value", "predicted_ltv", "net_revenue"):
        number = value if key == "value" else custom.get(key)
        if number is None or (number.__class__ is float and math.isfinite(number)):
            continue
        if not _is_number(number):
            problems.append(f"custom_data.{key} must be a number")
        elif not _is_finite(number):
            problems.append(f"custom_data.{key} must be a finite number (not NaN or infinity)")
    num_items = custom.get("num_items")
    if num_items is not None and (isinstance(num_items, bool) or not isinstance(num_items, int)):
        problems.append("custom_data.num_items must be an integer")
    contents = custom.get("contents")
    if contents is not None:
        _check_contents(contents, problems)
    ids = custom.get("content_ids")
    if ids is not None and (
        not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids)
    ):
        problems.append("custom_data.content_ids must be a list of strings")
    content_type = custom.get("content_type")
    if content_type is not None and content_type not in _CONTENT_TYPES:
        problems.append("custom_data.content_type must be 'product' or 'product_group'")
    category = custom.get("delivery_category")
    if category is not None and category not in _DELIVERY_CATEGORIES:
        problems.append("custom_data.delivery_category must be in_store, curbside or home_delivery")


def _check_contents(contents: object, problems: list[str]) -> None:
    if not isinstance(contents, list):
        problems.append("custom_data.contents must be a list of {id, quantity} objects")
        return
    for index, item in enumerate(contents):
        if not (item.__class__ is dict or isinstance(item, Mapping)):
            problems.append(f"custom_data.contents[{index}] must be an object with id and quantity")
            continue
        item_id = item.get("id")
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
            problems.append(
                f"custom_data.contents[{index}].id is required (Meta rejects contents without id)"
            )
        quantity = item.get("quantity")
        if quantity is not None and (isinstance(quantity, bool) or not isinstance(quantity, int)):
            problems.append(f"custom_data.contents[{index}].quantity must be an integer")
        price = item.get("item_price")
        if price is None or (price.__class__ is float and math.isfinite(price)):
            continue
        if not (_is_number(price) and _is_finite(price)):
            problems.append(f"custom_data.contents[{index}].item_price must be a finite number")


def _check_dpo(data: Mapping[str, Any], problems: list[str]) -> None:
    options = data.get("data_processing_options")
    if options is None:
        return
    if not isinstance(options, list) or any(opt != "LDU" for opt in options):
        problems.append("data_processing_options must be [] or ['LDU']")
        return
    if options:
        country = data.get("data_processing_options_country")
        state = data.get("data_processing_options_state")
        if country not in (0, 1):
            problems.append(
                "data_processing_options_country must be 0 (geolocate) or 1 (USA) with LDU"
            )
        if state is None and "client_ip_address" not in (data.get("user_data") or {}):
            problems.append(
                "data_processing_options_state is required with LDU when there is no client IP"
            )
        elif state is not None and state not in (0, *range(1000, 1014)):
            problems.append("data_processing_options_state must be 0 or a state code 1000-1013")
