"""Shape checks for the events a browser posts to the mirror endpoint.

The browser is untrusted input: every field is type- and size-checked here before anything is
enriched or stored, and each failure names the field (``events[2].custom_data.value``) so a
developer sees at once what their ``capiBridge.track()`` call got wrong. Meta's own rules
(Purchase needs currency, ISO codes, matching quality) are applied afterwards by
``validation.validate_event``; this module keeps hostile or oversized input away from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

from capi_bridge.events import CUSTOM_DATA_KEYS

#: Most events one request may carry (the browser sends one or a few at a time).
MAX_EVENTS = 20
#: How far in the past a (clock-corrected) browser event_time is believed; older or future
#: times are replaced by the receive time.
EVENT_TIME_WINDOW = 3600.0
MAX_CUSTOM_KEYS = 50
MAX_LIST_ITEMS = 200
MAX_STRING = 1000
MAX_URL = 2048

EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,63}")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_EVENT_KEYS = frozenset(
    {"event_name", "event_id", "event_time", "custom_data", "event_source_url", "referrer_url"}
)
_NUMBER_KEYS = frozenset({"value", "predicted_ltv", "net_revenue"})
_NUMERIC_TEXT = re.compile(r"-?\d{1,15}(\.\d{1,6})?")


class Rejected(Exception):
    """A request the endpoint refuses: HTTP status, machine code, sentence, faulty field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def _bad(field: str, message: str, code: str = "invalid_field") -> Rejected:
    return Rejected(400, code, f"{field}: {message}", field)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and abs(value) < 1e15


def _check_scalar(value: Any, field: str) -> None:
    if value is None or isinstance(value, bool) or _is_number(value):
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _bad(field, f"is longer than {MAX_STRING} characters")
        return
    raise _bad(field, "must be a string, number, boolean or null")


def _check_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(field, "must be a list")
    if len(value) > MAX_LIST_ITEMS:
        raise _bad(field, f"has more than {MAX_LIST_ITEMS} items")
    return value


def _check_contents(value: Any, field: str) -> None:
    for i, item in enumerate(_check_list(value, field)):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object with an id")
        if not isinstance(item.get("id"), (str, int)) or isinstance(item.get("id"), bool):
            raise _bad(f"{where}.id", "is required (a string or an integer)")
        for key, sub in item.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise _bad(where, "has an invalid key")
            _check_scalar(sub, f"{where}.{key}")


def check_custom_data(data: Any, field: str) -> dict[str, Any] | None:
    """``custom_data`` as given, once every key and value has a sane type and size."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _bad(field, "must be an object")
    if len(data) > MAX_CUSTOM_KEYS:
        raise _bad(field, f"has more than {MAX_CUSTOM_KEYS} keys")
    for key, value in data.items():
        where = f"{field}.{key}"
        if not _KEY.fullmatch(key):
            raise _bad(field, f"key {key[:70]!r} is not a parameter name (letters, digits, _ . -)")
        if key in _NUMBER_KEYS:
            if not (
                _is_number(value) or (isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value))
            ):
                raise _bad(where, "must be a number")
        elif key == "num_items":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9:
                raise _bad(where, "must be a non-negative integer")
        elif key == "content_ids":
            for i, item in enumerate(_check_list(value, where)):
                if isinstance(item, bool) or not isinstance(item, (str, int)):
                    raise _bad(f"{where}[{i}]", "must be a string or an integer")
                _check_scalar(item, f"{where}[{i}]")
        elif key == "contents":
            _check_contents(value, where)
        elif key == "status":
            if not isinstance(value, (str, bool)):
                raise _bad(where, "must be a string or a boolean")
            _check_scalar(value, where)
        elif key in CUSTOM_DATA_KEYS:
            if not isinstance(value, str):
                raise _bad(where, "must be a string")
            _check_scalar(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(_check_list(value, where)):
                _check_scalar(item, f"{where}[{i}]")
        else:
            _check_scalar(value, where)
    return data


def _event_time(raw: Any, offset: float, now: float) -> int:
    """The browser's time corrected by its clock offset; the receive time if implausible."""
    if _is_number(raw):
        corrected = float(raw) + offset
        if now - EVENT_TIME_WINDOW <= corrected <= now + 60:
            return int(min(corrected, now))
    return int(now)


def _url(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise _bad(field, f"must be a URL of at most {MAX_URL} characters")
    return value if value.startswith(("http://", "https://")) else None


def check_events(
    events: Any, sent_at: Any, *, now: float, names: Collection[str]
) -> list[dict[str, Any]]:
    """The posted events, checked and normalized (event_time corrected, empty keys dropped).

    ``sent_at`` is the browser's clock (ms) when it sent the request: the difference to ``now``
    corrects every event_time for a wrong client clock, so an event the browser held (waiting
    for consent, a token refresh) keeps the time it happened.
    """
    if not isinstance(events, list) or not events:
        raise _bad("events", "must be a non-empty list", "malformed")
    if len(events) > MAX_EVENTS:
        raise Rejected(413, "too_many_events", f"at most {MAX_EVENTS} events per request", "events")
    offset = 0.0
    if _is_number(sent_at) and abs(now - sent_at / 1000) < 86400:
        offset = now - sent_at / 1000
    out = []
    for index, raw in enumerate(events):
        field = f"events[{index}]"
        if not isinstance(raw, dict):
            raise _bad(field, "must be an object", "malformed")
        unknown = sorted(set(raw) - _EVENT_KEYS)
        if unknown:
            raise _bad(f"{field}.{unknown[0][:64]}", "is not an event field", "unknown_field")
        name = raw.get("event_name")
        if not isinstance(name, str) or name not in names:
            raise _bad(
                f"{field}.event_name",
                "is not a standard event nor one of the site's custom_events",
                "event_not_allowed",
            )
        event_id = raw.get("event_id")
        if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
            raise _bad(f"{field}.event_id", "must be 8-64 letters, digits, '-', '_', '.', ':'")
        event: dict[str, Any] = {
            "event_name": name,
            "event_id": event_id,
            "event_time": _event_time(raw.get("event_time"), offset, now),
        }
        custom = check_custom_data(raw.get("custom_data"), f"{field}.custom_data")
        if custom:
            event["custom_data"] = custom
        source = _url(raw.get("event_source_url"), f"{field}.event_source_url")
        event["event_source_url"] = source
        referrer = _url(raw.get("referrer_url"), f"{field}.referrer_url")
        if referrer:
            event["referrer_url"] = referrer
        out.append(event)
    return out
